//! The demo / test / benchmark topology: network namespaces over veth pairs, documentation
//! prefixes only, removed again when the `Testbed` is dropped (and by `vipr demo` on
//! Ctrl-C). Nothing here touches the host's own interfaces.
//!
//! ```text
//!  client ns              vipr ns (router, vipr attached to every lb-side veth)      backend ns i
//!  c0 198.51.100.7/24 --- lbc 198.51.100.1/24                                       b0 192.0.2.2i/24
//!     2001:db8:c::7/64        2001:db8:c::1/64                                          2001:db8:b::2i/64
//!  default via lbc         lbb{i} 192.0.2.1/32, 2001:db8:b::1/128, host route --- default via 192.0.2.1
//!                         + SNAT 192.0.2.2/32, 2001:db8:b::2/128 on each lbb{i}
//! ```
//!
//! The VIPs (192.0.2.10, 2001:db8:f::10) sit on no interface: the client routes them to
//! the vipr namespace, whose XDP program translates them. Every backend has its own link,
//! so frames are redirected from veth to veth, never through a bridge (a bridge cannot
//! take XDP_REDIRECT). The far ends get GRO (NAPI) switched on, which veth needs to accept
//! redirected frames.

use anyhow::{bail, Context, Result};
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};

pub const CLIENT: &str = "198.51.100.7";
pub const CLIENT6: &str = "2001:db8:c::7";
pub const ROUTER: &str = "198.51.100.1";
pub const VIP: &str = "192.0.2.10";
pub const VIP6: &str = "2001:db8:f::10";
pub const SNAT: &str = "192.0.2.2";
pub const SNAT6: &str = "2001:db8:b::2";
pub const VIP_PORT: u16 = 8088;
pub const BACKEND_PORT: u16 = 8080;

pub fn backend_addr(i: usize) -> String {
    format!("192.0.2.{}", 21 + i)
}

pub fn backend_addr6(i: usize) -> String {
    format!("2001:db8:b::{}", 21 + i)
}

/// Runs a command, failing with its stderr.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct Testbed {
    /// Prefix of every namespace name; unique per testbed.
    pub prefix: String,
    pub backends: usize,
    /// Background processes (servers, the agent) killed on drop.
    children: Vec<Child>,
}

impl Testbed {
    pub fn client_ns(&self) -> String {
        format!("{}c", self.prefix)
    }
    pub fn lb_ns(&self) -> String {
        format!("{}lb", self.prefix)
    }
    pub fn backend_ns(&self, i: usize) -> String {
        format!("{}b{}", self.prefix, i + 1)
    }
    /// Interfaces of the vipr namespace that vipr attaches to.
    pub fn lb_interfaces(&self) -> Vec<String> {
        let mut v = vec!["lbc".to_string()];
        v.extend((0..self.backends).map(|i| format!("lbb{}", i + 1)));
        v
    }

    /// Builds the topology. `prefix` must be short (namespace names) and unique.
    pub fn new(prefix: &str, backends: usize) -> Result<Self> {
        let tb = Testbed { prefix: prefix.to_string(), backends, children: Vec::new() };
        tb.cleanup_namespaces();
        tb.build().with_context(|| format!("building the {prefix} testbed"))?;
        Ok(tb)
    }

