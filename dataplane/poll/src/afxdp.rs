//! The AF_XDP driver: one XDP socket per (interface, queue), each with its own UMEM and
//! fill / completion / RX / TX rings (xdpilone), and [`start`], which builds the whole
//! AF_XDP dataplane: steering program, sockets, workers, next-hop resolver.
//!
//! Frame accounting: every UMEM frame is in exactly one place — the free list, the fill
//! ring, with the engine (received or allocated), or the TX ring until its completion —
//! and `state` records which. Every transition checks the state it leaves, so the
//! kernel handing back a frame we did not give it, or the engine giving one back
//! twice, is caught (counted as a violation, or an assertion for engine bugs) instead of
//! a frame being reused while in flight. Descriptor addresses and lengths from the
//! kernel are bounds-checked against the UMEM before any byte is touched (xdpilone does
//! not check them).
//!
//! Mode: zero-copy is tried first; a driver without it (veth: EOPNOTSUPP) gets copy
//! mode, and [`Queue::mode`] says which one runs.

use crate::engine::{Engine, EngineOptions, WorkerPlan};
use crate::kernel::KernelPath;
use crate::nexthop::Resolver;
use crate::queue::{Pkt, Queue};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vipr_abi::steer::SteerKey;
use vipr_dataplane::pipeline::SharedTables;
use vipr_dataplane::tables::{NextHops, Tables};
use vipr_xdp::steer::{steer_keys, Steering};
use vipr_xdp::AttachMode;
use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig};

/// Sizes of one socket's UMEM and rings.
#[derive(Clone, Copy, Debug)]
pub struct XskSizes {
    /// Frames in the UMEM; a power of two.
    pub frames: u32,
    /// Bytes per frame: 2048 or 4096.
    pub frame_size: u32,
    /// Entries of each ring; a power of two, at most `frames / 2`.
    pub ring: u32,
}

impl Default for XskSizes {
    fn default() -> Self {
        XskSizes { frames: 4096, frame_size: 2048, ring: 2048 }
    }
}

/// Where a UMEM frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    Free,
    Fill,
    Engine,
    Tx,
}

/// Frame counts by place, for tests and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameAccounting {
    pub total: u32,
    pub free: u32,
    pub fill: u32,
    pub engine: u32,
    pub tx: u32,
    /// Descriptors from the kernel that were out of bounds or named a frame that was
    /// not the kernel's; they are ignored.
    pub violations: u64,
}

impl FrameAccounting {
    /// Every frame is in exactly one place.
    pub fn balanced(&self) -> bool {
        self.free + self.fill + self.engine + self.tx == self.total
    }
}

/// What the kernel counted for one socket: frames it could not deliver to us.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// Dropped for any reason (the two below among them).
    pub rx_dropped: u64,
    /// Dropped because the RX ring was full: the worker fell behind.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame arrived.
    pub rx_fill_ring_empty: u64,
    pub invalid_descs: u64,
}

/// The UMEM's memory: an anonymous mapping, unmapped after the socket is closed.
struct Area {
    ptr: NonNull<u8>,
    len: usize,
}

impl Area {
    fn map(len: usize) -> Result<Area> {
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mapping a UMEM of {len} bytes"));
        }
        Ok(Area { ptr: NonNull::new(p.cast()).expect("mmap never returns null"), len })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; the socket that shared it
        // with the kernel is closed before (field order of `XskQueue`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Where every frame of one UMEM is, and the free list.
struct Frames {
    frame_size: u64,
    state: Vec<Frame>,
    /// Base addresses of free frames.
    free: Vec<u64>,
    counts: FrameAccounting,
}

impl Frames {
    fn base(&self, addr: u64) -> u64 {
        addr - addr % self.frame_size
    }

    fn state_of(&self, addr: u64) -> Option<Frame> {
        self.state.get((addr / self.frame_size) as usize).copied()
    }

    /// Moves the frame holding `addr` from `from` to `to`; anything else is a bug in
    /// the engine or this driver, and must not go unnoticed.
    fn set(&mut self, addr: u64, from: Frame, to: Frame) {
        let f = (addr / self.frame_size) as usize;
        assert_eq!(self.state[f], from, "UMEM frame {f} is {:?}, not {from:?}", self.state[f]);
        self.state[f] = to;
        *self.count(from) -= 1;
        *self.count(to) += 1;
    }

