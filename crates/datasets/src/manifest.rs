//! The manifest of a dataset version: what the ingest found and where it put it, stored under
//! its SHA-256 beside the shards. Every reader goes through this type, and a manifest with a
//! field this code does not know is refused rather than half read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ColumnSpec, Compression, Format, PiiTreatment, RowError, ShardInfo};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionManifest {
    pub tenant: String,
    pub dataset: String,
    pub classification: String,
    pub jurisdiction: String,
    pub site: String,
    pub schema: Vec<ColumnSpec>,
    /// The column language models train on, when the upload named one.
    pub text_column: Option<String>,
    /// Columns that held PII, with the treatment the dataset's policy applied.
    pub pii_columns: BTreeMap<String, PiiTreatment>,
    pub dropped_columns: Vec<String>,
    pub rows: u64,
    pub rows_skipped: u64,
    pub errors: Vec<RowError>,
    pub shards: Vec<ShardInfo>,
    pub source: ManifestSource,
    pub lineage: ManifestLineage,
    /// The PII, dedup and profile reports, as their crates write them.
    pub pii: serde_json::Value,
    pub dedup: serde_json::Value,
    pub profile: serde_json::Value,
}

/// Where the version's bytes came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSource {
    pub digest: String,
    pub bytes: u64,
    pub format: Format,
    pub compression: Compression,
    pub uploaded_by: String,
    pub uploaded_at: String,
    pub request_id: String,
}

/// The OpenLineage run that made the version, and the governed versions it derives from
/// (none for an upload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLineage {
    pub run_id: String,
    pub job: String,
    pub derived_from: Vec<String>,
}

impl VersionManifest {
    /// Columns whose PII was kept raw: what roles without the right to see it get masked.
    pub fn raw_pii_columns(&self) -> Vec<String> {
        self.pii_columns.iter().filter(|(_, t)| **t == PiiTreatment::Keep).map(|(c, _)| c.clone()).collect()
    }

    /// The shards' digests, in row order.
    pub fn shard_digests(&self) -> Vec<String> {
        self.shards.iter().map(|s| s.digest.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn manifest() -> VersionManifest {
        VersionManifest {
            tenant: "acme".into(),
            dataset: "tickets".into(),
            classification: "confidential".into(),
            jurisdiction: "eu".into(),
            site: "eu-1".into(),
            schema: Vec::new(),
            text_column: Some("text".into()),
            pii_columns: BTreeMap::from([("email".into(), PiiTreatment::Keep), ("phone".into(), PiiTreatment::Mask)]),
            dropped_columns: Vec::new(),
            rows: 2,
            rows_skipped: 0,
            errors: Vec::new(),
            shards: vec![ShardInfo { digest: "ab".into(), rows: 2, bytes: 10 }],
            source: ManifestSource {
                digest: "cd".into(),
                bytes: 20,
                format: Format::Jsonl,
                compression: Compression::None,
                uploaded_by: "key_1".into(),
                uploaded_at: "2026-12-02T00:00:00Z".into(),
                request_id: "req".into(),
            },
            lineage: ManifestLineage { run_id: "run".into(), job: "ingest".into(), derived_from: Vec::new() },
            pii: serde_json::json!({}),
            dedup: serde_json::Value::Null,
            profile: serde_json::json!({ "rows": 2 }),
        }
    }

    #[test]
    fn manifests_round_trip_and_refuse_what_they_do_not_know() {
        let written = serde_json::to_value(manifest()).unwrap();
        assert_eq!(serde_json::from_value::<VersionManifest>(written.clone()).unwrap(), manifest());
        let mut extra = written.clone();
        extra["surprise"] = true.into();
        assert!(serde_json::from_value::<VersionManifest>(extra).is_err(), "an unknown field is refused");
        let mut missing = written;
        missing.as_object_mut().unwrap().remove("shards");
        assert!(serde_json::from_value::<VersionManifest>(missing).is_err(), "a missing field is refused");
        assert_eq!(manifest().raw_pii_columns(), vec!["email".to_string()]);
        assert_eq!(manifest().shard_digests(), vec!["ab".to_string()]);
    }
}
