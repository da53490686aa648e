//! `vipr run`, `vipr stop`: the agent.
//!
//! `run` builds the config's dataplane (XDP: loads the program, adopting the maps and
//! links an earlier agent pinned; AF_XDP / DPDK: the poll-mode engine), programs the
//! tables of every source (the config, a manifests folder, a live cluster), starts
//! forwarding, and serves: SIGHUP or a change of a file reloads; a cluster change is
//! programmed as it arrives, timed from its watch event. A reload validates the whole
//! new file first; a bad file (or a compile error) is reported, counted, and the
//! running tables stay exactly as they were. The admin socket and the metrics endpoint
//! read the agent's [`Shared`] state. SIGTERM / SIGINT end the agent; the XDP dataplane
//! keeps running from its pins (like a crash would), `vipr stop` detaches and unpins.

use crate::dataplane::{maps_snapshot, Dataplane, XdpDataplane};
use crate::kubernetes::{self, KubeSource};
use crate::status::{self, LatencyStatus, Status};
use crate::{admin, metrics, model};
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use vipr_abi::*;
use vipr_config::{AttachMode, Config, DataplaneKind};
use vipr_dataplane::maglev::BackendIdentity;
use vipr_dataplane::tables::{Compiler, DesiredState, Tables, TablesChanges, VipSpec};
use vipr_xdp::{pin_dir, Limits, Maps, Programmer, Xdp};

/// Where `vipr run` records its process id, so `vipr stop` can end it.
fn pid_file(instance: &str) -> PathBuf {
    Path::new("/run/vipr").join(format!("{instance}.pid"))
}

/// Enters the network namespace `name` (as made by `ip netns add`) for this thread and
/// the threads it starts from now on (threads started before stay where they were).
/// Unlike `ip netns exec` it keeps the mount namespace, so
/// pins land in the host's bpffs and outlive the namespace's processes.
pub fn enter_netns(name: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let path = Path::new("/run/netns").join(name);
    let f = std::fs::File::open(&path)
        .with_context(|| format!("network namespace {name:?} ({} not found)", path.display()))?;
    // SAFETY: setns on a valid namespace fd; it changes only this thread's namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("entering network namespace {name:?}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there.
fn ensure_bpffs() -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = c"/sys/fs/bpf";
    // SAFETY: statfs into a zeroed struct; mount with constant C strings.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::statfs(path.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC {
            return Ok(());
        }
        if libc::mount(c"bpf".as_ptr(), path.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) != 0 {
            bail!("mounting bpffs at /sys/fs/bpf: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn load_config(path: &Path) -> Result<Config> {
    vipr_config::load(path)
        .map_err(|diags| anyhow::anyhow!("{} is not a valid config:\n{diags}", path.display()))
}

/// Where the VIPs come from besides the config: a folder of Kubernetes manifests
/// (Service, EndpointSlice, Node YAML), translated as the Kubernetes source would.
#[derive(Clone, Debug)]
pub struct Sources {
    pub manifests: Option<PathBuf>,
}

/// The VIPs of a manifests folder. Bad files are errors (nothing is applied); objects
/// vipr cannot serve are warnings, printed.
fn manifest_vips(dir: &Path) -> Result<Vec<vipr_dataplane::tables::VipSpec>> {
    let m = vipr_k8s::load_manifests(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &m.warnings {
        tracing::warn!("{}: {w}", dir.display());
    }
    let t = vipr_k8s::translate(&m.inputs, &vipr_k8s::Options::default());
    for w in &t.warnings {
        tracing::warn!("{}: {w}", dir.display());
    }
    Ok(t.into_vip_specs())
}

/// The tables of a config (and its sources) as the XDP program wants them: next hops
/// from the kernel FIB.
fn desired(cfg: &Config, sources: &Sources) -> Result<vipr_dataplane::tables::DesiredState> {
    let mut d = model::from_config(cfg);
    d.settings.flags |= SETTINGS_F_FIB_LOOKUP;
    if let Some(dir) = &sources.manifests {
        d.vips.extend(manifest_vips(dir)?);
    }
    Ok(d)
}

/// What the agent watches for changes: the config file's and every manifest's mtime,
/// size and inode. (The mtime alone can miss a write: a file truncated and then written
/// within one tick of the clock changes its mtime once, and the agent may have read it
/// empty in between.)
type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64, u64)>)>;

