//! Exact and near-duplicate detection for training documents, one document at a time.
//!
//! Duplicated training text is memorised rather than generalised from, and inflates evaluation
//! scores when copies straddle the train/test split, so the ingest pipeline checks every
//! document against everything kept so far. The [`Deduplicator`] keeps no text, only bounded
//! state per retained (unique) document:
//!
//! * **Exact duplicates**: a 128-bit XXH3 digest of the normalised text ([`crate::normalize`]:
//!   Unicode lowercase, whitespace collapsed, punctuation trimmed from every word), mapped to the
//!   id of the first document with that digest.
//! * **Near duplicates**: MinHash (Broder, "On the resemblance and containment of documents",
//!   1997) over word `shingle`-grams estimates the Jaccard similarity of two documents' shingle
//!   sets as the share of equal signature entries. Permutation `i` is Dietzfelbinger's
//!   multiply-add-shift hash `h_i(x) = ((a_i x + b_i) mod 2^64) >> 32` of the shingle's hash
//!   folded to 32 bits (strongly universal for 32-bit keys), with `a_i`, `b_i` drawn from a
//!   fixed seed so signatures are comparable across runs. It costs one 64-bit multiply per
//!   permutation, where a Mersenne-prime modulus needed a 128-bit product and a fold; with 128
//!   permutations per shingle that made MinHash the slowest step of ingest.
//! * **Candidates** come from LSH banding (Indyk and Motwani 1998; Leskovec, Rajaraman and
//!   Ullman, *Mining of Massive Datasets*, ch. 3): the signature is cut into `b` bands of `r`
//!   rows, each band is hashed to a bucket, and documents sharing any bucket are candidates. Two
//!   documents of similarity `s` become candidates with probability
//!   `P(s) = 1 - (1 - s^r)^b`, an S-curve whose steep part sits near `(1/b)^(1/r)`.
//!   [`lsh_parameters`] picks `b` and `r` (with `b * r <= permutations`) minimising a weighted
//!   sum of the false-positive area below the threshold and the false-negative area above it,
//!   as `datasketch` does, but weighting misses 9 to 1: candidates are verified (a document is
//!   a near duplicate only if its estimated similarity with the best candidate reaches the
//!   threshold), so a false candidate costs one signature comparison while a missed candidate
//!   is a duplicate kept. For the defaults (threshold 0.8, 128 permutations) this gives
//!   `b = 14, r = 9`, with `P(0.5) = 0.03, P(0.7) = 0.44, P(0.8) = 0.87, P(0.85) = 0.975,
//!   P(0.9) = 0.999` (the `default_s_curve` test pins the curve); equal weights would give
//!   `b = 9, r = 13` and find only 40 % of the pairs at exactly the threshold.
//!
//! Memory per retained document is its signature (`4 * permutations` bytes), one bucket entry
//! and one chain link per band, its digest and its id: under 1 KiB with the defaults, whatever
//! the document's length (about 1 GiB per million unique documents is the planning figure).
//! `memory_budget_bytes` caps it: once the retained state would exceed the budget, later
//! documents are still checked against everything retained but no longer added, and the report
//! says from which document on (`index_full_at`), so an ingest's memory stays bounded whatever
//! the input size.
//!
//! Note what a threshold means: editing a fraction `e` of the words changes up to `shingle`
//! shingles per edit, so the shingle Jaccard similarity falls roughly like
//! `(1 - e)^k / (2 - (1 - e)^k)` for shingle size `k`. With 5-word shingles a 5 % edit leaves
//! a similarity near 0.65, below the default 0.8: such copies are caught with a lower threshold
//! or shorter shingles (for example 3-word shingles at 0.5), not by the defaults.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::hash::{digest128, hash_with_seed, SplitMix64, SEED_BAND, SEED_SHINGLE};
use crate::normalize::normalize_into;

/// Seed of the permutation coefficients; fixed so that signatures are stable.
const PERMUTATION_SEED: u64 = 0x005e_ed0f_d0d0;
/// Upper bound on `permutations`, to keep the per-document memory bounded.
pub const MAX_PERMUTATIONS: usize = 1024;
/// Candidates verified per band bucket: a bucket shared by many retained (hence mutually
/// dissimilar) documents would otherwise make one check cost as much as the whole index.
const MAX_CHAIN: usize = 64;
/// Weights of the false-positive and false-negative areas when choosing bands and rows (see
/// the module documentation for why misses weigh more).
const FALSE_POSITIVE_WEIGHT: f64 = 0.1;
const FALSE_NEGATIVE_WEIGHT: f64 = 0.9;
const NO_LINK: u32 = u32::MAX;

