//! The XDP program's BPF maps: their names (also the pin file names under
//! `/sys/fs/bpf/vipr/<instance>/`), kinds and default sizes. The eBPF crate declares
//! them with these names; the loader opens them by these names and nothing else does.
//!
//! | name            | kind                 | key             | value             | entries            |
//! |-----------------|----------------------|-----------------|-------------------|--------------------|
//! | `VIPS`          | hash                 | `VipKey`        | `VipInfo`         | `MAX_VIPS`         |
//! | `VIP_ADDRS`     | hash                 | `VipAddrKey`    | `u32` (VIP count) | `MAX_VIPS`         |
//! | `RINGS`         | array of maps        | 0               | the ring pool     | 1                  |
//! | `BACKENDS`      | array                | backend id      | `BackendInfo`     | `MAX_BACKENDS`     |
//! | `SOURCE_RANGES` | LPM trie             | `SourceRangeKey`| `u8` (unused)     | `MAX_SOURCE_RANGES`|
//! | `NEXT_HOPS`     | LPM trie             | `NextHopKey`    | `NextHopValue`    | `MAX_NEXT_HOPS`    |
//! | `CONNTRACK`     | LRU hash (shared)    | `FlowKey`       | `FlowEntry`       | 2 x capacity       |
//! | `AFFINITY`      | LRU hash (shared)    | `AffinityKey`   | `AffinityEntry`   | capacity           |
//! | `SETTINGS`      | array                | 0               | `Settings`        | 1                  |
//! | `VERDICTS`      | per-CPU array        | `VERDICT_*`     | `u64`             | `VERDICT_COUNT`    |
//! | `DROPS`         | per-CPU array        | `drop::*`       | `u64`             | `drop::COUNT`      |
//! | `VIP_STATS`     | per-CPU array        | vip id          | `Stats`           | `MAX_VIPS`         |
//! | `BACKEND_STATS` | per-CPU array        | backend id      | `Stats`           | `MAX_BACKENDS`     |
//!
//! Every VIP's Maglev ring lives in one pool: an inner array map of `u64`s, each holding
//! two `u32` ring slots (low half first), so slot `i` is the `i`-th `u32` of the map's
//! memory. A VIP's ring is `M + 1` consecutive slots, `[M, slot 0, .., slot M-1]`,
//! starting at `VipInfo::ring_offset`. The control plane writes rings through a memory
//! mapping of the pool (`BPF_F_MMAPABLE`): one map for 10k rings instead of 10k maps,
//! at 4 bytes a slot. A ring that moves is written aside first and the VIP's entry
//! switched after, so a packet reads the old ring or the new one. The pool sits in
//! `RINGS[0]` (`BPF_F_INNER_MAP`: pools of any size) so it can grow: a larger copy is
//! swapped in.
//!
//! The conntrack is one shared LRU hash, not per CPU: the reply of a flow may arrive on
//! another CPU (another RX queue) than its forward packets, and must find the flow.

pub const VIPS: &str = "VIPS";
pub const VIP_ADDRS: &str = "VIP_ADDRS";
pub const RINGS: &str = "RINGS";
pub const BACKENDS: &str = "BACKENDS";
pub const SOURCE_RANGES: &str = "SOURCE_RANGES";
pub const NEXT_HOPS: &str = "NEXT_HOPS";
pub const CONNTRACK: &str = "CONNTRACK";
pub const AFFINITY: &str = "AFFINITY";
pub const SETTINGS: &str = "SETTINGS";
pub const VERDICTS: &str = "VERDICTS";
pub const DROPS: &str = "DROPS";
pub const VIP_STATS: &str = "VIP_STATS";
pub const BACKEND_STATS: &str = "BACKEND_STATS";

/// Every map, in the order the loader pins them.
pub const ALL: [&str; 13] = [
    VIPS,
    VIP_ADDRS,
    RINGS,
    BACKENDS,
    SOURCE_RANGES,
    NEXT_HOPS,
    CONNTRACK,
    AFFINITY,
    SETTINGS,
    VERDICTS,
    DROPS,
    VIP_STATS,
    BACKEND_STATS,
];

/// `BPF_F_INNER_MAP`: inner array maps of one outer map may differ in size.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;
/// `BPF_F_MMAPABLE`: userspace may map the array's memory and write it directly.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// The ring pool: of any size in its outer map, and written by the control plane
/// through a memory mapping (a 1009-slot ring is a memcpy, not 1009 element updates).
pub const RING_MAP_FLAGS: u32 = BPF_F_INNER_MAP | BPF_F_MMAPABLE;
/// The ring pool's slot in `RINGS`.
pub const RING_POOL: u32 = 0;
/// The ring pool's own pin, next to the maps' (a restarted agent opens it by path: an
/// inner map's fd by id needs CAP_SYS_ADMIN).
pub const RING_POOL_PIN: &str = "RING_POOL";
/// `BPF_F_NO_PREALLOC`, which LPM tries require.
pub const BPF_F_NO_PREALLOC: u32 = 1 << 0;

/// Default sizes of the maps whose size the config does not set.
pub const MAX_SOURCE_RANGES: u32 = 16_384;
pub const MAX_NEXT_HOPS: u32 = 4_096;
/// Default conntrack capacity in flows (the `CONNTRACK` map holds two entries a flow).
pub const DEFAULT_CONNTRACK_FLOWS: u32 = 1_000_000;

/// The XDP program that load-balances.
pub const PROG_LB: &str = "vipr_xdp";
/// A bare `XDP_PASS` program: the benchmark baseline, and what goes on the far ends of
/// veth pairs so that XDP_TX / XDP_REDIRECT into them is delivered.
pub const PROG_PASS: &str = "vipr_pass";
