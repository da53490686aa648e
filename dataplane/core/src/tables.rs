//! The tables the packet path reads, and the compiler that builds them from a desired
//! state (what the control plane wants programmed).
//!
//! The [`Compiler`] keeps one `Tables` up to date and says what each compile changed
//! ([`TablesChanges`]), so a programmer writes only that. The userspace packet path
//! reads a copy of it, swapped in with one atomic pointer store (`arc_swap`), so a
//! packet sees either the old tables or the new ones, never a mix. The compiler keeps
//! VIP and backend ids stable across compiles (conntrack entries and counters refer to
//! them) and reuses a VIP's ring when its backend set has not changed, so one endpoint
//! change among 10k VIPs rebuilds one ring.

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
    pub ring: Ring,
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

/// A VIP's ring, read as its slots. The rings of one bulk build (a cold start: thousands)
/// share one allocation, freed with the last of them: at worst it holds what that build
/// needed.
#[derive(Clone)]
pub struct Ring {
    memory: Arc<Vec<u32>>,
    at: usize,
    len: usize,
}

impl Ring {
    fn alone(slots: Vec<u32>) -> Ring {
        let len = slots.len();
        Ring { memory: Arc::new(slots), at: 0, len }
    }

    /// The same ring, not merely equal slots (an unchanged ring is not written again).
    pub fn same(a: &Ring, b: &Ring) -> bool {
        Arc::ptr_eq(&a.memory, &b.memory) && a.at == b.at
    }
}

impl std::ops::Deref for Ring {
    type Target = [u32];
    #[inline]
    fn deref(&self) -> &[u32] {
        &self.memory[self.at..self.at + self.len]
    }
}

impl PartialEq for Ring {
    fn eq(&self, other: &Ring) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
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
        // One hash a key (a cold start asks for every backend).
        let free = match self.ids.entry(key) {
            hashbrown::hash_map::Entry::Occupied(e) => return Some(*e.get()),
            hashbrown::hash_map::Entry::Vacant(e) => e,
        };
        let id = match self.free.pop() {
            Some(id) => id,
            None if self.next < self.limit => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        free.insert(id);
        Some(id)
    }

    /// Takes over ids handed out before (by an agent whose tables a restarted one
    /// adopts); the gaps between them become free ids.
    fn adopt(&mut self, pairs: impl IntoIterator<Item = (K, u32)>) {
        let mut used: hashbrown::HashSet<u32> = self.ids.values().copied().collect();
        for (key, id) in pairs {
            // An id held twice (an agent that died between writing a new VIP and removing
            // the old one) goes to the first key only, so no two keys ever share it.
            if id < self.limit && used.insert(id) {
                self.ids.insert(key, id);
                self.next = self.next.max(id + 1);
            }
        }
        self.free = (0..self.next).rev().filter(|id| !used.contains(id)).collect();
    }

    /// Frees the id of `key`, if it has one.
    fn release(&mut self, key: &K) {
        let id = self.forget(key);
        self.free.extend(id);
    }

    /// Takes `key`'s id away without freeing it (the caller frees it later).
    fn forget(&mut self, key: &K) -> Option<u32> {
        self.ids.remove(key)
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

/// What the compiler knows of one VIP besides its entry in the tables.
#[derive(Debug)]
struct VipState {
    /// Its backends: identity and id, in spec order (their entries are in the tables).
    backends: Vec<(BackendIdentity, u32)>,
    /// The backends its ring was built from (active ones, canonical order).
    weighted: Vec<WeightedBackend>,
}

/// What one compile changed in the tables: all a programmer must write.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TablesChanges {
    /// VIPs added or changed; their new form is in the tables.
    pub vips: Vec<VipKey>,
    /// VIPs removed.
    pub removed: Vec<VipKey>,
    /// Backend ids whose entry changed; a freed id now holds the empty entry.
    pub backends: Vec<u32>,
    pub settings: bool,
    pub next_hops: bool,
}

impl TablesChanges {
    /// Adds what a later compile changed.
    pub fn merge(&mut self, later: TablesChanges) {
        self.vips.retain(|k| !later.removed.contains(k));
        self.removed.retain(|k| !later.vips.contains(k));
        self.vips.extend(later.vips);
        self.removed.extend(later.removed);
        self.backends.extend(later.backends);
        self.settings |= later.settings;
        self.next_hops |= later.next_hops;
    }

