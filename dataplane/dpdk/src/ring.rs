//! `rte_ring`s of mbufs: the two ends of a `net_ring` port made with
//! [`Port::from_rings`](crate::Port::from_rings). A test (or a benchmark's generator)
//! puts frames into a port's RX ring and takes what the port sent out of its TX ring,
//! with no kernel in between.

use crate::eal::Eal;
use crate::error::{last_error, Error, Result};
use crate::mempool::Mbuf;
use crate::sys;
use std::ffi::CString;
use std::ptr::NonNull;

pub struct Ring {
    ptr: NonNull<sys::rte_ring>,
    name: String,
}

// SAFETY: rings are created multi-producer multi-consumer (flags 0), so every operation
// is thread-safe.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    /// A ring of `size` slots (a power of two; it holds `size - 1` mbufs). `name` must be
    /// unique in the process.
    pub fn new(_eal: &Eal, name: &str, size: u32) -> Result<Ring> {
        let cname = CString::new(name).map_err(|_| Error::Ring {
            name: name.into(),
            reason: "NUL byte in the name".into(),
        })?;
        // SAFETY: cname is a valid C string (copied by DPDK); the EAL is up.
        let ptr = unsafe { sys::rte_ring_create(cname.as_ptr(), size, sys::SOCKET_ID_ANY, 0) };
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            let (errno, reason) = last_error();
            Error::Ring {
                name: name.into(),
                reason: format!("rte_ring_create: {reason} ({errno})"),
            }
        })?;
        Ok(Ring { ptr, name: name.into() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::rte_ring {
        self.ptr.as_ptr()
    }

    /// Puts one mbuf in; gives it back if the ring is full.
    pub fn enqueue(&self, m: Mbuf) -> std::result::Result<(), Mbuf> {
        let mut raw = m.into_raw();
        // SAFETY: the ring is valid; raw is one owned mbuf, whose ownership passes to the
        // ring if enqueued.
        let n = unsafe { sys::vipr_ring_enqueue_burst(self.ptr.as_ptr(), &mut raw, 1) };
        if n == 1 {
            Ok(())
        } else {
            // SAFETY: not enqueued: still ours.
            Err(unsafe { Mbuf::from_raw(raw) }.expect("non-null"))
        }
    }

    /// Takes one mbuf out.
    pub fn dequeue(&self) -> Option<Mbuf> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: the ring is valid; a dequeued mbuf is owned by the caller.
        let n = unsafe { sys::vipr_ring_dequeue_burst(self.ptr.as_ptr(), &mut raw, 1) };
        // SAFETY: n == 1: raw is an mbuf the ring held, now ours.
        (n == 1).then(|| unsafe { Mbuf::from_raw(raw) }).flatten()
    }

    /// mbufs in the ring.
    pub fn len(&self) -> usize {
        // SAFETY: the ring is valid.
        unsafe { sys::vipr_ring_count(self.ptr.as_ptr()) as usize }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Frames still in the ring go back to their pool first.
        while self.dequeue().is_some() {}
        // SAFETY: the ring is valid and freed once; ports made from it hold an Arc, so
        // none uses it any more.
        unsafe { sys::rte_ring_free(self.ptr.as_ptr()) }
    }
}
