//! The engine over in-memory queues (`MemQueue`): the whole fixture table, verdict by
//! verdict, through real worker threads and the batch path; then what the fixture table
//! cannot show: copies between ports, full TX rings, stats, and shutdown accounting.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vipr_dataplane::pipeline::{Counters, SharedTables, Verdict};
use vipr_dataplane::tables::Tables;
use vipr_fixtures::cases::{IF_MAIN, IF_OTHER};
use vipr_fixtures::{cases, run_case, Dataplane};
use vipr_poll::mem::{MemPort, MemQueue};
use vipr_poll::{Clock, Engine, EngineOptions, WorkerPlan};

const BUFFERS: usize = 256;

struct MemEngine {
    engine: Option<Engine>,
    tables: SharedTables,
    clock: Arc<AtomicU64>,
    ports: Vec<(u32, Arc<Mutex<MemPort>>)>,
}

impl MemEngine {
    fn new() -> Self {
        MemEngine {
            engine: None,
            tables: SharedTables::default(),
            clock: Arc::new(AtomicU64::new(0)),
            ports: Vec::new(),
        }
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("reset starts the engine")
    }

    fn stop(&mut self) {
        if let Some(e) = self.engine.take() {
            let report = e.stop().expect("workers stop cleanly");
            assert_eq!(
                report.leaked(),
                0,
                "buffers still lent after stop: {:?}",
                report.outstanding
            );
            for q in report.into_queues::<MemQueue>() {
                assert_eq!(
                    q.free_buffers(),
                    q.buffers(),
                    "queue {} lost buffers",
                    vipr_poll::Queue::ifindex(&q)
                );
            }
        }
    }
}

impl Dataplane for MemEngine {
    fn reset(&mut self, tables: &Tables, conntrack_capacity: usize) {
        self.stop();
        self.tables = SharedTables::new(tables.clone());
        let (main, main_port) = MemQueue::new(IF_MAIN, 0, BUFFERS, 2048);
        let (other, other_port) = MemQueue::new(IF_OTHER, 0, BUFFERS, 2048);
        self.ports = vec![(IF_MAIN, main_port), (IF_OTHER, other_port)];
        let options = EngineOptions {
            conntrack_capacity,
            clock: Clock::Fixed(self.clock.clone()),
            idle_sleep: Some(Duration::from_micros(50)),
            ..Default::default()
        };
        let plan = WorkerPlan { queues: vec![main, other], core: None };
        self.engine =
            Some(Engine::start(vec![plan], &self.tables, options).expect("engine starts"));
    }

    fn program(&mut self, tables: &Tables) {
        self.tables.store(tables.clone());
    }

    fn process(&mut self, frame: &mut Vec<u8>, ingress: u32, now_ns: u64) -> Verdict {
        self.clock.store(now_ns, Relaxed);
        let before = self.engine().counters();
        let port =
            &self.ports.iter().find(|p| p.0 == ingress).expect("fixture ingress is a port").1;
        port.lock().unwrap().rx.push_back(frame.clone());
        let deadline = Instant::now() + Duration::from_secs(5);
        let after = loop {
            let c = self.engine().counters();
            if c.verdicts.iter().sum::<u64>() > before.verdicts.iter().sum::<u64>() {
                break c;
            }
            assert!(Instant::now() < deadline, "the engine never processed the frame");
        };
        let verdict = verdict_from(&before, &after);
        // The frame as it left: out of a port, or to the kernel.
        for (ifindex, port) in &self.ports {
            let mut p = port.lock().unwrap();
            if let Some(out) = p.tx.pop() {
                *frame = out;
                return match verdict {
                    Verdict::Tx | Verdict::Redirect { .. } if *ifindex == ingress => Verdict::Tx,
                    Verdict::Tx | Verdict::Redirect { .. } => {
                        Verdict::Redirect { ifindex: *ifindex }
                    }
                    other => panic!("a frame left port {ifindex} with verdict {other:?}"),
                };
            }
            if let Some(out) = p.kernel.pop() {
                *frame = out;
                assert_eq!(
                    verdict,
                    Verdict::Pass,
                    "a frame went to the kernel with verdict {verdict:?}"
                );
                return Verdict::Pass;
            }
        }
        assert!(matches!(verdict, Verdict::Drop { .. }), "{verdict:?}: the frame went nowhere");
        verdict
    }