    pub fn is_empty(&self) -> bool {
        self.vips.is_empty()
            && self.removed.is_empty()
            && self.backends.is_empty()
            && !self.settings
            && !self.next_hops
    }
}

/// Keeps `Tables` up to date with a desired state, given whole ([`Compiler::sync`]) or
/// as VIP upserts and removals ([`Compiler::update`]). Work is proportional to what
/// changed: an unchanged VIP costs a spec compare in `sync` and nothing in `update`.
/// Ids stay stable across compiles (conntrack entries and counters refer to them), and
/// a VIP whose active backends are unchanged keeps its ring. A compile that fails
/// changes nothing: everything is checked before anything is applied.
#[derive(Debug)]
pub struct Compiler {
    vip_ids: Ids<VipKey>,
    backend_ids: Ids<BackendKey>,
    tables: Tables,
    vips: HashMap<VipKey, VipState>,
    next_hop_specs: Vec<NextHopSpec>,
    /// Whether ids adopted from a running dataplane were checked against a first desired
    /// state (the ones it does not want are freed then).
    synced: bool,
    /// Rings built (not reused) by the last compile: what a programmer must rewrite.
    pub rings_built: usize,
}

impl Default for Compiler {
    fn default() -> Self {
        Compiler {
            vip_ids: Ids::new(MAX_VIPS),
            backend_ids: Ids::new(MAX_BACKENDS),
            tables: Tables::default(),
            vips: HashMap::new(),
            next_hop_specs: Vec::new(),
            synced: false,
            rings_built: 0,
        }
    }
}

/// Below this many rings to build, threads cost more than they save.
const PARALLEL_RINGS: usize = 256;

impl Compiler {
    /// Starts from the ids of tables already programmed (read back from a pinned
    /// dataplane), so conntrack entries and counters keep meaning the same VIP and
    /// backend after an agent restart. Call before the first compile.
    pub fn adopt_ids(
        &mut self,
        vips: impl IntoIterator<Item = (VipKey, u32)>,
        backends: impl IntoIterator<Item = (VipKey, BackendIdentity, u32)>,
    ) {
        self.vip_ids.adopt(vips);
        self.backend_ids.adopt(backends.into_iter().map(|(vip, b, id)| ((vip, b), id)));
    }

    /// The tables as the last successful compile left them.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// [`Compiler::sync`], returning a copy of the whole tables.
    pub fn compile(&mut self, desired: &DesiredState) -> Result<Tables, CompileError> {
        self.sync(desired)?;
        Ok(self.tables.clone())
    }

    /// Makes the tables those of `desired`, and says what changed.
    pub fn sync(&mut self, desired: &DesiredState) -> Result<TablesChanges, CompileError> {
        check_unique(desired.vips.iter())?;
        if desired.vips.len() > MAX_VIPS as usize {
            return Err(CompileError::TooManyVips { count: desired.vips.len(), limit: MAX_VIPS });
        }
        let wanted: hashbrown::HashSet<VipKey> = desired.vips.iter().map(VipSpec::key).collect();
        if !self.synced {
            // Adopted ids the desired state does not use are free from now on. (A cold
            // start adopted none: no set of every backend for it.)
            if !self.backend_ids.ids.is_empty() {
                let wanted_backends: hashbrown::HashSet<BackendKey> = desired
                    .vips
                    .iter()
                    .flat_map(|v| {
                        let k = v.key();
                        v.backends.iter().map(move |b| (k, identity(b)))
                    })
                    .collect();
                self.backend_ids.retain(|k| wanted_backends.contains(k));
            }
            self.vip_ids.retain(|k| wanted.contains(k));
            self.synced = true;
        }
        let removes: Vec<VipKey> =
            self.tables.vips.keys().filter(|k| !wanted.contains(*k)).copied().collect();
        let upserts: Vec<&VipSpec> = desired
            .vips
            .iter()
            .filter(|s| self.tables.vips.get(&s.key()).is_none_or(|v| *v.spec != **s))
            .collect();
        let mut changes = self.apply(&upserts, &removes)?;
        if self.tables.settings != desired.settings {
            self.tables.settings = desired.settings;
            changes.settings = true;
        }
        if self.next_hop_specs != desired.next_hops {
            self.tables.next_hops = NextHops::new(&desired.next_hops);
            self.next_hop_specs = desired.next_hops.clone();
            changes.next_hops = true;
        }
        Ok(changes)
    }

