//! End to end through the DPDK dataplane: real TCP and UDP between real sockets in
//! network namespaces (controlplane/src/testbed.rs), forwarded by the poll-mode engine
//! (vipr-poll) running vipr's pipeline on DPDK `net_af_packet` ports, one per veth of
//! the vipr namespace, with `--no-huge` (no hugepages, no NIC). Built and run with the
//! `dpdk` feature (scripts/test.sh does). Needs root.
//!
//! `net_af_packet` reads and writes frames through a packet socket on each veth, so the
//! kernel of the vipr namespace *also* sees every frame that arrives, and would act on it
//! as the router the testbed makes it: forward VIP traffic it has no route for (or
//! answer with ICMP), forward the backends' replies untranslated. Each test therefore
//! keeps that kernel quiet before the engine starts:
//! - IPv4 and IPv6 forwarding off: a frame not addressed to the namespace's own
//!   addresses is dropped; IPv4 sends no ICMP for it then, and the backends' replies
//!   (to the clients, which have routes) are dropped silently in both families;
//! - a blackhole route for the IPv6 VIPs: IPv6 answers a destination it has no route
//!   for with ICMPv6 "no route" even with forwarding off, and a client's TCP takes that
//!   as a hard error in SYN_SENT (seen: "Network is unreachable" when the real SYN-ACK
//!   came second); a blackhole route drops silently;
//! - the VIPs are on no interface, so nothing local answers them;
//! - GRO off on the vipr-side veths, so the packet sockets get frames as they were
//!   sent, never merged into one larger than an mbuf.
//!
//! The kernel still answers ARP and neighbour solicitations for the namespace's own
//! addresses, which is what the clients and backends need to reach their gateway, and
//! `Pass` costs nothing: the engine frees the mbuf, as the kernel has the frame already
//! (`KernelPath::AlreadySeen`). The next hops (the far ends' MACs) are read from the
//! namespaces up front.
//!
//! Every test builds and removes its own namespaces (prefix `vdpk-`); the ports are
//! opened and closed from inside the vipr namespace (the af_packet driver looks the
//! interface up, and sets it up and down, in the namespace of the calling thread).
//! One EAL serves every test of this binary (one per process).

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use vipr::testbed::{self, Testbed, CLIENT, VIP, VIP6, VIP_PORT};
use vipr_dataplane::pipeline::SharedTables;
use vipr_dataplane::tables::{Compiler, NextHop, NextHopSpec};
use vipr_dpdk::{Dpdk, Mempool};
use vipr_poll::{Clock, Engine, EngineOptions};

const VIPR: &str = env!("CARGO_BIN_EXE_vipr");

/// This thread inside a network namespace until dropped.
struct InNetns {
    home: File,
}

