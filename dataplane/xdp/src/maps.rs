//! Typed handles on every map of the XDP program (schema: `vipr_abi::maps`).

use crate::{map_err, Error, Result};
use aya::maps::{
    lpm_trie::LpmTrie, Array, ArrayOfMaps, HashMap, Map, MapData, PerCpuArray, PerCpuValues,
};
use std::os::fd::AsFd;
use std::path::Path;
use vipr_abi::maps as names;
use vipr_abi::*;
use vipr_dataplane::pipeline::Counters;

pub struct Maps {
    pub vips: HashMap<MapData, VipKey, VipInfo>,
    pub vip_addrs: HashMap<MapData, VipAddrKey, u32>,
    /// Holds the ring pool in its one slot (see `ring_pool`).
    pub rings: ArrayOfMaps<MapData, MapData>,
    pub backends: Array<MapData, BackendInfo>,
    pub source_ranges: LpmTrie<MapData, SourceRangeKey, u8>,
    pub next_hops: LpmTrie<MapData, NextHopKey, NextHopValue>,
    pub conntrack: HashMap<MapData, FlowKey, FlowEntry>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityEntry>,
    pub settings: Array<MapData, Settings>,
    pub verdicts: PerCpuArray<MapData, u64>,
    pub drops: PerCpuArray<MapData, u64>,
    pub vip_stats: PerCpuArray<MapData, Stats>,
    pub backend_stats: PerCpuArray<MapData, Stats>,
    /// Entries the conntrack map holds (two a flow).
    conntrack_capacity: u32,
    /// Second descriptors of `RINGS`, `VIPS` and `BACKENDS`: aya's handles do not lend
    /// their own, and batch updates need one.
    rings_fd: std::os::fd::OwnedFd,
    vips_fd: std::os::fd::OwnedFd,
    backends_fd: std::os::fd::OwnedFd,
    conntrack_fd: std::os::fd::OwnedFd,
    /// Made by this load and never programmed: nothing to read back before the first
    /// programming (reading a large empty backend array back costs tens of ms).
    pub(crate) fresh: bool,
    /// The ring pool in `RINGS[0]`, and where it is pinned (with pinned maps).
    pub(crate) ring_pool: Option<std::os::fd::OwnedFd>,
    pub(crate) pool_pin: Option<std::path::PathBuf>,
}

/// Conntrack occupancy as `vipr status` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackSummary {
    /// Flows: forward entries (each flow also has a reply entry).
    pub flows: usize,
    pub entries: usize,
    /// Entries the map can hold (two a flow).
    pub capacity: u32,
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(name: &'static str, map: Map) -> Result<T> {
    T::try_from(map).map_err(map_err(name))
}

impl Maps {
    /// Takes every map out of a freshly loaded object.
    pub(crate) fn take(ebpf: &mut aya::Ebpf) -> Result<Self> {
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(Error::MissingMap { map: name });
        Self::build(&mut take)
    }

