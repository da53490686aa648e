//! Packet memory and header parsing, with the userspace pipeline's rules
//! (`vipr_dataplane::wire` and `pipeline::parse_ip`): the same checks in the same order,
//! so a malformed frame gets the same verdict and drop reason on both packet paths.
//!
//! `ptr_at` is the only way to touch packet memory. Lengths come from the headers:
//! `Ip::end` is where the datagram ends, and Ethernet padding after it is never read.

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use vipr_abi::{
    drop, Addr, FlowKey, FAMILY_V4, FAMILY_V6, MAX_IPV6_EXT_HEADERS, PROTO_TCP, PROTO_UDP,
};

/// Offsets past this are treated as beyond the frame. It is larger than any linear XDP
/// buffer (a page less head and tail room), and it keeps every packet offset below the
/// 64 KiB the verifier accepts on a packet pointer.
const MAX_OFFSET: usize = 0x8000;

const ETH_HEADER_LEN: usize = 14;
const VLAN_HEADER_LEN: usize = 4;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;

const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const TCP_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
/// ICMP and ICMPv6 share the 8-byte header that precedes an error's quote.
const ICMP_HEADER_LEN: usize = 8;

const IPV4_MF: u16 = 0x2000;
const IPV4_OFFSET_MASK: u16 = 0x1fff;

// IPv6 extension headers the walk crosses (RFC 8200 section 4).
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTS: u8 = 60;
const IPV6_FRAG_HEADER_LEN: usize = 8;

/// A pointer to a `T` at `offset` bytes into the frame, if the frame holds all of it
/// and, for a one-byte `T`, the byte after it too.
// Inlined so the bounds check and the access share one register: the verifier only
// trusts a packet pointer it has seen compared against the frame's end, and it tracks
// the pointer of each offset apart. Two things keep LLVM from rewriting the check
// into one the verifier cannot use:
// - the offset passes through memory (a volatile write and read), so LLVM knows
//   nothing of it and cannot drop the check as implied by an earlier check of another
//   offset (the verifier keeps the bounds of a value through the stack);
// - the check spans two bytes at least, or LLVM turns `p + 1 > end` into `p >= end`,
//   from which the verifier learns no range. Every byte vipr reads is followed by
//   more of its header, so the wider check never refuses one.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let mut opaque = offset;
    // SAFETY: a local, written and read back.
    let offset = unsafe {
        core::ptr::write_volatile(&mut opaque, offset);
        core::ptr::read_volatile(&opaque)
    };
    let start = ctx.data();
    let end = ctx.data_end();
    let len = if size_of::<T>() < 2 { 2 } else { size_of::<T>() };
    if offset > MAX_OFFSET || start + offset + len > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Whether the frame is at least `len` bytes long.
#[inline(always)]
fn has_len(ctx: &XdpContext, len: usize) -> bool {
    len <= MAX_OFFSET && ctx.data() + len <= ctx.data_end()
}

#[inline(always)]
pub fn load<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let p = ptr_at::<T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that the frame holds `size_of::<T>()` bytes at `p`;
    // headers sit at any alignment, hence the unaligned read.
    Some(unsafe { p.read_unaligned() })
}

#[inline(always)]
pub fn store<T>(ctx: &XdpContext, offset: usize, value: T) -> Option<()> {
    let p = ptr_at::<T>(ctx, offset)?;
    // SAFETY: as in `load`; XDP frames are writable.
    unsafe { p.write_unaligned(value) };
    Some(())
}

/// A big-endian 16-bit field, in host order.
#[inline(always)]
pub fn load_be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    load::<[u8; 2]>(ctx, offset).map(u16::from_be_bytes)
}

#[inline(always)]
pub fn store_be16(ctx: &XdpContext, offset: usize, value: u16) -> Option<()> {
    store(ctx, offset, value.to_be_bytes())
}

