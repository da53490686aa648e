//! Next hops for the engine's transmissions, from the kernel's routes and neighbours.
//!
//! The pipeline forwards a frame itself only when its next-hop table names the
//! destination; otherwise the frame passes to the kernel (the exception path), which
//! routes it and resolves the neighbour. The resolver therefore only has to learn, in
//! the background, which destinations the engine needs — every backend, and every
//! destination the exception path saw — and publish host entries for those whose
//! neighbour the kernel has resolved: `ip -j route get` says through which interface and
//! gateway a destination goes (rechecked every `ROUTE_TTL`), `ip -j neigh` gives the
//! gateway's MAC, `ip -j link` the interface's own. A destination whose neighbour is
//! unresolved simply has no entry, so its frames keep going to the kernel: the queue
//! never waits for ARP or ND.
//!
//! Only host entries are published (never the route's prefix): a prefix entry would
//! send every address under it to one MAC, also addresses on a connected subnet whose
//! own neighbours are not known yet.

use crate::kernel::KernelPath;
use crate::kernel::Misses;
use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vipr_dataplane::tables::{NextHop, NextHopSpec, Tables};

const ROUTE_TTL: Duration = Duration::from_secs(10);
/// Destinations the resolver follows at most; the oldest go first beyond it.
const MAX_DESTINATIONS: usize = 16_384;

/// What `ip route get` said of a destination, and when.
#[derive(Clone, Copy, Debug)]
struct Route {
    /// (port, next hop address); `None` when the kernel routes it through no port of
    /// ours (a local address, another interface) or not at all.
    through: Option<(u32, IpAddr)>,
    checked: Instant,
}

pub struct Resolver {
    /// Interfaces the engine transmits on; routes through others are not ours.
    ports: Vec<u32>,
    misses: Option<Arc<Misses>>,
    /// Destination -> its route, `None` until first looked up.
    wanted: HashMap<IpAddr, Option<Route>>,
    order: Vec<IpAddr>,
}

impl Resolver {
    pub fn new(ports: Vec<u32>, kernel: &KernelPath) -> Self {
        let misses = match kernel {
            KernelPath::Raw(s) => Some(s.misses.clone()),
            KernelPath::Capture(_) => None,
        };
        Resolver { ports, misses, wanted: HashMap::new(), order: Vec::new() }
    }

    /// Follows every backend of `t`.
    pub fn want_backends(&mut self, t: &Tables) {
        for b in t.backends.iter().filter(|b| b.family != 0) {
            let _ = self.want(vipr_abi::ip_of(&b.addr, b.family));
        }
    }

    /// Follows `dst`; `false` if it was already followed.
    pub fn want(&mut self, dst: IpAddr) -> bool {
        if self.wanted.contains_key(&dst) {
            return false;
        }
        if self.order.len() >= MAX_DESTINATIONS {
            let old = self.order.remove(0);
            self.wanted.remove(&old);
        }
        self.wanted.insert(dst, None);
        self.order.push(dst);
        true
    }

    /// Follows the destinations the exception path saw; `true` if one is new. (A
    /// destination the kernel path keeps seeing is followed already: no new lookups.)
    pub fn absorb_misses(&mut self) -> bool {
        let Some(m) = self.misses.clone() else { return false };
        if m.is_empty() {
            return false;
        }
        let mut new = false;
        for dst in m.take() {
            new |= self.want(dst);
        }
        new
    }

    /// The next hops of every followed destination whose neighbour is resolved, sorted.
    pub fn refresh(&mut self) -> Vec<NextHopSpec> {
        self.absorb_misses();
        let Some(links) = ip_json(&["link", "show"]) else { return Vec::new() };
        let macs: HashMap<u32, ([u8; 6], String)> = links
            .iter()
            .filter_map(|l| {
                let ifindex = l.get("ifindex")?.as_u64()? as u32;
                let mac = parse_mac(l.get("address")?.as_str()?)?;
                Some((ifindex, (mac, l.get("ifname")?.as_str()?.to_string())))
            })
            .collect();
        let by_name: HashMap<&str, u32> = macs.iter().map(|(i, (_, n))| (n.as_str(), *i)).collect();
        let now = Instant::now();
        let stale: Vec<IpAddr> = self
            .wanted
            .iter()
            .filter(|(_, r)| r.is_none_or(|r| now.duration_since(r.checked) >= ROUTE_TTL))
            .map(|(d, _)| *d)
            .collect();
        for dst in stale {
            let through = route_get(dst, &by_name).filter(|r| self.ports.contains(&r.0));
            self.wanted.insert(dst, Some(Route { through, checked: now }));
        }
        let Some(neigh) = ip_json(&["neigh", "show"]) else { return Vec::new() };
        let mut lladdr: HashMap<(IpAddr, u32), [u8; 6]> = HashMap::new();
        for n in &neigh {
            let usable = n.get("state").and_then(Value::as_array).is_some_and(|s| {
                s.iter().filter_map(Value::as_str).any(|s| {
                    matches!(s, "REACHABLE" | "STALE" | "DELAY" | "PROBE" | "PERMANENT" | "NOARP")
                })
            });
            let parsed = (|| {
                let dst: IpAddr = n.get("dst")?.as_str()?.parse().ok()?;
                let dev = *by_name.get(n.get("dev")?.as_str()?)?;
                Some(((dst, dev), parse_mac(n.get("lladdr")?.as_str()?)?))
            })();
            if let (true, Some((k, mac))) = (usable, parsed) {
                lladdr.insert(k, mac);
            }
        }
        let mut specs: Vec<NextHopSpec> = self
            .wanted
            .iter()
            .filter_map(|(dst, r)| {
                let (ifindex, via) = (*r)?.through?;
                let dst_mac = *lladdr.get(&(via, ifindex))?;
                let (src_mac, _) = macs.get(&ifindex)?;
                Some(NextHopSpec {
                    dest: (*dst).into(),
                    hop: NextHop { ifindex, src_mac: *src_mac, dst_mac },
                })
            })
            .collect();
        specs.sort_by_key(|s| (s.dest, s.hop.ifindex));
        specs
    }
}

/// (interface index, next hop address) the kernel routes `dst` through.
fn route_get(dst: IpAddr, by_name: &HashMap<&str, u32>) -> Option<(u32, IpAddr)> {
    let v = ip_json(&["route", "get", &dst.to_string()])?;
    let r = v.first()?;
    let dev = *by_name.get(r.get("dev")?.as_str()?)?;
    let via = r.get("gateway").and_then(Value::as_str).and_then(|g| g.parse().ok());
    // A local destination is not forwarded: `route get` names `lo` for it, which is no
    // port of ours, so it is dropped by the caller.
    Some((dev, via.unwrap_or(dst)))
}

fn ip_json(args: &[&str]) -> Option<Vec<Value>> {
    let out = Command::new("ip").arg("-j").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice::<Vec<Value>>(&out.stdout).ok()
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_only_when_whole() {
        assert_eq!(parse_mac("02:00:5e:10:00:01"), Some([2, 0, 0x5e, 0x10, 0, 1]));
        assert_eq!(parse_mac("02:00:5e:10:00"), None);
        assert_eq!(parse_mac("02:00:5e:10:00:01:07"), None);
        assert_eq!(parse_mac("zz:00:5e:10:00:01"), None);
    }
}
