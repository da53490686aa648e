//! Ethernet II frames and 802.1Q / 802.1ad VLAN tags.
//!
//! vipr only ever looks past one VLAN tag: [`l3_offset`] stops after the first tag, so a
//! QinQ frame reports the inner tag's ethertype (0x8100) and callers pass it on as
//! non-IP instead of guessing at stacked tags.

use super::{Error, Result};

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
pub const ETHERTYPE_QINQ: u16 = 0x88A8;

mod field {
    use core::ops::Range;

    pub const DST_ADDR: Range<usize> = 0..6;
    pub const SRC_ADDR: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;

    pub const VLAN_TCI: Range<usize> = 0..2;
    pub const VLAN_ETHERTYPE: Range<usize> = 2..4;
}

/// Length of an untagged Ethernet II header.
pub const HEADER_LEN: usize = field::ETHERTYPE.end;
/// Length of one VLAN tag (TCI and the inner ethertype).
pub const VLAN_HEADER_LEN: usize = field::VLAN_ETHERTYPE.end;

fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ
}

/// Finds the L3 header of `frame`: its offset and its ethertype, looking through at
/// most one VLAN tag (802.1Q or 802.1ad). A second stacked tag is not opened: its
/// ethertype (0x8100) is returned, which no IP path accepts.
pub fn l3_offset(frame: &[u8]) -> Result<(usize, u16)> {
    let eth = EthernetFrame::new_checked(frame)?;
    let ethertype = eth.ethertype();
    if !is_vlan(ethertype) {
        return Ok((HEADER_LEN, ethertype));
    }
    let vlan = VlanHeader::new_checked(eth.payload())?;
    Ok((HEADER_LEN + VLAN_HEADER_LEN, vlan.ethertype()))
}

/// A view of an Ethernet II frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Truncated if the buffer cannot hold the 14-byte header.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub const fn header_len() -> usize {
        HEADER_LEN
    }

    pub fn dst_addr(&self) -> [u8; 6] {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST_ADDR]);
        a
    }

    pub fn src_addr(&self) -> [u8; 6] {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC_ADDR]);
        a
    }

    pub fn ethertype(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::ETHERTYPE.start], d[field::ETHERTYPE.start + 1]])
    }

    /// Everything after the 14-byte header, VLAN tag included if there is one.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, addr: [u8; 6]) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr);
    }

    pub fn set_src_addr(&mut self, addr: [u8; 6]) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr);
    }

    pub fn set_ethertype(&mut self, ethertype: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&ethertype.to_be_bytes());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// An Ethernet II header in host terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    pub src_addr: [u8; 6],
    pub dst_addr: [u8; 6],
    pub ethertype: u16,
}

