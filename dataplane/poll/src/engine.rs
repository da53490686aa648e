//! The poll-mode engine: one busy-polling worker thread per queue set, each running its
//! own [`Pipeline`] over the tables the control plane publishes in a [`SharedTables`].
//!
//! A worker owns one queue of every port it serves (queue k of each interface, the
//! run-to-completion shape of DPDK applications), so `Redirect { ifindex }` is a
//! transmit on another queue of the same thread: no hand-off between threads, no lock.
//! Per loop turn it maintains each queue, receives a batch (at least 32) from each,
//! runs the pipeline on every frame in place, and sends every batch out at once.
//! Nothing on that path allocates or locks: the batch arrays are sized when the worker
//! starts; stats are relaxed atomics written once per batch; the pipeline's counters
//! are published (a clone under a mutex) only every 100 ms or when a reader asks.
//!
//! Conntrack is per worker. A flow's replies must therefore arrive on the same worker
//! as its requests: with one queue per port (veth) that always holds; on a real NIC
//! with several queues, RSS must be symmetric (the same queue for both directions of a
//! flow, e.g. a symmetric Toeplitz key) and the ports' queue k served by the same worker,
//! which this shape gives. A reply that reaches another worker finds no flow there and
//! passes to the kernel untranslated, as on a conntrack miss.
//!
//! Shutdown: [`Engine::stop`] (or SIGTERM, through [`Engine::stop_on_signal`]) raises a
//! flag the workers read every turn. A worker holds no frame between turns, so it only
//! lets its drivers finish what is in flight and hands its queues back: the
//! [`StopReport`] says how many buffers each queue still lent out (zero unless a
//! driver or the engine leaked one).

use crate::queue::{Pkt, Queue};
use anyhow::{anyhow, bail, Context, Result};
use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vipr_dataplane::pipeline::{Counters, Pipeline, SharedTables, Verdict};

/// Frames per receive burst unless configured otherwise.
pub const DEFAULT_BATCH: usize = 64;
/// The smallest burst the engine accepts: batching is what amortises the ring and
/// syscall costs.
pub const MIN_BATCH: usize = 32;
/// How often a worker publishes its pipeline counters unasked.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// How long a stopping worker waits for its drivers' in-flight frames.
const DRAIN_FOR: Duration = Duration::from_millis(100);

/// The clock the pipeline's timeouts run on.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// CLOCK_MONOTONIC in nanoseconds, the XDP program's `bpf_ktime_get_ns`.
    #[default]
    Monotonic,
    /// A value the caller sets: fixture replays, tests of timeouts.
    Fixed(Arc<AtomicU64>),
}

impl Clock {
    #[inline]
    fn now(&self) -> u64 {
        match self {
            Clock::Monotonic => monotonic_ns(),
            Clock::Fixed(t) => t.load(Relaxed),
        }
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Flows each worker's conntrack holds.
    pub conntrack_capacity: usize,
    /// Frames per burst, at least [`MIN_BATCH`].
    pub batch: usize,
    pub clock: Clock,
    /// `None`: poll without pause (a dedicated core). `Some(d)`: sleep `d` after 1000
    /// empty turns in a row (shared cores: tests, small machines).
    pub idle_sleep: Option<Duration>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            conntrack_capacity: vipr_abi::maps::DEFAULT_CONNTRACK_FLOWS as usize,
            batch: DEFAULT_BATCH,
            clock: Clock::Monotonic,
            idle_sleep: None,
        }
    }
}

/// One worker: its queues (one per port) and the core it is pinned to.
pub struct WorkerPlan<Q> {
    pub queues: Vec<Q>,
    pub core: Option<u32>,
}

/// A queue's counters, written by its worker once per batch, read by anyone.
#[derive(Debug, Default)]
struct QueueCounters {
    rx: AtomicU64,
    tx: AtomicU64,
    drops: AtomicU64,
    to_kernel: AtomicU64,
    tx_errors: AtomicU64,
    polls: AtomicU64,
    busy_polls: AtomicU64,
}

