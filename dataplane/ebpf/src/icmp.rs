//! ICMP errors about tracked flows (pipeline.rs `icmp_error`): the outer header and the
//! embedded one are translated as the flow's own packets are, so the error reaches the
//! right end and names the tuple that end knows (RFC 5508 section 4.2 behaviour).

use crate::flow::lookup;
use crate::nat::{l4_csum_offset, rewrite_ip, set_ip_addrs};
use crate::packet::{load_be16, parse_icmp_error, store_be16, IcmpInner, Ip};
use crate::Run;
use aya_ebpf::programs::XdpContext;
use vipr_abi::checksum::{fold, update_addr};
use vipr_abi::{drop, Addr, FlowEntry, FlowKey, FAMILY_V4, FAMILY_V6};

/// An ICMP or ICMPv6 message: `Ok(true)` when it was an error about a tracked flow and
/// was translated, to be forwarded; `Ok(false)` otherwise, to pass untouched.
// Not inlined, for the same reason as `flow::tcp_udp`; and for the same reason the steps
// it calls are calls of their own.
#[inline(never)]
pub fn icmp_error(run: &Run, ip: &Ip) -> Result<bool, u32> {
    let ctx = run.ctx;
    let mut inner = IcmpInner { key: FlowKey::zeroed(), l3: 0, l4: 0, l4_csum_present: false };
    if !parse_icmp_error(ctx, ip, &mut inner).ok_or(drop::TRUNCATED)? {
        return Ok(false);
    }
    let Some(x) = flow_of(run, &inner) else {
        return Ok(false);
    };
    let delta = translate_quote(ctx, &inner, x)?;
    // The error came from the far end itself, not from a router on the way.
    let from_far_end = same_addr(&ip.key.src, &inner.key.dst);
    translate_outer(ctx, ip, x, delta, from_far_end).ok_or(drop::TRUNCATED)?;
    Ok(true)
}

/// The conntrack entry whose packets the embedded packet answers, marked as seen now.
#[inline(never)]
fn flow_of<'a>(run: &Run, inner: &IcmpInner) -> Option<&'a FlowEntry> {
    // The embedded packet travelled the other way: its reverse is the entry's tuple.
    let e = lookup(&inner.key.reversed(), run.now, run.settings)?;
    // SAFETY: `lookup` returned a live CONNTRACK value; map values stay valid while
    // the program runs, and this program does not change the map while it reads it.
    unsafe {
        (*e).last_seen_ns = run.now;
        Some(&*e)
    }
}

/// The outer header: to the entry's destination side; from the entry's source side if
/// the error came `from_far_end`. Updates the ICMP checksum with `delta`, the change of
/// the embedded packet, and for ICMPv6 with the address change too.
#[inline(never)]
fn translate_outer(
    ctx: &XdpContext,
    ip: &Ip,
    x: &FlowEntry,
    delta: u32,
    from_far_end: bool,
) -> Option<()> {
    let outer_src = if from_far_end { &x.nat_src } else { &ip.key.src };
    let icmp_csum_at = ip.l4 + 2;
    let mut icmp_csum = apply_delta(load_be16(ctx, icmp_csum_at)?, delta);
    if ip.family() == FAMILY_V6 {
        // ICMPv6's checksum covers the pseudo-header (RFC 8200 section 8.1).
        icmp_csum = update_addr(icmp_csum, &ip.key.src, outer_src, FAMILY_V6);
        icmp_csum = update_addr(icmp_csum, &ip.key.dst, &x.nat_dst, FAMILY_V6);
    }
    store_be16(ctx, icmp_csum_at, icmp_csum)?;
    let old = (&ip.key.src, &ip.key.dst);
    set_ip_addrs(ctx, ip.l3, ip.family(), old, outer_src, &x.nat_dst).ok()
}

