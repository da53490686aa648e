//! End-to-end forwarding through the bench topology (vipr::testbed: client namespace,
//! router namespace, four backend namespaces, over veth pairs), with each peer in the
//! router namespace in turn:
//!
//! - a bare XDP redirect program (the forwarding limit of this path),
//! - vipr's XDP program,
//! - vipr's AF_XDP poll-mode engine (`vipr_poll::afxdp`, one worker busy-polling the
//!   router's veths in copy mode), with the tables the XDP program gets,
//! - kube-proxy's iptables rule set and its nftables rule set (kube_proxy.rs), at 1, 1k
//!   and 10k Services, traffic aimed at the first Service and at the last.
//!
//! Frames come from `vipr_pktgen` through BPF_PROG_TEST_RUN with live frames, sent out of
//! the client's veth; `vipr_sink` on each backend's veth counts and drops them, so the
//! delivered rate and the balance are measured where packets arrive. A latency probe
//! (sequential HTTP requests through the same path to a Service of real servers, which
//! the sinks let through) gives percentiles. All of it stays inside the namespaces.

use crate::kube_proxy::{self, Service};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use vipr::testbed::{self, Testbed};
use vipr_abi::bench::{RedirectTo, PROG_REDIRECT, PROG_SINK};
use vipr_abi::*;
use vipr_dataplane::tables::{BackendSpec, Compiler, DesiredState, VipSpec};
use vipr_fixtures::frame::Pkt;
use vipr_xdp::bench::BenchPrograms;
use vipr_xdp::{AttachMode, Limits, Programmer, Xdp};

#[cfg(feature = "dpdk")]
mod dpdk;

/// The port the benchmark Services send to; the sinks drop only what goes there.
const SINK_PORT: u16 = vipr_abi::bench::SINK_PORT;
/// The latency Service: real servers answer on the backends' port 8080.
const LATENCY_VIP: &str = "192.0.2.10";
const LATENCY_VIP6: &str = "2001:db8:f::10";
const LATENCY_PORT: u16 = 8088;

pub struct Opts {
    pub smoke: bool,
    /// TCP frames (ACK) instead of UDP.
    pub tcp: bool,
    /// IPv6 instead of IPv4. kube-proxy's rule sets are generated for IPv4 only, so an
    /// IPv6 run measures vipr against the bare redirect.
    pub ipv6: bool,
    pub flows: u32,
    pub zipf: bool,
    /// Frames a second to send at; `None`: as fast as the generator goes.
    pub rate_pps: Option<u32>,
    pub frame_len: usize,
    pub sizes: Vec<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub peer: String,
    pub services: usize,
    pub target: &'static str,
    pub sent: u64,
    pub delivered: u64,
    pub mpps: f64,
    pub drop_share: f64,
    pub cpu_ns_per_packet: f64,
    /// Busiest backend's share over the mean share (1.0 is perfect); 0 when one backend.
    pub balance_max_over_mean: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Time to load the peer's tables for this many Services.
    pub load_ms: f64,
    /// Poll-mode peers: CPU time of the worker threads (user + system, from
    /// /proc/self/task) per million delivered packets, in ms; 0 for the others.
    pub worker_cpu_ms_per_mpkt: f64,
}

/// Runs `f` with this thread in network namespace `name`, then returns to the original.
fn in_netns<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let home = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
    let target =
        File::open(format!("/run/netns/{name}")).with_context(|| format!("netns {name}"))?;
    let enter = |fd: &File| {
        // SAFETY: setns on a namespace fd; affects this thread only.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        Ok(())
    };
    enter(&target)?;
    let r = f();
    enter(&home)?;
    r
}