/// What to detect and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DedupOptions {
    /// Detect copies that are equal after normalisation.
    pub exact: bool,
    /// Detect copies whose estimated shingle Jaccard similarity reaches `threshold`.
    pub near: bool,
    /// Jaccard similarity threshold in (0, 1].
    pub threshold: f64,
    /// Words per shingle.
    pub shingle: usize,
    /// MinHash signature length.
    pub permutations: usize,
    /// LSH bands; 0 chooses them from the threshold ([`lsh_parameters`]). Rows per band are
    /// `permutations / bands`.
    pub bands: usize,
    /// Most bytes of retained state; past it no further document is remembered.
    pub memory_budget_bytes: usize,
}

impl Default for DedupOptions {
    fn default() -> Self {
        Self {
            exact: true,
            near: true,
            threshold: 0.8,
            shingle: 5,
            permutations: 128,
            bands: 0,
            memory_budget_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum DedupError {
    #[error("threshold must be in (0, 1], got {0}")]
    Threshold(f64),
    #[error("shingle must be at least 1 word")]
    Shingle,
    #[error("permutations must be in 1..={MAX_PERMUTATIONS}, got {0}")]
    Permutations(usize),
    #[error("bands ({bands}) must not exceed permutations ({permutations})")]
    Bands { bands: usize, permutations: usize },
}

/// The verdict for one document. Ids are assigned to every checked document in order, from 0;
/// `of` is always the id of a retained (unique) document.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum DedupVerdict {
    Unique,
    ExactDuplicate { of: u64 },
    NearDuplicate { of: u64, similarity_estimate: f64 },
}

/// Counts of verdicts and the parameters that produced them, for the data set manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DedupReport {
    pub options: DedupOptions,
    /// The bands and rows per band actually used.
    pub bands: usize,
    pub rows: usize,
    pub checked: u64,
    pub unique: u64,
    pub exact_duplicates: u64,
    pub near_duplicates: u64,
    /// The first document not remembered because the memory budget was reached; documents
    /// from there on were compared with the earlier ones but not with each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_full_at: Option<u64>,
}

/// Probability that two documents of Jaccard similarity `s` share at least one of `bands`
/// bands of `rows` rows: `1 - (1 - s^rows)^bands`.
pub fn candidate_probability(similarity: f64, bands: usize, rows: usize) -> f64 {
    let band_match = similarity.clamp(0.0, 1.0).powi(rows as i32);
    1.0 - (1.0 - band_match).powi(bands as i32)
}

/// Chooses `(bands, rows)` with `bands * rows <= permutations` minimising
/// `0.1 * integral_0^t P(s) ds + 0.9 * integral_t^1 (1 - P(s)) ds` (trapezoid rule).
pub fn lsh_parameters(threshold: f64, permutations: usize) -> (usize, usize) {
    const STEPS: usize = 200;
    let integrate = |from: f64, to: f64, f: &dyn Fn(f64) -> f64| -> f64 {
        if to <= from {
            return 0.0;
        }
        let h = (to - from) / STEPS as f64;
        let inner: f64 = (1..STEPS).map(|i| f(from + h * i as f64)).sum();
        h * (0.5 * f(from) + inner + 0.5 * f(to))
    };
    let mut best = (1, permutations.max(1));
    let mut best_error = f64::INFINITY;
    for bands in 1..=permutations.max(1) {
        for rows in 1..=permutations / bands {
            let false_positive = integrate(0.0, threshold, &|s| candidate_probability(s, bands, rows));
            let false_negative = integrate(threshold, 1.0, &|s| 1.0 - candidate_probability(s, bands, rows));
            let error = FALSE_POSITIVE_WEIGHT * false_positive + FALSE_NEGATIVE_WEIGHT * false_negative;
            if error < best_error {
                best_error = error;
                best = (bands, rows);
            }
        }
    }
    best
}

/// What [`Deduplicator::check_fingerprint`] needs of a document: its exact digest and its
/// MinHash signature with band keys. Computing it is most of the cost of a check and touches
/// no shared state, so the ingest pipeline computes fingerprints on its reader thread.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    digest: Option<u128>,
    signature: Vec<u32>,
    keys: Vec<u64>,
}

