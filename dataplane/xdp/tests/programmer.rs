//! The programmer against real BPF maps (and the batched conntrack read): a ring that
//! fits its region of the ring pool is rewritten in place, one that outgrows it moves,
//! and either way the kernel holds exactly the compiled ring; a run of random changes
//! leaves every map as the tables say. Needs root.

use vipr_abi::{VipKey, PROTO_TCP};
use vipr_dataplane::tables::{BackendSpec, Compiler, DesiredState, Tables, VipSpec};
use vipr_xdp::{Limits, Programmer, Xdp};

fn state(backends: usize) -> DesiredState {
    let vip = VipSpec {
        addr: "192.0.2.10".parse().unwrap(),
        port: 80,
        proto: PROTO_TCP,
        snat_addr: None,
        affinity_timeout_s: None,
        source_ranges: vec![],
        ring_max: vipr_abi::DEFAULT_RING_MAX,
        backends: (0..backends)
            .map(|i| BackendSpec {
                addr: format!("198.51.100.{}", i + 1).parse().unwrap(),
                port: 8080,
                weight: 1,
                draining: false,
            })
            .collect(),
    };
    DesiredState { vips: vec![vip], ..Default::default() }
}

/// Where the VIP's ring starts in the kernel's ring pool, and what it holds there.
fn ring_in_kernel(xdp: &Xdp, tables: &Tables) -> (u32, Vec<u32>) {
    let vip = tables.vips.values().next().unwrap();
    let info = xdp.maps.vips.get(&vip.key, 0).unwrap();
    (info.ring_offset, xdp.maps.ring(&info).expect("the pool holds the ring"))
}

#[test]
fn a_ring_that_fits_is_rewritten_in_place_and_one_that_outgrows_its_region_moves() {
    assert!(
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:\t0\t")),
        "this test loads BPF maps: run it as root (scripts/test.sh does)"
    );
    let mut xdp = Xdp::load(Limits::default(), None).unwrap();
    let mut compiler = Compiler::default();
    let mut programmer = Programmer::new();
    let mut program = |xdp: &mut Xdp, backends: usize| {
        let tables = compiler.compile(&state(backends)).unwrap();
        let report = programmer.program(&mut xdp.maps, &xdp.limits, &tables).unwrap();
        assert_eq!(report.rings_written, 1);
        let (id, ring) = ring_in_kernel(xdp, &tables);
        let vip = tables.vips.values().next().unwrap();
        assert_eq!(
            ring,
            vip.ring.to_vec(),
            "the kernel holds the compiled ring ({backends} backends)"
        );
        id
    };
    let first = program(&mut xdp, 10);
    // 11 backends: M goes from 1009 to 1103, within the map's quarter of headroom.
    assert_eq!(program(&mut xdp, 11), first, "rewritten in place");
    // Back down: a smaller M in the same map.
    assert_eq!(program(&mut xdp, 9), first, "rewritten in place");
    // 20 backends need M = 2003: more than the region holds, so the ring moves.
    assert_ne!(program(&mut xdp, 20), first, "a larger region");
}

#[test]
fn the_conntrack_is_read_in_batches_and_every_entry_comes_back_once() {
    use std::collections::BTreeSet;
    use vipr_abi::{FlowEntry, FlowKey};
    let mut xdp = Xdp::load(Limits { conntrack_flows: 8192, ..Limits::default() }, None).unwrap();
    let mut want = BTreeSet::new();
    for i in 0..5000u32 {
        let mut key = FlowKey::zeroed();
        key.src[..4].copy_from_slice(&i.to_be_bytes());
        key.src_port = (i as u16).to_be();
        key.proto = PROTO_TCP;
        key.family = vipr_abi::FAMILY_V4;
        let entry = FlowEntry {
            last_seen_ns: 1,
            nat_src: [0; 16],
            nat_dst: [0; 16],
            nat_src_port: 0,
            nat_dst_port: 0,
            vip_id: 0,
            backend_id: i,
            direction: 0,
            tcp_state: 0,
            flags: 0,
            _pad: 0,
        };
        xdp.maps.conntrack.insert(key, entry, 0).unwrap();
        want.insert(i);
    }
    // 5000 entries in calls of 1000: the batch token must carry over between calls.
    let got = xdp.maps.conntrack_batched(1000).expect("batch lookups of an LRU hash");
    let ids: Vec<u32> = got.iter().map(|(_, e)| e.backend_id).collect();
    assert_eq!(ids.len(), 5000, "every entry once");
    assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), want);
}

