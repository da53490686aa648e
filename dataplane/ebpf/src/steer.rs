//! `vipr_steer`: the XDP program in front of the AF_XDP poll-mode engine. It sends to the
//! engine's sockets only what the engine must see (frames to a VIP, replies of tracked
//! flows, ICMP errors about them: the `STEER_KEYS` the control plane fills) and passes
//! everything else to the kernel, so ARP, ND, ssh and kubelet never leave the stack.
//! It does no packet work itself; the engine's pipeline decides every verdict.

use crate::packet::{self, load, Ip};
use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, HashMap, XskMap},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use vipr_abi::steer::{
    SteerConfig, SteerKey, STEER_ANY_PORT, STEER_BACKEND, STEER_ICMP_ERRORS, STEER_MAX_IFACES,
    STEER_MAX_KEYS, STEER_MAX_SLOTS, STEER_VIP,
};
use vipr_abi::{FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

#[btf_map]
static STEER_XSKS: XskMap<{ STEER_MAX_SLOTS as usize }> = XskMap::new();

#[btf_map]
static STEER_IFACES: HashMap<u32, u32, { STEER_MAX_IFACES as usize }> = HashMap::new();

#[btf_map]
static STEER_KEYS: HashMap<SteerKey, u32, { STEER_MAX_KEYS as usize }> = HashMap::new();

#[btf_map]
static STEER_CONFIG: Array<SteerConfig, 1> = Array::new();

#[xdp]
pub fn vipr_steer(ctx: XdpContext) -> u32 {
    let (ingress, queue) = (ctx.ingress_ifindex() as u32, ctx.rx_queue_index());
    // SAFETY: a hash map of plain integers; the value is copied out at once.
    let Some(base) = (unsafe { STEER_IFACES.get(&ingress) }).copied() else {
        return xdp_action::XDP_PASS;
    };
    let all = STEER_CONFIG.get(0).is_some_and(|c| c.redirect_all != 0);
    if !all && !ours(&ctx) {
        return xdp_action::XDP_PASS;
    }
    // No socket in the slot (the engine is starting or gone): the kernel gets it.
    match STEER_XSKS.redirect(base + queue, xdp_action::XDP_PASS as u64) {
        Ok(action) | Err(action) => action,
    }
}

/// Whether the frame is one the engine serves.
#[inline(always)]
fn ours(ctx: &XdpContext) -> bool {
    let mut ip = Ip::new();
    // Malformed or not IP: the kernel judges it.
    if packet::parse_ip(ctx, &mut ip) != Ok(true) {
        return false;
    }
    let family = ip.family();
    let proto = ip.proto();
    if proto == PROTO_TCP || proto == PROTO_UDP {
        // A later fragment has no ports: it can only match an any-port address; the
        // engine hashes or drops it by the pipeline's rule.
        if !ip.later_fragment && packet::l4_ports(ctx, &mut ip).is_err() {
            return false;
        }
        let k = &ip.key;
        return has(&k.dst, k.dst_port, proto, family, STEER_VIP)
            || has(&k.src, k.src_port, proto, family, STEER_BACKEND)
            || has(&k.dst, 0, 0, family, STEER_ANY_PORT);
    }
    let is_error = match (family, proto) {
        // Destination unreachable (fragmentation needed among them), time exceeded.
        (FAMILY_V4, PROTO_ICMP) => matches!(load::<u8>(ctx, ip.l4), Some(3) | Some(11)),
        // RFC 4443 error messages are types 1 to 4; ND (133-137) never matches.
        (FAMILY_V6, PROTO_ICMPV6) => matches!(load::<u8>(ctx, ip.l4), Some(1..=4)),
        _ => false,
    };
    is_error
        && !ip.later_fragment
        && (has(&ip.key.dst, 0, 0, family, STEER_ICMP_ERRORS)
            || has(&ip.key.src, 0, 0, family, STEER_ICMP_ERRORS))
}

#[inline(always)]
fn has(addr: &[u8; 16], port: u16, proto: u8, family: u8, flag: u32) -> bool {
    let key = SteerKey { addr: *addr, port, proto, family };
    // SAFETY: the value is a plain integer, copied out at once.
    unsafe { STEER_KEYS.get(&key) }.is_some_and(|f| f & flag != 0)
}
