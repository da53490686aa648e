//! vipr's DPDK driver: a thin FFI of its own over Debian's libdpdk 22.11.
//!
//! - [`Eal`]: the EAL, initialised once per process from `dpdk.eal_args`.
//! - [`Mempool`] / [`Mbuf`]: mbuf pools sized from `dpdk.mbufs`.
//! - [`Port`]: a port by PCI address or vdev string (`dpdk.ports`), one RX/TX queue pair
//!   per configured queue, stopped and closed when its last queue goes.
//! - [`Ring`]: mbuf rings, the two ends of a `net_ring` port, for tests and benchmarks.
//! - [`DpdkQueue`]: one port queue as a `vipr-poll` driver queue, so the poll-mode
//!   engine runs DPDK ports as it runs AF_XDP sockets.
//! - [`Dpdk`]: all of it from the config's `dpdk:` section.
//!
//! The bindings are generated at build time from the installed headers (build.rs), not
//! checked in: they then always match the libdpdk-dev on the machine (Debian ships 22.11
//! point releases), and bindgen over an allowlist of a few dozen functions and types
//! costs about 15 s of one core, once. The functions DPDK only has as `static inline`
//! (burst RX/TX, mbuf alloc/free/mtod, ring enqueue/dequeue, rte_errno, the lcore id)
//! are wrapped by a small C shim (shim/shim.c) built with the `cc` crate.
//!
//! Decisions worth knowing:
//! - One EAL per process ([`Eal::init`] keeps the outcome); ports are attached after
//!   init with `rte_dev_probe`, so `dpdk.ports` need not repeat in `--vdev` arguments and
//!   tests of one process share the EAL.
//! - One mbuf pool for all ports: every queue reports the same `pool_id`, so the engine
//!   redirects between ports by handing over the mbuf, never copying.
//! - Frames longer than one mbuf (2048 bytes of data) are dropped at RX and counted
//!   ([`DpdkQueue::chained_drops`]); no scatter is configured.
//! - The engine's worker threads register with DPDK on their first turn (lcore ids, so
//!   mempool caches work) and unregister when they end.

pub mod eal;
pub mod error;
pub mod mempool;
pub mod port;
pub mod queue;
pub mod ring;
pub mod setup;
mod sys;

pub use eal::Eal;
pub use error::{Error, Result};
pub use mempool::{Mbuf, Mempool};
pub use port::{Port, PortOptions, PortStats};
pub use queue::{DpdkQueue, KernelPath};
pub use ring::Ring;
pub use setup::{Dpdk, SYNTHETIC_IFINDEX};