    fn count(&mut self, f: Frame) -> &mut u32 {
        match f {
            Frame::Free => &mut self.counts.free,
            Frame::Fill => &mut self.counts.fill,
            Frame::Engine => &mut self.counts.engine,
            Frame::Tx => &mut self.counts.tx,
        }
    }

    /// The counters, checked against the per-frame states and the free list: any
    /// disagreement shows as an unbalanced total.
    fn accounting(&self) -> FrameAccounting {
        let mut c = self.counts;
        let count = |s| self.state.iter().filter(|&&f| f == s).count() as u32;
        let recount =
            (count(Frame::Free), count(Frame::Fill), count(Frame::Engine), count(Frame::Tx));
        if recount != (c.free, c.fill, c.engine, c.tx) || c.free as usize != self.free.len() {
            c.total = u32::MAX;
        }
        c
    }
}

/// One AF_XDP socket bound to one queue of one interface.
pub struct XskQueue {
    ifindex: u32,
    queue_id: u32,
    mode: &'static str,
    frame_size: u32,
    frames: Frames,
    /// Frames kept out of the fill ring so `alloc` (copies from other ports) finds some.
    reserve: usize,
    kernel: KernelPath,
    // Drop order matters: rings and sockets close before the memory is unmapped.
    rx: RingRx,
    tx: RingTx,
    fq_cq: DeviceQueue,
    _umem: Umem,
    area: Area,
}

// SAFETY: an `XskQueue` owns its rings, socket and mapping outright; nothing in it is
// tied to the thread that created it. It is moved to its worker before first use and
// used by that thread only.
unsafe impl Send for XskQueue {}

impl XskQueue {
    /// Opens a socket on queue `queue_id` of `ifindex`: zero-copy if the driver can,
    /// copy mode otherwise.
    pub fn open(ifindex: u32, queue_id: u32, sizes: XskSizes, kernel: KernelPath) -> Result<Self> {
        let zc = SocketConfig::XDP_BIND_ZEROCOPY | SocketConfig::XDP_BIND_NEED_WAKEUP;
        match Self::open_with(ifindex, queue_id, sizes, kernel.clone(), zc, "zero-copy") {
            Ok(q) => Ok(q),
            Err(zc_err) => {
                let copy = SocketConfig::XDP_BIND_COPY | SocketConfig::XDP_BIND_NEED_WAKEUP;
                Self::open_with(ifindex, queue_id, sizes, kernel, copy, "copy")
                    .with_context(|| format!("zero-copy failed first ({zc_err:#}), then copy mode"))
            }
        }
    }

    fn open_with(
        ifindex: u32,
        queue_id: u32,
        sizes: XskSizes,
        kernel: KernelPath,
        bind_flags: u16,
        mode: &'static str,
    ) -> Result<Self> {
        let at = || format!("AF_XDP socket on ifindex {ifindex} queue {queue_id} ({mode} mode)");
        if !sizes.frames.is_power_of_two()
            || !sizes.ring.is_power_of_two()
            || sizes.ring * 2 > sizes.frames
        {
            bail!("{}: bad sizes {sizes:?}: powers of two, ring at most half the frames", at());
        }
        let len = sizes.frames as usize * sizes.frame_size as usize;
        let area = Area::map(len).with_context(at)?;
        let config = UmemConfig {
            fill_size: sizes.ring,
            complete_size: sizes.ring,
            frame_size: sizes.frame_size,
            headroom: 0,
            flags: 0,
        };
        let region = NonNull::slice_from_raw_parts(area.ptr, area.len);
        // SAFETY: `region` is a page-aligned mapping of `len` bytes that lives in
        // `self.area` as long as the UMEM does (dropped after it).
        let umem = unsafe { Umem::new(config, region) }
            .map_err(|e| anyhow!("registering the UMEM: {e}"))
            .with_context(at)?;
        let mut info = IfInfo::invalid();
        info.from_ifindex(ifindex)
            .map_err(|e| anyhow!("no interface with index {ifindex}: {e}"))?;
        info.set_queue(queue_id);
        let sock = Socket::with_shared(&info, &umem)
            .map_err(|e| anyhow!("socket: {e}"))
            .with_context(at)?;
        let fq_cq = umem
            .fq_cq(&sock)
            .map_err(|e| anyhow!("fill/completion rings: {e}"))
            .with_context(at)?;
        let ring = std::num::NonZeroU32::new(sizes.ring);
        let user = umem
            .rx_tx(&sock, &SocketConfig { rx_size: ring, tx_size: ring, bind_flags })
            .map_err(|e| anyhow!("RX/TX rings: {e}"))
            .with_context(at)?;
        let rx = user.map_rx().map_err(|e| anyhow!("mapping the RX ring: {e}")).with_context(at)?;
        let tx = user.map_tx().map_err(|e| anyhow!("mapping the TX ring: {e}")).with_context(at)?;
        umem.bind(&user).map_err(|e| anyhow!("bind: {e}")).with_context(at)?;
        let frames = sizes.frames;
        let mut q = XskQueue {
            ifindex,
            queue_id,
            mode,
            frame_size: sizes.frame_size,
            frames: Frames {
                frame_size: sizes.frame_size as u64,
                state: vec![Frame::Free; frames as usize],
                free: (0..frames as u64).rev().map(|i| i * sizes.frame_size as u64).collect(),
                counts: FrameAccounting { total: frames, free: frames, ..Default::default() },
            },
            reserve: (frames - sizes.ring) as usize / 2,
            kernel,
            rx,
            tx,
            fq_cq,
            _umem: umem,
            area,
        };
        q.refill();
        Ok(q)
    }

