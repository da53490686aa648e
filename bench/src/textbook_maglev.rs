//! The baseline of the Maglev build benchmark: a straightforward transcription of the
//! paper's Pseudocode 1 (Eisenbud et al., NSDI'16, §3.4): the N x M permutation table is
//! materialised, `next[]` indexes into it, backends take one turn each per round, no
//! weights, backends used in the order given.
//!
//! Self-contained (std + siphasher) and hashed exactly like `vipr_dataplane::maglev`
//! (same 19-byte encoding, same SipHash-1-3 keys), so the two rings can be compared.
//! They are identical when this one is given the backends in `maglev`'s canonical order
//! (sorted by address, then port) and `maglev` gets them all with one equal weight and
//! `id` = canonical index: with equal weights `maglev`'s weighted rounds give every
//! backend exactly one turn per round, which is this loop. `maglev`'s test
//! `equal_weights_build_exactly_the_textbook_ring_over_canonical_order` checks it.

use std::hash::Hasher;
use std::net::IpAddr;

use siphasher::sip::SipHasher13;

/// Same keys as `vipr_dataplane::maglev::{OFFSET_KEYS, SKIP_KEYS}`.
const OFFSET_KEYS: (u64, u64) = (0x6761_6d2d_7270_6976, 0x7366_666f_2d76_656c);
const SKIP_KEYS: (u64, u64) = (0x6761_6d2d_7270_6976, 0x7069_6b73_2d76_656c);

/// Address in 16-byte form (IPv4 in the first four bytes), port big-endian, family byte.
fn encode(addr: IpAddr, port: u16) -> [u8; 19] {
    let mut bytes = [0u8; 19];
    match addr {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            bytes[18] = 4;
        }
        IpAddr::V6(v6) => {
            bytes[..16].copy_from_slice(&v6.octets());
            bytes[18] = 6;
        }
    }
    bytes[16..18].copy_from_slice(&port.to_be_bytes());
    bytes
}

fn sip13(keys: (u64, u64), bytes: &[u8]) -> u64 {
    let mut h = SipHasher13::new_with_keys(keys.0, keys.1);
    h.write(bytes);
    h.finish()
}

/// Maglev lookup table of `m` entries (`m` prime), each the index of a backend in
/// `backends`; `u32::MAX` everywhere when `backends` is empty.
pub fn build_textbook(backends: &[(IpAddr, u16)], m: u32) -> Vec<u32> {
    let n = backends.len();
    let m = m as usize;
    let mut entry = vec![u32::MAX; m];
    if n == 0 {
        return entry;
    }

    // permutation[i][j] = (offset + j * skip) mod M
    let mut permutation: Vec<Vec<u32>> = Vec::with_capacity(n);
    for &(addr, port) in backends {
        let bytes = encode(addr, port);
        let offset = sip13(OFFSET_KEYS, &bytes) % m as u64;
        let skip = sip13(SKIP_KEYS, &bytes) % (m as u64 - 1) + 1;
        let row: Vec<u32> =
            (0..m as u64).map(|j| ((offset + j * skip) % m as u64) as u32).collect();
        permutation.push(row);
    }

    // Pseudocode 1: POPULATE
    let mut next = vec![0usize; n];
    let mut filled = 0;
    loop {
        for i in 0..n {
            let mut c = permutation[i][next[i]];
            while entry[c as usize] != u32::MAX {
                next[i] += 1;
                c = permutation[i][next[i]];
            }
            entry[c as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == m {
                return entry;
            }
        }
    }
}
