//! vipr's control plane and command line: config and sources -> model -> compiler ->
//! programmer -> the XDP dataplane; plus the simulator, the demo and its testbed.

pub mod agent;
pub mod demo;
pub mod model;
pub mod neighbors;
pub mod probe;
pub mod simulate;
pub mod testbed;
