//! TCP and UDP: VIP lookup, source ranges, conntrack, backend choice and SNAT ports,
//! as pipeline.rs `tcp_udp`, `new_flow` and `snat_port` do them.
//!
//! The conntrack is the shared LRU hash `CONNTRACK`, one entry per direction of a flow.
//! An entry past its timeout counts as absent and is deleted when a lookup finds it, as
//! in the userspace conntrack; eviction when the map is full is the kernel's LRU.

use crate::maps::{
    RingPool, AFFINITY, BACKENDS, BACKEND_STATS, CONNTRACK, RINGS, SOURCE_RANGES, VIPS, VIP_ADDRS,
    VIP_STATS,
};
use crate::nat::rewrite_ip;
use crate::packet::{l4_ports, Ip};
use crate::Run;
use aya_ebpf::btf_maps::{lpm_trie::Key, PerCpuArray};
use aya_ebpf::helpers::bpf_loop;
use core::ffi::c_void;
use vipr_abi::tcp::{initial_tcp_state, is_opening, next_tcp_state};
use vipr_abi::maps::RING_POOL;
use vipr_abi::*;

// TCP flag bits as in the header's 13th byte.

/// LPM lookup keys match every bit of the address: the tag's 32 bits plus the address's.
#[inline(always)]
pub fn host_prefix_len(family: u8) -> u32 {
    lpm_prefix_len(if family == FAMILY_V4 { 32 } else { 128 })
}

/// Whether some VIP lives on `addr` (any port or protocol).
#[inline(always)]
pub fn is_vip_addr(addr: &Addr, family: u8) -> bool {
    VIP_ADDRS.get_ptr(VipAddrKey::new(*addr, family)).is_some()
}

/// A TCP or UDP packet: `Ok(true)` when it was translated and is to be forwarded,
/// `Ok(false)` when it is not ours and passes untouched.
// Not inlined, like every step of any size: the verifier limits the stack of a chain
// of BPF-to-BPF calls to 512 bytes, and steps called one after the other do not add
// up their frames. This one holds the flow entry the steps it calls fill and read.
#[inline(never)]
pub fn tcp_udp(run: &Run, ip: &mut Ip) -> Result<bool, u32> {
    if ip.later_fragment {
        // Decision (README, "Fragments"): a later fragment has no ports to find its flow
        // by; hashing it on the 3-tuple could send it to another backend than its first
        // fragment, so VIP-bound ones are dropped and counted.
        return if is_vip_addr(&ip.key.dst, ip.family()) { Err(drop::FRAGMENT) } else { Ok(false) };
    }
    match l4_ports(run.ctx, ip) {
        Ok(()) => {}
        Err(reason) if is_vip_addr(&ip.key.dst, ip.family()) => return Err(reason),
        Err(_) => return Ok(false),
    }
    // SAFETY: FlowEntry is plain integers and arrays, for which zero is valid.
    let mut entry: FlowEntry = unsafe { core::mem::zeroed() };
    let moved = match track(run, ip, &mut entry)? {
        Track::NotOurs => return Ok(false),
        Track::Hit => false,
        Track::HitMoved => true,
        Track::New => {
            new_flow(run, ip, &mut entry)?;
            false
        }
    };
    translate(run, ip, &entry, moved)?;
    Ok(true)
}

/// What the conntrack knows of a packet.
// Without payload: LLVM fills the unused payload bytes of a returned enum with
// undefined registers, which the verifier refuses to read.
enum Track {
    /// Neither to a VIP nor a reply of a tracked flow.
    NotOurs,
    /// A tracked flow; its entry was copied out.
    Hit,
    /// A tracked flow whose TCP state this packet moved.
    HitMoved,
    /// A packet to a VIP that starts a flow.
    New,
}

impl Track {
    #[inline(always)]
    fn hit(moved: bool) -> Self {
        if moved {
            Track::HitMoved
        } else {
            Track::Hit
        }
    }
}

/// The VIP a packet is addressed to.
#[inline(always)]
fn vip_of(ip: &Ip) -> Option<*const VipInfo> {
    let key = &ip.key;
    VIPS.get_ptr(VipKey { addr: key.dst, port: key.dst_port, proto: key.proto, family: key.family })
}

