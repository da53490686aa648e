//! vipr's benchmarks. Every figure is reported next to a baseline measured in the same
//! run on the same machine, and as a ratio to it, so figures from different machines
//! compare by their ratios.
//!
//! - pipeline: userspace packet path ns/packet (established hit, new flow, reply
//!   reverse-NAT, non-VIP pass; 1 and 1,000,000 tracked flows) against a MAC-swap loop
//!   over the same frames;
//! - maglev: ring build time at M = 65537, N = 10 / 100 / 1000, against the paper's
//!   textbook population loop;
//! - xdp: the XDP program's ns/packet through BPF_PROG_TEST_RUN against a bare XDP_PASS;
//! - programming: 10k Services x 10 endpoints into real BPF maps against iptables-restore
//!   of kube-proxy's rules, and event-to-programmed latency of one endpoint change;
//! - forward: delivered rate, latency, CPU and balance through the netns bench topology,
//!   vipr against kube-proxy's iptables and nftables rule sets and a bare XDP redirect.
//!
//! `--write FILE` replaces this tool's sections of FILE (bench/RESULTS.md), keeping the
//! sections other benchmarks write.

mod forward;
mod kube_proxy;
mod programming;
mod textbook_maglev;
mod xdp;

use anyhow::{Context, Result};
use clap::Parser;
use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vipr_abi::*;
use vipr_dataplane::maglev::{self, BackendIdentity, WeightedBackend};
use vipr_dataplane::pipeline::{Pipeline, SharedTables, Verdict};
use vipr_dataplane::tables::{BackendSpec, Compiler, DesiredState, NextHop, NextHopSpec, VipSpec};
use vipr_fixtures::frame::{Pkt, TCP_ACK, TCP_SYN};

#[derive(Parser)]
#[command(about = "vipr benchmarks: figures as ratios against baselines measured in the same run")]
struct Args {
    /// A few milliseconds per figure: checks the benchmarks run, measures nothing.
    #[arg(long)]
    smoke: bool,
    /// Tracked flows of the large-table scenarios.
    #[arg(long, default_value_t = 1_000_000)]
    flows: usize,
    /// Replace this tool's sections of this Markdown file with the results (the forward
    /// suite also writes forwarding.json and forwarding.svg beside it).
    #[arg(long)]
    write: Option<PathBuf>,
    /// forward: flows the packet generator cycles through.
    #[arg(long, default_value_t = 1000)]
    gen_flows: u32,
    /// forward: TCP (ACK) frames instead of UDP.
    #[arg(long)]
    tcp: bool,
    /// forward: IPv6 instead of IPv4 (vipr against the bare redirect: kube-proxy's rule
    /// sets are generated for IPv4 only).
    #[arg(long)]
    ipv6: bool,
    /// forward: send at this many frames a second (default: as fast as possible).
    #[arg(long)]
    rate: Option<u32>,
    /// forward: Zipf-distributed flows instead of uniform.
    #[arg(long)]
    zipf: bool,
    /// forward: frame size in bytes (64 to 1500).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(64..=1500))]
    frame_size: u16,
    /// forward: numbers of Services to measure at.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 1000, 10000])]
    services: Vec<usize>,
    /// Which suites: pipeline, maglev, xdp, programming, forward (default: all; xdp,
    /// programming and forward need root; forward builds network namespaces).
    suites: Vec<String>,
}

