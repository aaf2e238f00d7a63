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
mod json;
mod manifest;
mod parquet_input;
mod pipeline;
pub mod read;
mod schema;
mod shards;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use input::Compression;
pub use inspect::{mask_pii_columns, mask_profile_pii, strip_profile_values};
pub use manifest::{ManifestLineage, ManifestSource, VersionManifest};
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

/// Default for [`IngestOptions::max_columns`].
pub const DEFAULT_MAX_COLUMNS: usize = 1000;
/// Default for [`IngestOptions::max_decompressed_bytes`]: 16 GiB.
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// Default for [`IngestOptions::max_buffered_bytes`]: 64 MiB.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub format: Format,
    /// For `text`: one record per blank-line-separated paragraph instead of per line.
    pub paragraphs: bool,
    /// The column language models train on; dedup and text statistics apply to it.
    pub text_column: Option<String>,
    pub on_error: OnError,
    /// The longest record, in bytes as uploaded (after decompression; a Parquet row counts 8
    /// bytes per cell plus its strings). Longer records of JSON lines, CSV and text are cut off
    /// while they are read, never held whole; every format reports them as bad rows by line.
    pub max_row_bytes: usize,
    /// The most columns a dataset may have (a CSV header, a Parquet schema, the keys of JSON
    /// lines together). Each column costs a typed cell in every row and a profile in the
    /// manifest, so a wider input is refused, naming the line that crossed the limit. An
    /// inferred JSON schema of more than 64 columns that the first records fill less than 10%
    /// is refused too, naming the line that widened it (a declared schema may be that sparse).
    pub max_columns: usize,
    /// The most bytes a gzip or zstd upload may expand to. Past it the upload is refused, so
    /// a small bomb cannot fill memory or the disk Parquet uploads are spooled to.
    pub max_decompressed_bytes: u64,
    /// The most memory the records held between reading and writing may take: the schema
    /// inference window, the read-ahead between the two threads and the shard's open batch.
    /// Counted as an estimate of their size in memory, not as a number of records, since one
    /// record may be a hundred thousand times larger than another.
    pub max_buffered_bytes: usize,
    /// Where Parquet uploads are spooled (their schema is at the end of the file); `None`
    /// uses the system's temporary directory. The server passes a directory under its data
    /// directory, whose size the operator provisions.
    pub temp_dir: Option<PathBuf>,
    /// A declared schema; inferred from the first `inference_rows` records when absent.
    pub schema: Option<Vec<ColumnSpec>>,
    pub pii_policy: PiiPolicy,
    /// Extra PII patterns as (name, regex).
    pub custom_pii: Vec<(String, String)>,
    /// The tenant's key for keyed hashing of PII values.
    pub pii_hash_key: Vec<u8>,
    pub dedup: DedupMode,
    /// Records the schema is inferred from: this many, or as many as fit in three quarters of
    /// `max_buffered_bytes`, whichever is fewer.
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
            max_columns: DEFAULT_MAX_COLUMNS,
            max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BYTES,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            temp_dir: None,
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

/// The longest message an error (of a row or of the whole upload) carries. Messages quote the
/// input (a field, a key, a header), which may be megabytes long, and end up in the manifest
/// and in HTTP responses.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Cuts `message` to at most `MAX_MESSAGE_BYTES` bytes, on a character boundary.
pub(crate) fn bounded_message(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES - '\u{2026}'.len_utf8();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('\u{2026}');
    }
    message
}

impl IngestError {
    fn new(kind: IngestErrorKind, message: impl Into<String>) -> Self {
        IngestError { kind, message: bounded_message(message.into()), errors: Vec::new() }
    }

    /// The upload was refused (422).
    pub(crate) fn rejected(message: impl Into<String>) -> Self {
        IngestError::new(IngestErrorKind::Rejected, message)
    }

    /// Reading the upload failed. A decompression limit that was reached is a refusal, not a
    /// broken upload, so it is reported as one.
    pub(crate) fn from_io(error: &std::io::Error) -> Self {
        match input::limit_reached(error) {
            Some(limit) => IngestError::rejected(limit.to_string()),
            None => IngestError::new(IngestErrorKind::Input, format!("reading the upload failed: {error}")),
        }
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