    /// Adds or replaces the VIPs `upserts` and removes the VIPs `removes`, leaving every
    /// other VIP as it is. A key in both is upserted (keeping its ids). Ids adopted
    /// before the first [`Compiler::sync`] stay reserved until it.
    pub fn update(
        &mut self,
        upserts: &[VipSpec],
        removes: &[VipKey],
    ) -> Result<TablesChanges, CompileError> {
        check_unique(upserts.iter())?;
        let upserted: hashbrown::HashSet<VipKey> = upserts.iter().map(VipSpec::key).collect();
        let removes: Vec<VipKey> =
            removes.iter().filter(|k| !upserted.contains(*k)).copied().collect();
        let upserts: Vec<&VipSpec> = upserts
            .iter()
            .filter(|s| self.tables.vips.get(&s.key()).is_none_or(|v| *v.spec != **s))
            .collect();
        self.apply(&upserts, &removes)
    }

    /// Checks that ids suffice for the change, then applies it.
    fn apply(
        &mut self,
        upserts: &[&VipSpec],
        removes: &[VipKey],
    ) -> Result<TablesChanges, CompileError> {
        self.check_ids(upserts, removes)?;
        self.rings_built = 0;
        let mut ch = TablesChanges::default();
        let mut freed_vip_ids = Vec::new();
        for key in removes {
            if self.tables.vips.remove(key).is_some() {
                let state = self.vips.remove(key).expect("a VIP in the tables has a state");
                for &(b, id) in &state.backends {
                    self.backend_ids.release(&(*key, b));
                    self.clear_backend(id, &mut ch);
                }
                // Free for the next change, not this one: until the programmer removes
                // its entry, the removed VIP's packets read the ring its id names, which
                // a new VIP given that id would rewrite with its own backends.
                freed_vip_ids.extend(self.vip_ids.forget(key));
                self.count_addr(key, -1);
                ch.removed.push(*key);
            }
        }
        // Backends a changed VIP no longer has free their ids before any is handed out,
        // so a full id space can take a replacement in the same compile.
        for spec in upserts {
            let key = spec.key();
            let Some(state) = self.vips.get(&key) else { continue };
            let kept: hashbrown::HashSet<BackendIdentity> =
                spec.backends.iter().map(identity).collect();
            let gone: Vec<(BackendIdentity, u32)> =
                state.backends.iter().filter(|(b, _)| !kept.contains(b)).copied().collect();
            for (b, id) in gone {
                self.backend_ids.release(&(key, b));
                self.clear_backend(id, &mut ch);
            }
        }

        // Ids, backend entries and VIP entries, in order; the rings they need are built
        // meanwhile, on the other cores, and put in after. (Room first: a cold start
        // would otherwise rehash the maps and grow the vectors a dozen times.)
        let backends: usize = upserts.iter().map(|s| s.backends.len()).sum();
        self.backend_ids.ids.reserve(backends);
        self.tables.vips.reserve(upserts.len());
        self.vips.reserve(upserts.len());
        ch.backends.reserve(backends);
        ch.vips.reserve(upserts.len());
        let backends_len = self.tables.backends.len();
        let room = (self.backend_ids.next as usize + backends).min(self.backend_ids.limit as usize);
        if room > backends_len {
            self.tables.backends.resize(room, EMPTY_BACKEND);
        }
        // The VIP each ring built is for, by job.
        let mut jobs: Vec<VipKey> = Vec::new();
        // The most slots the rings can take: a backend may be listed twice, or weigh 0.
        let bound = || {
            let slots = |s: &&VipSpec| match s.backends.len() {
                0 => 1,
                n => maglev::ring_size(n, s.ring_max),
            };
            upserts.iter().map(|s| (slots(s) + RING_HEADER_SLOTS) as usize).sum()
        };
        let unbuilt = Ring::alone(Vec::new());
        let rings = build_rings((upserts.len() >= PARALLEL_RINGS).then(bound), |build| {
            for spec in upserts {
                let key = spec.key();
                // A freed id only when no other is left (check_ids counted them free).
                let vip_id = match self.vip_ids.get_or_alloc(key) {
                    Some(id) => id,
                    None => {
                        let id = freed_vip_ids.pop().expect("checked by check_ids");
                        self.vip_ids.ids.insert(key, id);
                        id
                    }
                };
                let mut weighted = Vec::with_capacity(spec.backends.len());
                let mut backends = Vec::with_capacity(spec.backends.len());
                // A backend listed twice counts once, as its first listing says (a set
                // only for large VIPs: a scan of the listings before is cheaper).
                let mut seen: Option<hashbrown::HashSet<BackendIdentity>> =
                    (spec.backends.len() > 32).then(hashbrown::HashSet::new);
                for (i, b) in spec.backends.iter().enumerate() {
                    let me = identity(b);
                    let dup = match &mut seen {
                        Some(set) => !set.insert(me),
                        None => spec.backends[..i].iter().any(|e| identity(e) == me),
                    };
                    if dup {
                        continue;
                    }
                    let id = self.backend_ids.get_or_alloc((key, me)).expect("checked");
                    let (addr, family) = addr_of(b.addr);
                    let info = BackendInfo {
                        addr,
                        port: b.port.to_be(),
                        family,
                        flags: if b.draining { BACKEND_F_DRAINING } else { 0 },
                        vip_id,
                    };
                    put_backend(&mut self.tables.backends, id, info);
                    ch.backends.push(id);
                    backends.push((me, id));
                    if !b.draining && b.weight > 0 {
                        weighted.push(WeightedBackend { identity: me, weight: b.weight, id });
                    }
                }
                weighted.sort_by_key(|w| w.identity);
                let m = if weighted.is_empty() {
                    1
                } else {
                    maglev::ring_size(weighted.len(), spec.ring_max)
                };
                let reuse = self.tables.vips.get(&key).filter(|v| {
                    v.ring_size() == m
                        && self
                            .vips
                            .get(&key)
                            .is_some_and(|s| same_backends(&s.weighted, &weighted))
                });
                let ring = match reuse {
                    Some(v) => v.ring.clone(),
                    None => {
                        build(jobs.len(), &weighted, m);
                        jobs.push(key);
                        unbuilt.clone()
                    }
                };
                let vip = Vip {
                    info: vip_info(spec, vip_id),
                    key,
                    ring,
                    source_ranges: spec.source_ranges.iter().map(IpNet::trunc).collect(),
                    spec: Arc::new((*spec).clone()),
                };
                if self.tables.vips.insert(key, vip).is_none() {
                    self.count_addr(&key, 1);
                }
                self.vips.insert(key, VipState { backends, weighted });
                ch.vips.push(key);
            }
        });
        // Room not taken (entries left empty past the old end): the tables end at the
        // highest backend id, as before.
        let taken = self.tables.backends[backends_len..].iter().rposition(|b| b.family != 0);
        self.tables.backends.truncate(backends_len + taken.map_or(0, |i| i + 1));
        self.vip_ids.free.extend(freed_vip_ids);
        self.rings_built = rings.len();
        for (job, ring) in rings {
            self.tables.vips.get_mut(&jobs[job]).expect("inserted with its job").ring = ring;
        }
        Ok(ch)
    }

