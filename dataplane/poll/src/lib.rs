//! vipr's poll-mode userspace dataplane: the engine (busy-polling workers running
//! `vipr_dataplane::pipeline::Pipeline` on NIC queues), the driver contract it drives
//! ([`queue::Queue`]), an in-memory driver for tests ([`mem::MemQueue`]), the AF_XDP
//! driver ([`afxdp`]), the kernel exception path ([`kernel`]) and the next-hop
//! resolver that feeds the pipeline's next-hop table from the kernel ([`nexthop`]).

pub mod afxdp;
pub mod engine;
pub mod kernel;
pub mod mem;
pub mod netns;
pub mod nexthop;
pub mod queue;

pub use engine::{Clock, Engine, EngineOptions, QueueStats, StopReport, WorkerPlan};
pub use queue::{Pkt, Queue};
