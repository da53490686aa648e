//! The bpf(2) calls aya 0.14 does not offer: creating a ring's inner array map, mapping
//! its memory to write it directly, and swapping many rings into the outer map at once
//! (`BPF_MAP_UPDATE_BATCH`).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
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

/// A new array map of `entries` u32s with `flags`, named `name` (at most 15 bytes).
pub fn create_u32_array(name: &str, entries: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: entries,
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
/// array of maps whose values are inner map descriptors), in one call. For an array of
/// maps that is also one wait for running programs (Linux 6.8) instead of one an entry.
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

/// Every entry of a hash map, read `chunk` entries a call with `BPF_MAP_LOOKUP_BATCH`
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

/// The memory of a `BPF_F_MMAPABLE` u32 array map, mapped shared: what is written here
/// is what programs read. The kernel lays array values out 8 bytes apart (each rounded up
/// to 8), so slot `i` is at byte `8 * i`.
pub struct U32ArrayMemory {
    ptr: std::ptr::NonNull<u32>,
    entries: usize,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; writes go through
// `&mut self`.
unsafe impl Send for U32ArrayMemory {}
unsafe impl Sync for U32ArrayMemory {}

impl U32ArrayMemory {
    /// Maps the `entries` slots of the mmapable u32 array `map`.
    pub fn map(map: BorrowedFd<'_>, entries: u32) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = (entries as usize * ARRAY_STRIDE).div_ceil(page) * page;
        // SAFETY: a new shared mapping of the map's fd; the kernel checks the length
        // and that the map is mmapable.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast()).expect("mmap never returns null");
        Ok(U32ArrayMemory { ptr, entries: entries as usize, len })
    }

    /// Writes `ring` from slot `header` on, then slots `0..header` (the header, M), so a
    /// program that reads M finds its slots written. Each slot is one aligned 32-bit
    /// store, which programs read whole.
    pub fn write_ring(&mut self, ring: &[u32], header: usize) {
        assert!(
            ring.len() <= self.entries,
            "a ring of {} slots in a map of {}",
            ring.len(),
            self.entries
        );
        for (i, v) in ring.iter().enumerate().skip(header) {
            // SAFETY: i < entries, inside the mapping; a volatile store so it is not elided.
            unsafe { self.slot(i).write_volatile(*v) };
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        for (i, v) in ring.iter().enumerate().take(header) {
            // SAFETY: as above.
            unsafe { self.slot(i).write_volatile(*v) };
        }
    }
}

impl U32ArrayMemory {
    /// Slot `i` of the mapping; `i < entries`.
    fn slot(&self, i: usize) -> *mut u32 {
        debug_assert!(i < self.entries);
        // SAFETY (of the callers' use): i < entries keeps 8 * i inside the mapping.
        self.ptr.as_ptr().wrapping_add(i * ARRAY_STRIDE / 4)
    }
}

/// Bytes between two values of a BPF array map (`round_up(value_size, 8)`).
const ARRAY_STRIDE: usize = 8;

impl Drop for U32ArrayMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
