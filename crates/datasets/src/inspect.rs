//! What ingest checks in every row: PII (found, reported, treated per the dataset's policy),
//! duplicates of the text column, and the statistical profile that drift monitors later compare
//! live traffic against.

use std::borrow::Cow;
use std::collections::BTreeMap;

use factory_pii::{Detector, PiiAction, PiiReport};
use factory_profile::{ColumnProfiler, ColumnType, DedupOptions, DedupVerdict, Deduplicator, TextProfiler};

use crate::pipeline::InspectionReport;
use crate::schema::{Cell, ColumnKind, ColumnSpec};
use crate::{IngestOptions, PiiTreatment};

pub struct Inspector {
    detector: Detector,
    report: PiiReport,
    policy: crate::PiiPolicy,
    hash_key: Vec<u8>,
    columns: Vec<ColumnSpec>,
    pii_columns: BTreeMap<String, PiiTreatment>,
    deduplicator: Option<Deduplicator>,
    rows_seen: u64,
    text_index: Option<usize>,
    profilers: Vec<ColumnProfiler>,
    text_profiler: TextProfiler,
}

fn column_type(kind: ColumnKind) -> ColumnType {
    match kind {
        ColumnKind::Boolean => ColumnType::Boolean,
        ColumnKind::Integer => ColumnType::Integer,
        ColumnKind::Float => ColumnType::Float,
        ColumnKind::String => ColumnType::String,
        ColumnKind::Json => ColumnType::Other,
    }
}

impl Inspector {
    pub fn new(options: &IngestOptions) -> Result<Self, String> {
        let detector = Detector::new(&options.custom_pii).map_err(|e| format!("custom PII patterns: {e}"))?;
        let deduplicator = match options.dedup {
            crate::DedupMode::Off => None,
            _ => Some(Deduplicator::new(DedupOptions::default()).map_err(|e| format!("dedup: {e}"))?),
        };
        Ok(Inspector {
            report: PiiReport::new(&detector),
            detector,
            policy: options.pii_policy.clone(),
            hash_key: options.pii_hash_key.clone(),
            columns: Vec::new(),
            pii_columns: BTreeMap::new(),
            deduplicator,
            rows_seen: 0,
            text_index: None,
            profilers: Vec::new(),
            text_profiler: TextProfiler::new(),
        })
    }

    pub fn has_pii(&self, text: &str) -> bool {
        !self.detector.find(text).is_empty()
    }

    /// Fixes the output columns once the schema is known.
    pub fn start(&mut self, columns: &[ColumnSpec], text_index: Option<usize>) {
        self.columns = columns.to_vec();
        self.text_index = text_index;
        self.profilers = columns.iter().map(|c| ColumnProfiler::new(column_type(c.kind))).collect();
    }

    /// Finds PII in every text cell and applies the column's treatment. A column whose policy is
    /// drop_column but that was kept (no PII in the first records) is masked instead.
    pub fn scan(&mut self, cells: &mut [Cell]) {
        for (position, cell) in cells.iter_mut().enumerate() {
            let Cell::Str(text) = cell else { continue };
            let spans = self.detector.find(text);
            if spans.is_empty() {
                continue;
            }
            let Some(column) = self.columns.get(position) else { continue };
            self.report.observe(&column.name, &spans);
            let treatment = match self.policy.treatment(&column.name) {
                PiiTreatment::DropColumn => PiiTreatment::Mask,
                other => other,
            };
            self.pii_columns.entry(column.name.clone()).or_insert(treatment);
            let action = match treatment {
                PiiTreatment::Keep => continue,
                PiiTreatment::Mask | PiiTreatment::DropColumn => PiiAction::Mask,
                PiiTreatment::Hash => PiiAction::Hash,
            };
            if let Cow::Owned(redacted) = self.detector.redact(text, &spans, action, &self.hash_key) {
                *text = redacted;
            }
        }
    }

    /// What computes dedup fingerprints, when dedup is on.
    pub fn fingerprinter(&self) -> Option<factory_profile::Fingerprinter> {
        self.deduplicator.as_ref().map(Deduplicator::fingerprinter)
    }