    /// Refuses a change the id spaces cannot take, before anything is applied.
    fn check_ids(&self, upserts: &[&VipSpec], removes: &[VipKey]) -> Result<(), CompileError> {
        let removed: hashbrown::HashSet<VipKey> =
            removes.iter().filter(|k| self.tables.vips.contains_key(*k)).copied().collect();
        let new_vips = upserts
            .iter()
            .filter(|s| removed.contains(&s.key()) || !self.vip_ids.ids.contains_key(&s.key()))
            .count();
        let vips_after = self.vip_ids.ids.len() - removed.len() + new_vips;
        if vips_after > MAX_VIPS as usize {
            return Err(CompileError::TooManyVips { count: vips_after, limit: MAX_VIPS });
        }
        let mut freed = 0;
        for key in &removed {
            freed += self.vips.get(key).map_or(0, |s| s.backends.len());
        }
        // Upserts have distinct keys (check_unique), so counting each one's distinct
        // backends without an id counts the ids needed.
        let mut needed = 0;
        let mut kept: Vec<BackendIdentity> = Vec::new();
        for spec in upserts {
            let key = spec.key();
            let gone = removed.contains(&key);
            kept.clear();
            kept.extend(spec.backends.iter().map(identity));
            kept.sort_unstable();
            kept.dedup();
            if let Some(s) = self.vips.get(&key).filter(|_| !gone) {
                freed += s.backends.iter().filter(|(b, _)| kept.binary_search(b).is_err()).count();
            }
            needed += kept
                .iter()
                .filter(|b| gone || !self.backend_ids.ids.contains_key(&(key, **b)))
                .count();
        }
        if self.backend_ids.ids.len() - freed + needed > MAX_BACKENDS as usize {
            return Err(CompileError::TooManyBackends { limit: MAX_BACKENDS });
        }
        Ok(())
    }

