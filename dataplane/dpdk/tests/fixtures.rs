//! The whole fixture table through the DPDK driver and the poll-mode engine: every frame
//! is put into the RX ring of a `net_ring` port (one port per interface of the cases),
//! the engine's worker receives it with `rte_eth_rx_burst`, runs the pipeline on the
//! mbuf in place and sends it with `rte_eth_tx_burst`; the test reads it back from the
//! TX ring it came out of. Which ring says the verdict: the ingress port's own TX ring
//! is `Tx`, another port's is `Redirect`, the exception port's (standing in for the
//! kernel) is `Pass`, none is a drop. Verdicts, output bytes and counters must equal the
//! table's, which is what the userspace pipeline produces.
//!
//! At the end the engine stops with no buffer lent out and every mbuf is back in the
//! pool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vipr_dataplane::pipeline::{Counters, SharedTables, Verdict};
use vipr_dataplane::tables::Tables;
use vipr_dpdk::{DpdkQueue, Eal, KernelPath, Mempool, Port, Ring};
use vipr_fixtures::cases::{IF_MAIN, IF_OTHER};
use vipr_fixtures::{cases, run_case, Dataplane};
use vipr_poll::{Clock, Engine, EngineOptions, WorkerPlan};

fn eal() -> &'static Eal {
    let args = vipr_dpdk::eal::no_hardware_args("vipr-test");
    Eal::init(&args).unwrap_or_else(|e| panic!("{e}"))
}

/// One interface of the cases: a ring port, the ring the test feeds, the ring the port
/// sends into, and the exception ring its `Pass` frames go to.
struct Interface {
    ifindex: u32,
    rx: Arc<Ring>,
    tx: Arc<Ring>,
    kernel: Arc<Ring>,
}

struct DpdkRings {
    pool: Arc<Mempool>,
    interfaces: Vec<Interface>,
    clock: Arc<AtomicU64>,
    shared: SharedTables,
    engine: Option<Engine>,
    /// The queues while no engine runs.
    idle: Vec<DpdkQueue>,
}

impl DpdkRings {
    fn new() -> DpdkRings {
        let eal = eal();
        let pool = Arc::new(Mempool::new(eal, "fixtures", 4095).unwrap());
        let ring = |name: &str| Arc::new(Ring::new(eal, name, 64).unwrap());
        let ifindexes = [IF_MAIN, IF_OTHER];
        let interfaces: Vec<Interface> = ifindexes
            .iter()
            .map(|&i| Interface {
                ifindex: i,
                rx: ring(&format!("fx-rx{i}")),
                tx: ring(&format!("fx-tx{i}")),
                kernel: ring(&format!("fx-kernel{i}")),
            })
            .collect();
        // The exception port: queue k sends into interface k's kernel ring; nothing is
        // ever put into its RX rings.
        let unused: Vec<Arc<Ring>> =
            ifindexes.iter().map(|i| ring(&format!("fx-kernel-rx{i}"))).collect();
        let kernel_tx: Vec<Arc<Ring>> = interfaces.iter().map(|i| i.kernel.clone()).collect();
        let kernel = Port::from_rings(eal, "fx_kernel", unused, kernel_tx, pool.clone()).unwrap();
        let idle = interfaces
            .iter()
            .enumerate()
            .map(|(k, i)| {
                let port = Port::from_rings(
                    eal,
                    &format!("fx_if{}", i.ifindex),
                    vec![i.rx.clone()],
                    vec![i.tx.clone()],
                    pool.clone(),
                )
                .unwrap();
                let path = KernelPath::Port { port: kernel.clone(), queue: k as u16 };
                DpdkQueue::new(&port, 0, path).unwrap().with_ifindex(i.ifindex)
            })
            .collect();
        DpdkRings {
            pool,
            interfaces,
            clock: Arc::new(AtomicU64::new(0)),
            shared: SharedTables::default(),
            engine: None,
            idle,
        }
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("reset starts the engine")
    }