impl EthernetRepr {
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<Self> {
        frame.check_len()?;
        Ok(EthernetRepr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// # Panics
    /// If the frame's buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_src_addr(self.src_addr);
        frame.set_dst_addr(self.dst_addr);
        frame.set_ethertype(self.ethertype);
    }
}

/// A view of one VLAN tag: the four bytes that follow an ethertype of 0x8100 or 0x88a8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanHeader<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        VlanHeader { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let tag = Self::new_unchecked(buffer);
        tag.check_len()?;
        Ok(tag)
    }

    /// Truncated if the buffer cannot hold the 4-byte tag.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < VLAN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Tag control information: priority (3 bits), drop eligible (1), VLAN id (12).
    pub fn tci(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::VLAN_TCI.start], d[field::VLAN_TCI.start + 1]])
    }

    /// 802.1p priority code point.
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }

    /// Drop eligible indicator.
    pub fn dei(&self) -> bool {
        self.tci() & 0x1000 != 0
    }

    pub fn vid(&self) -> u16 {
        self.tci() & 0x0fff
    }

    /// Ethertype of what follows the tag.
    pub fn ethertype(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::VLAN_ETHERTYPE.start], d[field::VLAN_ETHERTYPE.start + 1]])
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[VLAN_HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VlanHeader<T> {
    pub fn set_tci(&mut self, tci: u16) {
        self.buffer.as_mut()[field::VLAN_TCI].copy_from_slice(&tci.to_be_bytes());
    }

    /// Only the low 3 bits of `pcp` fit the field; higher bits are dropped.
    pub fn set_pcp(&mut self, pcp: u8) {
        let tci = (self.tci() & 0x1fff) | (((pcp & 0x07) as u16) << 13);
        self.set_tci(tci);
    }

    pub fn set_dei(&mut self, dei: bool) {
        let tci = (self.tci() & !0x1000) | if dei { 0x1000 } else { 0 };
        self.set_tci(tci);
    }

    /// Only the low 12 bits of `vid` fit the field; higher bits are dropped.
    pub fn set_vid(&mut self, vid: u16) {
        let tci = (self.tci() & 0xf000) | (vid & 0x0fff);
        self.set_tci(tci);
    }

    pub fn set_ethertype(&mut self, ethertype: u16) {
        self.buffer.as_mut()[field::VLAN_ETHERTYPE].copy_from_slice(&ethertype.to_be_bytes());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[VLAN_HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // dst 02:00:00:00:00:01, src 02:00:00:00:00:02, 802.1Q tag pcp 5 dei 0 vid 100, IPv4.
    const TAGGED: [u8; 20] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x81, 0x00, 0xa0,
        0x64, 0x08, 0x00, 0x45, 0x00,
    ];

    #[test]
    fn getters_read_a_known_tagged_frame() {
        let eth = EthernetFrame::new_checked(&TAGGED[..]).unwrap();
        assert_eq!(eth.dst_addr(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(eth.src_addr(), [2, 0, 0, 0, 0, 2]);
        assert_eq!(eth.ethertype(), ETHERTYPE_VLAN);
        let vlan = VlanHeader::new_checked(eth.payload()).unwrap();
        assert_eq!(vlan.tci(), 0xa064);
        assert_eq!(vlan.pcp(), 5);
        assert!(!vlan.dei());
        assert_eq!(vlan.vid(), 100);
        assert_eq!(vlan.ethertype(), ETHERTYPE_IPV4);
        assert_eq!(vlan.payload(), &[0x45, 0x00]);
    }

    #[test]
    fn setters_write_the_right_bytes() {
        let mut buf = [0u8; 18];
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.set_dst_addr([1, 2, 3, 4, 5, 6]);
        eth.set_src_addr([7, 8, 9, 10, 11, 12]);
        eth.set_ethertype(ETHERTYPE_QINQ);
        let mut vlan = VlanHeader::new_unchecked(eth.payload_mut());
        vlan.set_vid(0xfff);
        vlan.set_pcp(7);
        vlan.set_dei(true);
        vlan.set_vid(0x123);
        vlan.set_ethertype(ETHERTYPE_IPV6);
        assert_eq!(
            buf,
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x88, 0xa8, 0xf1, 0x23, 0x86, 0xdd]
        );
    }

    #[test]
    fn repr_round_trips_through_a_frame() {
        let repr = EthernetRepr {
            src_addr: [1, 2, 3, 4, 5, 6],
            dst_addr: [6, 5, 4, 3, 2, 1],
            ethertype: ETHERTYPE_ARP,
        };
        let mut buf = [0u8; HEADER_LEN];
        repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        let parsed = EthernetRepr::parse(&EthernetFrame::new_checked(&buf[..]).unwrap());
        assert_eq!(parsed, Ok(repr));
    }

    #[test]
    fn frame_shorter_than_header_is_truncated() {
        assert_eq!(EthernetFrame::new_checked(&TAGGED[..13]).err(), Some(Error::Truncated));
        assert_eq!(VlanHeader::new_checked(&TAGGED[14..17]).err(), Some(Error::Truncated));
    }

    #[test]
    fn l3_offset_of_untagged_frame_is_fourteen() {
        let mut f = TAGGED;
        f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        assert_eq!(l3_offset(&f), Ok((14, ETHERTYPE_IPV6)));
    }

    #[test]
    fn l3_offset_looks_through_one_tag_of_either_kind() {
        assert_eq!(l3_offset(&TAGGED), Ok((18, ETHERTYPE_IPV4)));
        let mut f = TAGGED;
        f[12..14].copy_from_slice(&ETHERTYPE_QINQ.to_be_bytes());
        assert_eq!(l3_offset(&f), Ok((18, ETHERTYPE_IPV4)));
    }

    #[test]
    fn l3_offset_of_stacked_tags_reports_the_inner_tag_as_non_ip() {
        let mut f = TAGGED;
        f[12..14].copy_from_slice(&ETHERTYPE_QINQ.to_be_bytes());
        f[16..18].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        assert_eq!(l3_offset(&f), Ok((18, ETHERTYPE_VLAN)));
    }

    #[test]
    fn l3_offset_of_a_cut_tag_is_truncated() {
        assert_eq!(l3_offset(&TAGGED[..17]), Err(Error::Truncated));
        assert_eq!(l3_offset(&TAGGED[..13]), Err(Error::Truncated));
        // A tag that ends exactly at the buffer end is fine: the L3 view checks the rest.
        assert_eq!(l3_offset(&TAGGED[..18]), Ok((18, ETHERTYPE_IPV4)));
    }

    proptest! {
        #[test]
        fn views_never_panic_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(eth) = EthernetFrame::new_checked(&data[..]) {
                let _ = (eth.dst_addr(), eth.src_addr(), eth.ethertype(), eth.payload());
            }
            if let Ok(v) = VlanHeader::new_checked(&data[..]) {
                let _ = (v.tci(), v.pcp(), v.dei(), v.vid(), v.ethertype(), v.payload());
            }
            if let Ok((off, _)) = l3_offset(&data) {
                prop_assert!(off <= data.len());
            }
        }
    }
}