fn fingerprint(path: &Path, sources: &Sources) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let stat = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len(), m.ino()))
    };
    let mut v = vec![(path.to_path_buf(), stat(path))];
    if let Some(dir) = &sources.manifests {
        v.push((dir.clone(), stat(dir)));
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut files: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            v.extend(files.into_iter().map(|f| {
                let t = stat(&f);
                (f, t)
            }));
        }
    }
    v
}

pub fn limits(cfg: &Config) -> Limits {
    Limits { conntrack_flows: cfg.conntrack.capacity, ..Limits::default() }
}

/// What `vipr run` is told on its command line.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config: PathBuf,
    pub sources: Sources,
    pub netns: Option<String>,
    /// Where /metrics, /healthz and /readyz are served; `None`: nowhere.
    pub metrics_addr: Option<SocketAddr>,
}

/// What the admin socket and the metrics endpoint read while the agent's loop programs.
pub struct Shared {
    pub instance: String,
    pub dataplane: Mutex<Box<dyn Dataplane>>,
    /// Change (watch event, file edit) to programmed, in microseconds.
    pub latency: Mutex<Histogram<u64>>,
    /// The same, as Prometheus buckets.
    pub prom_latency: prometheus_client::metrics::histogram::Histogram,
    /// Tables programmed from every configured source at least once.
    pub ready: AtomicBool,
    pub reconcile_errors: AtomicU64,
    pub sources: Vec<String>,
    pub pinned_at: Option<String>,
    /// LoadBalancer pools: name, usable addresses, addresses in use.
    pub pools: Mutex<Vec<(String, u128, usize)>>,
}

impl Shared {
    pub fn status(&self) -> Result<Status> {
        // The agent's figures first, the dataplane's after: a change counted here is
        // then in the tables shown (the agent counts it once programmed). The other way
        // round, a change programmed while the snapshot waited for the lock was counted
        // but not shown.
        let ready = self.ready.load(Ordering::Relaxed);
        let reconcile_errors = self.reconcile_errors.load(Ordering::Relaxed);
        let programming = {
            let h = self.latency.lock().unwrap();
            let ms = |us: u64| us as f64 / 1000.0;
            (!h.is_empty()).then(|| LatencyStatus {
                count: h.len(),
                p50_ms: ms(h.value_at_quantile(0.5)),
                p99_ms: ms(h.value_at_quantile(0.99)),
                max_ms: ms(h.max()),
            })
        };
        let dp = self.dataplane.lock().unwrap();
        let mut s =
            status::from_snapshot(&self.instance, dp.kind(), &dp.attach_mode(), &dp.snapshot()?);
        drop(dp);
        s.pinned_at = self.pinned_at.clone();
        s.ready = ready;
        s.sources = self.sources.clone();
        s.reconcile_errors = reconcile_errors;
        s.programming = programming;
        Ok(s)
    }

    fn record_latency(&self, since: Instant) {
        let elapsed = since.elapsed();
        let us = elapsed.as_micros().min(u64::MAX as u128) as u64;
        let _ = self.latency.lock().unwrap().record(us.max(1));
        self.prom_latency.observe(elapsed.as_secs_f64());
    }
}

