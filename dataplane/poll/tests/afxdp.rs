//! The AF_XDP driver on real veth pairs in a network namespace of its own: the whole
//! fixture table injected into a veth and read back from the peers (AF_PACKET), and the
//! driver's frame accounting under traffic. Needs root (namespaces, BPF, AF_XDP).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vipr_dataplane::pipeline::{Counters, SharedTables, Verdict};
use vipr_dataplane::tables::{NextHopSpec, NextHops, Tables};
use vipr_fixtures::cases::{IF_MAIN, IF_OTHER};
use vipr_fixtures::{cases, run_case, Dataplane};
use vipr_poll::afxdp::{
    self, AfxdpConfig, AfxdpInterface, NextHopSource, SteerMode, XskQueue, XskSizes,
};
use vipr_poll::kernel::KernelPath;
use vipr_poll::netns::in_netns;
use vipr_poll::{Clock, Engine, EngineOptions, Pkt, Queue};
use vipr_xdp::AttachMode;

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("running a command");
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(
        status.lines().any(|l| l.starts_with("Uid:\t0\t")),
        "AF_XDP tests build network namespaces and load BPF: run them as root (scripts/test.sh does)"
    );
}

/// A namespace with veth pairs `<name>` (the engine's side) and `<name>p` (the test's
/// side), IPv6 off so the kernel sends nothing of its own; deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str, links: &[&str]) -> Self {
        require_root();
        let name = format!("vafx-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        for l in links {
            let peer = format!("{l}p");
            ns.exec(&["ip", "link", "add", l, "type", "veth", "peer", "name", &peer]);
            ns.exec(&["ip", "link", "set", l, "up"]);
            ns.exec(&["ip", "link", "set", &peer, "up"]);
        }
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full);
    }

    fn ifindex(&self, dev: &str) -> u32 {
        in_netns(&self.name, || {
            let c = std::ffi::CString::new(dev).unwrap();
            // SAFETY: a valid C string.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        })
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

const PACKET_AUXDATA: i32 = 8;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;

/// struct tpacket_auxdata (linux/if_packet.h).
#[repr(C)]
#[derive(Clone, Copy)]
struct AuxData {
    status: u32,
    len: u32,
    snaplen: u32,
    mac: u16,
    net: u16,
    vlan_tci: u16,
    vlan_tpid: u16,
}

/// An AF_PACKET socket on one interface: sends frames into it, receives what arrives.
struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl PacketSocket {
    /// Opens it in the calling thread's namespace.
    fn open(ifindex: u32) -> Self {
        let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
        // SAFETY: plain socket(2).
        let fd =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, proto) };
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        // SAFETY: a new fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto as u16;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of_val(&sll) as u32,
            )
        };
        assert_eq!(rc, 0, "binding AF_PACKET: {}", std::io::Error::last_os_error());
        // The receive path takes VLAN tags off into metadata; ask for it to put them back.
        let on: i32 = 1;
        // SAFETY: an int option of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_AUXDATA,
                (&on as *const i32).cast(),
                4,
            )
        };
        assert_eq!(rc, 0, "PACKET_AUXDATA: {}", std::io::Error::last_os_error());
        PacketSocket { fd, ifindex }
    }

    fn send(&self, frame: &[u8]) {
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex as i32;
        sll.sll_halen = 6;
        // SAFETY: buffers valid for the lengths passed.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of_val(&sll) as u32,
            )
        };
        assert_eq!(rc, frame.len() as isize, "AF_PACKET send: {}", std::io::Error::last_os_error());
    }

    /// The next frame that arrived (not one this host sent), waiting up to `wait`, with
    /// its VLAN tag where it was on the wire.
    fn recv(&self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 4096];
        let mut control = [0u64; 16];
        loop {
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&mut sll as *mut libc::sockaddr_ll).cast();
            msg.msg_namelen = std::mem::size_of_val(&sll) as u32;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control);
            // SAFETY: every buffer in `msg` is valid for the length it states.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, 0) };
            if n >= 0 {
                if sll.sll_pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                let mut frame = buf[..n as usize].to_vec();
                // SAFETY: walking the control messages the kernel wrote into `control`.
                let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
                while !c.is_null() {
                    let h = unsafe { &*c };
                    if h.cmsg_level == libc::SOL_PACKET && h.cmsg_type == PACKET_AUXDATA {
                        // SAFETY: PACKET_AUXDATA carries a struct tpacket_auxdata.
                        let aux: AuxData =
                            unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast()) };
                        if aux.status & TP_STATUS_VLAN_VALID != 0 {
                            let tpid = if aux.status & TP_STATUS_VLAN_TPID_VALID != 0 {
                                aux.vlan_tpid
                            } else {
                                0x8100
                            };
                            let tag = [tpid.to_be_bytes(), aux.vlan_tci.to_be_bytes()].concat();
                            frame.splice(12..12, tag);
                        }
                    }
                    c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
                }
                return Some(frame);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    fn drain(&self) {
        while self.recv(Duration::ZERO).is_some() {}
    }
}

