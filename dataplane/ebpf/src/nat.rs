//! Header rewrites with incremental checksums, and forwarding of the rewritten frame:
//! pipeline.rs `rewrite_ip`, `set_ip_addrs`, `forward`, `decrement_ttl`, `set_macs`.
//! Checksum arithmetic is `vipr_abi::checksum`, the code the userspace pipeline runs.

use crate::flow::host_prefix_len;
use crate::maps::NEXT_HOPS;
use crate::packet::{load, load_be16, store, store_be16, store_bytes, Ip};
use crate::{Run, Verdict};
use aya_ebpf::bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_SUCCESS};
use aya_ebpf::btf_maps::lpm_trie::Key;
use aya_ebpf::helpers::bpf_fib_lookup as fib_lookup;
use aya_ebpf::programs::XdpContext;
use aya_ebpf::EbpfContext;
use core::mem::size_of;
use vipr_abi::checksum::{udp_fixup, update16, update_addr};
use vipr_abi::{
    drop, Addr, FlowKey, NextHopKey, FAMILY_V4, PROTO_TCP, PROTO_UDP, SETTINGS_F_FIB_LOOKUP,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Offset of the TCP or UDP checksum in its header.
#[inline(always)]
pub fn l4_csum_offset(proto: u8) -> usize {
    if proto == PROTO_TCP {
        16
    } else {
        6
    }
}

/// Rewrites the addresses and ports of the packet whose IP header is at `l3` and
/// TCP/UDP header at `l4`, from `old`'s to the given ones (ports in network byte
/// order), with incremental updates of the IPv4 header checksum and (if
/// `l4_csum_present`) the TCP/UDP checksum, whose pseudo-header covers the addresses.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn rewrite_ip(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
    old: &FlowKey,
    src: &Addr,
    dst: &Addr,
    src_port: u16,
    dst_port: u16,
    l4_csum_present: bool,
) -> Result<(), u32> {
    if l4_csum_present {
        let csum_at = l4 + l4_csum_offset(old.proto);
        let mut c = load_be16(ctx, csum_at).ok_or(drop::TRUNCATED)?;
        // A UDP/IPv4 checksum of zero means "none": leave it so (RFC 768).
        let skip = old.proto == PROTO_UDP && old.family == FAMILY_V4 && c == 0;
        if !skip {
            c = update_addr(c, &old.src, src, old.family);
            c = update_addr(c, &old.dst, dst, old.family);
            c = update16(c, load_be16(ctx, l4).ok_or(drop::TRUNCATED)?, u16::from_be(src_port));
            c = update16(c, load_be16(ctx, l4 + 2).ok_or(drop::TRUNCATED)?, u16::from_be(dst_port));
            if old.proto == PROTO_UDP {
                c = udp_fixup(c);
            }
            store_be16(ctx, csum_at, c).ok_or(drop::TRUNCATED)?;
        }
    }
    store(ctx, l4, src_port).ok_or(drop::TRUNCATED)?;
    store(ctx, l4 + 2, dst_port).ok_or(drop::TRUNCATED)?;
    set_ip_addrs(ctx, l3, old.family, (&old.src, &old.dst), src, dst)
}

/// Sets the IP addresses of the header at `l3` from `old` to `src` and `dst`, updating
/// the IPv4 header checksum.
#[inline(always)]
pub fn set_ip_addrs(
    ctx: &XdpContext,
    l3: usize,
    family: u8,
    old: (&Addr, &Addr),
    src: &Addr,
    dst: &Addr,
) -> Result<(), u32> {
    if family == FAMILY_V4 {
        let mut c = load_be16(ctx, l3 + 10).ok_or(drop::TRUNCATED)?;
        c = update_addr(c, old.0, src, FAMILY_V4);
        c = update_addr(c, old.1, dst, FAMILY_V4);
        store_bytes::<4, 16>(ctx, l3 + 12, src).ok_or(drop::TRUNCATED)?;
        store_bytes::<4, 16>(ctx, l3 + 16, dst).ok_or(drop::TRUNCATED)?;
        store_be16(ctx, l3 + 10, c).ok_or(drop::TRUNCATED)
    } else {
        store_bytes::<16, 16>(ctx, l3 + 8, src).ok_or(drop::TRUNCATED)?;
        store_bytes::<16, 16>(ctx, l3 + 24, dst).ok_or(drop::TRUNCATED)
    }
}