/// VIP lookup, source-range check and conntrack lookup (pipeline.rs `tcp_udp` up to
/// `new_flow`). A hit is copied into `entry`.
#[inline(never)]
fn track(run: &Run, ip: &Ip, entry: &mut FlowEntry) -> Result<Track, u32> {
    let key = &ip.key;
    let Some(vip) = vip_of(ip) else {
        return Ok(match lookup(key, run.now, run.settings) {
            // SAFETY: `lookup` returned a live CONNTRACK value; see `refresh`.
            Some(e) if unsafe { (*e).direction } == FLOW_DIR_REPLY => {
                Track::hit(refresh(e, ip, run.now, entry))
            }
            _ => Track::NotOurs,
        });
    };
    // SAFETY: a VIPS value, which the control plane writes whole; read in place.
    let vip = unsafe { &*vip };
    if vip.flags & VIP_F_SOURCE_RANGES != 0 {
        let range = Key::new(
            host_prefix_len(key.family),
            SourceRangeKey { vip_id_be: vip.vip_id.to_be(), addr: key.src },
        );
        if SOURCE_RANGES.get(&range).is_none() {
            return Err(drop::SOURCE_DENIED);
        }
    }
    count_packet(&VIP_STATS, vip.vip_id, run.len);
    let reopen = is_opening(ip.tcp_flags);
    Ok(match lookup(key, run.now, run.settings) {
        // A new SYN on a closing tuple is a new connection: choose afresh.
        // SAFETY: `lookup` returned a live CONNTRACK value; see `refresh`.
        Some(e) if !(reopen && unsafe { (*e).tcp_state } == CT_CLOSING) => {
            Track::hit(refresh(e, ip, run.now, entry))
        }
        _ => Track::New,
    })
}

/// The rest of pipeline.rs `tcp_udp` for a tracked packet: shares a TCP state change
/// with the other direction, counts the backend's packet and rewrites the headers.
#[inline(never)]
fn translate(run: &Run, ip: &Ip, entry: &FlowEntry, moved: bool) -> Result<(), u32> {
    let key = &ip.key;
    if moved {
        // Both directions share the TCP state; the other entry is looked up only when
        // the state moves.
        if let Some(peer) = CONNTRACK.get_ptr_mut(entry.peer_key(key)) {
            // SAFETY: a CONNTRACK value; a concurrent writer can at worst leave the
            // state of its own packet, which the next packet corrects.
            unsafe { (*peer).tcp_state = entry.tcp_state };
        }
    }
    if entry.direction == FLOW_DIR_FORWARD {
        count_packet(&BACKEND_STATS, entry.backend_id, run.len);
    }
    rewrite_ip(
        run.ctx,
        ip.l3,
        ip.l4,
        key,
        &entry.nat_src,
        &entry.nat_dst,
        entry.nat_src_port,
        entry.nat_dst_port,
        true,
    )
}

#[inline(always)]
fn live(last_seen_ns: u64, tcp_state: u8, proto: u8, now: u64, s: &Settings) -> bool {
    now.saturating_sub(last_seen_ns) <= s.timeout_ns(proto, tcp_state)
}

/// The conntrack entry for `key` if it is live; an expired one is deleted.
#[inline(always)]
pub fn lookup(key: &FlowKey, now: u64, s: &Settings) -> Option<*mut FlowEntry> {
    let e = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: a CONNTRACK value, valid until this program changes the map.
    let (last_seen_ns, tcp_state) = unsafe { ((*e).last_seen_ns, (*e).tcp_state) };
    if live(last_seen_ns, tcp_state, key.proto, now, s) {
        Some(e)
    } else {
        let _ = CONNTRACK.remove(key);
        None
    }
}

/// Whether a live entry holds `key` (conntrack.rs `is_live`).
#[inline(always)]
fn is_live(key: &FlowKey, now: u64, s: &Settings) -> bool {
    match CONNTRACK.get_ptr(key) {
        // SAFETY: a CONNTRACK value, read at once.
        Some(e) => unsafe { live((*e).last_seen_ns, (*e).tcp_state, key.proto, now, s) },
        None => false,
    }
}

/// Marks a matched entry as seen now and moves its TCP state with `ip`'s flags. Copies
/// it into `copy`, and tells whether the state moved.
#[inline(always)]
fn refresh(e: *mut FlowEntry, ip: &Ip, now: u64, copy: &mut FlowEntry) -> bool {
    // SAFETY: `e` is a CONNTRACK value from `lookup` and the map has not changed since.
    // Another CPU may update the same flow at once; both write the same kind of
    // values, and the last writer wins as in any BPF conntrack.
    unsafe {
        (*e).last_seen_ns = now;
        let state = next_tcp_state(ip.proto(), (*e).tcp_state, (*e).direction, ip.tcp_flags);
        let moved = state != (*e).tcp_state;
        (*e).tcp_state = state;
        *copy = *e;
        moved
    }
}

