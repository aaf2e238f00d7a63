//! Reading shards back: rows as JSON objects for the API, and the schema of a Parquet upload.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt8Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Schema};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::schema::{Cell, ColumnKind, ColumnSpec};
use crate::shards::KIND_METADATA_KEY;

/// The factory's column kind for an Arrow type, if it has one.
pub fn kind_of(data_type: &DataType) -> Option<ColumnKind> {
    Some(match data_type {
        DataType::Boolean => ColumnKind::Boolean,
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => ColumnKind::Integer,
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => ColumnKind::Integer,
        DataType::Float32 | DataType::Float64 => ColumnKind::Float,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnKind::String,
        _ => return None,
    })
}

pub fn columns_of(schema: &Schema) -> Result<Vec<ColumnSpec>, String> {
    schema
        .fields()
        .iter()
        .map(|field| {
            let kind = match field.metadata().get(KIND_METADATA_KEY).map(|k| k.parse::<ColumnKind>()) {
                Some(Ok(kind)) => kind,
                _ => kind_of(field.data_type()).ok_or_else(|| {
                    format!("column {:?} has type {}, which datasets cannot hold yet", field.name(), field.data_type())
                })?,
            };
            Ok(ColumnSpec { name: field.name().clone(), kind })
        })
        .collect()
}

/// Cell `row` of `array`, for the kinds `kind_of` accepts.
pub fn cell_at(array: &dyn Array, row: usize) -> Cell {
    if array.is_null(row) {
        return Cell::Null;
    }
    match array.data_type() {
        DataType::Boolean => Cell::Bool(array.as_boolean().value(row)),
        DataType::Int8 => Cell::Int(array.as_primitive::<Int8Type>().value(row).into()),
        DataType::Int16 => Cell::Int(array.as_primitive::<Int16Type>().value(row).into()),
        DataType::Int32 => Cell::Int(array.as_primitive::<Int32Type>().value(row).into()),
        DataType::Int64 => Cell::Int(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => Cell::Int(array.as_primitive::<UInt8Type>().value(row).into()),
        DataType::UInt16 => Cell::Int(array.as_primitive::<UInt16Type>().value(row).into()),
        DataType::UInt32 => Cell::Int(array.as_primitive::<UInt32Type>().value(row).into()),
        DataType::Float32 => Cell::Float(array.as_primitive::<Float32Type>().value(row).into()),
        DataType::Float64 => Cell::Float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Cell::Str(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Cell::Str(array.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Cell::Str(array.as_string_view().value(row).to_string()),
        _ => Cell::Null,
    }
}

pub fn cell_to_json(cell: Cell, kind: ColumnKind) -> serde_json::Value {
    match cell {
        Cell::Null => serde_json::Value::Null,
        Cell::Bool(b) => b.into(),
        Cell::Int(i) => i.into(),
        Cell::Float(f) => serde_json::Number::from_f64(f).map(serde_json::Value::Number).unwrap_or_default(),
        Cell::Str(s) if kind == ColumnKind::Json => serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s)),
        Cell::Str(s) => serde_json::Value::String(s),
    }
}

/// Rows `skip..skip+limit` of one shard, as JSON objects in column order.
pub fn shard_rows(
    shard: Bytes,
    skip: usize,
    limit: usize,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(shard).map_err(|e| format!("reading a shard: {e}"))?;
    let columns = columns_of(builder.schema())?;
    let reader = builder.with_offset(skip).with_limit(limit).build().map_err(|e| format!("reading a shard: {e}"))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch: RecordBatch = batch.map_err(|e| format!("reading a shard: {e}"))?;
        for row in 0..batch.num_rows() {
            let object = columns
                .iter()
                .zip(batch.columns())
                .map(|(column, array)| (column.name.clone(), cell_to_json(cell_at(array.as_ref(), row), column.kind)))
                .collect();
            rows.push(object);
        }
    }
    Ok(rows)
}

/// Rewrites several shards (all of one schema) into one zstd Parquet file, batch by batch.
pub fn merge_shards<W: std::io::Write + Send>(
    shards: impl Iterator<Item = Result<Bytes, String>>,
    out: W,
) -> Result<(), String> {
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::WriterProperties;

    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(|e| e.to_string())?))
        .build();
    let mut out = Some(out);
    let mut writer: Option<ArrowWriter<W>> = None;
    for shard in shards {
        let builder = ParquetRecordBatchReaderBuilder::try_new(shard?).map_err(|e| format!("reading a shard: {e}"))?;
        let schema = builder.schema().clone();
        let reader = builder.build().map_err(|e| format!("reading a shard: {e}"))?;
        if let Some(sink) = out.take() {
            writer = Some(ArrowWriter::try_new(sink, schema, Some(properties.clone())).map_err(|e| e.to_string())?);
        }
        for batch in reader {
            let batch = batch.map_err(|e| format!("reading a shard: {e}"))?;
            if let Some(writer) = writer.as_mut() {
                writer.write(&batch).map_err(|e| format!("writing Parquet: {e}"))?;
            }
        }
    }
    match writer {
        Some(writer) => writer.close().map(|_| ()).map_err(|e| format!("writing Parquet: {e}")),
        None => Err("a version without shards cannot be downloaded".to_string()),
    }
}

/// The non-null values of string column `column` in one shard, in row order: what tokenizers
/// and language models train on. Rows flagged as duplicates (`_duplicate_of` set) are left out,
/// so a version ingested with `dedup=flag` trains like one ingested with `dedup=remove`.
pub fn shard_texts(shard: Bytes, column: &str) -> Result<Vec<String>, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(shard).map_err(|e| format!("reading a shard: {e}"))?;
    let schema = builder.schema().clone();
    let text_index =
        schema.index_of(column).map_err(|_| format!("the version has no column {column:?} to train on"))?;
    let duplicate_index = schema.index_of(crate::pipeline::DUPLICATE_COLUMN).ok();
    let reader = builder.build().map_err(|e| format!("reading a shard: {e}"))?;
    let mut texts = Vec::new();
    for batch in reader {
        let batch: RecordBatch = batch.map_err(|e| format!("reading a shard: {e}"))?;
        let text = batch.column(text_index);
        let duplicates = duplicate_index.map(|i| batch.column(i).clone());
        for row in 0..batch.num_rows() {
            if duplicates.as_ref().is_some_and(|d| !d.is_null(row)) {
                continue;
            }
            if let Cell::Str(value) = cell_at(text.as_ref(), row) {
                texts.push(value);
            }
        }
    }
    Ok(texts)
}
