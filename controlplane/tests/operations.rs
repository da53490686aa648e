//! What an operator sees of a running agent: /metrics, /healthz and /readyz in the
//! agent's namespace, the admin socket behind `vipr status / vips / backends /
//! conntrack / trace`, and its permissions. Real agent process, real XDP dataplane,
//! real TCP in network namespaces. Needs root.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use vipr::demo::{config_for, interfaces_config, Agent};
use vipr::testbed::{self, Testbed, CLIENT, VIP, VIP_PORT};

const VIPR: &str = env!("CARGO_BIN_EXE_vipr");

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("vipr-ops-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Dir(dir)
}

/// GETs `path` from the agent's metrics port inside the vipr namespace: (status, body).
fn http(tb: &Testbed, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:9645{path}");
    let out = tb
        .ns(&tb.lb_ns(), &["curl", "-s", "-w", "\n%{http_code}", "--max-time", "10", &url])
        .expect("curl the metrics port");
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The value of the sample `name{labels}` in a Prometheus text body.
fn sample(body: &str, name_and_labels: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().split(' ').next()?.parse().ok())
}

fn vipr(args: &[&str]) -> std::process::Output {
    Command::new(VIPR).args(args).output().unwrap()
}

fn json(args: &[&str]) -> Value {
    let out = vipr(args);
    assert!(out.status.success(), "vipr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn metrics_move_for_the_vip_that_got_traffic_and_the_cli_reads_the_admin_socket() {
    let mut tb = Testbed::new("ops-", 2).expect("testbed");
    tb.start_backends(VIPR).expect("backends");
    let dir = scratch("metrics");
    let config = dir.0.join("vipr.yaml");
    std::fs::write(&config, config_for(&tb, "e2e-ops", "dnat", &[0, 1])).unwrap();
    let _agent = Agent::start(Path::new(VIPR), &config, "e2e-ops", &tb.lb_ns()).unwrap();

    let (code, _) = http(&tb, "/healthz");
    assert_eq!(code, 200);
    let (code, body) = http(&tb, "/readyz");
    assert_eq!(code, 200, "a config-only agent is ready once programmed: {body}");
    let vip_label = format!("vipr_vip_packets_total{{vip=\"{VIP}:{VIP_PORT} tcp\"}}");
    let (_, before) = http(&tb, "/metrics");
    let packets_before =
        sample(&before, &vip_label).unwrap_or_else(|| panic!("{vip_label} in:\n{before}"));

    let target = format!("{VIP}:{VIP_PORT}");
    let args = [VIPR, "probe", &target, "--count", "20", "--source-port-base", "31000"];
    let out = tb.ns(&tb.client_ns(), &args).unwrap();
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["failures"], 0, "{r}");

    let (code, after) = http(&tb, "/metrics");
    assert_eq!(code, 200);
    let packets_after = sample(&after, &vip_label).unwrap();
    assert!(packets_after >= packets_before + 20.0 * 3.0, "{packets_before} -> {packets_after}");
    let udp_label = format!("vipr_vip_packets_total{{vip=\"{VIP}:{VIP_PORT} udp\"}}");
    assert_eq!(sample(&after, &udp_label), Some(0.0), "only the VIP that got traffic moves");
    assert_eq!(sample(&after, "vipr_ready"), Some(1.0));
    assert!(sample(&after, "vipr_conntrack_flows").unwrap() >= 20.0);
    assert!(
        after.contains("vipr_dataplane_info{kind=\"xdp\",attach_mode=\"native\"} 1"),
        "{after}"
    );
    assert!(after.contains("vipr_programming_latency_seconds_count"), "{after}");
    let backends_total: f64 = (0..2)
        .map(|i| {
            let l = format!(
                "vipr_backend_new_flows_total{{vip=\"{VIP}:{VIP_PORT} tcp\",backend=\"{}:8080\"}}",
                testbed::backend_addr(i)
            );
            sample(&after, &l).unwrap_or_else(|| panic!("{l} in:\n{after}"))
        })
        .sum();
    assert_eq!(backends_total, 20.0, "every new flow is counted at one backend");

    // The CLI through the admin socket.
    let st = json(&["status", "--json", "--instance", "e2e-ops"]);
    assert_eq!(st["ready"], true);
    assert_eq!(st["dataplane"], "xdp");
    let vips = json(&["vips", "--json", "--instance", "e2e-ops"]);
    assert_eq!(vips.as_array().unwrap().len(), 4, "{vips}");
    let b = json(&["backends", "--json", "--instance", "e2e-ops", &target]);
    assert_eq!(b[0]["backends"].as_array().unwrap().len(), 2, "{b}");
    let out = vipr(&["backends", "--instance", "e2e-ops", "192.0.2.99:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no VIP 192.0.2.99:1"));

    // conntrack lists the probe's flows; trace of one of them names the same backend.
    let flows = json(&["conntrack", "--json", "--instance", "e2e-ops", "--vip", &target]);
    let client = format!("{CLIENT}:31000");
    let flow = flows
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["client"] == client.as_str())
        .unwrap_or_else(|| panic!("{client} in {flows}"));
    let t = json(&["trace", "--json", "--instance", "e2e-ops", &client, &target, "tcp"]);
    assert_eq!(t["tracked"], true, "{t}");
    assert_eq!(t["backend"], flow["backend"], "{t} vs {flow}");
    // A flow never seen goes by the ring, as the offline trace of the same config says.
    let fresh = format!("{CLIENT}:39999");
    let live = json(&["trace", "--json", "--instance", "e2e-ops", &fresh, &target, "tcp"]);
    let offline =
        json(&["trace", "--json", "-c", config.to_str().unwrap(), &fresh, &target, "tcp"]);
    assert_eq!(live["tracked"], false);
    assert_eq!(live["backend"], offline["backend"], "{live} vs {offline}");

    // A change is timed from the file edit to programmed, and shows in status.
    assert!(st["programming"].is_null(), "nothing changed yet: {st}");
    std::fs::write(&config, config_for(&tb, "e2e-ops", "dnat", &[0])).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st = json(&["status", "--json", "--instance", "e2e-ops"]);
        if st["programming"]["count"].as_u64() == Some(1) {
            assert_eq!(st["vips"][0]["backends"].as_array().unwrap().len(), 1, "{st}");
            assert!(st["programming"]["p99_ms"].as_f64().unwrap() > 0.0, "{st}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the edit was not programmed: {st}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (_, metrics) = http(&tb, "/metrics");
    assert_eq!(sample(&metrics, "vipr_programming_latency_seconds_count"), Some(1.0), "{metrics}");
}

#[test]
fn the_admin_socket_refuses_other_users_and_the_cli_says_when_no_agent_runs() {
    let mut tb = Testbed::new("adm-", 1).expect("testbed");
    tb.start_backends(VIPR).expect("backends");
    let dir = scratch("admin");
    let config = dir.0.join("vipr.yaml");
    std::fs::write(&config, config_for(&tb, "e2e-adm", "dnat", &[0])).unwrap();
    let mut agent = Agent::start(Path::new(VIPR), &config, "e2e-adm", &tb.lb_ns()).unwrap();

    let socket = vipr::admin::socket_path("e2e-adm");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", socket.display());
    // Connect as nobody from a forked child; everything it needs is prepared first.
    assert_eq!(connect_as(&socket, 65534), Err(libc::EACCES), "nobody reached the admin socket");
    assert_eq!(connect_as(&socket, 0), Ok(()), "root reaches it");

    agent.kill9();
    let out = vipr(&["status", "--instance", "e2e-adm"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not running") && err.contains("--offline"), "{err}");
    // The dataplane outlives the agent, and --offline reads it.
    let st = json(&["status", "--offline", "--json", "--instance", "e2e-adm"]);
    assert_eq!(st["vips"].as_array().unwrap().len(), 4, "{st}");
    let out = vipr(&["status", "--instance", "no-such-instance"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not running"));
}

/// Connects to the Unix socket at `path` as `uid` from a forked child: the errno it got.
fn connect_as(path: &Path, uid: u32) -> Result<(), i32> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: a zeroed sockaddr_un is valid; the path fits (checked below).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: the child only makes raw syscalls on memory prepared before the fork,
    // then _exits; the parent waits for it.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                libc::_exit(200);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let r = libc::connect(
                fd,
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            libc::_exit(if r == 0 { 0 } else { *libc::__errno_location() });
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        assert!(libc::WIFEXITED(status));
        match libc::WEXITSTATUS(status) {
            0 => Ok(()),
            200 => panic!("the child could not drop to uid {uid}"),
            e => Err(e),
        }
    }
}

#[test]
fn readyz_stays_unready_while_the_kubernetes_source_has_not_synced() {
    let mut tb = Testbed::new("rdy-", 1).expect("testbed");
    tb.start_backends(VIPR).expect("backends");
    let dir = scratch("ready");
    let config = dir.0.join("vipr.yaml");
    // Nothing listens on the discard port of the host's loopback: no sync ever.
    let text = interfaces_config(&tb, "e2e-rdy")
        + "kubernetes:\n  mode: edge\n  api_server: https://127.0.0.1:9\n";
    std::fs::write(&config, text).unwrap();
    let _agent = Agent::start(Path::new(VIPR), &config, "e2e-rdy", &tb.lb_ns()).unwrap();
    let (code, body) = http(&tb, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert_eq!(http(&tb, "/healthz").0, 200, "alive while not ready");
    let (_, metrics) = http(&tb, "/metrics");
    assert_eq!(sample(&metrics, "vipr_ready"), Some(0.0), "{metrics}");
    let st = json(&["status", "--json", "--instance", "e2e-rdy"]);
    assert_eq!(st["ready"], false);
    assert!(st["sources"].to_string().contains("kubernetes https://127.0.0.1:9"), "{st}");
}

#[test]
fn logs_are_json_objects_with_log_format_json_and_completions_are_printed() {
    let out = vipr(&["--log-format", "json", "run", "--config", "/nonexistent/vipr.yaml"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line: Value = serde_json::from_str(err.lines().next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {err}"));
    assert_eq!(line["level"], "ERROR", "{line}");
    assert!(
        line["fields"]["message"].as_str().unwrap().contains("/nonexistent/vipr.yaml"),
        "{line}"
    );

    let out = vipr(&["completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    for sub in ["conntrack", "trace", "backends", "--metrics-addr"] {
        assert!(script.contains(sub), "the bash completion knows {sub}");
    }
}

#[test]
fn vipr_run_serves_through_af_xdp_and_status_shows_the_queues() {
    let mut tb = Testbed::new("opx-", 2).expect("testbed");
    tb.start_backends(VIPR).expect("backends");
    let dir = scratch("afxdp");
    let config = dir.0.join("vipr.yaml");
    let text =
        config_for(&tb, "e2e-opx", "dnat", &[0, 1]).replace("dataplane: xdp", "dataplane: afxdp");
    std::fs::write(&config, text).unwrap();
    let agent = Agent::start(Path::new(VIPR), &config, "e2e-opx", &tb.lb_ns()).unwrap();

    let target = format!("{VIP}:{VIP_PORT}");
    let out = tb.ns(&tb.client_ns(), &[VIPR, "probe", &target, "--count", "20"]).unwrap();
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["failures"], 0, "{r}");
    assert_eq!(r["backends"].as_object().unwrap().len(), 2, "{r}");

    let st = json(&["status", "--json", "--instance", "e2e-opx"]);
    assert_eq!(st["dataplane"], "afxdp", "{st}");
    assert_eq!(st["attach_mode"], "copy", "veth offers AF_XDP copy mode only: {st}");
    let queues = st["queues"].as_array().unwrap();
    assert_eq!(queues.len(), tb.lb_interfaces().len(), "one queue an interface: {st}");
    let rx: u64 = queues.iter().map(|q| q["rx"].as_u64().unwrap()).sum();
    assert!(rx >= 20 * 3, "the workers received the flows: {st}");
    let vip = st["vips"].as_array().unwrap().iter().find(|v| v["vip"] == target.as_str()).unwrap();
    assert_eq!(vip["new_flows"], 20, "{vip}");
    drop(agent);
    let out = vipr(&["status", "--instance", "e2e-opx"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not running"),
        "stopped with the agent"
    );
}
