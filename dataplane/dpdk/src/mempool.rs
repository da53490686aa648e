//! mbuf pools (`rte_pktmbuf_pool_create`) and owned mbufs.

use crate::eal::Eal;
use crate::error::{last_error, Error, Result};
use crate::sys;
use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Bytes of each mbuf's buffer that hold frame data (after DPDK's headroom).
pub const DATA_ROOM: u16 = 2048;
/// Headroom before the data (`RTE_PKTMBUF_HEADROOM` of Debian's build).
pub const HEADROOM: u16 = 128;
/// Per-lcore cache of each pool: the registered worker threads take and return mbufs
/// in batches of this size without touching the shared ring.
const CACHE: u32 = 256;

/// One mbuf pool. It must outlive every port queue set up with it and every mbuf taken
/// from it; ports hold it in an `Arc`.
pub struct Mempool {
    ptr: NonNull<sys::rte_mempool>,
    name: String,
    size: u32,
    /// What each driver queue of this pool has lent to the engine (see `Lent`).
    lenders: Mutex<Vec<Weak<Lent>>>,
}

/// mbufs one queue handed to the engine minus those the engine handed back through it.
/// With a shared pool a frame received on one queue may go back through another, so one
/// queue's count can be negative and only the sum over the pool's queues means
/// something. Each queue writes only its own counter (no shared cache line on the
/// packet path); reading the sum is for shutdown and tests.
#[derive(Debug, Default)]
pub(crate) struct Lent(pub(crate) AtomicIsize);

// SAFETY: DPDK mempools are multi-producer multi-consumer (the default ring_mp_mc
// handler); the pointer is only passed to DPDK's thread-safe pool functions.
unsafe impl Send for Mempool {}
// SAFETY: as above, every method is a thread-safe DPDK call.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `mbufs` mbufs (`dpdk.mbufs`; 2^n - 1 is the most memory-efficient
    /// size) with [`DATA_ROOM`] data bytes each. `name` must be unique in the process.
    pub fn new(_eal: &Eal, name: &str, mbufs: u32) -> Result<Mempool> {
        let cname = CString::new(name).map_err(|_| Error::Pool {
            name: name.into(),
            mbufs,
            errno: libc::EINVAL,
            reason: "name contains a NUL byte".into(),
        })?;
        let cache = CACHE.min(mbufs / 8);
        // SAFETY: cname is a valid C string (copied by DPDK); the EAL is up (`_eal`).
        let ptr = unsafe {
            sys::rte_pktmbuf_pool_create(
                cname.as_ptr(),
                mbufs,
                cache,
                0,
                DATA_ROOM + HEADROOM,
                sys::SOCKET_ID_ANY,
            )
        };
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            let (errno, reason) = last_error();
            Error::Pool { name: name.into(), mbufs, errno, reason }
        })?;
        Ok(Mempool { ptr, name: name.into(), size: mbufs, lenders: Mutex::new(Vec::new()) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many mbufs the pool was made with.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// mbufs in the pool, per-lcore caches included: equal to [`size`](Self::size) when
    /// every mbuf is back.
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is valid for self's lifetime.
        unsafe { sys::rte_mempool_avail_count(self.ptr.as_ptr()) }
    }

    /// mbufs taken from the pool and not yet returned.
    pub fn in_use(&self) -> u32 {
        // SAFETY: the pool is valid for self's lifetime.
        unsafe { sys::rte_mempool_in_use_count(self.ptr.as_ptr()) }
    }

    /// A lending counter for a new queue of this pool.
    pub(crate) fn lender(&self) -> Arc<Lent> {
        let lent = Arc::new(Lent::default());
        let mut lenders = self.lenders.lock().unwrap_or_else(|e| e.into_inner());
        lenders.retain(|w| w.strong_count() > 0);
        lenders.push(Arc::downgrade(&lent));
        lent
    }

    /// Buffers the engine holds from this pool, over every live queue, and whether
    /// `lent` is the pool's first live queue (the one that reports the sum).
    pub(crate) fn lent(&self, lent: &Arc<Lent>) -> (isize, bool) {
        let lenders = self.lenders.lock().unwrap_or_else(|e| e.into_inner());
        let alive: Vec<Arc<Lent>> = lenders.iter().filter_map(Weak::upgrade).collect();
        let sum = alive.iter().map(|l| l.0.load(Ordering::Relaxed)).sum();
        (sum, alive.first().is_some_and(|f| Arc::ptr_eq(f, lent)))
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.ptr.as_ptr()
    }

    /// One empty mbuf, or `None` when the pool is exhausted.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is valid; the returned mbuf (if any) is ours.
        NonNull::new(unsafe { sys::vipr_pktmbuf_alloc(self.ptr.as_ptr()) }).map(Mbuf)
    }

    /// An mbuf holding a copy of `frame`, or `None` if the pool is empty or the frame
    /// longer than [`DATA_ROOM`].
    pub fn mbuf_from(&self, frame: &[u8]) -> Option<Mbuf> {
        let mut m = self.alloc()?;
        if !m.set_len(frame.len()) {
            return None;
        }
        m.data_mut().copy_from_slice(frame);
        Some(m)
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: every port queue using the pool holds an Arc to it and every Mbuf
        // borrows nothing from it but must be freed first (documented); the pool is
        // freed once.
        unsafe { sys::rte_mempool_free(self.ptr.as_ptr()) }
    }
}

