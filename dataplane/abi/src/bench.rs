//! Types of the benchmark programs (`vipr_pktgen`, `vipr_sink`, `vipr_redirect` in the
//! eBPF crate), which the bench tool drives. The load balancer never uses them.

/// Map names of the benchmark programs.
pub const PKTGEN_CONFIG: &str = "PKTGEN_CONFIG";
pub const PKTGEN_PORTS: &str = "PKTGEN_PORTS";
pub const PKTGEN_HEADERS: &str = "PKTGEN_HEADERS";
pub const PKTGEN_SEQ: &str = "PKTGEN_SEQ";
pub const SINK_COUNTS: &str = "SINK_COUNTS";
pub const REDIRECT_TO: &str = "REDIRECT_TO";

pub const PROG_PKTGEN: &str = "vipr_pktgen";
pub const PROG_SINK: &str = "vipr_sink";
pub const PROG_REDIRECT: &str = "vipr_redirect";

/// The destination port of benchmark traffic after translation: `vipr_sink` counts and
/// drops TCP and UDP to it, and lets everything else through (the latency probe's real
/// servers listen elsewhere).
pub const SINK_PORT: u16 = 9999;

/// The start of the template frame that `vipr_pktgen` writes back into every frame
/// before it varies it: BPF_PROG_TEST_RUN's live mode recycles pages without restoring
/// them, so a frame would otherwise start as the last one ended (translated by the peer
/// under test). `head` covers every header of a 64-byte frame; `tail` the rest of a
/// TCP/IPv6 frame's headers, written only into frames that long.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PktgenHeaders {
    pub head: [u8; 64],
    pub tail: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<PktgenHeaders>() == 80);

/// Entries of the source-port table the generator walks: uniform or Zipf draws over
/// the flows, filled by the bench tool.
pub const PKTGEN_PORTS_LEN: u32 = 65_536;

/// How `vipr_pktgen` varies its template frame: frame i gets source port
/// `PKTGEN_PORTS[i % ports]` at `sport_offset`, and the L4 checksum at `csum_offset` is
/// updated to match (0: the frame carries none, a UDP/IPv4 zero checksum).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PktgenConfig {
    pub ports: u32,
    pub sport_offset: u32,
    pub csum_offset: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<PktgenConfig>() == 16);

/// What a sink counted for one backend (indexed by the last byte of the destination
/// address: the testbed's backends are .21-.24 and ::21-::24).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkCount {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<SinkCount>() == 16);

/// Where `vipr_redirect` sends every frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedirectTo {
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<RedirectTo>() == 16);