/// The AF_XDP dataplane as a fixture `Dataplane`: port `fm` stands for `IF_MAIN`,
/// `fo` for `IF_OTHER`; every frame is steered to the sockets (`SteerMode::All`) and
/// passed frames are captured instead of reaching the namespace's stack.
struct AfxdpDataplane {
    ns: Netns,
    main: u32,
    other: u32,
    main_peer: PacketSocket,
    other_peer: PacketSocket,
    engine: Option<Engine>,
    tables: SharedTables,
    clock: Arc<AtomicU64>,
    kernel: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl AfxdpDataplane {
    fn new() -> Self {
        let ns = Netns::new("fx", &["fm", "fo"]);
        let (main, other) = (ns.ifindex("fm"), ns.ifindex("fo"));
        let (mp, op) = (ns.ifindex("fmp"), ns.ifindex("fop"));
        let (main_peer, other_peer) =
            in_netns(&ns.name, || (PacketSocket::open(mp), PacketSocket::open(op))).unwrap();
        AfxdpDataplane {
            ns,
            main,
            other,
            main_peer,
            other_peer,
            engine: None,
            tables: SharedTables::default(),
            clock: Arc::new(AtomicU64::new(0)),
            kernel: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The fixture's interface numbers made the namespace's.
    fn real(&self, t: &Tables) -> Tables {
        let specs: Vec<NextHopSpec> = t
            .next_hops
            .entries()
            .map(|(dest, mut hop)| {
                hop.ifindex = match hop.ifindex {
                    IF_MAIN => self.main,
                    IF_OTHER => self.other,
                    other => other,
                };
                NextHopSpec { dest, hop }
            })
            .collect();
        Tables { next_hops: NextHops::new(&specs), ..t.clone() }
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
                "frames still lent after stop: {:?}",
                report.outstanding
            );
            for q in report.into_queues::<XskQueue>() {
                let a = q.accounting();
                assert!(a.balanced(), "queue {}: {a:?}", q.ifindex());
                assert_eq!(a.violations, 0, "queue {}: {a:?}", q.ifindex());
            }
        }
    }
}

impl Dataplane for AfxdpDataplane {
    fn reset(&mut self, tables: &Tables, conntrack_capacity: usize) {
        self.stop();
        self.tables = SharedTables::new(self.real(tables));
        let (kernel, frames) = KernelPath::capture();
        self.kernel = frames;
        let interface = |name: &str| AfxdpInterface {
            name: name.into(),
            attach: AttachMode::Native,
            queues: vec![0],
            cores: vec![],
        };
        let mut config = AfxdpConfig::new(vec![interface("fm"), interface("fo")]);
        config.engine = EngineOptions {
            conntrack_capacity,
            clock: Clock::Fixed(self.clock.clone()),
            idle_sleep: Some(Duration::from_micros(50)),
            ..Default::default()
        };
        config.sizes = XskSizes { frames: 256, frame_size: 2048, ring: 64 };
        config.steer = SteerMode::All;
        config.next_hops = NextHopSource::Tables;
        config.kernel = Some(kernel);
        let tables = self.tables.clone();
        let engine = in_netns(&self.ns.name, move || afxdp::start(config, &tables)).unwrap();
        self.engine = Some(engine.unwrap_or_else(|e| panic!("starting the AF_XDP engine: {e:#}")));
        let mode = &self.engine().queue_stats()[0].mode;
        assert_eq!(*mode, "copy", "veth offers copy mode only");
        self.main_peer.drain();
        self.other_peer.drain();
    }

