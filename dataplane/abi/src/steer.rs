//! Types of the AF_XDP steering program (`vipr_steer` in the eBPF crate): which frames
//! go to the poll-mode engine's AF_XDP sockets. Everything that matches no entry passes
//! to the kernel untouched (ARP, ND, ssh, kubelet).
//!
//! | name           | kind     | key        | value                    |
//! |----------------|----------|------------|--------------------------|
//! | `STEER_XSKS`   | XSKMAP   | slot       | AF_XDP socket            |
//! | `STEER_IFACES` | hash     | ifindex    | first slot of that port  |
//! | `STEER_KEYS`   | hash     | `SteerKey` | `STEER_*` flags (`u32`)  |
//! | `STEER_CONFIG` | array    | 0          | `SteerConfig`            |
//!
//! A frame arriving on queue q of port p goes to slot `STEER_IFACES[p] + q`.

pub const STEER_XSKS: &str = "STEER_XSKS";
pub const STEER_IFACES: &str = "STEER_IFACES";
pub const STEER_KEYS: &str = "STEER_KEYS";
pub const STEER_CONFIG: &str = "STEER_CONFIG";
pub const PROG_STEER: &str = "vipr_steer";

/// Sizes of the steering maps.
pub const STEER_MAX_SLOTS: u32 = 1024;
pub const STEER_MAX_IFACES: u32 = 64;
pub const STEER_MAX_KEYS: u32 = 65_536;

/// Key `(addr, port, proto)`: TCP/UDP frames to this VIP (destination match).
pub const STEER_VIP: u32 = 1 << 0;
/// Key `(addr, port, proto)`: TCP/UDP frames from this backend (source match), the
/// replies of `dnat` flows.
pub const STEER_BACKEND: u32 = 1 << 1;
/// Key `(addr, 0, 0)`: TCP/UDP frames to this address on any port (a SNAT address:
/// the replies of `snat` flows).
pub const STEER_ANY_PORT: u32 = 1 << 2;
/// Key `(addr, 0, 0)`: ICMP errors from or to this address (about tracked flows).
pub const STEER_ICMP_ERRORS: u32 = 1 << 3;

/// What the steering program matches on: an address (16 bytes, IPv4 in the first four),
/// a port in network byte order as it sits in the packet, the IP protocol, the family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SteerKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<SteerKey>() == 20);

/// `redirect_all` non-zero: every frame goes to the sockets (the fixture replay, which
/// must see frames the pipeline passes too). Zero: only what `STEER_KEYS` matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerConfig {
    pub redirect_all: u32,
}
const _: () = assert!(core::mem::size_of::<SteerConfig>() == 4);