struct Agent {
    neighbors: crate::neighbors::Neighbors,
    path: PathBuf,
    sources: Sources,
    cfg: Config,
    compiler: Compiler,
    shared: Arc<Shared>,
    /// The cluster's VIPs; `None` until the Kubernetes source delivered its first
    /// translation (or when there is no cluster).
    cluster: Option<HashMap<VipKey, VipSpec>>,
    /// The desired state of the config and manifests, as last programmed.
    base: Option<DesiredState>,
    /// The VIP keys of `base`: the config's and manifests' VIPs win over the cluster's.
    base_keys: HashSet<VipKey>,
    /// Cluster VIPs the compiler refused (each alone): the tables keep what they had
    /// for them, and every later change tries them again.
    rejected: HashSet<VipKey>,
    /// The dataplane failed to take a change: it is programmed again on the next tick.
    retry: bool,
    /// Backend ids programmed and not yet followed by the neighbour entries.
    neighbors_due: Vec<u32>,
    /// Whether this agent programmed the tables yet. An agent that adopts a pinned
    /// dataplane serving a cluster waits for the cluster's Services before its first
    /// programming: the pins hold them, and programming the config alone would remove
    /// them until the API server answers.
    programmed: bool,
}

impl Agent {
    /// Compiles every source and programs the result; a compile error leaves the tables
    /// as they were, and any error counts as a reconcile error. `base` is the config's
    /// and manifests' desired state when they were read again; `None` reuses the last.
    fn program(
        &mut self,
        cfg: &Config,
        base: Option<DesiredState>,
    ) -> Result<vipr_xdp::ProgramReport> {
        let result = self.try_program(cfg, base);
        if result.is_err() {
            self.shared.reconcile_errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn try_program(
        &mut self,
        cfg: &Config,
        base: Option<DesiredState>,
    ) -> Result<vipr_xdp::ProgramReport> {
        let base = match base.or_else(|| self.base.clone()) {
            Some(b) => b,
            None => desired(cfg, &self.sources)?,
        };
        let base_keys: HashSet<VipKey> = base.vips.iter().map(VipSpec::key).collect();
        let mut desired = base.clone();
        for (key, vip) in self.cluster.iter().flatten() {
            if base_keys.contains(key) {
                tracing::warn!(
                    "kubernetes: {} is also in the config or manifests, which keep it",
                    vip_name(key)
                );
                continue;
            }
            if !self.rejected.contains(key) {
                if let Err(e) = vipr_dataplane::tables::check_vip(vip) {
                    // The compiler would refuse it alone: it keeps only itself out.
                    let name = vip_name(key);
                    tracing::error!("kubernetes: {name} is not served as the cluster says: {e}");
                    self.rejected.insert(*key);
                }
            }
            if self.rejected.contains(key) {
                // Refused: what the tables hold for it stays.
                let held = self.compiler.tables().vips.get(key);
                desired.vips.extend(held.map(|v| (*v.spec).clone()));
            } else {
                desired.vips.push(vip.clone());
            }
        }
        let changes = self.compiler.sync(&desired).context("compiling the tables")?;
        // The compiler holds it all now; a dataplane failure below is retried on the tick.
        self.programmed = true;
        self.base = Some(base);
        self.base_keys = base_keys;
        let report = self.program_changes(changes)?;
        let cluster_pending = cfg.kubernetes.is_some() && self.cluster.is_none();
        self.shared.ready.store(!cluster_pending, Ordering::Relaxed);
        Ok(report)
    }

    /// Programs the compiler's tables, `changes` being what its last compile changed.
    /// After a failure the dataplane reads back what it holds at its next call, which
    /// the next tick makes.
    fn program_changes(&mut self, changes: TablesChanges) -> Result<vipr_xdp::ProgramReport> {
        let tables = self.compiler.tables();
        let report = self.shared.dataplane.lock().unwrap().program(tables, &changes);
        self.retry = report.is_err();
        self.neighbors_due.extend(changes.backends);
        report
    }

    /// Follows the backends programmed since the last call with the neighbour entries
    /// (after the latency is recorded: it runs `ip`).
    fn sync_neighbors(&mut self) {
        let ids = std::mem::take(&mut self.neighbors_due);
        self.neighbors.update(self.compiler.tables(), &ids);
    }

    /// Work that waits for the next tick: a dataplane that failed to take a change is
    /// programmed again; neighbours whose route was missing are looked up again.
    fn tick(&mut self) {
        if self.retry {
            match self.program_changes(TablesChanges::default()) {
                Ok(_) => {
                    tracing::info!("the dataplane took the tables on a retry");
                    let cluster_pending = self.cfg.kubernetes.is_some() && self.cluster.is_none();
                    self.shared.ready.store(!cluster_pending, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!("programming the dataplane failed again: {e:#}"),
            }
        }
        self.sync_neighbors();
        self.neighbors.retry(self.compiler.tables());
    }

    /// Re-reads the file; on any error the running tables stay as they are.
    fn reload(&mut self, changed_at: Instant) {
        let cfg = match load_config(&self.path) {
            Ok(c) => c,
            Err(e) => {
                self.shared.reconcile_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("reload refused, the running tables are unchanged: {e:#}");
                return;
            }
        };
        if cfg.instance != self.cfg.instance
            || cfg.dataplane != self.cfg.dataplane
            || cfg.interfaces != self.cfg.interfaces
            || cfg.dpdk != self.cfg.dpdk
            || cfg.kubernetes != self.cfg.kubernetes
            || limits(&cfg) != limits(&self.cfg)
        {
            self.shared.reconcile_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                "reload refused: instance, dataplane, interfaces, dpdk, kubernetes and conntrack \
                 capacity take effect at the next `vipr run`; the running tables are unchanged"
            );
            return;
        }
        // The file and every manifest are read again: one of them changed.
        let base = match desired(&cfg, &self.sources) {
            Ok(b) => b,
            Err(e) => {
                self.shared.reconcile_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("reload refused, the running tables are unchanged: {e:#}");
                return;
            }
        };
        if !self.programmed {
            tracing::info!("reloaded; programmed once the cluster's Services arrive");
            self.base = Some(base);
            self.cfg = cfg;
            return;
        }
        match self.program(&cfg, Some(base)) {
            Ok(r) => {
                self.shared.record_latency(changed_at);
                self.sync_neighbors();
                tracing::info!(
                    vips_written = r.vips_written,
                    vips_removed = r.vips_removed,
                    rings = r.rings_written,
                    backends = r.backends_written,
                    "reloaded"
                );
                self.cfg = cfg;
            }
            Err(e) => tracing::error!("reload failed: {e:#}"),
        }
    }

    /// Programs the cluster's changes (a burst is taken as one): only the VIPs they name
    /// are compiled and written.
    fn apply_cluster(&mut self, update: kubernetes::Update, source: &KubeSource) {
        let cluster = self.cluster.get_or_insert_with(HashMap::new);
        let mut touched: HashSet<VipKey> = HashSet::new();
        let mut first_event = update.first_event;
        let mut initial = false;
        let mut pool_usage = Vec::new();
        let burst = std::iter::from_fn(|| source.updates.try_recv().ok());
        for u in std::iter::once(update).chain(burst) {
            if u.initial {
                initial = true;
                touched.extend(cluster.keys().copied());
                cluster.clear();
            }
            for key in &u.removes {
                cluster.remove(key);
                touched.insert(*key);
            }
            for vip in &u.upserts {
                touched.insert(vip.key());
                cluster.insert(vip.key(), vip.clone());
            }
            for w in &u.warnings {
                tracing::warn!("kubernetes: {w}");
            }
            first_event = first_event.min(u.first_event);
            pool_usage = u.pool_usage;
        }
        touched.extend(self.rejected.drain());
        let report = if self.programmed {
            self.program_cluster(&touched)
        } else {
            // The first programming of an agent that adopted its dataplane: everything.
            let cfg = self.cfg.clone();
            self.program(&cfg, None).unwrap_or_else(|e| {
                tracing::error!("the tables could not be programmed: {e:#}");
                vipr_xdp::ProgramReport::default()
            })
        };
        // A (re)connection's first update is timed from listing everything, maybe after
        // an outage: not a change, so it stays out of the event-to-programmed histogram.
        if !initial {
            self.shared.record_latency(first_event);
        }
        self.sync_neighbors();
        self.shared.ready.store(self.programmed, Ordering::Relaxed);
        let mut pools = self.shared.pools.lock().unwrap();
        for (name, _, used) in pools.iter_mut() {
            *used = pool_usage.iter().find(|(n, _)| n == name).map_or(0, |u| u.1);
        }
        tracing::info!(
            vips = self.cluster.as_ref().map_or(0, HashMap::len),
            vips_written = report.vips_written,
            vips_removed = report.vips_removed,
            rings = report.rings_written,
            refused = self.rejected.len(),
            latency_us = first_event.elapsed().as_micros() as u64,
            "programmed the cluster's Services"
        );
    }

    /// Compiles and programs the cluster VIPs `touched` as they are now. A change the
    /// compiler refuses is tried VIP by VIP, so a bad VIP keeps only itself out (the
    /// tables keep what they had for it); each refusal is logged and counted as a
    /// reconcile error, and tried again with the next change.
    fn program_cluster(&mut self, touched: &HashSet<VipKey>) -> vipr_xdp::ProgramReport {
        let cluster = self.cluster.as_ref().expect("delivered");
        let mut wanted: Vec<(VipKey, Option<VipSpec>)> = Vec::with_capacity(touched.len());
        for key in touched {
            if self.base_keys.contains(key) {
                if cluster.contains_key(key) {
                    tracing::warn!(
                        "kubernetes: {} is also in the config or manifests, which keep it",
                        vip_name(key)
                    );
                }
                continue;
            }
            wanted.push((*key, cluster.get(key).cloned()));
        }
        let update = |c: &mut Compiler, w: &[(VipKey, Option<VipSpec>)]| {
            let upserts: Vec<VipSpec> = w.iter().filter_map(|(_, v)| v.clone()).collect();
            let removes: Vec<VipKey> =
                w.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| *k).collect();
            c.update(&upserts, &removes)
        };
        let changes = match update(&mut self.compiler, &wanted) {
            Ok(changes) => changes,
            Err(_) => {
                let mut all = TablesChanges::default();
                for one in wanted.chunks(1) {
                    match update(&mut self.compiler, one) {
                        Ok(ch) => all.merge(ch),
                        Err(e) => {
                            self.shared.reconcile_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(
                                "kubernetes: {} is not served as the cluster says: {e}",
                                vip_name(&one[0].0)
                            );
                            self.rejected.insert(one[0].0);
                        }
                    }
                }
                all
            }
        };
        match self.program_changes(changes) {
            Ok(r) => r,
            Err(e) => {
                self.shared.reconcile_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("the dataplane did not take the cluster's change; retrying: {e:#}");
                vipr_xdp::ProgramReport::default()
            }
        }
    }
}

/// `addr:port/proto` of a VIP key, for messages.
fn vip_name(key: &VipKey) -> String {
    let addr = ip_of(&key.addr, key.family);
    let proto = if key.proto == PROTO_UDP { "udp" } else { "tcp" };
    match addr {
        IpAddr::V4(a) => format!("{a}:{}/{proto}", u16::from_be(key.port)),
        IpAddr::V6(a) => format!("[{a}]:{}/{proto}", u16::from_be(key.port)),
    }
}

/// Reads back the ids a previous agent programmed, so the compiler keeps them.
fn adopt_ids(compiler: &mut Compiler, maps: &Maps) {
    let vips: Vec<(VipKey, VipInfo)> = maps.vips.iter().filter_map(|r| r.ok()).collect();
    let key_of = |vip_id: u32| vips.iter().find(|(_, i)| i.vip_id == vip_id).map(|(k, _)| *k);
    let backends: Vec<(VipKey, BackendIdentity, u32)> = maps
        .backends
        .iter()
        .enumerate()
        .filter_map(|(id, b)| {
            let b = b.ok().filter(|b| b.family != 0)?;
            let identity =
                BackendIdentity { addr: ip_of(&b.addr, b.family), port: u16::from_be(b.port) };
            Some((key_of(b.vip_id)?, identity, id as u32))
        })
        .collect();
    compiler.adopt_ids(vips.iter().map(|(k, i)| (*k, i.vip_id)), backends);
}

/// Loads (or adopts) the XDP dataplane of `cfg`; attaching comes after programming.
fn load_xdp(cfg: &Config, compiler: &mut Compiler) -> Result<(XdpDataplane, PathBuf, bool)> {
    ensure_bpffs()?;
    let dir = pin_dir(&cfg.instance);
    let adopting = dir.join(vipr_abi::maps::VIPS).exists();
    let xdp = Xdp::load(limits(cfg), Some(&dir))?;
    if adopting {
        adopt_ids(compiler, &xdp.maps);
    }
    let modes: Vec<&str> = cfg
        .interfaces
        .iter()
        .map(|i| match i.attach {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        })
        .collect();
    let mut modes_text = modes.clone();
    modes_text.dedup();
    let dp = XdpDataplane { xdp, programmer: Programmer::new(), attach_mode: modes_text.join("+") };
    Ok((dp, dir, adopting))
}

pub fn run(opts: RunOptions) -> Result<()> {
    let path = opts.config.as_path();
    let cfg = load_config(path)?;
    if cfg.interfaces.is_empty() {
        bail!("{}: no interfaces to attach to (add `interfaces:`)", path.display());
    }
    // One agent an instance: two would fight over the same maps.
    if let Some(pid) = std::fs::read_to_string(pid_file(&cfg.instance))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
    {
        // SAFETY: signal 0 only checks whether the process exists.
        if pid != std::process::id() as i32 && unsafe { libc::kill(pid, 0) } == 0 {
            bail!("instance {:?} is already served by process {pid}; `vipr stop --instance {}` ends it", cfg.instance, cfg.instance);
        }
    }
    // The API client stays in the caller's network namespace (where the API server is
    // reachable); the dataplane and the metrics listener live in `--netns`.
    let kube = match &cfg.kubernetes {
        Some(k) => Some(kubernetes::start(k, &cfg.instance, cfg.pools.clone())?),
        None => None,
    };
    if let Some(ns) = &opts.netns {
        enter_netns(ns)?;
    }
    // Listeners first: a taken port fails the start before anything is attached.
    let metrics_listener = match opts.metrics_addr {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("serving metrics on {addr} (--metrics-addr)"))?,
        ),
        None => None,
    };

