//! The ring pool: every VIP's Maglev ring in one mmapable array map (see
//! `vipr_abi::maps`), with a region of it per VIP id.
//!
//! One map for all rings instead of an inner map per VIP: a cold start of 10k VIPs is one
//! map creation and one mapping instead of 10k of each, and a slot costs 4 bytes instead
//! of the 8 of a `u32` array's stride. A VIP's region has a quarter of headroom, so a
//! ring that grows a little is rewritten in place; one that outgrows it is written to a
//! new region and the VIP's entry switched after (by the caller). A freed region is
//! reused only after [`QUARANTINE`], long after any packet that read the VIP's old entry
//! has left the program. A full pool is copied into a larger one, swapped into `RINGS`
//! (one RCU grace period), every ring keeping its offset.

use crate::sys::{self, PoolMemory};
use crate::{map_err, Error, Maps, Result};
use aya::maps::MapData;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};
use vipr_abi::maps::{self as names, RING_MAP_FLAGS, RING_POOL};
use vipr_abi::{VipInfo, RING_HEADER_SLOTS};

/// How long a freed region waits before it is handed out again.
pub const QUARANTINE: Duration = Duration::from_secs(1);

/// The smallest pool made: room for a few hundred small rings.
const MIN_SLOTS: usize = 1 << 16;

/// Above this many rings in one write, one mapping spans them all.
const WINDOWS: usize = 16;

/// Where a ring goes in the pool: slot `at`, and whether programs may be reading it
/// there (`live`: its VIP's region, rewritten in place).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub at: usize,
    pub live: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    at: usize,
    len: usize,
}

/// A ring to write: its VIP id, its slots (`[M, ..]`), and the region size it gets when
/// it needs a new one.
pub struct RingWrite<'a> {
    pub vip_id: u32,
    pub ring: &'a [u32],
    pub capacity: usize,
}

pub struct RingPool {
    fd: OwnedFd,
    slots: usize,
    /// Free regions by start, and by (length, start) for best fit.
    free_at: BTreeMap<usize, usize>,
    free_len: BTreeSet<(usize, usize)>,
    quarantine: VecDeque<(Instant, Region)>,
    /// Each VIP id's region.
    placed: HashMap<u32, Region>,
}

