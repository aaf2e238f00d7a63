//! Streaming profile of one column of a data set.
//!
//! The ingest pipeline sees a data set once, as a stream of values column by column, possibly
//! split over shards profiled in parallel. A [`ColumnProfiler`] therefore holds only bounded,
//! mergeable sketches: HyperLogLog for distinct values ([`crate::hll`]), Welford moments and a
//! DDSketch for numbers and string lengths ([`crate::numeric`]), and Space-Saving for frequent
//! values ([`crate::topk`]). Its memory does not grow with the number of rows (at most 12 KiB
//! for the distinct sketch, a few KiB for each distribution, and 64 labels of at most 128
//! characters), and [`ColumnProfiler::merge`] combines shards exactly as far as each sketch
//! allows.
//!
//! The profiler accepts every kind of value whatever its declared [`ColumnType`], because real
//! data sets are messy: values of another kind are profiled too and counted in
//! `unexpected_kind`, which tells the data owner that the declared type does not hold.

use serde::{Deserialize, Serialize};

use crate::hash::{hash_bool, hash_f64, hash_i64, hash_str};
use crate::hll::HyperLogLog;
use crate::numeric::{NumericAccumulator, NumericSummary};
use crate::topk::{truncate_label, SpaceSaving, MAX_LABEL_CHARS};

/// Counters kept by the frequent-value summary; more than are reported, so that the reported
/// top values carry small error bounds.
const TOP_CAPACITY: usize = 64;
/// Frequent values reported per column.
pub const TOP_VALUES: usize = 20;

/// The logical type the data set's schema declares for a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    Boolean,
    Integer,
    Float,
    String,
    /// Profiled as a string: formats vary too much between sources to parse here.
    Timestamp,
    Other,
}

/// Which observation method a value arrived through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Int,
    Float,
    Str,
}

impl ColumnType {
    fn expects(self, kind: Kind) -> bool {
        match self {
            ColumnType::Boolean => kind == Kind::Bool,
            // An integer column may legitimately arrive as floats from some formats, but not
            // the other way round.
            ColumnType::Integer => kind == Kind::Int,
            ColumnType::Float => matches!(kind, Kind::Float | Kind::Int),
            ColumnType::String | ColumnType::Timestamp => kind == Kind::Str,
            ColumnType::Other => true,
        }
    }
}

/// Incremental profiler for one column; see the module documentation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColumnProfiler {
    column_type: ColumnType,
    /// Non-null values observed.
    values: u64,
    nulls: u64,
    unexpected_kind: u64,
    distinct: HyperLogLog,
    numbers: NumericAccumulator,
    trues: u64,
    falses: u64,
    strings: u64,
    empty_strings: u64,
    string_lengths: NumericAccumulator,
    top: SpaceSaving,
}

/// The finished profile of a column, embedded in the data set manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnProfile {
    pub column_type: ColumnType,
    /// Rows observed, nulls included.
    pub count: u64,
    pub nulls: u64,
    /// `nulls / count` (0 for an empty column).
    pub null_fraction: f64,
    /// Estimated distinct non-null values (HyperLogLog, about 1.2 % standard error; never more
    /// than the non-null count).
    pub distinct_estimate: u64,
    /// Values whose kind does not match `column_type`.
    pub unexpected_kind: u64,
    /// Integers and floats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numeric: Option<NumericSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booleans: Option<BooleanSummary>,
    /// Strings (and timestamps): counts and the distribution of lengths in characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strings: Option<StringSummary>,
    /// Up to [`TOP_VALUES`] values (strings, timestamps, booleans, integers) guaranteed to occur
    /// at least twice, most frequent first. Empty for a column of unique values such as
    /// identifiers.
    pub top_values: Vec<FrequentValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BooleanSummary {
    pub true_count: u64,
    pub false_count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StringSummary {
    pub count: u64,
    pub empty: u64,
    /// Lengths in Unicode scalar values (characters), not bytes.
    pub length: NumericSummary,
}

/// A frequent value with Space-Saving bounds: the true count lies in
/// `[count - max_error, count]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrequentValue {
    /// The value as text, cut to 128 characters (`truncated` says so).
    pub value: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    pub count: u64,
    pub max_error: u64,
}

/// Appended to a truncated label, so the report can say so without a flag per counter.
const TRUNCATED_MARK: char = '\u{2026}';

fn label_for(value: &str) -> String {
    let (mut label, truncated) = truncate_label(value);
    if truncated {
        label.push(TRUNCATED_MARK);
    }
    label
}

impl ColumnProfiler {
    pub fn new(column_type: ColumnType) -> Self {
        Self {
            column_type,
            values: 0,
            nulls: 0,
            unexpected_kind: 0,
            distinct: HyperLogLog::default(),
            numbers: NumericAccumulator::default(),
            trues: 0,
            falses: 0,
            strings: 0,
            empty_strings: 0,
            string_lengths: NumericAccumulator::default(),
            top: SpaceSaving::new(TOP_CAPACITY),
        }
    }

    pub fn column_type(&self) -> ColumnType {
        self.column_type
    }