    /// The socket's file descriptor, for the XSKMAP.
    pub fn fd(&self) -> i32 {
        self.rx.as_raw_fd()
    }

    pub fn accounting(&self) -> FrameAccounting {
        self.frames.accounting()
    }

    /// The kernel's counters of this socket (XDP_STATISTICS).
    pub fn socket_stats(&self) -> Result<SocketStats> {
        let s = self.fq_cq.statistics_v2().map_err(|e| {
            anyhow!("XDP_STATISTICS of ifindex {} queue {}: {e}", self.ifindex, self.queue_id)
        })?;
        Ok(SocketStats {
            rx_dropped: s.rx_dropped,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty: s.rx_fill_ring_empty_descs,
            invalid_descs: s.rx_invalid_descs + s.tx_invalid_descs,
        })
    }

    /// Puts free frames (all but the reserve) into the fill ring.
    fn refill(&mut self) {
        let spare = self.frames.free.len().saturating_sub(self.reserve) as u32;
        if spare == 0 {
            return;
        }
        let mut w = self.fq_cq.fill(spare);
        for _ in 0..w.capacity().min(spare) {
            let addr = self.frames.free.pop().expect("spare counted from the free list");
            w.insert_once(addr);
            self.frames.set(addr, Frame::Free, Frame::Fill);
        }
        w.commit();
    }

    /// Takes transmitted frames back from the completion ring.
    fn reap(&mut self) {
        if self.frames.counts.tx == 0 {
            return;
        }
        let mut c = self.fq_cq.complete(self.frames.counts.tx);
        while let Some(addr) = c.read() {
            if self.frames.state_of(addr) != Some(Frame::Tx) {
                self.frames.counts.violations += 1;
                continue;
            }
            self.frames.set(addr, Frame::Tx, Frame::Free);
            self.frames.free.push(self.frames.base(addr));
        }
        c.release();
    }

    fn bytes(&mut self, addr: u64, len: u32) -> &mut [u8] {
        let end = addr.checked_add(len as u64).expect("frame end overflows");
        assert!(end as usize <= self.area.len, "frame {addr:#x}+{len} beyond the UMEM");
        // SAFETY: in bounds (checked above); the frame is the engine's (not in any ring),
        // so the kernel does not write it meanwhile, and `&mut self` keeps it unique.
        unsafe {
            std::slice::from_raw_parts_mut(self.area.ptr.as_ptr().add(addr as usize), len as usize)
        }
    }
}

impl Queue for XskQueue {
    fn ifindex(&self) -> u32 {
        self.ifindex
    }
    fn queue_id(&self) -> u32 {
        self.queue_id
    }
    fn pool_id(&self) -> Option<u64> {
        None
    }
    fn mode(&self) -> &'static str {
        self.mode
    }
    fn capacity(&self) -> usize {
        self.frame_size as usize
    }

