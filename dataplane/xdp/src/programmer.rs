//! Programs `Tables` snapshots into the maps, writing only what changed since the last
//! snapshot it programmed. The first call after an agent (re)start has no last snapshot:
//! it reads what the maps hold and removes only what the new tables no longer have, so
//! an adopted dataplane is corrected in place, never flushed.
//!
//! Order matters for packets in flight: backends before the rings that name them, rings
//! before the VIPs that use them; removals last. A new ring goes into an inner map filled
//! aside and swapped into `RINGS` (all of one call's swaps in one update: each update of
//! an array of maps waits for an RCU grace period). A changed ring that fits the inner
//! map this programmer made for its VIP is rewritten in place instead
//! (`InnerRing::write`): no grace period, so one endpoint change costs microseconds.
//! Rings are written through a memory mapping of the inner map (`BPF_F_MMAPABLE`).

use crate::sys;
use crate::{map_err, Error, Limits, Maps, Result};
use aya::maps::lpm_trie::Key;
use aya::maps::MapData;
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use vipr_abi::maps as names;
use vipr_abi::*;
use vipr_dataplane::tables::{Tables, TablesChanges};

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
    programmed: Option<Tables>,
    /// The inner ring map in each VIP id's `RINGS` slot, when this programmer made it.
    rings: HashMap<u32, InnerRing>,
    /// Source range entries the maps hold.
    range_count: usize,
}

/// A VIP as programmed: its info, and its ring when this programmer wrote it.
type ProgrammedVip = (VipInfo, Option<Arc<[u32]>>);
type RangeKey = (u32, SourceRangeKey);
type HopKey = (u32, NextHopKey);

impl Programmer {
    pub fn new() -> Self {
        Programmer::default()
    }

