//! IPv4 headers (RFC 791).
//!
//! Fragment offsets are given in bytes (`frag_offset_bytes`), not in the 8-byte units
//! of the wire, so IPv4 and IPv6 fragments compare directly and nobody multiplies twice.
//! The payload is bounded by the total length field: frames shorter than 60 bytes carry
//! Ethernet padding after the datagram, and it must not reach L4 checksums.

use super::checksum;
use super::{Error, Result};

mod field {
    use core::ops::Range;

    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks everything the accessors rely on. Truncated: the buffer is shorter than 20
    /// bytes, than the header length, or than the total length. Malformed: the version
    /// is not 4, IHL is below 5, or the total length is shorter than the header.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 {
            return Err(Error::Malformed);
        }
        let header_len = self.header_len() as usize;
        if header_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len < header_len {
            return Err(Error::Truncated);
        }
        let total_len = self.total_len() as usize;
        if total_len < header_len {
            return Err(Error::Malformed);
        }
        if len < total_len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn read_u16(&self, at: usize) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[at], d[at + 1]])
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL * 4), options included.
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The whole traffic class byte: DSCP in the high six bits, ECN in the low two.
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    pub fn dscp(&self) -> u8 {
        self.dscp_ecn() >> 2
    }

    pub fn ecn(&self) -> u8 {
        self.dscp_ecn() & 0x03
    }

    /// Header plus payload, in bytes.
    pub fn total_len(&self) -> u16 {
        self.read_u16(field::LENGTH.start)
    }

    pub fn ident(&self) -> u16 {
        self.read_u16(field::IDENT.start)
    }

    pub fn dont_frag(&self) -> bool {
        self.read_u16(field::FLG_OFF.start) & FLAG_DF != 0
    }

    pub fn more_frags(&self) -> bool {
        self.read_u16(field::FLG_OFF.start) & FLAG_MF != 0
    }

    /// Offset of this fragment's data in the original datagram, in bytes (always a
    /// multiple of 8).
    pub fn frag_offset_bytes(&self) -> u16 {
        (self.read_u16(field::FLG_OFF.start) & OFFSET_MASK) << 3
    }

    /// True for any piece of a fragmented datagram, the first included. Only the first
    /// (offset 0) carries the L4 header.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset_bytes() != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM.start)
    }

    pub fn src_addr(&self) -> [u8; 4] {
        let mut a = [0u8; 4];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC_ADDR]);
        a
    }

    pub fn dst_addr(&self) -> [u8; 4] {
        let mut a = [0u8; 4];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST_ADDR]);
        a
    }

    /// The whole header, options included.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len() as usize]
    }

    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len() as usize]
    }

    pub fn verify_checksum(&self) -> bool {
        checksum::compute(self.header()) == 0
    }

    /// The datagram's payload: from the end of the header to `total_len`, never to the
    /// end of the buffer.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len() as usize..self.total_len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn write_u16(&mut self, at: usize, value: u16) {
        self.buffer.as_mut()[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_version(&mut self, version: u8) {
        let d = self.buffer.as_mut();
        d[field::VER_IHL] = (d[field::VER_IHL] & 0x0f) | (version << 4);
    }

    /// `len` in bytes; it is stored divided by 4, so the low two bits are dropped.
    pub fn set_header_len(&mut self, len: u8) {
        let d = self.buffer.as_mut();
        d[field::VER_IHL] = (d[field::VER_IHL] & 0xf0) | ((len / 4) & 0x0f);
    }

    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = value;
    }

    pub fn set_total_len(&mut self, len: u16) {
        self.write_u16(field::LENGTH.start, len);
    }

    pub fn set_ident(&mut self, ident: u16) {
        self.write_u16(field::IDENT.start, ident);
    }

    pub fn set_dont_frag(&mut self, value: bool) {
        let raw = self.read_u16(field::FLG_OFF.start);
        let raw = if value { raw | FLAG_DF } else { raw & !FLAG_DF };
        self.write_u16(field::FLG_OFF.start, raw);
    }

    pub fn set_more_frags(&mut self, value: bool) {
        let raw = self.read_u16(field::FLG_OFF.start);
        let raw = if value { raw | FLAG_MF } else { raw & !FLAG_MF };
        self.write_u16(field::FLG_OFF.start, raw);
    }

    /// `offset` in bytes; the wire holds 8-byte units, so the low three bits are dropped.
    pub fn set_frag_offset_bytes(&mut self, offset: u16) {
        let raw = self.read_u16(field::FLG_OFF.start);
        let raw = (raw & !OFFSET_MASK) | (offset >> 3);
        self.write_u16(field::FLG_OFF.start, raw);
    }

    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    pub fn set_protocol(&mut self, protocol: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol;
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        self.write_u16(field::CHECKSUM.start, checksum);
    }

    pub fn set_src_addr(&mut self, addr: [u8; 4]) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr);
    }

    pub fn set_dst_addr(&mut self, addr: [u8; 4]) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr);
    }

    /// Recomputes the header checksum over the header length currently in the header.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::compute(self.header());
        self.set_checksum(c);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len() as usize..self.total_len() as usize;
        &mut self.buffer.as_mut()[range]
    }
}

