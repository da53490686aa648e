//! `dataplane: dpdk` for the agent: the DPDK ports of the config's `dpdk:` section under
//! the poll-mode engine (one worker per queue, worker k serving queue k of every port),
//! with next hops from the kernel of the agent's namespace (`net_af_packet` and
//! `net_tap` ports carry the kernel's ifindexes).

use anyhow::{bail, Context, Result};
use vipr_config::Config;
use vipr_dataplane::pipeline::SharedTables;
use vipr_poll::{Engine, EngineOptions};

pub fn start(cfg: &Config, options: EngineOptions, tables: &SharedTables) -> Result<Engine> {
    let Some(dpdk) = &cfg.dpdk else { bail!("`dataplane: dpdk` needs a `dpdk:` section") };
    let queues = cfg.interfaces.iter().map(|i| i.queues.len()).max().unwrap_or(1).max(1);
    let cores: Vec<Option<u32>> =
        (0..queues).map(|k| cfg.interfaces.iter().find_map(|i| i.cores.get(k).copied())).collect();
    let ports = vipr_dpdk::Dpdk::open(dpdk, queues as u16).context("opening the DPDK ports")?;
    ports.start_engine_resolving(&cores, tables, options)
}