    /// The row whose text this fingerprint repeats, exactly or nearly, if any.
    pub fn duplicate_of(&mut self, fingerprint: &factory_profile::Fingerprint) -> Option<u64> {
        let deduplicator = self.deduplicator.as_mut()?;
        match deduplicator.check_fingerprint(fingerprint) {
            DedupVerdict::Unique => None,
            DedupVerdict::ExactDuplicate { of } => Some(of),
            DedupVerdict::NearDuplicate { of, .. } => Some(of),
        }
    }

    pub fn profile(&mut self, cells: &[Cell]) {
        self.rows_seen += 1;
        for (profiler, cell) in self.profilers.iter_mut().zip(cells) {
            match cell {
                Cell::Null => profiler.observe_null(),
                Cell::Bool(b) => profiler.observe_bool(*b),
                Cell::Int(i) => profiler.observe_i64(*i),
                Cell::Float(f) => profiler.observe_f64(*f),
                Cell::Str(s) => profiler.observe_str(s),
            }
        }
        if let Some(Cell::Str(text)) = self.text_index.and_then(|i| cells.get(i)) {
            self.text_profiler.observe(text);
        }
    }

    pub fn finish(self) -> InspectionReport {
        let columns: BTreeMap<String, serde_json::Value> = self
            .columns
            .iter()
            .zip(&self.profilers)
            .map(|(column, profiler)| {
                (column.name.clone(), serde_json::to_value(profiler.finish()).unwrap_or_default())
            })
            .collect();
        let text = self.text_index.map(|_| serde_json::to_value(self.text_profiler.finish()).unwrap_or_default());
        InspectionReport {
            pii: serde_json::to_value(&self.report).unwrap_or_default(),
            dedup: self
                .deduplicator
                .as_ref()
                .map(|d| serde_json::to_value(d.report()).unwrap_or_default())
                .unwrap_or(serde_json::Value::Null),
            profile: serde_json::json!({ "rows": self.rows_seen, "columns": columns, "text": text }),
            pii_columns: self.pii_columns,
        }
    }
}

/// Masks PII in `columns` of rows read back, for callers whose role may not see it raw.
pub fn mask_pii_columns(rows: &mut [serde_json::Map<String, serde_json::Value>], columns: &[String]) {
    let Ok(detector) = Detector::new(&[]) else { return };
    for row in rows {
        for column in columns {
            if let Some(serde_json::Value::String(text)) = row.get_mut(column) {
                let spans = detector.find(text);
                if let Cow::Owned(masked) = factory_pii::redact(text, &spans, PiiAction::Mask, &[]) {
                    *text = masked;
                }
            }
        }
    }
}

/// Masks PII in the values a profile shows of `columns` (their top values, and the text
/// column's frequent tokens when it is one of them), for callers whose role may not see it
/// raw: a profile must never show what the rows would hide.
pub fn mask_profile_pii(profile: &mut serde_json::Value, columns: &[String], text_column: Option<&str>) {
    let Ok(detector) = Detector::new(&[]) else { return };
    let mask = |text: &mut String| {
        let spans = detector.find(text);
        if let Cow::Owned(masked) = factory_pii::redact(text, &spans, PiiAction::Mask, &[]) {
            *text = masked;
        }
    };
    for column in columns {
        if let Some(values) = profile["columns"][column]["top_values"].as_array_mut() {
            for value in values {
                if let Some(serde_json::Value::String(text)) = value.get_mut("value") {
                    mask(text);
                }
            }
        }
    }
    if text_column.is_some_and(|text| columns.iter().any(|c| c == text)) {
        if let Some(tokens) = profile["text"]["token_distribution"]["tokens"].as_array_mut() {
            for token in tokens {
                if let Some(serde_json::Value::String(text)) = token.get_mut("token") {
                    mask(text);
                }
            }
        }
    }
}

/// Removes every value a profile quotes (top values, frequent tokens), leaving its counts and
/// distributions: what a caller who may not read rows at all may see.
pub fn strip_profile_values(profile: &mut serde_json::Value) {
    if let Some(columns) = profile["columns"].as_object_mut() {
        for column in columns.values_mut() {
            if let Some(values) = column.get_mut("top_values") {
                *values = serde_json::Value::Array(Vec::new());
            }
        }
    }
    if let Some(tokens) = profile["text"]["token_distribution"].get_mut("tokens") {
        *tokens = serde_json::Value::Array(Vec::new());
    }
}
