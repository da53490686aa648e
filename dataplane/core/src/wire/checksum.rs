//! Internet checksums over whole headers and over the L4 pseudo-header, built on the
//! `vipr_abi::checksum` arithmetic that the XDP program runs too, so a checksum vipr
//! computes in userspace is the one the kernel path would compute.
//!
//! Sums are carried as `u32` partial one's-complement sums (as `sum_bytes` returns them)
//! and only folded and complemented by [`finish`]. The RFC 1624 incremental updates NAT
//! needs are re-exported from the abi crate unchanged.

pub use vipr_abi::checksum::{fold, sum_bytes, udp_fixup, update16, update16_bytes, update4};

/// An IP address of either family, as the L4 checksum functions need it. Kept separate
/// from `std::net::IpAddr` so views stay byte-oriented and conversion-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpAddress {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl IpAddress {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            IpAddress::V4(a) => a,
            IpAddress::V6(a) => a,
        }
    }

    pub fn is_v4(&self) -> bool {
        matches!(self, IpAddress::V4(_))
    }
}

impl From<[u8; 4]> for IpAddress {
    fn from(a: [u8; 4]) -> Self {
        IpAddress::V4(a)
    }
}

impl From<[u8; 16]> for IpAddress {
    fn from(a: [u8; 16]) -> Self {
        IpAddress::V6(a)
    }
}

/// Adds two partial sums. Folding each first keeps the addition from overflowing
/// however long the buffers behind them were.
pub fn combine(a: u32, b: u32) -> u32 {
    fold(a) as u32 + fold(b) as u32
}

/// Turns a partial sum into the value of a checksum field.
pub fn finish(sum: u32) -> u16 {
    // RFC 1071 section 1: the checksum is the one's complement of the one's complement sum.
    !fold(sum)
}

/// Checksum of `data` alone (an IPv4 header, an ICMPv4 message). Over data whose
/// checksum field is zero this is the value to store; over data with a correct
/// checksum it is zero.
pub fn compute(data: &[u8]) -> u16 {
    finish(sum_bytes(data))
}

/// Partial sum of the IPv4 pseudo-header of a TCP or UDP segment of `len` bytes.
pub fn pseudo_header_v4(src: &[u8; 4], dst: &[u8; 4], proto: u8, len: u16) -> u32 {
    // RFC 793 section 3.1 / RFC 768: source, destination, zero byte, protocol, length.
    sum_bytes(src) + sum_bytes(dst) + proto as u32 + len as u32
}

/// Partial sum of the IPv6 pseudo-header of an upper-layer packet of `len` bytes.
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, len: u32) -> u32 {
    // RFC 8200 section 8.1: source, destination, 32-bit upper-layer packet length,
    // three zero bytes, next header.
    sum_bytes(src) + sum_bytes(dst) + (len >> 16) + (len & 0xffff) + next_header as u32
}

/// Pseudo-header sum for either family. A mixed pair cannot come from one packet; it
/// yields a checksum no receiver accepts rather than a panic.
pub fn pseudo_header(src: &IpAddress, dst: &IpAddress, proto: u8, len: usize) -> u32 {
    match (src, dst) {
        (IpAddress::V4(s), IpAddress::V4(d)) => pseudo_header_v4(s, d, proto, len as u16),
        (IpAddress::V6(s), IpAddress::V6(d)) => pseudo_header_v6(s, d, proto, len as u32),
        _ => {
            let len = len as u32;
            combine(
                sum_bytes(src.as_bytes()) + sum_bytes(dst.as_bytes()),
                (len >> 16) + (len & 0xffff) + proto as u32,
            )
        }
    }
}

/// Checksum of a whole L4 segment (header and payload) under its pseudo-header. Zero
/// when the segment's checksum field is correct; the value to store when it is zero.
pub fn l4_checksum(src: &IpAddress, dst: &IpAddress, proto: u8, segment: &[u8]) -> u16 {
    finish(combine(pseudo_header(src, dst, proto, segment.len()), sum_bytes(segment)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pseudo_header_v4_equals_the_sum_of_the_rfc_793_layout(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), proto in any::<u8>(), len in any::<u16>()
        ) {
            let mut layout = [0u8; 12];
            layout[0..4].copy_from_slice(&src);
            layout[4..8].copy_from_slice(&dst);
            layout[9] = proto;
            layout[10..12].copy_from_slice(&len.to_be_bytes());
            prop_assert_eq!(fold(pseudo_header_v4(&src, &dst, proto, len)), fold(sum_bytes(&layout)));
        }

        #[test]
        fn pseudo_header_v6_equals_the_sum_of_the_rfc_8200_layout(
            src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), nh in any::<u8>(), len in any::<u32>()
        ) {
            let mut layout = [0u8; 40];
            layout[0..16].copy_from_slice(&src);
            layout[16..32].copy_from_slice(&dst);
            layout[32..36].copy_from_slice(&len.to_be_bytes());
            layout[39] = nh;
            prop_assert_eq!(fold(pseudo_header_v6(&src, &dst, nh, len)), fold(sum_bytes(&layout)));
        }

        #[test]
        fn a_filled_checksum_verifies_to_zero(mut data in proptest::collection::vec(any::<u8>(), 2..200)) {
            data[0] = 0;
            data[1] = 0;
            let c = compute(&data);
            data[0..2].copy_from_slice(&c.to_be_bytes());
            prop_assert_eq!(compute(&data), 0);
        }
    }

    #[test]
    fn known_ipv4_header_checksums_to_published_value() {
        // The worked example from Wikipedia's "IPv4 header checksum" article.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(compute(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(compute(&h), 0);
    }

    #[test]
    fn pseudo_header_dispatches_on_family() {
        let s4 = [10, 0, 0, 1];
        let d4 = [10, 0, 0, 2];
        assert_eq!(pseudo_header(&s4.into(), &d4.into(), 6, 40), pseudo_header_v4(&s4, &d4, 6, 40));
        let s6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let d6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(
            pseudo_header(&s6.into(), &d6.into(), 17, 70_000),
            pseudo_header_v6(&s6, &d6, 17, 70_000)
        );
    }
}