    fn rx_burst(&mut self, pkts: &mut [Pkt]) -> usize {
        let frame_size = self.frame_size as u64;
        let frames = &mut self.frames;
        let mut r = self.rx.receive(pkts.len() as u32);
        let mut n = 0;
        while n < pkts.len() {
            let Some(d) = r.read() else { break };
            // The kernel's descriptor is checked before the frame is touched: inside one
            // frame of our UMEM, and a frame we gave the kernel to fill.
            let in_bounds = d.addr % frame_size + d.len as u64 <= frame_size;
            if !in_bounds || frames.state_of(d.addr) != Some(Frame::Fill) {
                frames.counts.violations += 1;
                continue;
            }
            frames.set(d.addr, Frame::Fill, Frame::Engine);
            pkts[n] = Pkt { raw: d.addr, len: d.len };
            n += 1;
        }
        r.release();
        n
    }

    fn alloc(&mut self, out: &mut [Pkt]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(addr) = self.frames.free.pop() else { break };
            self.frames.set(addr, Frame::Free, Frame::Engine);
            out[n] = Pkt { raw: addr, len: 0 };
            n += 1;
        }
        n
    }

    fn data(&mut self, pkt: &Pkt) -> &mut [u8] {
        assert_eq!(
            self.frames.state_of(pkt.raw),
            Some(Frame::Engine),
            "data() of a frame the engine does not hold"
        );
        self.bytes(pkt.raw, pkt.len)
    }

    fn set_len(&mut self, pkt: &mut Pkt, len: usize) -> bool {
        let offset = pkt.raw % self.frame_size as u64;
        if offset as usize + len > self.frame_size as usize {
            return false;
        }
        pkt.len = len as u32;
        true
    }

    fn tx_burst(&mut self, pkts: &[Pkt]) -> usize {
        let mut w = self.tx.transmit(pkts.len() as u32);
        let n = (w.capacity() as usize).min(pkts.len());
        w.insert(pkts[..n].iter().map(|p| XdpDesc { addr: p.raw, len: p.len, options: 0 }));
        w.commit();
        drop(w);
        for p in &pkts[..n] {
            self.frames.set(p.raw, Frame::Engine, Frame::Tx);
        }
        if n > 0 && self.tx.needs_wakeup() {
            self.tx.wake();
        }
        n
    }

    fn free(&mut self, pkts: &[Pkt]) {
        for p in pkts {
            self.frames.set(p.raw, Frame::Engine, Frame::Free);
            self.frames.free.push(self.frames.base(p.raw));
        }
    }

    fn to_kernel(&mut self, pkts: &[Pkt]) -> usize {
        let mut delivered = 0;
        for p in pkts {
            let kernel = self.kernel.clone();
            if kernel.send(self.data(p)) {
                delivered += 1;
            }
        }
        self.free(pkts);
        delivered
    }

    fn maintain(&mut self) {
        self.reap();
        self.refill();
        if self.fq_cq.needs_wakeup() {
            self.fq_cq.wake();
        }
        // Copy mode transmits in the sendto() that wakes the ring, a few dozen frames a
        // call: keep kicking while frames wait.
        if self.frames.counts.tx > 0 && self.tx.needs_wakeup() {
            self.tx.wake();
        }
    }

    fn outstanding(&self) -> usize {
        self.frames.counts.engine as usize
    }
}

/// Where the pipeline's next hops come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHopSource {
    /// The kernel's routes and neighbours, kept fresh by a background thread.
    Kernel,
    /// The control plane's tables as given (fixture replays, static setups).
    Tables,
}

/// What the steering program sends to the sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteerMode {
    /// VIP traffic and replies of tracked flows (from the tables); the rest to the kernel.
    Tables,
    /// Every frame (fixture replays).
    All,
}

#[derive(Clone, Debug)]
pub struct AfxdpInterface {
    pub name: String,
    pub attach: AttachMode,
    /// Queue ids to serve; worker k serves the k-th queue of every interface.
    pub queues: Vec<u32>,
    /// Empty, or one core per queue: worker k is pinned to `cores[k]`.
    pub cores: Vec<u32>,
}

#[derive(Clone)]
pub struct AfxdpConfig {
    pub interfaces: Vec<AfxdpInterface>,
    pub engine: EngineOptions,
    pub sizes: XskSizes,
    pub steer: SteerMode,
    pub next_hops: NextHopSource,
    /// `None`: raw sockets in the calling thread's namespace (see `kernel`).
    pub kernel: Option<KernelPath>,
}

