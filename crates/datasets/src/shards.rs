//! Typed rows in, zstd-compressed Parquet shards out. A shard is closed when it reaches its row
//! or byte budget, so memory stays bounded whatever the input size.

use std::sync::Arc;

use arrow_array::builder::{ArrayBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::schema::{Cell, ColumnKind, ColumnSpec};

/// Field metadata marking a string column that holds JSON text.
pub const KIND_METADATA_KEY: &str = "factory.type";

const BATCH_ROWS: usize = 8192;
/// Columns of a shard that may be dictionary-encoded (see `flush_batch`).
const DICTIONARY_COLUMNS: usize = 64;
/// What an Arrow builder holds per cell besides string bytes: a value slot or an offset, and
/// the validity bit.
const CELL_BYTES: usize = 9;

pub fn arrow_schema(columns: &[ColumnSpec]) -> Schema {
    let fields: Vec<Field> = columns
        .iter()
        .map(|column| {
            let data_type = match column.kind {
                ColumnKind::Boolean => DataType::Boolean,
                ColumnKind::Integer => DataType::Int64,
                ColumnKind::Float => DataType::Float64,
                ColumnKind::String | ColumnKind::Json => DataType::Utf8,
            };
            let metadata: std::collections::HashMap<String, String> =
                [(KIND_METADATA_KEY.to_string(), column.kind.as_str().to_string())].into_iter().collect();
            Field::new(&column.name, data_type, true).with_metadata(metadata)
        })
        .collect();
    Schema::new(fields)
}

enum ColumnBuilder {
    Boolean(BooleanBuilder),
    Integer(Int64Builder),
    Float(Float64Builder),
    Text(StringBuilder),
}

impl ColumnBuilder {
    fn new(kind: ColumnKind) -> Self {
        match kind {
            // Builders grow as rows come: reserving a full batch up front would cost 64 KiB
            // per column before the first row, 64 MiB for a schema of a thousand columns.
            ColumnKind::Boolean => ColumnBuilder::Boolean(BooleanBuilder::new()),
            ColumnKind::Integer => ColumnBuilder::Integer(Int64Builder::new()),
            ColumnKind::Float => ColumnBuilder::Float(Float64Builder::new()),
            ColumnKind::String | ColumnKind::Json => ColumnBuilder::Text(StringBuilder::new()),
        }
    }

    /// Cells were typed against the schema already; a mismatch here is a bug, stored as null.
    fn append(&mut self, cell: &Cell) {
        match (self, cell) {
            (ColumnBuilder::Boolean(b), Cell::Bool(v)) => b.append_value(*v),
            (ColumnBuilder::Integer(b), Cell::Int(v)) => b.append_value(*v),
            (ColumnBuilder::Float(b), Cell::Float(v)) => b.append_value(*v),
            (ColumnBuilder::Float(b), Cell::Int(v)) => b.append_value(*v as f64),
            (ColumnBuilder::Text(b), Cell::Str(v)) => b.append_value(v),
            (ColumnBuilder::Boolean(b), _) => b.append_null(),
            (ColumnBuilder::Integer(b), _) => b.append_null(),
            (ColumnBuilder::Float(b), _) => b.append_null(),
            (ColumnBuilder::Text(b), _) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Boolean(b) => Arc::new(b.finish()),
            ColumnBuilder::Integer(b) => Arc::new(b.finish()),
            ColumnBuilder::Float(b) => Arc::new(b.finish()),
            ColumnBuilder::Text(b) => Arc::new(b.finish()),
        }
    }

    fn len(&self) -> usize {
        match self {
            ColumnBuilder::Boolean(b) => b.len(),
            ColumnBuilder::Integer(b) => b.len(),
            ColumnBuilder::Float(b) => b.len(),
            ColumnBuilder::Text(b) => b.len(),
        }
    }
}

/// A finished shard: Parquet bytes and how many rows they hold.
pub struct Shard {
    pub bytes: Vec<u8>,
    pub rows: u64,
}

pub struct ShardWriter {
    schema: Arc<Schema>,
    builders: Vec<ColumnBuilder>,
    writer: Option<ArrowWriter<Vec<u8>>>,
    rows_in_shard: u64,
    max_shard_rows: u64,
    max_shard_bytes: usize,
    /// Bytes in the builders (the open batch), and the most they may hold: a batch is written
    /// out at `BATCH_ROWS` rows or at this size, whichever comes first, so rows of megabytes
    /// or of a thousand columns do not pile up eight thousand deep.
    batch_bytes: usize,
    max_batch_bytes: usize,
}

impl ShardWriter {
    pub fn new(columns: &[ColumnSpec], max_shard_rows: u64, max_shard_bytes: usize, max_batch_bytes: usize) -> Self {
        ShardWriter {
            schema: Arc::new(arrow_schema(columns)),
            builders: columns.iter().map(|c| ColumnBuilder::new(c.kind)).collect(),
            writer: None,
            rows_in_shard: 0,
            max_shard_rows,
            max_shard_bytes,
            batch_bytes: 0,
            max_batch_bytes,
        }
    }

    /// Adds one row; returns a shard when this row completed one.
    pub fn append(&mut self, cells: &[Cell]) -> Result<Option<Shard>, String> {
        for (builder, cell) in self.builders.iter_mut().zip(cells) {
            builder.append(cell);
            self.batch_bytes += CELL_BYTES + if let Cell::Str(text) = cell { text.len() } else { 0 };
        }
        self.rows_in_shard += 1;
        let batch_rows = self.builders.first().map(ColumnBuilder::len).unwrap_or(0);
        if batch_rows >= BATCH_ROWS || self.batch_bytes >= self.max_batch_bytes {
            self.flush_batch()?;
            let writer_bytes = self.writer.as_ref().map(|w| w.bytes_written() + w.in_progress_size()).unwrap_or(0);
            if self.rows_in_shard >= self.max_shard_rows || writer_bytes >= self.max_shard_bytes {
                return self.close_shard();
            }
        }
        Ok(None)
    }

    /// Closes the last shard, if it holds any row.
    pub fn finish(mut self) -> Result<Option<Shard>, String> {
        self.flush_batch()?;
        self.close_shard()
    }

    fn flush_batch(&mut self) -> Result<(), String> {
        if self.builders.first().map(ColumnBuilder::len).unwrap_or(0) == 0 {
            return Ok(());
        }
        self.batch_bytes = 0;
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(ColumnBuilder::finish).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| format!("building a batch: {e}"))?;
        if self.writer.is_none() {
            let mut properties = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(|e| e.to_string())?))
                .set_max_row_group_row_count(Some(64 * 1024))
                .set_dictionary_enabled(false);
            // Parquet's dictionary encoder reserves about 74 KiB per column up front, whatever
            // the column holds: 74 MiB per open shard for a thousand columns. Only the first
            // columns get one, so a wide schema costs memory by its bytes, not its width.
            for field in self.schema.fields().iter().take(DICTIONARY_COLUMNS) {
                properties =
                    properties.set_column_dictionary_enabled(ColumnPath::new(vec![field.name().clone()]), true);
            }
            let properties = properties.build();
            let writer = ArrowWriter::try_new(Vec::new(), self.schema.clone(), Some(properties))
                .map_err(|e| format!("starting a Parquet shard: {e}"))?;
            self.writer = Some(writer);
        }
        if let Some(writer) = self.writer.as_mut() {
            writer.write(&batch).map_err(|e| format!("writing a Parquet shard: {e}"))?;
        }
        Ok(())
    }

    fn close_shard(&mut self) -> Result<Option<Shard>, String> {
        let Some(writer) = self.writer.take() else { return Ok(None) };
        let bytes = writer.into_inner().map_err(|e| format!("closing a Parquet shard: {e}"))?;
        let rows = std::mem::take(&mut self.rows_in_shard);
        Ok(Some(Shard { bytes, rows }))
    }
}
