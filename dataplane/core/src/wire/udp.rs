//! UDP datagrams (RFC 768).
//!
//! The payload and the checksum are bounded by the UDP length field, not by the
//! buffer, so padding after the datagram is ignored. A zero checksum means "none" over
//! IPv4 and is invalid over IPv6; a computed zero is sent as 0xffff.

use super::checksum::{self, IpAddress};
use super::ip_proto;
use super::{Error, Result};

mod field {
    use core::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

pub const HEADER_LEN: usize = field::CHECKSUM.end;

/// A view of a UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Truncated: the buffer is shorter than 8 bytes or than the length field.
    /// Malformed: the length field is below 8.
    pub fn check_len(&self) -> Result<()> {
        let buffer_len = self.buffer.as_ref().len();
        if buffer_len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = self.len() as usize;
        if len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if buffer_len < len {
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

    pub fn src_port(&self) -> u16 {
        self.read_u16(field::SRC_PORT.start)
    }

    pub fn dst_port(&self) -> u16 {
        self.read_u16(field::DST_PORT.start)
    }

    /// Header plus payload, in bytes.
    pub fn len(&self) -> u16 {
        self.read_u16(field::LENGTH.start)
    }

    /// True when the length field claims no payload.
    pub fn is_empty(&self) -> bool {
        self.len() as usize <= HEADER_LEN
    }

    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM.start)
    }

