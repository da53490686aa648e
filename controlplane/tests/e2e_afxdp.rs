//! End to end through the AF_XDP dataplane: the XDP e2e topology (src/testbed.rs), real
//! TCP and UDP between real sockets, with vipr's poll-mode engine (`vipr_poll::afxdp`)
//! started in the vipr namespace by the test itself, its steering program on every
//! vipr-side veth, next hops learned from the namespace's kernel. Needs root.
//! Namespaces are prefixed `vafx`, so these run beside the XDP e2e tests.

use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use vipr::testbed::{self, Testbed, CLIENT, SNAT, VIP, VIP6, VIP_PORT};
use vipr_dataplane::pipeline::SharedTables;
use vipr_dataplane::tables::Compiler;
use vipr_poll::afxdp::{self, AfxdpConfig, AfxdpInterface};
use vipr_poll::netns::in_netns;
use vipr_poll::{Engine, EngineOptions};
use vipr_xdp::AttachMode;

const VIPR: &str = env!("CARGO_BIN_EXE_vipr");

struct Setup {
    // Field order: the engine stops before the namespaces go.
    engine: Option<Engine>,
    tables: SharedTables,
    compiler: Compiler,
    mode: &'static str,
    tb: Testbed,
}

fn setup(name: &str, mode: &'static str) -> Setup {
    assert!(
        std::fs::read_to_string("/proc/self/status").unwrap().lines().any(|l| l.starts_with("Uid:\t0\t")),
        "end-to-end tests build network namespaces and load BPF: run them as root (scripts/test.sh does)"
    );
    let mut tb = Testbed::new(&format!("vafx{name}-"), 4).expect("testbed");
    tb.start_backends(VIPR).expect("backends");
    let mut compiler = Compiler::default();
    let tables = SharedTables::new(compiler.compile(&desired(&tb, mode, &[0, 1, 2, 3])).unwrap());
    let interfaces = tb
        .lb_interfaces()
        .into_iter()
        .map(|name| AfxdpInterface {
            name,
            attach: AttachMode::Native,
            queues: vec![0],
            cores: vec![],
        })
        .collect();
    let mut config = AfxdpConfig::new(interfaces);
    // The test machine's cores are shared: poll, but nap when idle.
    config.engine = EngineOptions {
        idle_sleep: Some(Duration::from_micros(20)),
        conntrack_capacity: 65_536,
        ..Default::default()
    };
    let t = tables.clone();
    let engine = in_netns(&tb.lb_ns(), move || afxdp::start(config, &t))
        .unwrap()
        .unwrap_or_else(|e| panic!("starting the AF_XDP dataplane: {e:#}"));
    Setup { engine: Some(engine), tables, compiler, mode, tb }
}

/// The desired tables of the XDP e2e config (`vipr::demo::config_for`), by the same
/// path `vipr run` takes: parse, validate, model.
fn desired(tb: &Testbed, mode: &str, backends: &[usize]) -> vipr_dataplane::tables::DesiredState {
    let yaml = vipr::demo::config_for(tb, "e2e-afxdp", mode, backends)
        .replace("dataplane: xdp", "dataplane: afxdp");
    let cfg = vipr_config::parse("e2e-afxdp.yaml", &yaml).unwrap_or_else(|e| panic!("{e:?}"));
    vipr::model::from_config(&cfg)
}

impl Setup {
    fn engine(&self) -> &Engine {
        self.engine.as_ref().unwrap()
    }

    fn set_backends(&mut self, backends: &[usize]) {
        let t = self.compiler.compile(&desired(&self.tb, self.mode, backends)).unwrap();
        self.tables.store(t);
    }

    /// Runs `vipr probe` in the client namespace.
    fn probe(&self, target: &str, args: &[&str]) -> Value {
        let mut full = vec![VIPR, "probe", target];
        full.extend_from_slice(args);
        let out = self.tb.ns(&self.tb.client_ns(), &full).expect("vipr probe");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("probe output {out:?}: {e}"))
    }

    fn start_stream(&self, seconds: u64) -> std::process::Child {
        let client = self.tb.client_ns();
        let seconds = seconds.to_string();
        let args = ["netns", "exec", &client, VIPR, "probe", &v4(VIP_PORT), "--stream", &seconds];
        std::process::Command::new("ip")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Stops the engine: no frame may be left lent out.
    fn stop(&mut self) {
        let report = self.engine.take().unwrap().stop().expect("workers stop cleanly");
        assert_eq!(report.leaked(), 0, "{:?}", report.outstanding);
        for q in report.into_queues::<afxdp::XskQueue>() {
            let a = q.accounting();
            assert!(a.balanced() && a.violations == 0, "{a:?}");
        }
    }
}

fn counts(v: &Value, field: &str) -> BTreeMap<String, u64> {
    v[field].as_object().unwrap().iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap())).collect()
}

fn v4(port: u16) -> String {
    format!("{VIP}:{port}")
}

fn v6(port: u16) -> String {
    format!("[{VIP6}]:{port}")
}

