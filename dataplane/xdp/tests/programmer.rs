//! The programmer against real BPF maps (and the batched conntrack read): a ring that fits its inner map is rewritten in
//! place (the same kernel map, no swap), one that outgrows it is swapped for a larger
//! map, and either way the kernel holds exactly the compiled ring. Needs root.

use aya::maps::{Array, Map, MapData};
use vipr_abi::PROTO_TCP;
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

/// The id of the kernel map in the VIP's `RINGS` slot, and what it holds.
fn ring_in_kernel(xdp: &Xdp, tables: &Tables) -> (u32, Vec<u32>) {
    let vip = tables.vips.values().next().unwrap();
    let inner: MapData = xdp.maps.rings.get(&vip.info.vip_id, 0).unwrap();
    let id = inner.info().unwrap().id();
    let ring: Array<MapData, u32> = Array::try_from(Map::Array(inner)).unwrap();
    let m = ring.get(&0, 0).unwrap();
    let slots = (0..=m).map(|i| ring.get(&i, 0).unwrap()).collect();
    (id, slots)
}

#[test]
fn a_ring_that_fits_is_rewritten_in_place_and_one_that_outgrows_its_map_is_swapped() {
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
    // 20 backends need M = 2003: more than the map holds, so a new one is swapped in.
    assert_ne!(program(&mut xdp, 20), first, "a larger map");
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
