//! The driver contract: one NIC queue (an AF_XDP socket, a DPDK port queue, or the
//! in-memory test double) as the poll-mode engine drives it.
//!
//! The engine never owns packet memory. A driver lends it buffers through opaque
//! [`Pkt`] handles and gets every one of them back, exactly once, through
//! [`Queue::tx_burst`], [`Queue::free`] or [`Queue::to_kernel`]. Between those
//! points the handle is the engine's: it may read and write the bytes behind it
//! ([`Queue::data`]) and change the length ([`Queue::set_len`]).
//!
//! Handles never travel between queues unless both report the same
//! [`Queue::pool_id`]; otherwise the engine copies the bytes into a buffer of the
//! target queue ([`Queue::alloc`]) and frees the original on the queue it came from.
//!
//! Every method is called from the one worker thread that owns the queue, in a busy
//! loop: no method may block, sleep, allocate per packet or take a lock per packet.

/// An opaque handle on one driver-owned packet buffer: a UMEM frame address, an mbuf
/// pointer, a slot index. `len` is the frame's current length as the driver last set
/// it; the engine changes it only through [`Queue::set_len`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Pkt {
    /// The driver's own value; the engine never interprets it.
    pub raw: u64,
    /// Length of the frame in bytes.
    pub len: u32,
}

/// One RX/TX queue of one interface, driven by exactly one worker.
///
/// Ownership of handles:
/// - [`rx_burst`](Queue::rx_burst) and [`alloc`](Queue::alloc) hand buffers to the
///   engine;
/// - [`tx_burst`](Queue::tx_burst) takes the first `n` it returns (the driver frees
///   them once the hardware or kernel is done with them); the rest are still the
///   engine's, which retries or frees them;
/// - [`to_kernel`](Queue::to_kernel) takes all of them, sent or not;
/// - [`free`](Queue::free) takes all of them back unsent.
///
/// A driver must never hand out a buffer that is still in flight (in a fill or TX ring,
/// or with the engine). [`outstanding`](Queue::outstanding) counts the buffers the
/// engine holds, so a test can check that shutdown leaked none.
pub trait Queue {
    /// Interface index of the port this queue belongs to.
    fn ifindex(&self) -> u32;
    /// The queue's number on its port.
    fn queue_id(&self) -> u32;
    /// Queues with the same pool id share buffer memory: a handle received on one may be
    /// given to another's `tx_burst` / `free`. `None`: handles stay on this queue.
    fn pool_id(&self) -> Option<u64>;
    /// How the driver runs, for stats: `"zero-copy"`, `"copy"`, `"dpdk"`, `"memory"`.
    fn mode(&self) -> &'static str;
    /// Size of one buffer: no frame is longer.
    fn capacity(&self) -> usize;

    /// Receives up to `pkts.len()` frames into `pkts`; returns how many.
    fn rx_burst(&mut self, pkts: &mut [Pkt]) -> usize;
    /// Takes up to `out.len()` empty buffers (length 0) for frames the engine builds
    /// (copies from another pool); returns how many.
    fn alloc(&mut self, out: &mut [Pkt]) -> usize;
    /// The frame's bytes, `pkt.len` long. `pkt` must be a handle the engine holds
    /// from this queue (or from one with the same `pool_id`).
    fn data(&mut self, pkt: &Pkt) -> &mut [u8];
    /// Sets the frame's length; `false` (and no change) when the buffer cannot hold
    /// `len` bytes (never more than `capacity()`, less if the frame starts at an offset).
    fn set_len(&mut self, pkt: &mut Pkt, len: usize) -> bool;
    /// Queues the first `n` of `pkts` for transmission and returns `n`; the driver owns
    /// those from now on. `pkts[n..]` stay the engine's.
    fn tx_burst(&mut self, pkts: &[Pkt]) -> usize;
    /// Returns buffers to the driver unsent.
    fn free(&mut self, pkts: &[Pkt]);
    /// Hands frames to the host's network stack (the exception path for `Pass`); takes
    /// ownership of all of them and returns how many reached the kernel.
    fn to_kernel(&mut self, pkts: &[Pkt]) -> usize;
    /// Housekeeping, called once per loop turn even when idle: reap TX completions,
    /// refill the RX side, wake the kernel if it needs it. Must not block.
    fn maintain(&mut self);
    /// Buffers the engine currently holds (received or allocated, not yet given back).
    fn outstanding(&self) -> usize;
}