/// Chooses a backend for a flow the conntrack does not know, tracks it, and leaves its
/// forward entry in `entry`.
// It looks the VIP up again rather than take it from `track`: see `Track`.
#[inline(never)]
fn new_flow(run: &Run, ip: &Ip, entry: &mut FlowEntry) -> Result<(), u32> {
    let Some(vip) = vip_of(ip) else {
        // The control plane removed the VIP since `track` found it.
        return Err(drop::NO_BACKEND);
    };
    // SAFETY: as in `track`.
    let vip = unsafe { &*vip };
    let key = &ip.key;
    let tcp_flags = ip.tcp_flags;
    let now = run.now;
    let vip_id = vip.vip_id;
    let backend_id = choose_backend(run, vip, ip);
    // A backend of another VIP (a slot read while its ring moved or shrank) is no better
    // than none.
    let Some(backend) = BACKENDS.get(backend_id).filter(|b| b.family != 0 && b.vip_id == vip_id)
    else {
        return Err(drop::NO_BACKEND);
    };

    // The key the backend's answers arrive with: from the backend to the client, or to
    // the SNAT address and a port of vipr's.
    let mut reply_key = FlowKey {
        src: backend.addr,
        dst: key.src,
        src_port: backend.port,
        dst_port: key.src_port,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    };
    let flags = if vip.flags & VIP_F_SNAT != 0 {
        reply_key.dst = vip.snat_addr;
        snat_port(run, ip, &mut reply_key)?;
        FLOW_F_SNAT
    } else {
        0
    };
    let tcp_state = initial_tcp_state(key.proto, tcp_flags);
    // One entry on the stack serves both directions (the stack is 512 bytes): first the
    // reply entry, which rewrites answers to come from the VIP...
    *entry = FlowEntry {
        last_seen_ns: now,
        nat_src: key.dst,
        nat_dst: key.src,
        nat_src_port: key.dst_port,
        nat_dst_port: key.src_port,
        vip_id,
        backend_id,
        direction: FLOW_DIR_REPLY,
        tcp_state,
        flags,
        _pad: 0,
    };
    // A full table makes the kernel evict its least recently used entries; an insert
    // that still fails leaves the flow untracked, and its next packet chooses again.
    // By reference: a copy would cost the stack 56 more bytes, which it does not have.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let _ = CONNTRACK.insert(reply_key, &*entry, 0);
    // ...then the forward entry, towards the backend (and from the SNAT address).
    entry.nat_src = reply_key.dst;
    entry.nat_dst = backend.addr;
    entry.nat_src_port = reply_key.dst_port;
    entry.nat_dst_port = backend.port;
    entry.direction = FLOW_DIR_FORWARD;
    #[allow(clippy::needless_borrows_for_generic_args)]
    let _ = CONNTRACK.insert(key, &*entry, 0);
    count_new_flow(&VIP_STATS, vip_id);
    count_new_flow(&BACKEND_STATS, backend_id);
    Ok(())
}

/// The backend id for a new flow: the client's pinned backend under sessionAffinity
/// ClientIP while it is usable, else the Maglev slot of the flow (or, with affinity, of
/// the client's 3-tuple, which pins the client anew).
// Not inlined, like `snat_port`: its stack frame is not added to `new_flow`'s other work.
#[inline(never)]
fn choose_backend(run: &Run, vip: &VipInfo, ip: &Ip) -> u32 {
    let key = &ip.key;
    let vip_id = vip.vip_id;
    if vip.flags & VIP_F_AFFINITY == 0 {
        return ring_slot(vip, hash(ip, false));
    }
    let akey = AffinityKey { client: key.src, vip_id, family: key.family, _pad: [0; 3] };
    match affinity(&akey, run.now, vip.affinity_timeout_s) {
        Some(id) if usable(id, vip_id) => id,
        _ => {
            let id = ring_slot(vip, hash(ip, true));
            if id != NO_BACKEND {
                let entry = AffinityEntry { last_seen_ns: run.now, backend_id: id, _pad: 0 };
                let _ = AFFINITY.insert(akey, entry, 0);
            }
            id
        }
    }
}

/// The flow hash of the packet's 5-tuple, or with `affinity` of its 3-tuple.
// Not inlined: as a call of its own it reads the tuple while it hashes it. Inlined,
// LLVM loads the ten words up front and keeps them across the map lookups that come
// between, spilling them all to the stack.
#[inline(never)]
fn hash(ip: &Ip, affinity: bool) -> u32 {
    if affinity {
        affinity_hash(&ip.key)
    } else {
        flow_hash(&ip.key)
    }
}

