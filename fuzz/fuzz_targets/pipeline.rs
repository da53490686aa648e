//! Arbitrary frames into the userspace pipeline, over tables with every feature on
//! (dnat, snat, affinity, source ranges, IPv4 and IPv6). The pipeline keeps its
//! conntrack across inputs so tracked-flow paths (replies, ICMP errors) are reached.
//! Properties: no panic, no hang, and a frame never changes length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Mutex;
use vipr_dataplane::pipeline::{Pipeline, SharedTables};
use vipr_dataplane::tables::Compiler;

struct State {
    pipeline: Pipeline,
    now: u64,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn state() -> State {
    let mut vips = Vec::new();
    let mut next_hops = Vec::new();
    for case in vipr_fixtures::cases() {
        for v in case.state.vips {
            if !vips.iter().any(|x: &vipr_dataplane::tables::VipSpec| x.key() == v.key()) {
                vips.push(v);
            }
        }
        next_hops.extend(case.state.next_hops);
    }
    // Give the tutorial VIP every option, so fuzzed frames reach every branch.
    let mut snat = vips[0].clone();
    snat.port = 9000;
    snat.snat_addr = Some("192.0.2.2".parse().unwrap());
    snat.affinity_timeout_s = Some(5);
    snat.source_ranges = vec!["198.51.100.0/25".parse().unwrap()];
    vips.push(snat);
    let desired = vipr_dataplane::tables::DesiredState { vips, next_hops, ..Default::default() };
    let tables = Compiler::default().compile(&desired).expect("fuzz tables compile");
    State { pipeline: Pipeline::new(&SharedTables::new(tables), 64), now: 1_000_000_000 }
}

fuzz_target!(|data: &[u8]| {
    let mut guard = STATE.lock().unwrap();
    let s = guard.get_or_insert_with(state);
    s.now += 1_000_000;
    let mut frame = data.to_vec();
    s.pipeline.process(&mut frame, 1, s.now);
    assert_eq!(frame.len(), data.len(), "the pipeline changed a frame's length");
});