/// xorshift64: the change sequence, the same every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Everything the maps hold must be what `t` says: VIPs, backends, VIP address counts,
/// source ranges, and the rings of `rings` (read slot by slot: slow).
fn assert_maps_hold(xdp: &Xdp, t: &Tables, rings: &[VipKey], step: usize) {
    use std::collections::{BTreeMap, BTreeSet};
    let vips: BTreeMap<_, _> =
        xdp.maps.vips.iter().map(|r| r.unwrap()).map(|(k, i)| (k, i.vip_id)).collect();
    let want: BTreeMap<_, _> = t.vips.iter().map(|(k, v)| (*k, v.info.vip_id)).collect();
    assert_eq!(vips, want, "step {step}: VIPs");
    for (id, b) in xdp.maps.backends.iter().enumerate() {
        let b = b.unwrap();
        let want = t.backends.get(id).filter(|w| w.family != 0);
        assert_eq!((b.family != 0).then_some(b), want.copied(), "step {step}: backend {id}");
    }
    let addrs: BTreeMap<_, _> = xdp
        .maps
        .vip_addrs
        .iter()
        .map(|r| r.unwrap())
        .map(|(k, n)| ((k.addr, k.family), n))
        .collect();
    let want: BTreeMap<_, _> = t.vip_addrs.iter().map(|(k, n)| ((k.addr, k.family), *n)).collect();
    assert_eq!(addrs, want, "step {step}: VIP addresses");
    let ranges: BTreeSet<(u32, u32)> = xdp
        .maps
        .source_ranges
        .keys()
        .map(|k| k.unwrap())
        .map(|k| (u32::from_be(k.data().vip_id_be), k.prefix_len()))
        .collect();
    let want: BTreeSet<(u32, u32)> = t
        .vips
        .values()
        .flat_map(|v| {
            v.source_ranges.iter().map(|n| (v.info.vip_id, 32 + u32::from(n.prefix_len())))
        })
        .collect();
    assert_eq!(ranges, want, "step {step}: source ranges");
    for vip in rings.iter().filter_map(|k| t.vips.get(k)) {
        let info = xdp.maps.vips.get(&vip.key, 0).unwrap();
        let ring = xdp.maps.ring(&info).expect("the pool holds the ring");
        assert_eq!(ring, vip.ring.to_vec(), "step {step}: ring of {:?}", vip.key);
    }
    // What status shows: every VIP's M, read with one mapping of the pool.
    let infos: Vec<_> = t.vips.values().map(|v| xdp.maps.vips.get(&v.key, 0).unwrap()).collect();
    let sizes = xdp.maps.ring_sizes(&infos);
    let want: Vec<_> = t.vips.values().map(|v| Some(v.ring_size())).collect();
    assert_eq!(sizes, want, "step {step}: ring sizes");
}

