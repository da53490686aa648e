//! Programs `Tables` snapshots into the maps, writing only what changed since the last
//! snapshot it programmed. The first call after an agent (re)start has no last snapshot:
//! it reads what adopted maps hold (fresh ones hold nothing) and removes only what the
//! new tables no longer have, so an adopted dataplane is corrected in place, never
//! flushed.
//!
//! Order matters for packets in flight: backends before the rings that name them, rings
//! before the VIPs that use them; removals last. Rings live in one pool
//! ([`RingPool`]): a changed ring that fits its VIP's region is rewritten in place (no
//! RCU grace period, so one endpoint change costs microseconds); one that does not is
//! written to a new region, and the VIP's entry, written after, points to it.

use crate::ring_pool::{RingPool, RingWrite};
use crate::sys;
use crate::{map_err, Error, Limits, Maps, Result};
use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use vipr_abi::maps as names;
use vipr_abi::*;
use vipr_dataplane::tables::{Ring, Tables, TablesChanges};

/// What one `program` call wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramReport {
    pub vips_written: usize,
    pub vips_removed: usize,
    pub rings_written: usize,
    pub backends_written: usize,
    pub source_ranges_written: usize,
    pub next_hops_written: usize,
}

#[derive(Default)]
pub struct Programmer {
    /// What the maps hold, VIP entries with their ring offsets.
    programmed: Option<Tables>,
    rings: Option<RingPool>,
    /// Source range entries the maps hold.
    range_count: usize,
}

/// From this many rings (or VIP entries), `program` writes them on two threads.
const PARALLEL_WRITES: usize = 256;

/// A VIP as programmed: its info, and its ring when this programmer wrote it.
type ProgrammedVip = (VipInfo, Option<Ring>);
type RangeKey = (u32, SourceRangeKey);
type HopKey = (u32, NextHopKey);

impl Programmer {
    pub fn new() -> Self {
        Programmer::default()
    }

    /// Kernel memory of the ring pool (the rings, their headroom and free room).
    pub fn ring_pool_bytes(&self) -> usize {
        self.rings.as_ref().map_or(0, RingPool::bytes)
    }

    /// Of that, what the VIPs' regions hold (rings and their headroom).
    pub fn ring_bytes(&self) -> usize {
        self.rings.as_ref().map_or(0, RingPool::used_bytes)
    }

    /// The snapshot the maps hold, if this programmer wrote it.
    pub fn programmed(&self) -> Option<&Tables> {
        self.programmed.as_ref()
    }

