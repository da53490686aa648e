//! vipr's XDP program. (Being written: see the helper task.)
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// A bare XDP_PASS: the benchmark baseline, and the program on the far ends of veth
/// pairs so that frames redirected into them are delivered.
#[xdp]
pub fn vipr_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