/// A queue's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueStats {
    pub ifindex: u32,
    pub queue_id: u32,
    pub core: Option<u32>,
    /// The driver's mode: `"zero-copy"`, `"copy"`, `"dpdk"`, `"memory"`.
    pub mode: &'static str,
    pub rx: u64,
    /// Frames handed to the driver for transmission (Tx and Redirect verdicts).
    pub tx: u64,
    /// Frames the pipeline dropped.
    pub drops: u64,
    /// Frames sent to the kernel (Pass verdicts, unresolved next hops).
    pub to_kernel: u64,
    /// Frames lost on the way out: TX ring full, no buffer for a copy, no such port,
    /// the kernel refused them.
    pub tx_errors: u64,
    /// Poll turns of this queue, and how many found frames.
    pub polls: u64,
    pub busy_polls: u64,
}

impl QueueStats {
    /// The fraction of polls that found work.
    pub fn busy_share(&self) -> f64 {
        if self.polls == 0 {
            0.0
        } else {
            self.busy_polls as f64 / self.polls as f64
        }
    }
}

#[derive(Default)]
struct Snapshot {
    counters: Counters,
    conntrack_flows: usize,
}

struct WorkerShared {
    queues: Vec<(u32, u32, &'static str, QueueCounters)>,
    core: Option<u32>,
    snapshot: Mutex<Snapshot>,
    /// A reader wants a fresh snapshot when `requested` > `published`.
    requested: AtomicU64,
    published: AtomicU64,
    /// The worker's thread id, for CPU accounting (`/proc/self/task/<tid>/stat`).
    tid: AtomicU64,
}

/// What a stopped worker hands back.
struct WorkerExit {
    queues: Box<dyn Any + Send>,
    outstanding: Vec<(u32, u32, usize)>,
}

struct WorkerHandle {
    shared: Arc<WorkerShared>,
    thread: Option<JoinHandle<WorkerExit>>,
}

/// Running workers, and what must live exactly as long as they do (the steering
/// program, the next-hop resolver), dropped after the workers stopped.
pub struct Engine {
    stop: Arc<AtomicBool>,
    workers: Vec<WorkerHandle>,
    guards: Vec<Box<dyn Any + Send + Sync>>,
}

/// Per queue: (ifindex, queue id, buffers still lent to the engine).
pub struct StopReport {
    pub outstanding: Vec<(u32, u32, usize)>,
    queues: Vec<Box<dyn Any + Send>>,
}

impl StopReport {
    /// Buffers that were never given back to their driver.
    pub fn leaked(&self) -> usize {
        self.outstanding.iter().map(|q| q.2).sum()
    }

    /// The queues the workers drove, for drivers' own accounting checks.
    pub fn into_queues<Q: 'static>(self) -> Vec<Q> {
        self.queues
            .into_iter()
            .filter_map(|b| b.downcast::<Vec<Q>>().ok())
            .flat_map(|v| *v)
            .collect()
    }
}

