//! The per-packet pipeline: `Pipeline::process(frame, ingress, now) -> Verdict`.
//!
//! ```text
//! parse -> VIP lookup -> source-range check -> conntrack lookup
//!          hit  -> reuse the flow's backend
//!          miss -> affinity or Maglev slot -> backend -> (SNAT port) -> conntrack insert
//!       -> rewrite (DNAT [+SNAT]) with incremental checksums
//!       -> next hop known: TTL-1, MACs, TX / redirect; unknown: pass to the kernel
//! not a VIP: conntrack reply entry -> reverse NAT -> forward; else pass untouched
//! ICMP error: look its embedded header up in conntrack -> translate both headers
//! ```
//!
//! One `Pipeline` belongs to one worker (one core, one queue): its conntrack and
//! counters are private, so nothing on the packet path takes a lock. The tables come
//! from a `SharedTables` that the control plane swaps atomically; a worker sees the new
//! tables at its next packet.
//!
//! Every verdict is counted; every drop has a reason (`vipr_abi::drop`). Frames that are
//! not ours (non-IP, not addressed to a VIP, not a reply of a tracked flow) pass
//! unchanged, so host traffic (ARP, ND, ssh, kubelet) keeps working.

use crate::conntrack::Conntrack;
use crate::tables::{NextHop, Tables, Vip};
use crate::wire::{
    self, EthernetFrame, Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket,
};
use arc_swap::{ArcSwap, Cache};
use std::net::IpAddr;
use std::sync::Arc;
use vipr_abi::checksum::{self, update16, update_addr};
use vipr_abi::tcp::{initial_tcp_state, is_opening, next_tcp_state};
use vipr_abi::*;

/// What the driver does with a frame after `process`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Hand the frame to the kernel. Untouched, unless vipr translated it but knows no
    /// next hop for it, in which case the kernel routes the translated frame.
    Pass,
    /// Send the rewritten frame out of the interface it arrived on.
    Tx,
    /// Send the rewritten frame out of interface `ifindex`.
    Redirect { ifindex: u32 },
    /// Discard the frame; `reason` is a `vipr_abi::drop` constant.
    Drop { reason: u32 },
}

impl Verdict {
    pub fn index(&self) -> u32 {
        match self {
            Verdict::Pass => VERDICT_PASS,
            Verdict::Tx => VERDICT_TX,
            Verdict::Redirect { .. } => VERDICT_REDIRECT,
            Verdict::Drop { .. } => VERDICT_DROP,
        }
    }
}

/// The control plane's handle on the tables every worker reads.
#[derive(Clone, Default)]
pub struct SharedTables(Arc<ArcSwap<Tables>>);

impl SharedTables {
    pub fn new(tables: Tables) -> Self {
        SharedTables(Arc::new(ArcSwap::from_pointee(tables)))
    }

    /// Publishes new tables: one atomic pointer swap.
    pub fn store(&self, tables: Tables) {
        self.0.store(Arc::new(tables));
    }

    /// Publishes tables already shared.
    pub fn store_arc(&self, tables: Arc<Tables>) {
        self.0.store(tables);
    }

    pub fn load(&self) -> Arc<Tables> {
        self.0.load_full()
    }
}

/// Per-worker counters, summed over workers when read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub verdicts: [u64; VERDICT_COUNT as usize],
    pub drops: [u64; drop::COUNT as usize],
    /// Indexed by vip id: packets and bytes of the client -> VIP direction, new flows.
    pub vips: Vec<Stats>,
    /// Indexed by backend id: the same, for the flows the backend serves.
    pub backends: Vec<Stats>,
}

impl Counters {
    #[inline]
    fn stat(v: &mut Vec<Stats>, id: u32) -> &mut Stats {
        let i = id as usize;
        if v.len() <= i {
            v.resize(i + 1, Stats::default());
        }
        &mut v[i]
    }

    pub fn vip(&self, id: u32) -> Stats {
        self.vips.get(id as usize).copied().unwrap_or_default()
    }

    pub fn backend(&self, id: u32) -> Stats {
        self.backends.get(id as usize).copied().unwrap_or_default()
    }

    pub fn add(&mut self, other: &Counters) {
        for (a, b) in self.verdicts.iter_mut().zip(other.verdicts) {
            *a += b;
        }
        for (a, b) in self.drops.iter_mut().zip(other.drops) {
            *a += b;
        }
        for (i, s) in other.vips.iter().enumerate() {
            Self::stat(&mut self.vips, i as u32).add(s);
        }
        for (i, s) in other.backends.iter().enumerate() {
            Self::stat(&mut self.backends, i as u32).add(s);
        }
    }
}

