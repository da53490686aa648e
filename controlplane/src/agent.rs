//! `vipr run`, `vipr stop`, `vipr status`: the static appliance on the XDP dataplane.
//!
//! `run` loads the program (adopting the maps and links an earlier agent pinned), programs
//! the config's tables, attaches, and serves: SIGHUP or a change of the file reloads it.
//! A reload validates the whole new file first; a bad file is reported and the running
//! tables stay exactly as they were. SIGTERM / SIGINT end the agent and leave the
//! dataplane running from its pins (like a crash would); `vipr stop` detaches and unpins.

use crate::model;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use vipr_abi::*;
use vipr_config::{AttachMode, Config, DataplaneKind};
use vipr_dataplane::maglev::BackendIdentity;
use vipr_dataplane::tables::{Compiler, Tables};
use vipr_xdp::{pin_dir, Limits, Maps, Programmer, Xdp};

/// Where `vipr run` records its process id, so `vipr stop` can end it.
fn pid_file(instance: &str) -> PathBuf {
    Path::new("/run/vipr").join(format!("{instance}.pid"))
}

/// Enters the network namespace `name` (as made by `ip netns add`) for this thread, which
/// must still be the only one. Unlike `ip netns exec` it keeps the mount namespace, so
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
        eprintln!("vipr: {}: {w}", dir.display());
    }
    let t = vipr_k8s::translate(&m.inputs, &vipr_k8s::Options::default());
    for w in &t.warnings {
        eprintln!("vipr: {}: {w}", dir.display());
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

/// What the agent watches for changes: the config file's and every manifest's mtime.
fn fingerprint(path: &Path, sources: &Sources) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut v = vec![(path.to_path_buf(), mtime(path))];
    if let Some(dir) = &sources.manifests {
        v.push((dir.clone(), mtime(dir)));
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut files: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            v.extend(files.into_iter().map(|f| {
                let t = mtime(&f);
                (f, t)
            }));
        }
    }
    v
}

pub fn limits(cfg: &Config) -> Limits {
    Limits { conntrack_flows: cfg.conntrack.capacity, ..Limits::default() }
}

struct Agent {
    neighbors: crate::neighbors::Neighbors,
    path: PathBuf,
    sources: Sources,
    cfg: Config,
    xdp: Xdp,
    compiler: Compiler,
    programmer: Programmer,
}

impl Agent {
    fn program(&mut self, cfg: &Config) -> Result<vipr_xdp::ProgramReport> {
        let tables =
            self.compiler.compile(&desired(cfg, &self.sources)?).context("compiling the tables")?;
        let report = self.programmer.program(&mut self.xdp.maps, &self.xdp.limits, &tables)?;
        let backends =
            tables.backends.iter().filter(|b| b.family != 0).map(|b| ip_of(&b.addr, b.family));
        self.neighbors.sync(backends);
        Ok(report)
    }