fn main() -> Result<()> {
    // The benchmark topology's backends are this binary too.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("backend") {
        return forward::serve_backend(&argv[2..]);
    }
    // And so are the programming suite's cold runs after the first.
    if argv.get(1).map(String::as_str) == Some("cold-run") {
        return programming::cold_run(&argv[2..]);
    }
    let args = Args::parse();
    let all = args.suites.is_empty();
    let want = |s: &str| all || args.suites.iter().any(|x| x == s);
    let mut sections = Vec::new();
    if want("pipeline") {
        sections.push(("pipeline", pipeline_suite(&args)?));
    }
    if want("maglev") {
        sections.push(("maglev", maglev_suite(&args)));
    }
    if want("xdp") {
        sections.push(("xdp", xdp::suite(args.smoke, &machine())?));
    }
    if want("programming") {
        sections.push(("programming", programming::suite(args.smoke, &machine())?));
    }
    let mut forwarding = None;
    if want("forward") {
        let sizes: Vec<usize> = if args.smoke { vec![1, 10] } else { args.services.clone() };
        let opts = forward::Opts {
            smoke: args.smoke,
            tcp: args.tcp,
            ipv6: args.ipv6,
            flows: args.gen_flows,
            zipf: args.zipf,
            rate_pps: args.rate,
            frame_len: args.frame_size as usize,
            sizes: sizes.clone(),
        };
        let (text, samples) = forward::suite(&opts, &machine())?;
        // Each frame kind has its own section; the plots show the default (UDP/IPv4).
        let section = match (args.tcp, args.ipv6) {
            (false, false) => "forward",
            (true, false) => "forward-tcp",
            (false, true) => "forward-ipv6",
            (true, true) => "forward-tcp-ipv6",
        };
        sections.push((section, text));
        if section == "forward" {
            forwarding = Some((samples, sizes));
        }
    }
    for (_, text) in &sections {
        println!("{text}");
    }
    if let Some(path) = &args.write {
        let mut doc =
            std::fs::read_to_string(path).unwrap_or_else(|_| "# vipr benchmark results\n".into());
        for (name, text) in &sections {
            doc = replace_section(&doc, name, text);
        }
        std::fs::write(path, doc).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
        if let Some((samples, sizes)) = &forwarding {
            let dir = path.parent().unwrap_or(std::path::Path::new("."));
            std::fs::write(dir.join("forwarding.json"), serde_json::to_string_pretty(samples)?)?;
            std::fs::write(dir.join("forwarding.svg"), forward::plot(samples, sizes))?;
            std::fs::write(dir.join("latency.svg"), forward::plot_latency(samples))?;
            eprintln!("wrote {}/forwarding.json, forwarding.svg and latency.svg", dir.display());
        }
    }
    Ok(())
}

/// Replaces the text between `<!-- BEGIN name -->` and `<!-- END name -->`, or appends.
fn replace_section(doc: &str, name: &str, text: &str) -> String {
    let (begin, end) = (format!("<!-- BEGIN {name} -->"), format!("<!-- END {name} -->"));
    let block = format!("{begin}\n{text}\n{end}");
    match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{}{}", &doc[..b], block, &doc[e + end.len()..]),
        _ => format!("{}\n{}\n", doc.trim_end(), block),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {} cores, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    )
}

// ---------------------------------------------------------------------------------------
// Pipeline

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const VIP_PORT: u16 = 8088;

fn client(i: usize) -> (String, u16) {
    // 2^16 clients in 198.51.100.0/24 x ports: distinct flows, documentation prefix only.
    let host = 1 + (i % 250);
    let port = 1024 + (i / 250) as u16;
    (format!("198.51.100.{host}"), port)
}

fn backend_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 21 + i as u8))
}

fn tables() -> Result<SharedTables> {
    let vip = VipSpec {
        addr: IpAddr::V4(VIP),
        port: VIP_PORT,
        proto: PROTO_TCP,
        snat_addr: None,
        affinity_timeout_s: None,
        source_ranges: vec![],
        ring_max: DEFAULT_RING_MAX,
        backends: (0..4)
            .map(|i| BackendSpec { addr: backend_ip(i), port: 8080, weight: 1, draining: false })
            .collect(),
    };
    let hop = NextHop { ifindex: 1, src_mac: [2, 0, 0, 0, 0, 1], dst_mac: [2, 0, 0, 0, 0, 2] };
    let desired = DesiredState {
        vips: vec![vip],
        next_hops: vec![
            NextHopSpec { dest: "0.0.0.0/0".parse().unwrap(), hop },
            NextHopSpec { dest: "192.0.2.0/24".parse().unwrap(), hop },
        ],
        ..Default::default()
    };
    Ok(SharedTables::new(Compiler::default().compile(&desired)?))
}

fn syn(i: usize) -> Vec<u8> {
    let (c, p) = client(i);
    Pkt::tcp(&c, p, &VIP.to_string(), VIP_PORT, TCP_SYN).payload(&[0; 6]).frame()
}

fn ack(i: usize) -> Vec<u8> {
    let (c, p) = client(i);
    Pkt::tcp(&c, p, &VIP.to_string(), VIP_PORT, TCP_ACK).payload(&[0; 6]).frame()
}

/// ns per frame of `f` over `frames` (each restored from its template first, as the
/// pipeline rewrites in place), run for about `budget`.
fn measure(frames: &[Vec<u8>], budget: Duration, mut f: impl FnMut(&mut [u8])) -> f64 {
    let mut buf = vec![0u8; 2048];
    let mut done = 0u64;
    let start = Instant::now();
    loop {
        for t in frames {
            let b = &mut buf[..t.len()];
            b.copy_from_slice(t);
            f(b);
            black_box(&b);
        }
        done += frames.len() as u64;
        if start.elapsed() >= budget {
            break;
        }
    }
    start.elapsed().as_nanos() as f64 / done as f64
}