#[test]
fn af_xdp_connections_reach_every_backend_over_both_families_and_protocols() {
    let mut s = setup("fam", "dnat");
    // Warm-up: the first frames to each neighbour take the kernel path and teach the
    // resolver the next hops.
    for target in [v4(VIP_PORT), v6(VIP_PORT)] {
        assert_eq!(s.probe(&target, &["--count", "20"])["failures"], 0);
    }
    std::thread::sleep(Duration::from_millis(500));
    let warm = s.engine().queue_stats();
    for (target, args) in [
        (v4(VIP_PORT), vec!["--count", "400", "--source-port-base", "20000"]),
        (v6(VIP_PORT), vec!["--count", "200"]),
        (v4(VIP_PORT), vec!["--count", "200", "--udp"]),
        (v6(VIP_PORT), vec!["--count", "200", "--udp"]),
    ] {
        let r = s.probe(&target, &args);
        assert_eq!(r["failures"], 0, "{target} {args:?}: {r}");
        let by_backend = counts(&r, "backends");
        assert_eq!(by_backend.len(), 4, "{target} {args:?}: every backend is reached: {r}");
        // dnat: the backends see the client's own address.
        if !target.starts_with('[') && !args.contains(&"--udp") {
            assert_eq!(counts(&r, "seen_as").keys().collect::<Vec<_>>(), vec![CLIENT]);
        }
    }
    // The engine, not the kernel, carried the traffic: once next hops are learned,
    // frames leave through the engine's own TX. (A few still take the kernel path while
    // the resolver, which polls every 200 ms, catches up on a busy machine: 3% was seen
    // with the whole suite running at once.)
    let stats = s.engine().queue_stats();
    let tx: u64 = stats.iter().zip(&warm).map(|(q, w)| q.tx - w.tx).sum();
    let to_kernel: u64 = stats.iter().zip(&warm).map(|(q, w)| q.to_kernel - w.to_kernel).sum();
    assert!(tx > 1000, "the engine transmitted {tx} frames: {stats:?}");
    assert!(
        to_kernel < tx / 10,
        "{to_kernel} frames took the exception path, {tx} the engine's TX"
    );
    assert!(stats.iter().all(|q| q.mode == "copy"), "{stats:?}");
    let c = s.engine().counters();
    // Every TCP connection is a new flow; UDP probes may reuse a source port.
    assert_eq!(c.vips.iter().map(|v| v.new_flows).take(2).sum::<u64>(), 640, "{c:?}");
    assert!(s.engine().conntrack_flows() >= 900);
    s.stop();
}

#[test]
fn an_af_xdp_udp_flow_stays_on_one_backend() {
    let mut s = setup("stick", "dnat");
    let r = s.probe(&v4(VIP_PORT), &["--count", "50", "--udp", "--same-socket"]);
    assert_eq!(r["failures"], 0, "{r}");
    assert_eq!(counts(&r, "backends").len(), 1, "one flow, one backend: {r}");
    s.stop();
}

#[test]
fn af_xdp_backend_removal_keeps_other_flows_and_sends_it_no_new_ones() {
    let mut s = setup("remove", "dnat");
    let streams: Vec<_> = (0..8).map(|_| s.start_stream(4)).collect();
    std::thread::sleep(Duration::from_millis(800));
    s.set_backends(&[0, 1, 2]);
    std::thread::sleep(Duration::from_millis(200));
    let r = s.probe(&v4(VIP_PORT), &["--count", "300"]);
    assert_eq!(r["failures"], 0, "{r}");
    let by_backend = counts(&r, "backends");
    assert!(
        !by_backend.contains_key("backend-4"),
        "new connections went to the removed backend: {by_backend:?}"
    );
    assert_eq!(by_backend.len(), 3, "{by_backend:?}");
    let results: Vec<Value> = streams
        .into_iter()
        .map(|child| serde_json::from_slice(&child.wait_with_output().unwrap().stdout).unwrap())
        .collect();
    let broken: Vec<&Value> =
        results.iter().filter(|v| v["failures"] != 0 || v["stream_complete"] != true).collect();
    assert!(broken.is_empty(), "streams broke: {broken:?}\nqueues: {:?}", s.engine().queue_stats());
    s.stop();
}

#[test]
fn af_xdp_snat_mode_works_when_the_backends_do_not_route_back_through_vipr() {
    let mut s = setup("snat", "snat");
    for i in 0..s.tb.backends {
        let ns = s.tb.backend_ns(i);
        s.tb.ns(&ns, &["ip", "route", "del", "default"]).unwrap();
        s.tb.ns(&ns, &["ip", "-6", "route", "del", "default"]).unwrap();
    }
    let r = s.probe(&v4(VIP_PORT), &["--count", "100"]);
    assert_eq!(r["failures"], 0, "{r}");
    assert_eq!(counts(&r, "backends").len(), 4, "{r}");
    assert_eq!(counts(&r, "seen_as").keys().collect::<Vec<_>>(), vec![SNAT], "{r}");
    let r = s.probe(&v6(VIP_PORT), &["--count", "100"]);
    assert_eq!(r["failures"], 0, "{r}");
    assert_eq!(counts(&r, "seen_as").keys().collect::<Vec<_>>(), vec![testbed::SNAT6], "{r}");
    s.stop();
}

#[test]
fn host_traffic_passes_the_af_xdp_steering_untouched() {
    let mut s = setup("host", "dnat");
    let lb = s.tb.lb_ns();
    s.tb.spawn(&lb, &[VIPR, "backend", "--name", "the-router", "--port", "9090"]).unwrap();
    s.tb.wait_for_port(&lb, 9090).unwrap();
    let before: u64 = s.engine().queue_stats().iter().map(|q| q.rx).sum();
    let r = s.probe(&format!("{}:9090", testbed::ROUTER), &["--count", "5"]);
    assert_eq!(r["failures"], 0, "{r}");
    assert_eq!(counts(&r, "backends").keys().collect::<Vec<_>>(), vec!["the-router"]);
    let after: u64 = s.engine().queue_stats().iter().map(|q| q.rx).sum();
    assert_eq!(before, after, "host traffic was steered to the engine");
    let r = s.probe(&v4(VIP_PORT), &["--count", "5"]);
    assert_eq!(r["failures"], 0, "{r}");
    s.stop();
}
