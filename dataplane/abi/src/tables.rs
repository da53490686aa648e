//! Table keys and values. The XDP program keeps them in BPF maps; the userspace pipeline
//! keeps the same structs in its snapshot and conntrack. Names follow the project's
//! vocabulary: vip, backend, flow, ring, conntrack, verdict.

use core::mem::size_of;
use core::net::IpAddr;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Largest number of VIPs (VIP address x port x protocol) one instance programs.
pub const MAX_VIPS: u32 = 65_536;
/// Largest number of backends over all VIPs.
pub const MAX_BACKENDS: u32 = 1 << 20;
/// Default cap of a VIP's Maglev ring size (the Maglev paper's M).
pub const DEFAULT_RING_MAX: u32 = 65_537;
/// Hard cap of a ring size: the largest prime below 2^20.
pub const RING_SIZE_LIMIT: u32 = 1_048_573;
/// A ring is stored as `[M, slot 0, .., slot M-1]`: the size travels with the slots (an
/// `Arc` swaps both at once; the kernel's ring pool publishes M after the slots).
pub const RING_HEADER_SLOTS: u32 = 1;
/// Ring slot value that means "no backend" (a VIP whose backends are all gone).
pub const NO_BACKEND: u32 = u32::MAX;

/// IPv6 extension headers both packet paths walk before giving up (hop-by-hop, routing,
/// fragment, destination options: a legitimate packet rarely has more than two).
pub const MAX_IPV6_EXT_HEADERS: usize = 4;

/// 16-byte address form: IPv4 in the first four bytes, the rest zero.
pub type Addr = [u8; 16];

pub const fn addr_v4(a: [u8; 4]) -> Addr {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// The abi address form and family of an `IpAddr`.
pub const fn addr_of(ip: IpAddr) -> (Addr, u8) {
    match ip {
        IpAddr::V4(v4) => (addr_v4(v4.octets()), FAMILY_V4),
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// The `IpAddr` of an abi address and family.
pub fn ip_of(addr: &Addr, family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    } else {
        IpAddr::from(*addr)
    }
}

macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(size_of::<$t>() == $n);
    };
}

// ---------------------------------------------------------------------------------------
// VIPs

/// A VIP as packets address it. Lookup key of the VIP table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}
assert_size!(VipKey, 20);

impl VipKey {
    pub fn new(ip: IpAddr, port: u16, proto: u8) -> Self {
        let (addr, family) = addr_of(ip);
        VipKey { addr, port: port.to_be(), proto, family }
    }
}

/// VIP flag: full NAT (`snat` mode): the source becomes `snat_addr` and a vipr-owned port.
pub const VIP_F_SNAT: u32 = 1 << 0;
/// VIP flag: sessionAffinity ClientIP: hash on the 3-tuple and keep an affinity entry.
pub const VIP_F_AFFINITY: u32 = 1 << 1;
/// VIP flag: only sources in the VIP's allowed ranges may connect.
pub const VIP_F_SOURCE_RANGES: u32 = 1 << 2;

/// Value of the VIP table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipInfo {
    /// Index of the VIP's ring, counters and source ranges; stable across updates.
    pub vip_id: u32,
    pub flags: u32,
    pub affinity_timeout_s: u32,
    /// Where the VIP's ring starts in the ring pool (see `maps`); the XDP programmer
    /// sets it (the userspace tables hold the ring itself and leave it 0).
    pub ring_offset: u32,
    /// Source address of `snat` flows (same family as the VIP).
    pub snat_addr: Addr,
}
assert_size!(VipInfo, 32);

/// A VIP address without port, so packets that cannot carry a port (non-first IP
/// fragments) can still be recognised as addressed to a VIP. Value: number of VIPs on it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VipAddrKey {
    pub addr: Addr,
    pub family: u8,
    pub _pad: [u8; 3],
}
assert_size!(VipAddrKey, 20);

impl VipAddrKey {
    pub const fn new(addr: Addr, family: u8) -> Self {
        VipAddrKey { addr, family, _pad: [0; 3] }
    }
}

/// Data of the allowed-source-range LPM trie key (the trie's prefix length comes in
/// front of it): the prefix length counts the 32 bits of `vip_id_be` plus the range's
/// own, so one trie serves every VIP. Ranges of the other family than the VIP's are
/// never programmed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceRangeKey {
    /// Big-endian, so the LPM trie matches it bit by bit like an address.
    pub vip_id_be: u32,
    pub addr: Addr,
}
assert_size!(SourceRangeKey, 20);

