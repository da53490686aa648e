//! The bpf(2) calls aya 0.14 does not offer: creating a ring's inner array map, filling
//! it with one `BPF_MAP_UPDATE_BATCH` call instead of one syscall per slot (a ring of
//! 1009 slots is one call, not 1009), and swapping many rings into the outer map at once.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
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

/// Writes `values[i]` at index `i` of a u32 array map, in one call.
pub fn fill_u32_array(map: BorrowedFd<'_>, values: &[u32]) -> io::Result<()> {
    let keys: Vec<u32> = (0..values.len() as u32).collect();
    update_u32_batch(map, &keys, values)
}

/// Writes `values[i]` under `keys[i]` of a map with u32 keys and values (an array, or an
/// array of maps whose values are inner map descriptors), in one call. For an array of
/// maps that is also one wait for running programs (Linux 6.8) instead of one an entry.
pub fn update_u32_batch(map: BorrowedFd<'_>, keys: &[u32], values: &[u32]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len());
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
            "batch update wrote {} of {} slots",
            attr.count,
            values.len()
        )));
    }
    Ok(())
}