    fn build(&self) -> Result<()> {
        let (c, lb) = (self.client_ns(), self.lb_ns());
        for ns in [&c, &lb] {
            sh(&["ip", "netns", "add", ns])?;
        }
        self.ns(&lb, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        self.ns(&lb, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        // Client link.
        sh(&[
            "ip", "link", "add", "c0", "netns", &c, "type", "veth", "peer", "name", "lbc", "netns",
            &lb,
        ])?;
        self.ns(&c, &["ip", "addr", "add", "198.51.100.7/24", "dev", "c0"])?;
        self.ns(&c, &["ip", "addr", "add", "2001:db8:c::7/64", "dev", "c0", "nodad"])?;
        self.ns(&lb, &["ip", "addr", "add", "198.51.100.1/24", "dev", "lbc"])?;
        self.ns(&lb, &["ip", "addr", "add", "2001:db8:c::1/64", "dev", "lbc", "nodad"])?;
        self.up(&c, "c0")?;
        self.checksums_in_software(&c, "c0")?;
        self.up(&lb, "lbc")?;
        self.ns(&c, &["ip", "route", "add", "default", "via", ROUTER])?;
        self.ns(&c, &["ip", "-6", "route", "add", "default", "via", "2001:db8:c::1"])?;
        self.ns(&lb, &["ip", "link", "set", "lo", "up"])?;
        for i in 0..self.backends {
            let b = self.backend_ns(i);
            let lbb = format!("lbb{}", i + 1);
            sh(&["ip", "netns", "add", &b])?;
            sh(&[
                "ip", "link", "add", "b0", "netns", &b, "type", "veth", "peer", "name", &lbb,
                "netns", &lb,
            ])?;
            self.ns(&b, &["ip", "addr", "add", &format!("{}/24", backend_addr(i)), "dev", "b0"])?;
            self.ns(
                &b,
                &["ip", "addr", "add", &format!("{}/64", backend_addr6(i)), "dev", "b0", "nodad"],
            )?;
            self.ns(&lb, &["ip", "addr", "add", "192.0.2.1/32", "dev", &lbb])?;
            self.ns(&lb, &["ip", "addr", "add", "2001:db8:b::1/128", "dev", &lbb, "nodad"])?;
            // The SNAT addresses sit on every backend link: they are on-link for the
            // backends, so `snat` replies need no route back through vipr.
            self.ns(&lb, &["ip", "addr", "add", &format!("{SNAT}/32"), "dev", &lbb])?;
            self.ns(&lb, &["ip", "addr", "add", &format!("{SNAT6}/128"), "dev", &lbb, "nodad"])?;
            self.up(&b, "b0")?;
            self.checksums_in_software(&b, "b0")?;
            self.ns(&b, &["ip", "link", "set", "lo", "up"])?;
            self.up(&lb, &lbb)?;
            self.ns(&lb, &["ip", "route", "add", &format!("{}/32", backend_addr(i)), "dev", &lbb])?;
            self.ns(
                &lb,
                &["ip", "-6", "route", "add", &format!("{}/128", backend_addr6(i)), "dev", &lbb],
            )?;
            self.ns(&b, &["ip", "route", "add", "default", "via", "192.0.2.1", "dev", "b0"])?;
            self.ns(
                &b,
                &["ip", "-6", "route", "add", "default", "via", "2001:db8:b::1", "dev", "b0"],
            )?;
        }
        Ok(())
    }

    /// Sets a veth end up with GRO on, so that it accepts frames redirected into it.
    fn up(&self, ns: &str, dev: &str) -> Result<()> {
        self.ns(ns, &["ip", "link", "set", dev, "up"])?;
        self.ns(ns, &["ethtool", "-K", dev, "gro", "on"])?;
        Ok(())
    }

    /// Makes the stack of `ns` compute TCP/UDP checksums itself on `dev`. With transmit
    /// checksum offload a veth hands its peer frames whose checksum field holds only the
    /// pseudo-header sum (CHECKSUM_PARTIAL, to be finished "by the NIC"); a frame that
    /// XDP then redirects loses that note and arrives with a bad checksum. Real NICs put
    /// complete checksums on the wire, so this only makes the testbed honest.
    fn checksums_in_software(&self, ns: &str, dev: &str) -> Result<()> {
        self.ns(ns, &["ethtool", "-K", dev, "tx", "off"])?;
        Ok(())
    }

    /// Runs a command in namespace `ns` and waits for it.
    pub fn ns(&self, ns: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Starts a command in namespace `ns` in the background; it is killed on drop.
    pub fn spawn(&mut self, ns: &str, args: &[&str]) -> Result<u32> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} in {ns}", args.join(" ")))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Starts the demo backends: backend i answers as `backend-{i+1}` on TCP and UDP
    /// port 8080, IPv4 and IPv6.
    pub fn start_backends(&mut self, vipr: &str) -> Result<()> {
        for i in 0..self.backends {
            let name = format!("backend-{}", i + 1);
            let ns = self.backend_ns(i);
            self.spawn(
                &ns,
                &[vipr, "backend", "--name", &name, "--port", &BACKEND_PORT.to_string()],
            )?;
        }
        for i in 0..self.backends {
            self.wait_for_port(&self.backend_ns(i), BACKEND_PORT)?;
        }
        Ok(())
    }

    /// Waits until something listens on TCP `port` in `ns`.
    pub fn wait_for_port(&self, ns: &str, port: u16) -> Result<()> {
        for _ in 0..100 {
            let out = self.ns(ns, &["ss", "-Htln", &format!("sport = :{port}")])?;
            if !out.trim().is_empty() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bail!("nothing listens on port {port} in {ns}")
    }

    /// Stops one background process (by the pid `spawn` returned) with `signal`.
    pub fn signal(&mut self, pid: u32, signal: i32) {
        // SAFETY: kill(2) on a child we started.
        unsafe { libc::kill(pid as i32, signal) };
        if let Some(pos) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(pos);
            let _ = c.wait();
        }
    }

    fn cleanup_namespaces(&self) {
        let mut names = vec![self.client_ns(), self.lb_ns()];
        names.extend((0..self.backends).map(|i| self.backend_ns(i)));
        for ns in names {
            let _ = sh(&["ip", "netns", "del", &ns]);
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.cleanup_namespaces();
    }
}

/// The address family of a literal, for building configs.
pub fn is_v6(addr: &str) -> bool {
    addr.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6())
}