    pub fn program(
        &mut self,
        maps: &mut Maps,
        limits: &Limits,
        t: &Tables,
    ) -> Result<ProgramReport> {
        let ranges = source_ranges(t);
        let hops = next_hops(t);
        check_limits(limits, t, ranges.len(), hops.len())?;
        let mut report = ProgramReport::default();
        // Fresh maps hold nothing: the same as having programmed empty tables (but for
        // the settings, which hold zeros, not the defaults).
        let fresh = maps.fresh && self.programmed.is_none();
        let prev = self.programmed.take().or_else(|| fresh.then(Tables::default));
        maps.fresh = false;

        if fresh || prev.as_ref().map(|p| p.settings) != Some(t.settings) {
            maps.set_settings(&t.settings)?;
        }

        // Backends.
        let read_backends: Vec<BackendInfo>;
        let prev_backends: &[BackendInfo] = match &prev {
            Some(p) => &p.backends,
            None => {
                read_backends =
                    match sys::hash_entries::<u32, BackendInfo>(maps.backends_fd(), 8192) {
                        Ok(entries) => {
                            let mut v = vec![EMPTY_BACKEND; entries.len()];
                            for (id, b) in entries {
                                if let Some(slot) = v.get_mut(id as usize) {
                                    *slot = b;
                                }
                            }
                            v
                        }
                        // Kernels without batch lookups: an entry a call.
                        Err(_) => {
                            maps.backends.iter().map(|b| b.unwrap_or(EMPTY_BACKEND)).collect()
                        }
                    };
                &read_backends
            }
        };
        let len = t.backends.len().max(prev_backends.len()).min(limits.backends as usize);
        let writes = BackendWrites::of(0..len as u32, &t.backends, prev_backends);
        report.backends_written = writes.ids.len();

        // Rings (with the backends, see below), then VIPs.
        // What each VIP had: from the last snapshot, or (after a restart) from the maps.
        let read_vips: HashMap<VipKey, VipInfo> = match &prev {
            Some(_) => HashMap::new(),
            None => match sys::hash_entries::<VipKey, VipInfo>(maps.vips_fd(), 4096) {
                Ok(entries) => entries.into_iter().collect(),
                Err(_) => maps.vips.iter().filter_map(|r| r.ok()).collect(),
            },
        };
        let prev_vip = |key: &VipKey| -> Option<ProgrammedVip> {
            match &prev {
                Some(p) => p.vips.get(key).map(|v| (v.info, Some(v.ring.clone()))),
                None => read_vips.get(key).map(|info| (*info, None)),
            }
        };
        if self.rings.is_none() {
            self.rings = RingPool::adopt(maps, read_vips.values());
        }
        let mut rings = Vec::new();
        for (key, vip) in &t.vips {
            let old = prev_vip(key);
            let same_ring = old.is_some_and(|(info, ring)| {
                info.vip_id == vip.info.vip_id
                    && ring.as_ref().is_some_and(|r| Ring::same(r, &vip.ring))
            });
            if !same_ring {
                rings.push(ring_write(vip));
            }
        }
        report.rings_written = rings.len();
        let places = RingPool::place(&mut self.rings, maps, &rings)?;
        let mut mirror = None;
        match &self.rings {
            // Rings only in new regions, which no VIP entry names yet: written on another
            // core while this one writes the backend entries and copies the tables, which
            // take about as long on a cold start.
            Some(pool) if rings.len() >= PARALLEL_WRITES && places.iter().all(|p| !p.live) => {
                let memory = std::thread::scope(|s| {
                    let filled = beside(s, || pool.fill(&rings, &places));
                    let backends = writes.write(maps);
                    mirror = Some(t.clone());
                    backends.and(filled())
                })?;
                // Unmapping a large window takes milliseconds that nothing waits for (or,
                // with no thread to be had, here).
                let _ = std::thread::Builder::new().spawn(move || drop(memory));
            }
            pool => {
                writes.write(maps)?;
                if let Some(pool) = pool {
                    pool.fill(&rings, &places)?;
                }
            }
        }
        let (mut keys, mut infos) = (Vec::new(), Vec::new());
        for (key, vip) in &t.vips {
            let info = self.placed(vip);
            if prev_vip(key).map(|(info, _)| info) != Some(info) {
                keys.push(*key);
                infos.push(info);
            }
        }
        write_vips(maps, &keys, &infos)?;
        report.vips_written = keys.len();

        // Source ranges: the VIPs that use them are in place; new ranges before
        // removals, so a VIP whose ranges change never denies everyone in between.
        let prev_ranges: HashSet<RangeKey> = match &prev {
            Some(p) => source_ranges(p),
            None => maps
                .source_ranges
                .keys()
                .filter_map(|k| k.ok())
                .map(|k| (k.prefix_len(), k.data()))
                .collect(),
        };
        for &(plen, data) in ranges.difference(&prev_ranges) {
            maps.source_ranges
                .insert(&Key::new(plen, data), 1, 0)
                .map_err(map_err(names::SOURCE_RANGES))?;
            report.source_ranges_written += 1;
        }

        // Next hops.
        let prev_hops: HashMap<HopKey, NextHopValue> = match &prev {
            Some(p) => next_hops(p),
            None => maps
                .next_hops
                .iter()
                .filter_map(|r| r.ok())
                .map(|(k, v)| ((k.prefix_len(), k.data()), v))
                .collect(),
        };
        report.next_hops_written = write_next_hops(maps, &prev_hops, &hops)?;

        // VIP addresses (for fragments and the ICMP path).
        let read_addrs: vipr_dataplane::tables::HashMap<VipAddrKey, u32>;
        let prev_addrs = match &prev {
            Some(p) => &p.vip_addrs,
            None => {
                read_addrs = maps.vip_addrs.iter().filter_map(|r| r.ok()).collect();
                &read_addrs
            }
        };
        for (k, n) in &t.vip_addrs {
            if prev_addrs.get(k) != Some(n) {
                maps.vip_addrs.insert(k, n, 0).map_err(map_err(names::VIP_ADDRS))?;
            }
        }

        // Removals.
        let prev_keys: Vec<VipKey> = match &prev {
            Some(p) => p.vips.keys().copied().collect(),
            None => read_vips.keys().copied().collect(),
        };
        for key in prev_keys.iter().filter(|k| !t.vips.contains_key(*k)) {
            maps.vips.remove(key).map_err(map_err(names::VIPS))?;
            report.vips_removed += 1;
        }
        for k in prev_addrs.keys().filter(|k| !t.vip_addrs.contains_key(*k)) {
            maps.vip_addrs.remove(k).map_err(map_err(names::VIP_ADDRS))?;
        }
        for &(plen, data) in prev_ranges.difference(&ranges) {
            maps.source_ranges
                .remove(&Key::new(plen, data))
                .map_err(map_err(names::SOURCE_RANGES))?;
        }

        if let Some(pool) = &mut self.rings {
            let used: HashSet<u32> = t.vips.values().map(|v| v.info.vip_id).collect();
            pool.release_unused(|id| used.contains(&id));
        }
        self.range_count = ranges.len();
        let mut mirror = mirror.unwrap_or_else(|| t.clone());
        for vip in mirror.vips.values_mut() {
            vip.info = self.placed(vip);
        }
        self.programmed = Some(mirror);
        Ok(report)
    }

