//! The FFI layer against the real DPDK: EAL once per process, mbuf pools, ports made
//! from rings and from vdev strings, and every mbuf back in its pool at the end.
//! Needs no hugepages (`--no-huge`) and no NIC (`--no-pci`, vdevs only).

use std::process::Command;
use std::sync::Arc;
use vipr_dpdk::{DpdkQueue, Eal, Error, KernelPath, Mempool, Port, PortOptions, Ring};
use vipr_poll::{Pkt, Queue};

fn eal_args() -> Vec<String> {
    vipr_dpdk::eal::no_hardware_args("vipr-test")
}

fn eal() -> &'static Eal {
    Eal::init(&eal_args()).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the test `name` of this binary in a child process with `VIPR_DPDK_CHILD` set,
/// for what needs an EAL of its own; returns its combined output.
fn in_child(name: &str) -> (bool, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("VIPR_DPDK_CHILD", "1")
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn is_child() -> bool {
    std::env::var_os("VIPR_DPDK_CHILD").is_some()
}

#[test]
fn eal_is_initialised_once_and_refuses_other_arguments() {
    let a = eal();
    let b = eal();
    assert!(std::ptr::eq(a, b), "the same arguments give the same EAL");
    let mut other = eal_args();
    other.push("--vdev=net_ring9".into());
    let err = Eal::init(&other).unwrap_err();
    assert!(matches!(err, Error::EalAlreadyInitialised { .. }), "{err}");
    assert!(err.to_string().contains("net_ring9"), "names the refused arguments: {err}");
}

#[test]
fn a_bad_eal_argument_fails_init_with_the_arguments_and_the_reason() {
    if is_child() {
        let args: Vec<String> =
            ["--no-huge", "--no-shconf", "--file-prefix=vipr-test", "--no-such-eal-option"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let err = Eal::init(&args).unwrap_err();
        println!("CHILD-ERROR: {err}");
        // A second attempt says that DPDK cannot retry.
        let again = Eal::init(&eal_args()).unwrap_err();
        println!("CHILD-AGAIN: {again}");
        return;
    }
    let (ok, out) = in_child("a_bad_eal_argument_fails_init_with_the_arguments_and_the_reason");
    assert!(ok, "{out}");
    let line = out.lines().find(|l| l.contains("CHILD-ERROR:")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("EAL init") && line.contains("--no-such-eal-option"), "{line}");
    assert!(
        line.contains("unrecognized option '--no-such-eal-option'"),
        "the error says which argument EAL refused: {line}"
    );
    let again = out.lines().find(|l| l.contains("CHILD-AGAIN:")).unwrap_or_else(|| panic!("{out}"));
    assert!(again.contains("cannot retry"), "{again}");
}

#[test]
fn frames_left_in_a_ring_port_return_to_the_pool_when_it_closes() {
    let eal = eal();
    let pool = Arc::new(Mempool::new(eal, "ffi-ring-pool", 1023).unwrap());
    let rx = Arc::new(Ring::new(eal, "ffi-rx", 256).unwrap());
    let tx = Arc::new(Ring::new(eal, "ffi-tx", 256).unwrap());
    let port = Port::from_rings(eal, "ffi_ring0", vec![rx.clone()], vec![tx.clone()], pool.clone())
        .unwrap();
    assert_eq!(port.driver(), "net_ring");
    let frame: Vec<u8> = (0..60u8).collect();
    for _ in 0..10 {
        rx.enqueue(pool.mbuf_from(&frame).unwrap()).ok().unwrap();
    }
    assert_eq!(pool.in_use(), 10);
    assert_eq!(rx.len(), 10);
    drop(port);
    drop((rx, tx));
    assert_eq!(pool.available(), pool.size(), "every mbuf is back in the pool");
}

#[test]
fn a_port_spec_naming_no_driver_is_refused_with_the_spec_and_the_reason() {
    let eal = eal();
    let pool = Arc::new(Mempool::new(eal, "ffi-bad-pool", 1023).unwrap());
    let err = Port::open(eal, "net_nosuchdriver0,x=1", &PortOptions::default(), pool).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("net_nosuchdriver0,x=1") && text.contains("rte_dev_probe"), "{text}");
}

#[test]
fn a_vdev_port_opens_by_its_string_and_too_many_queues_are_refused() {
    let eal = eal();
    let pool = Arc::new(Mempool::new(eal, "ffi-vdev-pool", 2047).unwrap());
    let port = Port::open(eal, "net_ring7", &PortOptions::default(), pool.clone()).unwrap();
    assert_eq!(port.driver(), "net_ring");
    drop(port);
    let err = Port::open(
        eal,
        "net_ring8",
        &PortOptions { queues: 40, ..Default::default() },
        pool.clone(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("40 queues"), "{err}");
    // Detached on drop: the same vdev string opens again.
    let again = Port::open(eal, "net_ring7", &PortOptions::default(), pool.clone()).unwrap();
    drop(again);
    assert_eq!(pool.available(), pool.size());
}

#[test]
fn a_ring_port_queue_lends_mbufs_to_the_engine_and_gets_every_one_back() {
    let eal = eal();
    let pool = Arc::new(Mempool::new(eal, "ffi-queue-pool", 1023).unwrap());
    let ring = |n: &str| Arc::new(Ring::new(eal, n, 256).unwrap());
    let (rx, tx, krx, ktx) = (ring("fq-rx"), ring("fq-tx"), ring("fq-krx"), ring("fq-ktx"));
    let port =
        Port::from_rings(eal, "fq_port", vec![rx.clone()], vec![tx.clone()], pool.clone()).unwrap();
    let kernel =
        Port::from_rings(eal, "fq_kernel", vec![krx], vec![ktx.clone()], pool.clone()).unwrap();
    let mut q = DpdkQueue::new(&port, 0, KernelPath::Port { port: kernel.clone(), queue: 0 })
        .unwrap()
        .with_ifindex(7);
    assert!(DpdkQueue::new(&port, 0, KernelPath::Discard).is_err(), "a queue is claimed once");
    assert_eq!((q.ifindex(), q.queue_id(), q.mode()), (7, 0, "dpdk"));

    for i in 0..100u8 {
        rx.enqueue(pool.mbuf_from(&[i; 64]).unwrap()).ok().unwrap();
    }
    let mut pkts = vec![Pkt::default(); 64];
    let mut got = Vec::new();
    while got.len() < 100 {
        let n = q.rx_burst(&mut pkts);
        assert!(n > 0, "the ring port delivers what was put in");
        got.extend_from_slice(&pkts[..n]);
    }
    assert_eq!(q.outstanding(), 100);
    for (i, p) in got.iter_mut().enumerate() {
        assert_eq!(q.data(p), &[i as u8; 64][..], "frame {i} arrives intact, in order");
        assert!(q.set_len(p, 60));
        assert!(!q.set_len(p, q.capacity() + 1), "no longer than one mbuf");
        q.data(p)[0] = 0xee;
    }
    // 40 out of the port, 30 to the kernel path, 30 freed.
    assert_eq!(q.tx_burst(&got[..40]), 40);
    assert_eq!(q.to_kernel(&got[40..70]), 30);
    q.free(&got[70..]);
    assert_eq!(q.outstanding(), 0);
    assert_eq!((tx.len(), ktx.len()), (40, 30));
    let out = tx.dequeue().unwrap();
    assert_eq!((out.len(), out.data()[0], out.data()[1]), (60, 0xee, 0));
    drop(out);
    // Buffers for copies.
    let mut fresh = vec![Pkt::default(); 8];
    assert_eq!(q.alloc(&mut fresh), 8);
    assert!(fresh.iter().all(|p| p.len == 0));
    assert_eq!(q.outstanding(), 8);
    q.free(&fresh);
    assert_eq!(q.outstanding(), 0);

    drop(q);
    drop((port, kernel, rx, tx, ktx));
    assert_eq!(pool.available(), pool.size(), "every mbuf is back in the pool");
}

#[test]
fn a_frame_received_on_one_port_and_sent_from_another_is_counted_once_per_pool() {
    let eal = eal();
    let pool = Arc::new(Mempool::new(eal, "ffi-two-pool", 1023).unwrap());
    let ring = |n: &str| Arc::new(Ring::new(eal, n, 256).unwrap());
    let (arx, atx, brx, btx) = (ring("f2-arx"), ring("f2-atx"), ring("f2-brx"), ring("f2-btx"));
    let a = Port::from_rings(eal, "f2_a", vec![arx.clone()], vec![atx], pool.clone()).unwrap();
    let b = Port::from_rings(eal, "f2_b", vec![brx], vec![btx.clone()], pool.clone()).unwrap();
    let mut qa = DpdkQueue::new(&a, 0, KernelPath::Discard).unwrap();
    let mut qb = DpdkQueue::new(&b, 0, KernelPath::Discard).unwrap();
    assert_eq!(qa.pool_id(), qb.pool_id(), "one pool: handles may cross ports");
    arx.enqueue(pool.mbuf_from(&[1; 60]).unwrap()).ok().unwrap();
    let mut pkts = [Pkt::default(); 32];
    assert_eq!(qa.rx_burst(&mut pkts), 1);
    assert_eq!(qa.outstanding() + qb.outstanding(), 1);
    assert_eq!(qb.tx_burst(&pkts[..1]), 1);
    assert_eq!(qa.outstanding() + qb.outstanding(), 0, "given back through the other port");
    assert_eq!(btx.len(), 1);
    // Discard: not delivered, but taken.
    arx.enqueue(pool.mbuf_from(&[2; 60]).unwrap()).ok().unwrap();
    assert_eq!(qa.rx_burst(&mut pkts), 1);
    assert_eq!(qa.to_kernel(&pkts[..1]), 0);
    assert_eq!(qa.outstanding() + qb.outstanding(), 0);
    drop((qa, qb, a, b, arx, btx));
    assert_eq!(pool.available(), pool.size());
}

#[test]
fn a_worker_thread_gets_an_lcore_on_its_first_turn_and_gives_it_back_when_it_ends() {
    let eal = eal();
    let pool = Arc::new(Mempool::new(eal, "ffi-lcore-pool", 1023).unwrap());
    let ring = |n: &str| Arc::new(Ring::new(eal, n, 64).unwrap());
    let port =
        Port::from_rings(eal, "fl_port", vec![ring("fl-rx")], vec![ring("fl-tx")], pool).unwrap();
    let mut q = DpdkQueue::new(&port, 0, KernelPath::Discard).unwrap();
    let first = std::thread::spawn(move || {
        assert_eq!(vipr_dpdk::eal::current_lcore(), None, "a new thread has no lcore");
        q.maintain();
        let id = vipr_dpdk::eal::current_lcore().expect("registered on its first turn");
        q.maintain();
        assert_eq!(vipr_dpdk::eal::current_lcore(), Some(id), "registered once");
        (q, id)
    });
    let (mut q, id) = first.join().unwrap();
    // The lcore id is free again: the next worker can have it.
    let second = std::thread::spawn(move || {
        q.maintain();
        vipr_dpdk::eal::current_lcore()
    });
    assert!(second.join().unwrap().is_some());
    assert_ne!(id, 0, "lcore 0 is the EAL's main lcore");
}

#[test]
fn the_config_section_opens_every_port_and_plans_one_worker_per_queue() {
    let cfg = vipr_config::DpdkConfig {
        eal_args: eal_args(),
        ports: vec!["net_ring_cfg0".into(), "net_ring_cfg1".into()],
        mbufs: 2047,
    };
    let dpdk = vipr_dpdk::Dpdk::open(&cfg, 2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dpdk.pool.size(), 2047, "the pool is sized from dpdk.mbufs");
    assert_eq!(dpdk.ports.len(), 2);
    let plans = dpdk.plans(&[Some(1)]).unwrap();
    assert_eq!(plans.len(), 2, "one worker per queue");
    assert_eq!(plans[0].core, Some(1));
    assert_eq!(plans[1].core, None);
    for (k, plan) in plans.iter().enumerate() {
        assert_eq!(plan.queues.len(), 2, "worker {k} drives queue {k} of every port");
        assert!(plan.queues.iter().all(|q| q.queue_id() == k as u32));
        let ifindexes: Vec<u32> = plan.queues.iter().map(|q| q.ifindex()).collect();
        assert_ne!(ifindexes[0], ifindexes[1], "ports without a kernel interface still differ");
        assert!(ifindexes.iter().all(|&i| i & vipr_dpdk::SYNTHETIC_IFINDEX != 0));
    }
    assert!(dpdk.plans(&[]).is_err(), "each queue is driven by one worker only");
    drop(plans);
    assert_eq!(dpdk.plans(&[]).unwrap().len(), 2, "queues are free again once dropped");
    let pool = dpdk.pool.clone();
    drop(dpdk);
    assert_eq!(pool.available(), pool.size());
}

#[test]
fn an_engine_started_on_the_ports_keeps_them_until_it_stops() {
    use vipr_dataplane::pipeline::SharedTables;
    let eal = eal();
    let pool = Arc::new(Mempool::new(eal, "ffi-engine-pool", 1023).unwrap());
    let (rx, tx) = (
        Arc::new(Ring::new(eal, "fe-rx", 64).unwrap()),
        Arc::new(Ring::new(eal, "fe-tx", 64).unwrap()),
    );
    let port =
        Port::from_rings(eal, "fe_port", vec![rx.clone()], vec![tx.clone()], pool.clone()).unwrap();
    let weak = Arc::downgrade(&port);
    let dpdk = vipr_dpdk::Dpdk { eal, pool: pool.clone(), ports: vec![port] };
    let options = vipr_poll::EngineOptions {
        idle_sleep: Some(std::time::Duration::from_micros(50)),
        ..Default::default()
    };
    let engine = dpdk.start_engine(&[None], &SharedTables::default(), options).unwrap();
    // No tables: the frame passes to the kernel path, which a ring port has none of.
    rx.enqueue(pool.mbuf_from(&[0u8; 60]).unwrap()).ok().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while engine.queue_stats()[0].rx == 0 {
        assert!(std::time::Instant::now() < deadline, "the engine received nothing");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(weak.upgrade().is_some(), "the engine keeps the port open");
    let report = engine.stop().unwrap();
    assert_eq!(report.leaked(), 0);
    drop(report);
    assert!(weak.upgrade().is_none(), "the port closes with the engine");
    assert_eq!(tx.len(), 0, "nothing was sent");
    drop((rx, tx));
    assert_eq!(pool.available(), pool.size(), "every mbuf is back");
}