    let mut compiler = Compiler::default();
    let (dp, dir, adopting): (Box<dyn Dataplane>, Option<PathBuf>, bool) = match cfg.dataplane {
        DataplaneKind::Xdp => {
            let (dp, dir, adopting) = load_xdp(&cfg, &mut compiler)?;
            (Box::new(dp), Some(dir), adopting)
        }
        DataplaneKind::Afxdp | DataplaneKind::Dpdk => {
            (Box::new(crate::poll::PollDataplane::new(&cfg)), None, false)
        }
    };
    let mut sources = vec![format!("config {}", path.display())];
    if let Some(m) = &opts.sources.manifests {
        sources.push(format!("manifests {}", m.display()));
    }
    if let Some(k) = &cfg.kubernetes {
        let server = k.api_server.as_deref().unwrap_or("in-cluster / kubeconfig");
        sources.push(format!("kubernetes {server} ({:?} mode)", k.mode).to_lowercase());
    }
    let shared = Arc::new(Shared {
        instance: cfg.instance.clone(),
        dataplane: Mutex::new(dp),
        latency: Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")),
        prom_latency: metrics::latency_histogram(),
        ready: AtomicBool::new(false),
        reconcile_errors: AtomicU64::new(0),
        sources,
        pinned_at: dir.as_ref().map(|d| d.display().to_string()),
        pools: Mutex::new(cfg.pools.iter().map(|p| (p.name.clone(), pool_size(p), 0)).collect()),
    });
    let mut agent = Agent {
        neighbors: Default::default(),
        path: path.to_path_buf(),
        sources: opts.sources.clone(),
        cfg: cfg.clone(),
        compiler,
        shared: shared.clone(),
        cluster: None,
        base: None,
        base_keys: HashSet::new(),
        rejected: HashSet::new(),
        retry: false,
        neighbors_due: Vec::new(),
        programmed: false,
    };
    let report = if adopting && cfg.kubernetes.is_some() {
        // The pins serve the cluster's Services until it answers (see `programmed`).
        agent.base = Some(desired(&cfg, &agent.sources)?);
        tracing::info!("adopted a dataplane that serves a cluster: it is programmed again once the cluster's Services arrive");
        vipr_xdp::ProgramReport::default()
    } else {
        agent.program(&cfg, None)?
    };
    agent.sync_neighbors();
    shared.dataplane.lock().unwrap().start(&cfg)?;
    // Opening DPDK af_packet ports flushes the namespace's neighbour table.
    agent.neighbors.resync();
    let _admin = admin::serve(shared.clone())?;
    if let Some(listener) = metrics_listener {
        metrics::serve(listener, shared.clone())?;
    }
    let pid = pid_file(&cfg.instance);
    std::fs::create_dir_all(pid.parent().unwrap()).ok();
    std::fs::write(&pid, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", pid.display()))?;
    let names: Vec<&str> = cfg.interfaces.iter().map(|i| i.name.as_str()).collect();
    let vips = shared.dataplane.lock().unwrap().programmed().map_or(0, |t| t.vips.len());
    tracing::info!(
        instance = %cfg.instance,
        interfaces = %names.join(","),
        dataplane = shared.dataplane.lock().unwrap().kind(),
        pinned_at = %dir.as_ref().map_or("-".into(), |d| d.display().to_string()),
        "{} {vips} VIPs ({} rings written)",
        if adopting { "adopted its pinned dataplane and serves" } else { "serves" },
        report.rings_written,
    );

    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, term.clone())?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;
    let mut seen = fingerprint(path, &agent.sources);
    const TICK: Duration = Duration::from_millis(200);
    while !term.load(Ordering::Relaxed) {
        match &kube {
            Some(k) => match k.updates.recv_timeout(TICK) {
                Ok(update) => agent.apply_cluster(update, k),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the Kubernetes source stopped")
                }
            },
            None => std::thread::sleep(TICK),
        }
        agent.tick();
        let now = fingerprint(path, &agent.sources);
        if hup.swap(false, Ordering::Relaxed) || now != seen {
            seen = now;
            agent.reload(Instant::now());
        }
    }
    let _ = std::fs::remove_file(&pid);
    shared.dataplane.lock().unwrap().shutdown()?;
    match &dir {
        Some(dir) => tracing::info!(
            "agent exits; the dataplane keeps running from {} (`vipr stop` removes it)",
            dir.display()
        ),
        None => tracing::info!("agent exits; the poll-mode workers stopped"),
    }
    Ok(())
}