    /// `vip`'s entry as the maps hold it: with where its ring is in the pool.
    fn placed(&self, vip: &vipr_dataplane::tables::Vip) -> VipInfo {
        let at = self.rings.as_ref().and_then(|p| p.offset(vip.info.vip_id));
        VipInfo { ring_offset: at.unwrap_or(0), ..vip.info }
    }
}

impl Programmer {
    /// Makes the maps serve `t`, which differs from the tables last programmed only as
    /// `changes` says (what `Compiler::update` or `Compiler::sync` returned): the work
    /// is proportional to the change, not to the tables. With nothing programmed yet (a
    /// first call, or after a failed one) it is a full [`Programmer::program`].
    pub fn apply(
        &mut self,
        maps: &mut Maps,
        limits: &Limits,
        t: &Tables,
        changes: &TablesChanges,
    ) -> Result<ProgramReport> {
        let Some(mut prev) = self.programmed.take() else {
            return self.program(maps, limits, t);
        };
        // On an error the maps may hold part of the change: the next call reads them back.
        let report = self.apply_changes(maps, limits, &mut prev, t, changes)?;
        self.programmed = Some(prev);
        Ok(report)
    }

    /// Writes `changes` in the same order as `program`, and brings `prev` (the mirror of
    /// what the maps hold) up to `t` for the keys and ids they name.
    fn apply_changes(
        &mut self,
        maps: &mut Maps,
        limits: &Limits,
        prev: &mut Tables,
        t: &Tables,
        ch: &TablesChanges,
    ) -> Result<ProgramReport> {
        let mut report = ProgramReport::default();
        let mut keys: Vec<VipKey> = ch.vips.iter().chain(&ch.removed).copied().collect();
        keys.sort_unstable();
        keys.dedup();
        let vip_ranges = |tables: &Tables, key: &VipKey| -> HashSet<RangeKey> {
            tables.vips.get(key).map(vip_source_ranges).unwrap_or_default()
        };
        let (mut ranges_in, mut ranges_out) = (HashSet::new(), HashSet::new());
        for key in &keys {
            let (old, new) = (vip_ranges(prev, key), vip_ranges(t, key));
            ranges_in.extend(new.difference(&old).copied());
            ranges_out.extend(old.difference(&new).copied());
        }
        // A VIP id freed and taken again within the change: an entry one VIP leaves and
        // the other gets stays.
        let kept: Vec<RangeKey> = ranges_in.intersection(&ranges_out).copied().collect();
        for k in &kept {
            ranges_in.remove(k);
            ranges_out.remove(k);
        }
        let ranges = self.range_count + ranges_in.len() - ranges_out.len();
        let hops = ch.next_hops.then(|| next_hops(t));
        let max_vip_id = ch.vips.iter().map(|k| t.vips[k].info.vip_id as usize + 1).max();
        check_counts(
            limits,
            max_vip_id.unwrap_or(0).max(t.vips.len()),
            t.backends.len(),
            ranges,
            hops.as_ref().map_or(0, HashMap::len),
        )?;

        if ch.settings && prev.settings != t.settings {
            maps.set_settings(&t.settings)?;
            prev.settings = t.settings;
        }

        // Backends.
        let mut ids = ch.backends.clone();
        ids.sort_unstable();
        ids.dedup();
        let writes = BackendWrites::of(ids, &t.backends, &prev.backends);
        writes.write(maps)?;
        let written = writes.ids;
        report.backends_written = written.len();
        if prev.backends.len() < t.backends.len() {
            prev.backends.resize(t.backends.len(), EMPTY_BACKEND);
        }
        for id in written {
            prev.backends[id as usize] = entry(&t.backends, id);
        }

        // Rings, then VIPs.
        let mut rings = Vec::new();
        for key in &ch.vips {
            let vip = &t.vips[key];
            let same_ring = prev.vips.get(key).is_some_and(|o| {
                o.info.vip_id == vip.info.vip_id && Ring::same(&o.ring, &vip.ring)
            });
            if !same_ring {
                rings.push(ring_write(vip));
            }
        }
        report.rings_written = rings.len();
        RingPool::write(&mut self.rings, maps, &rings)?;
        let (mut vip_keys, mut vip_infos) = (Vec::new(), Vec::new());
        for key in &ch.vips {
            let info = self.placed(&t.vips[key]);
            if prev.vips.get(key).map(|o| o.info) != Some(info) {
                vip_keys.push(*key);
                vip_infos.push(info);
            }
        }
        sys::update_batch(maps.vips_fd(), &vip_keys, &vip_infos)
            .map_err(|source| Error::Io { path: names::VIPS.into(), source })?;
        report.vips_written = vip_keys.len();

        // Source ranges in, VIP addresses, next hops; removals last.
        for &(plen, data) in &ranges_in {
            maps.source_ranges
                .insert(&Key::new(plen, data), 1, 0)
                .map_err(map_err(names::SOURCE_RANGES))?;
        }
        report.source_ranges_written = ranges_in.len();
        let addrs: HashSet<VipAddrKey> =
            keys.iter().map(|k| VipAddrKey::new(k.addr, k.family)).collect();
        for a in &addrs {
            if let Some(n) = t.vip_addrs.get(a).filter(|n| prev.vip_addrs.get(a) != Some(*n)) {
                maps.vip_addrs.insert(a, n, 0).map_err(map_err(names::VIP_ADDRS))?;
            }
        }
        if let Some(hops) = &hops {
            report.next_hops_written = write_next_hops(maps, &next_hops(prev), hops)?;
            prev.next_hops = t.next_hops.clone();
        }
        // A removed VIP's id that no changed VIP took over leaves the pool (no unchanged
        // VIP can hold it: ids are unique, and it was the removed one's).
        let taken: HashSet<u32> = ch.vips.iter().map(|k| t.vips[k].info.vip_id).collect();
        for key in &ch.removed {
            if t.vips.contains_key(key) {
                continue;
            }
            if let Some(old) = prev.vips.get(key) {
                maps.vips.remove(key).map_err(map_err(names::VIPS))?;
                report.vips_removed += 1;
                if let (Some(pool), false) = (&mut self.rings, taken.contains(&old.info.vip_id)) {
                    pool.release(old.info.vip_id);
                }
            }
        }
        for a in &addrs {
            if prev.vip_addrs.contains_key(a) && !t.vip_addrs.contains_key(a) {
                maps.vip_addrs.remove(a).map_err(map_err(names::VIP_ADDRS))?;
            }
        }
        for &(plen, data) in &ranges_out {
            maps.source_ranges
                .remove(&Key::new(plen, data))
                .map_err(map_err(names::SOURCE_RANGES))?;
        }
        self.range_count = ranges;

        // The mirror now matches the maps.
        for key in &keys {
            match t.vips.get(key) {
                Some(v) => {
                    let info = self.placed(v);
                    prev.vips.insert(*key, vipr_dataplane::tables::Vip { info, ..v.clone() })
                }
                None => prev.vips.remove(key),
            };
        }
        for a in &addrs {
            match t.vip_addrs.get(a) {
                Some(n) => prev.vip_addrs.insert(*a, *n),
                None => prev.vip_addrs.remove(a),
            };
        }
        Ok(report)
    }
}

