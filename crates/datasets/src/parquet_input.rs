//! Parquet uploads. Parquet keeps its schema in a footer at the end of the file, so the upload is
//! spooled to a temporary file first (disk, not memory) and then read batch by batch.

use std::io::{self, BufRead};
use std::panic::{catch_unwind, AssertUnwindSafe};

use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::input::{NumberedRecord, RawRecord, RecordSource};
use crate::read::{cell_at, columns_of};
use crate::schema::{check_column_name, ColumnSpec};
use crate::{IngestError, IngestOptions};

/// The most rows decoded at once.
const MAX_BATCH_ROWS: usize = 4096;

pub struct ParquetRecords {
    columns: Vec<ColumnSpec>,
    reader: ParquetRecordBatchReader,
    batch: Option<RecordBatch>,
    row_in_batch: usize,
    record: u64,
    max_row_bytes: usize,
    /// Set once the decoder failed; its state is unknown after that.
    failed: bool,
    // Kept so the spooled file lives as long as the reader.
    _spool: tempfile::NamedTempFile,
}

/// Runs a step of the Parquet decoder, turning a panic into an error. The decoder has panicked
/// on malformed files before (an index out of bounds in a page decoder); an upload must be
/// refused then, not take the ingest down with it.
fn guarded<T>(what: &str, step: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(step)).unwrap_or_else(|_| Err(format!("{what}: the Parquet decoder failed")))
}

impl ParquetRecords {
    /// Spools `input` under `options.temp_dir` (its size capped by the decompression limit
    /// for compressed uploads) and opens it.
    pub fn spool(mut input: Box<dyn BufRead + Send>, options: &IngestOptions) -> Result<Self, IngestError> {
        let rejected = IngestError::rejected;
        let directory = options.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&directory)
            .map_err(|e| rejected(format!("cannot create the spool directory {}: {e}", directory.display())))?;
        let mut spool = tempfile::Builder::new()
            .prefix("factory-ingest-")
            .suffix(".parquet")
            .tempfile_in(&directory)
            .map_err(|e| rejected(format!("cannot spool the upload in {}: {e}", directory.display())))?;
        io::copy(&mut input, spool.as_file_mut()).map_err(|e| IngestError::from_io(&e))?;
        let file = spool.reopen().map_err(|e| rejected(format!("cannot reopen the spooled upload: {e}")))?;
        let builder = guarded("record 0", || {
            ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| format!("record 0: not a readable Parquet file: {e}"))
        })
        .map_err(rejected)?;
        let columns = columns_of(builder.schema()).map_err(rejected)?;
        check_columns(&columns, options.max_columns).map_err(rejected)?;
        // Rows of a batch are decoded together, so the batch is sized by the file's own account
        // of its row size: about an eighth of the buffer budget. Per-row limits apply below.
        let row_bytes = builder
            .metadata()
            .row_groups()
            .iter()
            .map(|group| group.total_byte_size().max(0) as u64 / group.num_rows().max(1) as u64)
            .max()
            .unwrap_or(0)
            .max(1);
        let batch_rows = ((options.max_buffered_bytes / 8) as u64 / row_bytes).clamp(1, MAX_BATCH_ROWS as u64) as usize;
        let reader = guarded("record 0", || {
            builder.with_batch_size(batch_rows).build().map_err(|e| format!("reading Parquet: {e}"))
        })
        .map_err(rejected)?;
        Ok(ParquetRecords {
            columns,
            reader,
            batch: None,
            row_in_batch: 0,
            record: 0,
            max_row_bytes: options.max_row_bytes,
            failed: false,
            _spool: spool,
        })
    }
}

/// A Parquet schema may repeat a field name, which no dataset column can; it is also held to
/// the column limit and the name length like every other input.
fn check_columns(columns: &[ColumnSpec], max_columns: usize) -> Result<(), String> {
    if columns.len() > max_columns {
        return Err(format!(
            "the Parquet file has {} columns; a dataset may have at most {max_columns} (max_columns)",
            columns.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for column in columns {
        check_column_name(&column.name)?;
        if !seen.insert(column.name.as_str()) {
            return Err(format!(
                "the Parquet file has two columns named {:?}; every column needs its own name",
                column.name
            ));
        }
    }
    Ok(())
}

impl RecordSource for ParquetRecords {
    fn header(&self) -> Option<Vec<ColumnSpec>> {
        Some(self.columns.clone())
    }

    fn next_record(&mut self) -> io::Result<Option<NumberedRecord>> {
        loop {
            if let Some(batch) = &self.batch {
                if self.row_in_batch < batch.num_rows() {
                    let row = self.row_in_batch;
                    self.row_in_batch += 1;
                    self.record += 1;
                    let cells: Vec<_> = batch.columns().iter().map(|array| cell_at(array.as_ref(), row)).collect();
                    let bytes: usize =
                        cells.iter().map(|c| 8 + if let crate::Cell::Str(s) = c { s.len() } else { 0 }).sum();
                    if bytes > self.max_row_bytes {
                        let message = format!("row is longer than {} bytes", self.max_row_bytes);
                        return Ok(Some((self.record, Err(message))));
                    }
                    return Ok(Some((self.record, Ok(RawRecord::Cells(cells)))));
                }
            }
            if self.failed {
                return Ok(None);
            }
            let next = guarded("reading Parquet", || Ok(self.reader.next()));
            match next {
                Ok(None) => return Ok(None),
                Ok(Some(Ok(batch))) => {
                    self.batch = Some(batch);
                    self.row_in_batch = 0;
                }
                Ok(Some(Err(error))) => return Err(io::Error::other(format!("reading Parquet: {error}"))),
                Err(message) => {
                    self.failed = true;
                    return Err(io::Error::other(message));
                }
            }
        }
    }
}
