//! Dataset ingest: an upload (JSONL, CSV, Parquet or plain text, optionally gzip or zstd) is
//! streamed into typed, zstd-compressed Parquet shards while every row is checked, scanned for
//! PII, deduplicated and profiled. The result is an `Ingested` report from which the caller
//! builds the version's manifest.
//!
//! Architecture Invariant: this crate knows Arrow and Parquet but neither HTTP nor the metadata
//! store. Shards leave through the `ShardSink` the caller provides; nothing here decides whether
//! a version becomes visible.

mod input;
mod inspect;
mod parquet_input;
mod pipeline;
pub mod read;
mod schema;
mod shards;

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use input::Compression;
pub use inspect::mask_pii_columns;
pub use pipeline::ingest;
pub use schema::{Cell, ColumnKind, ColumnSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jsonl,
    Csv,
    Parquet,
    Text,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "jsonl" => Ok(Format::Jsonl),
            "csv" => Ok(Format::Csv),
            "parquet" => Ok(Format::Parquet),
            "text" => Ok(Format::Text),
            other => Err(format!("{other:?} is not a format; expected jsonl, csv, parquet or text")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// The first bad row rejects the whole version.
    Fail,
    /// Bad rows are skipped, counted and the first ones reported.
    Skip,
}

/// What happens to PII found in a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiTreatment {
    Keep,
    Mask,
    Hash,
    DropColumn,
}

impl FromStr for PiiTreatment {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "keep" => Ok(PiiTreatment::Keep),
            "mask" => Ok(PiiTreatment::Mask),
            "hash" => Ok(PiiTreatment::Hash),
            "drop_column" => Ok(PiiTreatment::DropColumn),
            other => Err(format!("{other:?} is not a PII treatment; expected keep, mask, hash or drop_column")),
        }
    }
}

/// A dataset's PII policy: a default treatment and per-column overrides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PiiPolicy {
    pub default: PiiTreatment,
    #[serde(default)]
    pub columns: BTreeMap<String, PiiTreatment>,
}

impl Default for PiiPolicy {
    fn default() -> Self {
        PiiPolicy { default: PiiTreatment::Mask, columns: BTreeMap::new() }
    }
}

impl PiiPolicy {
    pub fn treatment(&self, column: &str) -> PiiTreatment {
        self.columns.get(column).copied().unwrap_or(self.default)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DedupMode {
    Off,
    /// Duplicates stay, with `_duplicate_of` naming the row they repeat.
    Flag,
    Remove,
}

impl FromStr for DedupMode {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "off" => Ok(DedupMode::Off),
            "flag" => Ok(DedupMode::Flag),
            "remove" => Ok(DedupMode::Remove),
            other => Err(format!("{other:?} is not a dedup mode; expected off, flag or remove")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub format: Format,
    /// For `text`: one record per blank-line-separated paragraph instead of per line.
    pub paragraphs: bool,
    /// The column language models train on; dedup and text statistics apply to it.
    pub text_column: Option<String>,
    pub on_error: OnError,
    pub max_row_bytes: usize,
    /// A declared schema; inferred from the first `inference_rows` records when absent.
    pub schema: Option<Vec<ColumnSpec>>,
    pub pii_policy: PiiPolicy,
    /// Extra PII patterns as (name, regex).
    pub custom_pii: Vec<(String, String)>,
    /// The tenant's key for keyed hashing of PII values.
    pub pii_hash_key: Vec<u8>,
    pub dedup: DedupMode,
    pub inference_rows: usize,
    pub max_shard_rows: u64,
    pub max_shard_bytes: usize,
}

impl IngestOptions {
    pub fn new(format: Format) -> Self {
        IngestOptions {
            format,
            paragraphs: false,
            text_column: None,
            on_error: OnError::Fail,
            max_row_bytes: 1024 * 1024,
            schema: None,
            pii_policy: PiiPolicy::default(),
            custom_pii: Vec::new(),
            pii_hash_key: Vec::new(),
            dedup: DedupMode::Off,
            inference_rows: 1000,
            max_shard_rows: 1_000_000,
            max_shard_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Where finished shards go; the server stores them in the content-addressed object store and
/// returns their digest.
pub trait ShardSink {
    fn put_shard(&mut self, parquet: Vec<u8>) -> Result<String, String>;
}

/// A row that could not be ingested, by line (or record) number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowError {
    pub line: u64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub digest: String,
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub digest: String,
    pub bytes: u64,
    pub compression: Compression,
    pub format: Format,
}

/// Everything an ingest learned; the caller adds identity and lineage to make the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ingested {
    pub schema: Vec<ColumnSpec>,
    /// Columns that held PII, with the treatment applied.
    pub pii_columns: BTreeMap<String, PiiTreatment>,
    pub dropped_columns: Vec<String>,
    pub text_column: Option<String>,
    pub rows: u64,
    pub rows_skipped: u64,
    /// The first errors (at most 20) when bad rows were skipped.
    pub errors: Vec<RowError>,
    pub shards: Vec<ShardInfo>,
    pub source: SourceInfo,
    pub pii: serde_json::Value,
    pub dedup: serde_json::Value,
    pub profile: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestErrorKind {
    /// The input was refused (bad row under `on_error=fail`, empty input, schema conflict).
    Rejected,
    /// Reading the input failed (client went away, decompression failed).
    Input,
    /// Storing a shard failed.
    Sink,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct IngestError {
    pub kind: IngestErrorKind,
    pub message: String,
    pub errors: Vec<RowError>,
}

impl IngestError {
    fn new(kind: IngestErrorKind, message: impl Into<String>) -> Self {
        IngestError { kind, message: message.into(), errors: Vec::new() }
    }
}

#[cfg(test)]
mod tests;