/// `vip`'s ring to write, with the region it gets if it needs a new one: a quarter of
/// headroom, so a VIP that gains a backend or two is rewritten in place.
fn ring_write(vip: &vipr_dataplane::tables::Vip) -> RingWrite<'_> {
    let len = vip.ring.len();
    let most = vip.spec.ring_max as usize + RING_HEADER_SLOTS as usize;
    RingWrite {
        vip_id: vip.info.vip_id,
        ring: &vip.ring,
        capacity: (len + len / 4).min(most).max(len),
    }
}

/// Writes the next hops of `hops` that `prev` lacks or holds otherwise, and removes the
/// ones `hops` lacks; returns how many it wrote.
fn write_next_hops(
    maps: &mut Maps,
    prev: &HashMap<HopKey, NextHopValue>,
    hops: &HashMap<HopKey, NextHopValue>,
) -> Result<usize> {
    let mut written = 0;
    for (&(plen, data), value) in hops {
        if prev.get(&(plen, data)) != Some(value) {
            maps.next_hops
                .insert(&Key::new(plen, data), value, 0)
                .map_err(map_err(names::NEXT_HOPS))?;
            written += 1;
        }
    }
    for &(plen, data) in prev.keys().filter(|k| !hops.contains_key(*k)) {
        maps.next_hops.remove(&Key::new(plen, data)).map_err(map_err(names::NEXT_HOPS))?;
    }
    Ok(written)
}

