//! The PII report of an ingest: how many values of each kind each column held.
//!
//! The pipeline scans shards in parallel, each into its own `PiiReport`, and merges them at the
//! end; counts are sums, so the merge order does not matter. Maps are `BTreeMap`s so the
//! serialised report (stored with the dataset version, shown to the data owner) is byte-for-byte
//! the same for the same data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Detector, PiiKind, Span};

/// Counts of detected spans per column and kind name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PiiReport {
    columns: BTreeMap<String, BTreeMap<String, u64>>,
    /// Names of the custom kinds of the detector whose spans this report counts.
    #[serde(skip)]
    custom_names: Vec<String>,
}

impl PiiReport {
    /// An empty report naming custom kinds as `detector` does. ([`PiiReport::default`] names
    /// them `custom_<i>`.)
    pub fn new(detector: &Detector) -> PiiReport {
        PiiReport { columns: BTreeMap::new(), custom_names: detector.custom_names().map(str::to_owned).collect() }
    }

    /// Counts `spans`, found in one value of `column`. A column whose values held no PII does
    /// not appear.
    pub fn observe(&mut self, column: &str, spans: &[Span]) {
        if spans.is_empty() {
            return;
        }
        // Look up by &str first so the column name is allocated once per column, not per value.
        if !self.columns.contains_key(column) {
            self.columns.insert(column.to_owned(), BTreeMap::new());
        }
        let Some(kinds) = self.columns.get_mut(column) else {
            return;
        };
        for span in spans {
            let name = match span.kind {
                PiiKind::Custom(i) => match self.custom_names.get(usize::from(i)) {
                    Some(name) => name.as_str(),
                    None => {
                        *kinds.entry(format!("custom_{i}")).or_default() += 1;
                        continue;
                    }
                },
                builtin => builtin.builtin_name().unwrap_or_default(),
            };
            match kinds.get_mut(name) {
                Some(count) => *count += 1,
                None => {
                    kinds.insert(name.to_owned(), 1);
                }
            }
        }
    }

    /// Adds `other`'s counts to this report.
    pub fn merge(&mut self, other: PiiReport) {
        for (column, kinds) in other.columns {
            let mine = self.columns.entry(column).or_default();
            for (kind, count) in kinds {
                *mine.entry(kind).or_default() += count;
            }
        }
    }

    /// Column -> kind name -> count.
    pub fn columns(&self) -> &BTreeMap<String, BTreeMap<String, u64>> {
        &self.columns
    }

    /// The count for one column and kind name (0 when none were seen).
    pub fn count(&self, column: &str, kind: &str) -> u64 {
        self.columns.get(column).and_then(|kinds| kinds.get(kind)).copied().unwrap_or(0)
    }

    /// Kind name -> count over all columns.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        let mut totals = BTreeMap::new();
        for kinds in self.columns.values() {
            for (kind, count) in kinds {
                *totals.entry(kind.clone()).or_default() += count;
            }
        }
        totals
    }

    /// Whether no PII was observed at all.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    //! Counting, naming custom kinds, merging shards and the serialised shape.

    use super::*;

    fn span(kind: PiiKind) -> Span {
        Span { start: 0, end: 1, kind }
    }

    #[test]
    fn counts_per_column_and_kind() {
        let detector = Detector::new(&[("badge".to_string(), "B-\\d+".to_string())]).unwrap_or_else(|e| panic!("{e}"));
        let mut report = PiiReport::new(&detector);
        report.observe("text", &[span(PiiKind::Email), span(PiiKind::Email)]);
        report.observe("text", &[span(PiiKind::Custom(0)), span(PiiKind::Phone)]);
        report.observe("id", &[]);
        report.observe("note", &[span(PiiKind::Custom(7))]);
        assert_eq!(report.count("text", "email"), 2);
        assert_eq!(report.count("text", "badge"), 1);
        assert_eq!(report.count("text", "phone"), 1);
        assert_eq!(report.count("note", "custom_7"), 1);
        assert_eq!(report.count("id", "email"), 0);
        assert!(!report.columns().contains_key("id"));
    }

    #[test]
    fn merged_shards_equal_one_scan_and_serialise_deterministically() {
        let mut whole = PiiReport::default();
        let mut a = PiiReport::default();
        let mut b = PiiReport::default();
        let rows =
            [("text", PiiKind::Ipv4), ("email", PiiKind::Email), ("text", PiiKind::Card), ("text", PiiKind::Ipv4)];
        for (k, (column, kind)) in rows.iter().enumerate() {
            whole.observe(column, &[span(*kind)]);
            if k % 2 == 0 { &mut a } else { &mut b }.observe(column, &[span(*kind)]);
        }
        let mut merged = PiiReport::default();
        merged.merge(b);
        merged.merge(a);
        assert_eq!(merged.columns(), whole.columns());
        let json = serde_json::to_string(&merged).unwrap_or_default();
        assert_eq!(json, r#"{"columns":{"email":{"email":1},"text":{"card":1,"ipv4":2}}}"#);
        assert_eq!(merged.totals().get("ipv4"), Some(&2));
        assert!(!merged.is_empty());
    }
}
