//! Keeps the next hops of every backend resolved, so the XDP program's FIB lookups find
//! a neighbour from the first packet on.
//!
//! Without this, the first packets to a backend find no neighbour and pass to the kernel
//! translated, to be routed there; the kernel then resolves the neighbour. That works for
//! `dnat`, but a `snat` frame carries one of vipr's own addresses as its source, which
//! the kernel drops as martian, so it never resolves anything and the flow never starts.
//! Kernel-managed neighbour entries (`ip neigh ... managed`, Linux 5.16) are resolved
//! and kept reachable by the kernel itself.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;

#[derive(Default)]
pub struct Neighbors {
    /// (next hop, device) entries this agent made managed.
    managed: BTreeSet<(IpAddr, String)>,
}

/// The next hop and device the kernel routes `dst` through.
fn next_hop(dst: IpAddr) -> Option<(IpAddr, String)> {
    let out = Command::new("ip").args(["-j", "route", "get", &dst.to_string()]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let route = v.get(0)?;
    let dev = route.get("dev")?.as_str()?.to_string();
    if dev == "lo" {
        return None;
    }
    let via = route.get("gateway").and_then(|g| g.as_str()).and_then(|g| g.parse().ok());
    Some((via.unwrap_or(dst), dev))
}

impl Neighbors {
    /// Makes the next hops of `backends` managed neighbours, and stops managing the ones
    /// no backend needs any more. Problems are reported, never fatal: the kernel path
    /// still resolves `dnat` next hops on its own.
    /// Makes every entry again, even those made before (after something flushed the
    /// namespace's neighbour table: opening DPDK af_packet ports does).
    pub fn resync(&mut self) {
        let wanted: Vec<IpAddr> = self.managed.iter().map(|(a, _)| *a).collect();
        self.managed.clear();
        self.sync(wanted);
    }

    pub fn sync(&mut self, backends: impl IntoIterator<Item = IpAddr>) {
        let wanted: BTreeSet<(IpAddr, String)> =
            backends.into_iter().filter_map(next_hop).collect();
        for (addr, dev) in wanted.difference(&self.managed) {
            let status = Command::new("ip")
                .args(["neigh", "replace", &addr.to_string(), "dev", dev, "managed"])
                .status();
            if !status.is_ok_and(|s| s.success()) {
                tracing::warn!("could not keep the neighbour {addr} on {dev} resolved; its first packets go through the kernel");
            }
        }
        for (addr, dev) in self.managed.difference(&wanted) {
            let _ =
                Command::new("ip").args(["neigh", "del", &addr.to_string(), "dev", dev]).status();
        }
        self.managed = wanted;
    }
}