/// Where a parsed IP datagram sits in the frame, and its tuple (pipeline.rs `Ip`).
// 8-byte aligned, with the tuple first: LLVM then reads the addresses a word at a time
// (the BPF target has no unaligned loads, so it splits any access it cannot prove
// aligned into bytes, and the register pressure of that overflows the 512-byte stack).
#[repr(C, align(8))]
pub struct Ip {
    /// Addresses, protocol and family as they arrive; the ports are zero until
    /// `l4_ports` reads them, for TCP and UDP only.
    pub key: FlowKey,
    pub l3: usize,
    /// End of the datagram (Ethernet padding excluded).
    pub end: usize,
    pub l4: usize,
    /// A fragment other than the first: it carries no L4 header.
    pub later_fragment: bool,
    /// The first fragment of several: its L4 length is not the datagram's.
    pub first_fragment: bool,
    /// TCP flags (the header's 13th byte) once `l4_ports` read them; 0 otherwise.
    pub tcp_flags: u8,
}

impl Ip {
    /// Nothing parsed yet: `parse_ip` fills it.
    pub const fn new() -> Self {
        Ip {
            key: FlowKey::zeroed(),
            l3: 0,
            end: 0,
            l4: 0,
            later_fragment: false,
            first_fragment: false,
            tcp_flags: 0,
        }
    }
}

impl Ip {
    #[inline(always)]
    pub fn family(&self) -> u8 {
        self.key.family
    }

    /// Copies the source (`dst` false) or destination address the IP header holds now
    /// into `addr`.
    #[inline(always)]
    pub fn load_addr(&self, ctx: &XdpContext, dst: bool, addr: &mut Addr) -> Option<()> {
        if self.family() == FAMILY_V4 {
            load_addr::<4>(ctx, self.l3 + if dst { 16 } else { 12 }, addr)
        } else {
            load_addr::<16>(ctx, self.l3 + if dst { 24 } else { 8 }, addr)
        }
    }

    #[inline(always)]
    pub fn proto(&self) -> u8 {
        self.key.proto
    }
}

/// Writes the first `N` bytes of `bytes` (an address, a MAC) at `offset`.
// Two bytes at a time: a copy of a whole array becomes a call of `memmove`, a byte loop
// that the verifier walks byte by byte.
#[inline(always)]
pub fn store_bytes<const N: usize, const M: usize>(
    ctx: &XdpContext,
    offset: usize,
    bytes: &[u8; M],
) -> Option<()> {
    let mut i = 0;
    while i < N {
        store(ctx, offset + i, [bytes[i], bytes[i + 1]])?;
        i += 2;
    }
    Some(())
}

/// Copies the `N`-byte address at `offset` into the first `N` bytes of `addr`.
// Two bytes at a time, each stored before the next is loaded: the copy holds no more
// than one value in registers.
#[inline(always)]
pub fn load_addr<const N: usize>(ctx: &XdpContext, offset: usize, addr: &mut Addr) -> Option<()> {
    let mut i = 0;
    while i < N {
        let word: [u8; 2] = load(ctx, offset + i)?;
        addr[i] = word[0];
        addr[i + 1] = word[1];
        i += 2;
    }
    Some(())
}

/// Parses the Ethernet and IP headers into `ip`. `Ok(false)`: not IP, or not ours to
/// judge; pass untouched. `Err`: a drop reason.
#[inline(always)]
pub fn parse_ip(ctx: &XdpContext, ip: &mut Ip) -> Result<bool, u32> {
    // wire::l3_offset: one VLAN tag at most; a second one reads as a non-IP ethertype.
    let ethertype = load_be16(ctx, ETH_HEADER_LEN - 2).ok_or(drop::TRUNCATED)?;
    let (l3, ethertype) = if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
        let inner = ETH_HEADER_LEN + VLAN_HEADER_LEN;
        (inner, load_be16(ctx, inner - 2).ok_or(drop::TRUNCATED)?)
    } else {
        (ETH_HEADER_LEN, ethertype)
    };
    ip.l3 = l3;
    match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(ctx, ip).map(|()| true),
        ETHERTYPE_IPV6 => parse_ipv6(ctx, ip),
        _ => Ok(false),
    }
}

