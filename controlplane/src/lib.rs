//! vipr's control plane and command line: config and sources -> model -> compiler ->
//! programmer -> the XDP dataplane; plus the simulator, the demo and its testbed.

pub mod admin;
pub mod agent;
pub mod dataplane;
pub mod demo;
pub mod kubernetes;
pub mod metrics;
pub mod model;
pub mod neighbors;
pub mod poll;
#[cfg(feature = "dpdk")]
pub mod poll_dpdk;
pub mod probe;
pub mod simulate;
pub mod status;
pub mod testbed;