    fn counters(&mut self) -> Counters {
        self.engine().counters()
    }

    fn conntrack_flows(&mut self) -> usize {
        self.engine().conntrack_flows()
    }

    fn accepts(&self, frame: &[u8]) -> Result<(), &'static str> {
        if frame.is_empty() {
            return Err("an empty frame is no frame to a queue");
        }
        Ok(())
    }
}

/// The verdict whose counter moved (and the drop reason, for drops).
fn verdict_from(before: &Counters, after: &Counters) -> Verdict {
    let moved = |a: &[u64], b: &[u64]| (0..a.len()).find(|&i| a[i] != b[i]);
    match moved(&before.verdicts, &after.verdicts).map(|i| i as u32) {
        Some(vipr_abi::VERDICT_PASS) => Verdict::Pass,
        Some(vipr_abi::VERDICT_TX) => Verdict::Tx,
        Some(vipr_abi::VERDICT_REDIRECT) => Verdict::Redirect { ifindex: 0 },
        Some(vipr_abi::VERDICT_DROP) => Verdict::Drop {
            reason: moved(&before.drops, &after.drops).expect("a drop counts a reason") as u32,
        },
        other => panic!("no verdict counter moved ({other:?})"),
    }
}

#[test]
fn every_fixture_case_gives_the_same_result_through_the_engine() {
    let mut dp = MemEngine::new();
    let mut failures = Vec::new();
    let mut skipped = 0;
    for case in cases() {
        match run_case(&mut dp, &case) {
            Ok(n) => skipped += n,
            Err(e) => failures.push(format!("{}:\n{e}", case.name)),
        }
    }
    dp.stop();
    assert!(failures.is_empty(), "{} cases differ:\n{}", failures.len(), failures.join("\n"));
    // Only empty frames are skipped; the fixture table has few of them.
    assert!(skipped <= 2, "{skipped} steps skipped");
}

/// Tables with one TCP VIP whose next hop is port 2, and a frame to it from port 1.
fn vip_setup() -> (Tables, Vec<u8>) {
    let case = cases().into_iter().find(|c| {
        c.steps.iter().any(|s| {
            matches!(s, vipr_fixtures::Step::Packet { verdict: Verdict::Redirect { .. }, .. })
        })
    });
    let case = case.expect("the fixture table has a redirect case");
    let tables = vipr_dataplane::tables::Compiler::default().compile(&case.state).unwrap();
    let frame = case
        .steps
        .iter()
        .find_map(|s| match s {
            vipr_fixtures::Step::Packet { verdict: Verdict::Redirect { .. }, input, .. } => {
                Some(input.clone())
            }
            _ => None,
        })
        .unwrap();
    (tables, frame)
}

#[test]
fn a_full_tx_ring_frees_the_unsent_frames_and_counts_them() {
    let (tables, frame) = vip_setup();
    let shared = SharedTables::new(tables);
    let (main, main_port) = MemQueue::new(IF_MAIN, 0, BUFFERS, 2048);
    let (mut other, other_port) = MemQueue::new(IF_OTHER, 0, BUFFERS, 2048);
    other.tx_limit = 5;
    {
        let mut p = main_port.lock().unwrap();
        for _ in 0..40 {
            p.rx.push_back(frame.clone());
        }
    }
    let options = EngineOptions { conntrack_capacity: 1024, ..Default::default() };
    let engine =
        Engine::start(vec![WorkerPlan { queues: vec![main, other], core: None }], &shared, options)
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.queue_stats()[0].rx < 40 {
        assert!(Instant::now() < deadline, "{:?}", engine.queue_stats());
        std::thread::sleep(Duration::from_millis(1));
    }
    let stats = engine.queue_stats();
    let report = engine.stop().unwrap();
    let other_stats = &stats[1];
    // One burst of 40 redirects: 5 sent, a retry sends 5 more, 30 freed as errors.
    assert_eq!(other_port.lock().unwrap().tx.len() as u64, other_stats.tx);
    assert_eq!(other_stats.tx + other_stats.tx_errors, 40, "{stats:?}");
    assert!(other_stats.tx_errors > 0, "{stats:?}");
    assert_eq!(report.leaked(), 0);
    for q in report.into_queues::<MemQueue>() {
        assert_eq!(q.free_buffers(), q.buffers());
    }
}