/// wire::Ipv4Packet::check_len, then the fields the pipeline reads.
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, ip: &mut Ip) -> Result<(), u32> {
    let l3 = ip.l3;
    if !has_len(ctx, l3 + IPV4_HEADER_LEN) {
        return Err(drop::TRUNCATED);
    }
    let ver_ihl: u8 = load(ctx, l3).ok_or(drop::TRUNCATED)?;
    if ver_ihl >> 4 != 4 {
        return Err(drop::BAD_IP_HEADER);
    }
    let header_len = (ver_ihl & 0x0f) as usize * 4;
    if header_len < IPV4_HEADER_LEN {
        return Err(drop::BAD_IP_HEADER);
    }
    if !has_len(ctx, l3 + header_len) {
        return Err(drop::TRUNCATED);
    }
    let total_len = load_be16(ctx, l3 + 2).ok_or(drop::TRUNCATED)? as usize;
    if total_len < header_len {
        return Err(drop::BAD_IP_HEADER);
    }
    if !has_len(ctx, l3 + total_len) {
        return Err(drop::TRUNCATED);
    }
    let flags_offset = load_be16(ctx, l3 + 6).ok_or(drop::TRUNCATED)?;
    ip.end = l3 + total_len;
    ip.l4 = l3 + header_len;
    ip.later_fragment = flags_offset & IPV4_OFFSET_MASK != 0;
    ip.first_fragment = !ip.later_fragment && flags_offset & IPV4_MF != 0;
    ip.key.family = FAMILY_V4;
    ip.key.proto = load(ctx, l3 + 9).ok_or(drop::TRUNCATED)?;
    load_addr::<4>(ctx, l3 + 12, &mut ip.key.src).ok_or(drop::TRUNCATED)?;
    load_addr::<4>(ctx, l3 + 16, &mut ip.key.dst).ok_or(drop::TRUNCATED)
}

/// wire::Ipv6Packet::check_len and the extension header walk.
#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, ip: &mut Ip) -> Result<bool, u32> {
    let l3 = ip.l3;
    if !has_len(ctx, l3 + IPV6_HEADER_LEN) {
        return Err(drop::TRUNCATED);
    }
    let version: u8 = load(ctx, l3).ok_or(drop::TRUNCATED)?;
    if version >> 4 != 6 {
        return Err(drop::BAD_IP_HEADER);
    }
    let end = l3 + IPV6_HEADER_LEN + load_be16(ctx, l3 + 4).ok_or(drop::TRUNCATED)? as usize;
    if !has_len(ctx, end) {
        return Err(drop::TRUNCATED);
    }
    ip.end = end;
    ip.key.family = FAMILY_V6;
    load_addr::<16>(ctx, l3 + 8, &mut ip.key.src).ok_or(drop::TRUNCATED)?;
    load_addr::<16>(ctx, l3 + 24, &mut ip.key.dst).ok_or(drop::TRUNCATED)?;
    let next_header: u8 = load(ctx, l3 + 6).ok_or(drop::TRUNCATED)?;
    let walked = match walk_ext_headers(ctx, l3 + IPV6_HEADER_LEN, end, next_header) {
        Ok(w) => w,
        // More extension headers than vipr walks: ours to refuse only if it is addressed
        // to a VIP; anything else is the kernel's business.
        Err(drop::IPV6_EXT_HEADERS) => {
            return if crate::flow::is_vip_addr(&ip.key.dst, FAMILY_V6) {
                Err(drop::IPV6_EXT_HEADERS)
            } else {
                Ok(false)
            };
        }
        Err(reason) => return Err(reason),
    };
    ip.key.proto = walked.proto;
    ip.l4 = walked.l4;
    ip.later_fragment = walked.later_fragment;
    ip.first_fragment = walked.first_fragment;
    Ok(true)
}

/// Where the walk of IPv6 extension headers arrived.
struct Walked {
    proto: u8,
    /// Frame offset of the upper-layer header.
    l4: usize,
    later_fragment: bool,
    first_fragment: bool,
}

