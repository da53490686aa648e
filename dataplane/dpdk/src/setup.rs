//! `dataplane: dpdk` from the config: the EAL from `dpdk.eal_args`, one mbuf pool of
//! `dpdk.mbufs`, every port of `dpdk.ports`, and the engine's worker plans.

use crate::eal::Eal;
use crate::error::Result;
use crate::mempool::Mempool;
use crate::port::{Port, PortOptions};
use crate::queue::{DpdkQueue, KernelPath, Misses};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vipr_config::DpdkConfig;
use vipr_dataplane::pipeline::SharedTables;
use vipr_dataplane::tables::{NextHopSpec, NextHops, Tables};
use vipr_poll::nexthop::Resolver;
use vipr_poll::{Engine, EngineOptions, WorkerPlan};

/// How often the next-hop follower looks at the control plane's tables and the misses.
const FOLLOW_EVERY: Duration = Duration::from_millis(10);
/// How often it re-reads the kernel's routes and neighbours when nothing asks it to.
const RESOLVE_EVERY: Duration = Duration::from_millis(500);

/// Ports without a kernel interface (PCI NICs, rings) get `SYNTHETIC_IFINDEX | port id`
/// as the interface index next hops name them by; the kernel's ifindexes stay far below.
pub const SYNTHETIC_IFINDEX: u32 = 0x4000_0000;

/// The DPDK side of a running dataplane. Dropping it stops and closes the ports once the
/// engine has handed their queues back (the queues hold the ports too).
pub struct Dpdk {
    pub eal: &'static Eal,
    pub pool: Arc<Mempool>,
    pub ports: Vec<Arc<Port>>,
}

