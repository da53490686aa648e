//! The tables the packet path reads, and the compiler that builds them from a desired
//! state (what the control plane wants programmed).
//!
//! A `Tables` value is immutable once built. The control plane compiles a new one and
//! swaps it in with one atomic pointer store (`arc_swap`), so a packet sees either the
//! old tables or the new ones, never a mix: per-VIP atomicity comes for free. The
//! compiler keeps VIP and backend ids stable across compiles (conntrack entries and
//! counters refer to them) and reuses a VIP's ring when its backend set has not
//! changed, so one endpoint change among 10k VIPs rebuilds one ring.

use crate::maglev::{self, BackendIdentity, WeightedBackend};
pub use hashbrown::HashMap;
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;
use vipr_abi::*;

/// What one VIP should look like.
#[derive(Clone, Debug, PartialEq)]
pub struct VipSpec {
    pub addr: IpAddr,
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// `Some` selects `snat` mode: flows leave with this source address.
    pub snat_addr: Option<IpAddr>,
    /// `Some` selects sessionAffinity ClientIP with this timeout.
    pub affinity_timeout_s: Option<u32>,
    /// Allowed client ranges; empty allows everyone.
    pub source_ranges: Vec<IpNet>,
    /// Cap of the Maglev ring size.
    pub ring_max: u32,
    pub backends: Vec<BackendSpec>,
}

impl VipSpec {
    pub fn key(&self) -> VipKey {
        VipKey::new(self.addr, self.port, self.proto)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BackendSpec {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
    /// Keeps its flows, takes no new ones.
    pub draining: bool,
}

/// Where frames to addresses inside `dest` go when vipr forwards them itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

#[derive(Clone, Debug, PartialEq)]
pub struct NextHopSpec {
    pub dest: IpNet,
    pub hop: NextHop,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredState {
    pub settings: Settings,
    pub vips: Vec<VipSpec>,
    pub next_hops: Vec<NextHopSpec>,
}

/// One programmed VIP.
#[derive(Clone, Debug)]
pub struct Vip {
    pub info: VipInfo,
    pub key: VipKey,
    /// `[M, slot 0, .., slot M-1]`, slots holding backend ids (see `RING_HEADER_SLOTS`).
    pub ring: Arc<[u32]>,
    pub source_ranges: Arc<[IpNet]>,
    pub spec: Arc<VipSpec>,
}

impl Vip {
    pub fn ring_size(&self) -> u32 {
        self.ring[0]
    }

    /// The backend id in the slot `hash` maps to (`NO_BACKEND` when the ring is empty).
    #[inline]
    pub fn slot(&self, hash: u32) -> u32 {
        let m = self.ring[0];
        self.ring[(RING_HEADER_SLOTS + ring_index(hash, m)) as usize]
    }
}

/// Longest-prefix next-hop lookup: exact host entries in a hash map (neighbours), the
/// few prefix entries (connected subnets, default routes) scanned longest first.
#[derive(Clone, Debug, Default)]
pub struct NextHops {
    hosts: HashMap<IpAddr, NextHop>,
    prefixes: Vec<(IpNet, NextHop)>,
}

impl NextHops {
    pub fn new(specs: &[NextHopSpec]) -> Self {
        let mut t = NextHops::default();
        for s in specs {
            if s.dest.prefix_len() == s.dest.max_prefix_len() {
                t.hosts.insert(s.dest.addr(), s.hop);
            } else {
                t.prefixes.push((s.dest.trunc(), s.hop));
            }
        }
        t.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.prefix_len()));
        t
    }

    /// Every entry: host routes as /32 or /128, then the prefixes.
    pub fn entries(&self) -> impl Iterator<Item = (IpNet, NextHop)> + '_ {
        let hosts = self.hosts.iter().map(|(ip, hop)| (IpNet::from(*ip), *hop));
        hosts.chain(self.prefixes.iter().copied())
    }

    #[inline]
    pub fn lookup(&self, ip: IpAddr) -> Option<NextHop> {
        if let Some(h) = self.hosts.get(&ip) {
            return Some(*h);
        }
        self.prefixes.iter().find(|(n, _)| n.contains(&ip)).map(|(_, h)| *h)
    }
}

/// An immutable, complete set of tables.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    pub settings: Settings,
    pub vips: HashMap<VipKey, Vip>,
    /// Addresses that carry at least one VIP, with how many.
    pub vip_addrs: HashMap<VipAddrKey, u32>,
    /// Indexed by backend id; a free id holds family 0.
    pub backends: Vec<BackendInfo>,
    pub next_hops: NextHops,
}

