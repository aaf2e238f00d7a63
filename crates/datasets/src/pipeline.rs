//! The ingest loop: records in, typed and inspected rows out to shards, errors by line.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use crate::input::{
    decompress, CsvRecords, HashingReader, JsonLines, NumberedRecord, RawRecord, RecordSource, TextRecords,
};
use crate::inspect::Inspector;
use crate::parquet_input::ParquetRecords;
use crate::schema::{json_cell, text_cell, text_kind, unify_text_kinds, Cell, ColumnKind, ColumnSpec, JsonInference};
use crate::shards::ShardWriter;
use crate::{
    DedupMode, Format, IngestError, IngestErrorKind, IngestOptions, Ingested, OnError, PiiTreatment, RowError,
    ShardInfo, ShardSink, SourceInfo,
};
use factory_profile::{Fingerprint, Fingerprinter};

const REPORTED_ERRORS: usize = 20;
/// Records per batch handed from the reader thread, and batches it may read ahead.
const READ_BATCH: usize = 512;
const READ_AHEAD_BATCHES: usize = 4;

/// A record's line (or record number), its cells and the dedup fingerprint of its text, or
/// why it could not be converted.
type ConvertedRecord = (u64, Result<(Vec<Cell>, Option<Fingerprint>), String>);

/// Converts one raw record and fingerprints its text column (the uploaded text, before PII
/// treatment) when dedup is on.
struct Preparer<'a> {
    converter: &'a Converter,
    fingerprinter: Option<Fingerprinter>,
    text_position: Option<usize>,
}

impl Preparer<'_> {
    fn prepare(&self, record: Result<RawRecord, String>) -> Result<(Vec<Cell>, Option<Fingerprint>), String> {
        let cells = record.and_then(|raw| self.converter.convert(raw))?;
        let fingerprint = match (&self.fingerprinter, self.text_position.and_then(|p| cells.get(p))) {
            (Some(fingerprinter), Some(Cell::Str(text))) => Some(fingerprinter.fingerprint(text)),
            _ => None,
        };
        Ok((cells, fingerprint))
    }
}

/// The reader stage: records from `source`, converted and fingerprinted, in batches, until the
/// input ends, it fails, or the consumer hangs up (it rejected the upload).
fn read_records(
    source: &mut (dyn RecordSource + Send),
    preparer: &Preparer<'_>,
    sender: std::sync::mpsc::SyncSender<Vec<ConvertedRecord>>,
) -> std::io::Result<()> {
    let mut batch = Vec::with_capacity(READ_BATCH);
    while let Some((line, record)) = source.next_record()? {
        batch.push((line, preparer.prepare(record)));
        if batch.len() == READ_BATCH
            && sender.send(std::mem::replace(&mut batch, Vec::with_capacity(READ_BATCH))).is_err()
        {
            return Ok(());
        }
    }
    if !batch.is_empty() {
        let _ = sender.send(batch);
    }
    Ok(())
}
pub const DUPLICATE_COLUMN: &str = "_duplicate_of";

/// Streams `input` into shards stored through `sink`. On error the sink's owner deletes what
/// it stored: the sink saw every shard.
pub fn ingest(
    input: impl Read + Send + 'static,
    options: &IngestOptions,
    sink: &mut dyn ShardSink,
) -> Result<Ingested, IngestError> {
    run(input, options, sink)
}

fn input_error(error: impl std::fmt::Display) -> IngestError {
    IngestError::new(IngestErrorKind::Input, format!("reading the upload failed: {error}"))
}

fn rejected(message: impl Into<String>) -> IngestError {
    IngestError::new(IngestErrorKind::Rejected, message)
}

/// Turns raw records into cells of the input schema.
enum Converter {
    Object { columns: Vec<ColumnSpec>, index: HashMap<String, usize> },
    Fields { kinds: Vec<ColumnKind> },
    Text,
    Cells,
}