// ---------------------------------------------------------------------------------------
// Next hops (static forwarding; the XDP program falls back to the kernel FIB)

/// Data of the next-hop LPM trie key: the prefix length counts the 32 bits of
/// `family_be` plus the destination prefix's own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NextHopKey {
    /// `FAMILY_V4` / `FAMILY_V6`, big-endian (see `SourceRangeKey::vip_id_be`).
    pub family_be: u32,
    pub addr: Addr,
}
assert_size!(NextHopKey, 20);

/// Where frames to a destination go when vipr forwards them itself: out of `ifindex`
/// (the ingress interface means XDP_TX), from `src_mac` to `dst_mac`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NextHopValue {
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}
assert_size!(NextHopValue, 16);

/// Prefix length of an LPM key whose data is a 32-bit tag followed by an address with
/// `addr_prefix_len` significant bits.
pub const fn lpm_prefix_len(addr_prefix_len: u8) -> u32 {
    32 + addr_prefix_len as u32
}

// ---------------------------------------------------------------------------------------
// Backends

/// Backend flag: draining. It keeps its flows and gets no new ones (it is not in the ring).
pub const BACKEND_F_DRAINING: u8 = 1 << 0;

/// Value of the backend table, indexed by backend id (the value of a ring slot). A
/// backend id belongs to one VIP: the same pod behind two VIPs has two ids, so its
/// counters and its draining state are per VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub flags: u8,
    pub vip_id: u32,
}
assert_size!(BackendInfo, 24);

// ---------------------------------------------------------------------------------------
// Conntrack

/// A flow as it arrives: the key of the conntrack and of the hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
assert_size!(FlowKey, 40);

impl FlowKey {
    pub const fn zeroed() -> Self {
        FlowKey {
            src: [0; 16],
            dst: [0; 16],
            src_port: 0,
            dst_port: 0,
            proto: 0,
            family: 0,
            _pad: [0; 2],
        }
    }

    /// The key the other direction of this flow arrives with.
    pub const fn reversed(&self) -> Self {
        FlowKey {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
            family: self.family,
            _pad: [0; 2],
        }
    }
}

/// Entry direction: client -> VIP; rewritten towards the backend.
pub const FLOW_DIR_FORWARD: u8 = 0;
/// Entry direction: backend -> client (or SNAT address); rewritten to come from the VIP.
pub const FLOW_DIR_REPLY: u8 = 1;

/// TCP state of a conntrack entry (UDP entries stay `CT_NONE`).
pub const CT_NONE: u8 = 0;
/// A SYN was seen, no reply yet: short timeout, so a SYN flood cannot fill the table.
pub const CT_SYN: u8 = 1;
pub const CT_ESTABLISHED: u8 = 2;
/// FIN or RST seen: short timeout, and a new SYN on the same tuple starts a new flow.
pub const CT_CLOSING: u8 = 3;

/// Flow flag: the entry belongs to a `snat` flow (its reply entry holds a vipr port).
pub const FLOW_F_SNAT: u8 = 1 << 0;

/// Value of the conntrack. Each direction has its own entry, keyed by the tuple packets
/// of that direction arrive with, and says what to rewrite that tuple to; so forward and
/// reply packets go through one rewrite routine.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    /// Monotonic time of the last packet, in nanoseconds.
    pub last_seen_ns: u64,
    /// New source address.
    pub nat_src: Addr,
    /// New destination address.
    pub nat_dst: Addr,
    /// New source port, network byte order.
    pub nat_src_port: u16,
    /// New destination port, network byte order.
    pub nat_dst_port: u16,
    pub vip_id: u32,
    pub backend_id: u32,
    pub direction: u8,
    pub tcp_state: u8,
    pub flags: u8,
    pub _pad: u8,
}
assert_size!(FlowEntry, 56);

impl FlowEntry {
    /// The key of this entry's other direction: what the rewritten packet's answer
    /// arrives with.
    pub const fn peer_key(&self, key: &FlowKey) -> FlowKey {
        FlowKey {
            src: self.nat_dst,
            dst: self.nat_src,
            src_port: self.nat_dst_port,
            dst_port: self.nat_src_port,
            proto: key.proto,
            family: key.family,
            _pad: [0; 2],
        }
    }
}

/// Key of the sessionAffinity ClientIP table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: Addr,
    pub vip_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}
assert_size!(AffinityKey, 24);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityEntry {
    pub last_seen_ns: u64,
    pub backend_id: u32,
    pub _pad: u32,
}
assert_size!(AffinityEntry, 16);