impl RingPool {
    /// The pool the maps already hold (an adopted dataplane), with the regions of the
    /// VIPs `vips` as the maps say (each as long as its ring: no headroom known), the rest
    /// free. `None` when there is no pool yet.
    pub fn adopt<'a>(maps: &Maps, vips: impl Iterator<Item = &'a VipInfo>) -> Option<Self> {
        let fd = maps.ring_pool.as_ref()?.try_clone().ok()?;
        let slots = slots(fd.as_fd()).ok()?;
        let mut pool = RingPool::empty(fd, slots);
        let mut taken: BTreeMap<usize, usize> = BTreeMap::new();
        let mut vips = vips.peekable();
        // Mapped only when there are rings to find (a pool of fresh maps has none).
        let memory = match vips.peek() {
            Some(_) => Some(PoolMemory::map(pool.fd.as_fd(), 0, slots).ok()?),
            None => None,
        };
        for v in vips {
            let Some(memory) = &memory else { break };
            let at = v.ring_offset as usize;
            if at >= slots {
                continue;
            }
            let len = memory.read(at) as usize + RING_HEADER_SLOTS as usize;
            let end = at + len;
            let overlaps = taken.range(..end).next_back().is_some_and(|(&a, &l)| a + l > at);
            if end > slots || overlaps {
                continue;
            }
            taken.insert(at, len);
            pool.placed.insert(v.vip_id, Region { at, len });
        }
        let mut next = 0;
        for (&at, &len) in &taken {
            pool.add_free(Region { at: next, len: at - next });
            next = at + len;
        }
        pool.add_free(Region { at: next, len: slots - next });
        Some(pool)
    }

    fn empty(fd: OwnedFd, slots: usize) -> Self {
        RingPool {
            fd,
            slots,
            free_at: BTreeMap::new(),
            free_len: BTreeSet::new(),
            quarantine: VecDeque::new(),
            placed: HashMap::new(),
        }
    }

    /// A new pool of `slots` slots, all free, in the maps.
    fn create(maps: &mut Maps, slots: usize) -> Result<Self> {
        let fd = new_map(slots)?;
        put(maps, &fd)?;
        let mut pool = RingPool::empty(fd, slots);
        pool.add_free(Region { at: 0, len: slots });
        Ok(pool)
    }

    /// Kernel memory of the pool's values.
    pub fn bytes(&self) -> usize {
        (self.slots * 4).div_ceil(4096) * 4096
    }

    /// Bytes of the regions VIPs hold (rings and their headroom).
    pub fn used_bytes(&self) -> usize {
        self.placed.values().map(|r| r.len * 4).sum()
    }

    /// Where VIP id `vip_id`'s ring starts.
    pub fn offset(&self, vip_id: u32) -> Option<u32> {
        self.placed.get(&vip_id).map(|r| r.at as u32)
    }

    /// Frees the region of `vip_id` (reusable after the quarantine).
    pub fn release(&mut self, vip_id: u32) {
        if let Some(r) = self.placed.remove(&vip_id) {
            self.quarantine.push_back((Instant::now(), r));
        }
    }

    /// Frees the regions of VIP ids `keep` says no.
    pub fn release_unused(&mut self, keep: impl Fn(u32) -> bool) {
        let gone: Vec<u32> = self.placed.keys().copied().filter(|id| !keep(*id)).collect();
        for id in gone {
            self.release(id);
        }
    }

    /// Writes `rings`, each in place when its VIP's region holds it, else into a new
    /// region (the pool grows when none is free); a VIP's entry names where its ring is
    /// through [`RingPool::offset`].
    /// Makes the pool if there is none yet.
    pub fn write(pool: &mut Option<Self>, maps: &mut Maps, rings: &[RingWrite]) -> Result<()> {
        let places = RingPool::place(pool, maps, rings)?;
        if let Some(p) = pool {
            p.fill(rings, &places)?;
        }
        Ok(())
    }

    /// The first half of [`RingPool::write`]: where each of `rings` goes, and whether
    /// programs may be reading it there (its VIP's region holds it: rewritten in place).
    /// The pool grows here, if it must; nothing is written yet.
    pub fn place(
        pool: &mut Option<Self>,
        maps: &mut Maps,
        rings: &[RingWrite],
    ) -> Result<Vec<Place>> {
        if rings.is_empty() {
            return Ok(Vec::new());
        }
        let p = match pool {
            Some(p) => p,
            None => {
                let want: usize = rings.iter().map(|r| r.capacity).sum();
                pool.insert(RingPool::create(maps, (want + want / 8).max(MIN_SLOTS))?)
            }
        };
        p.reclaim(Instant::now());
        let mut places = Vec::with_capacity(rings.len());
        for r in rings {
            match p.placed.get(&r.vip_id) {
                Some(region) if region.len >= r.ring.len() => {
                    places.push(Place { at: region.at, live: true })
                }
                _ => {
                    let region = match p.alloc(r.capacity) {
                        Some(region) => region,
                        None => {
                            p.grow(maps, r.capacity)?;
                            p.alloc(r.capacity).expect("a grown pool has room")
                        }
                    };
                    if let Some(old) = p.placed.insert(r.vip_id, region) {
                        p.quarantine.push_back((Instant::now(), old));
                    }
                    places.push(Place { at: region.at, live: false });
                }
            }
        }
        Ok(places)
    }

    /// The second half of [`RingPool::write`]: writes `rings` where [`RingPool::place`]
    /// put them. It reads only the pool, so it may run on another thread meanwhile; the
    /// mappings it returns are unmapped when dropped (a few milliseconds at 10k rings).
    pub fn fill(&self, rings: &[RingWrite], places: &[Place]) -> Result<Vec<PoolMemory>> {
        let write = |memory: &mut PoolMemory, r: &RingWrite, place: &Place| {
            if place.live {
                memory.write_ring(place.at, r.ring, RING_HEADER_SLOTS as usize);
            } else {
                // No VIP entry names a new region yet (nor, after the quarantine, an old
                // one): a plain copy.
                memory.copy_in(place.at, r.ring);
            }
        };
        let map = |first: usize, count: usize| {
            PoolMemory::map(self.fd.as_fd(), first, count)
                .map_err(|source| Error::Io { path: names::RINGS.into(), source })
        };
        if rings.len() <= WINDOWS {
            for (r, place) in rings.iter().zip(places) {
                write(&mut map(place.at, r.ring.len())?, r, place);
            }
            return Ok(Vec::new());
        }
        let first = places.iter().map(|p| p.at).min().expect("rings is not empty");
        let end = rings.iter().zip(places).map(|(r, p)| p.at + r.ring.len()).max();
        let mut memory = map(first, end.expect("rings is not empty") - first)?;
        for (r, place) in rings.iter().zip(places) {
            write(&mut memory, r, place);
        }
        Ok(vec![memory])
    }

    /// Copies the pool into one with room for `more` slots more (at least twice the
    /// size), every ring at its offset, and swaps it in.
    fn grow(&mut self, maps: &mut Maps, more: usize) -> Result<()> {
        let slots = (self.slots * 2).max(self.slots + more + more / 8);
        let fd = new_map(slots)?;
        let io = |source| Error::Io { path: names::RINGS.into(), source };
        let old = PoolMemory::map(self.fd.as_fd(), 0, self.slots).map_err(io)?;
        let mut new = PoolMemory::map(fd.as_fd(), 0, slots).map_err(io)?;
        old.copy_to(&mut new);
        put(maps, &fd)?;
        self.add_free(Region { at: self.slots, len: slots - self.slots });
        self.fd = fd;
        self.slots = slots;
        Ok(())
    }

    /// Best fit: the shortest free region that holds `len`, split.
    fn alloc(&mut self, len: usize) -> Option<Region> {
        let &(free, at) = self.free_len.range((len, 0)..).next()?;
        self.free_len.remove(&(free, at));
        self.free_at.remove(&at);
        if free > len {
            self.add_free(Region { at: at + len, len: free - len });
        }
        Some(Region { at, len })
    }

    /// Regions quarantined long enough go back to the free lists, merged with their
    /// free neighbours.
    fn reclaim(&mut self, now: Instant) {
        while let Some(&(freed, r)) = self.quarantine.front() {
            if now.duration_since(freed) < QUARANTINE {
                break;
            }
            self.quarantine.pop_front();
            self.add_free(r);
        }
    }

    fn add_free(&mut self, mut r: Region) {
        if r.len == 0 {
            return;
        }
        if let Some((&at, &len)) = self.free_at.range(..r.at).next_back() {
            if at + len == r.at {
                self.free_at.remove(&at);
                self.free_len.remove(&(len, at));
                r = Region { at, len: len + r.len };
            }
        }
        if let Some(&len) = self.free_at.get(&(r.at + r.len)) {
            self.free_at.remove(&(r.at + r.len));
            self.free_len.remove(&(len, r.at + r.len));
            r.len += len;
        }
        self.free_at.insert(r.at, r.len);
        self.free_len.insert((r.len, r.at));
    }
}