impl Converter {
    fn convert(&self, record: RawRecord) -> Result<Vec<Cell>, String> {
        match (self, record) {
            (Converter::Object { columns, index }, RawRecord::Object(object)) => {
                let mut cells = vec![Cell::Null; columns.len()];
                for (key, value) in &object {
                    let position =
                        *index.get(key).ok_or_else(|| format!("field {key:?} is not in the dataset's schema"))?;
                    cells[position] =
                        json_cell(value, columns[position].kind).map_err(|e| format!("field {key:?}: {e}"))?;
                }
                Ok(cells)
            }
            (Converter::Fields { kinds }, RawRecord::Fields(fields)) => fields
                .iter()
                .zip(kinds)
                .enumerate()
                .map(|(i, (field, kind))| text_cell(field, *kind).map_err(|e| format!("column {}: {e}", i + 1)))
                .collect(),
            (Converter::Text, RawRecord::Text(text)) => Ok(vec![Cell::Str(text)]),
            (Converter::Cells, RawRecord::Cells(cells)) => Ok(cells),
            _ => Err("record does not match the input format".to_string()),
        }
    }
}

fn infer_schema(
    format: Format,
    source: &dyn RecordSource,
    csv_header: Option<&[String]>,
    window: &[NumberedRecord],
    declared: Option<&Vec<ColumnSpec>>,
) -> Result<Vec<ColumnSpec>, IngestError> {
    if let Some(header) = source.header() {
        if let (Some(declared), Format::Parquet) = (declared, format) {
            if declared != &header {
                return Err(rejected("the declared schema does not match the Parquet file's schema"));
            }
        }
        return Ok(header);
    }
    match format {
        Format::Csv => {
            let names = csv_header.unwrap_or_default();
            if let Some(declared) = declared {
                let declared_names: Vec<&str> = declared.iter().map(|c| c.name.as_str()).collect();
                if declared_names != names.iter().map(String::as_str).collect::<Vec<_>>() {
                    return Err(rejected(format!(
                        "line 1: the CSV header {names:?} does not match the declared columns {declared_names:?}"
                    )));
                }
                return Ok(declared.clone());
            }
            let mut kinds: Vec<Option<ColumnKind>> = vec![None; names.len()];
            for (_, record) in window {
                if let Ok(RawRecord::Fields(fields)) = record {
                    for (kind, field) in kinds.iter_mut().zip(fields) {
                        *kind = unify_text_kinds(*kind, text_kind(field));
                    }
                }
            }
            Ok(names
                .iter()
                .zip(kinds)
                .map(|(name, kind)| ColumnSpec { name: name.clone(), kind: kind.unwrap_or(ColumnKind::String) })
                .collect())
        }
        Format::Jsonl => {
            if let Some(declared) = declared {
                return Ok(declared.clone());
            }
            let mut inference = JsonInference::default();
            for (_, record) in window {
                if let Ok(RawRecord::Object(object)) = record {
                    inference.observe(object);
                }
            }
            Ok(inference.finish())
        }
        Format::Text | Format::Parquet => Err(rejected("internal: this format carries its own schema")),
    }
}