    /// The datagram as the length field bounds it, header included.
    fn datagram(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.len() as usize]
    }

    /// Verifies the checksum over the pseudo-header and the datagram.
    pub fn verify_checksum(&self, src: &IpAddress, dst: &IpAddress) -> bool {
        if self.checksum() == 0 {
            // RFC 768: zero means the sender computed no checksum. RFC 8200 section 8.1:
            // over IPv6 the checksum is mandatory and a zero one must be discarded.
            return src.is_v4();
        }
        checksum::l4_checksum(src, dst, ip_proto::UDP, self.datagram()) == 0
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    fn write_u16(&mut self, at: usize, value: u16) {
        self.buffer.as_mut()[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_src_port(&mut self, port: u16) {
        self.write_u16(field::SRC_PORT.start, port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        self.write_u16(field::DST_PORT.start, port);
    }

    pub fn set_len(&mut self, len: u16) {
        self.write_u16(field::LENGTH.start, len);
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        self.write_u16(field::CHECKSUM.start, checksum);
    }

    /// Computes the checksum over the pseudo-header and the datagram.
    pub fn fill_checksum(&mut self, src: &IpAddress, dst: &IpAddress) {
        self.set_checksum(0);
        let c = checksum::l4_checksum(src, dst, ip_proto::UDP, self.datagram());
        // RFC 768: a computed zero is transmitted as all ones, since zero means "none".
        self.set_checksum(checksum::udp_fixup(c));
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.len() as usize;
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// A UDP datagram in host terms. Parsing does not verify the checksum: whether to
/// trust it is the caller's policy, see [`UdpPacket::verify_checksum`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

impl<'a> UdpRepr<'a> {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &UdpPacket<&'a T>) -> Result<Self> {
        packet.check_len()?;
        // Borrow from the underlying buffer, not from `packet`, so the payload outlives it.
        let data: &'a [u8] = <T as AsRef<[u8]>>::as_ref(packet.buffer);
        Ok(UdpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload: &data[HEADER_LEN..packet.len() as usize],
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Writes the header and payload and fills the checksum.
    ///
    /// # Panics
    /// If the buffer is shorter than `buffer_len()`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut UdpPacket<T>,
        src: &IpAddress,
        dst: &IpAddress,
    ) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(self.buffer_len() as u16);
        packet.payload_mut().copy_from_slice(self.payload);
        packet.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::{Ipv4Packet, Ipv4Repr};
    use crate::wire::ipv6::{Ipv6Packet, Ipv6Repr};
    use proptest::prelude::*;

    const SRC: [u8; 4] = [10, 0, 0, 1];
    const DST: [u8; 4] = [10, 0, 0, 53];

    // 10.0.0.1:12345 -> 10.0.0.53:53, payload "hi!!", then two bytes of padding.
    // Checksum computed independently (python) over the pseudo-header.
    const DATAGRAM: [u8; 14] =
        [0x30, 0x39, 0x00, 0x35, 0x00, 0x0c, 0x31, 0xa8, b'h', b'i', b'!', b'!', 0xee, 0xee];

    fn v4(a: [u8; 4]) -> IpAddress {
        IpAddress::V4(a)
    }

    #[test]
    fn getters_read_a_known_datagram() {
        let udp = UdpPacket::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!(udp.src_port(), 12345);
        assert_eq!(udp.dst_port(), 53);
        assert_eq!(udp.len(), 12);
        assert!(!udp.is_empty());
        assert_eq!(udp.checksum(), 0x31a8);
        assert_eq!(udp.payload(), b"hi!!");
        assert!(udp.verify_checksum(&v4(SRC), &v4(DST)));
        assert!(!udp.verify_checksum(&v4(SRC), &v4([10, 0, 0, 54])));
    }

    #[test]
    fn setters_change_only_their_bytes() {
        let mut p = DATAGRAM;
        let mut udp = UdpPacket::new_unchecked(&mut p[..]);
        udp.set_src_port(0x0102);
        udp.set_dst_port(0x0304);
        udp.set_len(13);
        udp.set_checksum(0x0506);
        udp.payload_mut()[4] = 0xaa;
        assert_eq!(p, [1, 2, 3, 4, 0, 13, 5, 6, b'h', b'i', b'!', b'!', 0xaa, 0xee]);
    }

    #[test]
    fn fill_checksum_restores_a_known_checksum_and_ignores_padding() {
        let mut p = DATAGRAM;
        let mut udp = UdpPacket::new_unchecked(&mut p[..]);
        udp.set_checksum(0x1234);
        assert!(!udp.verify_checksum(&v4(SRC), &v4(DST)));
        udp.fill_checksum(&v4(SRC), &v4(DST));
        assert_eq!(p, DATAGRAM);
    }

    #[test]
    fn zero_checksum_is_valid_over_ipv4_and_invalid_over_ipv6() {
        let mut p = DATAGRAM;
        UdpPacket::new_unchecked(&mut p[..]).set_checksum(0);
        let udp = UdpPacket::new_checked(&p[..]).unwrap();
        assert!(udp.verify_checksum(&v4(SRC), &v4(DST)));
        let v6 = IpAddress::V6([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert!(!udp.verify_checksum(&v6, &v6));
    }

    #[test]
    fn a_computed_zero_checksum_is_sent_as_all_ones() {
        // Choose the last payload word so the datagram sums to one's-complement zero.
        let mut p = [0u8; 10];
        let mut udp = UdpPacket::new_unchecked(&mut p[..]);
        udp.set_src_port(1);
        udp.set_dst_port(2);
        udp.set_len(10);
        let partial = checksum::l4_checksum(&v4(SRC), &v4(DST), ip_proto::UDP, &p);
        p[8..10].copy_from_slice(&partial.to_be_bytes());
        let mut udp = UdpPacket::new_unchecked(&mut p[..]);
        udp.fill_checksum(&v4(SRC), &v4(DST));
        assert_eq!(udp.checksum(), 0xffff);
        assert!(udp.verify_checksum(&v4(SRC), &v4(DST)));
    }

    #[test]
    fn buffer_shorter_than_eight_bytes_is_truncated() {
        assert_eq!(UdpPacket::new_checked(&DATAGRAM[..7]).err(), Some(Error::Truncated));
    }

    #[test]
    fn length_field_below_eight_is_malformed() {
        let mut p = DATAGRAM;
        p[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(UdpPacket::new_checked(&p[..]).err(), Some(Error::Malformed));
    }

    #[test]
    fn length_field_past_the_buffer_is_truncated() {
        assert_eq!(UdpPacket::new_checked(&DATAGRAM[..11]).err(), Some(Error::Truncated));
        assert!(UdpPacket::new_checked(&DATAGRAM[..12]).is_ok());
    }

    #[test]
    fn repr_parse_stops_at_the_length_field() {
        let repr = UdpRepr::parse(&UdpPacket::new_checked(&DATAGRAM[..]).unwrap()).unwrap();
        assert_eq!(repr, UdpRepr { src_port: 12345, dst_port: 53, payload: b"hi!!" });
    }

    fn addr_strategy() -> impl Strategy<Value = (IpAddress, IpAddress)> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(s, d)| (s.into(), d.into())),
            (any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(s, d)| (s.into(), d.into())),
        ]
    }

    proptest! {
        #[test]
        fn repr_emit_then_parse_round_trips(
            (src, dst) in addr_strategy(), src_port in any::<u16>(), dst_port in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..100)
        ) {
            let repr = UdpRepr { src_port, dst_port, payload: &payload };
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut UdpPacket::new_unchecked(&mut buf[..]), &src, &dst);
            let packet = UdpPacket::new_checked(&buf[..]).unwrap();
            prop_assert!(packet.checksum() != 0);
            prop_assert!(packet.verify_checksum(&src, &dst));
            prop_assert_eq!(UdpRepr::parse(&packet), Ok(repr));
        }

        #[test]
        fn new_checked_never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(udp) = UdpPacket::new_checked(&data[..]) {
                let addr = IpAddress::V6([7; 16]);
                let _ = (udp.src_port(), udp.dst_port(), udp.len(), udp.checksum(), udp.payload(),
                    udp.verify_checksum(&addr, &addr));
                let _ = UdpRepr::parse(&udp).unwrap();
            }
        }

        #[test]
        fn etherparse_checksums_verify_and_fill_checksum_reproduces_them(
            (src, dst) in addr_strategy(), ports in any::<(u16, u16)>(),
            payload in proptest::collection::vec(any::<u8>(), 0..300)
        ) {
            let mut buf = Vec::new();
            let l4 = match (src, dst) {
                (IpAddress::V4(s), IpAddress::V4(d)) => {
                    etherparse::PacketBuilder::ipv4(s, d, 64).udp(ports.0, ports.1)
                        .write(&mut buf, &payload).unwrap();
                    20
                }
                (IpAddress::V6(s), IpAddress::V6(d)) => {
                    etherparse::PacketBuilder::ipv6(s, d, 64).udp(ports.0, ports.1)
                        .write(&mut buf, &payload).unwrap();
                    40
                }
                _ => unreachable!("the strategy pairs addresses of one family"),
            };
            let theirs = buf.clone();
            let mut udp = UdpPacket::new_checked(&mut buf[l4..]).unwrap();
            prop_assert!(udp.verify_checksum(&src, &dst));
            prop_assert_eq!(udp.payload(), &payload[..]);
            udp.set_checksum(0);
            udp.fill_checksum(&src, &dst);
            prop_assert_eq!(&buf, &theirs);
        }

        #[test]
        fn etherparse_accepts_checksums_we_emit(
            (src, dst) in addr_strategy(), ports in any::<(u16, u16)>(),
            payload in proptest::collection::vec(any::<u8>(), 0..300)
        ) {
            let udp_repr = UdpRepr { src_port: ports.0, dst_port: ports.1, payload: &payload };
            let mut buf;
            match (src, dst) {
                (IpAddress::V4(s), IpAddress::V4(d)) => {
                    let ip = Ipv4Repr { src_addr: s, dst_addr: d, protocol: ip_proto::UDP,
                        payload_len: udp_repr.buffer_len(), ttl: 64 };
                    buf = vec![0u8; ip.buffer_len()];
                    let mut packet = Ipv4Packet::new_unchecked(&mut buf[..]);
                    ip.emit(&mut packet);
                    udp_repr.emit(&mut UdpPacket::new_unchecked(packet.payload_mut()), &src, &dst);
                }
                (IpAddress::V6(s), IpAddress::V6(d)) => {
                    let ip = Ipv6Repr { src_addr: s, dst_addr: d, next_header: ip_proto::UDP,
                        payload_len: udp_repr.buffer_len(), hop_limit: 64 };
                    buf = vec![0u8; ip.buffer_len()];
                    let mut packet = Ipv6Packet::new_unchecked(&mut buf[..]);
                    ip.emit(&mut packet);
                    udp_repr.emit(&mut UdpPacket::new_unchecked(packet.payload_mut()), &src, &dst);
                }
                _ => unreachable!("the strategy pairs addresses of one family"),
            }
            let sliced = etherparse::SlicedPacket::from_ip(&buf).unwrap();
            let Some(etherparse::TransportSlice::Udp(udp)) = sliced.transport else {
                panic!("etherparse found no UDP datagram");
            };
            let header = udp.to_header();
            let expected = match (src, dst) {
                (IpAddress::V4(s), IpAddress::V4(d)) => header.calc_checksum_ipv4_raw(s, d, udp.payload()).unwrap(),
                (IpAddress::V6(s), IpAddress::V6(d)) => header.calc_checksum_ipv6_raw(s, d, udp.payload()).unwrap(),
                _ => unreachable!(),
            };
            prop_assert_eq!(udp.checksum(), expected);
            prop_assert_eq!(udp.payload(), &payload[..]);
        }
    }
}
