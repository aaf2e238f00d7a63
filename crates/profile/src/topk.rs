//! Bounded-memory estimates of the most frequent values: the Space-Saving algorithm.
//!
//! Exact frequency tables grow with the number of distinct values. Space-Saving (Metwally,
//! Agrawal and El Abbadi, "Efficient computation of frequent and top-k elements in data
//! streams", 2005) keeps `capacity` counters: a monitored value increments its counter; a new
//! value replaces the value with the smallest counter `min`, inheriting `min + 1` and
//! recording `min` as its possible overestimation. Every value occurring more than
//! `n / capacity` times is guaranteed to be monitored, and each reported count `c` with error
//! `e` satisfies `c - e <= true count <= c`.
//!
//! Counters sit in a binary min-heap indexed by key, so an update or a replacement costs
//! `O(log capacity)` instead of a scan (this matters for the 2,000-counter token table).
//! Values are keyed by their 64-bit hash, and only a label truncated to `MAX_LABEL_CHARS` is
//! stored, so a column of megabyte strings cannot blow the memory bound and two long values that
//! share a prefix are still counted apart.
//!
//! Shards combine with the mergeable-summaries rule (Agarwal, Cormode, Huang, Phillips, Wei and
//! Yi, "Mergeable summaries", 2012; Cafaro et al. for Space-Saving): a value missing from a full
//! summary may have occurred up to that summary's minimum count, so that minimum is added to
//! both its count and its error, and the largest `capacity` counters are kept. The guarantee
//! above holds for the merged summary over the combined stream.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Longest label kept for a monitored value, in characters.
pub(crate) const MAX_LABEL_CHARS: usize = 128;

/// One monitored value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counter {
    pub(crate) key: u64,
    pub(crate) label: String,
    pub(crate) count: u64,
    pub(crate) error: u64,
}

/// The serialized form: the counters only; the position index is rebuilt on load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SpaceSavingState {
    capacity: usize,
    total: u64,
    counters: Vec<Counter>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "SpaceSavingState", into = "SpaceSavingState")]
pub(crate) struct SpaceSaving {
    capacity: usize,
    /// Number of values offered (the stream length `n`).
    total: u64,
    /// Min-heap on `count`.
    heap: Vec<Counter>,
    /// Key (already a hash) -> position in `heap`.
    index: nohash_hasher::IntMap<u64, usize>,
}

impl From<SpaceSavingState> for SpaceSaving {
    fn from(state: SpaceSavingState) -> Self {
        let mut summary = SpaceSaving::new(state.capacity);
        summary.total = state.total;
        summary.rebuild(state.counters);
        summary
    }
}

impl From<SpaceSaving> for SpaceSavingState {
    fn from(summary: SpaceSaving) -> Self {
        SpaceSavingState { capacity: summary.capacity, total: summary.total, counters: summary.heap }
    }
}

/// Cuts a label to `MAX_LABEL_CHARS` characters.
pub(crate) fn truncate_label(value: &str) -> (String, bool) {
    match value.char_indices().nth(MAX_LABEL_CHARS) {
        Some((byte, _)) => (value[..byte].to_owned(), true),
        None => (value.to_owned(), false),
    }
}

