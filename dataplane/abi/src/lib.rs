//! The one definition of every table key and value that vipr's packet paths (the XDP
//! program, the userspace pipeline behind AF_XDP and DPDK) share with the control plane,
//! plus the pure math both packet paths must compute identically: the flow hash, the
//! ring slot, and the RFC 1624 incremental checksum update.
//!
//! Rules: `#[repr(C)]`, fixed-width integers and byte arrays only (no bool, Option or
//! enum), no implicit padding (every struct spells its padding out and asserts its
//! size), ports in network byte order exactly as they sit in the packet, addresses as
//! 16 bytes with IPv4 in the first four and the rest zero.
#![no_std]
#![deny(unsafe_code)]

pub mod bench;
pub mod checksum;
pub mod hash;
pub mod maps;
#[cfg(feature = "user")]
mod pod;
pub mod steer;
pub mod tables;
pub mod tcp;

pub use hash::{affinity_hash, flow_hash, ring_index, FLOW_HASH_SEED};
pub use tables::*;