pub struct Pipeline {
    tables: Cache<Arc<ArcSwap<Tables>>, Arc<Tables>>,
    pub conntrack: Conntrack,
    pub counters: Counters,
}

/// Where a parsed IP datagram sits in the frame.
#[derive(Clone, Copy, Debug)]
struct Ip {
    l3: usize,
    /// End of the datagram (Ethernet padding excluded).
    end: usize,
    l4: usize,
    family: u8,
    proto: u8,
    src: Addr,
    dst: Addr,
    /// The datagram is a fragment other than the first: it carries no L4 header.
    later_fragment: bool,
    /// The datagram is the first fragment of several: its L4 header is present but its
    /// L4 length is not the datagram's.
    first_fragment: bool,
}

/// The new addresses and ports for the two ends of a packet.
#[derive(Clone, Copy, Debug)]
struct Nat {
    src: Addr,
    dst: Addr,
    src_port: u16,
    dst_port: u16,
}

impl Nat {
    fn of(e: &FlowEntry) -> Self {
        Nat { src: e.nat_src, dst: e.nat_dst, src_port: e.nat_src_port, dst_port: e.nat_dst_port }
    }
}

type Step<T> = Result<T, u32>;

impl Pipeline {
    pub fn new(tables: &SharedTables, conntrack_capacity: usize) -> Self {
        Pipeline {
            tables: Cache::new(tables.0.clone()),
            conntrack: Conntrack::new(conntrack_capacity),
            counters: Counters::default(),
        }
    }

    /// Processes one frame in place. `ingress` is the interface it arrived on; `now` a
    /// monotonic clock in nanoseconds.
    pub fn process(&mut self, frame: &mut [u8], ingress: u32, now: u64) -> Verdict {
        let tables = self.tables.load().clone();
        let verdict = match self.classify(&tables, frame, ingress, now) {
            Ok(v) => v,
            Err(reason) => Verdict::Drop { reason },
        };
        self.counters.verdicts[verdict.index() as usize] += 1;
        if let Verdict::Drop { reason } = verdict {
            self.counters.drops[reason as usize] += 1;
        }
        verdict
    }

    /// The tables this pipeline currently reads.
    pub fn tables(&mut self) -> Arc<Tables> {
        self.tables.load().clone()
    }

    fn classify(&mut self, t: &Tables, frame: &mut [u8], ingress: u32, now: u64) -> Step<Verdict> {
        let Some(ip) = parse_ip(t, frame)? else {
            return Ok(Verdict::Pass);
        };
        match (ip.family, ip.proto) {
            (_, PROTO_TCP) | (_, PROTO_UDP) => self.tcp_udp(t, frame, &ip, ingress, now),
            (FAMILY_V4, PROTO_ICMP) | (FAMILY_V6, PROTO_ICMPV6) if !ip.later_fragment => {
                self.icmp_error(t, frame, &ip, ingress, now)
            }
            _ => Ok(Verdict::Pass),
        }
    }