impl InNetns {
    fn enter(ns: &str) -> InNetns {
        let home = File::open("/proc/thread-self/ns/net").expect("own network namespace");
        let target = File::open(format!("/var/run/netns/{ns}")).expect("the vipr namespace");
        // SAFETY: setns(2) with a network-namespace fd moves only the calling thread.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns into {ns}: {}", std::io::Error::last_os_error());
        InNetns { home }
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        // SAFETY: back to the namespace this thread started in.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// Fields drop in order: the engine first (it hands the queues back), then the ports
/// (closed inside the vipr namespace), then the namespace guard, then the testbed.
struct Setup {
    engine: Option<Engine>,
    dpdk: Option<Dpdk>,
    pool: Arc<Mempool>,
    /// The backends' neighbours kept resolved by the kernel (as the agent does).
    neighbors: Option<vipr::neighbors::Neighbors>,
    netns: Option<InNetns>,
    shared: SharedTables,
    compiler: Compiler,
    config: vipr_config::Config,
    hops: Vec<NextHopSpec>,
    tb: Testbed,
}

fn config_text(tb: &Testbed, name: &str, backends: &[usize]) -> String {
    let xdp = vipr::demo::config_for(tb, &format!("e2e-dpdk-{name}"), "dnat", backends);
    let ports: Vec<String> = tb
        .lb_interfaces()
        .iter()
        .enumerate()
        .map(|(i, dev)| format!("\"net_af_packet_{name}{i},iface={dev}\""))
        .collect();
    // The same EAL arguments for every test of this binary (one EAL per process): no
    // hugepages, no PCI scan, no shared files.
    let eal_args: Vec<String> = vipr_dpdk::eal::no_hardware_args("vipr-e2e-dpdk")
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    let dpdk = format!(
        "dpdk:\n  eal_args: [{}]\n  ports: [{}]\n  mbufs: 8191\nsnat:",
        eal_args.join(", "),
        ports.join(", ")
    );
    xdp.replace("dataplane: xdp", "dataplane: dpdk")
        .replace("    attach: native\n", "")
        .replacen("snat:", &dpdk, 1)
}

fn mac_of(tb: &Testbed, ns: &str, dev: &str) -> [u8; 6] {
    let out = tb.ns(ns, &["ip", "-j", "link", "show", "dev", dev]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    let text = v[0]["address"].as_str().unwrap().to_string();
    let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    bytes.try_into().unwrap()
}

/// Next hops as the test gives them (read from the namespaces up front), or learned by
/// the engine's follower from the vipr namespace's kernel.
#[derive(Clone, Copy, PartialEq)]
enum Hops {
    Static,
    FromTheKernel,
}

fn setup(name: &str) -> Setup {
    setup_with(name, Hops::Static)
}

fn setup_with(name: &str, how: Hops) -> Setup {
    assert!(
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:\t0\t")),
        "end-to-end tests build network namespaces: run them as root (scripts/test.sh does)"
    );
    let mut tb = Testbed::new(&format!("vdpk-{name}-"), 4).expect("testbed");
    tb.start_backends(VIPR).expect("backends");
    let lb = tb.lb_ns();
    tb.ns(&lb, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]).unwrap();
    tb.ns(&lb, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"]).unwrap();
    tb.ns(&lb, &["ip", "-6", "route", "add", "blackhole", "2001:db8:f::/64"]).unwrap();
    for dev in tb.lb_interfaces() {
        tb.ns(&lb, &["ethtool", "-K", &dev, "gro", "off"]).unwrap();
    }
    let config = vipr_config::parse("e2e_dpdk.yaml", &config_text(&tb, name, &[0, 1, 2, 3]))
        .unwrap_or_else(|d| panic!("the test's config: {d:?}"));
    let dpdk_cfg = config.dpdk.clone().expect("a dpdk section");
    // The EAL from the main thread's namespace (its threads stay in it), the ports from
    // the vipr namespace's.
    vipr_dpdk::Eal::init(&dpdk_cfg.eal_args).unwrap_or_else(|e| panic!("{e}"));
    let netns = InNetns::enter(&lb);
    let dpdk = Dpdk::open(&dpdk_cfg, 1).unwrap_or_else(|e| panic!("{e}"));

    // Next hops: the client side out of lbc, backend i out of lbb{i+1}.
    let hop = |port: usize, ns: &str, far: &str| {
        let p = &dpdk.ports[port];
        NextHop { ifindex: p.ifindex(), src_mac: p.mac(), dst_mac: mac_of(&tb, ns, far) }
    };
    let client = hop(0, &tb.client_ns(), "c0");
    let mut hops = vec![
        NextHopSpec { dest: "198.51.100.0/24".parse().unwrap(), hop: client },
        NextHopSpec { dest: "2001:db8:c::/64".parse().unwrap(), hop: client },
    ];
    for i in 0..tb.backends {
        let h = hop(i + 1, &tb.backend_ns(i), "b0");
        hops.push(NextHopSpec {
            dest: format!("{}/32", testbed::backend_addr(i)).parse().unwrap(),
            hop: h,
        });
        hops.push(NextHopSpec {
            dest: format!("{}/128", testbed::backend_addr6(i)).parse().unwrap(),
            hop: h,
        });
    }
    if how == Hops::FromTheKernel {
        hops.clear();
    }
    let mut compiler = Compiler::default();
    let mut desired = vipr::model::from_config(&config);
    desired.next_hops = hops.clone();
    let shared = SharedTables::new(compiler.compile(&desired).expect("tables"));
    let pool = dpdk.pool.clone();
    let mut s = Setup {
        engine: None,
        dpdk: Some(dpdk),
        pool,
        neighbors: None,
        netns: Some(netns),
        shared,
        compiler,
        config,
        hops,
        tb,
    };
    match how {
        Hops::Static => s.start_engine(),
        Hops::FromTheKernel => {
            // From inside the vipr namespace (this thread is): the kernel resolves the
            // backends' neighbours by itself, and the follower reads them.
            let mut neighbors = vipr::neighbors::Neighbors::default();
            let tables = s.compiler.tables();
            let ids: Vec<u32> = (0..tables.backends.len() as u32).collect();
            neighbors.update(tables, &ids);
            s.neighbors = Some(neighbors);
            let dpdk = s.dpdk.take().unwrap();
            let engine = dpdk.start_engine_resolving(&[None], &s.shared, engine_options());
            s.engine = Some(engine.unwrap_or_else(|e| panic!("{e:#}")));
        }
    }
    s
}

fn engine_options() -> EngineOptions {
    EngineOptions {
        conntrack_capacity: 65536,
        batch: 64,
        clock: Clock::Monotonic,
        // The test machine's cores are shared: sleep a little when idle.
        idle_sleep: Some(Duration::from_micros(100)),
    }
}

impl Setup {
    fn start_engine(&mut self) {
        let plans = self.dpdk.as_ref().unwrap().plans(&[None]).unwrap_or_else(|e| panic!("{e}"));
        self.engine = Some(Engine::start(plans, &self.shared, engine_options()).expect("engine"));
    }

    /// Serves `backends` from now on (a control-plane update; flows stay in conntrack).
    fn serve(&mut self, backends: &[usize]) {
        let name = self.config.instance.trim_start_matches("e2e-dpdk-").to_string();
        self.config = vipr_config::parse("e2e_dpdk.yaml", &config_text(&self.tb, &name, backends))
            .unwrap_or_else(|d| panic!("{d:?}"));
        let mut desired = vipr::model::from_config(&self.config);
        desired.next_hops = self.hops.clone();
        self.shared.store(self.compiler.compile(&desired).expect("tables"));
    }

    /// Stops the engine and closes the ports: nothing lent out, every mbuf back.
    fn finish(mut self) {
        let report = self.engine.take().unwrap().stop().expect("the engine stops");
        assert_eq!(report.leaked(), 0, "buffers still lent out: {:?}", report.outstanding);
        drop(report);
        self.dpdk.take();
        assert_eq!(self.pool.available(), self.pool.size(), "every mbuf is back in the pool");
        self.neighbors.take();
        self.netns.take();
    }

    fn probe(&self, target: &str, args: &[&str]) -> Value {
        let mut full = vec![VIPR, "probe", target];
        full.extend_from_slice(args);
        if !args.contains(&"--timeout-s") {
            full.extend_from_slice(&["--timeout-s", "3"]);
        }
        let out = self.tb.ns(&self.tb.client_ns(), &full).expect("vipr probe");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("probe output {out:?}: {e}"))
    }

    fn start_stream(&self, seconds: u64) -> std::process::Child {
        let client = self.tb.client_ns();
        let seconds = seconds.to_string();
        Command::new("ip")
            .args(["netns", "exec", &client, VIPR, "probe", &v4(), "--stream", &seconds])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

fn counts(v: &Value, field: &str) -> BTreeMap<String, u64> {
    v[field].as_object().unwrap().iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap())).collect()
}

fn v4() -> String {
    format!("{VIP}:{VIP_PORT}")
}

fn v6() -> String {
    format!("[{VIP6}]:{VIP_PORT}")
}

#[test]
fn tcp_connections_through_dpdk_reach_every_backend_and_keep_the_client_address() {
    let s = setup("spread");
    let r = s.probe(&v4(), &["--count", "400", "--source-port-base", "20000"]);
    assert_eq!(r["failures"], 0, "{r}");
    let by_backend = counts(&r, "backends");
    assert_eq!(by_backend.len(), 4, "every backend is reached: {by_backend:?}");
    for (b, n) in &by_backend {
        assert!((70..=130).contains(n), "{b} got {n} of 400 connections, more than 30% from 100");
    }
    assert_eq!(counts(&r, "seen_as").keys().collect::<Vec<_>>(), vec![CLIENT], "dnat keeps it");
    let engine = s.engine.as_ref().unwrap();
    let c = engine.counters();
    let new_flows: u64 = (0..64).map(|v| c.vip(v).new_flows).sum();
    assert_eq!(new_flows, 400, "one conntrack flow per connection");
    let stats = engine.queue_stats();
    assert!(stats.iter().all(|q| q.mode == "dpdk"), "{stats:?}");
    assert!(stats.iter().map(|q| q.tx).sum::<u64>() >= 400 * 4, "the engine forwarded: {stats:?}");
    s.finish();
}

#[test]
fn ipv6_tcp_and_udp_of_both_families_reach_every_backend_through_dpdk() {
    let s = setup("fam");
    for (target, args) in [
        (v6(), vec!["--count", "100"]),
        (v4(), vec!["--count", "100", "--udp"]),
        (v6(), vec!["--count", "100", "--udp"]),
    ] {
        let r = s.probe(&target, &args);
        assert_eq!(r["failures"], 0, "{target} {args:?}: {r}");
        assert_eq!(counts(&r, "backends").len(), 4, "{target} {args:?}: every backend: {r}");
    }
    s.finish();
}

#[test]
fn one_udp_flow_stays_on_one_backend_through_dpdk() {
    let s = setup("stick");
    let r = s.probe(&v4(), &["--count", "50", "--udp", "--same-socket"]);
    assert_eq!(r["failures"], 0, "{r}");
    assert_eq!(counts(&r, "backends").len(), 1, "one flow, one backend: {r}");
    s.finish();
}

#[test]
fn removing_a_backend_keeps_other_flows_and_sends_it_no_new_ones_through_dpdk() {
    let mut s = setup("remove");
    let streams: Vec<_> = (0..8).map(|_| s.start_stream(4)).collect();
    std::thread::sleep(Duration::from_millis(800));
    s.serve(&[0, 1, 2]);
    let r = s.probe(&v4(), &["--count", "200"]);
    assert_eq!(r["failures"], 0, "{r}");
    let by_backend = counts(&r, "backends");
    assert!(
        !by_backend.contains_key("backend-4"),
        "new flows reached the removed backend: {by_backend:?}"
    );
    assert_eq!(by_backend.len(), 3, "{by_backend:?}");
    for child in streams {
        let out = child.wait_with_output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["failures"], 0, "a stream broke: {v}");
        assert_eq!(v["stream_complete"], true, "a stream did not end cleanly: {v}");
    }
    s.finish();
}

#[test]
fn next_hops_learned_from_the_kernel_carry_tcp_and_udp_of_both_families_through_dpdk() {
    // No next hop given: the follower learns the backends' from the kernel's managed
    // neighbours, and the clients' from the first replies it had to pass (a TCP or UDP
    // retry then goes through).
    let s = setup_with("learn", Hops::FromTheKernel);
    for (target, args) in [
        (v4(), vec!["--count", "40"]),
        (v6(), vec!["--count", "40"]),
        (v4(), vec!["--count", "40", "--udp"]),
        (v6(), vec!["--count", "40", "--udp"]),
    ] {
        let r = s.probe(&target, &args);
        assert_eq!(r["failures"], 0, "{target} {args:?}: {r}");
        assert_eq!(counts(&r, "backends").len(), 4, "{target} {args:?}: every backend: {r}");
    }
    s.finish();
}

#[test]
fn the_vip_is_unreachable_without_the_engine_so_the_kernel_does_not_forward_it() {
    // The ground the other tests stand on: with the engine stopped, the vipr namespace's
    // kernel (which sees the same frames) neither forwards nor answers VIP traffic.
    let mut s = setup("quiet");
    let report = s.engine.take().unwrap().stop().unwrap();
    assert_eq!(report.leaked(), 0);
    let r = s.probe(&v4(), &["--count", "2", "--timeout-s", "1"]);
    assert_eq!(r["failures"], 2, "the VIP answered with no engine running: {r}");
    // The namespace's own address (not a VIP) works, through the kernel, engine or not.
    let lb = s.tb.lb_ns();
    s.tb.spawn(&lb, &[VIPR, "backend", "--name", "the-router", "--port", "9090"]).unwrap();
    s.tb.wait_for_port(&lb, 9090).unwrap();
    s.start_engine_from(report);
    let r = s.probe(&format!("{}:9090", testbed::ROUTER), &["--count", "5"]);
    assert_eq!(r["failures"], 0, "host traffic with the engine running: {r}");
    let r = s.probe(&v4(), &["--count", "20"]);
    assert_eq!(r["failures"], 0, "the VIP with the engine running again: {r}");
    s.finish();
}

impl Setup {
    /// Restarts the engine on the queues a stopped one handed back.
    fn start_engine_from(&mut self, report: vipr_poll::StopReport) {
        let queues = report.into_queues::<vipr_dpdk::DpdkQueue>();
        let plan = vipr_poll::WorkerPlan { queues, core: None };
        self.engine =
            Some(Engine::start(vec![plan], &self.shared, engine_options()).expect("engine"));
    }
}

/// `vipr run` with `dataplane: dpdk`, as its own process (its own EAL): the agent opens
/// the ports, starts the engine with next hops from the kernel, and keeps the backends'
/// neighbours (which opening af_packet ports flushes); `vipr status` shows the queues.
#[test]
fn vipr_run_serves_through_dpdk_and_status_shows_the_queues() {
    let mut tb = Testbed::new("vdpk-run-", 2).expect("testbed");
    tb.start_backends(VIPR).expect("backends");
    let lb = tb.lb_ns();
    tb.ns(&lb, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]).unwrap();
    tb.ns(&lb, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"]).unwrap();
    tb.ns(&lb, &["ip", "-6", "route", "add", "blackhole", "2001:db8:f::/64"]).unwrap();
    for dev in tb.lb_interfaces() {
        tb.ns(&lb, &["ethtool", "-K", &dev, "gro", "off"]).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("vipr-e2e-dpdk-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("vipr.yaml");
    let text = config_text(&tb, "run", &[0, 1])
        .replace("vipr-e2e-dpdk", "vipr-e2e-dpdk-agent")
        .replace("instance: e2e-dpdk-run", "instance: e2e-dpdk-agent");
    std::fs::write(&config, text).unwrap();
    let agent =
        vipr::demo::Agent::start(std::path::Path::new(VIPR), &config, "e2e-dpdk-agent", &lb)
            .expect("vipr run");

    let out = tb.ns(&tb.client_ns(), &[VIPR, "probe", &v4(), "--count", "40"]).unwrap();
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["failures"], 0, "{r}");
    assert_eq!(counts(&r, "backends").len(), 2, "{r}");
    let out = tb.ns(&tb.client_ns(), &[VIPR, "probe", &v6(), "--count", "10"]).unwrap();
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["failures"], 0, "IPv6: {r}");

    let st = Command::new(VIPR)
        .args(["status", "--json", "--instance", "e2e-dpdk-agent"])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["dataplane"], "dpdk", "{st}");
    let queues = st["queues"].as_array().unwrap();
    assert_eq!(queues.len(), tb.lb_interfaces().len(), "{st}");
    assert!(queues.iter().map(|q| q["tx"].as_u64().unwrap()).sum::<u64>() >= 40 * 3, "{st}");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