/// An mbuf this code owns; freed back to its pool on drop.
pub struct Mbuf(NonNull<sys::rte_mbuf>);

// SAFETY: an mbuf is plain memory owned by whoever holds the pointer; freeing it from
// another thread is allowed (mempool put is thread-safe).
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    /// `ptr` must be a valid mbuf that nothing else owns or will free.
    pub unsafe fn from_raw(ptr: *mut sys::rte_mbuf) -> Option<Mbuf> {
        NonNull::new(ptr).map(Mbuf)
    }

    /// Gives up ownership; the caller must see that the mbuf is freed.
    pub fn into_raw(self) -> *mut sys::rte_mbuf {
        let p = self.0.as_ptr();
        std::mem::forget(self);
        p
    }

    pub fn len(&self) -> usize {
        // SAFETY: the mbuf is valid while owned.
        unsafe { sys::vipr_pktmbuf_data_len(self.0.as_ptr()) as usize }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets the data length of this single-segment mbuf; `false` if it does not fit.
    pub fn set_len(&mut self, len: usize) -> bool {
        // SAFETY: the mbuf is valid and ours.
        len <= u16::MAX as usize
            && unsafe { sys::vipr_pktmbuf_set_len(self.0.as_ptr(), len as u16) } == 0
    }

    /// The frame bytes of the first segment.
    pub fn data(&self) -> &[u8] {
        // SAFETY: mtod points at data_len initialised bytes of the mbuf's buffer, which
        // lives as long as the mbuf, borrowed immutably here.
        unsafe { std::slice::from_raw_parts(sys::vipr_pktmbuf_data(self.0.as_ptr()), self.len()) }
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`, borrowed mutably through the unique owner.
        unsafe {
            std::slice::from_raw_parts_mut(sys::vipr_pktmbuf_data(self.0.as_ptr()), self.len())
        }
    }

    /// The whole packet, every segment, copied out.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; 16 * 1024];
        // SAFETY: out has out.len() writable bytes; the mbuf is valid.
        let n =
            unsafe { sys::vipr_pktmbuf_read(self.0.as_ptr(), out.as_mut_ptr(), out.len() as u32) };
        out.truncate(n.max(0) as usize);
        out
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: the mbuf is ours and freed once.
        unsafe { sys::vipr_pktmbuf_free(self.0.as_ptr()) }
    }
}