impl SpaceSaving {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), total: 0, heap: Vec::new(), index: Default::default() }
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Counts one occurrence of the value with hash `key`; `label` is called only when the
    /// value becomes monitored, so the common case (an already monitored value) allocates
    /// nothing.
    pub(crate) fn offer(&mut self, key: u64, label: impl FnOnce() -> String) {
        self.total += 1;
        if let Some(&position) = self.index.get(&key) {
            if let Some(counter) = self.heap.get_mut(position) {
                counter.count += 1;
            }
            self.sift_down(position);
            return;
        }
        if self.heap.len() < self.capacity {
            self.heap.push(Counter { key, label: label(), count: 1, error: 0 });
            let position = self.heap.len() - 1;
            self.index.insert(key, position);
            self.sift_up(position);
            return;
        }
        // Replace the minimum (the heap's root): the newcomer may have occurred up to `min`
        // times while unmonitored.
        if let Some(root) = self.heap.first_mut() {
            let min = root.count;
            let evicted = std::mem::replace(root, Counter { key, label: label(), count: min + 1, error: min });
            self.index.remove(&evicted.key);
            self.index.insert(key, 0);
            self.sift_down(0);
        }
    }

    /// The smallest count when full, else 0: the most an unmonitored value may have occurred.
    fn floor(&self) -> u64 {
        if self.heap.len() < self.capacity {
            0
        } else {
            self.heap.first().map_or(0, |c| c.count)
        }
    }

    pub(crate) fn merge(&mut self, other: &SpaceSaving) {
        let floor_self = self.floor();
        let floor_other = other.floor();
        let mut combined: HashMap<u64, Counter> = HashMap::with_capacity(self.heap.len());
        for counter in self.heap.drain(..) {
            combined.insert(
                counter.key,
                Counter { count: counter.count + floor_other, error: counter.error + floor_other, ..counter },
            );
        }
        for counter in &other.heap {
            combined
                .entry(counter.key)
                .and_modify(|mine| {
                    // Present in both: the other side's floor was added above, replace it by
                    // the other side's actual counter.
                    mine.count = mine.count - floor_other + counter.count;
                    mine.error = mine.error - floor_other + counter.error;
                })
                .or_insert_with(|| Counter {
                    count: counter.count + floor_self,
                    error: counter.error + floor_self,
                    ..counter.clone()
                });
        }
        self.capacity = self.capacity.max(other.capacity);
        self.total += other.total;
        self.rebuild(combined.into_values().collect());
    }

    /// Keeps the `capacity` largest counters and restores the heap and its index.
    fn rebuild(&mut self, mut counters: Vec<Counter>) {
        counters.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        counters.truncate(self.capacity);
        self.heap = counters;
        self.index = self.heap.iter().enumerate().map(|(i, c)| (c.key, i)).collect();
        for position in (0..self.heap.len() / 2).rev() {
            self.sift_down(position);
        }
    }

    /// Counters sorted by count (descending), ties by label, for reports.
    pub(crate) fn ranked(&self) -> Vec<&Counter> {
        let mut ranked: Vec<&Counter> = self.heap.iter().collect();
        ranked.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.label.cmp(&b.label)));
        ranked
    }

    fn count_at(&self, position: usize) -> u64 {
        self.heap.get(position).map_or(u64::MAX, |c| c.count)
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        for position in [a, b] {
            if let Some(counter) = self.heap.get(position) {
                self.index.insert(counter.key, position);
            }
        }
    }

    fn sift_up(&mut self, mut position: usize) {
        while position > 0 {
            let parent = (position - 1) / 2;
            if self.count_at(parent) <= self.count_at(position) {
                break;
            }
            self.swap(parent, position);
            position = parent;
        }
    }

    fn sift_down(&mut self, mut position: usize) {
        loop {
            let left = 2 * position + 1;
            let right = left + 1;
            let mut smallest = position;
            if self.count_at(left) < self.count_at(smallest) {
                smallest = left;
            }
            if self.count_at(right) < self.count_at(smallest) {
                smallest = right;
            }
            if smallest == position {
                return;
            }
            self.swap(position, smallest);
            position = smallest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hash_str;

    fn offer(summary: &mut SpaceSaving, value: &str) {
        summary.offer(hash_str(value), || value.to_owned());
    }

    /// A Zipf-like stream: value `i` occurs `1000 / (i + 1)` times, interleaved.
    fn stream() -> Vec<String> {
        let mut values = Vec::new();
        for round in 0..1000 {
            for i in 0..200 {
                if round < 1000 / (i + 1) {
                    values.push(format!("v{i}"));
                }
            }
        }
        values
    }

    fn exact(values: &[String]) -> HashMap<&str, u64> {
        let mut counts = HashMap::new();
        for v in values {
            *counts.entry(v.as_str()).or_insert(0) += 1;
        }
        counts
    }

    fn check_bounds(summary: &SpaceSaving, truth: &HashMap<&str, u64>) {
        for counter in summary.ranked() {
            let real = truth.get(counter.label.as_str()).copied().unwrap_or(0);
            assert!(counter.count >= real, "{counter:?} real {real}");
            assert!(counter.count - counter.error <= real, "{counter:?} real {real}");
        }
    }

    #[test]
    fn exact_when_values_fit() {
        let mut summary = SpaceSaving::new(10);
        for v in ["a", "b", "a", "c", "a", "b"] {
            offer(&mut summary, v);
        }
        let ranked: Vec<(&str, u64, u64)> =
            summary.ranked().iter().map(|c| (c.label.as_str(), c.count, c.error)).collect();
        assert_eq!(ranked, vec![("a", 3, 0), ("b", 2, 0), ("c", 1, 0)]);
    }

    #[test]
    fn heavy_hitters_are_found_with_valid_bounds() {
        let values = stream();
        let truth = exact(&values);
        let mut summary = SpaceSaving::new(40);
        values.iter().for_each(|v| offer(&mut summary, v));
        check_bounds(&summary, &truth);
        let top: Vec<&str> = summary.ranked()[..5].iter().map(|c| c.label.as_str()).collect();
        assert_eq!(top, vec!["v0", "v1", "v2", "v3", "v4"]);
        assert_eq!(summary.total(), values.len() as u64);
    }

    #[test]
    fn merged_summaries_keep_the_guarantee() {
        let values = stream();
        let truth = exact(&values);
        let mut parts = vec![SpaceSaving::new(40), SpaceSaving::new(40), SpaceSaving::new(40)];
        for (i, v) in values.iter().enumerate() {
            offer(&mut parts[(i * 7) % 3], v);
        }
        let mut merged = SpaceSaving::new(40);
        for part in &parts {
            merged.merge(part);
        }
        check_bounds(&merged, &truth);
        assert_eq!(merged.total(), values.len() as u64);
        let top: Vec<&str> = merged.ranked()[..3].iter().map(|c| c.label.as_str()).collect();
        assert_eq!(top, vec!["v0", "v1", "v2"]);
    }

    #[test]
    fn serde_round_trip_rebuilds_the_index() {
        let mut summary = SpaceSaving::new(5);
        stream().iter().take(500).for_each(|v| offer(&mut summary, v));
        let json = serde_json::to_string(&summary).unwrap_or_default();
        let mut back: SpaceSaving = serde_json::from_str(&json).unwrap_or_else(|_| SpaceSaving::new(1));
        assert_eq!(back.ranked(), summary.ranked());
        // Ties among minimum counters may sit in other heap slots after a reload, so only a
        // monitored value is offered: its counter must be found through the rebuilt index.
        let monitored = summary.ranked()[0].label.clone();
        offer(&mut back, &monitored);
        offer(&mut summary, &monitored);
        assert_eq!(back.ranked(), summary.ranked());
    }

    #[test]
    fn labels_are_truncated_on_characters() {
        let long = "é".repeat(MAX_LABEL_CHARS + 5);
        let (label, truncated) = truncate_label(&long);
        assert!(truncated);
        assert_eq!(label.chars().count(), MAX_LABEL_CHARS);
        assert_eq!(truncate_label("short"), ("short".to_owned(), false));
    }
}
