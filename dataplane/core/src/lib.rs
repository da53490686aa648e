//! vipr's userspace packet path, without I/O: packet views (`wire`), the Maglev ring
//! builder, conntrack, NAT, and the per-packet pipeline that reads table snapshots the
//! control plane swaps atomically. The AF_XDP and DPDK drivers feed it frames; the XDP
//! program implements the same semantics in the kernel and is checked against it by the
//! shared fixture table.
#![deny(unsafe_code)]

pub mod conntrack;
pub mod lru;
pub mod maglev;
pub mod pipeline;
pub mod tables;
pub mod wire;
