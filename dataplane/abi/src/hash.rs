//! Flow hash and ring slot, shared by every packet path so that a flow maps to the same
//! Maglev slot in the kernel and in userspace, and in two vipr instances behind ECMP.

use crate::tables::FlowKey;

/// The seed every vipr instance uses: two appliances given the same backends must pick
/// the same backend for the same flow.
pub const FLOW_HASH_SEED: u32 = 0x7669_7072; // "vipr"

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

// MurmurHash3 (x86_32) body round and finaliser, over whole 32-bit words. Word-wise keeps
// the eBPF version free of byte loops; the finaliser gives full avalanche, which the
// multiply-shift in `ring_index` relies on (it uses the high bits).
#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32, len_bytes: u32) -> u32 {
    h ^= len_bytes;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
const fn word(a: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]])
}

#[inline(always)]
const fn hash_words(src: &[u8; 16], dst: &[u8; 16], ports: u32, tail: u32) -> u32 {
    let mut h = FLOW_HASH_SEED;
    h = mix(h, word(src, 0));
    h = mix(h, word(src, 4));
    h = mix(h, word(src, 8));
    h = mix(h, word(src, 12));
    h = mix(h, word(dst, 0));
    h = mix(h, word(dst, 4));
    h = mix(h, word(dst, 8));
    h = mix(h, word(dst, 12));
    h = mix(h, ports);
    h = mix(h, tail);
    finish(h, 40)
}

/// Hash of the 5-tuple (source, destination, ports, protocol) as the flow arrives.
#[inline(always)]
pub const fn flow_hash(key: &FlowKey) -> u32 {
    let ports = (key.src_port as u32) << 16 | key.dst_port as u32;
    hash_words(&key.src, &key.dst, ports, (key.proto as u32) << 8 | key.family as u32)
}

/// Hash of the 3-tuple (source, destination, protocol) for sessionAffinity ClientIP:
/// every connection of one client to one VIP lands on the same slot.
#[inline(always)]
pub const fn affinity_hash(key: &FlowKey) -> u32 {
    hash_words(&key.src, &key.dst, 0, (key.proto as u32) << 8 | key.family as u32)
}

/// Maps a 32-bit hash onto `0..ring_size` with a multiply-shift (Lemire's fast range):
/// uniform for a well-mixed hash and cheaper than a modulo in the kernel.
#[inline(always)]
pub const fn ring_index(hash: u32, ring_size: u32) -> u32 {
    ((hash as u64 * ring_size as u64) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{FAMILY_V4, PROTO_TCP};

    fn key(sport: u16) -> FlowKey {
        let mut k = FlowKey::zeroed();
        k.src[..4].copy_from_slice(&[198, 51, 100, 7]);
        k.dst[..4].copy_from_slice(&[192, 0, 2, 10]);
        k.src_port = sport.to_be();
        k.dst_port = 8088u16.to_be();
        k.proto = PROTO_TCP;
        k.family = FAMILY_V4;
        k
    }

    #[test]
    fn flow_hash_depends_on_ports_but_affinity_hash_does_not() {
        assert_ne!(flow_hash(&key(1000)), flow_hash(&key(1001)));
        assert_eq!(affinity_hash(&key(1000)), affinity_hash(&key(1001)));
    }

    #[test]
    fn ring_index_is_always_inside_the_ring() {
        for m in [1u32, 7, 101, 65537] {
            for h in [0u32, 1, u32::MAX / 2, u32::MAX] {
                assert!(ring_index(h, m) < m);
            }
        }
    }

    #[test]
    fn flow_hash_spreads_sequential_ports_evenly_over_a_ring() {
        let m = 101u32;
        let mut buckets = [0u32; 101];
        let n = 101 * 400;
        for p in 0..n {
            buckets[ring_index(flow_hash(&key(p as u16)), m) as usize] += 1;
        }
        let expected = 400.0;
        for b in buckets {
            // 400 per bucket on average; 5 standard deviations is ~100.
            assert!((b as f64 - expected).abs() < 100.0, "bucket {b} far from {expected}");
        }
    }
}