/// Gives the maps their ring pool: the pinned one (adopted maps), else the one `RINGS`
/// holds, else a new one of `slots` slots, so the first programming pays no RCU grace
/// period for it.
pub fn install(maps: &mut Maps, slots: u32) -> Result<()> {
    let held = sys::lookup_u32(maps.rings_fd(), RING_POOL).map_err(io)?;
    if let Some(pin) = maps.pool_pin.clone().filter(|p| p.exists()) {
        let fd = open_pin(&pin)?;
        // An agent that died between pinning a new pool and swapping it in: swap now.
        if held != Some(id_of(fd.as_fd())?) {
            swap_in(maps, &fd)?;
        }
        maps.ring_pool = Some(fd);
        return Ok(());
    }
    if held.is_some() {
        // Held but not pinned (an agent that died in between, or maps of an unpinned
        // load): only its id is known, and an fd by id needs CAP_SYS_ADMIN.
        let inner = maps
            .rings
            .get(&RING_POOL, 0)
            .map_err(|source| Error::Map { map: names::RINGS, source })?;
        let fd = inner.fd().as_fd().try_clone_to_owned().map_err(io)?;
        pin(maps, &fd)?;
        maps.ring_pool = Some(fd);
        return Ok(());
    }
    if slots == 0 {
        return Ok(());
    }
    let fd = new_map(slots as usize)?;
    put(maps, &fd)
}

/// Opens the pool pinned at `pin`.
pub fn open_pin(pin: &Path) -> Result<OwnedFd> {
    let data = MapData::from_pin(pin).map_err(map_err(names::RINGS))?;
    data.fd().as_fd().try_clone_to_owned().map_err(io)
}

/// How many slots the pool `fd` has.
pub fn slots(fd: BorrowedFd<'_>) -> Result<usize> {
    let info = info(fd)?;
    if info.value_size() != 8 {
        return Err(Error::TooSmall {
            what: "ring pool value byte",
            map: names::RINGS,
            needed: 8,
            limit: info.value_size(),
        });
    }
    Ok(info.max_entries() as usize * 2)
}