/// Computes fingerprints with a deduplicator's parameters; cheap to clone and share.
#[derive(Debug, Clone)]
pub struct Fingerprinter {
    exact: bool,
    near: bool,
    shingle: usize,
    bands: usize,
    rows: usize,
    /// `(a_i, b_i)` of each MinHash permutation.
    coefficients: std::sync::Arc<Vec<(u64, u64)>>,
}

/// Streaming deduplicator; see the module documentation.
#[derive(Debug, Clone)]
pub struct Deduplicator {
    options: DedupOptions,
    bands: usize,
    rows: usize,
    fingerprinter: Fingerprinter,
    /// Normalised-text digest -> id of the retained document.
    digests: HashMap<u128, u64>,
    /// Retained signatures, `permutations` entries each, back to back.
    signatures: Vec<u32>,
    /// Id of each retained signature.
    signature_ids: Vec<u64>,
    /// Per band: bucket key -> most recent retained signature with that key.
    buckets: Vec<nohash_hasher::IntMap<u64, u32>>,
    /// Per retained signature and band: the previous signature in the same bucket, or
    /// `NO_LINK` (a linked list through `buckets`, so a bucket costs no allocation of its own).
    chains: Vec<u32>,
    next_id: u64,
    unique: u64,
    exact_duplicates: u64,
    near_duplicates: u64,
    /// Estimated bytes of retained state per remembered document.
    bytes_per_document: usize,
    retained_bytes: usize,
    index_full_at: Option<u64>,
}

impl Deduplicator {
    pub fn new(options: DedupOptions) -> Result<Self, DedupError> {
        if !(options.threshold > 0.0 && options.threshold <= 1.0) {
            return Err(DedupError::Threshold(options.threshold));
        }
        if options.shingle == 0 {
            return Err(DedupError::Shingle);
        }
        if options.permutations == 0 || options.permutations > MAX_PERMUTATIONS {
            return Err(DedupError::Permutations(options.permutations));
        }
        if options.bands > options.permutations {
            return Err(DedupError::Bands { bands: options.bands, permutations: options.permutations });
        }
        let (bands, rows) = if options.bands == 0 {
            lsh_parameters(options.threshold, options.permutations)
        } else {
            (options.bands, options.permutations / options.bands)
        };
        let mut random = SplitMix64::new(PERMUTATION_SEED);
        let coefficients = (0..options.permutations)
            .map(|_| {
                let a = random.next_u64() | 1;
                let b = random.next_u64();
                (a, b)
            })
            .collect::<Vec<_>>();
        let fingerprinter = Fingerprinter {
            exact: options.exact,
            near: options.near,
            shingle: options.shingle,
            bands,
            rows,
            coefficients: std::sync::Arc::new(coefficients),
        };
        Ok(Self {
            bands,
            rows,
            fingerprinter,
            digests: HashMap::new(),
            signatures: Vec::new(),
            signature_ids: Vec::new(),
            buckets: vec![Default::default(); bands],
            chains: Vec::new(),
            next_id: 0,
            unique: 0,
            exact_duplicates: 0,
            near_duplicates: 0,
            // Signature, id, and per band a bucket entry (key, slot, hash-table slack) and a
            // chain link; the exact digest map's entry with its slack.
            bytes_per_document: options_cost(&options, bands),
            retained_bytes: 0,
            index_full_at: None,
            options,
        })
    }

    pub fn options(&self) -> &DedupOptions {
        &self.options
    }

    /// The fingerprinter for [`Deduplicator::check_fingerprint`].
    pub fn fingerprinter(&self) -> Fingerprinter {
        self.fingerprinter.clone()
    }

    /// Checks the next document (its id is the number of documents checked before it).
    /// Unique documents are remembered (within the memory budget); duplicates are not.
    pub fn check(&mut self, text: &str) -> DedupVerdict {
        let fingerprint = self.fingerprinter.fingerprint(text);
        self.check_fingerprint(&fingerprint)
    }

