//! The poll-mode dataplanes (AF_XDP, and DPDK in a `--features dpdk` build) behind the
//! agent's [`Dataplane`] trait: programming stores a new table snapshot that every
//! worker picks up at its next batch (an atomic swap, no lock on the packet path).

use crate::dataplane::{Dataplane, Flow, QueueStatus, Snapshot};
use anyhow::{bail, Result};
use vipr_config::{Config, DataplaneKind};
use vipr_dataplane::pipeline::SharedTables;
use vipr_dataplane::tables::{Tables, TablesChanges};
use vipr_poll::Engine;
use vipr_xdp::ProgramReport;

pub struct PollDataplane {
    kind: DataplaneKind,
    tables: SharedTables,
    programmed: Option<std::sync::Arc<Tables>>,
    engine: Option<Engine>,
    conntrack_capacity: u32,
    /// Interface names by ifindex, for the queue counters.
    names: Vec<(u32, String)>,
}

impl PollDataplane {
    pub fn new(cfg: &Config) -> Self {
        PollDataplane {
            kind: cfg.dataplane,
            tables: SharedTables::default(),
            programmed: None,
            engine: None,
            conntrack_capacity: cfg.conntrack.capacity,
            names: Vec::new(),
        }
    }
}

fn ifindex(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else { return 0 };
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

impl Dataplane for PollDataplane {
    fn kind(&self) -> &'static str {
        match self.kind {
            DataplaneKind::Dpdk => "dpdk",
            _ => "afxdp",
        }
    }

    fn attach_mode(&self) -> String {
        let mut modes: Vec<&str> = self
            .engine
            .as_ref()
            .map(|e| e.queue_stats().iter().map(|q| q.mode).collect())
            .unwrap_or_default();
        modes.sort_unstable();
        modes.dedup();
        if modes.is_empty() {
            "not started".into()
        } else {
            modes.join("+")
        }
    }

    fn start(&mut self, cfg: &Config) -> Result<()> {
        let options = vipr_poll::EngineOptions {
            conntrack_capacity: cfg.conntrack.capacity as usize,
            ..Default::default()
        };
        self.names = cfg.interfaces.iter().map(|i| (ifindex(&i.name), i.name.clone())).collect();
        let engine = match cfg.dataplane {
            DataplaneKind::Afxdp => {
                let interfaces = cfg
                    .interfaces
                    .iter()
                    .map(|i| vipr_poll::afxdp::AfxdpInterface {
                        name: i.name.clone(),
                        attach: crate::dataplane::attach_mode(i.attach),
                        queues: i.queues.clone(),
                        cores: i.cores.clone(),
                    })
                    .collect();
                let mut config = vipr_poll::afxdp::AfxdpConfig::new(interfaces);
                config.engine = options;
                vipr_poll::afxdp::start(config, &self.tables)?
            }
            #[cfg(feature = "dpdk")]
            DataplaneKind::Dpdk => crate::poll_dpdk::start(cfg, options, &self.tables)?,
            #[cfg(not(feature = "dpdk"))]
            DataplaneKind::Dpdk => bail!(
                "this vipr was built without DPDK; build it with `cargo build --release \
                 --features dpdk` (needs libdpdk-dev)"
            ),
            DataplaneKind::Xdp => bail!("the XDP dataplane is not a poll-mode one"),
        };
        self.engine = Some(engine);
        Ok(())
    }

    /// A whole new snapshot for the workers (a copy of the tables: the workers read
    /// them while the compiler goes on changing its own).
    fn program(&mut self, tables: &Tables, changes: &TablesChanges) -> Result<ProgramReport> {
        let tables = std::sync::Arc::new(tables.clone());
        self.tables.store_arc(tables.clone());
        let report = ProgramReport {
            vips_written: changes.vips.len(),
            vips_removed: changes.removed.len(),
            rings_written: changes.vips.len(),
            backends_written: changes.backends.len(),
            ..ProgramReport::default()
        };
        self.programmed = Some(tables);
        Ok(report)
    }

    fn programmed(&self) -> Option<&Tables> {
        self.programmed.as_deref()
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let Some(engine) = &self.engine else { bail!("the poll-mode engine is not running") };
        let tables = self.programmed.clone().unwrap_or_default();
        let mut s = crate::dataplane::tables_snapshot(&tables, engine.counters());
        s.conntrack_flows = engine.conntrack_flows();
        s.conntrack_entries = s.conntrack_flows;
        s.conntrack_capacity = self.conntrack_capacity;
        s.queues = engine
            .queue_stats()
            .iter()
            .map(|q| QueueStatus {
                interface: self
                    .names
                    .iter()
                    .find(|(i, _)| *i == q.ifindex)
                    .map_or_else(|| format!("ifindex {}", q.ifindex), |(_, n)| n.clone()),
                queue: q.queue_id,
                rx: q.rx,
                tx: q.tx,
                drops: q.drops,
                busy: q.busy_share(),
            })
            .collect();
        Ok(s)
    }

    fn flows(&self) -> Result<Vec<Flow>> {
        bail!(
            "listing flows is not available for the {} dataplane: each worker's conntrack \
             is private to its core; `vipr status` shows how many there are",
            self.kind()
        )
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some(engine) = self.engine.take() {
            let report = engine.stop()?;
            if report.leaked() > 0 {
                bail!("{} frames were still in flight when the workers stopped", report.leaked());
            }
        }
        Ok(())
    }
}
