//! The exception path of a NIC that DPDK owns: a `net_tap` port whose kernel interface
//! stands in for the NIC. An ARP request arrives on the "NIC" (a ring port), passes to
//! the kernel through the tap, and the kernel's answer leaves through the NIC again.
//! Everything happens in a network namespace this test makes and removes. Needs root.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vipr_dpdk::{DpdkQueue, Eal, KernelPath, Mempool, Port, PortOptions, Ring};
use vipr_poll::{Pkt, Queue};

fn eal() -> &'static Eal {
    let args = vipr_dpdk::eal::no_hardware_args("vipr-test");
    Eal::init(&args).unwrap_or_else(|e| panic!("{e}"))
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A namespace of this test; this thread is inside it until drop, then it is removed.
struct Netns {
    name: String,
    home: File,
}

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh(&["ip", "netns", "add", name]);
        let home = File::open("/proc/thread-self/ns/net").unwrap();
        let target = File::open(format!("/var/run/netns/{name}")).unwrap();
        // SAFETY: setns(2) with a network-namespace fd moves only this thread.
        assert_eq!(unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        Netns { name: name.into(), home }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // SAFETY: back to this thread's own namespace.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

fn arp_request(sender_mac: [u8; 6], sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target_ip);
    f.resize(60, 0);
    f
}

#[test]
fn a_passed_arp_request_reaches_the_kernel_through_a_tap_and_its_answer_leaves_by_the_nic() {
    assert!(
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:\t0\t")),
        "this test makes a network namespace and a tap interface: run it as root"
    );
    let eal = eal();
    let ns = Netns::new(&format!("vdpk-tap-{}", std::process::id()));
    let pool = Arc::new(Mempool::new(eal, "tap-pool", 1023).unwrap());
    let tap =
        Port::open(eal, "net_tap_vdpk0,iface=vdpktap0", &PortOptions::default(), pool.clone())
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tap.driver(), "net_tap");
    assert_ne!(tap.ifindex(), 0, "the tap port names its kernel interface");
    sh(&["ip", "netns", "exec", &ns.name, "ip", "addr", "add", "192.0.2.1/24", "dev", "vdpktap0"]);
    sh(&["ip", "netns", "exec", &ns.name, "ip", "link", "set", "vdpktap0", "up"]);

    let (rx, tx) = (
        Arc::new(Ring::new(eal, "tap-nic-rx", 256).unwrap()),
        Arc::new(Ring::new(eal, "tap-nic-tx", 256).unwrap()),
    );
    let nic =
        Port::from_rings(eal, "tap_nic", vec![rx.clone()], vec![tx.clone()], pool.clone()).unwrap();
    let mut q = DpdkQueue::new(&nic, 0, KernelPath::Port { port: tap.clone(), queue: 0 }).unwrap();

    let client_mac = [0x02, 0, 0, 0, 0, 0x63];
    rx.enqueue(pool.mbuf_from(&arp_request(client_mac, [192, 0, 2, 99], [192, 0, 2, 1])).unwrap())
        .ok()
        .unwrap();
    let mut pkts = [Pkt::default(); 32];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    while n == 0 {
        assert!(Instant::now() < deadline, "the ring port delivered nothing");
        q.maintain();
        n = q.rx_burst(&mut pkts);
    }
    assert_eq!(q.to_kernel(&pkts[..n]), 1, "the tap takes the frame");
    // The kernel's answer (among whatever else it sends: IPv6 router solicitations...).
    let reply = loop {
        assert!(Instant::now() < deadline, "no ARP reply left through the NIC in 5 s");
        q.maintain();
        match tx.dequeue() {
            Some(m) => {
                let f = m.to_vec();
                if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] {
                    break f;
                }
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    assert_eq!(&reply[0..6], &client_mac, "addressed to the asker");
    assert_eq!(&reply[28..32], &[192, 0, 2, 1], "the kernel's own address answers");
    assert!(q.from_kernel() >= 1);
    assert_eq!(q.outstanding(), 0);
    drop(q);
    drop((nic, rx, tx));
    // Closing the tap removes its interface; still inside the namespace.
    drop(tap);
    assert_eq!(pool.available(), pool.size(), "every mbuf is back in the pool");
    drop(ns);
}
