//! TCP segment headers (RFC 9293).
//!
//! TCP has no length field: a view's buffer must be exactly the segment, which is what
//! `Ipv4Packet::payload` and `Ipv6Packet::payload` (bounded by their length fields)
//! hand over. Checksums cover the whole buffer.

use super::checksum::{self, IpAddress};
use super::ip_proto;
use super::{Error, Result};

/// Flag bits of the flags byte, as `flags()` returns and `set_flags` takes them.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

mod field {
    use core::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WIN_SIZE: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = field::URGENT.end;

/// A view of a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Truncated: the buffer is shorter than 20 bytes or than the header length.
    /// Malformed: the data offset is below 5.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_len() as usize;
        if header_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len < header_len {
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

    fn read_u32(&self, at: usize) -> u32 {
        let d = self.buffer.as_ref();
        u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
    }

    pub fn src_port(&self) -> u16 {
        self.read_u16(field::SRC_PORT.start)
    }

    pub fn dst_port(&self) -> u16 {
        self.read_u16(field::DST_PORT.start)
    }

    pub fn seq_number(&self) -> u32 {
        self.read_u32(field::SEQ_NUM.start)
    }

    pub fn ack_number(&self) -> u32 {
        self.read_u32(field::ACK_NUM.start)
    }

    /// Header length in bytes (data offset * 4), options included.
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The flags byte (CWR ECE URG ACK PSH RST SYN FIN); see [`flags`].
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn fin(&self) -> bool {
        self.flags() & flags::FIN != 0
    }

    pub fn syn(&self) -> bool {
        self.flags() & flags::SYN != 0
    }

    pub fn rst(&self) -> bool {
        self.flags() & flags::RST != 0
    }

    pub fn psh(&self) -> bool {
        self.flags() & flags::PSH != 0
    }

    pub fn ack(&self) -> bool {
        self.flags() & flags::ACK != 0
    }

    pub fn urg(&self) -> bool {
        self.flags() & flags::URG != 0
    }

    pub fn window_len(&self) -> u16 {
        self.read_u16(field::WIN_SIZE.start)
    }

    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM.start)
    }

    pub fn urgent_at(&self) -> u16 {
        self.read_u16(field::URGENT.start)
    }

    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len() as usize]
    }

    /// Verifies the checksum over the pseudo-header and the whole buffer.
    pub fn verify_checksum(&self, src: &IpAddress, dst: &IpAddress) -> bool {
        checksum::l4_checksum(src, dst, ip_proto::TCP, self.buffer.as_ref()) == 0
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len() as usize..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    fn write_u16(&mut self, at: usize, value: u16) {
        self.buffer.as_mut()[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }

    fn write_u32(&mut self, at: usize, value: u32) {
        self.buffer.as_mut()[at..at + 4].copy_from_slice(&value.to_be_bytes());
    }

    fn set_flag(&mut self, flag: u8, value: bool) {
        let f = self.flags();
        self.set_flags(if value { f | flag } else { f & !flag });
    }

    pub fn set_src_port(&mut self, port: u16) {
        self.write_u16(field::SRC_PORT.start, port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        self.write_u16(field::DST_PORT.start, port);
    }

    pub fn set_seq_number(&mut self, seq: u32) {
        self.write_u32(field::SEQ_NUM.start, seq);
    }

    pub fn set_ack_number(&mut self, ack: u32) {
        self.write_u32(field::ACK_NUM.start, ack);
    }

    /// `len` in bytes; it is stored divided by 4, so the low two bits are dropped. The
    /// reserved bits and NS beside the data offset are kept.
    pub fn set_header_len(&mut self, len: u8) {
        let d = self.buffer.as_mut();
        d[field::DATA_OFF] = (d[field::DATA_OFF] & 0x0f) | ((len / 4) << 4);
    }

    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    pub fn set_fin(&mut self, value: bool) {
        self.set_flag(flags::FIN, value);
    }

    pub fn set_syn(&mut self, value: bool) {
        self.set_flag(flags::SYN, value);
    }

    pub fn set_rst(&mut self, value: bool) {
        self.set_flag(flags::RST, value);
    }

    pub fn set_psh(&mut self, value: bool) {
        self.set_flag(flags::PSH, value);
    }

    pub fn set_ack(&mut self, value: bool) {
        self.set_flag(flags::ACK, value);
    }

    pub fn set_urg(&mut self, value: bool) {
        self.set_flag(flags::URG, value);
    }

    pub fn set_window_len(&mut self, window: u16) {
        self.write_u16(field::WIN_SIZE.start, window);
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        self.write_u16(field::CHECKSUM.start, checksum);
    }

    pub fn set_urgent_at(&mut self, urgent: u16) {
        self.write_u16(field::URGENT.start, urgent);
    }

    /// Recomputes the checksum over the pseudo-header and the whole buffer.
    pub fn fill_checksum(&mut self, src: &IpAddress, dst: &IpAddress) {
        self.set_checksum(0);
        let c = checksum::l4_checksum(src, dst, ip_proto::TCP, self.buffer.as_ref());
        self.set_checksum(c);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len() as usize;
        &mut self.buffer.as_mut()[start..]
    }
}

/// A TCP segment without options, in host terms. Parsing keeps only what this struct
/// holds (options, urgent pointer and NS are dropped) and does not verify the checksum:
/// whether to trust it is the caller's policy, see [`TcpPacket::verify_checksum`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    pub ack_number: u32,
    /// The flags byte; see [`flags`].
    pub flags: u8,
    pub window_len: u16,
    pub payload: &'a [u8],
}

impl<'a> TcpRepr<'a> {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &TcpPacket<&'a T>) -> Result<Self> {
        packet.check_len()?;
        // Borrow from the underlying buffer, not from `packet`, so the payload outlives it.
        let data: &'a [u8] = <T as AsRef<[u8]>>::as_ref(packet.buffer);
        Ok(TcpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
            payload: &data[packet.header_len() as usize..],
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Writes a 20-byte header and the payload, then fills the checksum.
    ///
    /// # Panics
    /// If the buffer is shorter than `buffer_len()`. It should be exactly that long:
    /// the checksum covers the whole buffer.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut TcpPacket<T>,
        src: &IpAddress,
        dst: &IpAddress,
    ) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.buffer.as_mut()[field::DATA_OFF] = ((HEADER_LEN / 4) as u8) << 4;
        packet.set_flags(self.flags);
        packet.set_window_len(self.window_len);
        packet.set_urgent_at(0);
        packet.payload_mut()[..self.payload.len()].copy_from_slice(self.payload);
        packet.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::{Ipv4Packet, Ipv4Repr};
    use crate::wire::ipv6::{Ipv6Packet, Ipv6Repr};
    use proptest::prelude::*;

    const SRC: [u8; 4] = [192, 168, 1, 10];
    const DST: [u8; 4] = [192, 168, 1, 20];

    // A SYN from 192.168.1.10:49152 to 192.168.1.20:80 with an MSS option of 1460.
    // Checksum computed independently (python) over the pseudo-header.
    const SYN: [u8; 24] = [
        0xc0, 0x00, 0x00, 0x50, 0x12, 0x34, 0x56, 0x78, 0x00, 0x00, 0x00, 0x00, 0x60, 0x02, 0xfa,
        0xf0, 0xf0, 0xc9, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
    ];

    fn v4(a: [u8; 4]) -> IpAddress {
        IpAddress::V4(a)
    }

    #[test]
    fn getters_read_a_known_syn() {
        let tcp = TcpPacket::new_checked(&SYN[..]).unwrap();
        assert_eq!(tcp.src_port(), 49152);
        assert_eq!(tcp.dst_port(), 80);
        assert_eq!(tcp.seq_number(), 0x1234_5678);
        assert_eq!(tcp.ack_number(), 0);
        assert_eq!(tcp.header_len(), 24);
        assert_eq!(tcp.flags(), flags::SYN);
        assert!(tcp.syn() && !tcp.ack() && !tcp.fin() && !tcp.rst() && !tcp.psh() && !tcp.urg());
        assert_eq!(tcp.window_len(), 64240);
        assert_eq!(tcp.checksum(), 0xf0c9);
        assert_eq!(tcp.urgent_at(), 0);
        assert_eq!(tcp.options(), &[0x02, 0x04, 0x05, 0xb4]);
        assert!(tcp.payload().is_empty());
        assert!(tcp.verify_checksum(&v4(SRC), &v4(DST)));
        assert!(!tcp.verify_checksum(&v4(DST), &v4([192, 168, 1, 21])));
    }

    #[test]
    fn setters_change_only_their_bytes() {
        let mut p = SYN;
        let mut tcp = TcpPacket::new_unchecked(&mut p[..]);
        tcp.set_src_port(0x0102);
        tcp.set_dst_port(0x0304);
        tcp.set_seq_number(0x0506_0708);
        tcp.set_ack_number(0x090a_0b0c);
        tcp.set_syn(false);
        tcp.set_ack(true);
        tcp.set_fin(true);
        tcp.set_rst(true);
        tcp.set_psh(true);
        tcp.set_urg(true);
        tcp.set_window_len(0x0d0e);
        tcp.set_checksum(0x0f10);
        tcp.set_urgent_at(0x1112);
        assert_eq!(tcp.flags(), 0x3d);
        assert_eq!(
            &p[..20],
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x60, 0x3d, 13, 14, 15, 16, 17, 18]
        );
        assert_eq!(&p[20..], &SYN[20..]);
        let mut tcp = TcpPacket::new_unchecked(&mut p[..]);
        tcp.set_header_len(20);
        tcp.set_flags(flags::SYN | flags::ACK);
        assert_eq!(&p[12..14], &[0x50, 0x12]);
    }

    #[test]
    fn fill_checksum_restores_a_known_checksum() {
        let mut p = SYN;
        let mut tcp = TcpPacket::new_unchecked(&mut p[..]);
        tcp.set_checksum(0);
        assert!(!tcp.verify_checksum(&v4(SRC), &v4(DST)));
        tcp.fill_checksum(&v4(SRC), &v4(DST));
        assert_eq!(p, SYN);
    }

    #[test]
    fn buffer_shorter_than_twenty_bytes_is_truncated() {
        assert_eq!(TcpPacket::new_checked(&SYN[..19]).err(), Some(Error::Truncated));
    }

    #[test]
    fn data_offset_below_five_is_malformed() {
        let mut p = SYN;
        p[12] = 0x40;
        assert_eq!(TcpPacket::new_checked(&p[..]).err(), Some(Error::Malformed));
    }

    #[test]
    fn header_len_past_the_buffer_is_truncated() {
        assert_eq!(TcpPacket::new_checked(&SYN[..23]).err(), Some(Error::Truncated));
    }

    #[test]
    fn repr_parse_drops_options_and_keeps_the_payload() {
        let mut p = [0u8; 27];
        p[..24].copy_from_slice(&SYN);
        p[24..].copy_from_slice(b"abc");
        let repr = TcpRepr::parse(&TcpPacket::new_checked(&p[..]).unwrap()).unwrap();
        assert_eq!(repr.flags, flags::SYN);
        assert_eq!(repr.payload, b"abc");
        assert_eq!(repr.buffer_len(), 23);
    }

    fn addr_strategy() -> impl Strategy<Value = (IpAddress, IpAddress)> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(s, d)| (s.into(), d.into())),
            (any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(s, d)| (s.into(), d.into())),
        ]
    }

    /// Builds a whole IP packet with etherparse and returns it with the offset of TCP.
    fn etherparse_packet(
        src: &IpAddress,
        dst: &IpAddress,
        ports: (u16, u16),
        seq: u32,
        window: u16,
        syn: bool,
        payload: &[u8],
    ) -> (Vec<u8>, usize) {
        let mut buf = Vec::new();
        match (*src, *dst) {
            (IpAddress::V4(s), IpAddress::V4(d)) => {
                let b =
                    etherparse::PacketBuilder::ipv4(s, d, 64).tcp(ports.0, ports.1, seq, window);
                let b = if syn { b.syn() } else { b.ack(seq ^ 0x5555) };
                b.write(&mut buf, payload).unwrap();
                (buf, 20)
            }
            (IpAddress::V6(s), IpAddress::V6(d)) => {
                let b =
                    etherparse::PacketBuilder::ipv6(s, d, 64).tcp(ports.0, ports.1, seq, window);
                let b = if syn { b.syn() } else { b.ack(seq ^ 0x5555) };
                b.write(&mut buf, payload).unwrap();
                (buf, 40)
            }
            _ => unreachable!("the strategy pairs addresses of one family"),
        }
    }

    proptest! {
        #[test]
        fn repr_emit_then_parse_round_trips(
            (src, dst) in addr_strategy(),
            src_port in any::<u16>(), dst_port in any::<u16>(), seq_number in any::<u32>(),
            ack_number in any::<u32>(), flags in any::<u8>(), window_len in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..100)
        ) {
            let repr = TcpRepr { src_port, dst_port, seq_number, ack_number, flags, window_len, payload: &payload };
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), &src, &dst);
            let packet = TcpPacket::new_checked(&buf[..]).unwrap();
            prop_assert!(packet.verify_checksum(&src, &dst));
            prop_assert_eq!(TcpRepr::parse(&packet), Ok(repr));
        }

        #[test]
        fn new_checked_never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(tcp) = TcpPacket::new_checked(&data[..]) {
                let addr = IpAddress::V4([1, 2, 3, 4]);
                let _ = (tcp.src_port(), tcp.dst_port(), tcp.seq_number(), tcp.ack_number(),
                    tcp.header_len(), tcp.flags(), tcp.window_len(), tcp.checksum(), tcp.urgent_at(),
                    tcp.options(), tcp.payload(), tcp.verify_checksum(&addr, &addr));
                let _ = TcpRepr::parse(&tcp).unwrap();
            }
        }

        #[test]
        fn etherparse_checksums_verify_and_fill_checksum_reproduces_them(
            (src, dst) in addr_strategy(), ports in any::<(u16, u16)>(), seq in any::<u32>(),
            window in any::<u16>(), syn in any::<bool>(),
            payload in proptest::collection::vec(any::<u8>(), 0..300)
        ) {
            let (mut buf, l4) = etherparse_packet(&src, &dst, ports, seq, window, syn, &payload);
            let theirs = buf.clone();
            let segment_len = buf.len() - l4;
            let mut tcp = TcpPacket::new_checked(&mut buf[l4..]).unwrap();
            prop_assert!(tcp.verify_checksum(&src, &dst));
            prop_assert_eq!(tcp.payload(), &payload[..]);
            tcp.set_checksum(0);
            tcp.fill_checksum(&src, &dst);
            let ours = tcp.checksum();
            let expected = TcpPacket::new_unchecked(&theirs[l4..]).checksum();
            // etherparse sends a computed zero as 0xffff, as UDP must; TCP sends the value
            // as computed. Both are one's-complement zero and verify alike.
            prop_assert!(ours == expected || (ours == 0 && expected == 0xffff));
            tcp.set_checksum(expected);
            prop_assert_eq!(&buf, &theirs);
            prop_assert_eq!(segment_len, 20 + payload.len());
        }

        #[test]
        fn etherparse_accepts_checksums_we_emit(
            (src, dst) in addr_strategy(), ports in any::<(u16, u16)>(), seq in any::<u32>(),
            flags in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..300)
        ) {
            let tcp_repr = TcpRepr { src_port: ports.0, dst_port: ports.1, seq_number: seq,
                ack_number: !seq, flags, window_len: 1024, payload: &payload };
            let mut buf;
            match (src, dst) {
                (IpAddress::V4(s), IpAddress::V4(d)) => {
                    let ip = Ipv4Repr { src_addr: s, dst_addr: d, protocol: ip_proto::TCP,
                        payload_len: tcp_repr.buffer_len(), ttl: 64 };
                    buf = vec![0u8; ip.buffer_len()];
                    let mut packet = Ipv4Packet::new_unchecked(&mut buf[..]);
                    ip.emit(&mut packet);
                    tcp_repr.emit(&mut TcpPacket::new_unchecked(packet.payload_mut()), &src, &dst);
                }
                (IpAddress::V6(s), IpAddress::V6(d)) => {
                    let ip = Ipv6Repr { src_addr: s, dst_addr: d, next_header: ip_proto::TCP,
                        payload_len: tcp_repr.buffer_len(), hop_limit: 64 };
                    buf = vec![0u8; ip.buffer_len()];
                    let mut packet = Ipv6Packet::new_unchecked(&mut buf[..]);
                    ip.emit(&mut packet);
                    tcp_repr.emit(&mut TcpPacket::new_unchecked(packet.payload_mut()), &src, &dst);
                }
                _ => unreachable!("the strategy pairs addresses of one family"),
            }
            let sliced = etherparse::SlicedPacket::from_ip(&buf).unwrap();
            let Some(etherparse::TransportSlice::Tcp(tcp)) = sliced.transport else {
                panic!("etherparse found no TCP segment");
            };
            let expected = match (src, dst) {
                (IpAddress::V4(s), IpAddress::V4(d)) => tcp.calc_checksum_ipv4(s, d).unwrap(),
                (IpAddress::V6(s), IpAddress::V6(d)) => tcp.calc_checksum_ipv6(s, d).unwrap(),
                _ => unreachable!(),
            };
            let ours = tcp.checksum();
            // See above: etherparse's 0xffff and our 0 are the same one's-complement zero.
            prop_assert!(ours == expected || (ours == 0 && expected == 0xffff));
            prop_assert_eq!(tcp.payload(), &payload[..]);
        }
    }
}