    fn program(&mut self, tables: &Tables) {
        self.tables.store(self.real(tables));
    }

    fn process(&mut self, frame: &mut Vec<u8>, ingress: u32, now_ns: u64) -> Verdict {
        assert_eq!(ingress, IF_MAIN, "the fixture table sends frames in on IF_MAIN only");
        self.clock.store(now_ns, Relaxed);
        let before = self.engine().counters();
        self.main_peer.send(frame);
        let deadline = Instant::now() + Duration::from_secs(5);
        let after = loop {
            let c = self.engine().counters();
            if total(&c) > total(&before) {
                break c;
            }
            assert!(Instant::now() < deadline, "the engine never saw the frame");
        };
        let verdict = verdict_from(&before, &after);
        let wait = Duration::from_secs(2);
        match verdict {
            Verdict::Tx | Verdict::Redirect { .. } => {
                if let Some(out) = self.main_peer.recv(Duration::from_millis(20)) {
                    *frame = out;
                    return Verdict::Tx;
                }
                let out = self.other_peer.recv(wait).or_else(|| self.main_peer.recv(wait));
                let Some(out) = out else {
                    panic!("{verdict:?}, but no frame came out of either port")
                };
                let back_on_main = matches!(verdict, Verdict::Tx);
                *frame = out;
                if back_on_main {
                    Verdict::Tx
                } else {
                    Verdict::Redirect { ifindex: IF_OTHER }
                }
            }
            Verdict::Pass => {
                *frame = self
                    .kernel
                    .lock()
                    .unwrap()
                    .pop()
                    .expect("a passed frame reaches the exception path");
                Verdict::Pass
            }
            Verdict::Drop { .. } => verdict,
        }
    }

    fn counters(&mut self) -> Counters {
        self.engine().counters()
    }

    fn conntrack_flows(&mut self) -> usize {
        self.engine().conntrack_flows()
    }

    fn accepts(&self, frame: &[u8]) -> Result<(), &'static str> {
        if frame.len() < 14 {
            return Err(
                "shorter than an Ethernet header: AF_PACKET cannot send it, no NIC delivers it",
            );
        }
        if frame.len() > 1514 {
            return Err("longer than the veth's MTU allows");
        }
        Ok(())
    }
}

fn total(c: &Counters) -> u64 {
    c.verdicts.iter().sum()
}

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
fn every_fixture_case_gives_the_same_result_through_af_xdp() {
    let mut dp = AfxdpDataplane::new();
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
    assert!(skipped <= 4, "{skipped} steps skipped: the fixture table should run almost whole");
    eprintln!("{skipped} steps skipped (runts)");
}