    /// Opens the maps an agent pinned in `dir` (for `vipr status` and the tests).
    pub fn from_pins(dir: &Path) -> Result<Self> {
        let mut open = |name: &'static str| {
            let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
            Map::from_map_data(data).map_err(map_err(name))
        };
        let mut maps = Self::build(&mut open)?;
        maps.ring_pool = crate::ring_pool::open_pin(&dir.join(names::RING_POOL_PIN)).ok();
        Ok(maps)
    }

    fn build(get: &mut dyn FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        let rings = get(names::RINGS)?;
        let rings_fd = match &rings {
            Map::ArrayOfMaps(d) => second_fd(d, names::RINGS)?,
            _ => return Err(Error::MissingMap { map: names::RINGS }),
        };
        let backends = get(names::BACKENDS)?;
        let backends_fd = match &backends {
            Map::Array(d) => second_fd(d, names::BACKENDS)?,
            _ => return Err(Error::MissingMap { map: names::BACKENDS }),
        };
        let vips = get(names::VIPS)?;
        let vips_fd = match &vips {
            Map::HashMap(d) => second_fd(d, names::VIPS)?,
            _ => return Err(Error::MissingMap { map: names::VIPS }),
        };
        let conntrack = get(names::CONNTRACK)?;
        let (conntrack_capacity, conntrack_fd) = match &conntrack {
            Map::LruHashMap(d) | Map::HashMap(d) => {
                (d.info().map(|i| i.max_entries()).unwrap_or(0), second_fd(d, names::CONNTRACK)?)
            }
            _ => return Err(Error::MissingMap { map: names::CONNTRACK }),
        };
        Ok(Maps {
            conntrack_capacity,
            vips: typed(names::VIPS, vips)?,
            vips_fd,
            vip_addrs: typed(names::VIP_ADDRS, get(names::VIP_ADDRS)?)?,
            rings: typed(names::RINGS, rings)?,
            rings_fd,
            backends: typed(names::BACKENDS, backends)?,
            backends_fd,
            conntrack_fd,
            fresh: false,
            ring_pool: None,
            pool_pin: None,
            source_ranges: typed(names::SOURCE_RANGES, get(names::SOURCE_RANGES)?)?,
            next_hops: typed(names::NEXT_HOPS, get(names::NEXT_HOPS)?)?,
            conntrack: typed(names::CONNTRACK, conntrack)?,
            affinity: typed(names::AFFINITY, get(names::AFFINITY)?)?,
            settings: typed(names::SETTINGS, get(names::SETTINGS)?)?,
            verdicts: typed(names::VERDICTS, get(names::VERDICTS)?)?,
            drops: typed(names::DROPS, get(names::DROPS)?)?,
            vip_stats: typed(names::VIP_STATS, get(names::VIP_STATS)?)?,
            backend_stats: typed(names::BACKEND_STATS, get(names::BACKEND_STATS)?)?,
        })
    }

    pub fn settings(&self) -> Result<Settings> {
        self.settings.get(&0, 0).map_err(map_err(names::SETTINGS))
    }

    pub fn set_settings(&mut self, s: &Settings) -> Result<()> {
        self.settings.set(0, s, 0).map_err(map_err(names::SETTINGS))
    }

    /// Counters summed over every CPU. `vips` and `backends` are indexed by id, as long as
    /// the highest id with traffic.
    pub fn counters(&self) -> Result<Counters> {
        let mut c = Counters::default();
        for (i, v) in self.verdicts.iter().enumerate() {
            c.verdicts[i] = v.map_err(map_err(names::VERDICTS))?.iter().sum();
        }
        for (i, v) in self.drops.iter().enumerate() {
            c.drops[i] = v.map_err(map_err(names::DROPS))?.iter().sum();
        }
        c.vips = sum_stats(&self.vip_stats, names::VIP_STATS)?;
        c.backends = sum_stats(&self.backend_stats, names::BACKEND_STATS)?;
        Ok(c)
    }

    /// Zeroes every counter (the fixture runner starts each case from zero).
    pub fn reset_counters(&mut self) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::Io {
            path: "/sys/devices/system/cpu/possible".into(),
            source: e,
        })?;
        let zero = |n| PerCpuValues::try_from(vec![0u64; n]).expect("one value a CPU");
        for i in 0..self.verdicts.len() {
            self.verdicts.set(i, zero(cpus), 0).map_err(map_err(names::VERDICTS))?;
        }
        for i in 0..self.drops.len() {
            self.drops.set(i, zero(cpus), 0).map_err(map_err(names::DROPS))?;
        }
        let zero_stats =
            || PerCpuValues::try_from(vec![Stats::default(); cpus]).expect("one value a CPU");
        for i in 0..self.vip_stats.len() {
            self.vip_stats.set(i, zero_stats(), 0).map_err(map_err(names::VIP_STATS))?;
        }
        for i in 0..self.backend_stats.len() {
            self.backend_stats.set(i, zero_stats(), 0).map_err(map_err(names::BACKEND_STATS))?;
        }
        Ok(())
    }

    /// The descriptors of the `VIPS` and `BACKENDS` maps, for batch updates.
    pub(crate) fn vips_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.vips_fd.as_fd()
    }

    pub(crate) fn backends_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.backends_fd.as_fd()
    }

    /// The descriptor of the `RINGS` outer map, for batch updates.
    pub(crate) fn rings_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.rings_fd.as_fd()
    }

    /// The ring of the VIP whose entry is `info`, `[M, slot 0, ..]`, read from the ring
    /// pool; `None` when there is none there.
    pub fn ring(&self, info: &VipInfo) -> Option<Vec<u32>> {
        let len = self.ring_size(info)? as usize + vipr_abi::RING_HEADER_SLOTS as usize;
        let pool = self.ring_pool.as_ref()?.as_fd();
        let at = info.ring_offset as usize;
        let memory = crate::sys::PoolMemory::map(pool, at, len).ok()?;
        Some((at..at + len).map(|i| memory.read(i)).collect())
    }

    /// The ring size (M) of the VIP whose entry is `info`, if the pool holds its ring.
    pub fn ring_size(&self, info: &VipInfo) -> Option<u32> {
        let pool = self.ring_pool.as_ref()?.as_fd();
        let slots = crate::ring_pool::slots(pool).ok()?;
        let at = info.ring_offset as usize;
        if at >= slots {
            return None;
        }
        let memory = crate::sys::PoolMemory::map(pool, at, 1).ok()?;
        ring_size_at(&memory, info, slots)
    }

    /// [`Maps::ring_size`] of many VIPs, with one mapping of the pool (a status of 10k
    /// VIPs would otherwise map it 10k times, holding up the agent meanwhile).
    pub fn ring_sizes<'a>(&self, infos: impl IntoIterator<Item = &'a VipInfo>) -> Vec<Option<u32>> {
        let pool = self.ring_pool.as_ref().map(|p| p.as_fd());
        let slots = pool.and_then(|p| crate::ring_pool::slots(p).ok()).unwrap_or(0);
        let memory = pool.and_then(|p| crate::sys::PoolMemory::map(p, 0, slots).ok());
        infos.into_iter().map(|info| ring_size_at(memory.as_ref()?, info, slots)).collect()
    }

    /// Every conntrack entry (a snapshot; the packet path keeps changing it), read in
    /// batches; one entry at a time on kernels without batch lookups of LRU maps.
    pub fn conntrack_entries(&self) -> Vec<(FlowKey, FlowEntry)> {
        match self.conntrack_batched(4096) {
            Ok(entries) => entries,
            Err(_) => self.conntrack.iter().filter_map(|r| r.ok()).collect(),
        }
    }

    /// The conntrack read `chunk` entries a syscall.
    pub fn conntrack_batched(&self, chunk: usize) -> std::io::Result<Vec<(FlowKey, FlowEntry)>> {
        use std::os::fd::AsFd;
        crate::sys::hash_entries(self.conntrack_fd.as_fd(), chunk)
    }

    pub fn conntrack_summary(&self) -> ConntrackSummary {
        let entries = self.conntrack_entries();
        ConntrackSummary {
            flows: entries.iter().filter(|(_, e)| e.direction == FLOW_DIR_FORWARD).count(),
            entries: entries.len(),
            capacity: self.conntrack_capacity,
        }
    }

    /// Forgets every tracked flow and affinity.
    pub fn clear_conntrack(&mut self) -> Result<()> {
        let keys: Vec<FlowKey> = self.conntrack.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            let _ = self.conntrack.remove(&k);
        }
        let keys: Vec<AffinityKey> = self.affinity.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            let _ = self.affinity.remove(&k);
        }
        Ok(())
    }
}

/// A descriptor of its own for the map `d` (aya's typed handles do not lend theirs).
fn second_fd(d: &MapData, name: &'static str) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd;
    d.fd().as_fd().try_clone_to_owned().map_err(|source| Error::Io { path: name.into(), source })
}

fn sum_stats(map: &PerCpuArray<MapData, Stats>, name: &'static str) -> Result<Vec<Stats>> {
    let mut out = Vec::new();
    for (i, v) in map.iter().enumerate() {
        let mut s = Stats::default();
        for cpu in v.map_err(map_err(name))?.iter() {
            s.add(cpu);
        }
        if s != Stats::default() {
            out.resize(i + 1, Stats::default());
            out[i] = s;
        }
    }
    Ok(out)
}

/// M of the ring at `info`'s offset, when `memory` (a window of a pool of `slots`
/// slots) holds it and the pool holds all of the ring.
fn ring_size_at(memory: &crate::sys::PoolMemory, info: &VipInfo, slots: usize) -> Option<u32> {
    let at = info.ring_offset as usize;
    if at >= slots || !memory.holds(at) {
        return None;
    }
    let m = memory.read(at);
    let fits = at + m as usize + (vipr_abi::RING_HEADER_SLOTS as usize) <= slots;
    fits.then_some(m)
}