/// Global settings (one entry): conntrack timeouts and the SNAT port range.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub tcp_syn_timeout_ns: u64,
    pub tcp_established_timeout_ns: u64,
    pub tcp_closing_timeout_ns: u64,
    pub udp_timeout_ns: u64,
    /// Host byte order, inclusive.
    pub snat_port_min: u16,
    /// Host byte order, inclusive.
    pub snat_port_max: u16,
    /// `SETTINGS_F_*`.
    pub flags: u32,
    /// When non-zero, the packet path's clock instead of the monotonic one: the fixture
    /// replays set it before each frame so timeouts are tested exactly. Zero in service.
    pub fixed_now_ns: u64,
}

/// Settings flag: when the next-hop table has no entry for a translated frame, ask the
/// kernel FIB (`bpf_fib_lookup`); without it such frames pass to the kernel to be routed.
/// Set by `vipr run`; left off in the fixture table, whose next hops are all static.
pub const SETTINGS_F_FIB_LOOKUP: u32 = 1 << 0;
assert_size!(Settings, 48);

impl Settings {
    pub const fn timeout_ns(&self, proto: u8, tcp_state: u8) -> u64 {
        if proto != PROTO_TCP {
            return self.udp_timeout_ns;
        }
        match tcp_state {
            CT_ESTABLISHED => self.tcp_established_timeout_ns,
            CT_CLOSING => self.tcp_closing_timeout_ns,
            _ => self.tcp_syn_timeout_ns,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        const S: u64 = 1_000_000_000;
        Settings {
            tcp_syn_timeout_ns: 60 * S,
            tcp_established_timeout_ns: 7200 * S,
            tcp_closing_timeout_ns: 10 * S,
            udp_timeout_ns: 30 * S,
            snat_port_min: 1024,
            snat_port_max: 65535,
            flags: 0,
            fixed_now_ns: 0,
        }
    }
}

/// How many SNAT ports a new flow probes before it gives up (a bounded loop, for the
/// verifier as much as for the packet budget).
pub const SNAT_PORT_PROBES: u32 = 32;

// ---------------------------------------------------------------------------------------
// Counters (per CPU in the kernel, summed when read)

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}
assert_size!(Stats, 24);

impl Stats {
    pub fn add(&mut self, other: &Stats) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.new_flows += other.new_flows;
    }
}

/// Verdicts, also the index of the verdict counters.
pub const VERDICT_PASS: u32 = 0;
pub const VERDICT_TX: u32 = 1;
pub const VERDICT_REDIRECT: u32 = 2;
pub const VERDICT_DROP: u32 = 3;
pub const VERDICT_COUNT: u32 = 4;
pub const VERDICT_NAMES: [&str; VERDICT_COUNT as usize] = ["pass", "tx", "redirect", "drop"];

/// Drop reasons, also the index of the drop counters.
pub mod drop {
    /// Frame shorter than the headers it announces (including zero length).
    pub const TRUNCATED: u32 = 0;
    /// IPv4/IPv6 header invalid: version, IHL below 5, total length out of bounds.
    pub const BAD_IP_HEADER: u32 = 1;
    /// TCP/UDP header invalid: data offset below 5, UDP length out of bounds.
    pub const BAD_L4_HEADER: u32 = 2;
    /// VIP whose ring holds no backend.
    pub const NO_BACKEND: u32 = 3;
    /// Source outside the VIP's allowed ranges (loadBalancerSourceRanges).
    pub const SOURCE_DENIED: u32 = 4;
    /// Non-first IP fragment addressed to a VIP address: it carries no ports to find
    /// its flow with.
    pub const FRAGMENT: u32 = 5;
    /// Every SNAT port probed for a new flow was in use.
    pub const SNAT_PORTS_EXHAUSTED: u32 = 6;
    /// Too many IPv6 extension headers to walk within the packet budget.
    pub const IPV6_EXT_HEADERS: u32 = 7;
    /// IPv4 TTL / IPv6 hop limit would reach zero on forwarding.
    pub const TTL_EXCEEDED: u32 = 8;
    pub const COUNT: u32 = 9;
    pub const NAMES: [&str; COUNT as usize] = [
        "truncated",
        "bad_ip_header",
        "bad_l4_header",
        "no_backend",
        "source_denied",
        "fragment",
        "snat_ports_exhausted",
        "ipv6_ext_headers",
        "ttl_exceeded",
    ];
}
