//! What the agent needs of a dataplane, whichever it is: program compiled tables, and
//! read back what it holds and counted. The XDP dataplane is here; the poll-mode ones
//! (AF_XDP, DPDK) implement the same trait over their engines.

use anyhow::Result;
use vipr_abi::{BackendInfo, FlowKey, VipInfo, VipKey, FLOW_DIR_FORWARD};
use vipr_dataplane::pipeline::Counters;
use vipr_dataplane::tables::{Tables, TablesChanges};
use vipr_xdp::{Maps, ProgramReport, Programmer, Xdp};

/// What a dataplane holds and has counted, at one moment.
#[derive(Default)]
pub struct Snapshot {
    /// Each VIP with its ring size (M).
    pub vips: Vec<(VipKey, VipInfo, u32)>,
    /// Backends by id.
    pub backends: Vec<(u32, BackendInfo)>,
    pub counters: Counters,
    pub conntrack_flows: usize,
    pub conntrack_entries: usize,
    pub conntrack_capacity: u32,
    /// Per NIC queue, for the poll-mode dataplanes.
    pub queues: Vec<QueueStatus>,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct QueueStatus {
    pub interface: String,
    pub queue: u32,
    pub rx: u64,
    pub tx: u64,
    pub drops: u64,
    /// Share of the worker's polls that found work, 0..=1.
    pub busy: f64,
}

/// A tracked flow: the key as it arrived, its backend and NAT.
pub struct Flow {
    pub key: FlowKey,
    pub entry: vipr_abi::FlowEntry,
}

pub trait Dataplane: Send {
    /// `xdp`, `afxdp` or `dpdk`.
    fn kind(&self) -> &'static str;
    /// How it is attached (`native`, `generic`, `copy`, `zerocopy`, ...).
    fn attach_mode(&self) -> String;
    /// Starts forwarding (attaches, starts the workers); called once, after the first
    /// `program`, so no packet meets empty tables.
    fn start(&mut self, cfg: &vipr_config::Config) -> Result<()>;
    /// Makes the dataplane serve `tables`, which differ from the last programmed ones
    /// only as `changes` says; work is proportional to the change.
    fn program(&mut self, tables: &Tables, changes: &TablesChanges) -> Result<ProgramReport>;
    /// The tables last programmed.
    fn programmed(&self) -> Option<&Tables>;
    fn snapshot(&self) -> Result<Snapshot>;
    /// The conntrack's forward entries (one a flow).
    fn flows(&self) -> Result<Vec<Flow>>;
    /// Stops forwarding when the agent ends; the XDP dataplane keeps running from its
    /// pins instead (a restarted agent adopts it).
    fn shutdown(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The XDP program, its pinned maps and the programmer that diffs against them.
pub struct XdpDataplane {
    pub xdp: Xdp,
    pub programmer: Programmer,
    pub attach_mode: String,
}

impl Dataplane for XdpDataplane {
    fn kind(&self) -> &'static str {
        "xdp"
    }
    fn attach_mode(&self) -> String {
        self.attach_mode.clone()
    }
    fn start(&mut self, cfg: &vipr_config::Config) -> Result<()> {
        for iface in &cfg.interfaces {
            self.xdp.attach(&iface.name, attach_mode(iface.attach))?;
        }
        Ok(())
    }
    fn program(&mut self, tables: &Tables, changes: &TablesChanges) -> Result<ProgramReport> {
        Ok(self.programmer.apply(&mut self.xdp.maps, &self.xdp.limits, tables, changes)?)
    }
    fn programmed(&self) -> Option<&Tables> {
        self.programmer.programmed()
    }
    fn snapshot(&self) -> Result<Snapshot> {
        maps_snapshot(&self.xdp.maps)
    }
    fn flows(&self) -> Result<Vec<Flow>> {
        Ok(forward_flows(&self.xdp.maps))
    }
}

/// The config's attach mode as the XDP loader names it.
pub fn attach_mode(mode: vipr_config::AttachMode) -> vipr_xdp::AttachMode {
    match mode {
        vipr_config::AttachMode::Native => vipr_xdp::AttachMode::Native,
        vipr_config::AttachMode::Generic => vipr_xdp::AttachMode::Generic,
    }
}

/// Reads a snapshot out of the XDP maps (also of an instance whose agent is not running).
pub fn maps_snapshot(maps: &Maps) -> Result<Snapshot> {
    let counters = maps.counters()?;
    let backends = maps
        .backends
        .iter()
        .enumerate()
        .filter_map(|(id, b)| b.ok().filter(|b| b.family != 0).map(|b| (id as u32, b)))
        .collect();
    let entries: Vec<(VipKey, VipInfo)> = maps.vips.iter().filter_map(|r| r.ok()).collect();
    let sizes = maps.ring_sizes(entries.iter().map(|(_, i)| i));
    let vips = entries.into_iter().zip(sizes).map(|((k, i), m)| (k, i, m.unwrap_or(0))).collect();
    let ct = maps.conntrack_summary();
    Ok(Snapshot {
        vips,
        backends,
        counters,
        conntrack_flows: ct.flows,
        conntrack_entries: ct.entries,
        conntrack_capacity: ct.capacity,
        queues: Vec::new(),
    })
}

pub fn forward_flows(maps: &Maps) -> Vec<Flow> {
    maps.conntrack_entries()
        .into_iter()
        .filter(|(_, e)| e.direction == FLOW_DIR_FORWARD)
        .map(|(key, entry)| Flow { key, entry })
        .collect()
}

/// A snapshot of what a userspace dataplane serves: the tables it was given and its
/// counters.
pub fn tables_snapshot(tables: &Tables, counters: Counters) -> Snapshot {
    Snapshot {
        vips: tables.vips.iter().map(|(k, v)| (*k, v.info, v.ring_size())).collect(),
        backends: tables
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.family != 0)
            .map(|(id, b)| (id as u32, *b))
            .collect(),
        counters,
        ..Snapshot::default()
    }
}