#[inline(always)]
fn is_ext_header(next_header: u8) -> bool {
    matches!(next_header, HOP_BY_HOP | ROUTING | DEST_OPTS | FRAGMENT)
}

/// wire::walk_ext_headers over the bytes `start..end` of the frame, its errors as drop
/// reasons: truncated, hop-by-hop out of place (bad IP header), more than
/// `MAX_IPV6_EXT_HEADERS` headers (IPV6_EXT_HEADERS, which callers may turn into a pass).
#[inline(always)]
fn walk_ext_headers(
    ctx: &XdpContext,
    start: usize,
    end: usize,
    first_next_header: u8,
) -> Result<Walked, u32> {
    let mut next_header = first_next_header;
    let mut at = start;
    let mut fragment: Option<(u16, bool)> = None;
    // Bounded so the verifier sees the loop end; one more test after it tells a chain
    // that ends right at the limit from one that goes on.
    for walked in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ext_header(next_header) {
            break;
        }
        if next_header == HOP_BY_HOP && walked != 0 {
            // RFC 8200 section 4.1: hop-by-hop options only ever come first.
            return Err(drop::BAD_IP_HEADER);
        }
        if next_header == FRAGMENT {
            if at + IPV6_FRAG_HEADER_LEN > end {
                return Err(drop::TRUNCATED);
            }
            let off_m = load_be16(ctx, at + 2).ok_or(drop::TRUNCATED)?;
            // The 13-bit offset counts 8-byte units in the high bits: masking the flags
            // off leaves bytes.
            fragment = Some((off_m & 0xfff8, off_m & 1 != 0));
            next_header = load(ctx, at).ok_or(drop::TRUNCATED)?;
            at += IPV6_FRAG_HEADER_LEN;
        } else {
            if at + 2 > end {
                return Err(drop::TRUNCATED);
            }
            let hdr_ext_len: u8 = load(ctx, at + 1).ok_or(drop::TRUNCATED)?;
            let len = (hdr_ext_len as usize + 1) * 8;
            if at + len > end {
                return Err(drop::TRUNCATED);
            }
            next_header = load(ctx, at).ok_or(drop::TRUNCATED)?;
            at += len;
        }
    }
    if is_ext_header(next_header) {
        return Err(drop::IPV6_EXT_HEADERS);
    }
    let (later_fragment, first_fragment) = match fragment {
        Some((offset, more)) => (offset != 0, offset == 0 && more),
        None => (false, false),
    };
    Ok(Walked { proto: next_header, l4: at, later_fragment, first_fragment })
}

/// Reads the ports into `ip.key` (network byte order, as the conntrack keys hold them)
/// and the TCP flags into `ip.tcp_flags`: pipeline.rs `l4_ports`.
#[inline(always)]
pub fn l4_ports(ctx: &XdpContext, ip: &mut Ip) -> Result<(), u32> {
    if ip.proto() == PROTO_TCP {
        if ip.l4 + TCP_HEADER_LEN > ip.end {
            return Err(drop::TRUNCATED);
        }
        let data_offset: u8 = load(ctx, ip.l4 + 12).ok_or(drop::TRUNCATED)?;
        let header_len = (data_offset >> 4) as usize * 4;
        if header_len < TCP_HEADER_LEN {
            return Err(drop::BAD_L4_HEADER);
        }
        if ip.l4 + header_len > ip.end {
            return Err(drop::TRUNCATED);
        }
        ip.tcp_flags = load(ctx, ip.l4 + 13).ok_or(drop::TRUNCATED)?;
    } else {
        if ip.l4 + UDP_HEADER_LEN > ip.end {
            return Err(drop::TRUNCATED);
        }
        // The UDP length of a first fragment covers the whole datagram, not this
        // fragment: only the ports are read.
        if !ip.first_fragment {
            let len = load_be16(ctx, ip.l4 + 4).ok_or(drop::TRUNCATED)? as usize;
            if len < UDP_HEADER_LEN {
                return Err(drop::BAD_L4_HEADER);
            }
            if ip.l4 + len > ip.end {
                return Err(drop::TRUNCATED);
            }
        }
    }
    ip.key.src_port = load(ctx, ip.l4).ok_or(drop::TRUNCATED)?;
    ip.key.dst_port = load(ctx, ip.l4 + 2).ok_or(drop::TRUNCATED)?;
    Ok(())
}