    /// Stops the engine, checking that it handed every buffer back.
    fn stop(&mut self) {
        if let Some(engine) = self.engine.take() {
            let report = engine.stop().expect("the engine stops");
            assert_eq!(
                report.leaked(),
                0,
                "buffers still lent out at stop: {:?}",
                report.outstanding
            );
            self.idle = report.into_queues::<DpdkQueue>();
        }
    }

    /// (frames received, frames with an outcome) over every queue.
    fn progress(&self) -> (u64, u64) {
        self.engine()
            .queue_stats()
            .iter()
            .fold((0, 0), |(r, o), q| (r + q.rx, o + q.tx + q.drops + q.to_kernel + q.tx_errors))
    }
}

impl Dataplane for DpdkRings {
    fn reset(&mut self, tables: &Tables, conntrack_capacity: usize) {
        self.stop();
        self.shared = SharedTables::new(tables.clone());
        let options = EngineOptions {
            conntrack_capacity,
            batch: 32,
            clock: Clock::Fixed(self.clock.clone()),
            idle_sleep: Some(Duration::from_micros(20)),
        };
        let plan = WorkerPlan { queues: std::mem::take(&mut self.idle), core: None };
        self.engine = Some(Engine::start(vec![plan], &self.shared, options).expect("engine"));
    }

    fn program(&mut self, tables: &Tables) {
        self.shared.store(tables.clone());
    }

    fn process(&mut self, frame: &mut Vec<u8>, ingress: u32, now_ns: u64) -> Verdict {
        self.clock.store(now_ns, Ordering::Relaxed);
        let drops_before = self.engine().counters().drops;
        let (rx0, done0) = self.progress();
        let input = self.interfaces.iter().find(|i| i.ifindex == ingress).expect("known ingress");
        let m = self.pool.mbuf_from(frame).expect("an mbuf for the frame");
        input.rx.enqueue(m).ok().expect("room in the RX ring");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.progress() != (rx0 + 1, done0 + 1) {
            assert!(Instant::now() < deadline, "the engine did not process the frame in 5 s");
            std::thread::sleep(Duration::from_micros(50));
        }
        let mut verdict = None;
        for i in &self.interfaces {
            for (ring, v) in [
                (
                    &i.tx,
                    if i.ifindex == ingress {
                        Verdict::Tx
                    } else {
                        Verdict::Redirect { ifindex: i.ifindex }
                    },
                ),
                (&i.kernel, Verdict::Pass),
            ] {
                if let Some(m) = ring.dequeue() {
                    assert!(verdict.is_none(), "one frame came out twice");
                    assert!(ring.is_empty(), "more frames came out than went in");
                    *frame = m.to_vec();
                    verdict = Some(v);
                }
            }
        }
        verdict.unwrap_or_else(|| {
            let after = self.engine().counters().drops;
            let moved: Vec<u32> = (0..after.len() as u32)
                .filter(|&r| after[r as usize] != drops_before[r as usize])
                .collect();
            assert_eq!(moved.len(), 1, "a dropped frame counts exactly one drop reason: {moved:?}");
            Verdict::Drop { reason: moved[0] }
        })
    }

    fn counters(&mut self) -> Counters {
        self.engine().counters()
    }

    fn conntrack_flows(&mut self) -> usize {
        self.engine().conntrack_flows()
    }
}

#[test]
fn every_fixture_case_gives_the_same_result_through_dpdk_ring_ports() {
    let mut dp = DpdkRings::new();
    let all = cases();
    let mut failures = Vec::new();
    for case in &all {
        match run_case(&mut dp, case) {
            Ok(0) => {}
            Ok(n) => failures.push(format!("- {}: {n} step(s) skipped, none should be", case.name)),
            Err(e) => failures.push(format!("- {}\n{e}", case.name)),
        }
    }
    dp.stop();
    assert!(
        failures.is_empty(),
        "{} of {} cases differ through DPDK:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
    let pool = dp.pool.clone();
    drop(dp);
    assert_eq!(pool.available(), pool.size(), "every mbuf is back in the pool");
    eprintln!("{} fixture cases identical through DPDK", all.len());
}
