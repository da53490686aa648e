//! The conntrack's TCP state machine, shared by both packet paths so a flow moves
//! through the same states in the kernel and in userspace.

use crate::tables::{CT_CLOSING, CT_ESTABLISHED, CT_NONE, CT_SYN, FLOW_DIR_REPLY, PROTO_TCP};

// TCP flag bits as in the header's 13th byte.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The state of a flow the conntrack starts for a packet with `flags`.
#[inline(always)]
pub const fn initial_tcp_state(proto: u8, flags: u8) -> u8 {
    if proto != PROTO_TCP {
        CT_NONE
    } else if flags & (TCP_FIN | TCP_RST) != 0 {
        CT_CLOSING
    } else if flags & TCP_SYN != 0 {
        CT_SYN
    } else {
        // Mid-flow pickup (the conntrack lost the flow, or vipr restarted without its
        // tables): Maglev gives most such flows their old backend; keep them going.
        CT_ESTABLISHED
    }
}

/// The state after a packet with `flags`, travelling in `direction`, matched an entry in
/// `state`.
#[inline(always)]
pub const fn next_tcp_state(proto: u8, state: u8, direction: u8, flags: u8) -> u8 {
    if proto != PROTO_TCP {
        return state;
    }
    if flags & (TCP_FIN | TCP_RST) != 0 {
        return CT_CLOSING;
    }
    // The backend answered (SYN-ACK), or the client acknowledged: established.
    if state == CT_SYN && (direction == FLOW_DIR_REPLY || flags & TCP_ACK != 0) {
        return CT_ESTABLISHED;
    }
    state
}

/// A SYN without ACK: on a tuple whose flow is closing, it starts a new flow.
#[inline(always)]
pub const fn is_opening(flags: u8) -> bool {
    flags & TCP_SYN != 0 && flags & TCP_ACK == 0
}