#[test]
fn stats_count_rx_tx_and_a_busy_share_between_zero_and_one() {
    let (tables, frame) = vip_setup();
    let shared = SharedTables::new(tables);
    let (main, main_port) = MemQueue::new(IF_MAIN, 0, BUFFERS, 2048);
    let (other, other_port) = MemQueue::new(IF_OTHER, 0, BUFFERS, 2048);
    let options = EngineOptions { conntrack_capacity: 1024, ..Default::default() };
    let engine =
        Engine::start(vec![WorkerPlan { queues: vec![main, other], core: None }], &shared, options)
            .unwrap();
    for _ in 0..10 {
        main_port.lock().unwrap().rx.push_back(frame.clone());
        std::thread::sleep(Duration::from_millis(2));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while other_port.lock().unwrap().tx.len() < 10 {
        assert!(Instant::now() < deadline, "{:?}", engine.queue_stats());
        std::thread::sleep(Duration::from_millis(1));
    }
    let s = engine.queue_stats();
    assert_eq!((s[0].rx, s[1].tx, s[0].drops), (10, 10, 0), "{s:?}");
    let share = s[0].busy_share();
    assert!(share > 0.0 && share < 0.5, "10 frames in 20 ms of polling: {share}");
    assert_eq!(s[0].mode, "memory");
    let c = engine.counters();
    assert_eq!(c.verdicts[vipr_abi::VERDICT_REDIRECT as usize], 10);
    assert_eq!(engine.conntrack_flows(), 1);
    engine.stop().unwrap();
}

#[test]
fn a_batch_below_32_is_refused() {
    let (q, _) = MemQueue::new(IF_MAIN, 0, 8, 2048);
    let options = EngineOptions { batch: 16, ..Default::default() };
    let err = Engine::start(
        vec![WorkerPlan { queues: vec![q], core: None }],
        &SharedTables::default(),
        options,
    );
    assert!(err.is_err());
}

#[test]
fn a_worker_pinned_to_a_core_runs_there() {
    let (q, _) = MemQueue::new(IF_MAIN, 0, 8, 2048);
    let options =
        EngineOptions { idle_sleep: Some(Duration::from_micros(100)), ..Default::default() };
    let engine = Engine::start(
        vec![WorkerPlan { queues: vec![q], core: Some(0) }],
        &SharedTables::default(),
        options,
    )
    .unwrap();
    let tid = engine.worker_tids()[0];
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    let allowed = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap();
    assert_eq!(allowed.split_whitespace().last(), Some("0"), "{allowed}");
    engine.stop().unwrap();
}

#[test]
fn a_core_that_does_not_exist_fails_the_start_with_its_number() {
    let (q, _) = MemQueue::new(IF_MAIN, 0, 8, 2048);
    let err = Engine::start(
        vec![WorkerPlan { queues: vec![q], core: Some(1000) }],
        &SharedTables::default(),
        EngineOptions::default(),
    )
    .err()
    .expect("no machine here has 1001 cores");
    assert!(format!("{err:#}").contains("core 1000"), "{err:#}");
}

#[test]
fn sigterm_stops_the_workers_with_no_buffer_lent() {
    let (tables, frame) = vip_setup();
    let shared = SharedTables::new(tables);
    let (main, main_port) = MemQueue::new(IF_MAIN, 0, BUFFERS, 2048);
    let (other, _) = MemQueue::new(IF_OTHER, 0, BUFFERS, 2048);
    let options =
        EngineOptions { idle_sleep: Some(Duration::from_micros(100)), ..Default::default() };
    let engine =
        Engine::start(vec![WorkerPlan { queues: vec![main, other], core: None }], &shared, options)
            .unwrap();
    engine.stop_on_signal(libc::SIGTERM).unwrap();
    // Traffic in flight when the signal comes.
    for _ in 0..200 {
        main_port.lock().unwrap().rx.push_back(frame.clone());
    }
    // SAFETY: raise(3) delivers to this process, whose SIGTERM handler only sets the flag.
    unsafe { libc::raise(libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !engine.is_stopping() {
        assert!(Instant::now() < deadline, "SIGTERM did not raise the stop flag");
        std::thread::sleep(Duration::from_millis(1));
    }
    let report = engine.stop().unwrap();
    assert_eq!(report.leaked(), 0, "{:?}", report.outstanding);
    for q in report.into_queues::<MemQueue>() {
        assert_eq!(q.free_buffers(), q.buffers());
    }
}
