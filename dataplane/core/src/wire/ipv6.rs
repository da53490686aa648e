//! IPv6 headers (RFC 8200) and the extension headers vipr walks to reach L4.
//!
//! Fragment offsets are given in bytes, as for IPv4 (`ipv4::Ipv4Packet::frag_offset_bytes`).
//! The payload is bounded by the payload length field, never by the buffer, so Ethernet
//! padding does not reach L4 checksums. Jumbograms (payload length 0 with a hop-by-hop
//! jumbo option) are not supported: their payload reads as empty.

use super::{Error, Result};

/// Next-header numbers of the extension headers [`walk_ext_headers`] knows about.
pub const HOP_BY_HOP: u8 = 0;
pub const ROUTING: u8 = 43;
pub const FRAGMENT: u8 = 44;
pub const ESP: u8 = 50;
pub const AH: u8 = 51;
pub const NO_NEXT: u8 = 59;
pub const DEST_OPTS: u8 = 60;

mod field {
    use core::ops::Range;

    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Range<usize> = 8..24;
    pub const DST_ADDR: Range<usize> = 24..40;

    // Generic extension header (hop-by-hop, routing, destination options).
    pub const EXT_NXT_HDR: usize = 0;
    pub const EXT_LENGTH: usize = 1;

    // Fragment extension header.
    pub const FRAG_NXT_HDR: usize = 0;
    pub const FRAG_RESERVED: usize = 1;
    pub const FRAG_OFF_M: Range<usize> = 2..4;
    pub const FRAG_IDENT: Range<usize> = 4..8;
}

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = field::DST_ADDR.end;
/// The part of a generic extension header needed to learn its length.
pub const EXT_HEADER_MIN_LEN: usize = field::EXT_LENGTH + 1;
/// Length of a fragment header.
pub const FRAG_HEADER_LEN: usize = field::FRAG_IDENT.end;

/// A view of an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Truncated: the buffer is shorter than 40 bytes or than 40 + payload length.
    /// Malformed: the version is not 6.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 6 {
            return Err(Error::Malformed);
        }
        if len < HEADER_LEN + self.payload_len() as usize {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn ver_tc_flow(&self) -> u32 {
        let d = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
    }

    pub fn version(&self) -> u8 {
        (self.ver_tc_flow() >> 28) as u8
    }

    pub fn traffic_class(&self) -> u8 {
        (self.ver_tc_flow() >> 20) as u8
    }

    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & 0x000f_ffff
    }

    /// Length of everything after the fixed header, extension headers included.
    pub fn payload_len(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::LENGTH.start], d[field::LENGTH.start + 1]])
    }

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NXT_HDR]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC_ADDR]);
        a
    }

    pub fn dst_addr(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST_ADDR]);
        a
    }

    /// Extension headers and upper-layer data, bounded by the payload length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + self.payload_len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    fn set_ver_tc_flow(&mut self, value: u32) {
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_version(&mut self, version: u8) {
        let v = (self.ver_tc_flow() & 0x0fff_ffff) | ((version as u32 & 0x0f) << 28);
        self.set_ver_tc_flow(v);
    }

    pub fn set_traffic_class(&mut self, tc: u8) {
        let v = (self.ver_tc_flow() & 0xf00f_ffff) | ((tc as u32) << 20);
        self.set_ver_tc_flow(v);
    }

    /// Only the low 20 bits of `label` fit the field; higher bits are dropped.
    pub fn set_flow_label(&mut self, label: u32) {
        let v = (self.ver_tc_flow() & 0xfff0_0000) | (label & 0x000f_ffff);
        self.set_ver_tc_flow(v);
    }

    pub fn set_payload_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    pub fn set_next_header(&mut self, next_header: u8) {
        self.buffer.as_mut()[field::NXT_HDR] = next_header;
    }

    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    pub fn set_src_addr(&mut self, addr: [u8; 16]) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr);
    }

    pub fn set_dst_addr(&mut self, addr: [u8; 16]) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + self.payload_len() as usize;
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// An IPv6 header in host terms. Traffic class and flow label are dropped on parse and
/// written as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Repr {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub next_header: u8,
    /// Bytes after the fixed header, extension headers included.
    pub payload_len: usize,
    pub hop_limit: u8,
}

