//! vipr's DPDK dataplane as a peer of the forward suite (the `dpdk` feature): the
//! poll-mode engine (vipr-poll) on DPDK `net_af_packet` ports, one per veth of the router
//! namespace (RX rings of 4096 frames), `--no-huge`, one busy-polling worker on the
//! last core (as the AF_XDP peer's).
//!
//! af_packet is a packet socket: the router namespace's kernel still receives every
//! frame (and is told to drop it: forwarding off), and each frame is copied between
//! the socket rings and mbufs. So this measures the DPDK driver as it runs without a NIC
//! of its own, not DPDK on a NIC. CPU: the worker thread's own CPU time per million
//! delivered packets, as for the AF_XDP peer, beside the machine's busy time that every
//! peer reports.

use super::*;
use vipr_dataplane::pipeline::SharedTables;
use vipr_dataplane::tables::{NextHop, NextHopSpec};
use vipr_dpdk::{Dpdk, Eal};
use vipr_poll::{Clock, Engine, EngineOptions};

/// The router namespace's kernel made quiet for the DPDK run (it sees the same frames
/// through the packet sockets), and made a router again afterwards.
struct Quiet {
    lb: String,
    devs: Vec<String>,
}

impl Quiet {
    fn new(tb: &Testbed) -> Result<Quiet> {
        // GRO off where the packet sockets would otherwise get merged TCP segments
        // larger than an mbuf: the backends' links. The client link keeps it: the
        // generator's frames arrive there by XDP transmit, which a veth accepts only
        // with NAPI (GRO) on, and it sends no mergeable stream.
        let devs = tb.lb_interfaces().into_iter().filter(|d| d != "lbc").collect();
        let q = Quiet { lb: tb.lb_ns(), devs };
        q.set("0", "off")?;
        Ok(q)
    }

    fn set(&self, forwarding: &str, gro: &str) -> Result<()> {
        let ns = |args: &[&str]| {
            let mut full = vec!["ip", "netns", "exec", &self.lb];
            full.extend_from_slice(args);
            testbed::sh(&full)
        };
        ns(&["sysctl", "-qw", &format!("net.ipv4.ip_forward={forwarding}")])?;
        ns(&["sysctl", "-qw", &format!("net.ipv6.conf.all.forwarding={forwarding}")])?;
        // IPv6 answers a destination it has no route for with ICMPv6 "no route", even
        // with forwarding off: a blackhole route for the VIPs keeps it silent.
        let _ = ns(&["ip", "-6", "route", "del", "blackhole", "2001:db8:f::/48"]);
        if forwarding == "0" {
            ns(&["ip", "-6", "route", "add", "blackhole", "2001:db8:f::/48"])?;
        }
        for dev in &self.devs {
            ns(&["ethtool", "-K", dev, "gro", gro])?;
            ns(&["ip", "link", "set", dev, "up"])?;
        }
        Ok(())
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        let _ = self.set("1", "on");
    }
}

/// Rate (with worker CPU) and latency through the DPDK engine for the Services `svcs`,
/// traffic at each of `targets`.
#[allow(clippy::too_many_arguments)]
pub(super) fn samples(
    bed: &mut Bed,
    opts: &Opts,
    count: u32,
    requests: usize,
    n: usize,
    svcs: &[Service],
    targets: [(&'static str, (IpAddr, u16)); 2],
) -> Result<Vec<Sample>> {
    let lb = bed.tb.lb_ns();
    let eal_args = vipr_dpdk::eal::no_hardware_args("vipr-bench");
    // The EAL from this thread's own namespace (its threads stay there), once a process.
    Eal::init(&eal_args)?;
    let cfg = vipr_config::DpdkConfig {
        eal_args,
        ports: bed
            .tb
            .lb_interfaces()
            .iter()
            .enumerate()
            .map(|(i, dev)| format!("net_af_packet_bf{n}_{i},iface={dev},framecnt=4096"))
            .collect(),
        mbufs: 16383,
    };
    let tb = &bed.tb;
    let quiet = Quiet::new(tb)?;
    let dpdk = in_netns(&lb, || Ok(Dpdk::open(&cfg, 1)?))?;

    // Next hops: the client side out of lbc, backend i out of lbb{i+1}.
    let mut desired = vip_specs(svcs);
    let hop = |port: usize, ns: &str, far: &str| -> Result<NextHop> {
        let p = &dpdk.ports[port];
        Ok(NextHop { ifindex: p.ifindex(), src_mac: p.mac(), dst_mac: mac_of(tb, ns, far)? })
    };
    let client = hop(0, &tb.client_ns(), "c0")?;
    desired.next_hops.push(NextHopSpec { dest: "198.51.100.0/24".parse()?, hop: client });
    desired.next_hops.push(NextHopSpec { dest: "2001:db8:c::/64".parse()?, hop: client });
    for i in 0..tb.backends {
        let h = hop(i + 1, &tb.backend_ns(i), "b0")?;
        for dest in [
            format!("{}/32", testbed::backend_addr(i)),
            format!("{}/128", testbed::backend_addr6(i)),
        ] {
            desired.next_hops.push(NextHopSpec { dest: dest.parse()?, hop: h });
        }
    }
    let start = Instant::now();
    let shared = SharedTables::new(Compiler::default().compile(&desired)?);
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let options = EngineOptions {
        conntrack_capacity: 1 << 18,
        batch: 64,
        clock: Clock::Monotonic,
        // A dedicated core, busy-polling, as for the AF_XDP peer.
        idle_sleep: None,
    };
    // The worker owns the last core; the generator is left to the scheduler.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let core = (cpus > 1).then_some(cpus - 1);
    let engine = Engine::start(dpdk.plans(&[core])?, &shared, options)?;
    let tid = engine.worker_tids()[0];
    let mut out = Vec::new();
    let result = (|| -> Result<()> {
        for (target, (vip, port)) in targets {
            let template = bed.template(vip, port, opts)?;
            let cpu0 = thread_cpu_ns(tid);
            let mut x = rate_sample(bed, opts, count, "vipr DPDK", n, target, &template, load_ms)?;
            let worker = thread_cpu_ns(tid).saturating_sub(cpu0);
            x.worker_cpu_ms_per_mpkt = worker as f64 / 1e6 / (x.delivered.max(1) as f64 / 1e6);
            (x.p50_us, x.p99_us) = bed.latency(requests, opts.ipv6)?;
            out.push(x);
        }
        Ok(())
    })();
    let report = engine.stop()?;
    let leaked = report.leaked();
    drop(report);
    // af_packet ports close (and touch their interfaces) in their own namespace.
    in_netns(&lb, || {
        drop(dpdk);
        Ok(())
    })?;
    drop(quiet);
    result?;
    if leaked != 0 {
        bail!("the DPDK engine stopped with {leaked} buffers still lent out");
    }
    Ok(out)
}