impl Engine {
    /// Starts one thread per plan: pins it, builds its pipeline, and polls until stopped.
    /// Returns once every worker runs, or the first worker's error.
    pub fn start<Q: Queue + Send + 'static>(
        plans: Vec<WorkerPlan<Q>>,
        tables: &SharedTables,
        options: EngineOptions,
    ) -> Result<Engine> {
        if options.batch < MIN_BATCH {
            bail!("batch size {} is below the minimum of {MIN_BATCH}", options.batch);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut engine = Engine { stop: stop.clone(), workers: Vec::new(), guards: Vec::new() };
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        for (w, plan) in plans.into_iter().enumerate() {
            if plan.queues.is_empty() {
                bail!("worker {w} has no queue");
            }
            let shared = Arc::new(WorkerShared {
                queues: plan
                    .queues
                    .iter()
                    .map(|q| (q.ifindex(), q.queue_id(), q.mode(), QueueCounters::default()))
                    .collect(),
                core: plan.core,
                snapshot: Mutex::new(Snapshot::default()),
                requested: AtomicU64::new(0),
                published: AtomicU64::new(0),
                tid: AtomicU64::new(0),
            });
            let worker = Worker {
                pipeline: Pipeline::new(tables, options.conntrack_capacity),
                queues: plan.queues,
                shared: shared.clone(),
                stop: stop.clone(),
                options: options.clone(),
            };
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("vipr-poll-{w}"))
                .spawn(move || worker.run(ready))
                .with_context(|| format!("spawning poll worker {w}"))?;
            engine.workers.push(WorkerHandle { shared, thread: Some(thread) });
        }
        drop(ready_tx);
        for _ in 0..engine.workers.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = engine.shutdown();
                    return Err(e);
                }
                Err(_) => {
                    let _ = engine.shutdown();
                    bail!("a poll worker ended before it started polling");
                }
            }
        }
        Ok(engine)
    }

    /// Keeps `guard` alive until the workers have stopped.
    pub fn keep_until_stopped(&mut self, guard: Box<dyn Any + Send + Sync>) {
        self.guards.push(guard);
    }

    /// The flag that stops the workers; raising it is what `stop` does first.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Raises the stop flag on `signal` (e.g. `libc::SIGTERM`); the caller then calls
    /// `stop` to join the workers.
    pub fn stop_on_signal(&self, signal: i32) -> Result<()> {
        signal_hook::flag::register(signal, self.stop.clone())
            .with_context(|| format!("registering a handler for signal {signal}"))?;
        Ok(())
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    pub fn queue_stats(&self) -> Vec<QueueStats> {
        let mut out = Vec::new();
        for w in &self.workers {
            for (ifindex, queue_id, mode, c) in &w.shared.queues {
                out.push(QueueStats {
                    ifindex: *ifindex,
                    queue_id: *queue_id,
                    core: w.shared.core,
                    mode,
                    rx: c.rx.load(Relaxed),
                    tx: c.tx.load(Relaxed),
                    drops: c.drops.load(Relaxed),
                    to_kernel: c.to_kernel.load(Relaxed),
                    tx_errors: c.tx_errors.load(Relaxed),
                    polls: c.polls.load(Relaxed),
                    busy_polls: c.busy_polls.load(Relaxed),
                });
            }
        }
        out
    }

    /// Thread ids of the workers (for CPU accounting from /proc/self/task).
    pub fn worker_tids(&self) -> Vec<u64> {
        self.workers.iter().map(|w| w.shared.tid.load(Relaxed)).collect()
    }

    /// Asks every worker for fresh counters and waits (at most a second) for them.
    fn refresh(&self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        let wanted: Vec<u64> =
            self.workers.iter().map(|w| w.shared.requested.fetch_add(1, Relaxed) + 1).collect();
        for (w, want) in self.workers.iter().zip(wanted) {
            while w.shared.published.load(Relaxed) < want
                && Instant::now() < deadline
                && w.thread.as_ref().is_some_and(|t| !t.is_finished())
            {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// The pipeline counters of every worker, summed; fresh as of this call.
    pub fn counters(&self) -> Counters {
        self.refresh();
        let mut sum = Counters::default();
        for w in &self.workers {
            sum.add(&w.shared.snapshot.lock().unwrap().counters);
        }
        sum
    }

    /// Flows in every worker's conntrack; fresh as of this call.
    pub fn conntrack_flows(&self) -> usize {
        self.refresh();
        self.workers.iter().map(|w| w.shared.snapshot.lock().unwrap().conntrack_flows).sum()
    }

    /// Stops and joins every worker, then drops the guards.
    pub fn stop(mut self) -> Result<StopReport> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<StopReport> {
        self.stop.store(true, Relaxed);
        let mut report = StopReport { outstanding: Vec::new(), queues: Vec::new() };
        let mut panicked = 0;
        for w in &mut self.workers {
            let Some(thread) = w.thread.take() else { continue };
            match thread.join() {
                Ok(exit) => {
                    report.outstanding.extend(exit.outstanding);
                    report.queues.push(exit.queues);
                }
                Err(_) => panicked += 1,
            }
        }
        self.guards.clear();
        if panicked > 0 {
            return Err(anyhow!("{panicked} poll worker(s) panicked"));
        }
        Ok(report)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

struct Worker<Q> {
    pipeline: Pipeline,
    queues: Vec<Q>,
    shared: Arc<WorkerShared>,
    stop: Arc<AtomicBool>,
    options: EngineOptions,
}

/// Per-turn tallies of one queue, added to its atomics once per batch.
#[derive(Default, Clone, Copy)]
struct Tally {
    rx: u64,
    tx: u64,
    drops: u64,
    to_kernel: u64,
    tx_errors: u64,
}

impl<Q: Queue + Send + 'static> Worker<Q> {
    fn run(mut self, ready: mpsc::Sender<Result<()>>) -> WorkerExit {
        // SAFETY: gettid has no arguments and cannot fail.
        self.shared.tid.store(unsafe { libc::gettid() } as u64, Relaxed);
        if let Some(core) = self.shared.core {
            if let Err(e) = pin_to_core(core) {
                let _ = ready.send(Err(e));
                return self.exit();
            }
        }
        let _ = ready.send(Ok(()));
        drop(ready);
        self.poll();
        self.drain();
        self.exit()
    }

    fn poll(&mut self) {
        let n = self.queues.len();
        let batch = self.options.batch;
        let ports: Vec<u32> = self.queues.iter().map(|q| q.ifindex()).collect();
        let pools: Vec<Option<u64>> = self.queues.iter().map(|q| q.pool_id()).collect();
        let mut rx = vec![Pkt::default(); batch];
        // A port may get a whole batch from every queue in one turn.
        let mut out: Vec<Vec<Pkt>> = (0..n).map(|_| Vec::with_capacity(batch * n)).collect();
        let mut kernel: Vec<Pkt> = Vec::with_capacity(batch);
        let mut free: Vec<Pkt> = Vec::with_capacity(batch);
        let mut tally = vec![Tally::default(); n];
        let mut empty_turns = 0u32;
        let mut last_publish = Instant::now();
        while !self.stop.load(Relaxed) {
            let mut busy = false;
            for i in 0..n {
                self.queues[i].maintain();
                let got = self.queues[i].rx_burst(&mut rx);
                let c = &self.shared.queues[i].3;
                add(&c.polls, 1);
                if got == 0 {
                    continue;
                }
                busy = true;
                add(&c.busy_polls, 1);
                tally[i].rx += got as u64;
                let now = self.options.clock.now();
                let ingress = ports[i];
                for pkt in &rx[..got] {
                    let frame = self.queues[i].data(pkt);
                    match self.pipeline.process(frame, ingress, now) {
                        Verdict::Tx => out[i].push(*pkt),
                        Verdict::Drop { .. } => {
                            tally[i].drops += 1;
                            free.push(*pkt);
                        }
                        Verdict::Pass => kernel.push(*pkt),
                        Verdict::Redirect { ifindex } => {
                            match ports.iter().position(|&p| p == ifindex) {
                                Some(j)
                                    if j == i || (pools[i].is_some() && pools[i] == pools[j]) =>
                                {
                                    out[j].push(*pkt)
                                }
                                Some(j) => {
                                    match copy_to(&mut self.queues, i, j, pkt) {
                                        Some(copy) => out[j].push(copy),
                                        None => tally[i].tx_errors += 1,
                                    }
                                    free.push(*pkt);
                                }
                                None => {
                                    tally[i].tx_errors += 1;
                                    free.push(*pkt);
                                }
                            }
                        }
                    }
                }
                if !kernel.is_empty() {
                    let delivered = self.queues[i].to_kernel(&kernel);
                    tally[i].to_kernel += delivered as u64;
                    tally[i].tx_errors += (kernel.len() - delivered) as u64;
                    kernel.clear();
                }
                if !free.is_empty() {
                    self.queues[i].free(&free);
                    free.clear();
                }
            }
            for (j, pending) in out.iter_mut().enumerate() {
                if pending.is_empty() {
                    continue;
                }
                let q = &mut self.queues[j];
                let mut sent = q.tx_burst(pending);
                if sent < pending.len() {
                    // The ring was full: let the driver reap completions, try once more.
                    q.maintain();
                    sent += q.tx_burst(&pending[sent..]);
                }
                if sent < pending.len() {
                    q.free(&pending[sent..]);
                    tally[j].tx_errors += (pending.len() - sent) as u64;
                }
                tally[j].tx += sent as u64;
                pending.clear();
            }
            if busy {
                for (t, (_, _, _, c)) in tally.iter_mut().zip(&self.shared.queues) {
                    add(&c.rx, t.rx);
                    add(&c.tx, t.tx);
                    add(&c.drops, t.drops);
                    add(&c.to_kernel, t.to_kernel);
                    add(&c.tx_errors, t.tx_errors);
                    *t = Tally::default();
                }
                empty_turns = 0;
            } else {
                empty_turns = empty_turns.saturating_add(1);
                if let Some(d) = self.options.idle_sleep.filter(|_| empty_turns >= 1000) {
                    std::thread::sleep(d);
                } else {
                    std::hint::spin_loop();
                }
            }
            let asked = self.shared.requested.load(Relaxed) > self.shared.published.load(Relaxed);
            if asked || (!busy && last_publish.elapsed() >= PUBLISH_EVERY) {
                self.publish();
                last_publish = Instant::now();
            }
        }
    }

    fn publish(&mut self) {
        let requested = self.shared.requested.load(Relaxed);
        {
            let mut s = self.shared.snapshot.lock().unwrap();
            s.counters.clone_from(&self.pipeline.counters);
            s.conntrack_flows = self.pipeline.conntrack.len();
        }
        self.shared.published.store(requested, Relaxed);
    }

    /// Lets the drivers finish what they have in flight (TX completions), briefly.
    fn drain(&mut self) {
        let until = Instant::now() + DRAIN_FOR;
        while Instant::now() < until {
            for q in &mut self.queues {
                q.maintain();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.publish();
    }

    fn exit(self) -> WorkerExit {
        let outstanding =
            self.queues.iter().map(|q| (q.ifindex(), q.queue_id(), q.outstanding())).collect();
        WorkerExit { queues: Box::new(self.queues), outstanding }
    }
}

#[inline]
fn add(counter: &AtomicU64, n: u64) {
    if n != 0 {
        counter.store(counter.load(Relaxed) + n, Relaxed);
    }
}

/// Copies the frame `pkt` of queue `from` into a new buffer of queue `to`.
fn copy_to<Q: Queue>(queues: &mut [Q], from: usize, to: usize, pkt: &Pkt) -> Option<Pkt> {
    let (src, dst) = if from < to {
        let (a, b) = queues.split_at_mut(to);
        (&mut a[from], &mut b[0])
    } else {
        let (a, b) = queues.split_at_mut(from);
        (&mut b[0], &mut a[to])
    };
    let mut copy = [Pkt::default()];
    if dst.alloc(&mut copy) == 0 {
        return None;
    }
    let [mut copy] = copy;
    let bytes = src.data(pkt);
    if !dst.set_len(&mut copy, bytes.len()) {
        dst.free(&[copy]);
        return None;
    }
    dst.data(&copy).copy_from_slice(bytes);
    Some(copy)
}

fn pin_to_core(core: u32) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if core as usize >= libc::CPU_SETSIZE as usize {
        bail!("core {core} is beyond what sched_setaffinity can name");
    }
    // SAFETY: `core` is below CPU_SETSIZE, checked above.
    unsafe { libc::CPU_SET(core as usize, &mut set) };
    // SAFETY: pid 0 is this thread; `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning a poll worker to core {core} (sched_setaffinity)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The control plane shares one engine between its threads (status, reload).
    #[test]
    fn an_engine_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<super::Engine>();
    }
}