    /// Kernel memory of the rings this programmer made (their values and headroom).
    pub fn ring_bytes(&self) -> usize {
        self.rings.values().map(InnerRing::bytes).sum()
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
        let prev = self.programmed.take();

        if prev.as_ref().map(|p| p.settings) != Some(t.settings) {
            maps.set_settings(&t.settings)?;
        }

        // Backends.
        let read_backends: Vec<BackendInfo>;
        let prev_backends: &[BackendInfo] = match &prev {
            Some(p) => &p.backends,
            None => {
                read_backends = maps.backends.iter().map(|b| b.unwrap_or(EMPTY_BACKEND)).collect();
                &read_backends
            }
        };
        let len = t.backends.len().max(prev_backends.len()).min(limits.backends as usize);
        let (mut ids, mut infos) = (Vec::new(), Vec::new());
        for id in 0..len {
            let new = t.backends.get(id).copied().unwrap_or(EMPTY_BACKEND);
            let old = prev_backends.get(id).copied().unwrap_or(EMPTY_BACKEND);
            if new != old {
                ids.push(id as u32);
                infos.push(new);
            }
        }
        sys::update_batch(maps.backends_fd(), &ids, &infos)
            .map_err(|source| Error::Io { path: names::BACKENDS.into(), source })?;
        report.backends_written = ids.len();

        // Rings, then VIPs.
        // What each VIP had: from the last snapshot, or (after a restart) from the maps.
        let read_vips: HashMap<VipKey, VipInfo> = match &prev {
            Some(_) => HashMap::new(),
            None => maps.vips.iter().filter_map(|r| r.ok()).collect(),
        };
        let prev_vip = |key: &VipKey| -> Option<ProgrammedVip> {
            match &prev {
                Some(p) => p.vips.get(key).map(|v| (v.info, Some(v.ring.clone()))),
                None => read_vips.get(key).map(|info| (*info, None)),
            }
        };
        let mut rings = Vec::new();
        for (key, vip) in &t.vips {
            let old = prev_vip(key);
            let same_ring = old.is_some_and(|(info, ring)| {
                info.vip_id == vip.info.vip_id
                    && ring.as_ref().is_some_and(|r| Arc::ptr_eq(r, &vip.ring))
            });
            if same_ring {
                continue;
            }
            report.rings_written += 1;
            self.write_ring(vip, &mut rings)?;
        }
        let rings = new_rings(&rings)?;
        swap_rings(maps, &rings)?;
        self.rings.extend(rings);
        let (mut keys, mut infos) = (Vec::new(), Vec::new());
        for (key, vip) in &t.vips {
            if prev_vip(key).map(|(info, _)| info) != Some(vip.info) {
                keys.push(*key);
                infos.push(vip.info);
            }
        }
        sys::update_batch(maps.vips_fd(), &keys, &infos)
            .map_err(|source| Error::Io { path: names::VIPS.into(), source })?;
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

        self.range_count = ranges.len();
        self.programmed = Some(t.clone());
        Ok(report)
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
        let mut infos = Vec::with_capacity(ids.len());
        ids.retain(|&id| {
            let new = t.backends.get(id as usize).copied().unwrap_or(EMPTY_BACKEND);
            let old = prev.backends.get(id as usize).copied().unwrap_or(EMPTY_BACKEND);
            if new != old {
                infos.push(new);
            }
            new != old
        });
        sys::update_batch(maps.backends_fd(), &ids, &infos)
            .map_err(|source| Error::Io { path: names::BACKENDS.into(), source })?;
        report.backends_written = ids.len();
        if prev.backends.len() < t.backends.len() {
            prev.backends.resize(t.backends.len(), EMPTY_BACKEND);
        }
        for (&id, info) in ids.iter().zip(&infos) {
            prev.backends[id as usize] = *info;
        }

        // Rings, then VIPs.
        let mut rings = Vec::new();
        let (mut vip_keys, mut vip_infos) = (Vec::new(), Vec::new());
        for key in &ch.vips {
            let vip = &t.vips[key];
            let old = prev.vips.get(key);
            let same_ring = old.is_some_and(|o| {
                o.info.vip_id == vip.info.vip_id && Arc::ptr_eq(&o.ring, &vip.ring)
            });
            if !same_ring {
                report.rings_written += 1;
                self.write_ring(vip, &mut rings)?;
            }
            if old.map(|o| o.info) != Some(vip.info) {
                vip_keys.push(*key);
                vip_infos.push(vip.info);
            }
        }
        let rings = new_rings(&rings)?;
        swap_rings(maps, &rings)?;
        self.rings.extend(rings);
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
        for key in &ch.removed {
            if prev.vips.contains_key(key) && !t.vips.contains_key(key) {
                maps.vips.remove(key).map_err(map_err(names::VIPS))?;
                report.vips_removed += 1;
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
                Some(v) => prev.vips.insert(*key, v.clone()),
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

    /// Rewrites `vip`'s ring in place when the inner map this programmer made for its
    /// id has room, else queues it for a new inner map (`new_rings`).
    fn write_ring(
        &mut self,
        vip: &vipr_dataplane::tables::Vip,
        new: &mut Vec<NewRing>,
    ) -> Result<()> {
        let id = vip.info.vip_id;
        match self.rings.get_mut(&id) {
            Some(r) if r.capacity as usize >= vip.ring.len() => r.write(id, &vip.ring),
            _ => {
                let capacity = ring_capacity(vip.ring.len(), vip.spec.ring_max);
                new.push((id, vip.ring.clone(), capacity));
                Ok(())
            }
        }
    }
}

/// A ring that needs an inner map of its own: VIP id, ring, capacity.
type NewRing = (u32, Arc<[u32]>, u32);

/// Makes and fills the inner maps of `jobs`. (One thread: map creations contend in the
/// kernel, and two threads were slower than one.)
fn new_rings(jobs: &[NewRing]) -> Result<Vec<(u32, InnerRing)>> {
    jobs.iter()
        .map(|(id, ring, capacity)| InnerRing::new(*id, ring, *capacity).map(|r| (*id, r)))
        .collect()
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

const EMPTY_BACKEND: BackendInfo =
    BackendInfo { addr: [0; 16], port: 0, family: 0, flags: 0, vip_id: 0 };

/// An inner ring map this programmer made, and how many slots it has room for.
struct InnerRing {
    fd: OwnedFd,
    capacity: u32,
}

/// Slots for a ring of `len` (header included): a quarter more, so a VIP that gains a
/// backend or two is rewritten in place rather than swapped (see `InnerRing::write`).
fn ring_capacity(len: usize, ring_max: u32) -> u32 {
    let most = ring_max as usize + RING_HEADER_SLOTS as usize;
    (len + len / 4).min(most).max(len) as u32
}

impl InnerRing {
    /// A new inner map of `capacity` slots holding `ring`, not yet visible to packets.
    fn new(vip_id: u32, ring: &[u32], capacity: u32) -> Result<Self> {
        let fd = sys::create_u32_array("vipr_ring", capacity, names::RING_MAP_FLAGS)
            .map_err(|source| Error::Ring { vip_id, source })?;
        let r = InnerRing { fd, capacity };
        r.write(vip_id, ring)?;
        Ok(r)
    }

    /// Writes `ring` through a mapping of the map's memory (mapped only meanwhile, so
    /// the rings do not count against the agent's RSS): the slots first, the header
    /// (M) last. On a live ring, a packet meanwhile reads each slot old or new, which is
    /// the same as the update landing a moment earlier or later for its flow; every slot
    /// always holds a backend of the old or the new set, and a larger M is only
    /// published once its slots are written. Unlike a swap in the outer array of maps,
    /// this waits for no RCU grace period: one change costs microseconds, not
    /// milliseconds (Katran updates its rings in place too).
    fn write(&self, vip_id: u32, ring: &[u32]) -> Result<()> {
        let mut memory = sys::U32ArrayMemory::map(self.fd.as_fd(), self.capacity)
            .map_err(|source| Error::Ring { vip_id, source })?;
        memory.write_ring(ring, RING_HEADER_SLOTS as usize);
        Ok(())
    }

    /// Kernel memory of the map's values: 8 bytes a slot (the array stride), whole pages.
    fn bytes(&self) -> usize {
        (self.capacity as usize * 8).div_ceil(4096) * 4096
    }
}

/// Swaps new rings into their VIPs' `RINGS` slots: a packet sees a VIP's old ring or its
/// new one, never half of one. Every update of an array of maps waits for running
/// programs to finish (an RCU grace period, milliseconds); one batch update waits once
/// for all of them, which turns a cold start of 10k rings from minutes into a moment.
fn swap_rings(maps: &mut Maps, rings: &[(u32, InnerRing)]) -> Result<()> {
    if rings.is_empty() {
        return Ok(());
    }
    let keys: Vec<u32> = rings.iter().map(|(id, _)| *id).collect();
    let fds: Vec<u32> = rings.iter().map(|(_, r)| r.fd.as_raw_fd() as u32).collect();
    if sys::update_u32_batch(maps.rings_fd(), &keys, &fds).is_ok() {
        return Ok(());
    }
    // Kernels without batch updates of arrays of maps: one entry at a time.
    for (vip_id, ring) in rings {
        let dup = ring.fd.try_clone().map_err(|source| Error::Ring { vip_id: *vip_id, source })?;
        let inner = MapData::from_fd(dup).map_err(map_err(names::RINGS))?;
        maps.rings.set(*vip_id, &inner, 0).map_err(map_err(names::RINGS))?;
    }
    Ok(())
}

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