    /// Re-reads the file; on any error the running tables stay as they are.
    fn reload(&mut self) {
        let cfg = match load_config(&self.path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("vipr: reload refused, the running tables are unchanged: {e:#}");
                return;
            }
        };
        if cfg.instance != self.cfg.instance
            || cfg.interfaces != self.cfg.interfaces
            || limits(&cfg) != self.xdp.limits
        {
            eprintln!(
                "vipr: reload refused: instance, interfaces and conntrack capacity take effect \
                 at the next `vipr run`; the running tables are unchanged"
            );
            return;
        }
        match self.program(&cfg) {
            Ok(r) => {
                eprintln!(
                    "vipr: reloaded: {} VIPs written, {} removed, {} rings, {} backends",
                    r.vips_written, r.vips_removed, r.rings_written, r.backends_written
                );
                self.cfg = cfg;
            }
            Err(e) => eprintln!("vipr: reload failed: {e:#}"),
        }
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

pub fn run(path: &Path, sources: Sources, netns: Option<&str>) -> Result<()> {
    if let Some(ns) = netns {
        enter_netns(ns)?;
    }
    let cfg = load_config(path)?;
    if cfg.dataplane != DataplaneKind::Xdp {
        bail!(
            "{}: dataplane {:?} is not available in this build; use `dataplane: xdp`",
            path.display(),
            cfg.dataplane
        );
    }
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
    ensure_bpffs()?;
    let dir = pin_dir(&cfg.instance);
    let adopting = dir.join(vipr_abi::maps::VIPS).exists();
    let xdp = Xdp::load(limits(&cfg), Some(&dir))?;
    let mut compiler = Compiler::default();
    if adopting {
        adopt_ids(&mut compiler, &xdp.maps);
    }
    let mut agent = Agent {
        neighbors: Default::default(),
        path: path.to_path_buf(),
        sources,
        cfg: cfg.clone(),
        xdp,
        compiler,
        programmer: Programmer::new(),
    };
    let report = agent.program(&cfg)?;
    for iface in &cfg.interfaces {
        let mode = match iface.attach {
            AttachMode::Native => vipr_xdp::AttachMode::Native,
            AttachMode::Generic => vipr_xdp::AttachMode::Generic,
        };
        agent.xdp.attach(&iface.name, mode)?;
    }
    let pid = pid_file(&cfg.instance);
    std::fs::create_dir_all(pid.parent().unwrap()).ok();
    std::fs::write(&pid, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", pid.display()))?;
    let names: Vec<&str> = cfg.interfaces.iter().map(|i| i.name.as_str()).collect();
    eprintln!(
        "vipr: instance {} {} {} VIPs ({} rings written) on {}; pinned at {}",
        cfg.instance,
        if adopting { "adopted its pinned dataplane and programs" } else { "serves" },
        agent.programmer.programmed().map_or(0, |t| t.vips.len()),
        report.rings_written,
        names.join(", "),
        dir.display()
    );

    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, term.clone())?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;
    let mut seen = fingerprint(path, &agent.sources);
    while !term.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let now = fingerprint(path, &agent.sources);
        if hup.swap(false, Ordering::Relaxed) || now != seen {
            seen = now;
            agent.reload();
        }
    }
    let _ = std::fs::remove_file(&pid);
    eprintln!(
        "vipr: agent exits; the dataplane keeps running from {} (`vipr stop` removes it)",
        dir.display()
    );
    Ok(())
}

/// Ends the agent of `instance` if it runs, and detaches and unpins its dataplane.
pub fn stop(instance: &str) -> Result<()> {
    let pid_path = pid_file(instance);
    if let Ok(text) = std::fs::read_to_string(&pid_path) {
        if let Ok(pid) = text.trim().parse::<i32>() {
            // SAFETY: kill(2) with a pid read from our own pid file.
            if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
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
        bail!("instance {instance:?} is not running (nothing pinned at {})", dir.display());
    }
    vipr_xdp::detach_pinned(&dir)?;
    eprintln!("vipr: instance {instance} detached and unpinned ({})", dir.display());
    Ok(())
}

#[derive(Serialize)]
pub struct Status {
    pub instance: String,
    pub pinned_at: String,
    pub vips: Vec<VipStatus>,
    pub verdicts: Vec<(String, u64)>,
    pub drops: Vec<(String, u64)>,
    pub conntrack: ConntrackStatus,
}

#[derive(Serialize)]
pub struct VipStatus {
    pub vip: String,
    pub protocol: &'static str,
    pub mode: &'static str,
    pub ring_size: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Serialize)]