    /// [`Deduplicator::check`] for a fingerprint computed by this deduplicator's fingerprinter.
    pub fn check_fingerprint(&mut self, fingerprint: &Fingerprint) -> DedupVerdict {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(&of) = fingerprint.digest.and_then(|d| self.digests.get(&d)) {
            self.exact_duplicates += 1;
            return DedupVerdict::ExactDuplicate { of };
        }
        let remember = self.retained_bytes + self.bytes_per_document <= self.options.memory_budget_bytes;
        if !remember && self.index_full_at.is_none() {
            self.index_full_at = Some(id);
        }
        if self.options.near {
            if let Some((of, similarity_estimate)) = self.best_candidate(&fingerprint.signature, &fingerprint.keys) {
                self.near_duplicates += 1;
                return DedupVerdict::NearDuplicate { of, similarity_estimate };
            }
            if remember {
                self.index(id, &fingerprint.signature, &fingerprint.keys);
            }
        }
        if let (Some(digest), true) = (fingerprint.digest, remember) {
            self.digests.insert(digest, id);
        }
        if remember {
            self.retained_bytes += self.bytes_per_document;
        }
        self.unique += 1;
        DedupVerdict::Unique
    }

    pub fn report(&self) -> DedupReport {
        DedupReport {
            options: self.options.clone(),
            bands: self.bands,
            rows: self.rows,
            checked: self.next_id,
            unique: self.unique,
            exact_duplicates: self.exact_duplicates,
            near_duplicates: self.near_duplicates,
            index_full_at: self.index_full_at,
        }
    }