    fn clear_backend(&mut self, id: u32, ch: &mut TablesChanges) {
        if let Some(b) = self.tables.backends.get_mut(id as usize) {
            *b = EMPTY_BACKEND;
            ch.backends.push(id);
        }
    }

    fn count_addr(&mut self, key: &VipKey, delta: i32) {
        let addr = VipAddrKey::new(key.addr, key.family);
        let n = self.tables.vip_addrs.entry(addr).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.tables.vip_addrs.remove(&addr);
        }
    }
}

fn vip_info(spec: &VipSpec, vip_id: u32) -> VipInfo {
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
    VipInfo {
        vip_id,
        flags,
        affinity_timeout_s: spec.affinity_timeout_s.unwrap_or(0),
        ring_offset: 0,
        snat_addr: spec.snat_addr.map(|a| addr_of(a).0).unwrap_or([0; 16]),
    }
}

/// The `[M, slots..]` rings of the `(job, backends, M)` jobs that `produce` hands to
/// the function it is given, each with its job. With `bulk` (the most slots the jobs can
/// take), they are built into one allocation on the other cores while `produce` still
/// runs (a cold start builds one a VIP, and assigns the next VIPs' ids meanwhile), then
/// on this one too; else here, one by one, each in its own.
fn build_rings(
    bulk: Option<usize>,
    produce: impl FnOnce(&mut dyn FnMut(usize, &[WeightedBackend], u32)),
) -> Vec<(usize, Ring)> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Some(bound) = bulk.filter(|_| threads > 1) else {
        let mut rings = Vec::new();
        produce(&mut |job, weighted, m| {
            let mut slots = vec![0; (m + RING_HEADER_SLOTS) as usize];
            fill_ring(weighted, m, &mut slots);
            rings.push((job, Ring::alone(slots)));
        });
        return rings;
    };
    type Batch<'a> = Vec<(&'a mut [u32], Vec<WeightedBackend>, u32)>;
    const BATCH: usize = 32;
    let mut memory = vec![0u32; bound];
    let mut placed = Vec::new();
    {
        let (tx, rx) = std::sync::mpsc::channel::<Batch>();
        let rx = std::sync::Mutex::new(rx);
        std::thread::scope(|s| {
            let build_all = || loop {
                // The lock is held while waiting (another builder would wait for the next
                // batch anyway), not while building.
                let batch = rx.lock().expect("ring building does not panic").recv();
                let Ok(batch) = batch else { return };
                for (slots, weighted, m) in batch {
                    fill_ring(&weighted, m, slots);
                }
            };
            let builders: Vec<_> = (1..threads).map(|_| s.spawn(build_all)).collect();
            let (mut free, mut at) = (&mut memory[..], 0);
            let mut batch = Vec::with_capacity(BATCH);
            produce(&mut |job, weighted, m| {
                let len = (m + RING_HEADER_SLOTS) as usize;
                let (slots, rest) = std::mem::take(&mut free).split_at_mut(len);
                free = rest;
                placed.push((job, at, len));
                at += len;
                batch.push((slots, weighted.to_vec(), m));
                if batch.len() == BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    tx.send(full).expect("the builders run until the sender is dropped");
                }
            });
            if !batch.is_empty() {
                tx.send(batch).expect("the builders run until the sender is dropped");
            }
            drop(tx);
            build_all();
            for b in builders {
                b.join().expect("ring building does not panic");
            }
        });
    }
    let used = placed.iter().map(|&(_, at, len)| at + len).max().unwrap_or(0);
    memory.truncate(used);
    memory.shrink_to_fit();
    let memory = Arc::new(memory);
    placed
        .into_iter()
        .map(|(job, at, len)| (job, Ring { memory: memory.clone(), at, len }))
        .collect()
}