/// The backend a client is pinned to on a VIP, if its affinity has not timed out.
#[inline(always)]
fn affinity(key: &AffinityKey, now: u64, timeout_s: u32) -> Option<u32> {
    let e = AFFINITY.get_ptr_mut(key)?;
    let timeout = timeout_s as u64 * 1_000_000_000;
    // SAFETY: an AFFINITY value, valid until this program changes the map.
    unsafe {
        if now.saturating_sub((*e).last_seen_ns) <= timeout {
            (*e).last_seen_ns = now;
            Some((*e).backend_id)
        } else {
            let _ = AFFINITY.remove(key);
            None
        }
    }
}

/// Whether a backend may take new flows of the VIP (pipeline.rs `usable`).
#[inline(always)]
fn usable(backend_id: u32, vip_id: u32) -> bool {
    BACKENDS
        .get(backend_id)
        .is_some_and(|b| b.family != 0 && b.vip_id == vip_id && b.flags & BACKEND_F_DRAINING == 0)
}

/// The backend id in the slot of the VIP's ring that `hash` maps to; `NO_BACKEND` when
/// the ring is empty or its region holds no ring (M = 0).
#[inline(always)]
fn ring_slot(vip: &VipInfo, hash: u32) -> u32 {
    let Some(pool) = RINGS.get(RING_POOL) else {
        return NO_BACKEND;
    };
    let start = vip.ring_offset;
    let Some(size) = pool_slot(pool, start).filter(|&m| m != 0) else {
        return NO_BACKEND;
    };
    let at = start.wrapping_add(RING_HEADER_SLOTS).wrapping_add(ring_index(hash, size));
    pool_slot(pool, at).unwrap_or(NO_BACKEND)
}

/// Slot `i` of the ring pool: the low half of value `i / 2` for an even `i`, the high
/// half for an odd one (the `u32`s of the pool's memory in order, little-endian).
#[inline(always)]
fn pool_slot(pool: &RingPool, i: u32) -> Option<u32> {
    let pair = *pool.get(i / 2)?;
    Some((pair >> ((i % 2) * 32)) as u32)
}

/// Sets the destination port of `reply` (backend -> SNAT address) to a port no live
/// flow's reply uses. Probing starts at a hash of the flow, so concurrent CPUs rarely
/// collide.
// Not inlined: see `choose_backend`. The probes run under `bpf_loop`, which the
// verifier checks once rather than once per probe and per path that leads here.
#[inline(never)]
fn snat_port(run: &Run, ip: &Ip, reply: &mut FlowKey) -> Result<(), u32> {
    let s = run.settings;
    let span = (s.snat_port_max as u32).saturating_sub(s.snat_port_min as u32) + 1;
    let mut probe = Probe { run, reply, start: hash(ip, false), span, found: false };
    // SAFETY: `probe_port` has the callback signature bpf_loop expects and `probe` is
    // the context it reads; both outlive the call.
    unsafe {
        bpf_loop(
            SNAT_PORT_PROBES.min(span),
            probe_port as *mut c_void,
            &mut probe as *mut Probe as *mut c_void,
            0,
        )
    };
    if probe.found {
        Ok(())
    } else {
        Err(drop::SNAT_PORTS_EXHAUSTED)
    }
}

/// The state of `snat_port`'s probes.
struct Probe<'a> {
    run: &'a Run<'a>,
    reply: &'a mut FlowKey,
    /// Where probing starts, before the port range is applied.
    start: u32,
    /// How many ports the range holds.
    span: u32,
    found: bool,
}

/// Probe `i` of `snat_port`: tries one port; returns 1 to stop the loop.
extern "C" fn probe_port(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the `Probe` that `snat_port` handed it.
    let probe = unsafe { &mut *(ctx as *mut Probe) };
    let s = probe.run.settings;
    if probe.span == 0 {
        // Never: the span counts at least one port. The test spares a division by zero.
        return 1;
    }
    let port = s.snat_port_min as u32 + probe.start.wrapping_add(i as u32) % probe.span;
    probe.reply.dst_port = (port as u16).to_be();
    if is_live(probe.reply, probe.run.now, s) {
        return 0;
    }
    probe.found = true;
    1
}

/// Counts one packet of `bytes` for a VIP or a backend.
#[inline(always)]
fn count_packet<const N: usize>(map: &PerCpuArray<Stats, N>, id: u32, bytes: u64) {
    if let Some(s) = map.get_ptr_mut(id) {
        // SAFETY: this CPU's own slot of a per-CPU array; nothing else writes it while
        // this program runs.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
        }
    }
}

/// Counts a new flow for a VIP or a backend.
#[inline(always)]
fn count_new_flow<const N: usize>(map: &PerCpuArray<Stats, N>, id: u32) {
    if let Some(s) = map.get_ptr_mut(id) {
        // SAFETY: as in `count_packet`.
        unsafe { (*s).new_flows += 1 };
    }
}