/// The embedded packet of an ICMP error.
// Aligned and tuple first, for the reason given at `Ip`.
#[repr(C, align(8))]
pub struct IcmpInner {
    /// The quoted packet's own tuple.
    pub key: FlowKey,
    pub l3: usize,
    pub l4: usize,
    /// Whether the quoted bytes reach past the embedded L4 checksum.
    pub l4_csum_present: bool,
}

/// pipeline.rs `parse_icmp_error` into `inner` (whose key starts zeroed): false for
/// anything that is not an error quoting the start of a TCP or UDP packet that is no
/// later fragment.
// Not inlined: `inner` then lives in memory, where LLVM cannot split its addresses
// into byte-sized values that overflow the registers.
#[inline(never)]
pub fn parse_icmp_error(ctx: &XdpContext, ip: &Ip, inner: &mut IcmpInner) -> Option<bool> {
    if ip.l4 + ICMP_HEADER_LEN > ip.end {
        return Some(false);
    }
    let msg_type: u8 = load(ctx, ip.l4)?;
    let is_error = if ip.family() == FAMILY_V4 {
        // Destination unreachable, time exceeded, parameter problem.
        matches!(msg_type, 3 | 11 | 12)
    } else {
        // RFC 4443 section 2.1: destination unreachable .. parameter problem.
        matches!(msg_type, 1..=4)
    };
    if !is_error {
        return Some(false);
    }
    let l3 = ip.l4 + ICMP_HEADER_LEN;
    inner.l3 = l3;
    inner.key.family = ip.family();
    if ip.family() == FAMILY_V4 {
        // The quoted header is checked by hand: its total length describes the original
        // datagram, which the error quotes only the start of.
        if l3 + IPV4_HEADER_LEN > ip.end {
            return Some(false);
        }
        let ver_ihl: u8 = load(ctx, l3)?;
        let header_len = (ver_ihl & 0x0f) as usize * 4;
        if ver_ihl >> 4 != 4 || header_len < IPV4_HEADER_LEN {
            return Some(false);
        }
        if load_be16(ctx, l3 + 6)? & IPV4_OFFSET_MASK != 0 {
            return Some(false);
        }
        inner.l4 = l3 + header_len;
        inner.key.proto = load(ctx, l3 + 9)?;
        load_addr::<4>(ctx, l3 + 12, &mut inner.key.src)?;
        load_addr::<4>(ctx, l3 + 16, &mut inner.key.dst)?;
    } else {
        if l3 + IPV6_HEADER_LEN > ip.end {
            return Some(false);
        }
        if load::<u8>(ctx, l3)? >> 4 != 6 {
            return Some(false);
        }
        let next_header = load(ctx, l3 + 6)?;
        let Ok(walked) = walk_ext_headers(ctx, l3 + IPV6_HEADER_LEN, ip.end, next_header) else {
            return Some(false);
        };
        if walked.later_fragment {
            return Some(false);
        }
        inner.l4 = walked.l4;
        inner.key.proto = walked.proto;
        load_addr::<16>(ctx, l3 + 8, &mut inner.key.src)?;
        load_addr::<16>(ctx, l3 + 24, &mut inner.key.dst)?;
    }
    let proto = inner.key.proto;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Some(false);
    }
    // RFC 792 quotes at least 8 bytes of the original L4 header: the ports.
    if inner.l4 + 8 > ip.end {
        return Some(false);
    }
    inner.key.src_port = load(ctx, inner.l4)?;
    inner.key.dst_port = load(ctx, inner.l4 + 2)?;
    let csum_end = if proto == PROTO_TCP { 18 } else { 8 };
    inner.l4_csum_present = inner.l4 + csum_end <= ip.end;
    Some(true)
}