/// Writes the `[M, slots..]` ring of `m` slots over `weighted` into `out`.
fn fill_ring(weighted: &[WeightedBackend], m: u32, out: &mut [u32]) {
    out[0] = m;
    if weighted.is_empty() {
        out[1] = NO_BACKEND;
    } else {
        maglev::build_into(weighted, &mut out[RING_HEADER_SLOTS as usize..]);
    }
}

/// Refuses a VIP listed twice, and any VIP [`check_vip`] refuses.
fn check_unique<'a>(vips: impl Iterator<Item = &'a VipSpec>) -> Result<(), CompileError> {
    let mut seen = hashbrown::HashSet::new();
    for v in vips {
        if !seen.insert(v.key()) {
            return Err(CompileError::DuplicateVip { addr: v.addr, port: v.port, proto: v.proto });
        }
        check_vip(v)?;
    }
    Ok(())
}

/// What the compiler refuses of a VIP on its own: a backend or SNAT address of the
/// other family.
pub fn check_vip(v: &VipSpec) -> Result<(), CompileError> {
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
    Ok(())
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

    /// What the tables mean, whatever ids they were given: per VIP its spec, the
    /// backends of its ring slots and its backend entries; plus the address counts.
    type Meaning = (VipSpec, Vec<Option<(IpAddr, u16)>>, Vec<BackendInfo>);

    fn meaning(t: &Tables) -> Vec<Meaning> {
        let ip = |b: &BackendInfo| (ip_of(&b.addr, b.family), u16::from_be(b.port));
        let mut out: Vec<_> = t
            .vips
            .values()
            .map(|v| {
                let slots = v.ring[1..].iter().map(|&id| t.backend(id).map(ip)).collect();
                let mut entries: Vec<BackendInfo> = t
                    .backends
                    .iter()
                    .filter(|b| b.family != 0 && b.vip_id == v.info.vip_id)
                    .map(|b| BackendInfo { vip_id: 0, ..*b })
                    .collect();
                entries.sort_by_key(|b| (b.addr, b.port));
                ((*v.spec).clone(), slots, entries)
            })
            .collect();
        out.sort_by_key(|(s, _, _)| s.key());
        out
    }

    proptest::proptest! {
        /// Any sequence of upserts and removals leaves the same tables (up to ids) as
        /// compiling the resulting desired state from scratch; `changes` names every VIP
        /// that differs and no VIP that does not.
        #[test]
        fn updates_leave_what_a_fresh_compile_of_the_same_state_gives(
            steps in proptest::collection::vec(
                (0u16..12, proptest::collection::vec((1u8..9, proptest::bool::ANY), 0..5), proptest::bool::ANY),
                1..40,
            )
        ) {
            let mut c = Compiler::default();
            let mut want: std::collections::BTreeMap<VipKey, VipSpec> = Default::default();
            for (port, backends, remove) in steps {
                let addrs: Vec<(String, bool)> =
                    backends.iter().map(|(h, d)| (format!("192.0.2.{h}"), *d)).collect();
                let refs: Vec<(&str, bool)> = addrs.iter().map(|(a, d)| (a.as_str(), *d)).collect();
                let spec = vip(port, &refs);
                let before = c.tables().clone();
                let ch = if remove {
                    want.remove(&spec.key());
                    c.update(&[], &[spec.key()]).unwrap()
                } else {
                    want.insert(spec.key(), spec.clone());
                    c.update(std::slice::from_ref(&spec), &[]).unwrap()
                };
                let fresh = Compiler::default()
                    .compile(&state(want.values().cloned().collect()))
                    .unwrap();
                proptest::prop_assert_eq!(meaning(c.tables()), meaning(&fresh));
                proptest::prop_assert_eq!(&c.tables().vip_addrs, &fresh.vip_addrs);
                for k in before.vips.keys().chain(c.tables().vips.keys()) {
                    let differs = before.vips.get(k).map(|v| &v.spec) != c.tables().vips.get(k).map(|v| &v.spec);
                    let named = ch.vips.contains(k) || ch.removed.contains(k);
                    proptest::prop_assert_eq!(differs, named, "VIP {:?}", k);
                }
            }
        }
    }

    #[test]
    fn a_bulk_build_gives_the_rings_one_at_a_time_builds_give() {
        // VIPs of 0 to 12 backends, some listed twice, some draining or weightless.
        let spec = |p: u16| {
            let hosts: Vec<(String, bool)> = (0..p % 13)
                .map(|j| (format!("192.0.2.{}", 1 + (p + j * 7) % 200), (p + j).is_multiple_of(5)))
                .collect();
            let refs: Vec<(&str, bool)> = hosts.iter().map(|(a, d)| (a.as_str(), *d)).collect();
            let mut v = vip(1000 + p, &refs);
            if let Some(b) = v.backends.first().cloned() {
                v.backends.push(b);
            }
            if let Some(b) = v.backends.get_mut(1) {
                b.weight = 0;
            }
            v
        };
        let vips: Vec<VipSpec> = (0..3 * PARALLEL_RINGS as u16).map(spec).collect();
        let mut bulk = Compiler::default();
        bulk.update(&vips, &[]).unwrap();
        assert_eq!(bulk.rings_built, vips.len());
        let mut one_by_one = Compiler::default();
        for chunk in vips.chunks(PARALLEL_RINGS / 4) {
            one_by_one.update(chunk, &[]).unwrap();
        }
        assert_eq!(meaning(bulk.tables()), meaning(one_by_one.tables()));
        // Room was made for every listing, duplicates too: what was not taken went back.
        for c in [&bulk, &one_by_one] {
            let last = c.tables().backends.last();
            assert!(last.is_some_and(|b| b.family != 0), "the backends end at the highest id");
        }
        let shared = bulk.tables().vips.values().all(|v| {
            let first = &bulk.tables().vips[&vips[0].key()].ring;
            Arc::ptr_eq(&v.ring.memory, &first.memory)
        });
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(shared, cores > 1, "a bulk build shares one allocation on several cores");
    }

    #[test]
    fn a_vip_id_freed_by_a_change_is_taken_again_only_by_a_later_change() {
        let one = |port: u16| vip(port, &[("192.0.2.21", false)]);
        let mut c = Compiler::default();
        c.update(&[one(80), one(81)], &[]).unwrap();
        let freed = c.tables().vips[&one(80).key()].info.vip_id;
        c.update(&[one(82)], &[one(80).key()]).unwrap();
        assert_ne!(c.tables().vips[&one(82).key()].info.vip_id, freed);
        c.update(&[one(83)], &[]).unwrap();
        assert_eq!(c.tables().vips[&one(83).key()].info.vip_id, freed);

        // With every id taken (of a smaller id space), a change that frees one can
        // still use it.
        let mut c = Compiler { vip_ids: Ids::new(8), ..Compiler::default() };
        let all: Vec<VipSpec> = (0..8).map(|p| one(1000 + p)).collect();
        c.update(&all, &[]).unwrap();
        let freed = c.tables().vips[&all[7].key()].info.vip_id;
        c.update(&[one(999)], &[all[7].key()]).unwrap();
        assert_eq!(c.tables().vips[&one(999).key()].info.vip_id, freed);
    }

    #[test]
    fn a_refused_update_changes_nothing() {
        let mut c = Compiler::default();
        let a = vip(80, &[("192.0.2.21", false)]);
        c.update(std::slice::from_ref(&a), &[]).unwrap();
        let before = meaning(c.tables());
        let b = vip(81, &[("192.0.2.22", false)]);
        let bad = vip(82, &[("2001:db8::1", false)]);
        let err = c.update(&[b, bad], &[a.key()]).unwrap_err();
        assert!(matches!(err, CompileError::FamilyMismatch { .. }), "{err}");
        assert_eq!(meaning(c.tables()), before);
    }

    #[test]
    fn one_upsert_names_one_vip_and_its_backends() {
        let mut c = Compiler::default();
        let vips: Vec<_> = (0..20).map(|p| vip(1000 + p, &[("192.0.2.21", false)])).collect();
        c.sync(&state(vips.clone())).unwrap();
        let mut v = vips[3].clone();
        v.backends.push(BackendSpec {
            addr: "192.0.2.30".parse().unwrap(),
            port: 8080,
            weight: 1,
            draining: false,
        });
        let ch = c.update(std::slice::from_ref(&v), &[]).unwrap();
        assert_eq!(ch.vips, vec![v.key()]);
        assert_eq!(ch.backends.len(), 2);
        assert_eq!(c.rings_built, 1);
        // The same spec again is no change at all.
        assert!(c.update(&[v], &[]).unwrap().is_empty());
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
