//! `dataplane: dpdk` from the config: the EAL from `dpdk.eal_args`, one mbuf pool of
//! `dpdk.mbufs`, every port of `dpdk.ports`, and the engine's worker plans.

use crate::eal::Eal;
use crate::error::Result;
use crate::mempool::Mempool;
use crate::port::{Port, PortOptions};
use crate::queue::{DpdkQueue, KernelPath};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use vipr_config::DpdkConfig;
use vipr_poll::WorkerPlan;

/// Ports without a kernel interface (PCI NICs, rings) get `SYNTHETIC_IFINDEX | port id`
/// as the interface index next hops name them by; the kernel's ifindexes stay far below.
pub const SYNTHETIC_IFINDEX: u32 = 0x4000_0000;

/// The DPDK side of a running dataplane. Dropping it stops and closes the ports once the
/// engine has handed their queues back (the queues hold the ports too).
pub struct Dpdk {
    pub eal: &'static Eal,
    pub pool: Arc<Mempool>,
    pub ports: Vec<Arc<Port>>,
}

impl Dpdk {
    /// Initialises the EAL (or joins the process's EAL if it runs with the same
    /// arguments), makes the pool and opens every port with `queues` RX/TX queue pairs.
    ///
    /// `net_af_packet` and `net_tap` ports talk to the kernel interface of the network
    /// namespace of the calling thread, at open and at stop: open and drop them there.
    pub fn open(cfg: &DpdkConfig, queues: u16) -> Result<Dpdk> {
        static POOLS: AtomicU32 = AtomicU32::new(0);
        let eal = Eal::init(&cfg.eal_args)?;
        let name = format!("vipr-mbufs-{}", POOLS.fetch_add(1, Ordering::Relaxed));
        let pool = Arc::new(Mempool::new(eal, &name, cfg.mbufs)?);
        let opts = PortOptions { queues, ..PortOptions::default() };
        let ports = cfg
            .ports
            .iter()
            .map(|spec| Port::open(eal, spec, &opts, pool.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Dpdk { eal, pool, ports })
    }

    /// One worker per queue number: worker k drives queue k of every port (the engine's
    /// run-to-completion shape, so a redirect stays on one thread), pinned to `cores[k]`
    /// when given. Passed frames take each port's natural exception path
    /// ([`KernelPath::default_for`]).
    pub fn plans(&self, cores: &[Option<u32>]) -> Result<Vec<WorkerPlan<DpdkQueue>>> {
        let queues = self.ports.iter().map(|p| p.queues()).min().unwrap_or(0);
        (0..queues)
            .map(|q| {
                let queues = self
                    .ports
                    .iter()
                    .map(|p| {
                        let ifindex = match p.ifindex() {
                            0 => SYNTHETIC_IFINDEX | p.id() as u32,
                            i => i,
                        };
                        Ok(DpdkQueue::new(p, q, KernelPath::default_for(p))?.with_ifindex(ifindex))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(WorkerPlan { queues, core: cores.get(q as usize).copied().flatten() })
            })
            .collect()
    }
}
