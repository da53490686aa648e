//! A DPDK port queue as a `vipr-poll` [`Queue`]: the engine's opaque [`Pkt`] handle is
//! the mbuf pointer, so RX, in-place rewriting and TX move no bytes, and ports that share
//! an mbuf pool (every port of one process, normally) report the same `pool_id`, so a
//! redirect from one port to another hands the mbuf over without a copy.
//!
//! The exception path (`to_kernel`, the `Pass` verdict) depends on the port:
//! - `net_af_packet` reads frames from a packet socket: the kernel has already seen the
//!   very same frame on that interface, so passing it means only freeing the mbuf
//!   ([`KernelPath::AlreadySeen`]). The catch is that the kernel saw the frame as it
//!   arrived: a frame the pipeline translated and then passed (a next hop it did not
//!   know) is lost, and the kernel of that namespace must not also forward or answer
//!   VIP traffic itself (see controlplane/tests/e2e_dpdk.rs).
//! - a NIC DPDK owns (PCI) has no kernel behind it: passed frames go out of an
//!   exception port, typically a `net_tap` whose kernel interface stands in for the NIC
//!   ([`KernelPath::Port`]), or are dropped ([`KernelPath::Discard`]). The exception
//!   port works both ways: what the kernel sends out of the tap interface (ARP and ND
//!   answers, its own connections) the queue sends out of the NIC on its next turn
//!   (`maintain`), untouched by the pipeline, as XDP never sees a host's own egress.
//!
//! A queue belongs to one worker thread. On its first turn it registers that thread
//! with DPDK (an lcore id, so the mempool's per-lcore cache serves it without touching
//! the shared ring), and unregisters it when the thread ends.

use crate::error::Result;
use crate::mempool::{Lent, DATA_ROOM};
use crate::port::Port;
use crate::sys;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use vipr_poll::{Pkt, Queue};

/// Most mbufs moved through DPDK in one call; larger slices go in several calls.
const CHUNK: usize = 64;
/// Most destinations [`Misses`] holds between two looks of the resolver.
const MAX_MISSES: usize = 1024;

/// Destinations of frames the queues passed to the kernel since the next-hop follower
/// last looked: the neighbours the engine is missing (a reply whose client it has no
/// next hop for). Written once per `to_kernel` batch with `try_lock`, so a worker never
/// waits; a lost entry only delays learning that neighbour to its next miss.
#[derive(Debug, Default)]
pub struct Misses(Mutex<Vec<IpAddr>>);