/// Writes VIP entries in batch syscalls; many at once (a cold start's) in two halves on
/// two cores, as the kernel updates a hash map's buckets independently.
fn write_vips(maps: &Maps, keys: &[VipKey], infos: &[VipInfo]) -> Result<()> {
    let fd = maps.vips_fd();
    let written = if keys.len() < PARALLEL_WRITES {
        sys::update_batch(fd, keys, infos)
    } else {
        let half = keys.len() / 2;
        std::thread::scope(|s| {
            let second = beside(s, || sys::update_batch(fd, &keys[half..], &infos[half..]));
            sys::update_batch(fd, &keys[..half], &infos[..half]).and(second())
        })
    };
    written.map_err(|source| Error::Io { path: names::VIPS.into(), source })
}

/// Starts `work` on another thread of `scope`; what it returns waits for its result.
/// With no thread to be had, `work` runs then, on the thread that waits.
fn beside<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    work: impl FnOnce() -> T + Send + Copy + 'scope,
) -> impl FnOnce() -> T + 'scope {
    let thread = std::thread::Builder::new().spawn_scoped(scope, work);
    move || match thread {
        Ok(thread) => thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        Err(_) => work(),
    }
}

/// Below this many new entries, one batch syscall is as cheap as a mapping.
const MAPPED_BACKENDS: usize = 256;

/// Backend entries to write. Many entries that were empty go through a mapping of the
/// array: every field but `family` first, then `family`, which marks an entry present
/// (the program ignores an entry of family 0), so no packet uses a half-written one.
/// Changed and cleared entries go in one batch syscall (the kernel copies each in place;
/// a packet reading one meanwhile may see a mix, as with any array update). Maps that
/// cannot be mapped take the batch syscall for everything.
struct BackendWrites<'a> {
    /// The ids whose entry changes, ascending.
    ids: Vec<u32>,
    /// The entries by id, as they are to be and as the maps hold them.
    new: &'a [BackendInfo],
    old: &'a [BackendInfo],
}

impl<'a> BackendWrites<'a> {
    /// The ids of `ids` whose entry differs between `old` and `new` (only ids: a cold
    /// start writes 100k entries, and fresh memory is what costs there).
    fn of(
        ids: impl IntoIterator<Item = u32>,
        new: &'a [BackendInfo],
        old: &'a [BackendInfo],
    ) -> Self {
        let ids = ids.into_iter().filter(|&id| entry(new, id) != entry(old, id)).collect();
        BackendWrites { ids, new, old }
    }

    fn write(&self, maps: &Maps) -> Result<()> {
        let io = |source| Error::Io { path: names::BACKENDS.into(), source };
        let fresh = |id: &u32| entry(self.old, *id).family == 0 && entry(self.new, *id).family != 0;
        let mapped = self.ids.iter().filter(|id| fresh(id)).count() >= MAPPED_BACKENDS
            && self.write_mapped(maps, &fresh).is_ok();
        let rest = self.ids.iter().copied().filter(|id| !mapped || !fresh(id));
        let (ids, infos): (Vec<u32>, Vec<BackendInfo>) =
            rest.map(|id| (id, entry(self.new, id))).unzip();
        sys::update_batch(maps.backends_fd(), &ids, &infos).map_err(io)
    }

