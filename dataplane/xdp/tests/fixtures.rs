//! The whole fixture table through the XDP program in the kernel (BPF_PROG_TEST_RUN):
//! verdicts, output bytes and counters must equal what the table expects, which is what
//! the userspace pipeline produces. Needs root (BPF map and program creation).

use vipr_abi::{drop, FLOW_DIR_FORWARD};
use vipr_dataplane::pipeline::{Counters, Verdict};
use vipr_dataplane::tables::Tables;
use vipr_fixtures::{cases, run_case, Dataplane};
use vipr_xdp::{Limits, Programmer, Xdp};

// XDP actions (uapi/linux/bpf.h).
const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

struct KernelXdp {
    xdp: Option<Xdp>,
    programmer: Programmer,
    tables: Tables,
}

impl KernelXdp {
    fn xdp(&mut self) -> &mut Xdp {
        self.xdp.as_mut().expect("reset loads the program")
    }

    fn drops(&mut self) -> [u64; drop::COUNT as usize] {
        self.xdp().maps.counters().expect("reading DROPS").drops
    }
}

impl Dataplane for KernelXdp {
    fn reset(&mut self, tables: &Tables, conntrack_capacity: usize) {
        let limits = Limits {
            vips: 64,
            backends: 256,
            conntrack_flows: conntrack_capacity as u32,
            source_ranges: 64,
            next_hops: 64,
            ring_slots: 1 << 16,
        };
        // A new conntrack size needs a new map; otherwise the loaded program is reused
        // with its maps emptied, which also exercises the programmer's adopt path.
        if self.xdp.as_ref().map(|x| x.limits) != Some(limits) {
            self.xdp = None;
            self.xdp = Some(Xdp::load(limits, None).unwrap_or_else(|e| panic!("{e}")));
        } else {
            let maps = &mut self.xdp().maps;
            maps.clear_conntrack().unwrap();
            maps.reset_counters().unwrap();
        }
        self.programmer = Programmer::new();
        self.program(tables);
    }

    fn program(&mut self, tables: &Tables) {
        self.tables = tables.clone();
        let xdp = self.xdp.as_mut().unwrap();
        self.programmer
            .program(&mut xdp.maps, &xdp.limits, tables)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    fn process(&mut self, frame: &mut Vec<u8>, ingress: u32, now_ns: u64) -> Verdict {
        let mut settings = self.tables.settings;
        settings.fixed_now_ns = now_ns;
        self.xdp().maps.set_settings(&settings).unwrap();
        let before = self.drops();
        let (action, _) = self.xdp().test_run(frame, ingress, 1).unwrap_or_else(|e| panic!("{e}"));
        match action {
            XDP_PASS => Verdict::Pass,
            XDP_TX => Verdict::Tx,
            // Which reason: the one drop counter that moved.
            XDP_DROP => {
                let after = self.drops();
                let moved: Vec<u32> =
                    (0..drop::COUNT).filter(|&r| after[r as usize] != before[r as usize]).collect();
                assert_eq!(
                    moved.len(),
                    1,
                    "a drop must count exactly one reason, moved: {moved:?}"
                );
                Verdict::Drop { reason: moved[0] }
            }
            // BPF_PROG_TEST_RUN does not perform the redirect, so its target is not
            // observable; the next hop whose MACs the program wrote names it.
            XDP_REDIRECT => {
                let (dst, src) = (&frame[0..6], &frame[6..12]);
                let hop = self
                    .tables
                    .next_hops
                    .entries()
                    .find(|(_, h)| h.dst_mac == dst && h.src_mac == src);
                Verdict::Redirect { ifindex: hop.map_or(0, |(_, h)| h.ifindex) }
            }
            XDP_ABORTED => panic!("the program aborted (XDP_ABORTED)"),
            other => panic!("unknown XDP action {other}"),
        }
    }

    fn counters(&mut self) -> Counters {
        self.xdp().maps.counters().unwrap()
    }

    fn accepts(&self, frame: &[u8]) -> Result<(), &'static str> {
        if frame.len() < 14 {
            return Err("shorter than an Ethernet header: no XDP program ever sees it");
        }
        Ok(())
    }

    fn conntrack_flows(&mut self) -> usize {
        let entries = self.xdp().maps.conntrack_entries();
        entries.iter().filter(|(_, e)| e.direction == FLOW_DIR_FORWARD).count()
    }
}

#[test]
fn every_fixture_case_gives_the_same_result_in_the_kernel() {
    assert!(
        running_as_root(),
        "this test loads BPF programs and maps: run it as root (CI does, through scripts/test.sh)"
    );
    let mut dp = KernelXdp { xdp: None, programmer: Programmer::new(), tables: Tables::default() };
    let all = cases();
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    for case in &all {
        match run_case(&mut dp, case) {
            Ok(0) => {}
            Ok(n) => skipped.push(format!("{} ({n} step(s))", case.name)),
            Err(e) => failures.push(format!("- {}\n{e}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ in the kernel:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
    eprintln!("{} fixture cases identical in the kernel", all.len());
    eprintln!("skipped, as no XDP program can be given them: {skipped:?}");
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
