//! The XDP program's cost per packet through BPF_PROG_TEST_RUN, against a bare XDP_PASS
//! program measured in the same run on the same frames.
//!
//! The kernel times only the program runs (not the syscall), `repeat` times over one
//! frame. Repeating one frame is a conntrack hit after its first run, so the new-flow
//! scenario sends SYN+FIN: a SYN on a tuple whose entry is closing starts a new flow
//! (the pipeline's reopen rule), so every run takes the full miss path: Maglev slot,
//! conntrack insert of both entries, NAT.

use anyhow::{ensure, Result};
use std::fmt::Write as _;
use vipr_abi::*;
use vipr_dataplane::tables::{BackendSpec, Compiler, DesiredState, NextHop, NextHopSpec, VipSpec};
use vipr_fixtures::frame::{Pkt, TCP_ACK, TCP_FIN, TCP_SYN};
use vipr_xdp::{Limits, Programmer, Xdp};

const XDP_TX: u32 = 3;
const XDP_PASS: u32 = 2;

struct Family {
    name: &'static str,
    client: &'static str,
    vip: &'static str,
    other: &'static str,
    backends: [&'static str; 4],
}

const V4: Family = Family {
    name: "IPv4",
    client: "198.51.100.7",
    vip: "192.0.2.10",
    other: "192.0.2.99",
    backends: ["192.0.2.21", "192.0.2.22", "192.0.2.23", "192.0.2.24"],
};
const V6: Family = Family {
    name: "IPv6",
    client: "2001:db8:c::7",
    vip: "2001:db8:f::10",
    other: "2001:db8:f::99",
    backends: ["2001:db8:b::21", "2001:db8:b::22", "2001:db8:b::23", "2001:db8:b::24"],
};

fn desired() -> DesiredState {
    let hop = NextHop { ifindex: 1, src_mac: [2, 0, 0, 0, 0, 1], dst_mac: [2, 0, 0, 0, 0, 2] };
    let vip = |f: &Family| VipSpec {
        addr: f.vip.parse().unwrap(),
        port: 8088,
        proto: PROTO_TCP,
        snat_addr: None,
        affinity_timeout_s: None,
        source_ranges: vec![],
        ring_max: DEFAULT_RING_MAX,
        backends: f
            .backends
            .iter()
            .map(|b| BackendSpec {
                addr: b.parse().unwrap(),
                port: 8080,
                weight: 1,
                draining: false,
            })
            .collect(),
    };
    DesiredState {
        vips: vec![vip(&V4), vip(&V6)],
        next_hops: vec![
            NextHopSpec { dest: "0.0.0.0/0".parse().unwrap(), hop },
            NextHopSpec { dest: "::/0".parse().unwrap(), hop },
        ],
        ..Default::default()
    }
}

struct Row {
    scenario: String,
    ns: f64,
    baseline: f64,
}

pub fn suite(smoke: bool, machine: &str) -> Result<String> {
    let repeat = if smoke { 1_000 } else { 2_000_000 };
    let rounds = if smoke { 1 } else { 5 };
    let limits = Limits {
        vips: 16,
        backends: 64,
        conntrack_flows: 1 << 16,
        source_ranges: 16,
        next_hops: 16,
    };
    let mut xdp = Xdp::load(limits, None)?;
    let tables = Compiler::default().compile(&desired())?;
    Programmer::new().program(&mut xdp.maps, &xdp.limits, &tables)?;

    let mut rows = Vec::new();
    for f in [&V4, &V6] {
        let ack = Pkt::tcp(f.client, 40000, f.vip, 8088, TCP_ACK).payload(&[0; 6]).frame();
        let syn = Pkt::tcp(f.client, 40000, f.vip, 8088, TCP_SYN).payload(&[0; 6]).frame();
        let syn_fin =
            Pkt::tcp(f.client, 40001, f.vip, 8088, TCP_SYN | TCP_FIN).payload(&[0; 6]).frame();
        let other = Pkt::tcp(f.client, 40000, f.other, 22, TCP_ACK).payload(&[0; 6]).frame();
        // Establish the flow the hit scenario uses.
        let (action, _) = xdp.test_run(&mut syn.clone(), 1, 1)?;
        ensure!(action == XDP_TX, "{}: the SYN was not forwarded (action {action})", f.name);
        for (scenario, frame, want) in [
            ("established hit", &ack, XDP_TX),
            ("new flow", &syn_fin, XDP_TX),
            ("non-VIP pass", &other, XDP_PASS),
        ] {
            let (mut ns, mut base) = (f64::MAX, f64::MAX);
            // Interleaved rounds, best of each: the VM's noise only ever adds time.
            for _ in 0..rounds {
                let (action, d) = xdp.test_run(&mut frame.clone(), 1, repeat)?;
                ensure!(action == want, "{} {scenario}: action {action}, expected {want}", f.name);
                ns = ns.min(d.as_nanos() as f64);
                let (_, d) = xdp.test_run_pass(&mut frame.clone(), repeat)?;
                base = base.min(d.as_nanos() as f64);
            }
            rows.push(Row { scenario: format!("{scenario}, TCP/{}", f.name), ns, baseline: base });
        }
    }
    let new_flows: u64 = xdp.maps.counters()?.vips.iter().map(|s| s.new_flows).sum();
    ensure!(
        new_flows >= repeat as u64,
        "the new-flow scenario did not create new flows ({new_flows})"
    );

    let mut s = String::new();
    let _ = writeln!(s, "## XDP program, BPF_PROG_TEST_RUN\n");
    let _ = writeln!(
        s,
        "Command: `cargo run --release -p vipr-bench -- xdp --write bench/RESULTS.md`{}  \nMachine: {machine}  \n\
         Each figure: the kernel's mean time a run over {repeat} runs of one frame, best of {rounds} rounds; \
         baseline: a bare `XDP_PASS` program over the same frame in the same round. Frames: TCP, 6 bytes of \
         payload, VIP with 4 backends, `dnat`, static next hop (XDP_TX). New flow: SYN+FIN, which takes the \
         full miss path on every run (Maglev slot, both conntrack entries inserted). \
         Goal: established hit at most 3x a bare pass (Katran publishes 100-120 ns/packet, about 4x a bare program).\n",
        if smoke { " (SMOKE RUN: figures meaningless)" } else { "" },
    );
    let _ = writeln!(s, "| scenario | vipr ns/packet | bare XDP_PASS ns/packet | ratio |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for r in &rows {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.2}x |",
            r.scenario,
            r.ns,
            r.baseline,
            r.ns / r.baseline
        );
    }
    Ok(s)
}