    /// The mapped half of [`Self::write`]: the entries `fresh` picks.
    fn write_mapped(&self, maps: &Maps, fresh: &impl Fn(&u32) -> bool) -> std::io::Result<()> {
        let mut ids = self.ids.iter().copied().filter(|id| fresh(id));
        let Some(first) = ids.next() else { return Ok(()) };
        let last = ids.last().unwrap_or(first);
        // The kernel lays values out round_up(size, 8) apart.
        let stride = size_of::<BackendInfo>().next_multiple_of(8);
        let start = first as usize * stride;
        let len = (last - first + 1) as usize * stride;
        let mut window = sys::MapWindow::map(maps.backends_fd(), start, len)?;
        for id in self.ids.iter().copied().filter(|id| fresh(id)) {
            window.write(id as usize * stride, BackendInfo { family: 0, ..entry(self.new, id) });
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        let family = std::mem::offset_of!(BackendInfo, family);
        for id in self.ids.iter().copied().filter(|id| fresh(id)) {
            window.write(id as usize * stride + family, entry(self.new, id).family);
        }
        // Before any ring slot that names them.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        Ok(())
    }
}

/// Backend `id`'s entry in `backends` (past the end: the empty entry).
fn entry(backends: &[BackendInfo], id: u32) -> BackendInfo {
    backends.get(id as usize).copied().unwrap_or(EMPTY_BACKEND)
}

const EMPTY_BACKEND: BackendInfo =
    BackendInfo { addr: [0; 16], port: 0, family: 0, flags: 0, vip_id: 0 };

/// Every VIP's allowed source ranges as LPM keys. Ranges of the other family than the
/// VIP's can never match its packets, and are left out (the userspace pipeline checks
/// the family; the trie could not tell a v4 range from the start of a v6 one).
fn source_ranges(t: &Tables) -> HashSet<RangeKey> {
    t.vips.values().flat_map(vip_source_ranges).collect()
}

fn vip_source_ranges(vip: &vipr_dataplane::tables::Vip) -> HashSet<RangeKey> {
    let mut out = HashSet::new();
    for net in vip.source_ranges.iter() {
        if net.addr().is_ipv4() != (vip.key.family == FAMILY_V4) {
            continue;
        }
        let (addr, _) = addr_of(net.network());
        out.insert((
            lpm_prefix_len(net.prefix_len()),
            SourceRangeKey { vip_id_be: vip.info.vip_id.to_be(), addr },
        ));
    }
    out
}

fn next_hops(t: &Tables) -> HashMap<HopKey, NextHopValue> {
    t.next_hops
        .entries()
        .map(|(net, hop): (IpNet, _)| {
            let (addr, family) = addr_of(net.network());
            let key = NextHopKey { family_be: u32::from(family).to_be(), addr };
            let value =
                NextHopValue { ifindex: hop.ifindex, src_mac: hop.src_mac, dst_mac: hop.dst_mac };
            ((lpm_prefix_len(net.prefix_len()), key), value)
        })
        .collect()
}

fn check_limits(limits: &Limits, t: &Tables, ranges: usize, hops: usize) -> Result<()> {
    let max_vip_id = t.vips.values().map(|v| v.info.vip_id as usize + 1).max().unwrap_or(0);
    check_counts(limits, max_vip_id.max(t.vips.len()), t.backends.len(), ranges, hops)
}

/// Refuses tables the maps cannot hold: `vips` is the VIP ids' span.
fn check_counts(
    limits: &Limits,
    vips: usize,
    backends: usize,
    ranges: usize,
    hops: usize,
) -> Result<()> {
    let checks = [
        ("VIP", names::VIPS, vips, limits.vips),
        ("backend", names::BACKENDS, backends, limits.backends),
        ("source range", names::SOURCE_RANGES, ranges, limits.source_ranges),
        ("next hop", names::NEXT_HOPS, hops, limits.next_hops),
    ];
    for (what, map, needed, limit) in checks {
        if needed > limit as usize {
            return Err(Error::TooSmall { what, map, needed, limit });
        }
    }
    Ok(())
}