    fn tcp_udp(
        &mut self,
        t: &Tables,
        frame: &mut [u8],
        ip: &Ip,
        ingress: u32,
        now: u64,
    ) -> Step<Verdict> {
        let to_vip_addr = t.is_vip_addr(&ip.dst, ip.family);
        if ip.later_fragment {
            // Decision (README, "Fragments"): a later fragment has no ports to find its
            // flow by; hashing it on the 3-tuple could send it to another backend than
            // its first fragment, so VIP-bound ones are dropped and counted.
            return if to_vip_addr { Err(drop::FRAGMENT) } else { Ok(Verdict::Pass) };
        }
        let (src_port, dst_port, tcp_flags) = match l4_ports(frame, ip) {
            Ok(p) => p,
            Err(reason) if to_vip_addr => return Err(reason),
            Err(_) => return Ok(Verdict::Pass),
        };
        let key = FlowKey {
            src: ip.src,
            dst: ip.dst,
            src_port: src_port.to_be(),
            dst_port: dst_port.to_be(),
            proto: ip.proto,
            family: ip.family,
            _pad: [0; 2],
        };
        let vip_key =
            VipKey { addr: ip.dst, port: key.dst_port, proto: ip.proto, family: ip.family };
        let len = frame.len() as u64;
        let settings = t.settings;

        let entry = if let Some(vip) = t.vip(&vip_key) {
            if vip.info.flags & VIP_F_SOURCE_RANGES != 0 {
                let src = ip_of(&ip.src, ip.family);
                if !vip.source_ranges.iter().any(|n| n.contains(&src)) {
                    return Err(drop::SOURCE_DENIED);
                }
            }
            let vs = Counters::stat(&mut self.counters.vips, vip.info.vip_id);
            vs.packets += 1;
            vs.bytes += len;
            let reopen = is_opening(tcp_flags);
            let hit = match self.conntrack.lookup(&key, now, &settings) {
                // A new SYN on a closing tuple is a new connection: choose afresh.
                Some(e) if reopen && e.tcp_state == CT_CLOSING => None,
                Some(e) => Some(refresh(e, key.proto, tcp_flags, now)),
                None => None,
            };
            match hit {
                Some(e) => e,
                None => (self.new_flow(t, vip, &key, tcp_flags, now)?, None),
            }
        } else {
            match self.conntrack.lookup(&key, now, &settings) {
                Some(e) if e.direction == FLOW_DIR_REPLY => refresh(e, key.proto, tcp_flags, now),
                _ => return Ok(Verdict::Pass),
            }
        };
        if let Some(state) = entry.1 {
            // Both directions share the TCP state; the other entry is looked up only
            // when the state moves.
            self.conntrack.set_state(&entry.0.peer_key(&key), state);
        }
        let entry = entry.0;

        if entry.direction == FLOW_DIR_FORWARD {
            let bs = Counters::stat(&mut self.counters.backends, entry.backend_id);
            bs.packets += 1;
            bs.bytes += len;
        }
        let nat = Nat::of(&entry);
        rewrite_ip(frame, ip, &nat, ip.l4, true);
        Ok(forward(t, frame, ip, &nat.dst, ingress))
    }

    /// Chooses a backend for a flow the conntrack does not know, and tracks it.
    fn new_flow(
        &mut self,
        t: &Tables,
        vip: &Vip,
        key: &FlowKey,
        tcp_flags: u8,
        now: u64,
    ) -> Step<FlowEntry> {
        let vip_id = vip.info.vip_id;
        let usable = |id: u32| {
            t.backend(id)
                .filter(|b| b.vip_id == vip_id && b.flags & BACKEND_F_DRAINING == 0)
                .is_some()
        };
        let backend_id = if vip.info.flags & VIP_F_AFFINITY != 0 {
            let akey = AffinityKey { client: key.src, vip_id, family: key.family, _pad: [0; 3] };
            match self.conntrack.affinity(&akey, now, vip.info.affinity_timeout_s) {
                Some(id) if usable(id) => id,
                _ => {
                    let id = vip.slot(affinity_hash(key));
                    if id != NO_BACKEND {
                        self.conntrack.set_affinity(akey, id, now);
                    }
                    id
                }
            }
        } else {
            vip.slot(flow_hash(key))
        };
        let Some(backend) = t.backend(backend_id).copied() else {
            return Err(drop::NO_BACKEND);
        };

        let settings = &t.settings;
        let (nat_src, nat_src_port, flags) = if vip.info.flags & VIP_F_SNAT != 0 {
            let port = self.snat_port(key, &backend, &vip.info.snat_addr, now, settings)?;
            (vip.info.snat_addr, port.to_be(), FLOW_F_SNAT)
        } else {
            (key.src, key.src_port, 0)
        };
        let tcp_state = initial_tcp_state(key.proto, tcp_flags);
        let forward = FlowEntry {
            last_seen_ns: now,
            nat_src,
            nat_dst: backend.addr,
            nat_src_port,
            nat_dst_port: backend.port,
            vip_id,
            backend_id,
            direction: FLOW_DIR_FORWARD,
            tcp_state,
            flags,
            _pad: 0,
        };
        let reply = FlowEntry {
            nat_src: key.dst,
            nat_dst: key.src,
            nat_src_port: key.dst_port,
            nat_dst_port: key.src_port,
            direction: FLOW_DIR_REPLY,
            ..forward
        };
        self.conntrack.insert(*key, forward, reply, now, settings);
        Counters::stat(&mut self.counters.vips, vip_id).new_flows += 1;
        Counters::stat(&mut self.counters.backends, backend_id).new_flows += 1;
        Ok(forward)
    }