impl AfxdpConfig {
    pub fn new(interfaces: Vec<AfxdpInterface>) -> Self {
        AfxdpConfig {
            interfaces,
            engine: EngineOptions::default(),
            sizes: XskSizes::default(),
            steer: SteerMode::Tables,
            next_hops: NextHopSource::Kernel,
            kernel: None,
        }
    }
}

/// The AF_XDP dataplane on `config.interfaces`, reading the tables the control plane
/// stores into `tables`. Must be called in the network namespace of the interfaces.
///
/// With `NextHopSource::Kernel` the workers read a copy of the control plane's tables
/// whose next hops a background thread fills from the kernel's routes and neighbours
/// (published again when either changes); with `Tables` they read `tables` directly.
pub fn start(config: AfxdpConfig, tables: &SharedTables) -> Result<Engine> {
    let workers_n = config.interfaces.first().map_or(0, |i| i.queues.len());
    if workers_n == 0 {
        bail!("the AF_XDP dataplane needs at least one interface with one queue");
    }
    for i in &config.interfaces {
        if i.queues.len() != workers_n {
            bail!(
                "interface {} has {} queues, {} has {}: every interface needs as many (worker k serves queue k of each)",
                i.name,
                i.queues.len(),
                config.interfaces[0].name,
                workers_n
            );
        }
        if !i.cores.is_empty() && i.cores.len() != i.queues.len() {
            bail!("interface {}: {} cores for {} queues", i.name, i.cores.len(), i.queues.len());
        }
    }
    // One worker serves queue k of every interface, so the interfaces that name a core
    // for it must name the same one.
    for k in 0..workers_n {
        let named: Vec<(&str, u32)> = config
            .interfaces
            .iter()
            .filter_map(|i| Some((i.name.as_str(), *i.cores.get(k)?)))
            .collect();
        if let Some(&(other, core)) = named.iter().find(|(_, c)| *c != named[0].1) {
            bail!(
                "queue {k} of {} is pinned to core {}, of {other} to core {core}: worker {k} serves both, give them the same core",
                named[0].0,
                named[0].1
            );
        }
    }
    let kernel = match config.kernel.clone() {
        Some(k) => k,
        None => KernelPath::raw()?,
    };
    let mut steering = Steering::load().context("loading the AF_XDP steering program")?;
    steering.set_redirect_all(config.steer == SteerMode::All)?;
    steering.set_keys(&steer_keys(&tables.load()))?;
    let mut plans: Vec<WorkerPlan<XskQueue>> = (0..workers_n)
        .map(|k| WorkerPlan {
            queues: Vec::new(),
            core: config.interfaces.iter().find_map(|i| i.cores.get(k).copied()),
        })
        .collect();
    let mut ifindexes = Vec::new();
    for i in &config.interfaces {
        let ifindex = ifindex_of(&i.name)?;
        ifindexes.push(ifindex);
        let max_queue = i.queues.iter().max().copied().unwrap_or(0);
        steering.add_port(ifindex, max_queue + 1)?;
        for (k, &q) in i.queues.iter().enumerate() {
            let xsk = XskQueue::open(ifindex, q, config.sizes, kernel.clone())
                .with_context(|| format!("interface {}", i.name))?;
            steering
                .set_socket(ifindex, q, xsk.rx.as_raw_fd())
                .with_context(|| format!("registering the socket of {} queue {q}", i.name))?;
            plans[k].queues.push(xsk);
        }
        steering
            .attach(&i.name, i.attach)
            .with_context(|| format!("attaching the steering program to {}", i.name))?;
    }
    let worker_tables = match config.next_hops {
        NextHopSource::Tables => tables.clone(),
        NextHopSource::Kernel => {
            SharedTables::new(Tables { next_hops: NextHops::default(), ..(*tables.load()).clone() })
        }
    };
    let mut engine = Engine::start(plans, &worker_tables, config.engine.clone())?;
    let control = Control {
        control_plane: tables.clone(),
        workers: worker_tables,
        steering,
        steer: config.steer,
        resolver: (config.next_hops == NextHopSource::Kernel)
            .then(|| Resolver::new(ifindexes, &kernel)),
        retired: HashMap::new(),
        current: HashMap::new(),
    };
    engine.keep_until_stopped(Box::new(control.spawn()?));
    Ok(engine)
}

fn ifindex_of(name: &str) -> Result<u32> {
    let c = CString::new(name).with_context(|| format!("interface name {name:?}"))?;
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("interface {name} (if_nametoindex)"));
    }
    Ok(i)
}