#[test]
fn applying_only_the_changes_leaves_the_maps_as_the_tables_say() {
    // Small maps: every step reads all of them back.
    let limits = Limits { vips: 256, backends: 1024, conntrack_flows: 1024, ..Limits::default() };
    let mut xdp = Xdp::load(limits, None).unwrap();
    let mut compiler = Compiler::default();
    let mut programmer = Programmer::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let spec = |rng: &mut Rng, port: u16| VipSpec {
        // Two addresses, so VIP address counts go up and down.
        addr: format!("192.0.2.{}", 10 + port % 2).parse().unwrap(),
        port,
        proto: PROTO_TCP,
        snat_addr: None,
        affinity_timeout_s: rng.below(2).eq(&0).then_some(30),
        source_ranges: (0..rng.below(3))
            .map(|i| format!("203.0.113.{}/{}", i * 64, 26 + i).parse().unwrap())
            .collect(),
        ring_max: vipr_abi::DEFAULT_RING_MAX,
        backends: (0..rng.below(6))
            .map(|_| BackendSpec {
                addr: format!("198.51.100.{}", 1 + rng.below(20)).parse().unwrap(),
                port: 8080,
                weight: 1,
                draining: rng.below(5) == 0,
            })
            .collect(),
    };
    let first: Vec<VipSpec> = (0..30).map(|p| spec(&mut rng, 1000 + p)).collect();
    let ch = compiler.sync(&DesiredState { vips: first, ..Default::default() }).unwrap();
    programmer.apply(&mut xdp.maps, &xdp.limits, compiler.tables(), &ch).unwrap();
    assert_maps_hold(&xdp, compiler.tables(), &ch.vips, 0);
    for step in 1..200 {
        let port = 1000 + rng.below(40) as u16;
        let ch = if rng.below(4) == 0 {
            let key = spec(&mut rng, port).key();
            compiler.update(&[], &[key]).unwrap()
        } else if rng.below(3) == 0 {
            // A Service's port changes: one VIP goes, one comes, in one change (the new
            // one may take an id an earlier step freed, never the old one's).
            let old = spec(&mut rng, port);
            let mut new = old.clone();
            new.port = 1000 + rng.below(40) as u16;
            let ch = compiler.update(std::slice::from_ref(&old), &[]).unwrap();
            programmer.apply(&mut xdp.maps, &xdp.limits, compiler.tables(), &ch).unwrap();
            compiler.update(&[new], &[old.key()]).unwrap()
        } else {
            compiler.update(&[spec(&mut rng, port)], &[]).unwrap()
        };
        programmer.apply(&mut xdp.maps, &xdp.limits, compiler.tables(), &ch).unwrap();
        assert_maps_hold(&xdp, compiler.tables(), &ch.vips, step);
    }
    let all: Vec<VipKey> = compiler.tables().vips.keys().copied().collect();
    assert_maps_hold(&xdp, compiler.tables(), &all, 200);
}

#[test]
fn a_full_ring_pool_grows_and_every_ring_keeps_its_place() {
    // A first pool of 64Ki slots.
    let limits = Limits {
        vips: 256,
        backends: 4096,
        conntrack_flows: 1024,
        ring_slots: 1 << 16,
        ..Limits::default()
    };
    let mut xdp = Xdp::load(limits, None).unwrap();
    let mut compiler = Compiler::default();
    let mut programmer = Programmer::new();
    let vip = |port: u16| {
        let mut s = state(10).vips.remove(0);
        s.port = port;
        s
    };
    let first: Vec<VipSpec> = (0..10).map(|p| vip(1000 + p)).collect();
    let ch = compiler.sync(&DesiredState { vips: first, ..Default::default() }).unwrap();
    programmer.apply(&mut xdp.maps, &xdp.limits, compiler.tables(), &ch).unwrap();
    let small = programmer.ring_pool_bytes();
    let offsets = |xdp: &Xdp, t: &Tables| -> Vec<(VipKey, u32)> {
        let mut o: Vec<_> =
            t.vips.keys().map(|k| (*k, xdp.maps.vips.get(k, 0).unwrap().ring_offset)).collect();
        o.sort();
        o
    };
    let before = offsets(&xdp, compiler.tables());
    // 100 more rings of M = 1009: far more than the first pool's room.
    let more: Vec<VipSpec> = (10..110).map(|p| vip(1000 + p)).collect();
    let ch = compiler.update(&more, &[]).unwrap();
    programmer.apply(&mut xdp.maps, &xdp.limits, compiler.tables(), &ch).unwrap();
    assert!(programmer.ring_pool_bytes() > small, "the pool grew");
    let after = offsets(&xdp, compiler.tables());
    for (key, at) in &before {
        assert!(after.contains(&(*key, *at)), "{key:?} kept its offset {at}");
    }
    let all: Vec<VipKey> = compiler.tables().vips.keys().copied().collect();
    assert_maps_hold(&xdp, compiler.tables(), &all, 0);
}