impl Ipv6Repr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv6Packet<T>) -> Result<Self> {
        packet.check_len()?;
        Ok(Ipv6Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: packet.payload_len() as usize,
            hop_limit: packet.hop_limit(),
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the 40-byte header; the payload is left alone.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv6Packet<T>) {
        packet.set_ver_tc_flow(6 << 28);
        packet.set_payload_len(self.payload_len as u16);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

/// A view of a generic TLV-form extension header: hop-by-hop options, routing,
/// destination options. Not AH, whose length counts 4-byte units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6ExtHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6ExtHeader<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6ExtHeader { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let header = Self::new_unchecked(buffer);
        header.check_len()?;
        Ok(header)
    }

    /// Truncated if the buffer cannot hold the two fixed bytes or the length they claim.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < EXT_HEADER_MIN_LEN || len < self.header_len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::EXT_NXT_HDR]
    }

    /// The raw length field: 8-byte units beyond the first 8 bytes.
    pub fn hdr_ext_len(&self) -> u8 {
        self.buffer.as_ref()[field::EXT_LENGTH]
    }

    /// Length of the whole header in bytes: (hdr_ext_len + 1) * 8.
    pub fn header_len(&self) -> usize {
        (self.hdr_ext_len() as usize + 1) * 8
    }

    /// The options or routing data after the two fixed bytes.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[EXT_HEADER_MIN_LEN..self.header_len()]
    }

    /// What follows this header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6ExtHeader<T> {
    pub fn set_next_header(&mut self, next_header: u8) {
        self.buffer.as_mut()[field::EXT_NXT_HDR] = next_header;
    }

    pub fn set_hdr_ext_len(&mut self, len: u8) {
        self.buffer.as_mut()[field::EXT_LENGTH] = len;
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[EXT_HEADER_MIN_LEN..end]
    }
}

/// A view of the 8-byte fragment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6FragmentHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6FragmentHeader<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6FragmentHeader { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let header = Self::new_unchecked(buffer);
        header.check_len()?;
        Ok(header)
    }

    /// Truncated if the buffer cannot hold 8 bytes.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < FRAG_HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn off_m(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::FRAG_OFF_M.start], d[field::FRAG_OFF_M.start + 1]])
    }

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::FRAG_NXT_HDR]
    }

    /// Offset of this fragment's data in the original packet, in bytes (a multiple of 8).
    pub fn frag_offset_bytes(&self) -> u16 {
        // The 13-bit offset sits in the high bits and counts 8-byte units, so masking
        // the low three bits yields bytes directly.
        self.off_m() & 0xfff8
    }

    pub fn more_frags(&self) -> bool {
        self.off_m() & 0x0001 != 0
    }

    pub fn ident(&self) -> u32 {
        let d = &self.buffer.as_ref()[field::FRAG_IDENT];
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
    }

    /// What follows this header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[FRAG_HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6FragmentHeader<T> {
    fn set_off_m(&mut self, value: u16) {
        self.buffer.as_mut()[field::FRAG_OFF_M].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_next_header(&mut self, next_header: u8) {
        let d = self.buffer.as_mut();
        d[field::FRAG_NXT_HDR] = next_header;
        d[field::FRAG_RESERVED] = 0;
    }

    /// `offset` in bytes; the wire holds 8-byte units, so the low three bits are dropped.
    pub fn set_frag_offset_bytes(&mut self, offset: u16) {
        let v = (self.off_m() & 0x0007) | (offset & 0xfff8);
        self.set_off_m(v);
    }

    pub fn set_more_frags(&mut self, more: bool) {
        let v = (self.off_m() & !0x0001) | more as u16;
        self.set_off_m(v);
    }

    pub fn set_ident(&mut self, ident: u32) {
        self.buffer.as_mut()[field::FRAG_IDENT].copy_from_slice(&ident.to_be_bytes());
    }
}

/// Fragment information found on the way to L4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Frag {
    /// Offset of this fragment's data in bytes, the unit of
    /// `Ipv4Packet::frag_offset_bytes`. Non-zero means no L4 header is present.
    pub offset: u16,
    pub more: bool,
    pub ident: u32,
}

