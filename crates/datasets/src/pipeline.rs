//! The ingest loop: records in, typed and inspected rows out to shards, errors by line.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::{mpsc, Condvar, Mutex, PoisonError};

use crate::input::{
    decompress, record_footprint, CsvRecords, HashingReader, JsonLines, NumberedRecord, RawRecord, RecordSource,
    TextRecords,
};
use crate::inspect::Inspector;
use crate::parquet_input::ParquetRecords;
use crate::schema::{
    cells_footprint, json_cell, text_cell, text_kind, unify_text_kinds, Cell, ColumnKind, ColumnSpec, JsonInference,
};
use crate::shards::ShardWriter;
use crate::{
    bounded_message, DedupMode, Format, IngestError, IngestErrorKind, IngestOptions, Ingested, OnError, PiiTreatment,
    RowError, ShardInfo, ShardSink, SourceInfo,
};
use factory_profile::{Fingerprint, Fingerprinter};

const REPORTED_ERRORS: usize = 20;
/// The most records per batch handed from the reader thread; batches are also cut at an
/// eighth of the read-ahead budget, so a few large records make a batch of their own.
const READ_BATCH: usize = 512;
/// What a dedup fingerprint holds: a 128-permutation MinHash signature and its band keys.
const FINGERPRINT_BYTES: usize = 128 * 4 + 64 * 8 + 64;

/// A record's line (or record number), its cells and the dedup fingerprint of its text, or
/// why it could not be converted.
type ConvertedRecord = (u64, Result<(Vec<Cell>, Option<Fingerprint>), String>);

fn converted_footprint(record: &ConvertedRecord) -> usize {
    std::mem::size_of::<ConvertedRecord>()
        + match &record.1 {
            Ok((cells, fingerprint)) => {
                cells_footprint(cells) + if fingerprint.is_some() { FINGERPRINT_BYTES } else { 0 }
            }
            Err(message) => message.capacity(),
        }
}

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

/// The memory records held between reading and ingesting may take, in bytes (by the
/// footprint estimate). The reader takes before it hands a batch over and waits while the
/// budget is spent; the ingest thread gives back once it has processed the batch. Counting
/// bytes rather than batches matters: a batch of 512 records is 10 KB of short lines, or
/// 8 GB of 16 MB lines, or 16 MB of empty rows of a thousand columns.
struct Budget {
    limit: usize,
    state: Mutex<BudgetState>,
    changed: Condvar,
}

struct BudgetState {
    used: usize,
    /// The ingest thread stopped taking records (done, or it refused the upload).
    closed: bool,
}

impl Budget {
    fn new(limit: usize) -> Self {
        Budget {
            limit: limit.max(1),
            state: Mutex::new(BudgetState { used: 0, closed: false }),
            changed: Condvar::new(),
        }
    }

    /// Takes `bytes`, waiting while they do not fit. A batch larger than the whole budget
    /// goes through once nothing else is held, so one huge record cannot stall the upload.
    /// False once the ingest thread has hung up.
    fn take(&self, bytes: usize) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while !state.closed && state.used > 0 && state.used.saturating_add(bytes) > self.limit {
            state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        state.used = state.used.saturating_add(bytes);
        !state.closed
    }

    fn give_back(&self, bytes: usize) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.used = state.used.saturating_sub(bytes);
        self.changed.notify_all();
    }

    fn close(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.closed = true;
        self.changed.notify_all();
    }
}

/// Closes the budget when the ingest thread stops consuming, however it stops, so a reader
/// waiting for room wakes up and ends.
struct HangUp<'a>(&'a Budget);

