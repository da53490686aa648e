//! Keeps the next hops of every backend resolved, so the XDP program's FIB lookups find
//! a neighbour from the first packet on.
//!
//! Without this, the first packets to a backend find no neighbour and pass to the kernel
//! translated, to be routed there; the kernel then resolves the neighbour. That works for
//! `dnat`, but a `snat` frame carries one of vipr's own addresses as its source, which
//! the kernel drops as martian, so it never resolves anything and the flow never starts.
//! Kernel-managed neighbour entries (`ip neigh ... managed`, Linux 5.16) are resolved
//! and kept reachable by the kernel itself.
//!
//! Work follows the tables' changes: only a backend address that starts or stops being
//! used is looked at, and each update runs at most two `ip -batch` processes (route
//! lookups, then neighbour changes), however many addresses it concerns.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use vipr_abi::ip_of;
use vipr_dataplane::tables::Tables;

/// A next hop and the device the kernel reaches it through.
type Hop = (IpAddr, String);

#[derive(Default)]
pub struct Neighbors {
    /// Each programmed backend's address, by backend id.
    by_id: HashMap<u32, IpAddr>,
    /// Each backend address in use: how many backends have it, and its next hop (`None`:
    /// none to manage, e.g. a local address).
    addrs: HashMap<IpAddr, (usize, Option<Hop>)>,
    /// Addresses in use whose route could not be looked up: tried again next update.
    unresolved: Vec<IpAddr>,
    last_retry: Option<std::time::Instant>,
    /// The entries this agent made managed, with how many addresses route through each.
    managed: BTreeMap<Hop, usize>,
}

impl Neighbors {
    /// Follows the backends `ids` (those a compile changed) to what `tables` holds now.
    /// Problems are reported, never fatal: the kernel path still resolves `dnat` next
    /// hops on its own.
    pub fn update(&mut self, tables: &Tables, ids: &[u32]) {
        let (mut started, mut stopped) = (Vec::new(), Vec::new());
        for &id in ids {
            let new = tables.backend(id).map(|b| ip_of(&b.addr, b.family));
            let old = match new {
                Some(a) => self.by_id.insert(id, a),
                None => self.by_id.remove(&id),
            };
            if old == new {
                continue;
            }
            if let Some(a) = new {
                let e = self.addrs.entry(a).or_insert((0, None));
                e.0 += 1;
                if e.0 == 1 {
                    started.push(a);
                }
            }
            if let Some(a) = old {
                let e = self.addrs.get_mut(&a).expect("a used address is counted");
                e.0 -= 1;
                if e.0 == 0 {
                    stopped.push(a);
                }
            }
        }
        // An address may stop and start again within one update: it keeps its hop.
        stopped.retain(|a| self.addrs.get(a).is_some_and(|e| e.0 == 0));
        started.retain(|a| self.addrs.get(a).is_some_and(|e| e.1.is_none()));
        started.append(&mut self.unresolved);
        started.retain(|a| self.addrs.get(a).is_some_and(|e| e.0 > 0 && e.1.is_none()));
        started.sort_unstable();
        started.dedup();
        let hops = next_hops(&started);
        let mut commands = Vec::new();
        for (a, hop) in started.iter().zip(hops) {
            let hop = match hop {
                Lookup::Hop(hop) => hop,
                Lookup::Local => continue,
                Lookup::Failed => {
                    self.unresolved.push(*a);
                    continue;
                }
            };
            let n = self.managed.entry(hop.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                commands.push(format!("neigh replace {} dev {} managed", hop.0, hop.1));
            }
            self.addrs.get_mut(a).expect("counted above").1 = Some(hop);
        }
        for a in stopped {
            let Some((_, Some(hop))) = self.addrs.remove(&a) else { continue };
            let n = self.managed.get_mut(&hop).expect("a hop in use is counted");
            *n -= 1;
            if *n == 0 {
                self.managed.remove(&hop);
                commands.push(format!("neigh del {} dev {}", hop.0, hop.1));
            }
        }
        if !ip_batch(&commands) {
            tracing::warn!("could not keep every backend's neighbour resolved; the first packets of those go through the kernel");
        }
    }

    /// Looks again (at most every few seconds) at the addresses whose route could not
    /// be looked up before.
    pub fn retry(&mut self, tables: &Tables) {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
        if self.unresolved.is_empty() || self.last_retry.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        self.last_retry = Some(std::time::Instant::now());
        self.update(tables, &[]);
    }

    /// Makes every entry again (after something flushed the namespace's neighbour
    /// table: opening DPDK af_packet ports does).
    pub fn resync(&mut self) {
        let commands: Vec<String> = self
            .managed
            .keys()
            .map(|(a, dev)| format!("neigh replace {a} dev {dev} managed"))
            .collect();
        if !ip_batch(&commands) {
            tracing::warn!("could not make the backends' neighbour entries again");
        }
    }
}

/// What the kernel's route to a backend says.
enum Lookup {
    Hop(Hop),
    /// Through `lo`: no neighbour to keep.
    Local,
    /// No route (yet), or `ip` failed.
    Failed,
}

/// The next hop of each of `dsts` (as the kernel routes it now), in one `ip` process.
fn next_hops(dsts: &[IpAddr]) -> Vec<Lookup> {
    if dsts.is_empty() {
        return Vec::new();
    }
    let input: String = dsts.iter().map(|d| format!("route get {d}\n")).collect();
    let out = run_ip(&["-j", "-force", "-batch", "-"], &input).unwrap_or_default();
    // One JSON array a line; an unroutable address prints nothing, so match by `dst`.
    let mut found: HashMap<IpAddr, Option<Hop>> = HashMap::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let Some(route) = v.get(0) else { continue };
        let dst = route.get("dst").and_then(|d| d.as_str()).and_then(|d| d.parse().ok());
        let dev = route.get("dev").and_then(|d| d.as_str());
        let (Some(dst), Some(dev)) = (dst, dev) else { continue };
        let via = route.get("gateway").and_then(|g| g.as_str()).and_then(|g| g.parse().ok());
        found.insert(dst, (dev != "lo").then(|| (via.unwrap_or(dst), dev.to_owned())));
    }
    dsts.iter()
        .map(|d| match found.get(d) {
            Some(Some(hop)) => Lookup::Hop(hop.clone()),
            Some(None) => Lookup::Local,
            None => Lookup::Failed,
        })
        .collect()
}

/// Runs `commands` in one `ip -force -batch -`; false if any failed.
fn ip_batch(commands: &[String]) -> bool {
    if commands.is_empty() {
        return true;
    }
    let input: String = commands.iter().map(|c| format!("{c}\n")).collect();
    run_ip(&["-force", "-batch", "-"], &input).is_some()
}

/// `ip args` fed `input`: its output when it succeeded.
fn run_ip(args: &[&str], input: &str) -> Option<String> {
    let mut child = Command::new("ip")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // Written from another thread while this one reads: `ip` stops reading its input
    // when nobody drains its output, so writing everything first could wait forever.
    let mut stdin = child.stdin.take()?;
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().ok()?;
    writer.join().ok()?.ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // A failed route lookup fails the batch, yet the others printed their routes.
    (out.status.success() || args.contains(&"-j")).then_some(text)
}
