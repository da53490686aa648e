//! vipr's XDP program: the packet path of `vipr_dataplane::pipeline`, in the kernel.
//!
//! ```text
//! parse -> VIP lookup -> source-range check -> conntrack lookup
//!          hit  -> reuse the flow's backend
//!          miss -> affinity or Maglev slot -> backend -> (SNAT port) -> conntrack insert
//!       -> rewrite (DNAT [+SNAT]) with incremental checksums
//!       -> next hop known (static table, or the kernel FIB when enabled):
//!          TTL-1, MACs, XDP_TX / XDP_REDIRECT; unknown: XDP_PASS to the kernel
//! not a VIP: conntrack reply entry -> reverse NAT -> forward; else pass untouched
//! ICMP error: look its embedded header up in conntrack -> translate both headers
//! ```
//!
//! Contract: for every frame, the same verdict, output bytes and counters as
//! `Pipeline::process` (the fixture table holds both to it). Tables and counters are
//! the maps of `vipr_abi::maps`. The clock is `SETTINGS.fixed_now_ns` when non-zero
//! (fixture replays), else the monotonic clock.
#![no_std]
#![no_main]

mod bench;
mod flow;
mod icmp;
mod maps;
mod nat;
mod packet;
mod steer;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, bpf_redirect, bpf_xdp_get_buff_len},
    macros::xdp,
    programs::XdpContext,
};
use maps::{DROPS, SETTINGS, VERDICTS};
use packet::Ip;
use vipr_abi::{
    Settings, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, VERDICT_DROP,
    VERDICT_PASS, VERDICT_REDIRECT, VERDICT_TX,
};

/// What becomes of a frame; a drop is the `Err` of the `try_*` functions, its value a
/// `vipr_abi::drop` reason.
pub enum Verdict {
    /// To the kernel: untouched, or translated when vipr knows no next hop for it.
    Pass,
    /// Out of the interface it came in on.
    Tx,
    /// Out of interface `ifindex`.
    Redirect { ifindex: u32 },
}

/// What every step of a frame's run needs besides its headers.
pub struct Run<'a> {
    pub ctx: &'a XdpContext,
    pub settings: &'a Settings,
    /// The clock of this frame, in nanoseconds.
    pub now: u64,
    /// The interface the frame arrived on.
    pub ingress: u32,
    /// The frame's length, what the VIP and backend counters count in bytes.
    pub len: u64,
}

/// The load balancer. Every frame is counted by verdict, every drop by reason.
#[xdp]
pub fn vipr_xdp(ctx: XdpContext) -> u32 {
    let (verdict, action) = match try_vipr_xdp(&ctx) {
        Ok(Verdict::Pass) => (VERDICT_PASS, xdp_action::XDP_PASS),
        Ok(Verdict::Tx) => (VERDICT_TX, xdp_action::XDP_TX),
        Ok(Verdict::Redirect { ifindex }) => {
            // SAFETY: bpf_redirect only records the egress interface for the kernel to
            // use once the program returns its result, XDP_REDIRECT.
            (VERDICT_REDIRECT, unsafe { bpf_redirect(ifindex, 0) } as u32)
        }
        Err(reason) => {
            count(&DROPS, reason);
            (VERDICT_DROP, xdp_action::XDP_DROP)
        }
    };
    count(&VERDICTS, verdict);
    action
}

fn try_vipr_xdp(ctx: &XdpContext) -> Result<Verdict, u32> {
    // One entry, always present in an array map.
    let Some(settings) = SETTINGS.get(0) else {
        return Ok(Verdict::Pass);
    };
    let mut ip = Ip::new();
    if !packet::parse_ip(ctx, &mut ip)? {
        return Ok(Verdict::Pass);
    }
    let now = match settings.fixed_now_ns {
        // SAFETY: bpf_ktime_get_ns has no arguments and no side effects.
        0 => unsafe { bpf_ktime_get_ns() },
        fixed => fixed,
    };
    let run = Run {
        ctx,
        settings,
        now,
        ingress: ctx.ingress_ifindex() as u32,
        // SAFETY: bpf_xdp_get_buff_len only reads the context the kernel passed in.
        len: unsafe { bpf_xdp_get_buff_len(ctx.ctx) },
    };
    let translated = match (ip.family(), ip.proto()) {
        (_, PROTO_TCP) | (_, PROTO_UDP) => flow::tcp_udp(&run, &mut ip)?,
        (FAMILY_V4, PROTO_ICMP) | (FAMILY_V6, PROTO_ICMPV6) if !ip.later_fragment => {
            icmp::icmp_error(&run, &ip)?
        }
        _ => false,
    };
    if !translated {
        return Ok(Verdict::Pass);
    }
    nat::forward(&run, &ip)
}

/// Adds one to a per-CPU counter.
#[inline(always)]
fn count<const N: usize>(map: &aya_ebpf::btf_maps::PerCpuArray<u64, N>, index: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: this CPU's own slot of a per-CPU array; nothing else writes it while
        // this program runs.
        unsafe { *c += 1 };
    }
}

/// A bare XDP_PASS: the benchmark baseline, and the program on the far ends of veth
/// pairs so that frames redirected into them are delivered.
#[xdp]
pub fn vipr_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The license the kernel checks before it lets the program call GPL-only helpers
/// (`bpf_fib_lookup` is one), as Cilium and Katran declare theirs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
