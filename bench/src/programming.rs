//! Control-plane programming: from Kubernetes objects to programmed BPF maps, against
//! kube-proxy's iptables-restore of the same Services in the same run.
//!
//! - Cold: 10k Services x 10 endpoints (Service + EndpointSlice objects built with
//!   `vipr_k8s::fixtures`) from nothing into freshly loaded maps: translate -> compile
//!   (Maglev rings) -> program. Wall time per stage and the growth of this process's RSS,
//!   against rendering kube-proxy's iptables rule set for the same Services
//!   (kube_proxy.rs) and `iptables-restore` of it into an empty scratch netns. Each side
//!   runs five times from nothing (vipr in a new process each time, as an agent that
//!   starts is; iptables-restore into a new netns each time), 3 s apart, and the median
//!   run counts.
//! - One endpoint change at 1k and at 10k Services: event-to-programmed latency
//!   percentiles (hdrhistogram). An event is one EndpointSlice whose endpoint moves to
//!   another address; from then until the programmer returns: translate the changed
//!   Service, compile, program what changed (asserted: one ring), each step given only
//!   the change. Also the same with a full re-translation of every object. Baseline: kube-proxy's partial sync of one Service
//!   (`iptables-restore --noflush` of that Service's chains, as kube-proxy has done since
//!   1.26) into the netns holding the full rule set.
//!
//! Needs root (BPF maps, network namespaces). The XDP program is loaded and never
//! attached; iptables rules go only into scratch namespaces that are deleted after.

use crate::kube_proxy;
use anyhow::{bail, ensure, Context, Result};
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vipr_dataplane::tables::{Compiler, DesiredState, Tables, VipSpec};
use vipr_k8s::k8s_openapi::api::core::v1::{Node, Service};
use vipr_k8s::k8s_openapi::api::discovery::v1::EndpointSlice;
use vipr_k8s::{fixtures, translate, Inputs, Options, Translator};
use vipr_xdp::{Limits, Programmer, Xdp};

const ENDPOINTS: usize = 10;

struct Sizes {
    /// The cold figure's size, also the larger size of the change figure (the cold
    /// run's programmed maps and iptables namespace are reused for it).
    large: usize,
    small: usize,
    /// Events per size: incremental, full re-translation, iptables partial sync.
    events: (usize, usize, usize),
    /// Cold runs of each side at the large size, each from nothing: the median counts
    /// (one run alone is at the mercy of a noisy neighbour on a shared machine).
    cold_runs: usize,
}

pub fn suite(smoke: bool, machine: &str) -> Result<String> {
    let sizes = if smoke {
        Sizes { large: 50, small: 20, events: (20, 5, 3), cold_runs: 1 }
    } else {
        Sizes { large: 10_000, small: 1_000, events: (1_000, 50, 30), cold_runs: 5 }
    };
    let (mut world, cold) = World::cold(sizes.large, sizes.cold_runs)?;
    let large = one_change(&mut world, sizes.events)?;
    drop(world);
    let (mut world, _) = World::cold(sizes.small, 1)?;
    let small = one_change(&mut world, sizes.events)?;
    drop(world);
    Ok(report(smoke, machine, &sizes, &cold, &[small, large]))
}

// ---------------------------------------------------------------------------------------
// The cluster

/// Endpoint addresses: 192.0.2.1-254 and 198.51.100.1-254.
fn endpoint_pool() -> Vec<IpAddr> {
    (1..=254u8)
        .map(|h| IpAddr::from([192, 0, 2, h]))
        .chain((1..=254u8).map(|h| IpAddr::from([198, 51, 100, h])))
        .collect()
}

