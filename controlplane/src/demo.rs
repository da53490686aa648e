//! `vipr demo`: the scenario Kubernetes tutorials use to explain a ClusterIP / LoadBalancer
//! Service (one service on port 8088 in front of four backends on port 8080, each
//! answering with its own name), built in network namespaces with vipr in the middle.
//! It says what it builds, runs the tutorial's curl loop from a client namespace, and
//! removes everything it made on exit and on Ctrl-C.

use crate::testbed::{self, Testbed, VIP, VIP6, VIP_PORT};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A vipr config for a testbed: VIPs 192.0.2.10:8088 and [2001:db8:f::10]:8088 (TCP and
/// UDP) in front of every backend on 8080, attached to every vipr-side veth.
pub fn config_for(tb: &Testbed, instance: &str, mode: &str, backends: &[usize]) -> String {
    let mut s = interfaces_config(tb, instance);
    s += &format!(
        "snat:\n  addresses: [{}, \"{}\"]\nconntrack:\n  capacity: 65536\nvips:\n",
        testbed::SNAT,
        testbed::SNAT6
    );
    for (vip, proto) in [(VIP, "tcp"), (VIP6, "tcp"), (VIP, "udp"), (VIP6, "udp")] {
        s += &format!("  - address: \"{vip}\"\n    port: {VIP_PORT}\n    protocol: {proto}\n    mode: {mode}\n    backends:\n");
        for &i in backends {
            let addr = if testbed::is_v6(vip) {
                testbed::backend_addr6(i)
            } else {
                testbed::backend_addr(i)
            };
            s += &format!("      - address: \"{addr}\"\n        port: {}\n", testbed::BACKEND_PORT);
        }
    }
    s
}

/// A config with the testbed's interfaces and no VIPs (they come from elsewhere).
pub fn interfaces_config(tb: &Testbed, instance: &str) -> String {
    let mut s = format!("instance: {instance}\ndataplane: xdp\ninterfaces:\n");
    for i in tb.lb_interfaces() {
        s += &format!("  - name: {i}\n    attach: native\n");
    }
    s
}

/// The agent as a child process in the vipr namespace, stopped (and its dataplane
/// removed) on drop.
pub struct Agent {
    pub child: Option<Child>,
    pub instance: String,
    pub vipr: PathBuf,
    pub config: PathBuf,
    pub netns: String,
    /// More `vipr run` arguments (e.g. `--manifests DIR`).
    pub args: Vec<String>,
}

impl Agent {
    pub fn start(vipr: &Path, config: &Path, instance: &str, netns: &str) -> Result<Self> {
        Self::start_with(vipr, config, instance, netns, &[])
    }

    pub fn start_with(
        vipr: &Path,
        config: &Path,
        instance: &str,
        netns: &str,
        args: &[&str],
    ) -> Result<Self> {
        let mut a = Agent {
            child: None,
            instance: instance.to_string(),
            vipr: vipr.to_path_buf(),
            config: config.to_path_buf(),
            netns: netns.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        a.restart()?;
        Ok(a)
    }

    /// Starts the agent process and waits until it has attached.
    pub fn restart(&mut self) -> Result<()> {
        let child = Command::new(&self.vipr)
            .args(["run", "--config"])
            .arg(&self.config)
            .args(["--netns", &self.netns])
            .args(&self.args)
            .stdin(Stdio::null())
            .spawn()
            .context("starting vipr run")?;
        self.child = Some(child);
        let pid_file = Path::new("/run/vipr").join(format!("{}.pid", self.instance));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!("vipr run exited early with {status}");
            }
            let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if pid.trim() == self.child.as_ref().unwrap().id().to_string() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("vipr run did not come up within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the agent without letting it clean up (the dataplane stays pinned).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new(&self.vipr)
            .args(["stop", "--instance", &self.instance])
            .stderr(Stdio::null())
            .status();
        self.kill9();
    }
}

fn say(s: &str) {
    println!("\x1b[1m==> {s}\x1b[0m");
    let _ = std::io::stdout().flush();
}

pub fn run(keep: bool) -> Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone())?;
    }
    let check = || -> Result<()> {
        if interrupted.load(Ordering::Relaxed) {
            bail!("interrupted; everything the demo made is being removed");
        }
        Ok(())
    };
    let vipr = std::env::current_exe().context("locating the vipr binary")?;

    say("Building the tutorial's topology in network namespaces (documentation prefixes only)");
    println!("    client   vd-c   198.51.100.7, 2001:db8:c::7   (curl runs here)");
    println!("    vipr     vd-lb  a router; vipr's XDP program on each of its veths");
    println!("    backends vd-b1..vd-b4  192.0.2.21-24, 2001:db8:b::21-24, each serving its own name on :8080");
    println!("    Service  VIP {VIP}:{VIP_PORT} and [{VIP6}]:{VIP_PORT} (TCP and UDP), on no interface: vipr answers for it");
    let mut tb = Testbed::new("vd-", 4)?;
    check()?;
    tb.start_backends(vipr.to_str().context("vipr path is not UTF-8")?)?;
    check()?;

    let dir = std::env::temp_dir().join(format!("vipr-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("demo.yaml");
    std::fs::write(&config, config_for(&tb, "demo", "dnat", &[0, 1, 2, 3]))?;
    let _cleanup_dir = RemoveOnDrop(dir.clone());

    say(&format!("Starting vipr in vd-lb: vipr run --config {} --netns vd-lb", config.display()));
    let agent = Agent::start(&vipr, &config, "demo", &tb.lb_ns())?;
    check()?;

    say(&format!(
        "The tutorial's loop, from the client: for i in $(seq 4); do curl {VIP}:{VIP_PORT}; done"
    ));
    let out = tb.ns(
        &tb.client_ns(),
        &[
            "sh",
            "-c",
            &format!("for i in $(seq 4); do curl -s --max-time 5 http://{VIP}:{VIP_PORT}/; done"),
        ],
    )?;
    for line in out.lines() {
        println!("    {line}   (backend name, and the client address it saw)");
    }
    check()?;

    say(&format!("The same over IPv6: curl [{VIP6}]:{VIP_PORT}, four times"));
    let out = tb.ns(
        &tb.client_ns(),
        &[
            "sh",
            "-c",
            &format!(
                "for i in $(seq 4); do curl -s --max-time 5 'http://[{VIP6}]:{VIP_PORT}/'; done"
            ),
        ],
    )?;
    for line in out.lines() {
        println!("    {line}");
    }
    check()?;

    say("200 more connections: each new flow gets a Maglev-chosen backend");
    let out = tb.ns(
        &tb.client_ns(),
        &[vipr.to_str().unwrap(), "probe", &format!("{VIP}:{VIP_PORT}"), "--count", "200"],
    )?;
    let report: serde_json::Value =
        serde_json::from_str(&out).context("reading vipr probe's report")?;
    if let Some(backends) = report["backends"].as_object() {
        for (name, n) in backends {
            println!("    {name}  {n} connections");
        }
    }
    println!("    failed connections: {}", report["failures"]);
    check()?;

    say("vipr status (read from the pinned maps)");
    let out = Command::new(&vipr).args(["status", "--instance", "demo"]).output()?;
    print!("{}", indent(&String::from_utf8_lossy(&out.stdout)));

    if keep {
        say("Everything stays up until Ctrl-C. Try, in another shell:");
        println!("    ip netns exec vd-c curl {VIP}:{VIP_PORT}");
        println!("    {} status --instance demo", vipr.display());
        while !interrupted.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    say("Removing everything the demo made (vipr stop, namespaces)");
    drop(agent);
    drop(tb);
    println!("    done");
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