impl Tables {
    #[inline]
    pub fn vip(&self, key: &VipKey) -> Option<&Vip> {
        self.vips.get(key)
    }

    #[inline]
    pub fn is_vip_addr(&self, addr: &Addr, family: u8) -> bool {
        self.vip_addrs.contains_key(&VipAddrKey::new(*addr, family))
    }

    #[inline]
    pub fn backend(&self, id: u32) -> Option<&BackendInfo> {
        self.backends.get(id as usize).filter(|b| b.family != 0)
    }

    pub fn vip_by_id(&self, vip_id: u32) -> Option<&Vip> {
        self.vips.values().find(|v| v.info.vip_id == vip_id)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CompileError {
    #[error("VIP {addr} port {port} protocol {proto} is listed twice")]
    DuplicateVip { addr: IpAddr, port: u16, proto: u8 },
    #[error("VIP {vip}: backend {backend} is not of the VIP's address family")]
    FamilyMismatch { vip: String, backend: String },
    #[error("VIP {vip}: SNAT address {snat} is not of the VIP's address family")]
    SnatFamilyMismatch { vip: String, snat: IpAddr },
    #[error("too many VIPs: {count}, the limit is {limit}")]
    TooManyVips { count: usize, limit: u32 },
    #[error("too many backends: the limit is {limit}")]
    TooManyBackends { limit: u32 },
}

/// Hands out small dense ids, keeping the id of a key that stays.
#[derive(Debug)]
struct Ids<K> {
    ids: HashMap<K, u32>,
    free: Vec<u32>,
    next: u32,
    limit: u32,
}

impl<K: Copy + Eq + core::hash::Hash> Ids<K> {
    fn new(limit: u32) -> Self {
        Ids { ids: HashMap::new(), free: Vec::new(), next: 0, limit }
    }

    fn get_or_alloc(&mut self, key: K) -> Option<u32> {
        if let Some(&id) = self.ids.get(&key) {
            return Some(id);
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None if self.next < self.limit => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.ids.insert(key, id);
        Some(id)
    }

    /// Takes over ids handed out before (by an agent whose tables a restarted one
    /// adopts); the gaps between them become free ids.
    fn adopt(&mut self, pairs: impl IntoIterator<Item = (K, u32)>) {
        for (key, id) in pairs {
            if id < self.limit {
                self.ids.insert(key, id);
                self.next = self.next.max(id + 1);
            }
        }
        let used: hashbrown::HashSet<u32> = self.ids.values().copied().collect();
        self.free = (0..self.next).rev().filter(|id| !used.contains(id)).collect();
    }

    /// Frees the id of `key`, if it has one.
    fn release(&mut self, key: &K) {
        if let Some(id) = self.ids.remove(key) {
            self.free.push(id);
        }
    }

    /// Frees the ids of keys not in `keep`.
    fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        let free = &mut self.free;
        self.ids.retain(|k, id| {
            let kept = keep(k);
            if !kept {
                free.push(*id);
            }
            kept
        });
    }
}

type BackendKey = (VipKey, BackendIdentity);

/// A VIP's last ring: the backends it was built from, its size, its slots.
type BuiltRing = (Vec<WeightedBackend>, u32, Arc<[u32]>);

/// A VIP as the last compile left it.
#[derive(Debug)]
struct CompiledVip {
    vip: Vip,
    /// Its backends: identity, id and what is programmed for them, in spec order.
    backends: Vec<(BackendIdentity, u32, BackendInfo)>,
}

/// Builds `Tables` from `DesiredState`, remembering ids, rings and each VIP's compiled
/// form between calls, so a compile costs little more than the VIPs that changed.
#[derive(Debug)]
pub struct Compiler {
    vip_ids: Ids<VipKey>,
    backend_ids: Ids<BackendKey>,
    rings: HashMap<VipKey, BuiltRing>,
    cache: HashMap<VipKey, CompiledVip>,
    /// Rings built (not reused) by the last compile: what a programmer must rewrite.
    pub rings_built: usize,
}

impl Default for Compiler {
    fn default() -> Self {
        Compiler {
            vip_ids: Ids::new(MAX_VIPS),
            backend_ids: Ids::new(MAX_BACKENDS),
            rings: HashMap::new(),
            cache: HashMap::new(),
            rings_built: 0,
        }
    }
}

impl Compiler {
    /// Starts from the ids of tables already programmed (read back from a pinned
    /// dataplane), so conntrack entries and counters keep meaning the same VIP and
    /// backend after an agent restart. Call before the first `compile`.
    pub fn adopt_ids(
        &mut self,
        vips: impl IntoIterator<Item = (VipKey, u32)>,
        backends: impl IntoIterator<Item = (VipKey, BackendIdentity, u32)>,
    ) {
        self.vip_ids.adopt(vips);
        self.backend_ids.adopt(backends.into_iter().map(|(vip, b, id)| ((vip, b), id)));
    }

    pub fn compile(&mut self, desired: &DesiredState) -> Result<Tables, CompileError> {
        let result = self.compile_from_cache(desired);
        if result.is_err() {
            // Ids may have moved under VIPs the cache still holds: start afresh.
            self.cache.clear();
        }
        result
    }

    fn compile_from_cache(&mut self, desired: &DesiredState) -> Result<Tables, CompileError> {
        self.check(desired)?;
        let wanted: hashbrown::HashSet<VipKey> = desired.vips.iter().map(VipSpec::key).collect();
        if self.cache.is_empty() {
            // First compile (or after an error): ids adopted or handed out before and
            // not wanted now are freed here; later compiles free them VIP by VIP.
            let wanted_backends: hashbrown::HashSet<BackendKey> = desired
                .vips
                .iter()
                .flat_map(|v| {
                    let k = v.key();
                    v.backends.iter().map(move |b| (k, identity(b)))
                })
                .collect();
            self.backend_ids.retain(|k| wanted_backends.contains(k));
            self.rings.retain(|k, _| wanted.contains(k));
        }
        // A VIP whose spec is what it was keeps its compiled form: no id lookups, no
        // ring check. Changed and gone VIPs free the ids they no longer use first, so a
        // full id space can take a replacement in the same compile.
        let mut unchanged: hashbrown::HashSet<VipKey> = hashbrown::HashSet::new();
        for spec in &desired.vips {
            let key = spec.key();
            match self.cache.get(&key) {
                Some(c) if *c.vip.spec == *spec => {
                    unchanged.insert(key);
                }
                Some(c) => {
                    let kept: hashbrown::HashSet<BackendIdentity> =
                        spec.backends.iter().map(identity).collect();
                    for (b, _, _) in c.backends.iter().filter(|(b, _, _)| !kept.contains(b)) {
                        self.backend_ids.release(&(key, *b));
                    }
                }
                None => {}
            }
        }
        let gone: Vec<VipKey> =
            self.cache.keys().filter(|k| !wanted.contains(*k)).copied().collect();
        for key in gone {
            let c = self.cache.remove(&key).expect("listed above");
            for (b, _, _) in &c.backends {
                self.backend_ids.release(&(key, *b));
            }
            self.vip_ids.release(&key);
            self.rings.remove(&key);
        }
        // Ids handed out before the cache knew them (adopted ones) and not wanted.
        self.vip_ids.retain(|k| wanted.contains(k));
        self.rings_built = 0;

        let mut t = Tables {
            settings: desired.settings,
            next_hops: NextHops::new(&desired.next_hops),
            ..Tables::default()
        };
        t.vips.reserve(desired.vips.len());
        t.backends.reserve(self.backend_ids.next as usize);
        for spec in &desired.vips {
            let key = spec.key();
            if unchanged.contains(&key) {
                let c = &self.cache[&key];
                for &(_, id, info) in &c.backends {
                    put_backend(&mut t.backends, id, info);
                }
                *t.vip_addrs.entry(VipAddrKey::new(key.addr, key.family)).or_insert(0) += 1;
                t.vips.insert(key, c.vip.clone());
                continue;
            }
            let vip_id = self
                .vip_ids
                .get_or_alloc(key)
                .ok_or(CompileError::TooManyVips { count: desired.vips.len(), limit: MAX_VIPS })?;
            let mut weighted = Vec::with_capacity(spec.backends.len());
            let mut backends = Vec::with_capacity(spec.backends.len());
            for b in &spec.backends {
                let id = self
                    .backend_ids
                    .get_or_alloc((key, identity(b)))
                    .ok_or(CompileError::TooManyBackends { limit: MAX_BACKENDS })?;
                let (addr, family) = addr_of(b.addr);
                let info = BackendInfo {
                    addr,
                    port: b.port.to_be(),
                    family,
                    flags: if b.draining { BACKEND_F_DRAINING } else { 0 },
                    vip_id,
                };
                put_backend(&mut t.backends, id, info);
                backends.push((identity(b), id, info));
                if !b.draining && b.weight > 0 {
                    weighted.push(WeightedBackend { identity: identity(b), weight: b.weight, id });
                }
            }
            weighted.sort_by_key(|w| w.identity);
            let ring = self.ring(key, weighted, spec.ring_max);

            let mut flags = 0;
            if spec.snat_addr.is_some() {
                flags |= VIP_F_SNAT;
            }
            if spec.affinity_timeout_s.is_some() {
                flags |= VIP_F_AFFINITY;
            }
            if !spec.source_ranges.is_empty() {
                flags |= VIP_F_SOURCE_RANGES;
            }
            let info = VipInfo {
                vip_id,
                flags,
                affinity_timeout_s: spec.affinity_timeout_s.unwrap_or(0),
                _pad: 0,
                snat_addr: spec.snat_addr.map(|a| addr_of(a).0).unwrap_or([0; 16]),
            };
            *t.vip_addrs.entry(VipAddrKey::new(key.addr, key.family)).or_insert(0) += 1;
            let source_ranges: Arc<[IpNet]> = spec.source_ranges.iter().map(IpNet::trunc).collect();
            let vip = Vip { info, key, ring, source_ranges, spec: Arc::new(spec.clone()) };
            self.cache.insert(key, CompiledVip { vip: vip.clone(), backends });
            t.vips.insert(key, vip);
        }
        Ok(t)
    }

    fn ring(&mut self, key: VipKey, weighted: Vec<WeightedBackend>, ring_max: u32) -> Arc<[u32]> {
        let m = if weighted.is_empty() { 1 } else { maglev::ring_size(weighted.len(), ring_max) };
        if let Some((prev, prev_m, ring)) = self.rings.get(&key) {
            if *prev_m == m && same_backends(prev, &weighted) {
                return ring.clone();
            }
        }
        let mut ring = vec![0u32; (m + RING_HEADER_SLOTS) as usize];
        ring[0] = m;
        if weighted.is_empty() {
            ring[1] = NO_BACKEND;
        } else {
            maglev::build_into(&weighted, &mut ring[RING_HEADER_SLOTS as usize..]);
        }
        let ring: Arc<[u32]> = ring.into();
        self.rings_built += 1;
        self.rings.insert(key, (weighted, m, ring.clone()));
        ring
    }

    fn check(&self, desired: &DesiredState) -> Result<(), CompileError> {
        if desired.vips.len() > MAX_VIPS as usize {
            return Err(CompileError::TooManyVips { count: desired.vips.len(), limit: MAX_VIPS });
        }
        let mut seen = hashbrown::HashSet::new();
        for v in &desired.vips {
            if !seen.insert(v.key()) {
                return Err(CompileError::DuplicateVip {
                    addr: v.addr,
                    port: v.port,
                    proto: v.proto,
                });
            }
            let vip = || format!("{}:{}", v.addr, v.port);
            for b in &v.backends {
                if b.addr.is_ipv4() != v.addr.is_ipv4() {
                    return Err(CompileError::FamilyMismatch {
                        vip: vip(),
                        backend: format!("{}:{}", b.addr, b.port),
                    });
                }
            }
            if let Some(s) = v.snat_addr {
                if s.is_ipv4() != v.addr.is_ipv4() {
                    return Err(CompileError::SnatFamilyMismatch { vip: vip(), snat: s });
                }
            }
        }
        Ok(())
    }
}

const EMPTY_BACKEND: BackendInfo =
    BackendInfo { addr: [0; 16], port: 0, family: 0, flags: 0, vip_id: 0 };

fn put_backend(backends: &mut Vec<BackendInfo>, id: u32, info: BackendInfo) {
    if backends.len() <= id as usize {
        backends.resize(id as usize + 1, EMPTY_BACKEND);
    }
    backends[id as usize] = info;
}

fn identity(b: &BackendSpec) -> BackendIdentity {
    BackendIdentity { addr: b.addr, port: b.port }
}

fn same_backends(a: &[WeightedBackend], b: &[WeightedBackend]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.identity == y.identity && x.weight == y.weight && x.id == y.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(port: u16, backends: &[(&str, bool)]) -> VipSpec {
        VipSpec {
            addr: "192.0.2.10".parse().unwrap(),
            port,
            proto: PROTO_TCP,
            snat_addr: None,
            affinity_timeout_s: None,
            source_ranges: vec![],
            ring_max: DEFAULT_RING_MAX,
            backends: backends
                .iter()
                .map(|(a, draining)| BackendSpec {
                    addr: a.parse().unwrap(),
                    port: 8080,
                    weight: 1,
                    draining: *draining,
                })
                .collect(),
        }
    }

    fn state(vips: Vec<VipSpec>) -> DesiredState {
        DesiredState { vips, ..Default::default() }
    }

    #[test]
    fn ids_stay_stable_when_other_vips_come_and_go() {
        let mut c = Compiler::default();
        let a = vip(80, &[("192.0.2.21", false)]);
        let b = vip(81, &[("192.0.2.22", false)]);
        let t1 = c.compile(&state(vec![a.clone(), b.clone()])).unwrap();
        let t2 = c.compile(&state(vec![b.clone()])).unwrap();
        assert_eq!(t1.vips[&b.key()].info.vip_id, t2.vips[&b.key()].info.vip_id);
        assert_eq!(t1.vips[&b.key()].ring, t2.vips[&b.key()].ring);
        assert!(t2.vip(&a.key()).is_none());
    }

    #[test]
    fn unchanged_backends_reuse_the_ring_and_one_change_rebuilds_one_ring() {
        let mut c = Compiler::default();
        let vips: Vec<_> = (0..50)
            .map(|p| vip(1000 + p, &[("192.0.2.21", false), ("192.0.2.22", false)]))
            .collect();
        c.compile(&state(vips.clone())).unwrap();
        assert_eq!(c.rings_built, 50);
        let mut changed = vips.clone();
        changed[7].backends.pop();
        c.compile(&state(changed)).unwrap();
        assert_eq!(c.rings_built, 1);
    }

    #[test]
    fn draining_backends_are_programmed_but_get_no_ring_slot() {
        let mut c = Compiler::default();
        let v = vip(80, &[("192.0.2.21", false), ("192.0.2.22", true)]);
        let t = c.compile(&state(vec![v.clone()])).unwrap();
        let vip = &t.vips[&v.key()];
        let ids: hashbrown::HashSet<u32> = vip.ring[1..].iter().copied().collect();
        assert_eq!(ids.len(), 1);
        let drained = t.backends.iter().filter(|b| b.flags & BACKEND_F_DRAINING != 0).count();
        assert_eq!(drained, 1);
    }

    #[test]
    fn vip_without_usable_backend_gets_an_empty_ring() {
        let mut c = Compiler::default();
        let v = vip(80, &[]);
        let t = c.compile(&state(vec![v.clone()])).unwrap();
        assert_eq!(t.vips[&v.key()].slot(12345), NO_BACKEND);
    }

    #[test]
    fn duplicate_vips_and_family_mismatches_are_refused() {
        let mut c = Compiler::default();
        let v = vip(80, &[]);
        assert!(matches!(
            c.compile(&state(vec![v.clone(), v.clone()])),
            Err(CompileError::DuplicateVip { .. })
        ));
        let w = vip(80, &[("2001:db8::1", false)]);
        assert!(matches!(c.compile(&state(vec![w])), Err(CompileError::FamilyMismatch { .. })));
    }

    #[test]
    fn adopted_ids_are_kept_and_their_gaps_reused() {
        let v = vip(80, &[("192.0.2.21", false), ("192.0.2.22", false)]);
        let ident = |a: &str| BackendIdentity { addr: a.parse().unwrap(), port: 8080 };
        let mut c = Compiler::default();
        c.adopt_ids([(v.key(), 5)], [(v.key(), ident("192.0.2.22"), 3)]);
        let t = c.compile(&state(vec![v.clone(), vip(81, &[("192.0.2.23", false)])])).unwrap();
        assert_eq!(t.vips[&v.key()].info.vip_id, 5);
        assert_eq!(t.backends[3].addr[..4], [192, 0, 2, 22]);
        // The other backends take free ids below the adopted ones, not 4 and up.
        let ids: Vec<usize> =
            (0..t.backends.len()).filter(|&i| t.backends[i].family != 0).collect();
        assert_eq!(ids, vec![0, 1, 3]);
    }

    #[test]
    fn next_hops_prefer_the_longest_prefix() {
        let hop = |i| NextHop { ifindex: i, src_mac: [0; 6], dst_mac: [i as u8; 6] };
        let t = NextHops::new(&[
            NextHopSpec { dest: "0.0.0.0/0".parse().unwrap(), hop: hop(1) },
            NextHopSpec { dest: "192.0.2.0/24".parse().unwrap(), hop: hop(2) },
            NextHopSpec { dest: "192.0.2.21/32".parse().unwrap(), hop: hop(3) },
        ]);
        assert_eq!(t.lookup("192.0.2.21".parse().unwrap()).unwrap().ifindex, 3);
        assert_eq!(t.lookup("192.0.2.22".parse().unwrap()).unwrap().ifindex, 2);
        assert_eq!(t.lookup("198.51.100.1".parse().unwrap()).unwrap().ifindex, 1);
        assert!(t.lookup("2001:db8::1".parse().unwrap()).is_none());
    }
}