fn mac_of(tb: &Testbed, ns: &str, dev: &str) -> Result<[u8; 6]> {
    let text = tb.ns(ns, &["cat", &format!("/sys/class/net/{dev}/address")])?;
    let mut mac = [0u8; 6];
    for (i, part) in text.trim().split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

fn ifindex(tb: &Testbed, ns: &str, dev: &str) -> Result<u32> {
    Ok(tb.ns(ns, &["cat", &format!("/sys/class/net/{dev}/ifindex")])?.trim().parse()?)
}

/// Busy CPU time of the whole machine so far, in nanoseconds (/proc/stat, USER_HZ 100).
fn cpu_busy_ns() -> u64 {
    crate::cpu_ticks().0 * 10_000_000
}

/// Source ports of the generated flows: `flows` of them, uniform or Zipf (s = 1.1).
fn port_table(flows: u32, zipf: bool) -> Vec<u16> {
    let len = vipr_abi::bench::PKTGEN_PORTS_LEN as usize;
    let flows = flows.clamp(1, 50_000);
    if !zipf {
        return (0..len).map(|i| 10_000 + (i as u32 % flows) as u16).collect();
    }
    let weights: Vec<f64> = (1..=flows).map(|k| 1.0 / (k as f64).powf(1.1)).collect();
    let sum: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(weights.len());
    let mut acc = 0.0;
    for w in &weights {
        acc += w / sum;
        cdf.push(acc);
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            10_000 + cdf.partition_point(|&c| c < u).min(flows as usize - 1) as u16
        })
        .collect()
}

struct Bed {
    tb: Testbed,
    progs: BenchPrograms,
    c0_ifindex: u32,
    backends: Vec<IpAddr>,
    backends6: Vec<IpAddr>,
    /// The generator's source ports (flows).
    ports: Vec<u16>,
}

impl Bed {
    fn new() -> Result<Self> {
        let mut tb = Testbed::new("bf-", 4)?;
        let exe = std::env::current_exe()?;
        tb.start_backends(exe.to_str().context("bench path")?)?;
        let lb = tb.lb_ns();
        // Static neighbours of both families: the measurement never waits for ARP / ND.
        for i in 0..tb.backends {
            let mac = mac_of(&tb, &tb.backend_ns(i), "b0")?;
            let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            let dev = format!("lbb{}", i + 1);
            for addr in [testbed::backend_addr(i), testbed::backend_addr6(i)] {
                let args = [
                    "ip",
                    "neigh",
                    "replace",
                    &addr,
                    "lladdr",
                    &mac,
                    "dev",
                    &dev,
                    "nud",
                    "permanent",
                ];
                tb.ns(&lb, &args)?;
            }
        }
        let mut progs = BenchPrograms::load()?;
        for i in 0..tb.backends {
            in_netns(&tb.backend_ns(i), || Ok(progs.attach(PROG_SINK, "b0")?))?;
        }
        let c0_ifindex = ifindex(&tb, &tb.client_ns(), "c0")?;
        let backends =
            (0..tb.backends).map(|i| testbed::backend_addr(i).parse().unwrap()).collect();
        let backends6 =
            (0..tb.backends).map(|i| testbed::backend_addr6(i).parse().unwrap()).collect();
        Ok(Bed { tb, progs, c0_ifindex, backends, backends6, ports: vec![10_000] })
    }

    fn template(&self, vip: IpAddr, port: u16, opts: &Opts) -> Result<Vec<u8>> {
        let c0 = mac_of(&self.tb, &self.tb.client_ns(), "c0")?;
        let lbc = mac_of(&self.tb, &self.tb.lb_ns(), "lbc")?;
        let client = if vip.is_ipv6() { testbed::CLIENT6 } else { testbed::CLIENT };
        let (headers, _, _) = layout(opts);
        let pkt = if opts.tcp {
            Pkt::tcp(client, 10_000, &vip.to_string(), port, vipr_fixtures::frame::TCP_ACK)
        } else {
            Pkt::udp(client, 10_000, &vip.to_string(), port)
        };
        Ok(pkt
            .macs(c0, lbc)
            .payload(&vec![0u8; opts.frame_len.saturating_sub(headers).max(6)])
            .frame())
    }