/// Frames bounce through a socket (received, sent back out) while the accounting is
/// checked after every step: every frame in exactly one place, none reused in flight.
#[test]
fn af_xdp_frames_are_always_in_exactly_one_place() {
    let ns = Netns::new("acct", &["ac"]);
    let (ac, peer) = (ns.ifindex("ac"), ns.ifindex("acp"));
    let sizes = XskSizes { frames: 64, frame_size: 2048, ring: 16 };
    let (mut q, sock, mut steering) = in_netns(&ns.name, || {
        let (kernel, _) = KernelPath::capture();
        let q = XskQueue::open(ac, 0, sizes, kernel).expect("AF_XDP socket on a veth");
        let mut steering = vipr_xdp::steer::Steering::load().expect("steering program");
        steering.add_port(ac, 1).unwrap();
        steering.set_socket(ac, 0, q.fd()).unwrap();
        steering.set_redirect_all(true).unwrap();
        steering.attach("ac", AttachMode::Native).unwrap();
        (q, PacketSocket::open(peer), steering)
    })
    .unwrap();
    assert_eq!(q.mode(), "copy", "zero-copy is refused on veth; the fallback must say so");
    let start = q.accounting();
    assert!(start.balanced(), "{start:?}");
    assert_eq!(start.fill, 16, "the fill ring is filled at open: {start:?}");
    let mut frame = vec![0u8; 60];
    frame[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    let mut pkts = [Pkt::default(); 32];
    let mut seen = 0;
    let mut echoed = 0;
    for round in 0..20u8 {
        // More than the ring holds, so the fill ring runs dry and refills.
        for i in 0..24u8 {
            frame[14] = round;
            frame[15] = i;
            sock.send(&frame);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut got_this_round = 0;
        while got_this_round < 16 && Instant::now() < deadline {
            q.maintain();
            let n = q.rx_burst(&mut pkts);
            got_this_round += n;
            let a = q.accounting();
            assert!(a.balanced(), "after rx: {a:?}");
            assert_eq!(a.engine as usize, n, "exactly the received frames are lent: {a:?}");
            for p in &pkts[..n] {
                assert_eq!(q.data(p)[14], round, "a frame of another round: reused in flight?");
            }
            // Echo half, free the rest.
            let half = n / 2;
            let sent = q.tx_burst(&pkts[..half]);
            q.free(&pkts[sent..n]);
            echoed += sent;
            let a = q.accounting();
            assert!(a.balanced() && a.engine == 0, "after tx/free: {a:?}");
        }
        seen += got_this_round;
        while sock.recv(Duration::from_millis(1)).is_some() {}
    }
    // Let every transmission complete.
    let deadline = Instant::now() + Duration::from_secs(2);
    while q.accounting().tx > 0 && Instant::now() < deadline {
        q.maintain();
        std::thread::sleep(Duration::from_millis(1));
    }
    let end = q.accounting();
    assert!(seen >= 20 * 16, "received {seen} frames");
    assert!(echoed > 0);
    assert!(end.balanced(), "{end:?}");
    assert_eq!((end.tx, end.engine, end.violations), (0, 0, 0), "{end:?}");
    let kernel = q.socket_stats().expect("XDP_STATISTICS");
    assert_eq!(kernel.invalid_descs, 0, "the kernel refused descriptors we gave it: {kernel:?}");
    drop(q);
    steering.set_redirect_all(false).unwrap();
}

#[test]
fn interfaces_that_pin_one_worker_to_two_cores_are_refused() {
    let interface = |name: &str, core| AfxdpInterface {
        name: name.into(),
        attach: AttachMode::Native,
        queues: vec![0],
        cores: vec![core],
    };
    let config = AfxdpConfig::new(vec![interface("a", 0), interface("b", 1)]);
    let err = afxdp::start(config, &SharedTables::default()).err().expect("refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("queue 0 of a is pinned to core 0, of b to core 1"), "{msg}");
}

#[test]
fn interfaces_with_different_queue_counts_are_refused() {
    let mut config = AfxdpConfig::new(vec![
        AfxdpInterface {
            name: "a".into(),
            attach: AttachMode::Native,
            queues: vec![0, 1],
            cores: vec![],
        },
        AfxdpInterface {
            name: "b".into(),
            attach: AttachMode::Native,
            queues: vec![0],
            cores: vec![],
        },
    ]);
    config.kernel = Some(KernelPath::capture().0);
    let err = afxdp::start(config, &SharedTables::default()).err().expect("refused");
    assert!(format!("{err:#}").contains("interface b has 1 queues, a has 2"), "{err:#}");
}
