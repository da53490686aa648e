//! End to end through the XDP dataplane: real kernels, real BPF maps, real TCP and UDP
//! between real sockets in network namespaces (controlplane/src/testbed.rs), with
//! `vipr run` as its own process. Needs root. Every test builds and removes its own
//! namespaces; names are unique per test.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vipr::demo::{config_for, Agent};
use vipr::testbed::{self, Testbed, CLIENT, SNAT, VIP, VIP6, VIP_PORT};

const VIPR: &str = env!("CARGO_BIN_EXE_vipr");

struct Setup {
    tb: Testbed,
    agent: Agent,
    config: PathBuf,
    _dir: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn setup(name: &str, mode: &str) -> Setup {
    assert!(
        std::fs::read_to_string("/proc/self/status").unwrap().lines().any(|l| l.starts_with("Uid:\t0\t")),
        "end-to-end tests build network namespaces and load BPF: run them as root (scripts/test.sh does)"
    );
    let mut tb = Testbed::new(&format!("{name}-"), 4).expect("testbed");
    tb.start_backends(VIPR).expect("backends");
    let dir = std::env::temp_dir().join(format!("vipr-e2e-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("vipr.yaml");
    let instance = format!("e2e-{name}");
    std::fs::write(&config, config_for(&tb, &instance, mode, &[0, 1, 2, 3])).unwrap();
    let agent = Agent::start(Path::new(VIPR), &config, &instance, &tb.lb_ns()).expect("vipr run");
    Setup { tb, agent, config, _dir: tempdir::Dir(dir) }
}

/// Runs `vipr probe` in the client namespace.
fn probe(s: &Setup, target: &str, args: &[&str]) -> Value {
    let mut full = vec![VIPR, "probe", target];
    full.extend_from_slice(args);
    let out = s.tb.ns(&s.tb.client_ns(), &full).expect("vipr probe");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("probe output {out:?}: {e}"))
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

/// A `seconds`-long HTTP stream from the client to the VIP, in the background.
fn start_stream(s: &Setup, seconds: u64) -> std::process::Child {
    let client = s.tb.client_ns();
    let seconds = seconds.to_string();
    let args = ["netns", "exec", &client, VIPR, "probe", &v4(VIP_PORT), "--stream", &seconds];
    Command::new("ip").args(args).stdout(std::process::Stdio::piped()).spawn().unwrap()
}

fn status(s: &Setup) -> Value {
    let out = Command::new(VIPR)
        .args(["status", "--json", "--instance", &s.agent.instance])
        .output()
        .unwrap();
    assert!(out.status.success(), "vipr status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_thousand_connections_reach_every_backend_within_15_percent_of_even() {
    let s = setup("spread", "dnat");
    // Fixed source ports: the same 1000 flows every run, so the figure is not luck.
    let r = probe(&s, &v4(VIP_PORT), &["--count", "1000", "--source-port-base", "20000"]);
    assert_eq!(r["failures"], 0, "{r}");
    let by_backend = counts(&r, "backends");
    assert_eq!(by_backend.len(), 4, "every backend is reached: {by_backend:?}");
    for (b, n) in &by_backend {
        assert!((212..=288).contains(n), "{b} got {n} of 1000 connections, more than 15% from 250");
    }
    // dnat: the backends see the client's own address.
    assert_eq!(counts(&r, "seen_as").keys().collect::<Vec<_>>(), vec![CLIENT]);
    // The counters moved for this VIP, and the conntrack holds the flows.
    let st = status(&s);
    let vip = st["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vip"] == v4(VIP_PORT) && v["protocol"] == "tcp")
        .unwrap();
    assert_eq!(vip["new_flows"], 1000, "{vip}");
}

#[test]
fn ipv6_tcp_and_udp_of_both_families_reach_every_backend() {
    let s = setup("fam", "dnat");
    for (target, args) in [
        (v6(VIP_PORT), vec!["--count", "200"]),
        (v4(VIP_PORT), vec!["--count", "200", "--udp"]),
        (v6(VIP_PORT), vec!["--count", "200", "--udp"]),
    ] {
        let r = probe(&s, &target, &args);
        assert_eq!(r["failures"], 0, "{target} {args:?}: {r}");
        assert_eq!(
            counts(&r, "backends").len(),
            4,
            "{target} {args:?}: every backend is reached: {r}"
        );
    }
}

#[test]
fn one_udp_flow_stays_on_one_backend() {
    let s = setup("stick", "dnat");
    let r = probe(&s, &v4(VIP_PORT), &["--count", "50", "--udp", "--same-socket"]);
    assert_eq!(r["failures"], 0, "{r}");
    assert_eq!(counts(&r, "backends").len(), 1, "one flow, one backend: {r}");
}

#[test]
fn removing_a_backend_keeps_other_flows_and_sends_it_no_new_ones() {
    let s = setup("remove", "dnat");
    // Long streams in flight while the config changes.
    let streams: Vec<_> = (0..8).map(|_| start_stream(&s, 4)).collect();
    std::thread::sleep(Duration::from_millis(800));
    std::fs::write(&s.config, config_for(&s.tb, &s.agent.instance, "dnat", &[0, 1, 2])).unwrap();
    std::thread::sleep(Duration::from_millis(1000)); // the agent polls the file every 200 ms
    let r = probe(&s, &v4(VIP_PORT), &["--count", "300"]);
    assert_eq!(r["failures"], 0, "{r}");
    let by_backend = counts(&r, "backends");
    assert!(
        !by_backend.contains_key("backend-4"),
        "new connections went to the removed backend: {by_backend:?}"
    );
    assert_eq!(by_backend.len(), 3, "{by_backend:?}");
    for child in streams {
        let out = child.wait_with_output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["failures"], 0, "a stream broke: {v}");
        assert_eq!(v["stream_complete"], true, "a stream did not end cleanly: {v}");
    }
}

#[test]
fn snat_mode_works_when_the_backends_do_not_route_back_through_vipr() {
    let s = setup("snat", "snat");
    for i in 0..s.tb.backends {
        let ns = s.tb.backend_ns(i);
        s.tb.ns(&ns, &["ip", "route", "del", "default"]).unwrap();
        s.tb.ns(&ns, &["ip", "-6", "route", "del", "default"]).unwrap();
    }
    let r = probe(&s, &v4(VIP_PORT), &["--count", "100"]);
    assert_eq!(r["failures"], 0, "{r}");
    assert_eq!(counts(&r, "backends").len(), 4, "{r}");
    assert_eq!(counts(&r, "seen_as").keys().collect::<Vec<_>>(), vec![SNAT], "{r}");
    let r = probe(&s, &v6(VIP_PORT), &["--count", "100"]);
    assert_eq!(r["failures"], 0, "{r}");
    assert_eq!(counts(&r, "seen_as").keys().collect::<Vec<_>>(), vec![testbed::SNAT6], "{r}");
}

#[test]
fn kill_9_of_the_agent_during_a_transfer_loses_no_flow() {
    let mut s = setup("kill", "dnat");
    let stream = start_stream(&s, 5);
    // Some short flows too, so the conntrack holds more than the stream.
    let r = probe(&s, &v4(VIP_PORT), &["--count", "20"]);
    assert_eq!(r["failures"], 0);
    std::thread::sleep(Duration::from_millis(500));
    let before = status(&s)["conntrack"]["flows"].as_u64().unwrap();
    assert!(before >= 21, "conntrack holds the flows: {before}");
    s.agent.kill9();
    // Traffic keeps flowing with no agent at all.
    let r = probe(&s, &v4(VIP_PORT), &["--count", "20"]);
    assert_eq!(r["failures"], 0, "with the agent dead: {r}");
    s.agent.restart().expect("restart adopts the pinned dataplane");
    let after = status(&s)["conntrack"]["flows"].as_u64().unwrap();
    assert!(
        after >= before + 20,
        "conntrack entries were lost across the restart: {before} -> {after}"
    );
    let out = stream.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failures"], 0, "the transfer broke: {v}");
    assert_eq!(v["stream_complete"], true, "the transfer did not complete: {v}");
}

#[test]
fn host_traffic_on_the_attached_interfaces_still_works() {
    let mut s = setup("host", "dnat");
    // A server of the vipr namespace itself, on its own address: not a VIP.
    let lb = s.tb.lb_ns();
    s.tb.spawn(&lb, &[VIPR, "backend", "--name", "the-router", "--port", "9090"]).unwrap();
    s.tb.wait_for_port(&lb, 9090).unwrap();
    let r = probe(&s, &format!("{}:9090", testbed::ROUTER), &["--count", "5"]);
    assert_eq!(r["failures"], 0, "{r}");
    assert_eq!(counts(&r, "backends").keys().collect::<Vec<_>>(), vec!["the-router"]);
    // And the VIP still works beside it.
    let r = probe(&s, &v4(VIP_PORT), &["--count", "5"]);
    assert_eq!(r["failures"], 0, "{r}");
}

#[test]
fn the_testbed_routes_clients_to_backends_without_vipr() {
    // The ground the other tests stand on: plain kernel routing through the vipr
    // namespace reaches every backend, over IPv4 and IPv6.
    let mut tb = Testbed::new("bare-", 2).expect("testbed");
    tb.start_backends(VIPR).expect("backends");
    for i in 0..2 {
        for target in [
            format!("{}:8080", testbed::backend_addr(i)),
            format!("[{}]:8080", testbed::backend_addr6(i)),
        ] {
            let out = tb.ns(&tb.client_ns(), &[VIPR, "probe", &target, "--count", "3"]).unwrap();
            let r: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(r["failures"], 0, "{target}: {r}");
            assert_eq!(
                counts(&r, "backends").keys().collect::<Vec<_>>(),
                vec![&format!("backend-{}", i + 1)]
            );
        }
    }
}

#[test]
fn a_bad_config_on_reload_is_refused_and_the_running_tables_stay() {
    let s = setup("badcfg", "dnat");
    let before = status(&s);
    // A typo and a port 0: the whole file is refused, nothing of it applied.
    let good = std::fs::read_to_string(&s.config).unwrap();
    let bad = good.replacen("port: 8088", "port: 0", 1).replacen("backends:", "backendz:", 1);
    std::fs::write(&s.config, bad).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let r = probe(&s, &v4(VIP_PORT), &["--count", "40"]);
    assert_eq!(r["failures"], 0, "{r}");
    assert_eq!(counts(&r, "backends").len(), 4, "{r}");
    let after = status(&s);
    let shape = |v: &Value| -> Vec<(String, String, u64, usize)> {
        v["vips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["vip"].as_str().unwrap().to_string(),
                    x["protocol"].as_str().unwrap().to_string(),
                    x["ring_size"].as_u64().unwrap(),
                    x["backends"].as_array().unwrap().len(),
                )
            })
            .collect()
    };
    assert_eq!(shape(&before), shape(&after), "the tables changed after a refused reload");
    assert!(s.agent.child.is_some(), "the agent keeps running");
    // A second agent for the same instance is refused while the first one runs.
    std::fs::write(&s.config, good).unwrap();
    let out = Command::new(VIPR)
        .args(["run", "--config", s.config.to_str().unwrap(), "--netns", &s.tb.lb_ns()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a second agent started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already served by process"), "{err}");
}

#[test]
fn the_tutorials_kubernetes_manifests_are_served_from_a_folder() {
    let mut tb = Testbed::new("mani-", 4).expect("testbed");
    tb.start_backends(VIPR).expect("backends");
    let dir = std::env::temp_dir().join(format!("vipr-e2e-mani-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = tempdir::Dir(dir.clone());
    let config = dir.join("vipr.yaml");
    std::fs::write(&config, vipr::demo::interfaces_config(&tb, "e2e-mani")).unwrap();
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/examples/tutorial");
    let agent = Agent::start_with(
        Path::new(VIPR),
        &config,
        "e2e-mani",
        &tb.lb_ns(),
        &["--manifests", manifests.to_str().unwrap()],
    )
    .expect("vipr run --manifests");
    let out = tb.ns(&tb.client_ns(), &[VIPR, "probe", &v4(VIP_PORT), "--count", "200"]).unwrap();
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["failures"], 0, "{r}");
    assert_eq!(
        counts(&r, "backends").len(),
        4,
        "every endpoint of the EndpointSlice is reached: {r}"
    );
    drop(agent);
}