/// `n` Services of ENDPOINTS ready endpoints each, as Kubernetes objects and as
/// kube-proxy's model of the same Services (same VIPs, ports and endpoints).
fn cluster(n: usize) -> (Inputs, Vec<kube_proxy::Service>) {
    let kp = kube_proxy::services(n, ENDPOINTS, &endpoint_pool());
    let mut inputs = Inputs::default();
    for (i, s) in kp.iter().enumerate() {
        let name = format!("svc-{i}");
        inputs.services.push(
            fixtures::service(&name)
                .cluster_ip(&s.vip.to_string())
                .port(s.port.into(), 8080)
                .build(),
        );
        let mut slice = fixtures::slice(&format!("{name}-1"), &name).port(8080);
        for (ep, _) in &s.endpoints {
            slice = slice.ready(&ep.to_string());
        }
        inputs.endpoint_slices.push(slice.build());
    }
    (inputs, kp)
}

fn limits() -> Limits {
    Limits {
        vips: 16_384,
        backends: 1 << 17,
        conntrack_flows: 1 << 12,
        source_ranges: 64,
        next_hops: 64,
        // Room for 10k rings of 10 backends, with their headroom, as the VIP and backend
        // maps are sized for them.
        ring_slots: 16 << 20,
    }
}

fn desired(inputs: &Inputs, opts: &Options) -> Result<DesiredState> {
    let t = translate(inputs, opts);
    ensure!(
        t.warnings.is_empty(),
        "the benchmark cluster translates with warnings: {:?}",
        t.warnings
    );
    ensure!(
        t.vips.len() == inputs.services.len(),
        "{} VIPs from {} Services",
        t.vips.len(),
        inputs.services.len()
    );
    Ok(DesiredState { vips: t.into_vip_specs(), ..Default::default() })
}

// ---------------------------------------------------------------------------------------
// Cold programming

struct Cold {
    n: usize,
    rules: usize,
    /// Every run's stages; the first ran in this process, the others each in a new one.
    runs: Vec<Stages>,
    /// The memory of each run in a new process (of the first run, when it is the only one).
    memory: Vec<Memory>,
    ring_bytes: usize,
    ring_pool_bytes: usize,
    render: Duration,
    /// Every run's iptables-restore, each into a new namespace.
    restores: Vec<Duration>,
    restore_rss: usize,
    iptables: String,
}

/// One cold run of vipr: translate, compile, program.
#[derive(Clone, Copy)]
struct Stages {
    translate: Duration,
    compile: Duration,
    program: Duration,
}

impl Stages {
    fn total(&self) -> Duration {
        self.translate + self.compile + self.program
    }
}

/// What a cold run's process grew its peak RSS by.
#[derive(Clone, Copy)]
struct Memory {
    /// Building the objects (as the watchers' stores hold them).
    objects: usize,
    /// Translating, compiling and programming them.
    vipr: usize,
}

impl Cold {
    /// The median of each figure of `memory`.
    fn memory(&self) -> Memory {
        let median = |f: fn(&Memory) -> usize| {
            let mut v: Vec<usize> = self.memory.iter().map(f).collect();
            v.sort();
            v[v.len() / 2]
        };
        Memory { objects: median(|m| m.objects), vipr: median(|m| m.vipr) }
    }

    /// The run of median total.
    fn vipr(&self) -> Stages {
        let mut runs = self.runs.clone();
        runs.sort_by_key(Stages::total);
        runs[runs.len() / 2]
    }
    fn restore(&self) -> Duration {
        let mut r = self.restores.clone();
        r.sort();
        r[r.len() / 2]
    }
    fn kube_proxy(&self) -> Duration {
        self.render + self.restore()
    }
}

/// Services, EndpointSlices and Nodes as the watchers hand them to the translator.
type Objects = (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>, Vec<Arc<Node>>);

/// `n` Services programmed both ways, ready for changes.
struct World {
    n: usize,
    inputs: Inputs,
    kp: Vec<kube_proxy::Service>,
    /// The objects as the watchers hand them over, for the incremental translator.
    objects: Objects,
    translator: Translator,
    xdp: Xdp,
    compiler: Compiler,
    programmer: Programmer,
    /// Holds kube-proxy's full rule set for the Services.
    netns: Netns,
}