fn info(fd: BorrowedFd<'_>) -> Result<aya::maps::MapInfo> {
    let data =
        MapData::from_fd(fd.try_clone_to_owned().map_err(io)?).map_err(map_err(names::RINGS))?;
    data.info().map_err(map_err(names::RINGS))
}

fn id_of(fd: BorrowedFd<'_>) -> Result<u32> {
    Ok(info(fd)?.id())
}

fn io(source: std::io::Error) -> Error {
    Error::Io { path: names::RINGS.into(), source }
}

/// Makes `fd` the maps' pool: pinned first (replacing the old pin), then swapped in, so
/// a restart finds whichever the packets may be reading.
fn put(maps: &mut Maps, fd: &OwnedFd) -> Result<()> {
    pin(maps, fd)?;
    swap_in(maps, fd)?;
    maps.ring_pool = Some(fd.try_clone().map_err(io)?);
    Ok(())
}

fn pin(maps: &Maps, fd: &OwnedFd) -> Result<()> {
    let Some(path) = &maps.pool_pin else { return Ok(()) };
    if path.exists() {
        std::fs::remove_file(path).map_err(|source| Error::Io { path: path.clone(), source })?;
    }
    let data = MapData::from_fd(fd.try_clone().map_err(io)?).map_err(map_err(names::RINGS))?;
    data.pin(path).map_err(|source| Error::Pin { path: path.clone(), source })
}

fn new_map(slots: usize) -> Result<OwnedFd> {
    let slots = u32::try_from(slots).map_err(|_| Error::TooSmall {
        what: "ring slot",
        map: names::RINGS,
        needed: slots,
        limit: u32::MAX,
    })?;
    sys::create_ring_pool("vipr_rings", slots, RING_MAP_FLAGS)
        .map_err(|source| Error::Io { path: names::RINGS.into(), source })
}

/// Puts the pool `fd` into `RINGS` (the kernel waits for running programs to finish:
/// an RCU grace period).
fn swap_in(maps: &mut Maps, fd: &OwnedFd) -> Result<()> {
    sys::update_u32_batch(maps.rings_fd(), &[RING_POOL], &[fd.as_raw_fd() as u32])
        .map_err(|source| Error::Io { path: names::RINGS.into(), source })
        .or_else(|_| {
            // Kernels without batch updates of arrays of maps: one plain update.
            let inner = aya::maps::MapData::from_fd(
                fd.try_clone().map_err(|source| Error::Io { path: names::RINGS.into(), source })?,
            )
            .map_err(map_err(names::RINGS))?;
            maps.rings.set(RING_POOL, &inner, 0).map_err(map_err(names::RINGS))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(slots: usize) -> RingPool {
        // Not a real map: the allocator alone is under test.
        let fd = std::fs::File::open("/dev/null").unwrap().into();
        let mut p = RingPool::empty(fd, slots);
        p.add_free(Region { at: 0, len: slots });
        p
    }

    #[test]
    fn freed_regions_come_back_after_the_quarantine_merged_with_their_neighbours() {
        let mut p = pool(100);
        let a = p.alloc(30).unwrap();
        let b = p.alloc(30).unwrap();
        let c = p.alloc(40).unwrap();
        assert_eq!((a.at, b.at, c.at), (0, 30, 60));
        assert!(p.alloc(1).is_none(), "full");
        p.placed.insert(1, a);
        p.placed.insert(2, b);
        p.release(1);
        p.release(2);
        let now = Instant::now();
        p.reclaim(now);
        assert!(p.alloc(1).is_none(), "quarantined regions are not handed out");
        p.reclaim(now + QUARANTINE);
        assert_eq!(p.alloc(60), Some(Region { at: 0, len: 60 }), "merged into one");
    }

    #[test]
    fn the_best_fitting_region_is_taken() {
        let mut p = pool(0);
        p.add_free(Region { at: 0, len: 50 });
        p.add_free(Region { at: 100, len: 20 });
        p.add_free(Region { at: 200, len: 30 });
        assert_eq!(p.alloc(25), Some(Region { at: 200, len: 25 }));
        assert_eq!(p.alloc(20), Some(Region { at: 100, len: 20 }));
        assert_eq!(p.alloc(10), Some(Region { at: 0, len: 10 }));
        assert_eq!(p.free_at.get(&10), Some(&40));
    }
}