    fn kind(&mut self, kind: Kind) {
        self.values += 1;
        if !self.column_type.expects(kind) {
            self.unexpected_kind += 1;
        }
    }

    pub fn observe_null(&mut self) {
        self.nulls += 1;
    }

    pub fn observe_bool(&mut self, value: bool) {
        self.kind(Kind::Bool);
        let hash = hash_bool(value);
        self.distinct.insert_hash(hash);
        if value {
            self.trues += 1;
        } else {
            self.falses += 1;
        }
        self.top.offer(hash, || value.to_string());
    }

    pub fn observe_i64(&mut self, value: i64) {
        self.kind(Kind::Int);
        let hash = hash_i64(value);
        self.distinct.insert_hash(hash);
        self.numbers.push_i64(value);
        self.top.offer(hash, || value.to_string());
    }

    /// Floats are not offered to the frequent-value summary: repeated exact floats are rare and
    /// the histogram already shows where they concentrate.
    pub fn observe_f64(&mut self, value: f64) {
        self.kind(Kind::Float);
        self.distinct.insert_hash(hash_f64(value));
        self.numbers.push_f64(value);
    }

    pub fn observe_str(&mut self, value: &str) {
        self.kind(Kind::Str);
        let hash = hash_str(value);
        self.distinct.insert_hash(hash);
        self.strings += 1;
        if value.is_empty() {
            self.empty_strings += 1;
        }
        self.string_lengths.push_i64(value.chars().count() as i64);
        self.top.offer(hash, || label_for(value));
    }

    /// Adds another shard's observations of the same column. The declared type stays this
    /// profiler's; the other shard's `unexpected_kind` was judged against its own type.
    pub fn merge(&mut self, other: ColumnProfiler) {
        self.values += other.values;
        self.nulls += other.nulls;
        self.unexpected_kind += other.unexpected_kind;
        self.distinct.merge(&other.distinct);
        self.numbers.merge(&other.numbers);
        self.trues += other.trues;
        self.falses += other.falses;
        self.strings += other.strings;
        self.empty_strings += other.empty_strings;
        self.string_lengths.merge(&other.string_lengths);
        self.top.merge(&other.top);
    }