    /// Sends `count` frames of `template` (source ports from `ports`) and measures what
    /// arrives.
    fn measure(
        &mut self,
        template: &[u8],
        opts: &Opts,
        count: u32,
    ) -> Result<(u64, Duration, u64, Vec<u64>)> {
        let (_, sport, csum) = layout(opts);
        self.progs.set_pktgen(template, &self.ports, sport, csum)?;
        self.progs.reset_sinks()?;
        let cpu0 = cpu_busy_ns();
        let start = Instant::now();
        let (progs, ifindex) = (&mut self.progs, self.c0_ifindex);
        in_netns(&self.tb.client_ns(), || {
            match opts.rate_pps {
                None => {
                    progs.generate(template, ifindex, count, 8)?;
                }
                // Paced: 50 ms worth of frames a call, on schedule (each call sets up
                // the kernel's live-frame machinery anew, which costs milliseconds).
                Some(rate) => {
                    let chunk = (rate / 20).max(64);
                    let mut sent = 0;
                    while sent < count {
                        let n = chunk.min(count - sent);
                        progs.generate(template, ifindex, n, 8)?;
                        sent += n;
                        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(start.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                }
            }
            Ok(())
        })?;
        let wall = start.elapsed();
        std::thread::sleep(Duration::from_millis(50));
        let cpu = cpu_busy_ns().saturating_sub(cpu0);
        let counts = self.progs.sink_counts()?;
        // The sinks count by the last byte of the backend's address.
        let backends = if opts.ipv6 { &self.backends6 } else { &self.backends };
        let last_byte = |a: &IpAddr| match a {
            IpAddr::V4(v4) => v4.octets()[3],
            IpAddr::V6(v6) => v6.octets()[15],
        };
        let per_backend: Vec<u64> = backends
            .iter()
            .map(|b| {
                counts.iter().filter(|(i, _)| *i == last_byte(b)).map(|(_, c)| c.packets).sum()
            })
            .collect();
        let delivered = counts.iter().map(|(_, c)| c.packets).sum();
        Ok((delivered, wall, cpu, per_backend))
    }

    /// Sequential HTTP requests from the client to the latency Service: percentiles in µs.
    fn latency(&self, requests: usize, ipv6: bool) -> Result<(f64, f64)> {
        let vip: IpAddr = if ipv6 { LATENCY_VIP6 } else { LATENCY_VIP }.parse()?;
        let target = SocketAddr::new(vip, LATENCY_PORT);
        let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
        in_netns(&self.tb.client_ns(), || {
            for _ in 0..requests {
                let t = Instant::now();
                let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                let mut out = Vec::new();
                s.read_to_end(&mut out)?;
                hist.record(t.elapsed().as_micros() as u64)?;
            }
            Ok(())
        })
        .context("latency probe")?;
        Ok((hist.value_at_quantile(0.5) as f64, hist.value_at_quantile(0.99) as f64))
    }

    fn flush_conntrack(&self) -> Result<()> {
        // Flows the previous peer translated must not be reused by the next one.
        let _ = self.tb.ns(&self.tb.lb_ns(), &["conntrack", "-F"]);
        Ok(())
    }
}

/// Header bytes, source-port offset and L4 checksum offset of a benchmark frame.
fn layout(opts: &Opts) -> (usize, u32, u32) {
    let l4 = 14 + if opts.ipv6 { 40 } else { 20 };
    let (l4_len, csum) = if opts.tcp { (20, 16) } else { (8, 6) };
    (l4 + l4_len, l4 as u32, (l4 + csum) as u32)
}

/// The benchmark Services plus the latency Service (last in every chain).
/// IPv6 VIPs are 2001:db8:f::1:<i>.
fn service_set(n: usize, backends: &[IpAddr], opts: &Opts) -> Vec<Service> {
    let mut svcs = kube_proxy::services(n, backends.len(), backends);
    for (i, s) in svcs.iter_mut().enumerate() {
        for ep in &mut s.endpoints {
            ep.1 = SINK_PORT;
        }
        s.proto = if opts.tcp { "tcp" } else { "udp" };
        if opts.ipv6 {
            s.vip = IpAddr::from([0x2001, 0xdb8, 0xf, 0, 0, 0, 1, i as u16 + 1]);
            s.port = SINK_PORT;
        }
    }
    svcs.push(Service {
        vip: if opts.ipv6 { LATENCY_VIP6 } else { LATENCY_VIP }.parse().unwrap(),
        port: LATENCY_PORT,
        proto: "tcp",
        endpoints: backends.iter().map(|b| (*b, testbed::BACKEND_PORT)).collect(),
    });
    svcs
}

fn vip_specs(svcs: &[Service]) -> DesiredState {
    let mut d = DesiredState::default();
    d.settings.flags |= SETTINGS_F_FIB_LOOKUP;
    for s in svcs {
        // A Service lists one backend address several times on different ports in
        // kube-proxy's layout; vipr's VIPs take each distinct endpoint once.
        let mut backends: Vec<BackendSpec> = Vec::new();
        for &(addr, port) in &s.endpoints {
            if !backends.iter().any(|b| b.addr == addr && b.port == port) {
                backends.push(BackendSpec { addr, port, weight: 1, draining: false });
            }
        }
        d.vips.push(VipSpec {
            addr: s.vip,
            port: s.port,
            proto: if s.proto == "tcp" { PROTO_TCP } else { PROTO_UDP },
            snat_addr: None,
            affinity_timeout_s: None,
            source_ranges: vec![],
            ring_max: DEFAULT_RING_MAX,
            backends,
        });
    }
    d
}

pub fn suite(opts: &Opts, machine: &str) -> Result<(String, Vec<Sample>)> {
    let count: u32 = if opts.smoke { 20_000 } else { 3_000_000 };
    let requests = if opts.smoke { 5 } else { 200 };
    let mut bed = Bed::new()?;
    bed.ports = port_table(opts.flows, opts.zipf);
    let total = 1 + opts.sizes.len() * (4 + cfg!(feature = "dpdk") as usize);
    let mut done = 0;
    let mut progress = |what: &str| {
        done += 1;
        let width = 30;
        let filled = width * done / total;
        eprint!(
            "\r[{}{}] {done}/{total} {what:<40}",
            "#".repeat(filled),
            " ".repeat(width - filled)
        );
        let _ = std::io::stderr().flush();
    };
    let mut samples = Vec::new();
    // The forwarding limit: every frame to backend 1, MACs rewritten, nothing else.
    progress("bare XDP redirect");
    let lb = bed.tb.lb_ns();
    let to = RedirectTo {
        ifindex: ifindex(&bed.tb, &lb, "lbb1")?,
        src_mac: mac_of(&bed.tb, &lb, "lbb1")?,
        dst_mac: mac_of(&bed.tb, &bed.tb.backend_ns(0), "b0")?,
    };
    bed.progs.set_redirect(to)?;
    let link = in_netns(&lb, || Ok(bed.progs.attach(PROG_REDIRECT, "lbc")?))?;
    {
        let dst = if opts.ipv6 { "2001:db8:f::1:1" } else { "203.0.113.1" };
        let template = bed.template(dst.parse()?, SINK_PORT, opts)?;
        samples.push(rate_sample(
            &mut bed,
            opts,
            count,
            "bare XDP redirect",
            0,
            "-",
            &template,
            0.0,
        )?);
    }
    in_netns(&lb, || Ok(bed.progs.detach(PROG_REDIRECT, link)?))?;

    for &n in &opts.sizes {
        let backends = if opts.ipv6 { bed.backends6.clone() } else { bed.backends.clone() };
        let svcs = service_set(n, &backends, opts);
        let first = (svcs[0].vip, svcs[0].port);
        let last = (svcs[n - 1].vip, svcs[n - 1].port);

        progress(&format!("vipr XDP, {n} Services"));
        let desired = vip_specs(&svcs);
        let limits = Limits {
            vips: (svcs.len() as u32 + 16).next_power_of_two(),
            backends: (svcs.len() as u32 * 10 + 64).next_power_of_two(),
            conntrack_flows: 1 << 18,
            source_ranges: 16,
            next_hops: 16,
            ..Limits::default()
        };
        let mut xdp = in_netns(&lb, || Ok(Xdp::load(limits, None)?))?;
        let start = Instant::now();
        let tables = Compiler::default().compile(&desired)?;
        Programmer::new().program(&mut xdp.maps, &xdp.limits, &tables)?;
        let load_ms = start.elapsed().as_secs_f64() * 1e3;
        in_netns(&lb, || {
            for dev in bed.tb.lb_interfaces() {
                xdp.attach(&dev, AttachMode::Native)?;
            }
            Ok(())
        })?;
        for (target, (vip, port)) in [("first", first), ("last", last)] {
            samples.push(sample(
                &mut bed,
                opts,
                count,
                requests,
                "vipr XDP",
                n,
                target,
                (vip, port),
                load_ms,
            )?);
        }
        drop(xdp);

        progress(&format!("vipr AF_XDP, {n} Services"));
        samples.extend(afxdp_samples(&mut bed, opts, count, requests, n, &tables, [first, last])?);

        #[cfg(feature = "dpdk")]
        {
            progress(&format!("vipr DPDK, {n} Services"));
            let targets = [("first", first), ("last", last)];
            samples.extend(dpdk::samples(&mut bed, opts, count, requests, n, &svcs, targets)?);
        }

        // kube-proxy's rule sets are generated for IPv4 only.
        let peers = if opts.ipv6 {
            vec![]
        } else {
            vec![
                (
                    "kube-proxy iptables",
                    kube_proxy::iptables_restore(&svcs),
                    vec!["iptables-restore"],
                ),
                ("kube-proxy nftables", kube_proxy::nftables(&svcs), vec!["nft", "-f", "-"]),
            ]
        };
        for (peer, input, cmd) in peers {
            progress(&format!("{peer}, {n} Services"));
            let start = Instant::now();
            restore(&bed.tb, &lb, &cmd, &input)?;
            let load_ms = start.elapsed().as_secs_f64() * 1e3;
            for (target, (vip, port)) in [("first", first), ("last", last)] {
                bed.flush_conntrack()?;
                samples.push(sample(
                    &mut bed,
                    opts,
                    count,
                    requests,
                    peer,
                    n,
                    target,
                    (vip, port),
                    load_ms,
                )?);
            }
            bed.tb.ns(&lb, &["iptables", "-t", "nat", "-F"])?;
            bed.tb.ns(&lb, &["iptables", "-t", "nat", "-X"])?;
            let _ = bed.tb.ns(&lb, &["nft", "delete", "table", "ip", "kube-proxy"]);
            bed.flush_conntrack()?;
        }
    }
    eprintln!();
    Ok((report(opts, machine, count, &samples), samples))
}

/// One measurement of a peer: rate, CPU and balance from the generator and the sinks,
/// then the latency probe.
#[allow(clippy::too_many_arguments)]
fn sample(
    bed: &mut Bed,
    opts: &Opts,
    count: u32,
    requests: usize,
    peer: &str,
    n: usize,
    target: &'static str,
    (vip, port): (IpAddr, u16),
    load_ms: f64,
) -> Result<Sample> {
    let template = bed.template(vip, port, opts)?;
    let mut x = rate_sample(bed, opts, count, peer, n, target, &template, load_ms)?;
    (x.p50_us, x.p99_us) = bed.latency(requests, opts.ipv6)?;
    Ok(x)
}

/// Rate, drops, CPU and balance of `count` frames of `template`; no latency.
#[allow(clippy::too_many_arguments)]
fn rate_sample(
    bed: &mut Bed,
    opts: &Opts,
    count: u32,
    peer: &str,
    n: usize,
    target: &'static str,
    template: &[u8],
    load_ms: f64,
) -> Result<Sample> {
    let (delivered, wall, cpu, per_backend) = bed.measure(template, opts, count)?;
    let active: Vec<u64> = per_backend.iter().copied().filter(|&c| c > 0).collect();
    let balance = if active.len() > 1 {
        let mean = active.iter().sum::<u64>() as f64 / per_backend.len() as f64;
        *active.iter().max().unwrap() as f64 / mean
    } else {
        0.0
    };
    Ok(Sample {
        peer: peer.to_string(),
        services: n,
        target,
        sent: count as u64,
        delivered,
        mpps: delivered as f64 / wall.as_secs_f64() / 1e6,
        drop_share: 1.0 - delivered as f64 / count as f64,
        cpu_ns_per_packet: cpu as f64 / delivered.max(1) as f64,
        balance_max_over_mean: balance,
        p50_us: 0.0,
        p99_us: 0.0,
        load_ms,
        worker_cpu_ms_per_mpkt: 0.0,
    })
}

/// The AF_XDP engine on the router's veths with `tables`: rate and latency at the first
/// and the last Service, and the worker's CPU per million packets.
#[allow(clippy::too_many_arguments)]
fn afxdp_samples(
    bed: &mut Bed,
    opts: &Opts,
    count: u32,
    requests: usize,
    n: usize,
    tables: &vipr_dataplane::tables::Tables,
    targets: [(IpAddr, u16); 2],
) -> Result<Vec<Sample>> {
    use vipr_dataplane::tables::{NextHop, NextHopSpec, NextHops, Tables};
    use vipr_poll::afxdp::{self, AfxdpConfig, AfxdpInterface, NextHopSource};
    // The next hops the kernel would give (the neighbours are static here): a background
    // resolver would only add its own work to the measured window.
    let lb = bed.tb.lb_ns();
    let mut hops = Vec::new();
    for i in 0..bed.tb.backends {
        let dev = format!("lbb{}", i + 1);
        let hop = NextHop {
            ifindex: ifindex(&bed.tb, &lb, &dev)?,
            src_mac: mac_of(&bed.tb, &lb, &dev)?,
            dst_mac: mac_of(&bed.tb, &bed.tb.backend_ns(i), "b0")?,
        };
        for addr in [testbed::backend_addr(i), testbed::backend_addr6(i)] {
            hops.push(NextHopSpec { dest: addr.parse::<IpAddr>()?.into(), hop });
        }
    }
    let to_client = NextHop {
        ifindex: ifindex(&bed.tb, &lb, "lbc")?,
        src_mac: mac_of(&bed.tb, &lb, "lbc")?,
        dst_mac: mac_of(&bed.tb, &bed.tb.client_ns(), "c0")?,
    };
    for addr in [testbed::CLIENT, testbed::CLIENT6] {
        hops.push(NextHopSpec { dest: addr.parse::<IpAddr>()?.into(), hop: to_client });
    }
    let tables = Tables { next_hops: NextHops::new(&hops), ..tables.clone() };
    let shared = vipr_dataplane::pipeline::SharedTables::new(tables);
    // A poll-mode worker owns a core: the last one; the generator (this thread, and the
    // XDP work it triggers) is left to the scheduler, which keeps it off the busy core.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let worker_core = (cpus > 1).then_some(cpus - 1);
    let interfaces = bed
        .tb
        .lb_interfaces()
        .into_iter()
        .map(|name| AfxdpInterface {
            name,
            attach: AttachMode::Native,
            queues: vec![0],
            cores: worker_core.into_iter().collect(),
        })
        .collect();
    let mut config = AfxdpConfig::new(interfaces);
    config.engine.conntrack_capacity = 1 << 18;
    config.next_hops = NextHopSource::Tables;
    let engine = in_netns(&lb, || afxdp::start(config, &shared))?;
    let mut out = Vec::new();
    for (target, (vip, port)) in [("first", targets[0]), ("last", targets[1])] {
        let cpu0: u64 = engine.worker_tids().iter().map(|&t| thread_cpu_ns(t)).sum();
        let template = bed.template(vip, port, opts)?;
        let mut x = rate_sample(bed, opts, count, "vipr AF_XDP", n, target, &template, 0.0)?;
        let cpu: u64 = engine.worker_tids().iter().map(|&t| thread_cpu_ns(t)).sum::<u64>() - cpu0;
        x.worker_cpu_ms_per_mpkt = cpu as f64 / 1e6 / (x.delivered.max(1) as f64 / 1e6);
        (x.p50_us, x.p99_us) = bed.latency(requests, opts.ipv6)?;
        out.push(x);
    }
    let report = engine.stop()?;
    if report.leaked() != 0 {
        bail!("the AF_XDP engine leaked frames: {:?}", report.outstanding);
    }

    Ok(out)
}

/// User + system CPU time of one thread of this process (/proc/self/task/TID/stat,
/// fields 14 and 15, in USER_HZ = 100 ticks).
fn thread_cpu_ns(tid: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")" comes field 3 (state): utime and stime, fields 14 and 15, sit at 11 and 12.
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    (field(11) + field(12)) * 10_000_000
}

fn restore(tb: &Testbed, ns: &str, cmd: &[&str], input: &str) -> Result<()> {
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    let _ = tb;
    if !out.status.success() {
        bail!("{} failed: {}", cmd.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn report(opts: &Opts, machine: &str, count: u32, samples: &[Sample]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "## Forwarding through the bench topology\n");
    let _ = writeln!(
        s,
        "Command: `sudo cargo run --release -p vipr-bench -- forward --write bench/RESULTS.md`{}  \nMachine: {machine}  \n\
         {count} {}/{} frames of {} bytes a measurement, {} {} flows, at {}, from `vipr_pktgen` (BPF_PROG_TEST_RUN, live frames, \
         one core) out of the client's veth; counted and dropped by `vipr_sink` on the backends' veths. Every peer runs in the \
         router namespace of the same topology in the same run. Services: one endpoint on each of the 4 backends; kube-proxy's \
         rule sets are restored into the router namespace. Latency: {} sequential HTTP requests to a real server through the \
         same path (the latency Service sits last in every chain). CPU: the machine's busy time over delivered packets.\n",
        if opts.smoke { " (SMOKE RUN: figures meaningless)" } else { "" },
        if opts.tcp { "TCP" } else { "UDP" },
        if opts.ipv6 { "IPv6" } else { "IPv4" },
        opts.frame_len,
        opts.flows,
        if opts.zipf { "Zipf (s = 1.1)" } else { "uniform" },
        opts.rate_pps.map_or("the highest rate".to_string(), |r| format!("{r} frames/s")),
        if opts.smoke { 5 } else { 200 },
    );
    let _ = writeln!(s, "| peer | Services | target | delivered Mpps | drop share | p50 µs | p99 µs | CPU ns/pkt | balance max/mean | tables loaded in ms |");
    let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for x in samples {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {:.1}% | {:.0} | {:.0} | {:.0} | {} | {:.0} |",
            x.peer,
            x.services,
            x.target,
            x.mpps,
            100.0 * x.drop_share,
            x.p50_us,
            x.p99_us,
            x.cpu_ns_per_packet,
            if x.balance_max_over_mean > 0.0 {
                format!("{:.3}", x.balance_max_over_mean)
            } else {
                "-".into()
            },
            x.load_ms
        );
    }
    let rate = |peer: &str, n: usize, target: &str| {
        samples
            .iter()
            .find(|x| x.peer == peer && x.services == n && x.target == target)
            .map(|x| x.mpps)
    };
    let bare =
        samples.iter().find(|x| x.peer == "bare XDP redirect").map(|x| x.mpps).unwrap_or(0.0);
    let _ = writeln!(s, "\nRatios (same run, traffic at the last Service):\n");
    for &n in &opts.sizes {
        let af = samples
            .iter()
            .find(|x| x.peer == "vipr AF_XDP" && x.services == n && x.target == "last");
        if let (Some(v), Some(a)) = (rate("vipr XDP", n, "last"), af) {
            let _ = writeln!(
                s,
                "- {n} Services: vipr AF_XDP (copy mode, one busy-polling worker) {:.2}x vipr XDP; its worker used {:.0} ms of CPU per million packets",
                a.mpps / v.max(1e-9),
                a.worker_cpu_ms_per_mpkt
            );
        }
    }
    for &n in &opts.sizes {
        let dpdk =
            samples.iter().find(|x| x.peer == "vipr DPDK" && x.services == n && x.target == "last");
        if let (Some(v), Some(d)) = (rate("vipr XDP", n, "last"), dpdk) {
            let _ = writeln!(
                s,
                "- {n} Services: vipr DPDK (net_af_packet ports, --no-huge, one worker) {:.2}x vipr XDP; its worker used {:.0} ms of CPU per million packets",
                d.mpps / v.max(1e-9),
                d.worker_cpu_ms_per_mpkt
            );
        }
    }
    for &n in &opts.sizes {
        if let (Some(v), Some(i), Some(nf)) = (
            rate("vipr XDP", n, "last"),
            rate("kube-proxy iptables", n, "last"),
            rate("kube-proxy nftables", n, "last"),
        ) {
            let _ = writeln!(
                s,
                "- {n} Services: vipr {:.2}x iptables, {:.2}x nftables, {:.0}% of the bare XDP redirect",
                v / i.max(1e-9),
                v / nf.max(1e-9),
                100.0 * v / bare.max(1e-9)
            );
        }
    }
    s
}

/// An SVG canvas of `(width, height, left margin, bottom margin)` with its axes and five
/// y-axis ticks from 0 to `max`, labelled with `decimals` decimals.
fn svg_frame(
    (w, h, left, bottom): (f64, f64, f64, f64),
    max: f64,
    decimals: usize,
    y_of: impl Fn(f64) -> f64,
) -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        h - bottom,
        w - 10.0,
        h - bottom
    );
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"10\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>",
        h - bottom
    );
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.0}\" text-anchor=\"end\">{v:.decimals$}</text>",
            left - 5.0,
            y_of(v) + 4.0
        );
    }
    s
}