/// An unfragmented IPv4 header without options, in host terms. Parsing drops options,
/// DSCP/ECN, the ident and the fragment fields; it does not verify the checksum,
/// because whether to trust it (or the NIC's offload) is the caller's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src_addr: [u8; 4],
    pub dst_addr: [u8; 4],
    pub protocol: u8,
    /// Payload length in bytes (total length minus header length).
    pub payload_len: usize,
    pub ttl: u8,
}

impl Ipv4Repr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Self> {
        packet.check_len()?;
        Ok(Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: packet.total_len() as usize - packet.header_len() as usize,
            ttl: packet.ttl(),
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes a 20-byte header: DSCP/ECN 0, ident 0, DF clear, no fragment, checksum
    /// filled. The payload is left alone.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        packet.set_version(4);
        packet.set_header_len(HEADER_LEN as u8);
        packet.set_dscp_ecn(0);
        packet.set_total_len(self.buffer_len() as u16);
        packet.set_ident(0);
        packet.write_u16(field::FLG_OFF.start, 0);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip_proto::{TCP as PROTO_TCP, UDP as PROTO_UDP};
    use proptest::prelude::*;

    // 192.168.0.1 -> 192.168.0.199, UDP, DF, ttl 64, ident 0x1c46, total length 28, then
    // 8 bytes of UDP and 4 bytes of Ethernet padding that must not count as payload.
    const PACKET: [u8; 32] = [
        0x45, 0x00, 0x00, 0x1c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0x9c, 0x3b, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7, 0x30, 0x39, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00, 0xee, 0xee,
        0xee, 0xee,
    ];

    fn fixed() -> [u8; 32] {
        let mut p = PACKET;
        Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
        p
    }

    #[test]
    fn getters_read_a_known_header() {
        let p = fixed();
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert_eq!(ip.version(), 4);
        assert_eq!(ip.header_len(), 20);
        assert_eq!(ip.dscp_ecn(), 0);
        assert_eq!(ip.total_len(), 28);
        assert_eq!(ip.ident(), 0x1c46);
        assert!(ip.dont_frag());
        assert!(!ip.more_frags());
        assert_eq!(ip.frag_offset_bytes(), 0);
        assert!(!ip.is_fragment());
        assert_eq!(ip.ttl(), 64);
        assert_eq!(ip.protocol(), PROTO_UDP);
        assert_eq!(ip.src_addr(), [192, 168, 0, 1]);
        assert_eq!(ip.dst_addr(), [192, 168, 0, 199]);
        assert!(ip.verify_checksum());
        assert!(ip.options().is_empty());
    }

    #[test]
    fn payload_excludes_ethernet_padding() {
        let p = fixed();
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert_eq!(ip.payload(), &[0x30, 0x39, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00]);
    }

    #[test]
    fn setters_change_only_their_bytes() {
        let mut p = fixed();
        let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
        ip.set_dscp_ecn(0xb8);
        ip.set_ident(0xbeef);
        ip.set_dont_frag(false);
        ip.set_more_frags(true);
        ip.set_frag_offset_bytes(1480);
        ip.set_ttl(1);
        ip.set_protocol(PROTO_TCP);
        ip.set_src_addr([10, 0, 0, 1]);
        ip.set_dst_addr([10, 0, 0, 2]);
        ip.set_checksum(0x1234);
        assert_eq!(ip.dscp(), 46);
        assert_eq!(ip.ecn(), 0);
        assert_eq!(ip.frag_offset_bytes(), 1480);
        assert!(ip.is_fragment());
        assert_eq!(
            &p[..20],
            &[
                0x45, 0xb8, 0x00, 0x1c, 0xbe, 0xef, 0x20, 0xb9, 0x01, 0x06, 0x12, 0x34, 10, 0, 0,
                1, 10, 0, 0, 2
            ]
        );
        assert_eq!(&p[20..], &PACKET[20..]);
    }

    #[test]
    fn a_changed_field_fails_the_checksum_until_refilled() {
        let mut p = fixed();
        let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
        ip.set_ttl(63);
        assert!(!ip.verify_checksum());
        ip.fill_checksum();
        assert!(ip.verify_checksum());
    }

    #[test]
    fn options_extend_the_header_and_shift_the_payload() {
        let mut p = [0u8; 28];
        p[..20].copy_from_slice(&fixed()[..20]);
        let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
        ip.set_header_len(24);
        ip.set_total_len(28);
        ip.payload_mut().copy_from_slice(&[9, 9, 9, 9]);
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert_eq!(ip.header_len(), 24);
        assert_eq!(ip.options(), &[0, 0, 0, 0]);
        assert_eq!(ip.payload(), &[9, 9, 9, 9]);
    }

    #[test]
    fn buffer_shorter_than_twenty_bytes_is_truncated() {
        assert_eq!(Ipv4Packet::new_checked(&fixed()[..19]).err(), Some(Error::Truncated));
    }

    #[test]
    fn version_other_than_four_is_malformed() {
        let mut p = fixed();
        p[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&p[..]).err(), Some(Error::Malformed));
    }