    /// The retained document most similar to `signature` among its band candidates, if its
    /// estimated similarity reaches the threshold.
    fn best_candidate(&self, signature: &[u32], keys: &[u64]) -> Option<(u64, f64)> {
        let mut candidates: Vec<u32> = Vec::new();
        for (band, key) in keys.iter().enumerate() {
            let mut link = self.buckets.get(band).and_then(|b| b.get(key)).copied();
            let mut walked = 0;
            while let Some(slot) = link.filter(|&s| s != NO_LINK) {
                if walked == MAX_CHAIN {
                    break;
                }
                candidates.push(slot);
                walked += 1;
                link = self.chains.get(slot as usize * self.bands + band).copied();
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        let permutations = self.fingerprinter.coefficients.len();
        let mut best: Option<(u64, f64)> = None;
        for slot in candidates {
            let start = slot as usize * permutations;
            let Some(other) = self.signatures.get(start..start + permutations) else {
                continue;
            };
            let equal = signature.iter().zip(other).filter(|(a, b)| a == b).count();
            let similarity = equal as f64 / permutations as f64;
            let id = self.signature_ids.get(slot as usize).copied().unwrap_or(0);
            if similarity >= self.options.threshold && best.is_none_or(|(_, s)| similarity > s) {
                best = Some((id, similarity));
            }
        }
        best
    }

    fn index(&mut self, id: u64, signature: &[u32], keys: &[u64]) {
        let Ok(slot) = u32::try_from(self.signature_ids.len()) else {
            // Past 4 billion retained documents the index stops growing; later documents are
            // still checked against what it holds.
            return;
        };
        if slot == NO_LINK {
            return;
        }
        self.signatures.extend_from_slice(signature);
        self.signature_ids.push(id);
        for (band, &key) in keys.iter().enumerate() {
            let previous = self.buckets.get_mut(band).and_then(|bucket| bucket.insert(key, slot)).unwrap_or(NO_LINK);
            self.chains.push(previous);
        }
    }
}

impl Fingerprinter {
    pub fn fingerprint(&self, text: &str) -> Fingerprint {
        let mut joined = String::with_capacity(text.len());
        let mut bounds = Vec::new();
        normalize_into(text, &mut joined, &mut bounds);
        let digest = self.exact.then(|| digest128(joined.as_bytes()));
        let (signature, keys) = if self.near {
            let signature = self.signature(&joined, &bounds);
            let keys = self.band_keys(&signature);
            (signature, keys)
        } else {
            (Vec::new(), Vec::new())
        };
        Fingerprint { digest, signature, keys }
    }

    /// MinHash signature of the document's word shingles: each shingle is the slice of
    /// `joined` from its first token's start to its last token's end, so it is hashed in place.
    /// A document shorter than one shingle is a single shingle of all its words, so short
    /// texts still compare.
    fn signature(&self, joined: &str, bounds: &[(usize, usize)]) -> Vec<u32> {
        let mut minimums = vec![u32::MAX; self.coefficients.len()];
        let k = self.shingle.min(bounds.len()).max(1);
        let shingles = bounds.len().saturating_sub(k) + 1;
        for first in 0..shingles {
            let shingle = match (bounds.get(first), bounds.get(first + k - 1)) {
                (Some(&(start, _)), Some(&(_, end))) => &joined[start..end],
                _ => "",
            };
            let hash = hash_with_seed(shingle.as_bytes(), SEED_SHINGLE);
            let x = (hash ^ (hash >> 32)) & 0xffff_ffff;
            for (minimum, &(a, b)) in minimums.iter_mut().zip(self.coefficients.iter()) {
                let value = (a.wrapping_mul(x).wrapping_add(b) >> 32) as u32;
                if value < *minimum {
                    *minimum = value;
                }
            }
        }
        minimums
    }

    fn band_keys(&self, signature: &[u32]) -> Vec<u64> {
        let mut bytes = Vec::with_capacity(self.rows * 4);
        (0..self.bands)
            .map(|band| {
                bytes.clear();
                let rows = signature.iter().skip(band * self.rows).take(self.rows);
                for value in rows {
                    bytes.extend_from_slice(&value.to_le_bytes());
                }
                hash_with_seed(&bytes, SEED_BAND.wrapping_add(band as u64))
            })
            .collect()
    }
}

fn options_cost(options: &DedupOptions, bands: usize) -> usize {
    let near = if options.near { options.permutations * 4 + 8 + bands * (16 + 4) } else { 0 };
    let exact = if options.exact { 48 } else { 0 };
    near + exact
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAGRAPH: &str = "The old lady pulled her spectacles down and looked over them about \
        the room; then she put them up and looked out under them. She seldom or never looked \
        through them for so small a thing as a boy; they were her state pair, the pride of her \
        heart, and were built for style, not service. She could have seen through a pair of \
        stove-lids just as well. She looked perplexed for a moment, and then said, not fiercely, \
        but still loud enough for the furniture to hear: Well, I lay if I get hold of you I will \
        hunt about the place and look under the bed, said the lady as she bent down.";

    fn dedup() -> Deduplicator {
        Deduplicator::new(DedupOptions::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn default_s_curve() {
        let (bands, rows) = lsh_parameters(0.8, 128);
        assert_eq!((bands, rows), (14, 9));
        let p = |s| candidate_probability(s, bands, rows);
        // Dissimilar pairs are almost never compared; pairs at or above the threshold almost
        // always are, and the verification step decides.
        assert!(p(0.3) < 1e-3);
        assert!(p(0.5) < 0.03);
        assert!(p(0.7) > 0.4 && p(0.7) < 0.5);
        assert!(p(0.8) > 0.85);
        assert!(p(0.85) > 0.97);
        assert!(p(0.9) > 0.998);
    }

    #[test]
    fn options_are_validated() {
        let with = |f: fn(&mut DedupOptions)| {
            let mut options = DedupOptions::default();
            f(&mut options);
            Deduplicator::new(options).err()
        };
        assert_eq!(with(|o| o.threshold = 0.0), Some(DedupError::Threshold(0.0)));
        assert_eq!(with(|o| o.shingle = 0), Some(DedupError::Shingle));
        assert_eq!(with(|o| o.permutations = 0), Some(DedupError::Permutations(0)));
        assert_eq!(with(|o| o.bands = 200), Some(DedupError::Bands { bands: 200, permutations: 128 }));
        let explicit = DedupOptions { bands: 16, ..DedupOptions::default() };
        let report = Deduplicator::new(explicit).map(|d| d.report());
        assert_eq!(report.map(|r| (r.bands, r.rows)), Ok((16, 8)));
    }

    #[test]
    fn exact_duplicates_ignore_case_whitespace_and_punctuation() {
        let mut d = dedup();
        assert_eq!(d.check("Hello,   World! How are you?"), DedupVerdict::Unique);
        assert_eq!(d.check("something else entirely, really"), DedupVerdict::Unique);
        assert_eq!(d.check("hello world\n how ARE you"), DedupVerdict::ExactDuplicate { of: 0 });
        assert_eq!(d.check("  »HELLO   world«  how are YOU!!  "), DedupVerdict::ExactDuplicate { of: 0 });
        let report = d.report();
        assert_eq!((report.checked, report.unique, report.exact_duplicates), (4, 2, 2));
    }

    #[test]
    fn a_few_changed_words_make_a_near_duplicate() {
        let mut d = dedup();
        assert_eq!(d.check(PARAGRAPH), DedupVerdict::Unique);
        // One word changed: 5 of 111 shingles differ, true Jaccard 0.91, several standard
        // errors of a 128-permutation estimate above the 0.8 threshold.
        let edited = PARAGRAPH.replace("spectacles", "glasses");
        match d.check(&edited) {
            DedupVerdict::NearDuplicate { of, similarity_estimate } => {
                assert_eq!(of, 0);
                assert!(similarity_estimate >= 0.8, "{similarity_estimate}");
            }
            other => panic!("expected a near duplicate, got {other:?}"),
        }
        assert_eq!(d.report().near_duplicates, 1);
    }

    #[test]
    fn unrelated_and_short_texts() {
        let mut d = dedup();
        assert_eq!(d.check(PARAGRAPH), DedupVerdict::Unique);
        assert_eq!(
            d.check("Es war einmal ein König, der hatte drei Töchter und einen großen Garten."),
            DedupVerdict::Unique
        );
        // Shorter than one shingle: compared as one shingle of all words.
        assert_eq!(d.check("yes indeed"), DedupVerdict::Unique);
        let only_near = DedupOptions { exact: false, ..DedupOptions::default() };
        let mut near = Deduplicator::new(only_near).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(near.check("Yes, indeed."), DedupVerdict::Unique);
        assert_eq!(near.check("yes indeed"), DedupVerdict::NearDuplicate { of: 0, similarity_estimate: 1.0 });
        assert_eq!(near.check(""), DedupVerdict::Unique);
    }

    #[test]
    fn disabled_detection_keeps_everything() {
        let options = DedupOptions { exact: false, near: false, ..DedupOptions::default() };
        let mut d = Deduplicator::new(options).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.check(PARAGRAPH), DedupVerdict::Unique);
        assert_eq!(d.check(PARAGRAPH), DedupVerdict::Unique);
        assert_eq!(d.report().unique, 2);
    }

    #[test]
    fn the_memory_budget_stops_remembering_but_not_checking() {
        let probe = Deduplicator::new(DedupOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let budget = probe.bytes_per_document * 2;
        let options = DedupOptions { memory_budget_bytes: budget, ..DedupOptions::default() };
        let mut d = Deduplicator::new(options).unwrap_or_else(|e| panic!("{e}"));
        let docs =
            ["first distinct document about apples and pears", "second distinct document about rivers and hills"];
        assert_eq!(d.check(docs[0]), DedupVerdict::Unique);
        assert_eq!(d.check(docs[1]), DedupVerdict::Unique);
        let third = "third distinct document about ships and harbours";
        assert_eq!(d.check(third), DedupVerdict::Unique, "over budget: checked, not remembered");
        assert_eq!(d.check(docs[1]), DedupVerdict::ExactDuplicate { of: 1 }, "remembered ones still match");
        assert_eq!(d.check(third), DedupVerdict::Unique, "the unremembered one cannot match");
        let report = d.report();
        assert_eq!(report.index_full_at, Some(2));
        assert!(d.retained_bytes <= budget);
    }

    #[test]
    fn verdicts_and_reports_serialize() {
        let verdict = DedupVerdict::NearDuplicate { of: 3, similarity_estimate: 0.875 };
        let json = serde_json::to_value(verdict).unwrap_or_default();
        assert_eq!(json, serde_json::json!({"verdict": "near_duplicate", "of": 3, "similarity_estimate": 0.875}));
        let report = dedup().report();
        let text = serde_json::to_string(&report).unwrap_or_default();
        let back: Result<DedupReport, _> = serde_json::from_str(&text);
        assert_eq!(back.ok(), Some(report));
    }
}