    /// A SNAT port whose reply tuple (backend -> SNAT address:port) no live flow uses.
    /// Probing starts at a hash of the flow, so concurrent workers rarely collide.
    fn snat_port(
        &self,
        key: &FlowKey,
        backend: &BackendInfo,
        snat: &Addr,
        now: u64,
        s: &Settings,
    ) -> Step<u16> {
        let span = (s.snat_port_max as u32).saturating_sub(s.snat_port_min as u32) + 1;
        let start = flow_hash(key);
        let mut reply = FlowKey {
            src: backend.addr,
            dst: *snat,
            src_port: backend.port,
            dst_port: 0,
            proto: key.proto,
            family: key.family,
            _pad: [0; 2],
        };
        for i in 0..SNAT_PORT_PROBES.min(span) {
            let port = s.snat_port_min as u32 + start.wrapping_add(i) % span;
            reply.dst_port = (port as u16).to_be();
            if !self.conntrack.is_live(&reply, now, s) {
                return Ok(port as u16);
            }
        }
        Err(drop::SNAT_PORTS_EXHAUSTED)
    }

    /// An ICMP error about a tracked flow: translate the outer header and the embedded
    /// one as the flow's own packets are translated, so the error reaches the right end
    /// and names the tuple that end knows (RFC 5508 section 4.2 behaviour).
    fn icmp_error(
        &mut self,
        t: &Tables,
        frame: &mut [u8],
        ip: &Ip,
        ingress: u32,
        now: u64,
    ) -> Step<Verdict> {
        let Some(inner) = parse_icmp_error(frame, ip) else {
            return Ok(Verdict::Pass);
        };
        // The embedded packet travelled the other way: its reverse is the tuple of the
        // conntrack entry whose packets it answers.
        let lookup = inner.key.reversed();
        let Some(e) = self.conntrack.lookup(&lookup, now, &t.settings) else {
            return Ok(Verdict::Pass);
        };
        e.last_seen_ns = now;
        let x = *e;

        // Embedded packet: its source is the entry's destination side and vice versa.
        let inner_nat = Nat {
            src: x.nat_dst,
            dst: x.nat_src,
            src_port: x.nat_dst_port,
            dst_port: x.nat_src_port,
        };
        let inner_ip = Ip {
            l3: inner.l3,
            end: ip.end,
            l4: inner.l4,
            family: ip.family,
            proto: inner.key.proto,
            src: inner.key.src,
            dst: inner.key.dst,
            later_fragment: false,
            first_fragment: false,
        };
        let icmp_csum_at = ip.l4 + 2;
        // Everything the rewrite may touch: the quoted IP header, ports and (when
        // quoted) the L4 checksum; all at even offsets from the ICMP header.
        let l4_touched = if inner.key.proto == PROTO_TCP { 18 } else { 8 };
        let region = inner.l3..(inner.l4 + l4_touched).min(ip.end);
        let before = checksum::fold(checksum::sum_bytes(&frame[region.clone()]));
        rewrite_ip(frame, &inner_ip, &inner_nat, inner.l4, inner.l4_csum_present);
        let after = checksum::fold(checksum::sum_bytes(&frame[region]));
        let mut icmp_csum = read16(frame, icmp_csum_at);
        icmp_csum = update16(icmp_csum, before, after);

        // Outer header: to the entry's destination side; from the entry's source side if
        // the error came from the far end itself (not from a router on the way).
        let outer_src = if ip.src == inner.key.dst { x.nat_src } else { ip.src };
        let outer_dst = x.nat_dst;
        if ip.family == FAMILY_V6 {
            // ICMPv6's checksum covers the pseudo-header (RFC 8200 section 8.1).
            icmp_csum = update_addr(icmp_csum, &ip.src, &outer_src, ip.family);
            icmp_csum = update_addr(icmp_csum, &ip.dst, &outer_dst, ip.family);
        }
        write16(frame, icmp_csum_at, icmp_csum);
        set_ip_addrs(frame, ip, &outer_src, &outer_dst);
        Ok(forward(t, frame, ip, &outer_dst, ingress))
    }
}

/// Marks a matched entry as seen now and moves its TCP state. Returns a copy, and the
/// new state if it changed.
#[inline]
fn refresh(e: &mut FlowEntry, proto: u8, tcp_flags: u8, now: u64) -> (FlowEntry, Option<u8>) {
    e.last_seen_ns = now;
    let state = next_tcp_state(proto, e.tcp_state, e.direction, tcp_flags);
    let moved = (state != e.tcp_state).then_some(state);
    e.tcp_state = state;
    (*e, moved)
}

