//! Stable hashing shared by every sketch in the crate.
//!
//! Sketches built on different shards, in different processes or by different releases must be
//! mergeable, so their hashes must not depend on a per-process random seed (as `std`'s
//! `RandomState` does) or on the platform. XXH3 (Collet, xxHash) is fixed by its specification,
//! fast on short inputs such as column values and tokens, and passes SMHasher, which matters
//! because HyperLogLog and MinHash assume uniformly distributed hash bits.
//!
//! Each kind of value gets its own seed, so the integer 1, the float 1.0 and the string "1" are
//! different values to the distinct-count and frequency sketches.

use xxhash_rust::xxh3::{xxh3_128, xxh3_64_with_seed};

/// Seeds that separate the kinds of values (arbitrary odd constants; changing one changes
/// every persisted sketch, so they are fixed forever).
const SEED_BOOL: u64 = 0x9e37_79b9_7f4a_7c15;
const SEED_INT: u64 = 0xc2b2_ae3d_27d4_eb4f;
const SEED_FLOAT: u64 = 0x1656_67b1_9e37_79f9;
const SEED_STR: u64 = 0x27d4_eb2f_1656_67c5;
/// Seed of the hash of one shingle (a word n-gram) before the MinHash permutations.
pub(crate) const SEED_SHINGLE: u64 = 0x85eb_ca77_c2b2_ae63;
/// Seed of the hash of one LSH band; the band's index is added so equal rows in different
/// bands do not collide.
pub(crate) const SEED_BAND: u64 = 0xd6e8_feb8_6659_fd93;

pub(crate) fn hash_bool(value: bool) -> u64 {
    xxh3_64_with_seed(&[u8::from(value)], SEED_BOOL)
}

pub(crate) fn hash_i64(value: i64) -> u64 {
    xxh3_64_with_seed(&value.to_le_bytes(), SEED_INT)
}

/// Hashes a float by its bits after folding -0.0 into 0.0 and every NaN into one NaN, so that
/// values equal under `==` (and all NaNs) count as one distinct value.
pub(crate) fn hash_f64(value: f64) -> u64 {
    let canonical = if value == 0.0 {
        0.0
    } else if value.is_nan() {
        f64::NAN
    } else {
        value
    };
    xxh3_64_with_seed(&canonical.to_bits().to_le_bytes(), SEED_FLOAT)
}

pub(crate) fn hash_str(value: &str) -> u64 {
    xxh3_64_with_seed(value.as_bytes(), SEED_STR)
}

pub(crate) fn hash_with_seed(bytes: &[u8], seed: u64) -> u64 {
    xxh3_64_with_seed(bytes, seed)
}

/// A 128-bit digest for exact-duplicate detection: at 128 bits an accidental collision among
/// even 10^12 documents has probability below 10^-14, so a match can be trusted without keeping
/// the text.
pub(crate) fn digest128(bytes: &[u8]) -> u128 {
    xxh3_128(bytes)
}

/// SplitMix64 (Steele, Lea and Flood 2014): a tiny deterministic generator, used to draw the
/// MinHash permutation coefficients reproducibly from a fixed seed.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_separated_and_floats_canonical() {
        assert_ne!(hash_i64(1), hash_str("1"));
        assert_ne!(hash_i64(1), hash_f64(1.0));
        assert_eq!(hash_f64(0.0), hash_f64(-0.0));
        assert_eq!(hash_f64(f64::NAN), hash_f64(-f64::NAN));
        assert_ne!(hash_bool(true), hash_bool(false));
    }

    #[test]
    fn hashes_are_stable_across_runs() {
        // Persisted sketches depend on these exact values; a change here breaks merging old
        // profiles with new ones.
        assert_eq!(hash_str("sovereign"), 0x180e_11f4_168f_e76f);
        assert_eq!(hash_i64(7), 0x38ef_09c6_5f47_efbf);
        assert_eq!(SplitMix64::new(7).next_u64(), 0x63cb_e1e4_5932_0dd7);
    }
}