#[test]
fn a_cold_start_of_hundreds_of_vips_leaves_every_ring_in_the_pool() {
    // Enough rings that they are written on another thread, meanwhile the backends.
    let limits = Limits { vips: 512, backends: 4096, conntrack_flows: 1024, ..Limits::default() };
    let mut xdp = Xdp::load(limits, None).unwrap();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let vips: Vec<VipSpec> = (0..400u16)
        .map(|p| {
            let mut s = state(rng.below(9) as usize).vips.remove(0);
            s.port = 3000 + p;
            s
        })
        .collect();
    let mut compiler = Compiler::default();
    let mut programmer = Programmer::new();
    let ch = compiler.sync(&DesiredState { vips: vips.clone(), ..Default::default() }).unwrap();
    let report = programmer.apply(&mut xdp.maps, &xdp.limits, compiler.tables(), &ch).unwrap();
    assert_eq!(report.rings_written, 400);
    let all: Vec<VipKey> = compiler.tables().vips.keys().copied().collect();
    assert_maps_hold(&xdp, compiler.tables(), &all, 0);
    // And the next change finds them where the first put them.
    let mut changed = vips;
    for s in changed.iter_mut().step_by(7) {
        s.backends.pop();
    }
    let ch = compiler.sync(&DesiredState { vips: changed, ..Default::default() }).unwrap();
    programmer.apply(&mut xdp.maps, &xdp.limits, compiler.tables(), &ch).unwrap();
    assert_maps_hold(&xdp, compiler.tables(), &all, 1);
}

#[test]
fn a_restarted_programmer_finds_the_rings_where_they_are_and_rewrites_them_in_place() {
    let limits = Limits { vips: 256, backends: 4096, conntrack_flows: 1024, ..Limits::default() };
    let mut xdp = Xdp::load(limits, None).unwrap();
    let vips: Vec<VipSpec> = (0..20u16)
        .map(|p| {
            let mut s = state(3 + usize::from(p % 5)).vips.remove(0);
            s.port = 2000 + p;
            s
        })
        .collect();
    let desired = DesiredState { vips, ..Default::default() };
    let mut compiler = Compiler::default();
    let ch = compiler.sync(&desired).unwrap();
    Programmer::new().apply(&mut xdp.maps, &xdp.limits, compiler.tables(), &ch).unwrap();
    let offsets = |xdp: &Xdp| -> Vec<u32> {
        let mut o: Vec<u32> = xdp.maps.vips.iter().map(|r| r.unwrap().1.ring_offset).collect();
        o.sort();
        o
    };
    let before = offsets(&xdp);
    // A new agent: its programmer knows nothing and reads the maps back.
    let mut compiler = Compiler::default();
    let ch = compiler.sync(&desired).unwrap();
    let report =
        Programmer::new().apply(&mut xdp.maps, &xdp.limits, compiler.tables(), &ch).unwrap();
    assert_eq!(report.rings_written, 20, "every ring is written again");
    assert_eq!(offsets(&xdp), before, "each where it was");
    let all: Vec<VipKey> = compiler.tables().vips.keys().copied().collect();
    assert_maps_hold(&xdp, compiler.tables(), &all, 0);
}

#[test]
fn fresh_maps_get_the_settings_even_when_they_are_the_defaults() {
    let limits = Limits { vips: 16, backends: 64, conntrack_flows: 64, ..Limits::default() };
    let mut xdp = Xdp::load(limits, None).unwrap();
    let mut compiler = Compiler::default();
    let ch = compiler.sync(&state(2)).unwrap();
    assert_eq!(compiler.tables().settings, vipr_abi::Settings::default());
    Programmer::new().apply(&mut xdp.maps, &xdp.limits, compiler.tables(), &ch).unwrap();
    let held = xdp.maps.settings.get(&0, 0).unwrap();
    assert_eq!(
        held,
        vipr_abi::Settings::default(),
        "a fresh SETTINGS map holds zeros until written"
    );
}