/// An SVG line chart of delivered Mpps against the number of Services, one line a peer.
pub fn plot(samples: &[Sample], sizes: &[usize]) -> String {
    use std::fmt::Write as _;
    let (w, h, left, bottom) = (640.0, 360.0, 60.0, 40.0);
    let peers = ["vipr XDP", "vipr AF_XDP", "kube-proxy nftables", "kube-proxy iptables"];
    let colors = ["#1b9e77", "#66a61e", "#7570b3", "#d95f02"];
    let max = samples.iter().map(|x| x.mpps).fold(0.0f64, f64::max).max(0.001) * 1.1;
    let x_of = |i: usize| left + (w - left - 20.0) * (i as f64 + 0.5) / sizes.len() as f64;
    let y_of = |v: f64| h - bottom - (h - bottom - 20.0) * v / max;
    let mut s = svg_frame((w, h, left, bottom), max, 2, y_of);
    for (i, n) in sizes.iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"{:.0}\" y=\"{}\" text-anchor=\"middle\">{n}</text>",
            x_of(i),
            h - bottom + 16.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">Services (traffic to the last)</text>",
        (w + left) / 2.0,
        h - 6.0
    );
    let _ = writeln!(s, "<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">delivered Mpps</text>", h / 2.0, h / 2.0);
    for (p, color) in peers.iter().zip(colors) {
        let pts: Vec<String> = sizes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                samples
                    .iter()
                    .find(|x| x.peer == *p && x.services == *n && x.target == "last")
                    .map(|x| format!("{:.1},{:.1}", x_of(i), y_of(x.mpps)))
            })
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            pts.join(" ")
        );
    }
    if let Some(bare) = samples.iter().find(|x| x.peer == "bare XDP redirect") {
        let y = y_of(bare.mpps);
        let _ = writeln!(s, "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"gray\" stroke-dasharray=\"4 4\"/>", w - 10.0);
    }
    let mut ly = 24.0;
    for (p, color) in peers.iter().zip(colors).chain([(&"bare XDP redirect", "gray")]) {
        let _ = writeln!(s, "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"4\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{p}</text>", w - 190.0, ly - 4.0, w - 172.0, ly);
        ly += 16.0;
    }
    s += "</svg>\n";
    s
}

