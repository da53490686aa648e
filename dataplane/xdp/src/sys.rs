//! The bpf(2) calls aya 0.14 does not offer: creating the ring pool, mapping array
//! memory to write it directly, batch updates and lookups (`BPF_MAP_*_BATCH`), and a
//! plain lookup of an array of maps (which aya only offers as an fd by id, a call that
//! needs CAP_SYS_ADMIN).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// The prefix of `union bpf_attr` that BPF_MAP_CREATE reads.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `union bpf_attr`'s element member (lookups).
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The `u32` value under `key` of a map with `u32` keys and values; for an array of
/// maps, the id of the inner map there. `None` when the slot is empty.
pub fn lookup_u32(map: BorrowedFd<'_>, key: u32) -> io::Result<Option<u32>> {
    let mut value: u32 = 0;
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: &mut value as *mut u32 as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised prefix of `union bpf_attr` for `cmd`, and
    // its size is passed along, so the kernel reads no further.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as u32) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A new ring pool of `slots` u32 ring slots (rounded up to even: the map's values are
/// `u64`s of two slots each) with `flags`, named `name` (at most 15 bytes).
pub fn create_ring_pool(name: &str, slots: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 8,
        max_entries: slots.div_ceil(2),
        map_flags: flags,
        ..Default::default()
    };
    let n = name.len().min(15);
    attr.map_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Writes `values[i]` under `keys[i]` of a map with u32 keys and values (an array, or an
/// array of maps whose values are inner map descriptors), in one call.
pub fn update_u32_batch(map: BorrowedFd<'_>, keys: &[u32], values: &[u32]) -> io::Result<()> {
    update_batch(map, keys, values)
}

/// Writes `values[i]` under `keys[i]` in one call; `K` and `V` must be the map's key and
/// value types (`#[repr(C)]`, their sizes the map's).
pub fn update_batch<K: Copy, V: Copy>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> io::Result<()> {
    assert_eq!(keys.len(), values.len());
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: values.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    if attr.count as usize != values.len() {
        return Err(io::Error::other(format!(
            "batch update wrote {} of {} entries",
            attr.count,
            values.len()
        )));
    }
    Ok(())
}

/// Every entry of a hash map (or an array: its token is a key too), read `chunk`
/// entries a call with `BPF_MAP_LOOKUP_BATCH`
/// (two syscalls an entry with get-next-key and lookup; a million-flow conntrack is
/// seconds that way, a few hundred milliseconds this way). A snapshot: the map keeps
/// changing meanwhile, and an entry may be missed or seen twice at a bucket's edge.
pub fn hash_entries<K: Copy, V: Copy>(
    map: BorrowedFd<'_>,
    chunk: usize,
) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut keys: Vec<std::mem::MaybeUninit<K>> = Vec::with_capacity(chunk);
    let mut values: Vec<std::mem::MaybeUninit<V>> = Vec::with_capacity(chunk);
    // The hash map's batch token is a bucket index.
    let mut token: u32 = 0;
    let mut first = true;
    loop {
        let mut next: u32 = 0;
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &mut token as *mut u32 as u64 },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let done = match r {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        for i in 0..attr.count as usize {
            // SAFETY: the kernel wrote `count` keys and values.
            unsafe {
                out.push((
                    keys.as_ptr().add(i).read().assume_init(),
                    values.as_ptr().add(i).read().assume_init(),
                ))
            };
        }
        if done {
            return Ok(out);
        }
        token = next;
        first = false;
    }
}

/// The memory of an mmapable array map from byte `start` for `len` bytes, mapped shared
/// (only the pages it spans).
pub struct MapWindow {
    base: std::ptr::NonNull<u8>,
    mapped: usize,
    /// Byte offset in the map's values of `base`.
    base_byte: usize,
}

// SAFETY: plain shared memory owned by this value.
unsafe impl Send for MapWindow {}
unsafe impl Sync for MapWindow {}

impl MapWindow {
    pub fn map(map: BorrowedFd<'_>, start: usize, len: usize) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let first = start / page * page;
        let mapped = (start + len).div_ceil(page) * page - first;
        // SAFETY: a new shared mapping of the map's fd at a page-aligned offset; the
        // kernel checks the range against the map and that it is mmapable.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                first as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = std::ptr::NonNull::new(p.cast()).expect("mmap never returns null");
        Ok(MapWindow { base, mapped, base_byte: first })
    }

    /// The address of byte `at` of the map's values; inside the mapping.
    fn at(&self, at: usize) -> *mut u8 {
        assert!(at >= self.base_byte && at < self.base_byte + self.mapped, "byte {at} unmapped");
        self.base.as_ptr().wrapping_add(at - self.base_byte)
    }

    /// Writes `value` at byte `at` (aligned for `T`: array values start at multiples of
    /// 8) with a volatile store, `T`'s whole size inside the mapping.
    pub fn write<T: Copy>(&mut self, at: usize, value: T) {
        assert!(at.is_multiple_of(align_of::<T>()), "byte {at} is not aligned for the value");
        let _ = self.at(at + size_of::<T>() - 1);
        // SAFETY: inside the mapping and aligned (checked; the mapping is page-aligned).
        unsafe { self.at(at).cast::<T>().write_volatile(value) };
    }
}

impl Drop for MapWindow {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.mapped) };
    }
}