impl Misses {
    pub fn take(&self) -> Vec<IpAddr> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The destination address of an untagged IPv4 or IPv6 frame.
fn destination(frame: &[u8]) -> Option<IpAddr> {
    match frame.get(12..14)? {
        [0x08, 0x00] => <[u8; 4]>::try_from(frame.get(30..34)?).ok().map(IpAddr::from),
        [0x86, 0xdd] => <[u8; 16]>::try_from(frame.get(38..54)?).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Where `to_kernel` puts frames.
#[derive(Clone, Debug)]
pub enum KernelPath {
    /// The kernel saw the frame already (packet-socket ports): free it.
    AlreadySeen,
    /// Send it out of this queue of another port (a `net_tap`, or a ring in tests); what
    /// that port receives leaves through this queue's port.
    Port { port: Arc<Port>, queue: u16 },
    /// No kernel: drop it (counted by the engine as not delivered).
    Discard,
}

impl KernelPath {
    /// The natural choice for `port`: already seen for `net_af_packet`, discard otherwise.
    pub fn default_for(port: &Port) -> KernelPath {
        if port.driver() == "net_af_packet" {
            KernelPath::AlreadySeen
        } else {
            KernelPath::Discard
        }
    }
}

/// One RX/TX queue pair of a started port, driven by one worker.
pub struct DpdkQueue {
    port: Arc<Port>,
    port_id: u16,
    queue: u16,
    ifindex: u32,
    kernel: KernelPath,
    scratch: [*mut sys::rte_mbuf; CHUNK],
    /// This queue's lending count (see `mempool::Lent`), mirrored into `lent`.
    outstanding: isize,
    lent: Arc<Lent>,
    /// Multi-segment frames (longer than one mbuf) dropped at RX: the pipeline works on
    /// one contiguous frame.
    chained: u64,
    /// Frames the kernel sent through the exception port and this queue sent on.
    from_kernel: u64,
    misses: Option<Arc<Misses>>,
}

// SAFETY: the queue's mbuf pointers are owned by whichever thread holds the queue; a
// queue is moved to its worker and used there only. DPDK queue calls are safe from any
// single thread at a time.
unsafe impl Send for DpdkQueue {}

impl DpdkQueue {
    /// Queue `queue` of `port`, which only this queue may use (claimed once). Its
    /// ifindex is the port's kernel interface (`net_af_packet`, `net_tap`); give
    /// another one with [`with_ifindex`](Self::with_ifindex) (ring ports and PCI NICs
    /// have none, and next hops name ports by ifindex).
    pub fn new(port: &Arc<Port>, queue: u16, kernel: KernelPath) -> Result<DpdkQueue> {
        port.claim(queue)?;
        if let KernelPath::Port { port: k, queue: kq } = &kernel {
            if let Err(e) = k.claim(*kq) {
                port.release(queue);
                return Err(e);
            }
        }
        Ok(DpdkQueue {
            port_id: port.id(),
            ifindex: port.ifindex(),
            port: port.clone(),
            queue,
            kernel,
            scratch: [std::ptr::null_mut(); CHUNK],
            outstanding: 0,
            lent: port.pool.lender(),
            chained: 0,
            from_kernel: 0,
            misses: None,
        })
    }

    pub fn with_ifindex(mut self, ifindex: u32) -> Self {
        self.ifindex = ifindex;
        self
    }

    /// Records the destinations of the frames it passes to the kernel in `misses`.
    pub fn set_misses(&mut self, misses: Arc<Misses>) {
        self.misses = Some(misses);
    }

    pub fn port(&self) -> &Arc<Port> {
        &self.port
    }

    /// Frames the kernel sent out through the exception port that this queue forwarded.
    pub fn from_kernel(&self) -> u64 {
        self.from_kernel
    }

    /// Frames dropped at RX because they spanned several mbufs.
    pub fn chained_drops(&self) -> u64 {
        self.chained
    }

    #[inline]
    fn lend(&mut self, n: isize) {
        if n != 0 {
            self.outstanding += n;
            self.lent.0.store(self.outstanding, Ordering::Relaxed);
        }
    }

    fn free_raw(&mut self, pkts: &[Pkt]) {
        for chunk in pkts.chunks(CHUNK) {
            for (slot, p) in self.scratch.iter_mut().zip(chunk) {
                *slot = p.raw as *mut sys::rte_mbuf;
            }
            // SAFETY: each handle is an mbuf the engine got from a queue of this pool and
            // gives back here, once (the Queue contract).
            unsafe { sys::vipr_pktmbuf_free_bulk(self.scratch.as_mut_ptr(), chunk.len() as u32) };
        }
    }
}

impl Drop for DpdkQueue {
    fn drop(&mut self) {
        self.port.release(self.queue);
        if let KernelPath::Port { port, queue } = &self.kernel {
            port.release(*queue);
        }
    }
}

impl Queue for DpdkQueue {
    fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn queue_id(&self) -> u32 {
        self.queue as u32
    }

    fn pool_id(&self) -> Option<u64> {
        Some(self.port.pool.as_ptr() as u64)
    }

    fn mode(&self) -> &'static str {
        "dpdk"
    }

    fn capacity(&self) -> usize {
        DATA_ROOM as usize
    }

    fn rx_burst(&mut self, pkts: &mut [Pkt]) -> usize {
        let want = pkts.len().min(CHUNK) as u16;
        // SAFETY: the port is started with this RX queue set up; scratch has room for
        // `want` pointers, and every mbuf returned is ours.
        let n = unsafe {
            sys::vipr_eth_rx_burst(self.port_id, self.queue, self.scratch.as_mut_ptr(), want)
        } as usize;
        let mut kept = 0;
        for i in 0..n {
            let m = self.scratch[i];
            // SAFETY: m is a valid mbuf just received.
            if unsafe { sys::vipr_pktmbuf_nb_segs(m) } != 1 {
                // SAFETY: ours, freed once.
                unsafe { sys::vipr_pktmbuf_free(m) };
                self.chained += 1;
                continue;
            }
            // SAFETY: m is a valid single-segment mbuf.
            let len = unsafe { sys::vipr_pktmbuf_data_len(m) } as u32;
            pkts[kept] = Pkt { raw: m as u64, len };
            kept += 1;
        }
        self.lend(kept as isize);
        kept
    }

    fn alloc(&mut self, out: &mut [Pkt]) -> usize {
        let mut got = 0;
        while got < out.len() {
            let n = (out.len() - got).min(CHUNK);
            // SAFETY: the pool is valid; scratch has room for n pointers; on success all
            // n mbufs are ours (all or nothing).
            let ret = unsafe {
                sys::vipr_pktmbuf_alloc_bulk(
                    self.port.pool.as_ptr(),
                    self.scratch.as_mut_ptr(),
                    n as u32,
                )
            };
            if ret != 0 {
                break;
            }
            for (slot, m) in out[got..got + n].iter_mut().zip(&self.scratch[..n]) {
                *slot = Pkt { raw: *m as u64, len: 0 };
            }
            got += n;
        }
        self.lend(got as isize);
        got
    }

    fn data(&mut self, pkt: &Pkt) -> &mut [u8] {
        let m = pkt.raw as *mut sys::rte_mbuf;
        // SAFETY: the engine holds `pkt`, an mbuf of this pool (the Queue contract), and
        // pkt.len is its data length as set by rx_burst / set_len, within the first
        // segment's buffer; the borrow of self keeps the engine from touching it elsewhere.
        unsafe { std::slice::from_raw_parts_mut(sys::vipr_pktmbuf_data(m), pkt.len as usize) }
    }

    fn set_len(&mut self, pkt: &mut Pkt, len: usize) -> bool {
        if len > DATA_ROOM as usize {
            return false;
        }
        // SAFETY: as in `data`; the shim refuses a length beyond the buffer.
        let ok =
            unsafe { sys::vipr_pktmbuf_set_len(pkt.raw as *mut sys::rte_mbuf, len as u16) } == 0;
        if ok {
            pkt.len = len as u32;
        }
        ok
    }

    fn tx_burst(&mut self, pkts: &[Pkt]) -> usize {
        let mut sent = 0;
        for chunk in pkts.chunks(CHUNK) {
            for (slot, p) in self.scratch.iter_mut().zip(chunk) {
                *slot = p.raw as *mut sys::rte_mbuf;
            }
            // SAFETY: the TX queue is set up; the first `n` mbufs pass to the driver,
            // the rest stay the engine's.
            let n = unsafe {
                sys::vipr_eth_tx_burst(
                    self.port_id,
                    self.queue,
                    self.scratch.as_mut_ptr(),
                    chunk.len() as u16,
                )
            } as usize;
            sent += n;
            if n < chunk.len() {
                break;
            }
        }
        self.lend(-(sent as isize));
        sent
    }

    fn free(&mut self, pkts: &[Pkt]) {
        self.free_raw(pkts);
        self.lend(-(pkts.len() as isize));
    }

    fn to_kernel(&mut self, pkts: &[Pkt]) -> usize {
        if let Some(misses) = &self.misses {
            if let Ok(mut list) = misses.0.try_lock() {
                for p in pkts {
                    if list.len() >= MAX_MISSES {
                        break;
                    }
                    // SAFETY: the engine still holds `p` (it is handed over below), an
                    // mbuf of this pool whose first segment has p.len data bytes.
                    let frame = unsafe {
                        std::slice::from_raw_parts(
                            sys::vipr_pktmbuf_data(p.raw as *mut sys::rte_mbuf),
                            p.len as usize,
                        )
                    };
                    if let Some(dst) = destination(frame) {
                        if !list.contains(&dst) {
                            list.push(dst);
                        }
                    }
                }
            }
        }
        self.lend(-(pkts.len() as isize));
        let (port_id, queue) = match &self.kernel {
            KernelPath::AlreadySeen => {
                self.free_raw(pkts);
                return pkts.len();
            }
            KernelPath::Discard => {
                self.free_raw(pkts);
                return 0;
            }
            KernelPath::Port { port, queue } => (port.id(), *queue),
        };
        let mut sent = 0;
        for chunk in pkts.chunks(CHUNK) {
            for (slot, p) in self.scratch.iter_mut().zip(chunk) {
                *slot = p.raw as *mut sys::rte_mbuf;
            }
            // SAFETY: the exception queue was claimed for this queue alone; the first n
            // mbufs pass to its driver, the unsent rest is still ours and freed once.
            unsafe {
                let n = sys::vipr_eth_tx_burst(
                    port_id,
                    queue,
                    self.scratch.as_mut_ptr(),
                    chunk.len() as u16,
                ) as usize;
                if n < chunk.len() {
                    sys::vipr_pktmbuf_free_bulk(
                        self.scratch.as_mut_ptr().add(n),
                        (chunk.len() - n) as u32,
                    );
                }
                sent += n;
            }
        }
        sent
    }

    fn maintain(&mut self) {
        crate::eal::register_current_thread();
        if let KernelPath::Port { port, queue } = &self.kernel {
            let (from, from_queue) = (port.id(), *queue);
            // SAFETY: the exception queue was claimed for this queue alone; received
            // mbufs are ours until handed to this port's TX queue, which takes the
            // first n; the rest are freed once.
            unsafe {
                let got = sys::vipr_eth_rx_burst(
                    from,
                    from_queue,
                    self.scratch.as_mut_ptr(),
                    CHUNK as u16,
                );
                if got > 0 {
                    let sent = sys::vipr_eth_tx_burst(
                        self.port_id,
                        self.queue,
                        self.scratch.as_mut_ptr(),
                        got,
                    );
                    if sent < got {
                        sys::vipr_pktmbuf_free_bulk(
                            self.scratch.as_mut_ptr().add(sent as usize),
                            (got - sent) as u32,
                        );
                    }
                    self.from_kernel += sent as u64;
                }
            }
        }
    }

    /// Handles move between the queues of one pool (a frame received here may leave
    /// through another port), so the count is kept per pool: the pool's first live queue
    /// reports what the engine holds of the whole pool, the others 0, and the engine's
    /// sum over its queues is right.
    fn outstanding(&self) -> usize {
        let (sum, first) = self.port.pool.lent(&self.lent);
        if first {
            sum.max(0) as usize
        } else {
            0
        }
    }
}