fn mac_swap(frame: &mut [u8]) {
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&frame[..6]);
    frame.copy_within(6..12, 0);
    frame[6..12].copy_from_slice(&dst);
}

struct Row {
    scenario: &'static str,
    tracked: usize,
    ns: f64,
    baseline: f64,
}

fn pipeline_suite(args: &Args) -> Result<String> {
    let budget = if args.smoke { Duration::from_millis(5) } else { Duration::from_millis(700) };
    let big = if args.smoke { 2_000 } else { args.flows };
    let sample = 4096.min(big);
    let shared = tables()?;
    let now = 1_000_000_000u64;
    let mut rows = Vec::new();
    let mut rss = Vec::new();
    // The big table first: its RSS is measured before any memory freed by the other,
    // which the allocator keeps and would hand out again uncounted.
    for tracked in [big, 1usize] {
        // Fill the conntrack with `tracked` flows; keep replies of a sample for the
        // reverse-NAT scenario.
        let rss_before = rss_bytes();
        let mut p = Pipeline::new(&shared, tracked + 2 * 1_000_000);
        let mut replies = Vec::new();
        for i in 0..tracked {
            let mut f = syn(i);
            let v = p.process(&mut f, 1, now);
            anyhow::ensure!(v == Verdict::Tx, "setup flow {i}: {v:?}");
            if i < sample {
                // The backend's answer: swap the translated frame's ends.
                let mut r = f.clone();
                mac_swap(&mut r);
                swap_ends_v4(&mut r);
                replies.push(r);
            }
        }
        rss.push((tracked, rss_bytes().saturating_sub(rss_before)));
        let hits: Vec<_> =
            (0..sample).map(|i| ack(i * (tracked / sample).max(1) % tracked)).collect();
        let hits = if tracked == 1 { vec![ack(0)] } else { hits };
        let replies = if tracked == 1 { replies[..1].to_vec() } else { replies };
        let others: Vec<_> = (0..sample.min(1024))
            .map(|i| {
                Pkt::tcp(&client(i).0, 40000, "192.0.2.99", 22, TCP_ACK).payload(&[0; 6]).frame()
            })
            .collect();

        let baseline = measure(&hits, budget, mac_swap);
        let ns = measure(&hits, budget, |b| {
            black_box(p.process(b, 1, now));
        });
        rows.push(Row { scenario: "established hit", tracked, ns, baseline });

        let ns = measure(&replies, budget, |b| {
            black_box(p.process(b, 1, now));
        });
        rows.push(Row {
            scenario: "reply reverse-NAT",
            tracked,
            ns,
            baseline: measure(&replies, budget, mac_swap),
        });

        let ns = measure(&others, budget, |b| {
            black_box(p.process(b, 1, now));
        });
        rows.push(Row {
            scenario: "non-VIP pass",
            tracked,
            ns,
            baseline: measure(&others, budget, mac_swap),
        });

        // New flows: each frame once, so every one is a conntrack miss; the table's
        // capacity leaves room so no eviction is measured.
        let n_new = if args.smoke { 2_000 } else { 400_000 };
        let fresh: Vec<_> = (0..n_new).map(|i| syn(tracked + i)).collect();
        let start = Instant::now();
        let mut buf = vec![0u8; 2048];
        for t in &fresh {
            let b = &mut buf[..t.len()];
            b.copy_from_slice(t);
            black_box(p.process(b, 1, now));
        }
        let ns = start.elapsed().as_nanos() as f64 / n_new as f64;
        let baseline = {
            let start = Instant::now();
            for t in &fresh {
                let b = &mut buf[..t.len()];
                b.copy_from_slice(t);
                mac_swap(b);
                black_box(&b);
            }
            start.elapsed().as_nanos() as f64 / n_new as f64
        };
        rows.push(Row { scenario: "new flow (Maglev + conntrack insert)", tracked, ns, baseline });
        anyhow::ensure!(
            p.counters.verdicts[VERDICT_DROP as usize] == 0,
            "the benchmark dropped frames: {:?}",
            p.counters.drops
        );
    }

    rows.sort_by_key(|r| r.tracked);
    let mut s = String::new();
    let _ = writeln!(s, "## Userspace pipeline, one core\n");
    let _ = writeln!(
        s,
        "Command: `cargo run --release -p vipr-bench -- pipeline --write bench/RESULTS.md`{}  \nMachine: {}  \n\
         Frames: TCP/IPv4, 64 bytes of headers + 6 bytes payload; VIP with 4 backends, `dnat`. \
         Baseline: restore the frame from its template and swap its MACs, over the same frames.\n",
        if args.smoke { " (SMOKE RUN: figures meaningless)" } else { "" },
        machine()
    );
    let _ =
        writeln!(s, "| scenario | tracked flows | vipr ns/packet | MAC-swap ns/packet | ratio |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for r in &rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {:.1}x |",
            r.scenario,
            r.tracked,
            r.ns,
            r.baseline,
            r.ns / r.baseline
        );
    }
    let _ = writeln!(s);
    for (tracked, bytes) in rss {
        if tracked > 1 {
            let _ = writeln!(
                s,
                "Conntrack memory: {} flows took {:.0} MiB of RSS ({:.0} bytes per flow: two 56-byte entries, keys, LRU links, hash index).",
                tracked,
                bytes as f64 / (1 << 20) as f64,
                bytes as f64 / tracked as f64
            );
        }
    }
    Ok(s)
}