/// Sends a rewritten frame on: with a known next hop for its (new) destination vipr
/// forwards it itself (a router hop: TTL / hop limit decremented, MACs rewritten), from
/// the static next-hop table or, when enabled, the kernel FIB; otherwise the kernel
/// routes it.
// Not inlined, like the other steps called from the entry point.
#[inline(never)]
pub fn forward(run: &Run, ip: &Ip) -> Result<Verdict, u32> {
    let ctx = run.ctx;
    let family = ip.family();
    let mut key = Key::new(
        host_prefix_len(family),
        NextHopKey { family_be: (family as u32).to_be(), addr: [0; 16] },
    );
    // Straight into the key: an address copied through a local array would be split
    // into sixteen byte-sized values, more than the registers hold.
    ip.load_addr(ctx, true, &mut key.data.addr).ok_or(drop::TRUNCATED)?;
    if let Some(hop) = NEXT_HOPS.get(&key) {
        return send(ctx, ip, hop.ifindex, &hop.src_mac, &hop.dst_mac, run.ingress);
    }
    if run.settings.flags & SETTINGS_F_FIB_LOOKUP == 0 {
        return Ok(Verdict::Pass);
    }
    // SAFETY: bpf_fib_lookup is plain integers and arrays, for which zero is valid.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.l4_protocol = ip.proto();
    if ip.proto() == PROTO_TCP || ip.proto() == PROTO_UDP {
        fib.sport = load(ctx, ip.l4).ok_or(drop::TRUNCATED)?;
        fib.dport = load(ctx, ip.l4 + 2).ok_or(drop::TRUNCATED)?;
    }
    // Host byte order: the kernel compares it with the route's MTU.
    fib.__bindgen_anon_1.tot_len = (ip.end - ip.l3) as u16;
    fib.ifindex = run.ingress;
    if family == FAMILY_V4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_2.tos = load(ctx, ip.l3 + 1).ok_or(drop::TRUNCATED)?;
    } else {
        fib.family = AF_INET6;
        // Traffic class and flow label, network byte order, without the version.
        let word: [u8; 4] = load(ctx, ip.l3).ok_or(drop::TRUNCATED)?;
        fib.__bindgen_anon_2.flowinfo = (u32::from_be_bytes(word) & 0x0fff_ffff).to_be();
    }
    // SAFETY: each address union is 16 bytes (an IPv4 address takes the first four, in
    // network byte order) and any bytes are a valid value of it.
    let (src, dst) = unsafe {
        (
            &mut *(&mut fib.__bindgen_anon_3 as *mut _ as *mut Addr),
            &mut *(&mut fib.__bindgen_anon_4 as *mut _ as *mut Addr),
        )
    };
    ip.load_addr(ctx, false, src).ok_or(drop::TRUNCATED)?;
    ip.load_addr(ctx, true, dst).ok_or(drop::TRUNCATED)?;
    // SAFETY: `fib` is a valid, writable bpf_fib_lookup of the size passed, and the
    // context is the one the kernel gave this program.
    let rc = unsafe { fib_lookup(ctx.as_ptr(), &mut fib, size_of::<bpf_fib_lookup>() as i32, 0) };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        // No route, no neighbour entry yet, forwarding off, MTU exceeded...: the kernel
        // handles the frame (and resolves the neighbour for the next one).
        return Ok(Verdict::Pass);
    }
    send(ctx, ip, fib.ifindex, &fib.smac, &fib.dmac, run.ingress)
}

/// A router hop out of `ifindex`: TX if that is where the frame came in.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    ip: &Ip,
    ifindex: u32,
    src_mac: &[u8; 6],
    dst_mac: &[u8; 6],
    ingress: u32,
) -> Result<Verdict, u32> {
    decrement_ttl(ctx, ip)?;
    store_bytes::<6, 6>(ctx, 0, dst_mac).ok_or(drop::TRUNCATED)?;
    store_bytes::<6, 6>(ctx, 6, src_mac).ok_or(drop::TRUNCATED)?;
    if ifindex == ingress || ifindex == 0 {
        Ok(Verdict::Tx)
    } else {
        Ok(Verdict::Redirect { ifindex })
    }
}

/// Decrements the TTL / hop limit; TTL_EXCEEDED if it would reach zero.
#[inline(always)]
fn decrement_ttl(ctx: &XdpContext, ip: &Ip) -> Result<(), u32> {
    if ip.family() == FAMILY_V4 {
        let ttl: u8 = load(ctx, ip.l3 + 8).ok_or(drop::TRUNCATED)?;
        if ttl <= 1 {
            return Err(drop::TTL_EXCEEDED);
        }
        // TTL shares a 16-bit word with the protocol.
        let proto = ip.proto() as u16;
        let c = load_be16(ctx, ip.l3 + 10).ok_or(drop::TRUNCATED)?;
        let c = update16(c, (ttl as u16) << 8 | proto, ((ttl - 1) as u16) << 8 | proto);
        store(ctx, ip.l3 + 8, ttl - 1).ok_or(drop::TRUNCATED)?;
        store_be16(ctx, ip.l3 + 10, c).ok_or(drop::TRUNCATED)
    } else {
        let hop_limit: u8 = load(ctx, ip.l3 + 7).ok_or(drop::TRUNCATED)?;
        if hop_limit <= 1 {
            return Err(drop::TTL_EXCEEDED);
        }
        store(ctx, ip.l3 + 7, hop_limit - 1).ok_or(drop::TRUNCATED)
    }
}
