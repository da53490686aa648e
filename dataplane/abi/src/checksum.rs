//! Internet checksum arithmetic shared by both packet paths.
//!
//! Values are 16-bit words read big-endian from the packet (`u16::from_be_bytes`), so a
//! result is written back with `to_be_bytes`.

/// Folds a 32-bit one's-complement accumulator to 16 bits (RFC 1071 section 4.1).
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// One's-complement sum of `data` as big-endian words, an odd last byte padded with zero.
pub fn sum_bytes(data: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u16::from_be_bytes([c[0], c[1]]) as u32);
        // Fold early so very long buffers cannot overflow the accumulator.
        if sum & 0x8000_0000 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add((*last as u32) << 8);
    }
    sum
}

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), for one 16-bit field changing from `old` to
/// `new`. Unlike eqn. 2 it never yields 0xffff for a correct, non-zero result.
#[inline(always)]
pub const fn update16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32) + new as u32;
    !fold(sum)
}

/// RFC 1624 eqn. 3 applied to a 4-byte field (an IPv4 address).
#[inline(always)]
pub const fn update4(check: u16, old: &[u8; 4], new: &[u8; 4]) -> u16 {
    let mut sum = !check as u32;
    sum += !u16::from_be_bytes([old[0], old[1]]) as u32;
    sum += !u16::from_be_bytes([old[2], old[3]]) as u32;
    sum += u16::from_be_bytes([new[0], new[1]]) as u32;
    sum += u16::from_be_bytes([new[2], new[3]]) as u32;
    !fold(sum)
}

/// RFC 1624 eqn. 3 applied to a 16-byte field (an IPv6 address).
#[inline(always)]
pub const fn update16_bytes(check: u16, old: &[u8; 16], new: &[u8; 16]) -> u16 {
    let mut sum = !check as u32;
    let mut i = 0;
    while i < 16 {
        sum += !u16::from_be_bytes([old[i], old[i + 1]]) as u32;
        sum += u16::from_be_bytes([new[i], new[i + 1]]) as u32;
        i += 2;
    }
    !fold(sum)
}

/// Updates a checksum for an address change of either family (`len` 4 or 16 bytes of
/// the abi's 16-byte address form).
#[inline(always)]
pub const fn update_addr(check: u16, old: &[u8; 16], new: &[u8; 16], family: u8) -> u16 {
    if family == crate::tables::FAMILY_V4 {
        update4(check, &[old[0], old[1], old[2], old[3]], &[new[0], new[1], new[2], new[3]])
    } else {
        update16_bytes(check, old, new)
    }
}

/// UDP over IPv4 may carry no checksum (zero); an updated checksum that computes to zero
/// is sent as 0xffff (RFC 768).
#[inline(always)]
pub const fn udp_fixup(check: u16) -> u16 {
    if check == 0 {
        0xffff
    } else {
        check
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn full(data: &[u8]) -> u16 {
        !fold(sum_bytes(data))
    }

    proptest! {
        // The incremental update must equal recomputing the checksum over the changed data.
        #[test]
        fn update16_equals_full_recompute(mut data in proptest::collection::vec(any::<u8>(), 4..64),
                                           at in 0usize..30, new in any::<u16>()) {
            let at = (at % (data.len() / 2)) * 2;
            let check = full(&data);
            let old = u16::from_be_bytes([data[at], data[at + 1]]);
            data[at..at + 2].copy_from_slice(&new.to_be_bytes());
            let expect = full(&data);
            let got = update16(check, old, new);
            // 0x0000 and 0xffff are both one's-complement zero.
            prop_assert!(got == expect || (got ^ expect) == 0xffff && (got == 0 || got == 0xffff),
                "got {got:#06x} expect {expect:#06x}");
        }

        #[test]
        fn update16_bytes_equals_full_recompute(mut data in proptest::collection::vec(any::<u8>(), 16..80),
                                                new in any::<[u8; 16]>()) {
            let check = full(&data);
            let old: [u8; 16] = data[..16].try_into().unwrap();
            data[..16].copy_from_slice(&new);
            let expect = full(&data);
            let got = update16_bytes(check, &old, &new);
            prop_assert!(got == expect || (got ^ expect) == 0xffff && (got == 0 || got == 0xffff));
        }

        #[test]
        fn update4_equals_full_recompute(mut data in proptest::collection::vec(any::<u8>(), 8..40),
                                         new in any::<[u8; 4]>()) {
            let check = full(&data);
            let old: [u8; 4] = data[4..8].try_into().unwrap();
            data[4..8].copy_from_slice(&new);
            let expect = full(&data);
            let got = update4(check, &old, &new);
            prop_assert!(got == expect || (got ^ expect) == 0xffff && (got == 0 || got == 0xffff));
        }
    }

    #[test]
    fn rfc1071_example_sums_as_published() {
        // RFC 1071 section 3 example bytes: 00 01 f2 03 f4 f5 f6 f7 -> sum 0xddf2.
        assert_eq!(fold(sum_bytes(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])), 0xddf2);
    }
}