/// An SVG bar chart of p50 and p99 latency per peer, at the largest number of Services
/// measured, traffic to the last Service.
pub fn plot_latency(samples: &[Sample]) -> String {
    use std::fmt::Write as _;
    let n = samples.iter().map(|x| x.services).max().unwrap_or(0);
    let rows: Vec<&Sample> = samples
        .iter()
        .filter(|x| x.services == n && x.target == "last" && x.p99_us > 0.0)
        .collect();
    let (w, h, left, bottom) = (640.0, 300.0, 60.0, 60.0);
    let max = rows.iter().map(|x| x.p99_us).fold(1.0f64, f64::max) * 1.1;
    let y_of = |v: f64| h - bottom - (h - bottom - 20.0) * v / max;
    let slot = (w - left - 20.0) / rows.len().max(1) as f64;
    let mut s = svg_frame((w, h, left, bottom), max, 0, y_of);
    let _ = writeln!(s, "<text x=\"{left}\" y=\"14\">HTTP request latency through each peer, {n} Services (p50 dark, p99 light), µs</text>");
    for (i, x) in rows.iter().enumerate() {
        let x0 = left + slot * i as f64 + slot * 0.2;
        let bw = slot * 0.3;
        for (j, (v, color)) in
            [(x.p50_us, "#1b9e77"), (x.p99_us, "#a6dba0")].into_iter().enumerate()
        {
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{color}\"/>",
                x0 + j as f64 * bw,
                y_of(v),
                h - bottom - y_of(v)
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x0 + bw,
            h - bottom + 16.0,
            x.peer
        );
    }
    s += "</svg>\n";
    s
}

/// The backends of the topology serve from this binary (`vipr-bench backend`).
pub fn serve_backend(args: &[String]) -> Result<()> {
    let name =
        args.iter().position(|a| a == "--name").and_then(|i| args.get(i + 1)).context("--name")?;
    let port = args
        .iter()
        .position(|a| a == "--port")
        .and_then(|i| args.get(i + 1))
        .context("--port")?
        .parse()?;
    vipr::probe::backend(name, port)
}