/// Translates the embedded packet as the flow's own packets are translated in the other
/// direction (its source is the entry's destination side and vice versa), and returns
/// the change of its 16-bit words' sum, for the ICMP checksum.
///
/// The pipeline updates the ICMP checksum with the sums of the touched bytes before and
/// after the rewrite; their difference is the sum of the changes of each word the
/// rewrite wrote: the addresses, the ports, the IPv4 header checksum and, when quoted,
/// the L4 checksum.
// Not inlined: the verifier explores every combination of family, protocol and quoted
// length through this code once; back in the caller those paths meet again.
#[inline(never)]
fn translate_quote(ctx: &XdpContext, inner: &IcmpInner, x: &FlowEntry) -> Result<u32, u32> {
    let family = inner.key.family;
    let ip_csum_at = inner.l3 + 10;
    let l4_csum_at = inner.l4 + l4_csum_offset(inner.key.proto);
    let ip_csum = if family == FAMILY_V4 { read(ctx, ip_csum_at)? } else { 0 };
    let l4_csum = if inner.l4_csum_present { read(ctx, l4_csum_at)? } else { 0 };
    rewrite_ip(
        ctx,
        inner.l3,
        inner.l4,
        &inner.key,
        &x.nat_dst,
        &x.nat_src,
        x.nat_dst_port,
        x.nat_src_port,
        inner.l4_csum_present,
    )?;
    let mut delta = addr_delta(&inner.key.src, &x.nat_dst, family)
        + addr_delta(&inner.key.dst, &x.nat_src, family)
        + word_delta(u16::from_be(inner.key.src_port), u16::from_be(x.nat_dst_port))
        + word_delta(u16::from_be(inner.key.dst_port), u16::from_be(x.nat_src_port));
    if family == FAMILY_V4 {
        delta += word_delta(ip_csum, read(ctx, ip_csum_at)?);
    }
    if inner.l4_csum_present {
        delta += word_delta(l4_csum, read(ctx, l4_csum_at)?);
    }
    Ok(delta)
}

#[inline(always)]
fn read(ctx: &XdpContext, offset: usize) -> Result<u16, u32> {
    load_be16(ctx, offset).ok_or(drop::TRUNCATED)
}

/// One's-complement change of a sum when one 16-bit word goes from `old` to `new`
/// (RFC 1624: ~m + m').
#[inline(always)]
fn word_delta(old: u16, new: u16) -> u32 {
    !old as u32 + new as u32
}

/// `word_delta` over the words of an address of `family`.
#[inline(always)]
fn addr_delta(old: &Addr, new: &Addr, family: u8) -> u32 {
    if family == FAMILY_V4 {
        words_delta::<2>(old, new)
    } else {
        words_delta::<8>(old, new)
    }
}

/// `word_delta` over the first `N` 16-bit words of two addresses.
// A constant count, so LLVM unrolls the loop and the verifier walks no loop.
#[inline(always)]
fn words_delta<const N: usize>(old: &Addr, new: &Addr) -> u32 {
    let mut delta = 0;
    let mut i = 0;
    while i < N {
        let o = u16::from_be_bytes([old[2 * i], old[2 * i + 1]]);
        let n = u16::from_be_bytes([new[2 * i], new[2 * i + 1]]);
        delta += word_delta(o, n);
        i += 1;
    }
    delta
}

/// The checksum `update16(check, before, after)` gives, where `before` and `after` are
/// the folded sums of a region whose words changed by `delta` (a sum of `word_delta`s).
///
/// update16 is RFC 1624 eqn. 3, `~fold(~check + ~before + after)`. Both sums are
/// non-zero (the region starts with an IP version nibble), so its argument is non-zero
/// and folds to the one value in 1..=0xffff congruent to it modulo 0xffff; and
/// `after - before` is congruent to `delta`. Folding `~check + delta` the same way gives
/// the same value, bit for bit, when a zero result is read as 0xffff.
#[inline(always)]
fn apply_delta(check: u16, delta: u32) -> u16 {
    let sum = match fold(!check as u32 + delta) {
        0 => 0xffff,
        s => s,
    };
    !sum
}

#[inline(always)]
fn same_addr(a: &Addr, b: &Addr) -> bool {
    u128::from_ne_bytes(*a) == u128::from_ne_bytes(*b)
}