pub struct BackendStatus {
    pub backend: String,
    pub state: &'static str,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

#[derive(Serialize)]
pub struct ConntrackStatus {
    pub flows: usize,
    pub entries: usize,
    pub capacity_entries: u32,
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// Everything `vipr status` shows, read from the pinned maps of `instance`.
pub fn status(instance: &str) -> Result<Status> {
    let dir = pin_dir(instance);
    if !dir.join(vipr_abi::maps::VIPS).exists() {
        bail!(
            "instance {instance:?} is not running (nothing pinned at {}); start it with `vipr run`",
            dir.display()
        );
    }
    let maps = Maps::from_pins(&dir)?;
    let counters = maps.counters()?;
    let backends: Vec<(u32, BackendInfo)> = maps
        .backends
        .iter()
        .enumerate()
        .filter_map(|(id, b)| b.ok().filter(|b| b.family != 0).map(|b| (id as u32, b)))
        .collect();
    let mut vips: Vec<(VipKey, VipInfo)> = maps.vips.iter().filter_map(|r| r.ok()).collect();
    vips.sort_by_key(|(k, _)| (k.family, k.addr, u16::from_be(k.port), k.proto));
    let vips = vips
        .into_iter()
        .map(|(key, info)| {
            let ring_size = maps.ring_size(info.vip_id).unwrap_or(0);
            let stats = counters.vip(info.vip_id);
            VipStatus {
                vip: endpoint(ip_of(&key.addr, key.family), u16::from_be(key.port)),
                protocol: if key.proto == PROTO_TCP { "tcp" } else { "udp" },
                mode: if info.flags & VIP_F_SNAT != 0 { "snat" } else { "dnat" },
                ring_size,
                packets: stats.packets,
                bytes: stats.bytes,
                new_flows: stats.new_flows,
                backends: backends
                    .iter()
                    .filter(|(_, b)| b.vip_id == info.vip_id)
                    .map(|(id, b)| {
                        let s = counters.backend(*id);
                        BackendStatus {
                            backend: endpoint(ip_of(&b.addr, b.family), u16::from_be(b.port)),
                            state: if b.flags & BACKEND_F_DRAINING != 0 {
                                "draining"
                            } else {
                                "active"
                            },
                            packets: s.packets,
                            bytes: s.bytes,
                            new_flows: s.new_flows,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    let ct = maps.conntrack_summary();
    Ok(Status {
        instance: instance.to_string(),
        pinned_at: dir.display().to_string(),
        vips,
        verdicts: VERDICT_NAMES
            .iter()
            .zip(counters.verdicts)
            .map(|(n, v)| (n.to_string(), v))
            .collect(),
        drops: drop::NAMES.iter().zip(counters.drops).map(|(n, v)| (n.to_string(), v)).collect(),
        conntrack: ConntrackStatus {
            flows: ct.flows,
            entries: ct.entries,
            capacity_entries: ct.capacity,
        },
    })
}

pub fn print_status(s: &Status) {
    println!("instance {} (pinned at {})", s.instance, s.pinned_at);
    println!();
    println!(
        "{:<40} {:<5} {:<5} {:>7} {:>12} {:>14} {:>10}",
        "VIP / BACKEND", "PROTO", "MODE", "RING", "PACKETS", "BYTES", "NEW FLOWS"
    );
    for v in &s.vips {
        println!(
            "{:<40} {:<5} {:<5} {:>7} {:>12} {:>14} {:>10}",
            v.vip, v.protocol, v.mode, v.ring_size, v.packets, v.bytes, v.new_flows
        );
        for b in &v.backends {
            println!(
                "  {:<38} {:<11} {:>7} {:>12} {:>14} {:>10}",
                b.backend, b.state, "", b.packets, b.bytes, b.new_flows
            );
        }
    }
    println!();
    let show = |pairs: &[(String, u64)]| {
        pairs.iter().map(|(n, v)| format!("{n} {v}")).collect::<Vec<_>>().join(", ")
    };
    println!("verdicts   {}", show(&s.verdicts));
    let drops: Vec<(String, u64)> = s.drops.iter().filter(|(_, v)| *v > 0).cloned().collect();
    println!("drops      {}", if drops.is_empty() { "none".to_string() } else { show(&drops) });
    println!(
        "conntrack  {} flows ({} entries of {})",
        s.conntrack.flows, s.conntrack.entries, s.conntrack.capacity_entries
    );
}

/// Compiles a config as `vipr run` would, without touching the kernel (for tests).
pub fn compile(cfg: &Config, sources: &Sources) -> Result<Tables> {
    Ok(Compiler::default().compile(&desired(cfg, sources)?)?)
}