/// vipr's state after programming from cold.
struct Programmed {
    translator: Translator,
    xdp: Xdp,
    compiler: Compiler,
    programmer: Programmer,
}

/// Programs the objects of `n` Services from cold into freshly loaded maps, timing each
/// step.
fn program_cold(n: usize, objects: &Objects) -> Result<(Stages, Programmed)> {
    let opts = Options::default();
    // The maps exist (the agent has loaded its program) and are empty. The objects
    // arrive as the watchers' first lists: one relist of each kind.
    let mut xdp = Xdp::load(limits(), None)?;
    let start = Instant::now();
    let mut translator = Translator::new(opts);
    translator.replace_services(objects.0.clone());
    translator.replace_slices(objects.1.clone());
    translator.replace_nodes(objects.2.clone());
    let changes = translator.take_changes();
    ensure!(
        changes.warnings.is_empty(),
        "the benchmark cluster translates with warnings: {:?}",
        changes.warnings
    );
    ensure!(changes.upserts.len() == n, "{} VIPs from {n} Services", changes.upserts.len());
    let state = DesiredState {
        vips: changes.upserts.into_iter().map(|v| v.spec).collect(),
        ..Default::default()
    };
    let translate = start.elapsed();
    let start = Instant::now();
    let mut compiler = Compiler::default();
    let changes = compiler.sync(&state)?;
    let compile = start.elapsed();
    let start = Instant::now();
    let mut programmer = Programmer::new();
    let written = programmer.apply(&mut xdp.maps, &xdp.limits, compiler.tables(), &changes)?;
    let program = start.elapsed();
    eprintln!(
        "programming: {n} Services from cold: translate {:.0} ms, compile {:.0} ms, program {:.0} ms",
        ms(translate),
        ms(compile),
        ms(program)
    );
    ensure!(written.rings_written == n, "{} rings written for {n} Services", written.rings_written);
    ensure!(xdp.maps.vips.iter().count() == n, "the VIP map does not hold {n} VIPs");
    let stages = Stages { translate, compile, program };
    Ok((stages, Programmed { translator, xdp, compiler, programmer }))
}

/// The objects of `n` Services as the watchers hand them over.
fn objects(inputs: &Inputs) -> Objects {
    (
        inputs.services.iter().cloned().map(Arc::new).collect(),
        inputs.endpoint_slices.iter().cloned().map(Arc::new).collect(),
        inputs.nodes.iter().cloned().map(Arc::new).collect(),
    )
}

/// `vipr-bench cold-run N`: one cold run of N Services in a process of its own (a new
/// heap, as an agent that starts has), its stages printed in nanoseconds, then what it
/// grew the process's peak RSS by, in bytes.
pub fn cold_run(args: &[String]) -> Result<()> {
    let n: usize = args.first().context("cold-run N")?.parse().context("cold-run N")?;
    let run = ColdRun::new(n)?;
    println!(
        "{} {} {} {} {}",
        run.stages.translate.as_nanos(),
        run.stages.compile.as_nanos(),
        run.stages.program.as_nanos(),
        run.memory.objects,
        run.memory.vipr
    );
    Ok(())
}

/// One cold run of vipr, what it ran on and what it left.
struct ColdRun {
    inputs: Inputs,
    kp: Vec<kube_proxy::Service>,
    objects: Objects,
    stages: Stages,
    /// Peaks, not the RSS at the end: an allocator that keeps freed memory, or gives it
    /// back later, would make the RSS of one moment say little. Good only in a new
    /// process: in one that freed memory before (another suite), the objects would go
    /// into that and seem to take none.
    memory: Memory,
    programmed: Programmed,
}

impl ColdRun {
    fn new(n: usize) -> Result<Self> {
        let before = peak_rss_bytes();
        // The kube-proxy half is made (and kept) in every run: its memory freed meanwhile
        // would be taken again by vipr's and go uncounted.
        let (inputs, kp) = cluster(n);
        let objects = objects(&inputs);
        let with_objects = peak_rss_bytes();
        let (stages, programmed) = program_cold(n, &objects)?;
        let memory = Memory {
            objects: with_objects.saturating_sub(before),
            vipr: peak_rss_bytes().saturating_sub(with_objects),
        };
        Ok(ColdRun { inputs, kp, objects, stages, memory, programmed })
    }
}

