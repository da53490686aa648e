//! Zero-copy views of the headers vipr reads and rewrites, in two layers per protocol
//! (after smoltcp's `wire`): a view `XxxPacket<T: AsRef<[u8]>>` that reads and writes
//! fields in place, and a small `XxxRepr` that describes a header in host terms for
//! tests, fixtures and packets vipr builds itself (ICMP errors, health checks).
//!
//! Contract:
//! - After `new_checked` (equivalently `check_len`) succeeds, no accessor of that view
//!   panics, whatever the bytes. `new_unchecked` is for buffers the caller already
//!   checked or is about to fill; its accessors may panic on a short buffer.
//! - Views never allocate and never copy the packet; errors are one `Copy` enum.
//! - Lengths come from the header, not the buffer: `payload()` of IPv4, IPv6 and UDP
//!   stops where the header says the datagram ends, so Ethernet padding and trailing
//!   garbage never reach L4 parsing or checksums.
//! - Multi-byte fields are returned in host order; addresses and MACs as byte arrays.
//! - Checksum arithmetic comes from `vipr_abi::checksum`, the same code the XDP program
//!   runs, so both packet paths agree bit for bit.

use core::fmt;

pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

pub use checksum::IpAddress;
pub use ethernet::{l3_offset, EthernetFrame, EthernetRepr, VlanHeader};
pub use icmp::{Icmpv4Packet, Icmpv6Packet};
pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use ipv6::{
    walk_ext_headers, Ipv6ExtHeader, Ipv6Frag, Ipv6FragmentHeader, Ipv6L4, Ipv6Packet, Ipv6Repr,
};
pub use tcp::{TcpPacket, TcpRepr};
pub use udp::{UdpPacket, UdpRepr};

/// IP protocol numbers (IPv4 protocol, IPv6 next header) of the L4 headers vipr reads.
/// The IPv6 extension header numbers live in [`ipv6`].
pub mod ip_proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// Why a buffer could not be viewed as a packet. Kept to three variants so that the
/// packet path can count drops by reason without allocating or formatting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// The buffer ends before a header, or before the length a header field claims.
    Truncated,
    /// A field holds a value no valid packet has (wrong IP version, a header length
    /// shorter than the fixed header, a length field shorter than its own header).
    Malformed,
    /// Well formed, but beyond what vipr walks: more IPv6 extension headers than the
    /// caller's limit. Distinct from `Malformed` so it can be counted separately.
    Unsupported,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Truncated => "packet truncated: the buffer ends before a header or before the length a header claims",
            Error::Malformed => "packet malformed: a header field holds a value no valid packet has",
            Error::Unsupported => "packet unsupported: more IPv6 extension headers than the configured limit",
        })
    }
}

impl std::error::Error for Error {}

/// Result of parsing a packet view or representation.
pub type Result<T> = core::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_name_the_reason() {
        assert!(Error::Truncated.to_string().contains("truncated"));
        assert!(Error::Malformed.to_string().contains("malformed"));
        assert!(Error::Unsupported.to_string().contains("extension headers"));
    }
}