/// The AF_XDP dataplane's background thread: follows the control plane's tables into
/// the steering program's match table, and (with kernel next hops) republishes the
/// tables with the resolver's next hops whenever either changes.
///
/// A key that leaves the tables (a backend removed, a VIP deleted) stays steered for
/// the longest conntrack timeout: the flows the workers still track to a removed
/// backend must keep reaching them, or its replies would reach the client
/// untranslated. Frames that match a retired key but no flow pass to the kernel.
struct Control {
    control_plane: SharedTables,
    workers: SharedTables,
    steering: Steering,
    steer: SteerMode,
    resolver: Option<Resolver>,
    /// Keys no longer in the tables, steered until the instant given.
    retired: HashMap<SteerKey, (u32, Instant)>,
    current: HashMap<SteerKey, u32>,
}

/// Stops and joins the control thread when dropped (after the workers stopped); the
/// steering program is detached with it.
struct ControlThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ControlThread {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const FOLLOW_EVERY: Duration = Duration::from_millis(5);
const RESOLVE_EVERY: Duration = Duration::from_millis(200);
/// New destinations from the exception path are looked up this soon at the earliest.
const LEARN_EVERY: Duration = Duration::from_millis(20);

impl Control {
    fn follow_keys(&mut self, t: &Tables) {
        let fresh = steer_keys(t);
        let s = &t.settings;
        let linger = Duration::from_nanos(s.tcp_established_timeout_ns.max(s.udp_timeout_ns));
        let until = Instant::now() + linger;
        for (k, flags) in &self.current {
            let kept = fresh.get(k).copied().unwrap_or(0);
            if flags & !kept != 0 {
                let r = self.retired.entry(*k).or_insert((0, until));
                *r = (r.0 | (flags & !kept), until);
            }
        }
        for k in fresh.keys() {
            self.retired.remove(k);
        }
        self.current = fresh;
        self.program_keys();
    }

    fn program_keys(&mut self) {
        if self.steer != SteerMode::Tables {
            return;
        }
        let mut keys = self.current.clone();
        for (k, (flags, _)) in &self.retired {
            *keys.entry(*k).or_insert(0) |= flags;
        }
        if let Err(e) = self.steering.set_keys(&keys) {
            eprintln!("vipr: updating the AF_XDP steering table: {e}");
        }
    }

    fn spawn(mut self) -> Result<ControlThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vipr-afxdp-ctl".into())
            .spawn(move || self.run(&flag))
            .context("spawning the AF_XDP control thread")?;
        Ok(ControlThread { stop, thread: Some(thread) })
    }

    fn run(&mut self, stop: &AtomicBool) {
        let mut seen = self.control_plane.load();
        self.current = steer_keys(&seen);
        if let Some(r) = self.resolver.as_mut() {
            r.want_backends(&seen);
        }
        let mut last_resolve: Option<Instant> = None;
        let mut last_expiry = Instant::now();
        let mut hops: Vec<vipr_dataplane::tables::NextHopSpec> = Vec::new();
        while !stop.load(Relaxed) {
            let now = self.control_plane.load();
            let changed = !Arc::ptr_eq(&now, &seen);
            if changed {
                seen = now.clone();
                self.follow_keys(&seen);
            }
            if last_expiry.elapsed() >= Duration::from_secs(1) {
                last_expiry = Instant::now();
                let before = self.retired.len();
                self.retired.retain(|_, (_, until)| *until > last_expiry);
                if self.retired.len() != before {
                    self.program_keys();
                }
            }
            let mut republish = changed;
            if let Some(r) = self.resolver.as_mut() {
                if changed {
                    r.want_backends(&seen);
                }
                let since = last_resolve.map_or(RESOLVE_EVERY, |t| t.elapsed());
                let learn = since >= LEARN_EVERY && r.absorb_misses();
                if changed || learn || since >= RESOLVE_EVERY {
                    last_resolve = Some(Instant::now());
                    let fresh = r.refresh();
                    if fresh != hops {
                        hops = fresh;
                        republish = true;
                    }
                }
                if republish {
                    self.workers
                        .store(Tables { next_hops: NextHops::new(&hops), ..(*seen).clone() });
                }
            }
            std::thread::sleep(FOLLOW_EVERY);
        }
    }
}