/// Before each cold run after the first, the wait until the machine is idle again: the
/// kernel frees what the last run left (its maps, or a namespace of 320k rules) in the
/// background, on the same cores, for up to seconds. At least `SETTLE`, then until under
/// `IDLE_BUSY` of the CPU time of `IDLE_WINDOW` is busy, at most `SETTLE_MAX`.
const SETTLE: Duration = Duration::from_secs(1);
const SETTLE_MAX: Duration = Duration::from_secs(15);
const IDLE_WINDOW: Duration = Duration::from_millis(250);
const IDLE_BUSY: f64 = 0.05;

fn settle() {
    let start = Instant::now();
    std::thread::sleep(SETTLE);
    while start.elapsed() < SETTLE_MAX {
        let (busy0, all0) = crate::cpu_ticks();
        std::thread::sleep(IDLE_WINDOW);
        let (busy1, all1) = crate::cpu_ticks();
        if all1 <= all0 || ((busy1 - busy0) as f64) < IDLE_BUSY * (all1 - all0) as f64 {
            return;
        }
    }
}

/// A cold run in a new process.
fn cold_run_elsewhere(n: usize) -> Result<(Stages, Memory)> {
    let out = Command::new(std::env::current_exe()?)
        .args(["cold-run", &n.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("running vipr-bench cold-run")?;
    ensure!(out.status.success(), "vipr-bench cold-run {n} failed ({})", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let ns: Vec<u64> = text.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
    let [translate, compile, program, objects, vipr] = ns[..] else {
        bail!("cold-run printed {text:?}")
    };
    let d = Duration::from_nanos;
    let stages = Stages { translate: d(translate), compile: d(compile), program: d(program) };
    Ok((stages, Memory { objects: objects as usize, vipr: vipr as usize }))
}

impl World {
    /// Programs `n` Services from cold both ways, timing each step, `runs` times each
    /// way; the first run of each stays for the changes.
    fn cold(n: usize, runs: usize) -> Result<(World, Cold)> {
        // Its memory counts only when no run in a new process replaces it (see `ColdRun`).
        let ColdRun { inputs, kp, objects, stages: first, memory: first_memory, programmed: vipr } =
            ColdRun::new(n)?;
        let (ring_bytes, ring_pool_bytes) =
            (vipr.programmer.ring_bytes(), vipr.programmer.ring_pool_bytes());
        let mut vipr_runs = vec![first];
        let mut memory = Vec::new();

        settle();
        let start = Instant::now();
        let rules = kube_proxy::iptables_restore(&kp);
        let render = start.elapsed();
        let netns = Netns::new(&format!("vipr-bench-prog-{n}"))?;
        let (restore, restore_rss) = netns.restore(&rules, &[])?;
        eprintln!("programming: {n} Services from cold: iptables-restore {:.0} ms", ms(restore));
        // iptables-save takes minutes (and crashes) at 10k Services: look at one
        // Service's chains instead.
        netns.check_service(n - 1, &kp[n - 1])?;
        let mut restores = vec![restore];
        // The other runs alternate, so both sides see the same spells of a machine
        // whose speed drifts.
        for run in 1..runs {
            settle();
            let (stages, used) = cold_run_elsewhere(n)?;
            vipr_runs.push(stages);
            memory.push(used);
            settle();
            let scratch = Netns::new(&format!("vipr-bench-prog-{n}-{run}"))?;
            let (restore, _) = scratch.restore(&rules, &[])?;
            eprintln!(
                "programming: {n} Services from cold: iptables-restore {:.0} ms",
                ms(restore)
            );
            restores.push(restore);
        }
        let iptables = Command::new("iptables-restore")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let cold = Cold {
            n,
            rules: rules.lines().filter(|l| l.starts_with("-A ")).count(),
            runs: vipr_runs,
            memory: if memory.is_empty() { vec![first_memory] } else { memory },
            ring_bytes,
            ring_pool_bytes,
            render,
            restores,
            restore_rss,
            iptables,
        };
        let Programmed { translator, xdp, compiler, programmer } = vipr;
        let world = World { n, inputs, kp, objects, translator, xdp, compiler, programmer, netns };
        Ok((world, cold))
    }
}

// ---------------------------------------------------------------------------------------
// One endpoint change

struct Change {
    n: usize,
    /// Event to programmed, translating only the changed Service.
    incremental: Histogram<u64>,
    /// The stages of the incremental path.
    stages: [Histogram<u64>; 3],
    /// Event to programmed, translating every object again.
    full: Histogram<u64>,
    /// kube-proxy: iptables-restore --noflush of the changed Service's chains.
    iptables: Histogram<u64>,
}

/// xorshift64: the events' choice of Service and endpoint, the same every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Moves one endpoint of the slice to an address the slice does not have yet.
fn move_endpoint(slice: &mut EndpointSlice, pool: &[IpAddr], rng: &mut Rng) {
    let eps = slice.endpoints.as_mut().expect("fixture slices have endpoints");
    let j = rng.below(eps.len());
    loop {
        let addr = pool[rng.below(pool.len())].to_string();
        if eps.iter().all(|e| e.addresses[0] != addr) {
            eps[j].addresses[0] = addr;
            return;
        }
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures is valid")
}

fn one_change(
    w: &mut World,
    (events, full_events, iptables_events): (usize, usize, usize),
) -> Result<Change> {
    let n = w.n;
    let opts = Options::default();
    let pool = endpoint_pool();

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
    let mut change = Change {
        n,
        incremental: hist(),
        stages: [hist(), hist(), hist()],
        full: hist(),
        iptables: hist(),
    };
    let check = |tables: &Tables, compiler: &Compiler, report: vipr_xdp::ProgramReport| {
        ensure!(
            compiler.rings_built == 1 && report.rings_written == 1,
            "one endpoint change built {} and wrote {} rings",
            compiler.rings_built,
            report.rings_written
        );
        ensure!(tables.vips.len() == n, "{} VIPs programmed", tables.vips.len());
        Ok(())
    };

    for _ in 0..events {
        let k = rng.below(n);
        // The agent's path: the watch event carries the new slice; the translator
        // redoes its Service alone and names the VIPs that changed; the compiler and the
        // programmer touch those only.
        let mut slice = (*w.objects.1[k]).clone();
        move_endpoint(&mut slice, &pool, &mut rng);
        let slice = Arc::new(slice);
        let event = Instant::now();
        w.translator.apply_slice(slice.clone());
        let changes = w.translator.take_changes();
        ensure!(
            w.translator.retranslated == 1 && changes.upserts.len() == 1,
            "{} Services translated again, {} VIPs changed",
            w.translator.retranslated,
            changes.upserts.len()
        );
        let upserts: Vec<VipSpec> = changes.upserts.into_iter().map(|v| v.spec).collect();
        let translated = Instant::now();
        let tables_changes = w.compiler.update(&upserts, &changes.removes)?;
        let compiled = Instant::now();
        let report = w.programmer.apply(
            &mut w.xdp.maps,
            &w.xdp.limits,
            w.compiler.tables(),
            &tables_changes,
        )?;
        let done = Instant::now();
        change.incremental.record(ns(done - event))?;
        change.stages[0].record(ns(translated - event))?;
        change.stages[1].record(ns(compiled - translated))?;
        change.stages[2].record(ns(done - compiled))?;
        check(w.compiler.tables(), &w.compiler, report)?;
        w.inputs.endpoint_slices[k] = (*slice).clone();
        w.objects.1[k] = slice;
    }

    for _ in 0..full_events {
        let k = rng.below(n);
        let event = Instant::now();
        move_endpoint(&mut w.inputs.endpoint_slices[k], &pool, &mut rng);
        let state = desired(&w.inputs, &opts)?;
        let changes = w.compiler.sync(&state)?;
        let report =
            w.programmer.apply(&mut w.xdp.maps, &w.xdp.limits, w.compiler.tables(), &changes)?;
        change.full.record(ns(event.elapsed()))?;
        check(w.compiler.tables(), &w.compiler, report)?;
    }

    eprintln!(
        "programming: {n} Services, one change: vipr p99 {:.2} ms incremental, {:.2} ms full",
        pct(&change.incremental, 0.99),
        pct(&change.full, 0.99)
    );
    // kube-proxy's side: the namespace holds the full rule set; each event restores the
    // changed Service's chains only.
    for _ in 0..iptables_events {
        let k = rng.below(n);
        let j = rng.below(ENDPOINTS);
        let addr = loop {
            let a = pool[rng.below(pool.len())];
            if w.kp[k].endpoints.iter().all(|(ep, _)| *ep != a) {
                break a;
            }
        };
        w.kp[k].endpoints[j].0 = addr;
        let start = Instant::now();
        let partial = service_chains(&w.kp[k], k);
        w.netns.restore(&partial, &["--noflush"])?;
        change.iptables.record(ns(start.elapsed()))?;
        // The partial restore replaced the Service's chains.
        w.netns.check_service(k, &w.kp[k])?;
    }
    Ok(change)
}

/// kube-proxy's partial sync input for Service `k` alone: its KUBE-SVC and KUBE-SEP
/// chains, declared (so flushed) and refilled; the KUBE-SERVICES jump stays.
fn service_chains(svc: &kube_proxy::Service, k: usize) -> String {
    let one = kube_proxy::iptables_restore(std::slice::from_ref(svc));
    let mut out = String::from("*nat\n");
    for line in one.lines() {
        let keep = line.starts_with(":KUBE-SVC-")
            || line.starts_with(":KUBE-SEP-")
            || line.starts_with("-A KUBE-SVC-")
            || line.starts_with("-A KUBE-SEP-");
        if keep {
            let line = line
                .replace("KUBE-SVC-000000", &format!("KUBE-SVC-{k:06}"))
                .replace("KUBE-SEP-000000-", &format!("KUBE-SEP-{k:06}-"))
                .replace("default/svc-0:", &format!("default/svc-{k}:"));
            out += &line;
            out.push('\n');
        }
    }
    out += "COMMIT\n";
    out
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().try_into().unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------
// Scratch network namespaces for iptables

/// A network namespace of its own, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        let ok = Command::new("ip").args(["netns", "add", name]).status().context("running ip")?;
        ensure!(ok.success(), "ip netns add {name} failed");
        Ok(Netns(name.to_owned()))
    }

    /// iptables-restore `rules` (with `flags`) inside the namespace: wall time of the
    /// process from spawn to exit, and its peak RSS.
    fn restore(&self, rules: &str, flags: &[&str]) -> Result<(Duration, usize)> {
        let start = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "iptables-restore"])
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ip netns exec ... iptables-restore")?;
        child.stdin.take().expect("piped").write_all(rules.as_bytes())?;
        // wait4 rather than Child::wait: it also tells this child's own peak RSS.
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: the pid is our unreaped child; status and usage are valid out-pointers.
        let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
        let took = start.elapsed();
        ensure!(pid > 0, "wait4: {}", std::io::Error::last_os_error());
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let status = std::process::ExitStatus::from_raw(status);
        if !status.success() {
            bail!("iptables-restore in netns {} failed ({status}): {}", self.0, err.trim());
        }
        Ok((took, usage.ru_maxrss as usize * 1024))
    }

    /// The namespace holds kube-proxy's chains for Service `k`: the jump to each
    /// endpoint chain, and each endpoint chain's DNAT to its endpoint.
    fn check_service(&self, k: usize, svc: &kube_proxy::Service) -> Result<()> {
        let chain = self.output(&["iptables", "-t", "nat", "-S", &format!("KUBE-SVC-{k:06}")])?;
        let jumps = chain.lines().filter(|l| l.contains(" -j KUBE-SEP-")).count();
        ensure!(
            jumps == svc.endpoints.len(),
            "KUBE-SVC-{k:06} has {jumps} endpoint jumps:\n{chain}"
        );
        for (j, (ep, port)) in svc.endpoints.iter().enumerate() {
            let sep = format!("KUBE-SEP-{k:06}-{j:03}");
            let rules = self.output(&["iptables", "-t", "nat", "-S", &sep])?;
            ensure!(
                rules.contains(&format!("--to-destination {ep}:{port}")),
                "{sep} does not DNAT to {ep}:{port}:\n{rules}"
            );
        }
        Ok(())
    }

    fn output(&self, cmd: &[&str]) -> Result<String> {
        let out = Command::new("ip").args(["netns", "exec", &self.0]).args(cmd).output()?;
        ensure!(
            out.status.success(),
            "{cmd:?} in netns {} failed ({}): {}",
            self.0,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// This process's peak RSS so far (`VmHWM`).
fn peak_rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<usize>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

// ---------------------------------------------------------------------------------------
// Report

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(b: usize) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e6
}

fn report(smoke: bool, machine: &str, sizes: &Sizes, c: &Cold, changes: &[Change]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Control-plane programming\n");
    let _ = writeln!(
        s,
        "Command: `cargo run --release -p vipr-bench -- programming --write bench/RESULTS.md`{}  \n\
         Machine: {machine}  \n\
         Services as Kubernetes objects (`vipr_k8s::fixtures`: a Service with a cluster IP and \
         one port, an EndpointSlice of {ENDPOINTS} ready endpoints), translated (DaemonSet mode), \
         compiled (one Maglev ring per VIP) and programmed into the maps of the loaded, unattached \
         XDP program. Baseline: kube-proxy's iptables rule set for the same Services \
         (bench/src/kube_proxy.rs, its chain layout), restored with `{}` into a scratch network \
         namespace, in the same run.\n",
        if smoke { " (SMOKE RUN: figures meaningless)" } else { "" },
        c.iptables,
    );

    let v = c.vipr();
    let ratio = ms(c.kube_proxy()) / ms(v.total());
    let _ = writeln!(s, "### From cold: {} Services x {ENDPOINTS} endpoints\n", c.n);
    let _ = writeln!(s, "| step | vipr ms | kube-proxy (iptables) ms | ratio |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    let _ = writeln!(
        s,
        "| objects -> desired state (translate / render {} rules) | {:.1} | {:.1} | {:.1}x |",
        c.rules,
        ms(v.translate),
        ms(c.render),
        ms(c.render) / ms(v.translate)
    );
    let _ = writeln!(s, "| compile (Maglev rings) | {:.1} | - | |", ms(v.compile));
    let _ = writeln!(
        s,
        "| program the kernel (BPF maps / iptables-restore) | {:.1} | {:.1} | {:.1}x |",
        ms(v.program),
        ms(c.restore()),
        ms(c.restore()) / ms(v.program)
    );
    let _ = writeln!(
        s,
        "| **total** | **{:.1}** | **{:.1}** | **{:.1}x** |\n",
        ms(v.total()),
        ms(c.kube_proxy()),
        ratio
    );
    let list = |d: &mut dyn Iterator<Item = Duration>| {
        d.map(|d| format!("{:.0}", ms(d))).collect::<Vec<_>>().join(", ")
    };
    let _ = writeln!(
        s,
        "Each side ran {} times from nothing, the two sides taking turns, each run once the \
         machine was idle again (at least {} s after the last; then under {:.0}% busy over {} \
         ms), and the table shows each side's median run: vipr with newly loaded maps each \
         time, after the first in a new process (totals {} ms), iptables-restore into a new \
         namespace each time ({} ms).\n",
        c.runs.len(),
        SETTLE.as_secs(),
        IDLE_BUSY * 100.0,
        IDLE_WINDOW.as_millis(),
        list(&mut c.runs.iter().map(Stages::total)),
        list(&mut c.restores.iter().copied()),
    );
    let _ = writeln!(
        s,
        "Goal: at least 100x faster: **{}** ({:.0}x). Memory (peak RSS of a run in a new \
         process, median): the objects took {:.0} MiB; translating, compiling and programming \
         them took {:.0} MiB more (desired state, compiled tables, the programmer's copy of what \
         is programmed, and what the stages made and freed on the way); the rings \
         take {:.0} MiB of the kernel's ring pool of {:.0} MiB (made with the maps at load; 4 \
         bytes a slot, a quarter of headroom a ring so one that grows a little is rewritten in \
         place). iptables-restore peaked at {:.0} MiB RSS (the rules' kernel memory not \
         counted).\n",
        if ratio >= 100.0 { "met" } else { "not met" },
        ratio,
        mib(c.memory().objects),
        mib(c.memory().vipr),
        mib(c.ring_bytes),
        mib(c.ring_pool_bytes),
        mib(c.restore_rss),
    );

    let _ = writeln!(s, "### One endpoint change: event to programmed\n");
    let _ = writeln!(
        s,
        "An event: one endpoint of one Service's EndpointSlice moves to another address; timed \
         until `program` has written it (asserted: one ring built and written, nothing else). \
         Incremental, the agent's path: the watch event's slice goes to `Translator::apply_slice`, \
         which translates again only that Service (asserted) and names the one VIP that changed; \
         `Compiler::update` rebuilds that VIP's ring alone; `Programmer::apply` writes its \
         backends and rewrites the ring in place (no RCU grace period). No stage walks the \
         other Services. Full: every object is translated again from scratch and the whole \
         desired state compared (`Compiler::sync`). \
         Baseline: kube-proxy's partial sync, `iptables-restore --noflush` of the changed \
         Service's KUBE-SVC and KUBE-SEP chains into the namespace holding the whole rule set. \
         Events: {} incremental, {} full, {} iptables per size.\n",
        sizes.events.0, sizes.events.1, sizes.events.2
    );
    let _ = writeln!(
        s,
        "| Services | vipr incremental p50 / p99 ms | stages p50 ms (translate / compile / program) | vipr full p50 / p99 ms | iptables partial p50 / p99 ms | ratio p99 |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|");
    for ch in changes {
        let _ = writeln!(
            s,
            "| {} | {:.3} / {:.3} | {:.3} / {:.3} / {:.3} | {:.2} / {:.2} | {:.1} / {:.1} | {:.0}x |",
            ch.n,
            pct(&ch.incremental, 0.5),
            pct(&ch.incremental, 0.99),
            pct(&ch.stages[0], 0.5),
            pct(&ch.stages[1], 0.5),
            pct(&ch.stages[2], 0.5),
            pct(&ch.full, 0.5),
            pct(&ch.full, 0.99),
            pct(&ch.iptables, 0.5),
            pct(&ch.iptables, 0.99),
            pct(&ch.iptables, 0.99) / pct(&ch.incremental, 0.99),
        );
    }
    if let [small, large] = changes {
        let p99 = pct(&large.incremental, 0.99);
        let growth = p99 / pct(&small.incremental, 0.99);
        let _ = writeln!(
            s,
            "\nGoal: p99 under 5 ms at {} Services: **{}** ({p99:.3} ms); flat from {} to {}: \
             **{}** (p99 x{growth:.1} for {}x the Services).",
            large.n,
            if p99 < 5.0 { "met" } else { "not met" },
            small.n,
            large.n,
            if growth <= 2.0 { "met" } else { "not met" },
            large.n / small.n.max(1),
        );
    }
    s
}
