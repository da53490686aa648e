//! The benchmark topology's programs (vipr_abi::bench); the load balancer never runs them.
//!
//! - `vipr_pktgen` runs under BPF_PROG_TEST_RUN with live frames: each run restores the
//!   template's headers, rewrites the source port from a table (uniform or Zipf flows) and sends it out
//!   with XDP_TX.
//! - `vipr_sink` sits on a backend's interface: counts benchmark traffic (to `SINK_PORT`)
//!   per backend and drops it, so the delivered rate is measured where packets land;
//!   everything else passes.
//! - `vipr_redirect` forwards every frame to one interface with fixed MACs: the
//!   forwarding limit of the XDP path, the ceiling for vipr.

use crate::packet::{load, load_be16, store, store_be16};
use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray},
    helpers::bpf_redirect,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use vipr_abi::bench::{
    PktgenConfig, PktgenHeaders, RedirectTo, SinkCount, PKTGEN_PORTS_LEN, SINK_PORT,
};
use vipr_abi::checksum::update16;
use vipr_abi::{PROTO_TCP, PROTO_UDP};

#[btf_map]
static PKTGEN_CONFIG: Array<PktgenConfig, 1> = Array::new();

#[btf_map]
static PKTGEN_PORTS: Array<u16, { PKTGEN_PORTS_LEN as usize }> = Array::new();

#[btf_map]
static PKTGEN_HEADERS: Array<PktgenHeaders, 1> = Array::new();

#[btf_map]
static PKTGEN_SEQ: PerCpuArray<u32, 1> = PerCpuArray::new();

#[btf_map]
static SINK_COUNTS: PerCpuArray<SinkCount, 256> = PerCpuArray::new();

#[btf_map]
static REDIRECT_TO: Array<RedirectTo, 1> = Array::new();

#[xdp]
pub fn vipr_pktgen(ctx: XdpContext) -> u32 {
    let (Some(cfg), Some(seq), Some(headers)) =
        (PKTGEN_CONFIG.get(0), PKTGEN_SEQ.get_ptr_mut(0), PKTGEN_HEADERS.get(0))
    else {
        return xdp_action::XDP_ABORTED;
    };
    // Live mode recycles pages as the peer under test left them: start from the template.
    if store(&ctx, 0, headers.head).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    let _ = store(&ctx, headers.head.len(), headers.tail);
    // SAFETY: a per-CPU value: no other program touches it on this CPU meanwhile.
    let i = unsafe {
        *seq = (*seq).wrapping_add(1);
        *seq
    };
    // `checked_rem`: LLVM does not see that the clamped count is never zero, and the
    // panic path of `%` makes the object unloadable.
    let ports = cfg.ports.clamp(1, PKTGEN_PORTS_LEN);
    let Some(&port) = i.checked_rem(ports).and_then(|slot| PKTGEN_PORTS.get(slot)) else {
        return xdp_action::XDP_ABORTED;
    };
    let at = cfg.sport_offset as usize;
    let Some(old) = load_be16(&ctx, at) else {
        return xdp_action::XDP_ABORTED;
    };
    if cfg.csum_offset != 0 {
        let c = cfg.csum_offset as usize;
        let Some(sum) = load_be16(&ctx, c) else {
            return xdp_action::XDP_ABORTED;
        };
        let _ = store_be16(&ctx, c, update16(sum, old, port));
    }
    let _ = store_be16(&ctx, at, port);
    xdp_action::XDP_TX
}

#[xdp]
pub fn vipr_sink(ctx: XdpContext) -> u32 {
    let Some(ethertype) = load_be16(&ctx, 12) else {
        return xdp_action::XDP_PASS;
    };
    // The destination address's last byte, the protocol and where L4 starts (IPv4
    // options and IPv6 extension headers never occur in benchmark traffic).
    let (last, proto, l4) = match ethertype {
        0x0800 => (load::<u8>(&ctx, 14 + 19), load::<u8>(&ctx, 14 + 9), 14 + 20),
        0x86dd => (load::<u8>(&ctx, 14 + 39), load::<u8>(&ctx, 14 + 6), 14 + 40),
        _ => return xdp_action::XDP_PASS,
    };
    let (Some(last), Some(proto)) = (last, proto) else {
        return xdp_action::XDP_PASS;
    };
    let to_sink =
        (proto == PROTO_TCP || proto == PROTO_UDP) && load_be16(&ctx, l4 + 2) == Some(SINK_PORT);
    if !to_sink {
        return xdp_action::XDP_PASS;
    }
    if let Some(c) = SINK_COUNTS.get_ptr_mut(last as u32) {
        // SAFETY: a per-CPU value.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub fn vipr_redirect(ctx: XdpContext) -> u32 {
    let Some(to) = REDIRECT_TO.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    if store(&ctx, 0, to.dst_mac).is_none() || store(&ctx, 6, to.src_mac).is_none() {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: a helper call with plain integer arguments.
    unsafe { bpf_redirect(to.ifindex, 0) as u32 }
}