impl Drop for HangUp<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The reader stage: records from `source`, converted and fingerprinted, in batches within
/// the budget, until the input ends, it fails, or the consumer hangs up (it rejected the
/// upload).
fn read_records(
    source: &mut (dyn RecordSource + Send),
    preparer: &Preparer<'_>,
    sender: mpsc::Sender<(Vec<ConvertedRecord>, usize)>,
    budget: &Budget,
) -> std::io::Result<()> {
    let batch_limit = (budget.limit / 8).max(1);
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some((line, record)) = source.next_record()? {
        let converted = (line, preparer.prepare(record));
        bytes += converted_footprint(&converted);
        batch.push(converted);
        if batch.len() == READ_BATCH || bytes >= batch_limit {
            if !budget.take(bytes) || sender.send((std::mem::take(&mut batch), bytes)).is_err() {
                return Ok(());
            }
            bytes = 0;
        }
    }
    if !batch.is_empty() && budget.take(bytes) {
        let _ = sender.send((batch, bytes));
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

fn io_error(error: std::io::Error) -> IngestError {
    IngestError::from_io(&error)
}

fn rejected(message: impl Into<String>) -> IngestError {
    IngestError::rejected(message)
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
    options: &IngestOptions,
    source: &dyn RecordSource,
    csv_header: Option<&[String]>,
    window: &[NumberedRecord],
) -> Result<Vec<ColumnSpec>, IngestError> {
    let (format, declared) = (options.format, options.schema.as_ref());
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
            let mut inference = JsonInference::new(options.max_columns);
            for (line, record) in window {
                if let Ok(RawRecord::Object(object)) = record {
                    inference.observe(*line, object).map_err(rejected)?;
                }
            }
            inference.check_density().map_err(rejected)?;
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
    let (hashing, source_stats) = HashingReader::new(input);
    let (reader, compression) = decompress(hashing, options.max_decompressed_bytes).map_err(io_error)?;
    let mut csv_header = None;
    let mut source: Box<dyn RecordSource + Send> = match options.format {
        Format::Jsonl => Box::new(JsonLines::new(reader, options.max_row_bytes, options.max_columns)),
        Format::Text => Box::new(TextRecords::new(reader, options.paragraphs, options.max_row_bytes)),
        Format::Csv => {
            let records = CsvRecords::new(reader, options.max_row_bytes, options.max_columns)?;
            csv_header = Some(records.column_names().to_vec());
            Box::new(records)
        }
        Format::Parquet => Box::new(ParquetRecords::spool(reader, options)?),
    };

    // Three quarters of the buffer budget for records read but not yet ingested (the
    // inference window first), one quarter for the shard's open batch.
    let budget = Budget::new(options.max_buffered_bytes / 4 * 3);
    let mut window = Vec::new();
    let mut window_bytes = 0;
    while window.len() < options.inference_rows && window_bytes < budget.limit {
        match source.next_record().map_err(io_error)? {
            Some(record) => {
                window_bytes += record_footprint(&record);
                window.push(record);
            }
            None => break,
        }
    }
    budget.take(window_bytes);
    let columns = infer_schema(options, source.as_ref(), csv_header.as_deref(), &window)?;
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
    // masked, never kept, so a late discovery cannot leak. The window is converted once for
    // all columns, not once per column: that would be columns x records conversions.
    let mut pii_seen = vec![false; columns.len()];
    if options.pii_policy.default == PiiTreatment::DropColumn {
        for (_, record) in &window {
            let Some(cells) = record.as_ref().ok().and_then(|raw| converter.convert(raw.clone()).ok()) else {
                continue;
            };
            for (seen, cell) in pii_seen.iter_mut().zip(&cells) {
                if !*seen && matches!(cell, Cell::Str(text) if inspector.has_pii(text)) {
                    *seen = true;
                }
            }
        }
    }
    let keep: Vec<bool> = columns
        .iter()
        .zip(&pii_seen)
        .map(|(column, seen)| match options.pii_policy.columns.get(&column.name) {
            Some(PiiTreatment::DropColumn) => false,
            Some(_) => true,
            None => !(options.pii_policy.default == PiiTreatment::DropColumn && *seen),
        })
        .collect();
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

    let preparer = Preparer {
        converter: &converter,
        fingerprinter: inspector.fingerprinter(),
        text_position: options.text_column.as_ref().and_then(|t| columns.iter().position(|c| &c.name == t)),
    };
    let mut stage = Stage {
        options,
        writer: ShardWriter::new(
            &kept,
            options.max_shard_rows,
            options.max_shard_bytes,
            (options.max_buffered_bytes / 4).max(1),
        ),
        inspector,
        sink,
        keep,
        any_dropped: !dropped_columns.is_empty(),
        text_index,
        stored: Vec::new(),
        rows: 0,
        skipped: 0,
        errors: Vec::new(),
    };
    // Two stages on two threads: this one inspects, deduplicates, profiles and writes shards
    // while a reader thread decompresses, splits and parses the next records. What is read
    // ahead is bounded by the budget in bytes, so a slow stage throttles the other.
    let preparer = &preparer;
    let budget = &budget;
    std::thread::scope(|scope| -> Result<(), IngestError> {
        let (sender, receiver) = mpsc::channel::<(Vec<ConvertedRecord>, usize)>();
        let reader = scope.spawn(move || read_records(source.as_mut(), preparer, sender, budget));
        let consumed = (|| {
            let _hang_up = HangUp(budget);
            for (line, record) in window {
                stage.take(line, preparer.prepare(record))?;
            }
            budget.give_back(window_bytes);
            for (batch, bytes) in receiver {
                for (line, prepared) in batch {
                    stage.take(line, prepared)?;
                }
                budget.give_back(bytes);
            }
            Ok(())
        })();
        // Joined before anything returns: the reader ends once the budget is closed and the
        // channel's receiver is gone, and a panic there is an error here, not a second panic.
        let read = reader.join();
        consumed?;
        match read {
            Ok(result) => result.map_err(io_error),
            Err(_) => Err(input_error("the reader thread panicked")),
        }
    })?;
    let Stage { writer, inspector, sink, mut stored, rows, skipped, errors, .. } = stage;
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
    if kept.is_empty() {
        return Err(rejected(
            "no column is left to store: the records name no field, or the PII policy dropped them all",
        ));
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

/// The ingest thread's side: every record, in order, is rejected or skipped, or inspected,
/// deduplicated, profiled and appended to the open shard.
struct Stage<'a> {
    options: &'a IngestOptions,
    inspector: Inspector,
    writer: ShardWriter,
    sink: &'a mut dyn ShardSink,
    keep: Vec<bool>,
    any_dropped: bool,
    text_index: Option<usize>,
    stored: Vec<ShardInfo>,
    rows: u64,
    skipped: u64,
    errors: Vec<RowError>,
}

impl Stage<'_> {
    fn take(
        &mut self,
        line: u64,
        prepared: Result<(Vec<Cell>, Option<Fingerprint>), String>,
    ) -> Result<(), IngestError> {
        let (mut cells, fingerprint) = match prepared {
            Ok(prepared) => prepared,
            Err(message) => {
                let error = RowError { line, message: bounded_message(message) };
                return match self.options.on_error {
                    OnError::Fail => {
                        let mut rejection = rejected(format!("line {}: {}", error.line, error.message));
                        rejection.errors.push(error);
                        Err(rejection)
                    }
                    OnError::Skip => {
                        self.skipped += 1;
                        if self.errors.len() < REPORTED_ERRORS {
                            self.errors.push(error);
                        }
                        Ok(())
                    }
                };
            }
        };
        if self.any_dropped {
            let mut keep = self.keep.iter();
            cells.retain(|_| keep.next().copied().unwrap_or(true));
        }
        self.inspector.scan(&mut cells);
        if self.text_index.is_some() {
            let duplicate_of = fingerprint.as_ref().and_then(|f| self.inspector.duplicate_of(f));
            match (self.options.dedup, duplicate_of) {
                (DedupMode::Remove, Some(_)) => return Ok(()),
                (DedupMode::Flag, duplicate) => {
                    cells.push(duplicate.map(|d| Cell::Int(d as i64)).unwrap_or(Cell::Null))
                }
                _ => {}
            }
        }
        self.inspector.profile(&cells);
        self.rows += 1;
        if let Some(shard) = self.writer.append(&cells).map_err(rejected)? {
            store_shard(self.sink, shard, &mut self.stored)?;
        }
        Ok(())
    }
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