/// Parses the Ethernet and IP headers. `Ok(None)`: not IP, pass untouched.
fn parse_ip(t: &Tables, frame: &[u8]) -> Step<Option<Ip>> {
    let (l3, ethertype) = match wire::l3_offset(frame) {
        Ok(x) => x,
        Err(_) => return Err(drop::TRUNCATED),
    };
    match ethertype {
        wire::ethernet::ETHERTYPE_IPV4 => {
            let p = Ipv4Packet::new_checked(&frame[l3..]).map_err(ip_error)?;
            let header_len = p.header_len() as usize;
            let later = p.frag_offset_bytes() != 0;
            Ok(Some(Ip {
                l3,
                end: l3 + p.total_len() as usize,
                l4: l3 + header_len,
                family: FAMILY_V4,
                proto: p.protocol(),
                src: addr_v4(p.src_addr()),
                dst: addr_v4(p.dst_addr()),
                later_fragment: later,
                first_fragment: !later && p.more_frags(),
            }))
        }
        wire::ethernet::ETHERTYPE_IPV6 => {
            let p = Ipv6Packet::new_checked(&frame[l3..]).map_err(ip_error)?;
            let (src, dst) = (p.src_addr(), p.dst_addr());
            let end = l3 + wire::ipv6::HEADER_LEN + p.payload_len() as usize;
            let payload = &frame[l3 + wire::ipv6::HEADER_LEN..end];
            let walked =
                match wire::walk_ext_headers(payload, p.next_header(), MAX_IPV6_EXT_HEADERS) {
                    Ok(w) => w,
                    Err(wire::Error::Unsupported) => {
                        // More extension headers than vipr walks: ours to refuse only if it
                        // is addressed to a VIP; anything else is the kernel's business.
                        return if t.is_vip_addr(&dst, FAMILY_V6) {
                            Err(drop::IPV6_EXT_HEADERS)
                        } else {
                            Ok(None)
                        };
                    }
                    Err(e) => return Err(ip_error(e)),
                };
            let (later, first) = match walked.fragment {
                Some(f) => (f.offset != 0, f.offset == 0 && f.more),
                None => (false, false),
            };
            Ok(Some(Ip {
                l3,
                end,
                l4: l3 + wire::ipv6::HEADER_LEN + walked.offset,
                family: FAMILY_V6,
                proto: walked.proto,
                src,
                dst,
                later_fragment: later,
                first_fragment: first,
            }))
        }
        _ => Ok(None),
    }
}

pub use vipr_abi::MAX_IPV6_EXT_HEADERS;

fn ip_error(e: wire::Error) -> u32 {
    match e {
        wire::Error::Truncated => drop::TRUNCATED,
        _ => drop::BAD_IP_HEADER,
    }
}

fn l4_error(e: wire::Error) -> u32 {
    match e {
        wire::Error::Truncated => drop::TRUNCATED,
        _ => drop::BAD_L4_HEADER,
    }
}

/// Source port, destination port (host order) and TCP flags (0 for UDP).
fn l4_ports(frame: &[u8], ip: &Ip) -> Step<(u16, u16, u8)> {
    let l4 = &frame[ip.l4..ip.end];
    if ip.proto == PROTO_TCP {
        let p = TcpPacket::new_checked(l4).map_err(l4_error)?;
        Ok((p.src_port(), p.dst_port(), p.flags()))
    } else if ip.first_fragment {
        // The UDP length covers the whole datagram, not this fragment: ports only.
        if l4.len() < wire::udp::HEADER_LEN {
            return Err(drop::TRUNCATED);
        }
        let p = UdpPacket::new_unchecked(l4);
        Ok((p.src_port(), p.dst_port(), 0))
    } else {
        let p = UdpPacket::new_checked(l4).map_err(l4_error)?;
        Ok((p.src_port(), p.dst_port(), 0))
    }
}

/// The embedded packet of an ICMP error.
struct IcmpInner {
    l3: usize,
    l4: usize,
    key: FlowKey,
    /// Whether the embedded L4 checksum lies inside the quoted bytes.
    l4_csum_present: bool,
}