    #[test]
    fn ihl_below_five_is_malformed() {
        let mut p = fixed();
        p[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&p[..]).err(), Some(Error::Malformed));
    }

    #[test]
    fn buffer_shorter_than_header_len_is_truncated() {
        let mut p = fixed();
        p[0] = 0x4f; // 60-byte header in a 32-byte buffer
        assert_eq!(Ipv4Packet::new_checked(&p[..]).err(), Some(Error::Truncated));
    }

    #[test]
    fn total_len_shorter_than_header_is_malformed() {
        let mut p = fixed();
        p[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(Ipv4Packet::new_checked(&p[..]).err(), Some(Error::Malformed));
    }

    #[test]
    fn buffer_shorter_than_total_len_is_truncated() {
        let mut p = fixed();
        p[2..4].copy_from_slice(&33u16.to_be_bytes());
        assert_eq!(Ipv4Packet::new_checked(&p[..]).err(), Some(Error::Truncated));
        p[2..4].copy_from_slice(&32u16.to_be_bytes());
        assert!(Ipv4Packet::new_checked(&p[..]).is_ok());
    }

    #[test]
    fn emit_writes_a_plain_header_with_a_valid_checksum() {
        let repr = Ipv4Repr {
            src_addr: [192, 168, 0, 1],
            dst_addr: [192, 168, 0, 199],
            protocol: PROTO_UDP,
            payload_len: 8,
            ttl: 64,
        };
        let mut buf = [0xffu8; 28];
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        assert_eq!(
            &buf[..20],
            &[
                0x45, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x00, 0x40, 0x11, 0xf8, 0xb8, 0xc0, 0xa8,
                0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7
            ]
        );
        let ip = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(&buf[20..], &[0xff; 8]);
    }

    proptest! {
        #[test]
        fn repr_emit_then_parse_round_trips(
            src_addr in any::<[u8; 4]>(), dst_addr in any::<[u8; 4]>(), protocol in any::<u8>(),
            payload_len in 0usize..2000, ttl in any::<u8>()
        ) {
            let repr = Ipv4Repr { src_addr, dst_addr, protocol, payload_len, ttl };
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
            let packet = Ipv4Packet::new_checked(&buf[..]).unwrap();
            prop_assert!(packet.verify_checksum());
            prop_assert_eq!(Ipv4Repr::parse(&packet), Ok(repr));
        }

        #[test]
        fn new_checked_never_panics_on_arbitrary_bytes(mut data in proptest::collection::vec(any::<u8>(), 0..80), v4 in any::<bool>()) {
            if v4 && !data.is_empty() {
                data[0] = (data[0] & 0x0f) | 0x40;
            }
            if let Ok(ip) = Ipv4Packet::new_checked(&data[..]) {
                let _ = (ip.version(), ip.header_len(), ip.dscp_ecn(), ip.total_len(), ip.ident(),
                    ip.dont_frag(), ip.more_frags(), ip.frag_offset_bytes(), ip.ttl(), ip.protocol(),
                    ip.checksum(), ip.src_addr(), ip.dst_addr(), ip.header(), ip.options(),
                    ip.verify_checksum(), ip.payload());
                let _ = Ipv4Repr::parse(&ip).unwrap();
            }
        }

        #[test]
        fn header_checksum_matches_etherparse(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), ttl in any::<u8>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            let builder = etherparse::PacketBuilder::ipv4(src, dst, ttl).udp(1, 2);
            let mut buf = Vec::new();
            builder.write(&mut buf, &payload).unwrap();
            let mut ip = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
            prop_assert!(ip.verify_checksum());
            let theirs = ip.checksum();
            ip.set_checksum(0);
            ip.fill_checksum();
            prop_assert_eq!(ip.checksum(), theirs);
        }
    }
}