fn run(
    input: impl Read + Send + 'static,
    options: &IngestOptions,
    sink: &mut dyn ShardSink,
) -> Result<Ingested, IngestError> {
    let mut stored = Vec::new();
    let (hashing, source_stats) = HashingReader::new(input);
    let (reader, compression) = decompress(hashing).map_err(input_error)?;
    let mut csv_header = None;
    let mut source: Box<dyn RecordSource + Send> = match options.format {
        Format::Jsonl => Box::new(JsonLines::new(reader, options.max_row_bytes)),
        Format::Text => Box::new(TextRecords::new(reader, options.paragraphs, options.max_row_bytes)),
        Format::Csv => {
            let records = CsvRecords::new(reader, options.max_row_bytes).map_err(rejected)?;
            csv_header = Some(records.column_names().to_vec());
            Box::new(records)
        }
        Format::Parquet => Box::new(ParquetRecords::spool(reader).map_err(rejected)?),
    };

    let mut window = Vec::new();
    while window.len() < options.inference_rows {
        match source.next_record().map_err(input_error)? {
            Some(record) => window.push(record),
            None => break,
        }
    }
    let columns =
        infer_schema(options.format, source.as_ref(), csv_header.as_deref(), &window, options.schema.as_ref())?;
    let converter = match options.format {
        Format::Jsonl => Converter::Object {
            index: columns.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect(),
            columns: columns.clone(),
        },
        Format::Csv => Converter::Fields { kinds: columns.iter().map(|c| c.kind).collect() },
        Format::Text => Converter::Text,
        Format::Parquet => Converter::Cells,
    };
    if let Some(text_column) = &options.text_column {
        match columns.iter().find(|c| &c.name == text_column) {
            Some(column) if column.kind == ColumnKind::String => {}
            Some(column) => {
                return Err(rejected(format!(
                    "text_column {text_column:?} is a {} column, not a string column",
                    column.kind
                )))
            }
            None => return Err(rejected(format!("text_column {text_column:?} is not a column of the input"))),
        }
    }

    let mut inspector = Inspector::new(options).map_err(rejected)?;
    // A column is dropped when the policy says so by name, or when the default treatment is
    // drop_column and the first records show PII in it. PII found later in a kept column is
    // masked, never kept, so a late discovery cannot leak.
    let mut keep: Vec<bool> = Vec::with_capacity(columns.len());
    for (position, column) in columns.iter().enumerate() {
        let explicit = options.pii_policy.columns.get(&column.name).copied();
        let dropped = match explicit {
            Some(PiiTreatment::DropColumn) => true,
            Some(_) => false,
            None if options.pii_policy.default == PiiTreatment::DropColumn => window.iter().any(|(_, record)| {
                record
                    .as_ref()
                    .ok()
                    .and_then(|raw| converter.convert(raw.clone()).ok())
                    .is_some_and(|cells| matches!(&cells[position], Cell::Str(text) if inspector.has_pii(text)))
            }),
            None => false,
        };
        keep.push(!dropped);
    }
    let mut kept: Vec<ColumnSpec> =
        columns.iter().zip(&keep).filter(|(_, keep)| **keep).map(|(column, _)| column.clone()).collect();
    let dropped_columns: Vec<String> =
        columns.iter().zip(&keep).filter(|(_, keep)| !**keep).map(|(column, _)| column.name.clone()).collect();
    if options.text_column.as_ref().is_some_and(|t| dropped_columns.contains(t)) {
        return Err(rejected("the text column would be dropped by the PII policy; choose mask or hash for it"));
    }
    if options.dedup != DedupMode::Off && options.text_column.is_none() {
        return Err(rejected("dedup needs text_column to say which column to compare"));
    }
    let text_index = options.text_column.as_ref().and_then(|t| kept.iter().position(|c| &c.name == t));
    if options.dedup == DedupMode::Flag {
        kept.push(ColumnSpec { name: DUPLICATE_COLUMN.to_string(), kind: ColumnKind::Integer });
    }
    inspector.start(&kept, text_index);

    let mut writer = ShardWriter::new(&kept, options.max_shard_rows, options.max_shard_bytes);
    let mut rows = 0u64;
    let mut skipped = 0u64;
    let mut errors: Vec<RowError> = Vec::new();
    // Two stages on two threads: this one inspects, deduplicates, profiles and writes shards
    // while a reader thread decompresses, splits and parses the next records. The channel holds
    // a few batches, so memory stays bounded and a slow stage throttles the other.
    let preparer = Preparer {
        converter: &converter,
        fingerprinter: inspector.fingerprinter(),
        text_position: options.text_column.as_ref().and_then(|t| columns.iter().position(|c| &c.name == t)),
    };
    let preparer = &preparer;
    std::thread::scope(|scope| -> Result<(), IngestError> {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<ConvertedRecord>>(READ_AHEAD_BATCHES);
        let reader = scope.spawn(move || read_records(source.as_mut(), preparer, sender));
        let window = window.into_iter().map(|(line, record)| (line, preparer.prepare(record)));
        let mut records = window.chain(receiver.into_iter().flatten());
        for (line, prepared) in records.by_ref() {
            let (mut cells, fingerprint) = match prepared {
                Ok(prepared) => prepared,
                Err(message) => {
                    let error = RowError { line, message };
                    match options.on_error {
                        OnError::Fail => {
                            let mut rejection = rejected(format!("line {}: {}", error.line, error.message));
                            rejection.errors.push(error);
                            return Err(rejection);
                        }
                        OnError::Skip => {
                            skipped += 1;
                            if errors.len() < REPORTED_ERRORS {
                                errors.push(error);
                            }
                            continue;
                        }
                    }
                }
            };
            if !dropped_columns.is_empty() {
                let mut position = 0;
                cells.retain(|_| {
                    let keep_it = keep[position];
                    position += 1;
                    keep_it
                });
            }
            inspector.scan(&mut cells);
            if text_index.is_some() {
                let duplicate_of = fingerprint.as_ref().and_then(|f| inspector.duplicate_of(f));
                match (options.dedup, duplicate_of) {
                    (DedupMode::Remove, Some(_)) => continue,
                    (DedupMode::Flag, duplicate) => {
                        cells.push(duplicate.map(|d| Cell::Int(d as i64)).unwrap_or(Cell::Null))
                    }
                    _ => {}
                }
            }
            inspector.profile(&cells);
            rows += 1;
            if let Some(shard) = writer.append(&cells).map_err(rejected)? {
                store_shard(sink, shard, &mut stored)?;
            }
        }
        drop(records);
        // The channel ended: either the input did, or reading it failed.
        match reader.join() {
            Ok(result) => result.map_err(input_error),
            Err(_) => Err(input_error("the reader thread panicked")),
        }
    })?;
    if let Some(shard) = writer.finish().map_err(rejected)? {
        store_shard(sink, shard, &mut stored)?;
    }
    if rows == 0 {
        let mut rejection = if skipped > 0 {
            rejected(format!("no row could be ingested: all {skipped} rows were bad"))
        } else {
            rejected("the upload holds no rows")
        };
        rejection.errors = errors;
        return Err(rejection);
    }
    let source = {
        let stats = source_stats.lock().map_err(|_| input_error("source statistics poisoned"))?;
        SourceInfo { digest: stats.digest(), bytes: stats.bytes, compression, format: options.format }
    };
    let report = inspector.finish();
    Ok(Ingested {
        schema: kept,
        pii_columns: report.pii_columns,
        dropped_columns,
        text_column: options.text_column.clone(),
        rows,
        rows_skipped: skipped,
        errors,
        shards: stored,
        source,
        pii: report.pii,
        dedup: report.dedup,
        profile: report.profile,
    })
}

fn store_shard(
    sink: &mut dyn ShardSink,
    shard: crate::shards::Shard,
    stored: &mut Vec<ShardInfo>,
) -> Result<(), IngestError> {
    let bytes = shard.bytes.len() as u64;
    let digest = sink
        .put_shard(shard.bytes)
        .map_err(|e| IngestError::new(IngestErrorKind::Sink, format!("storing a shard: {e}")))?;
    stored.push(ShardInfo { digest, rows: shard.rows, bytes });
    Ok(())
}

/// Report pieces the inspector hands back at the end.
pub struct InspectionReport {
    pub pii: serde_json::Value,
    pub dedup: serde_json::Value,
    pub profile: serde_json::Value,
    pub pii_columns: BTreeMap<String, PiiTreatment>,
}
