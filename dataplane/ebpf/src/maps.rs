//! The program's BPF maps, declared with BTF under the names, kinds, keys and values of
//! `vipr_abi::maps`. The sizes are defaults: the loader sets `max_entries` from its
//! config before it creates them.

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use vipr_abi::maps::{
    BPF_F_MMAPABLE, DEFAULT_CONNTRACK_FLOWS, MAX_NEXT_HOPS, MAX_SOURCE_RANGES, RING_MAP_FLAGS,
};
use vipr_abi::{
    drop, AffinityEntry, AffinityKey, BackendInfo, FlowEntry, FlowKey, NextHopKey, NextHopValue,
    Settings, SourceRangeKey, Stats, VipAddrKey, VipInfo, VipKey, DEFAULT_RING_MAX, MAX_BACKENDS,
    MAX_VIPS, RING_HEADER_SLOTS, VERDICT_COUNT,
};

const VIPS_MAX: usize = MAX_VIPS as usize;
const BACKENDS_MAX: usize = MAX_BACKENDS as usize;
const CONNTRACK_FLOWS: usize = DEFAULT_CONNTRACK_FLOWS as usize;

/// The ring pool: every VIP's ring, two `u32` slots a value (see `vipr_abi::maps`).
/// `BPF_F_INNER_MAP` lets the outer map hold a pool of any size (this declaration's size
/// only shapes the template the loader creates); `BPF_F_MMAPABLE` lets the control plane
/// write it through a memory mapping.
pub type RingPool =
    Array<u64, { (RING_HEADER_SLOTS + DEFAULT_RING_MAX) as usize }, { RING_MAP_FLAGS as usize }>;

#[btf_map]
pub static VIPS: HashMap<VipKey, VipInfo, VIPS_MAX> = HashMap::new();

#[btf_map]
pub static VIP_ADDRS: HashMap<VipAddrKey, u32, VIPS_MAX> = HashMap::new();

#[btf_map]
pub static RINGS: ArrayOfMaps<RingPool, 1> = ArrayOfMaps::new();

/// Mmapable: the control plane writes new entries through a mapping (a cold start of
/// 100k backends is a memcpy, not 100k element updates).
#[btf_map]
pub static BACKENDS: Array<BackendInfo, BACKENDS_MAX, { BPF_F_MMAPABLE as usize }> = Array::new();

// LpmTrie's default flags are BPF_F_NO_PREALLOC, which the kernel requires of LPM tries.
#[btf_map]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u8, { MAX_SOURCE_RANGES as usize }> =
    LpmTrie::new();

#[btf_map]
pub static NEXT_HOPS: LpmTrie<NextHopKey, NextHopValue, { MAX_NEXT_HOPS as usize }> =
    LpmTrie::new();

#[btf_map]
pub static CONNTRACK: LruHashMap<FlowKey, FlowEntry, { 2 * CONNTRACK_FLOWS }> = LruHashMap::new();

#[btf_map]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityEntry, CONNTRACK_FLOWS> = LruHashMap::new();

#[btf_map]
pub static SETTINGS: Array<Settings, 1> = Array::new();

#[btf_map]
pub static VERDICTS: PerCpuArray<u64, { VERDICT_COUNT as usize }> = PerCpuArray::new();

#[btf_map]
pub static DROPS: PerCpuArray<u64, { drop::COUNT as usize }> = PerCpuArray::new();

#[btf_map]
pub static VIP_STATS: PerCpuArray<Stats, VIPS_MAX> = PerCpuArray::new();

#[btf_map]
pub static BACKEND_STATS: PerCpuArray<Stats, BACKENDS_MAX> = PerCpuArray::new();