    pub fn finish(&self) -> ColumnProfile {
        let booleans = self.trues + self.falses;
        let non_null = self.values;
        let count = non_null + self.nulls;
        let distinct = self.distinct.estimate().round() as u64;
        let distinct_estimate = if non_null == 0 { 0 } else { distinct.clamp(1, non_null) };
        let top_values = self
            .top
            .ranked()
            .into_iter()
            .filter(|c| c.count - c.error >= 2)
            .take(TOP_VALUES)
            .map(|c| {
                // Only a truncated label is longer than the limit (by its marker).
                let truncated = c.label.chars().count() > MAX_LABEL_CHARS;
                let mut value = c.label.clone();
                if truncated {
                    value.pop();
                }
                FrequentValue { value, truncated, count: c.count, max_error: c.error }
            })
            .collect();
        ColumnProfile {
            column_type: self.column_type,
            count,
            nulls: self.nulls,
            null_fraction: if count == 0 { 0.0 } else { self.nulls as f64 / count as f64 },
            distinct_estimate,
            unexpected_kind: self.unexpected_kind,
            numeric: (!self.numbers.is_empty()).then(|| self.numbers.summary()),
            booleans: (booleans > 0).then_some(BooleanSummary { true_count: self.trues, false_count: self.falses }),
            strings: (self.strings > 0).then(|| StringSummary {
                count: self.strings,
                empty: self.empty_strings,
                length: self.string_lengths.summary(),
            }),
            top_values,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> ColumnProfiler {
        let mut p = ColumnProfiler::new(ColumnType::String);
        values.iter().for_each(|v| p.observe_str(v));
        p
    }

    #[test]
    fn integer_column_with_nulls() {
        let mut p = ColumnProfiler::new(ColumnType::Integer);
        for i in 0..1000i64 {
            if i % 10 == 0 {
                p.observe_null();
            } else {
                p.observe_i64(i % 50);
            }
        }
        let profile = p.finish();
        assert_eq!((profile.count, profile.nulls), (1000, 100));
        assert!((profile.null_fraction - 0.1).abs() < 1e-12);
        assert_eq!(profile.distinct_estimate, 45);
        assert_eq!(profile.unexpected_kind, 0);
        let numeric = profile.numeric.unwrap_or_else(|| panic!("numeric summary"));
        assert_eq!(numeric.count, 900);
        assert_eq!((numeric.integer_min, numeric.integer_max), (Some(1), Some(49)));
        assert!(profile.strings.is_none() && profile.booleans.is_none());
        // 45 values, 20 occurrences each: all exact, the top 20 reported.
        assert_eq!(profile.top_values.len(), TOP_VALUES);
        assert!(profile.top_values.iter().all(|v| v.count == 20 && v.max_error == 0));
    }

    #[test]
    fn low_cardinality_strings_report_frequent_values_and_lengths() {
        let mut values = Vec::new();
        for i in 0..300 {
            values.push(match i % 6 {
                0..=2 => "DE",
                3 | 4 => "FR",
                _ => "",
            });
        }
        let profile = strings(&values).finish();
        assert_eq!(profile.distinct_estimate, 3);
        let top: Vec<(&str, u64)> = profile.top_values.iter().map(|v| (v.value.as_str(), v.count)).collect();
        assert_eq!(top, vec![("DE", 150), ("FR", 100), ("", 50)]);
        let s = profile.strings.unwrap_or_else(|| panic!("string summary"));
        assert_eq!((s.count, s.empty), (300, 50));
        assert_eq!((s.length.min, s.length.max), (0.0, 2.0));
        assert!((s.length.mean - 250.0 * 2.0 / 300.0).abs() < 1e-9);
    }

    #[test]
    fn unique_identifiers_have_no_frequent_values() {
        let mut p = ColumnProfiler::new(ColumnType::String);
        for i in 0..20_000 {
            p.observe_str(&format!("user-{i:08}"));
        }
        let profile = p.finish();
        assert!(profile.top_values.is_empty(), "{:?}", profile.top_values);
        let error = (profile.distinct_estimate as f64 - 20_000.0).abs() / 20_000.0;
        assert!(error < 0.035, "distinct {}", profile.distinct_estimate);
    }

    #[test]
    fn long_values_are_truncated_in_reports() {
        let long = "x".repeat(500);
        let profile = strings(&[&long, &long]).finish();
        assert_eq!(profile.top_values.len(), 1);
        let value = &profile.top_values[0];
        assert!(value.truncated);
        assert_eq!(value.value.chars().count(), MAX_LABEL_CHARS);
        assert_eq!(profile.strings.map(|s| s.length.max), Some(500.0));
    }

    #[test]
    fn booleans_floats_and_unexpected_kinds() {
        let mut p = ColumnProfiler::new(ColumnType::Boolean);
        for i in 0..10 {
            p.observe_bool(i % 3 == 0);
        }
        p.observe_str("yes");
        let profile = p.finish();
        assert_eq!(profile.booleans, Some(BooleanSummary { true_count: 4, false_count: 6 }));
        assert_eq!(profile.unexpected_kind, 1);
        assert_eq!(profile.distinct_estimate, 3);

        let mut f = ColumnProfiler::new(ColumnType::Float);
        for x in [1.5, -2.0, f64::NAN, f64::INFINITY, 0.0, -0.0] {
            f.observe_f64(x);
        }
        f.observe_i64(3);
        let profile = f.finish();
        assert_eq!(profile.unexpected_kind, 0);
        // 0.0 and -0.0 are one value.
        assert_eq!(profile.distinct_estimate, 6);
        let numeric = profile.numeric.unwrap_or_else(|| panic!("numeric summary"));
        assert_eq!((numeric.count, numeric.non_finite), (5, 2));
        assert_eq!((numeric.min, numeric.max), (-2.0, 3.0));
        assert!(profile.top_values.is_empty());
    }

    #[test]
    fn merged_shards_match_a_single_pass() {
        let mut whole = ColumnProfiler::new(ColumnType::Float);
        let mut shards = vec![ColumnProfiler::new(ColumnType::Float); 4];
        for i in 0..40_000i64 {
            let x = (i as f64 * 0.37).sin() * 1000.0 + (i % 7) as f64;
            whole.observe_f64(x);
            shards[(i % 4) as usize].observe_f64(x);
            if i % 97 == 0 {
                whole.observe_null();
                shards[(i % 4) as usize].observe_null();
            }
        }
        let mut merged = ColumnProfiler::new(ColumnType::Float);
        for shard in shards {
            merged.merge(shard);
        }
        let (a, b) = (whole.finish(), merged.finish());
        assert_eq!((a.count, a.nulls, a.distinct_estimate), (b.count, b.nulls, b.distinct_estimate));
        let (na, nb) = (a.numeric.unwrap_or_else(|| panic!("numeric")), b.numeric.unwrap_or_else(|| panic!("numeric")));
        assert!((na.mean - nb.mean).abs() < 1e-9);
        assert!((na.std_dev - nb.std_dev).abs() < 1e-9);
        assert_eq!((na.min, na.max), (nb.min, nb.max));
        assert_eq!(na.histogram, nb.histogram);
        assert_eq!(na.quantiles, nb.quantiles);
    }

    #[test]
    fn profiler_and_profile_survive_json() {
        let mut p = strings(&["a", "b", "a", "c", "a"]);
        p.observe_i64(-4);
        p.observe_null();
        let json = serde_json::to_string(&p).unwrap_or_default();
        let mut back: ColumnProfiler = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.finish(), p.finish());
        back.observe_str("a");
        p.observe_str("a");
        assert_eq!(back.finish(), p.finish());
        let profile = p.finish();
        let text = serde_json::to_string(&profile).unwrap_or_default();
        let again: ColumnProfile = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, profile);
        assert!(text.contains("\"column_type\":\"string\""), "{text}");
    }
}