fn parse_icmp_error(frame: &[u8], ip: &Ip) -> Option<IcmpInner> {
    let msg = &frame[ip.l4..ip.end];
    let is_error = if ip.family == FAMILY_V4 {
        Icmpv4Packet::new_checked(msg).ok()?.is_error()
    } else {
        Icmpv6Packet::new_checked(msg).ok()?.is_error()
    };
    if !is_error {
        return None;
    }
    let l3 = ip.l4 + wire::icmp::HEADER_LEN;
    let quoted = frame.get(l3..ip.end)?;
    let (l4_off, proto, src, dst) = if ip.family == FAMILY_V4 {
        // The quoted header is checked by hand: its total length describes the original
        // datagram, which the error quotes only the start of.
        if quoted.len() < wire::ipv4::HEADER_LEN || quoted[0] >> 4 != 4 {
            return None;
        }
        let p = Ipv4Packet::new_unchecked(quoted);
        let hl = p.header_len() as usize;
        if hl < wire::ipv4::HEADER_LEN || p.frag_offset_bytes() != 0 {
            return None;
        }
        (hl, p.protocol(), addr_v4(p.src_addr()), addr_v4(p.dst_addr()))
    } else {
        if quoted.len() < wire::ipv6::HEADER_LEN || quoted[0] >> 4 != 6 {
            return None;
        }
        let p = Ipv6Packet::new_unchecked(quoted);
        let w = wire::walk_ext_headers(
            &quoted[wire::ipv6::HEADER_LEN..],
            p.next_header(),
            MAX_IPV6_EXT_HEADERS,
        )
        .ok()?;
        if w.fragment.is_some_and(|f| f.offset != 0) {
            return None;
        }
        (wire::ipv6::HEADER_LEN + w.offset, w.proto, p.src_addr(), p.dst_addr())
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let l4 = quoted.get(l4_off..)?;
    // RFC 792 quotes at least 8 bytes of the original L4 header: the ports.
    if l4.len() < 8 {
        return None;
    }
    let csum_end = if proto == PROTO_TCP { 18 } else { 8 };
    Some(IcmpInner {
        l3,
        l4: l3 + l4_off,
        key: FlowKey {
            src,
            dst,
            src_port: u16::from_be_bytes([l4[0], l4[1]]).to_be(),
            dst_port: u16::from_be_bytes([l4[2], l4[3]]).to_be(),
            proto,
            family: ip.family,
            _pad: [0; 2],
        },
        l4_csum_present: l4.len() >= csum_end,
    })
}

#[inline]
fn read16(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

#[inline]
fn write16(frame: &mut [u8], at: usize, v: u16) {
    frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Rewrites addresses and ports of the packet at `ip`, with incremental updates of the
/// IPv4 header checksum and (if `l4_csum_present`) the TCP/UDP checksum, whose
/// pseudo-header covers the addresses (RFC 1624 via `vipr_abi::checksum`).
fn rewrite_ip(frame: &mut [u8], ip: &Ip, nat: &Nat, l4: usize, l4_csum_present: bool) {
    let csum_at = l4 + if ip.proto == PROTO_TCP { 16 } else { 6 };
    if l4_csum_present {
        let mut c = read16(frame, csum_at);
        // A UDP/IPv4 checksum of zero means "none": leave it so (RFC 768).
        let skip = ip.proto == PROTO_UDP && ip.family == FAMILY_V4 && c == 0;
        if !skip {
            c = update_addr(c, &ip.src, &nat.src, ip.family);
            c = update_addr(c, &ip.dst, &nat.dst, ip.family);
            c = update16(c, read16(frame, l4), u16::from_be(nat.src_port));
            c = update16(c, read16(frame, l4 + 2), u16::from_be(nat.dst_port));
            if ip.proto == PROTO_UDP {
                c = checksum::udp_fixup(c);
            }
            write16(frame, csum_at, c);
        }
    }
    write16(frame, l4, u16::from_be(nat.src_port));
    write16(frame, l4 + 2, u16::from_be(nat.dst_port));
    set_ip_addrs(frame, ip, &nat.src, &nat.dst);
}

/// Sets the IP addresses of the header at `ip.l3`, updating the IPv4 header checksum.
fn set_ip_addrs(frame: &mut [u8], ip: &Ip, src: &Addr, dst: &Addr) {
    if ip.family == FAMILY_V4 {
        let mut p = Ipv4Packet::new_unchecked(&mut frame[ip.l3..]);
        let mut c = p.checksum();
        c = update_addr(c, &ip.src, src, FAMILY_V4);
        c = update_addr(c, &ip.dst, dst, FAMILY_V4);
        p.set_src_addr([src[0], src[1], src[2], src[3]]);
        p.set_dst_addr([dst[0], dst[1], dst[2], dst[3]]);
        p.set_checksum(c);
    } else {
        let mut p = Ipv6Packet::new_unchecked(&mut frame[ip.l3..]);
        p.set_src_addr(*src);
        p.set_dst_addr(*dst);
    }
}

/// Sends a translated frame towards `dst`: with a known next hop vipr forwards it itself
/// (a router hop: TTL/hop limit decremented, MACs rewritten); without one the kernel
/// routes it.
fn forward(t: &Tables, frame: &mut [u8], ip: &Ip, dst: &Addr, ingress: u32) -> Verdict {
    let Some(hop) = t.next_hops.lookup(ip_of(dst, ip.family)) else {
        return Verdict::Pass;
    };
    if !decrement_ttl(frame, ip) {
        return Verdict::Drop { reason: drop::TTL_EXCEEDED };
    }
    set_macs(frame, &hop);
    if hop.ifindex == ingress || hop.ifindex == 0 {
        Verdict::Tx
    } else {
        Verdict::Redirect { ifindex: hop.ifindex }
    }
}

/// Decrements the TTL / hop limit; false if it would reach zero.
fn decrement_ttl(frame: &mut [u8], ip: &Ip) -> bool {
    if ip.family == FAMILY_V4 {
        let mut p = Ipv4Packet::new_unchecked(&mut frame[ip.l3..]);
        let ttl = p.ttl();
        if ttl <= 1 {
            return false;
        }
        // TTL shares a 16-bit word with the protocol.
        let proto = p.protocol() as u16;
        let c = update16(p.checksum(), (ttl as u16) << 8 | proto, ((ttl - 1) as u16) << 8 | proto);
        p.set_ttl(ttl - 1);
        p.set_checksum(c);
    } else {
        let mut p = Ipv6Packet::new_unchecked(&mut frame[ip.l3..]);
        let hl = p.hop_limit();
        if hl <= 1 {
            return false;
        }
        p.set_hop_limit(hl - 1);
    }
    true
}

fn set_macs(frame: &mut [u8], hop: &NextHop) {
    let mut eth = EthernetFrame::new_unchecked(frame);
    eth.set_src_addr(hop.src_mac);
    eth.set_dst_addr(hop.dst_mac);
}

/// The backend a flow would get on a VIP right now, without tracking it: what
/// `vipr trace` and the simulator show. `None`: no such VIP or no backend.
pub fn choose_backend(t: &Tables, key: &FlowKey) -> Option<(u32, BackendInfo)> {
    let vip =
        t.vip(&VipKey { addr: key.dst, port: key.dst_port, proto: key.proto, family: key.family })?;
    let hash =
        if vip.info.flags & VIP_F_AFFINITY != 0 { affinity_hash(key) } else { flow_hash(key) };
    let id = vip.slot(hash);
    t.backend(id).map(|b| (id, *b))
}

/// Convenience for building a `FlowKey` from addresses and host-order ports.
pub fn flow_key(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16, proto: u8) -> FlowKey {
    let (s, family) = addr_of(src);
    let (d, _) = addr_of(dst);
    FlowKey {
        src: s,
        dst: d,
        src_port: src_port.to_be(),
        dst_port: dst_port.to_be(),
        proto,
        family,
        _pad: [0; 2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{BackendSpec, Compiler, DesiredState, VipSpec};
    use proptest::prelude::*;

    fn snat_tables(port_min: u16, port_max: u16, backends: usize) -> SharedTables {
        let vip = VipSpec {
            addr: "192.0.2.10".parse().unwrap(),
            port: 8088,
            proto: PROTO_TCP,
            snat_addr: Some("192.0.2.2".parse().unwrap()),
            affinity_timeout_s: None,
            source_ranges: vec![],
            ring_max: DEFAULT_RING_MAX,
            backends: (0..backends)
                .map(|i| BackendSpec {
                    addr: format!("192.0.2.{}", 21 + i).parse().unwrap(),
                    port: 8080,
                    weight: 1,
                    draining: false,
                })
                .collect(),
        };
        let settings =
            Settings { snat_port_min: port_min, snat_port_max: port_max, ..Settings::default() };
        SharedTables::new(
            Compiler::default()
                .compile(&DesiredState { settings, vips: vec![vip], next_hops: vec![] })
                .unwrap(),
        )
    }

    /// A TCP SYN frame from `src:sport` to the test VIP, built by hand (no checksums:
    /// the pipeline does not verify them).
    fn syn(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&40u16.to_be_bytes());
        f[22] = 64;
        f[23] = PROTO_TCP;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&[192, 0, 2, 10]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&8088u16.to_be_bytes());
        f[46] = 5 << 4;
        f[47] = 0x02;
        f
    }

    /// (source address, source port, destination address, destination port) as rewritten.
    fn tuple(f: &[u8]) -> ([u8; 4], u16, [u8; 4], u16) {
        (
            f[26..30].try_into().unwrap(),
            u16::from_be_bytes([f[34], f[35]]),
            f[30..34].try_into().unwrap(),
            u16::from_be_bytes([f[36], f[37]]),
        )
    }

    proptest! {
        // However many clients arrive, no two live flows leave with the same tuple: the
        // backend could not tell their packets apart.
        #[test]
        fn snat_never_gives_one_port_to_two_live_flows(
            clients in proptest::collection::vec((1u8..250, 1024u16..65535), 1..200),
            span in 1u16..64,
        ) {
            let shared = snat_tables(20000, 20000 + span - 1, 2);
            let mut p = Pipeline::new(&shared, 10_000);
            let mut seen = std::collections::HashSet::new();
            let mut forwarded = 0;
            for (host, port) in clients {
                let mut f = syn([198, 51, 100, host], port);
                let before = f.clone();
                match p.process(&mut f, 1, 1_000_000_000) {
                    Verdict::Pass => {
                        let t = tuple(&f);
                        // A repeated client tuple is the same flow and keeps its port.
                        if f != before {
                            prop_assert!((20000..20000 + span).contains(&t.1), "port {} outside the range", t.1);
                            if seen.insert(tuple(&before)) {
                                forwarded += 1;
                            }
                        }
                    }
                    Verdict::Drop { reason } => prop_assert_eq!(reason, drop::SNAT_PORTS_EXHAUSTED),
                    v => prop_assert!(false, "unexpected verdict {:?}", v),
                }
            }
            // Every tracked forward flow has its own (snat port, backend) pair.
            let mut used = std::collections::HashSet::new();
            for (k, e) in p.conntrack.iter() {
                if e.direction == FLOW_DIR_REPLY {
                    prop_assert!(used.insert((k.src, k.src_port, k.dst_port)), "reply tuple {:?} used twice", k);
                }
            }
            prop_assert_eq!(used.len(), forwarded);
        }
    }

    #[test]
    fn snat_drops_new_flows_once_every_probed_port_is_taken() {
        let shared = snat_tables(30000, 30003, 1);
        let mut p = Pipeline::new(&shared, 100);
        let mut verdicts = Vec::new();
        for port in 0..6 {
            let mut f = syn([198, 51, 100, 7], 40000 + port);
            verdicts.push(p.process(&mut f, 1, 1_000_000_000));
        }
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Pass).count(), 4, "{verdicts:?}");
        assert_eq!(p.counters.drops[drop::SNAT_PORTS_EXHAUSTED as usize], 2);
    }

    #[test]
    fn snat_ports_come_back_once_their_flows_expire() {
        let shared = snat_tables(30000, 30000, 1);
        let mut p = Pipeline::new(&shared, 100);
        let t0 = 1_000_000_000;
        assert_eq!(p.process(&mut syn([198, 51, 100, 7], 40000), 1, t0), Verdict::Pass);
        assert!(matches!(
            p.process(&mut syn([198, 51, 100, 7], 40001), 1, t0),
            Verdict::Drop { .. }
        ));
        let later = t0 + Settings::default().tcp_syn_timeout_ns + 1;
        assert_eq!(p.process(&mut syn([198, 51, 100, 7], 40001), 1, later), Verdict::Pass);
    }

    #[test]
    fn vip_and_backend_counters_count_frame_bytes() {
        let shared = snat_tables(30000, 40000, 1);
        let mut p = Pipeline::new(&shared, 100);
        let mut f = syn([198, 51, 100, 7], 40000);
        let len = f.len() as u64;
        p.process(&mut f, 1, 1);
        let mut f = syn([198, 51, 100, 7], 40000);
        p.process(&mut f, 1, 2);
        let vip = p.counters.vip(0);
        assert_eq!((vip.packets, vip.bytes, vip.new_flows), (2, 2 * len, 1));
        let b = p.counters.backend(0);
        assert_eq!((b.packets, b.bytes, b.new_flows), (2, 2 * len, 1));
    }

    #[test]
    fn new_tables_take_effect_at_the_next_packet() {
        let shared = snat_tables(30000, 40000, 1);
        let mut p = Pipeline::new(&shared, 100);
        assert_eq!(p.process(&mut syn([198, 51, 100, 7], 1), 1, 1), Verdict::Pass);
        shared.store(Tables::default());
        let mut f = syn([198, 51, 100, 7], 2);
        let before = f.clone();
        assert_eq!(p.process(&mut f, 1, 1), Verdict::Pass);
        assert_eq!(f, before, "with no VIP the frame passes untouched");
    }
}