/// How many addresses a pool hands out.
fn pool_size(p: &vipr_config::Pool) -> u128 {
    let v4 = |net: &ipnet::IpNet| match net {
        ipnet::IpNet::V4(n) if n.prefix_len() < 31 => (1u128 << (32 - n.prefix_len())) - 2,
        ipnet::IpNet::V4(n) => 1u128 << (32 - n.prefix_len()),
        ipnet::IpNet::V6(n) => 1u128.checked_shl(128 - n.prefix_len() as u32).unwrap_or(u128::MAX),
    };
    let ranges = p.ranges.iter().map(|(a, b)| match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(*b) - u32::from(*a)) as u128 + 1,
        (IpAddr::V6(a), IpAddr::V6(b)) => u128::from(*b) - u128::from(*a) + 1,
        _ => 0,
    });
    p.cidrs.iter().map(v4).chain(ranges).fold(0u128, u128::saturating_add)
}

/// Ends the agent of `instance` if it runs, and detaches and unpins its dataplane.
pub fn stop(instance: &str) -> Result<()> {
    let pid_path = pid_file(instance);
    let mut ended_agent = false;
    if let Ok(text) = std::fs::read_to_string(&pid_path) {
        if let Ok(pid) = text.trim().parse::<i32>() {
            // SAFETY: kill(2) with a pid read from our own pid file.
            if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
                ended_agent = true;
                let deadline = Instant::now() + Duration::from_secs(5);
                // SAFETY: signal 0 only checks that the process exists.
                while Instant::now() < deadline && unsafe { libc::kill(pid, 0) } == 0 {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        let _ = std::fs::remove_file(&pid_path);
    }
    let dir = pin_dir(instance);
    if !dir.exists() {
        if ended_agent {
            // A poll-mode dataplane: its workers ended with the agent; nothing is pinned.
            tracing::info!("instance {instance} stopped");
            return Ok(());
        }
        bail!("instance {instance:?} is not running (nothing pinned at {})", dir.display());
    }
    vipr_xdp::detach_pinned(&dir)?;
    tracing::info!("instance {instance} detached and unpinned ({})", dir.display());
    Ok(())
}

/// `vipr status --offline`: what the pinned maps of `instance` hold, without asking
/// its agent (which may be dead: the dataplane keeps forwarding).
pub fn offline_status(instance: &str) -> Result<Status> {
    let dir = pin_dir(instance);
    if !dir.join(vipr_abi::maps::VIPS).exists() {
        bail!(
            "instance {instance:?} is not running (nothing pinned at {}); start it with `vipr run`",
            dir.display()
        );
    }
    let maps = Maps::from_pins(&dir)?;
    let mut s = status::from_snapshot(instance, "xdp", "pinned", &maps_snapshot(&maps)?);
    s.pinned_at = Some(dir.display().to_string());
    Ok(s)
}

/// Compiles a config as `vipr run` would, without touching the kernel (for tests).
pub fn compile(cfg: &Config, sources: &Sources) -> Result<Tables> {
    Ok(Compiler::default().compile(&desired(cfg, sources)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{Flow, Snapshot};
    use std::sync::Weak;
    use vipr_dataplane::tables::{Tables, TablesChanges};

    /// A dataplane whose snapshot shows the tables from before a change that the agent
    /// programs and counts while the status is being built.
    struct ChangedMeanwhile(Weak<Shared>);

    impl Dataplane for ChangedMeanwhile {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn attach_mode(&self) -> String {
            "none".into()
        }
        fn start(&mut self, _: &Config) -> Result<()> {
            Ok(())
        }
        fn program(&mut self, _: &Tables, _: &TablesChanges) -> Result<vipr_xdp::ProgramReport> {
            Ok(Default::default())
        }
        fn programmed(&self) -> Option<&Tables> {
            None
        }
        fn snapshot(&self) -> Result<Snapshot> {
            let shared = self.0.upgrade().expect("the test holds it");
            shared.record_latency(Instant::now());
            Ok(Snapshot::default())
        }
        fn flows(&self) -> Result<Vec<Flow>> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn status_never_counts_a_change_its_tables_do_not_show() {
        let shared = Arc::new_cyclic(|me| Shared {
            instance: "test".into(),
            dataplane: Mutex::new(Box::new(ChangedMeanwhile(me.clone()))),
            latency: Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap()),
            prom_latency: metrics::latency_histogram(),
            ready: AtomicBool::new(false),
            reconcile_errors: AtomicU64::new(0),
            sources: Vec::new(),
            pinned_at: None,
            pools: Mutex::new(Vec::new()),
        });
        let s = shared.status().unwrap();
        assert!(s.programming.is_none(), "counted a change the snapshot predates: {s:?}");
        let s = shared.status().unwrap();
        assert_eq!(s.programming.map(|p| p.count), Some(1), "the change shows once programmed");
    }
}