impl Dpdk {
    /// Initialises the EAL (or joins the process's EAL if it runs with the same
    /// arguments), makes the pool and opens every port with `queues` RX/TX queue pairs.
    ///
    /// `net_af_packet` and `net_tap` ports talk to the kernel interface of the network
    /// namespace of the calling thread, at open and at stop: open and drop them there.
    pub fn open(cfg: &DpdkConfig, queues: u16) -> Result<Dpdk> {
        static POOLS: AtomicU32 = AtomicU32::new(0);
        let eal = Eal::init(&cfg.eal_args)?;
        let name = format!("vipr-mbufs-{}", POOLS.fetch_add(1, Ordering::Relaxed));
        let pool = Arc::new(Mempool::new(eal, &name, cfg.mbufs)?);
        let opts = PortOptions { queues, ..PortOptions::default() };
        let ports = cfg
            .ports
            .iter()
            .map(|spec| Port::open(eal, spec, &opts, pool.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Dpdk { eal, pool, ports })
    }

    /// One worker per queue number: worker k drives queue k of every port (the engine's
    /// run-to-completion shape, so a redirect stays on one thread), pinned to `cores[k]`
    /// when given. Passed frames take each port's natural exception path
    /// ([`KernelPath::default_for`]).
    pub fn plans(&self, cores: &[Option<u32>]) -> Result<Vec<WorkerPlan<DpdkQueue>>> {
        let queues = self.ports.iter().map(|p| p.queues()).min().unwrap_or(0);
        (0..queues)
            .map(|q| {
                let queues = self
                    .ports
                    .iter()
                    .map(|p| {
                        let ifindex = match p.ifindex() {
                            0 => SYNTHETIC_IFINDEX | p.id() as u32,
                            i => i,
                        };
                        Ok(DpdkQueue::new(p, q, KernelPath::default_for(p))?.with_ifindex(ifindex))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(WorkerPlan { queues, core: cores.get(q as usize).copied().flatten() })
            })
            .collect()
    }

    /// Starts the poll-mode engine on every port ([`plans`](Self::plans)), reading
    /// `tables`. The engine keeps the ports (and so the EAL's devices) until its
    /// workers have stopped; they close when it is dropped.
    pub fn start_engine(
        self,
        cores: &[Option<u32>],
        tables: &SharedTables,
        options: EngineOptions,
    ) -> anyhow::Result<Engine> {
        let plans = self.plans(cores)?;
        let mut engine = Engine::start(plans, tables, options)?;
        engine.keep_until_stopped(Box::new(self));
        Ok(engine)
    }

    /// Starts the engine with its next hops kept from the kernel's routes and
    /// neighbours, for ports with a kernel interface (`net_af_packet`, `net_tap`): the
    /// workers read the control plane's `tables` with the next hops a follower thread
    /// adds, re-published when the tables change or the kernel learns a neighbour. The
    /// follower asks the kernel (vipr-poll's `Resolver`: `ip route get`, `ip neigh`)
    /// about every backend and about every destination the queues passed to the
    /// kernel for want of a next hop (a reply to a client not yet known). It runs in
    /// the network namespace of the calling thread. Next hops the control plane gives
    /// are kept; the kernel's host entries take precedence (longest prefix).
    pub fn start_engine_resolving(
        self,
        cores: &[Option<u32>],
        tables: &SharedTables,
        options: EngineOptions,
    ) -> anyhow::Result<Engine> {
        let misses = Arc::new(Misses::default());
        let ifindexes: Vec<u32> =
            self.ports.iter().map(|p| p.ifindex()).filter(|&i| i != 0).collect();
        let mut plans = self.plans(cores)?;
        for q in plans.iter_mut().flat_map(|p| p.queues.iter_mut()) {
            q.set_misses(misses.clone());
        }
        let workers = SharedTables::new((*tables.load()).clone());
        let follower = Follower::spawn(tables.clone(), workers.clone(), ifindexes, misses)?;
        let mut engine = Engine::start(plans, &workers, options)?;
        engine.keep_until_stopped(Box::new(self));
        engine.keep_until_stopped(Box::new(follower));
        Ok(engine)
    }
}

/// The thread that adds the kernel's next hops to the workers' tables; stopped and
/// joined when dropped.
struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Follower {
    fn spawn(
        control_plane: SharedTables,
        workers: SharedTables,
        ports: Vec<u32>,
        misses: Arc<Misses>,
    ) -> anyhow::Result<Follower> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // The resolver's own miss list belongs to vipr-poll's raw-socket kernel path;
        // the DPDK queues keep theirs (`misses`), fed in below.
        let kernel = vipr_poll::kernel::KernelPath::Capture(Arc::new(Mutex::new(Vec::new())));
        let mut resolver = Resolver::new(ports, &kernel);
        let thread = std::thread::Builder::new()
            .name("vipr-dpdk-hops".into())
            .spawn(move || {
                let mut seen = control_plane.load();
                resolver.want_backends(&seen);
                let mut hops: Vec<NextHopSpec> = Vec::new();
                let mut last: Option<Instant> = None;
                while !flag.load(Ordering::Relaxed) {
                    let now = control_plane.load();
                    let changed = !Arc::ptr_eq(&now, &seen);
                    if changed {
                        seen = now;
                        resolver.want_backends(&seen);
                    }
                    let mut learned = false;
                    for dst in misses.take() {
                        learned |= resolver.want(dst);
                    }
                    let due = last.is_none_or(|t| t.elapsed() >= RESOLVE_EVERY);
                    if changed || learned || due {
                        last = Some(Instant::now());
                        let fresh = resolver.refresh();
                        if changed || fresh != hops {
                            hops = fresh;
                            workers.store(with_hops(&seen, &hops));
                        }
                    }
                    std::thread::sleep(FOLLOW_EVERY);
                }
            })
            .map_err(|e| anyhow::anyhow!("spawning the DPDK next-hop follower: {e}"))?;
        Ok(Follower { stop, thread: Some(thread) })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `tables` with the kernel's next hops added to its own.
fn with_hops(tables: &Tables, hops: &[NextHopSpec]) -> Tables {
    let mut all: Vec<NextHopSpec> =
        tables.next_hops.entries().map(|(dest, hop)| NextHopSpec { dest, hop }).collect();
    all.extend_from_slice(hops);
    Tables { next_hops: NextHops::new(&all), ..tables.clone() }
}