/// Where the upper-layer header of an IPv6 packet starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6L4 {
    /// The first next-header value that is not a walked extension header: TCP, UDP,
    /// ICMPv6, or anything vipr does not open (AH, ESP, no next header, unknown).
    pub proto: u8,
    /// Offset of that header from the start of the IPv6 payload.
    pub offset: usize,
    /// Set when a fragment header was crossed. If its offset is non-zero, the bytes at
    /// `offset` are the middle of some L4 stream, not a header.
    pub fragment: Option<Ipv6Frag>,
}

/// Walks hop-by-hop, routing, destination-options and fragment headers from the start
/// of an IPv6 payload to the upper-layer header.
///
/// Errors: Truncated if a header runs past `packet_payload`; Malformed if hop-by-hop
/// appears anywhere but first (RFC 8200 section 4.1); Unsupported if more than
/// `max_headers` extension headers precede the upper layer, which bounds the work an
/// attacker can make one packet cost.
pub fn walk_ext_headers(
    packet_payload: &[u8],
    first_next_header: u8,
    max_headers: usize,
) -> Result<Ipv6L4> {
    let mut next_header = first_next_header;
    let mut offset = 0;
    let mut fragment = None;
    let mut walked = 0;
    loop {
        match next_header {
            HOP_BY_HOP | ROUTING | DEST_OPTS | FRAGMENT => {}
            proto => return Ok(Ipv6L4 { proto, offset, fragment }),
        }
        if walked == max_headers {
            return Err(Error::Unsupported);
        }
        if next_header == HOP_BY_HOP && walked != 0 {
            // RFC 8200 section 4.1: hop-by-hop options, when present, immediately follow
            // the IPv6 header.
            return Err(Error::Malformed);
        }
        // `offset` never exceeds the length: each step checked the header it skipped.
        let rest = &packet_payload[offset..];
        if next_header == FRAGMENT {
            let frag = Ipv6FragmentHeader::new_checked(rest)?;
            fragment = Some(Ipv6Frag {
                offset: frag.frag_offset_bytes(),
                more: frag.more_frags(),
                ident: frag.ident(),
            });
            next_header = frag.next_header();
            offset += FRAG_HEADER_LEN;
        } else {
            let ext = Ipv6ExtHeader::new_checked(rest)?;
            next_header = ext.next_header();
            offset += ext.header_len();
        }
        walked += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip_proto::{TCP, UDP};
    use proptest::prelude::*;

    const SRC: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01];
    const DST: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02];

    // Version 6, traffic class 0xb8, flow label 0x12345, payload 8 bytes, UDP, hop
    // limit 64, then 8 bytes of payload and 2 bytes of padding.
    fn packet() -> [u8; 50] {
        let mut p = [0u8; 50];
        p[0..4].copy_from_slice(&[0x6b, 0x81, 0x23, 0x45]);
        p[4..6].copy_from_slice(&[0x00, 0x08]);
        p[6] = 17;
        p[7] = 64;
        p[8..24].copy_from_slice(&SRC);
        p[24..40].copy_from_slice(&DST);
        p[40..48].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        p[48..50].copy_from_slice(&[0xee, 0xee]);
        p
    }

    #[test]
    fn getters_read_a_known_header() {
        let p = packet();
        let ip = Ipv6Packet::new_checked(&p[..]).unwrap();
        assert_eq!(ip.version(), 6);
        assert_eq!(ip.traffic_class(), 0xb8);
        assert_eq!(ip.flow_label(), 0x12345);
        assert_eq!(ip.payload_len(), 8);
        assert_eq!(ip.next_header(), UDP);
        assert_eq!(ip.hop_limit(), 64);
        assert_eq!(ip.src_addr(), SRC);
        assert_eq!(ip.dst_addr(), DST);
        assert_eq!(ip.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn setters_change_only_their_bytes() {
        let mut p = packet();
        let mut ip = Ipv6Packet::new_unchecked(&mut p[..]);
        ip.set_traffic_class(0x01);
        ip.set_flow_label(0xfffff);
        ip.set_hop_limit(1);
        ip.set_next_header(TCP);
        ip.set_payload_len(10);
        ip.set_src_addr(DST);
        ip.set_dst_addr(SRC);
        ip.payload_mut()[9] = 0xaa;
        assert_eq!(&p[0..8], &[0x60, 0x1f, 0xff, 0xff, 0x00, 0x0a, 6, 1]);
        assert_eq!(&p[8..24], &DST);
        assert_eq!(&p[24..40], &SRC);
        assert_eq!(&p[40..50], &[1, 2, 3, 4, 5, 6, 7, 8, 0xee, 0xaa]);
        let mut ip = Ipv6Packet::new_unchecked(&mut p[..]);
        ip.set_version(4);
        assert_eq!(p[0], 0x40);
    }

    #[test]
    fn buffer_shorter_than_forty_bytes_is_truncated() {
        assert_eq!(Ipv6Packet::new_checked(&packet()[..39]).err(), Some(Error::Truncated));
    }

    #[test]
    fn version_other_than_six_is_malformed() {
        let mut p = packet();
        p[0] = 0x4b;
        assert_eq!(Ipv6Packet::new_checked(&p[..]).err(), Some(Error::Malformed));
    }

    #[test]
    fn buffer_shorter_than_payload_len_is_truncated() {
        let p = packet();
        assert_eq!(Ipv6Packet::new_checked(&p[..47]).err(), Some(Error::Truncated));
        assert!(Ipv6Packet::new_checked(&p[..48]).is_ok());
    }

    #[test]
    fn emit_writes_a_zero_flow_header() {
        let repr = Ipv6Repr {
            src_addr: SRC,
            dst_addr: DST,
            next_header: TCP,
            payload_len: 20,
            hop_limit: 255,
        };
        let mut buf = [0xffu8; 60];
        repr.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
        assert_eq!(&buf[0..8], &[0x60, 0, 0, 0, 0, 20, 6, 255]);
        assert_eq!(&buf[40..], &[0xff; 20]);
    }

    /// Hop-by-hop (8 bytes) -> destination options (16 bytes) -> fragment -> TCP.
    fn chain() -> [u8; 40] {
        let mut c = [0u8; 40];
        c[0] = DEST_OPTS;
        c[1] = 0;
        c[8] = FRAGMENT;
        c[9] = 1;
        let mut frag = Ipv6FragmentHeader::new_unchecked(&mut c[24..32]);
        frag.set_next_header(TCP);
        frag.set_frag_offset_bytes(1448);
        frag.set_more_frags(true);
        frag.set_ident(0xdead_beef);
        c
    }

    #[test]
    fn fragment_header_reads_what_its_setters_wrote() {
        let c = chain();
        assert_eq!(&c[24..32], &[6, 0, 0x05, 0xa9, 0xde, 0xad, 0xbe, 0xef]);
        let frag = Ipv6FragmentHeader::new_checked(&c[24..]).unwrap();
        assert_eq!(frag.next_header(), TCP);
        assert_eq!(frag.frag_offset_bytes(), 1448);
        assert!(frag.more_frags());
        assert_eq!(frag.ident(), 0xdead_beef);
        assert_eq!(frag.payload().len(), 8);
        assert_eq!(Ipv6FragmentHeader::new_checked(&c[24..31]).err(), Some(Error::Truncated));
    }

    #[test]
    fn ext_header_length_counts_eight_byte_units_past_the_first() {
        let c = chain();
        let ext = Ipv6ExtHeader::new_checked(&c[8..]).unwrap();
        assert_eq!(ext.next_header(), FRAGMENT);
        assert_eq!(ext.hdr_ext_len(), 1);
        assert_eq!(ext.header_len(), 16);
        assert_eq!(ext.data().len(), 14);
        assert_eq!(ext.payload().len(), 16);
        assert_eq!(Ipv6ExtHeader::new_checked(&c[8..23]).err(), Some(Error::Truncated));
        assert_eq!(Ipv6ExtHeader::new_checked(&c[8..9]).err(), Some(Error::Truncated));
    }

    #[test]
    fn walk_without_extension_headers_returns_the_first_header() {
        assert_eq!(
            walk_ext_headers(&[], UDP, 4),
            Ok(Ipv6L4 { proto: UDP, offset: 0, fragment: None })
        );
    }

    #[test]
    fn walk_crosses_options_and_fragment_headers_to_l4() {
        assert_eq!(
            walk_ext_headers(&chain(), HOP_BY_HOP, 4),
            Ok(Ipv6L4 {
                proto: TCP,
                offset: 32,
                fragment: Some(Ipv6Frag { offset: 1448, more: true, ident: 0xdead_beef })
            })
        );
    }

    #[test]
    fn walk_stops_at_headers_it_does_not_open() {
        for proto in [AH, ESP, NO_NEXT, 58, 253] {
            let mut c = chain();
            c[0] = proto;
            assert_eq!(
                walk_ext_headers(&c, HOP_BY_HOP, 4),
                Ok(Ipv6L4 { proto, offset: 8, fragment: None })
            );
        }
    }

    #[test]
    fn walk_past_the_header_limit_is_unsupported() {
        assert_eq!(walk_ext_headers(&chain(), HOP_BY_HOP, 2), Err(Error::Unsupported));
        assert!(walk_ext_headers(&chain(), HOP_BY_HOP, 3).is_ok());
    }

    #[test]
    fn walk_into_a_cut_header_is_truncated() {
        assert_eq!(walk_ext_headers(&chain()[..31], HOP_BY_HOP, 4), Err(Error::Truncated));
        assert_eq!(walk_ext_headers(&chain()[..23], HOP_BY_HOP, 4), Err(Error::Truncated));
    }

    #[test]
    fn hop_by_hop_after_another_header_is_malformed() {
        let mut c = chain();
        c[8] = HOP_BY_HOP;
        assert_eq!(walk_ext_headers(&c, HOP_BY_HOP, 4), Err(Error::Malformed));
    }

    proptest! {
        #[test]
        fn repr_emit_then_parse_round_trips(
            src_addr in any::<[u8; 16]>(), dst_addr in any::<[u8; 16]>(), next_header in any::<u8>(),
            payload_len in 0usize..2000, hop_limit in any::<u8>()
        ) {
            let repr = Ipv6Repr { src_addr, dst_addr, next_header, payload_len, hop_limit };
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
            let packet = Ipv6Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Ipv6Repr::parse(&packet), Ok(repr));
        }

        #[test]
        fn new_checked_never_panics_on_arbitrary_bytes(mut data in proptest::collection::vec(any::<u8>(), 0..100), v6 in any::<bool>()) {
            if v6 && !data.is_empty() {
                data[0] = (data[0] & 0x0f) | 0x60;
            }
            if let Ok(ip) = Ipv6Packet::new_checked(&data[..]) {
                let _ = (ip.version(), ip.traffic_class(), ip.flow_label(), ip.payload_len(),
                    ip.next_header(), ip.hop_limit(), ip.src_addr(), ip.dst_addr(), ip.payload());
                let _ = Ipv6Repr::parse(&ip).unwrap();
            }
            if let Ok(ext) = Ipv6ExtHeader::new_checked(&data[..]) {
                let _ = (ext.next_header(), ext.hdr_ext_len(), ext.header_len(), ext.data(), ext.payload());
            }
            if let Ok(frag) = Ipv6FragmentHeader::new_checked(&data[..]) {
                let _ = (frag.next_header(), frag.frag_offset_bytes(), frag.more_frags(), frag.ident(), frag.payload());
            }
        }

        #[test]
        fn walk_never_panics_and_stays_inside_the_payload(
            data in proptest::collection::vec(
                prop_oneof![Just(HOP_BY_HOP), Just(ROUTING), Just(FRAGMENT), Just(DEST_OPTS), Just(0u8), Just(1u8), any::<u8>()],
                0..120),
            first in prop_oneof![Just(HOP_BY_HOP), Just(ROUTING), Just(FRAGMENT), Just(DEST_OPTS), any::<u8>()],
            max in 0usize..12
        ) {
            if let Ok(l4) = walk_ext_headers(&data, first, max) {
                prop_assert!(l4.offset <= data.len());
            }
        }
    }
}