/// A window onto a ring pool's memory (a `BPF_F_MMAPABLE` array of `u64`s, read as
/// dense `u32` slots), mapped shared: what is written here is what programs read. Only
/// the pages of the window are mapped, so writing one ring maps a few pages, not the
/// pool.
pub struct PoolMemory {
    window: MapWindow,
    /// The window's slots: `first..end`.
    first: usize,
    end: usize,
}

impl PoolMemory {
    /// Maps slots `first..first + count` of the pool `map`.
    pub fn map(map: BorrowedFd<'_>, first: usize, count: usize) -> io::Result<Self> {
        let window = MapWindow::map(map, first * 4, count * 4)?;
        Ok(PoolMemory { window, first, end: first + count })
    }

    /// Writes `ring` at slot `at`, slot `header` on first, then slots `0..header` (the
    /// header, M), so a program that reads M finds its slots written.
    pub fn write_ring(&mut self, at: usize, ring: &[u32], header: usize) {
        // What was written before (backend entries the ring names) is visible first.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        let (head, body) = ring.split_at(header.min(ring.len()));
        // SAFETY: the span is inside the window, checked by `slots`, 4-aligned, and
        // nothing in this process holds a reference into the mapping.
        let slots: &[AtomicU32] =
            unsafe { std::slice::from_raw_parts(self.slots(at, ring.len()).cast(), ring.len()) };
        let (head_slots, body_slots) = slots.split_at(head.len());
        // One 4-byte store a slot, so a program reading a slot meanwhile reads it whole
        // (a memcpy, which plain stores turn into, promises no such thing).
        for (slot, v) in body_slots.iter().zip(body) {
            slot.store(*v, Relaxed);
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        for (slot, v) in head_slots.iter().zip(head) {
            slot.store(*v, Relaxed);
        }
    }

    /// Copies `ring` to slot `at`, for a region no program reads: a memcpy, faster than
    /// [`Self::write_ring`]'s slot by slot (a cold start writes millions of slots).
    pub fn copy_in(&mut self, at: usize, ring: &[u32]) {
        // SAFETY: the span is inside the window, checked by `slots`; `ring` is Rust
        // memory, not the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(ring.as_ptr(), self.slots(at, ring.len()), ring.len())
        };
    }

    /// Slots `at..at + len`, inside the window (checked once, not per slot).
    fn slots(&self, at: usize, len: usize) -> *mut u32 {
        assert!(at >= self.first && at + len <= self.end, "slots {at}+{len} outside the window");
        if len == 0 {
            return std::ptr::NonNull::dangling().as_ptr();
        }
        let _ = self.window.at((at + len) * 4 - 1);
        self.window.at(at * 4).cast()
    }

    /// Whether slot `i` is inside the window.
    pub fn holds(&self, i: usize) -> bool {
        (self.first..self.end).contains(&i)
    }

    /// Slot `i`, inside the window.
    pub fn read(&self, i: usize) -> u32 {
        // SAFETY: inside the window, checked by `slots`.
        unsafe { self.slots(i, 1).read_volatile() }
    }

    /// Copies the window's slots into `other`'s window at the same slots (a pool grown
    /// into a larger one keeps every ring where it was; no program reads it yet).
    pub fn copy_to(&self, other: &mut PoolMemory) {
        let len = self.end - self.first;
        // SAFETY: both spans inside their windows, checked by `slots`; two mappings.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.slots(self.first, len),
                other.slots(self.first, len),
                len,
            )
        };
    }
}
