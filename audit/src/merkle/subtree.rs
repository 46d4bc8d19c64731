//! Size arithmetic shared by proof generation and verification: the RFC
//! 9162 split point and the expected length of a proof.
//!
//! Pure integer functions; they never index into anything.

/// The largest power of two strictly less than `n` (the RFC 9162 `k`),
/// for `n >= 2`; 0 for smaller `n`.
pub(super) fn split_point(n: u64) -> u64 {
    if n < 2 {
        return 0;
    }
    1 << (63 - (n - 1).leading_zeros())
}

/// Number of hashes in an inclusion proof for `index` in a tree of `size`
/// leaves, given `index < size`.
pub(super) fn inclusion_len(index: u64, size: u64) -> usize {
    let last = size.saturating_sub(1);
    let inner = 64 - (index ^ last).leading_zeros();
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    (inner + border) as usize
}

/// Number of hashes in a consistency proof from `old` to `new` leaves,
/// given `0 < old < new`.
pub(super) fn consistency_len(old: u64, new: u64) -> usize {
    let level = old.trailing_zeros();
    let first = (old - 1) >> level;
    let second = (new - 1) >> level;
    inclusion_len(first, second + 1) + usize::from(first != 0)
}

/// The RFC 9162 step "right-shift both until LSB(fn) is set or fn is 0".
pub(super) fn shift_to_odd(first: &mut u64, second: &mut u64) {
    while *first & 1 == 0 && *first != 0 {
        *first >>= 1;
        *second >>= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_point_is_largest_power_below() {
        let cases = [
            (0, 0),
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 4),
            (8, 4),
            (9, 8),
        ];
        for (n, k) in cases {
            assert_eq!(split_point(n), k, "n = {n}");
        }
        assert_eq!(split_point(u64::MAX), 1 << 63);
    }

    #[test]
    fn inclusion_len_matches_known_shapes() {
        assert_eq!(inclusion_len(0, 1), 0);
        assert_eq!(inclusion_len(0, 8), 3);
        assert_eq!(inclusion_len(2, 5), 3);
        assert_eq!(inclusion_len(4, 5), 1);
        assert_eq!(inclusion_len(2, 3), 1);
        assert_eq!(inclusion_len(u64::MAX - 1, u64::MAX), 63);
        assert_eq!(inclusion_len(0, u64::MAX), 64);
    }

    #[test]
    fn consistency_len_matches_known_shapes() {
        assert_eq!(consistency_len(1, 8), 3);
        assert_eq!(consistency_len(6, 8), 3);
        assert_eq!(consistency_len(2, 5), 2);
        assert_eq!(consistency_len(4, 5), 1);
    }
}