/// Swaps source and destination addresses and ports of a TCP/IPv4 frame (checksums are
/// symmetric in them, so they stay valid).
fn swap_ends_v4(f: &mut [u8]) {
    let (src, dst) = (14 + 12, 14 + 16);
    for i in 0..4 {
        f.swap(src + i, dst + i);
    }
    let l4 = 14 + 20;
    for i in 0..2 {
        f.swap(l4 + i, l4 + 2 + i);
    }
}

/// Busy and total CPU time of the machine so far, in ticks of `/proc/stat` (idle and
/// iowait are not busy).
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let all: u64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (all - idle, all)
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()))
        .map_or(0, |pages| pages * 4096)
}

// ---------------------------------------------------------------------------------------
// Maglev

fn maglev_suite(args: &Args) -> String {
    let m = 65_537u32;
    let reps = if args.smoke { 1 } else { 15 };
    let mut s = String::new();
    let _ = writeln!(s, "## Maglev ring build\n");
    let _ = writeln!(
        s,
        "Command: `cargo run --release -p vipr-bench -- maglev --write bench/RESULTS.md`{}  \nMachine: {}  \n\
         Median of {reps} builds. Baseline: the paper's Pseudocode 1 transcribed directly \
         (N x M permutation table materialised). The paper reports 1.8 ms at M = 65537.\n",
        if args.smoke { " (SMOKE RUN: figures meaningless)" } else { "" },
        machine()
    );
    let _ = writeln!(s, "| M | N backends | vipr ms | textbook ms | ratio |");
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|");
    for n in [10usize, 100, 1000] {
        let backends: Vec<(IpAddr, u16)> = (0..n)
            .map(|i| {
                (
                    IpAddr::V4(Ipv4Addr::new(192, 0, 2 + (i / 250) as u8 % 2, (i % 250) as u8 + 1)),
                    8080 + (i / 500) as u16,
                )
            })
            .collect();
        let weighted: Vec<_> = backends
            .iter()
            .enumerate()
            .map(|(i, (a, p))| WeightedBackend {
                identity: BackendIdentity { addr: *a, port: *p },
                weight: 1,
                id: i as u32,
            })
            .collect();
        let mut out = vec![0u32; m as usize];
        let ours = median(reps, || {
            maglev::build_into(&weighted, &mut out);
            black_box(&out);
        });
        let textbook = median(reps, || {
            black_box(textbook_maglev::build_textbook(&backends, m));
        });
        let _ = writeln!(
            s,
            "| {m} | {n} | {:.3} | {:.3} | {:.2}x |",
            ours * 1e3,
            textbook * 1e3,
            ours / textbook
        );
    }
    let _ = writeln!(s, "\nDisruption: share of slots that change owner when 1 of N backends is removed, among slots the removed backend did not own (0 is ideal; the paper's Figure 9 shows Maglev's is small but not zero):\n");
    let _ = writeln!(s, "| N | M | slots moved |");
    let _ = writeln!(s, "|---:|---:|---:|");
    for n in [10usize, 100, 1000] {
        let _ =
            writeln!(s, "| {n} | {m} | {:.2}% |", 100.0 * maglev::disruption_after_removal(n, m));
    }
    s
}

fn median(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}
