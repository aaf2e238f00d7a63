//! Column types, schema inference over the first records, and the conversion of parsed values
//! into typed cells (or a row error that names the column and the problem).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The logical column types a dataset can have. Nested JSON values are kept losslessly as JSON
/// text in a `Json` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnKind {
    Boolean,
    Integer,
    Float,
    String,
    Json,
}

impl ColumnKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnKind::Boolean => "boolean",
            ColumnKind::Integer => "integer",
            ColumnKind::Float => "float",
            ColumnKind::String => "string",
            ColumnKind::Json => "json",
        }
    }

    /// The narrowest kind that holds values of both kinds.
    fn unify(self, other: ColumnKind) -> ColumnKind {
        use ColumnKind::*;
        match (self, other) {
            (a, b) if a == b => a,
            (Integer, Float) | (Float, Integer) => Float,
            _ => Json,
        }
    }
}

impl FromStr for ColumnKind {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "boolean" => Ok(ColumnKind::Boolean),
            "integer" => Ok(ColumnKind::Integer),
            "float" => Ok(ColumnKind::Float),
            "string" => Ok(ColumnKind::String),
            "json" => Ok(ColumnKind::Json),
            other => Err(format!("{other:?} is not a column type; expected boolean, integer, float, string or json")),
        }
    }
}

impl fmt::Display for ColumnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ColumnKind,
}

/// One typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Cell {
    /// An estimate of the memory the cell takes, heap included.
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<Cell>()
            + match self {
                Cell::Str(text) => text.capacity(),
                _ => 0,
            }
    }
}

/// An estimate of the memory a row of cells takes.
pub fn cells_footprint(cells: &[Cell]) -> usize {
    std::mem::size_of::<Vec<Cell>>() + cells.iter().map(Cell::footprint).sum::<usize>()
}

/// The longest column name. Names are repeated in the schema, the profile and the PII report
/// of the manifest, and in every shard, so their length is bounded like the column count.
pub const MAX_COLUMN_NAME_BYTES: usize = 256;

/// Whether `name` may name a column.
pub fn check_column_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_COLUMN_NAME_BYTES {
        let mut end = 32;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        return Err(format!("the column name {:?}\u{2026} is longer than {MAX_COLUMN_NAME_BYTES} bytes", &name[..end]));
    }
    Ok(())
}

/// Infers column kinds from JSON objects, in order of first appearance, and refuses a schema
/// wider than `max_columns`.
#[derive(Debug)]
pub struct JsonInference {
    order: Vec<String>,
    kinds: BTreeMap<String, Option<ColumnKind>>,
    max_columns: usize,
    /// Keys present, over all records observed: how full the schema's rows are.
    cells_present: u64,
    records: u64,
    /// The line whose keys made the schema wider than `SPARSE_MIN_COLUMNS`.
    widened_at: Option<u64>,
}

/// Schemas at least this wide are checked for sparseness.
pub const SPARSE_MIN_COLUMNS: usize = 64;
/// The least share (in percent) of a wide schema's cells the inferred records must fill.
pub const SPARSE_MIN_FILL_PERCENT: u64 = 10;

pub fn json_kind(value: &serde_json::Value) -> Option<ColumnKind> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::Bool(_) => Some(ColumnKind::Boolean),
        serde_json::Value::Number(n) if n.is_i64() => Some(ColumnKind::Integer),
        serde_json::Value::Number(_) => Some(ColumnKind::Float),
        serde_json::Value::String(_) => Some(ColumnKind::String),
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => Some(ColumnKind::Json),
    }
}

impl JsonInference {
    pub fn new(max_columns: usize) -> Self {
        JsonInference {
            order: Vec::new(),
            kinds: BTreeMap::new(),
            max_columns,
            cells_present: 0,
            records: 0,
            widened_at: None,
        }
    }

    /// Adds the keys of the record on `line`; refuses one that would make the schema wider
    /// than `max_columns` or that names a column with an overlong name.
    pub fn observe(&mut self, line: u64, object: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
        self.records += 1;
        self.cells_present += object.len() as u64;
        for (key, value) in object {
            let kind = json_kind(value);
            match self.kinds.get_mut(key) {
                Some(known) => {
                    *known = match (*known, kind) {
                        (Some(a), Some(b)) => Some(a.unify(b)),
                        (a, b) => a.or(b),
                    }
                }
                None => {
                    if self.order.len() == self.max_columns {
                        return Err(format!(
                            "line {line}: field {key:?} would be column {}, but a dataset may have at most {} columns \
                             (max_columns)",
                            self.max_columns + 1,
                            self.max_columns
                        ));
                    }
                    check_column_name(key).map_err(|e| format!("line {line}: {e}"))?;
                    self.order.push(key.clone());
                    self.kinds.insert(key.clone(), kind);
                    if self.order.len() == SPARSE_MIN_COLUMNS + 1 {
                        self.widened_at = Some(line);
                    }
                }
            }
        }
        Ok(())
    }

    /// Refuses a wide schema that the records fill mostly with nulls: a few short records each
    /// naming new keys would otherwise make every later row a thousand null cells, an
    /// amplification of bytes uploaded into memory and shards that nothing else bounds. A
    /// dataset that really is this sparse can declare its schema.
    pub fn check_density(&self) -> Result<(), String> {
        let (Some(line), columns) = (self.widened_at, self.order.len() as u64) else { return Ok(()) };
        let possible = columns.saturating_mul(self.records).max(1);
        let percent = self.cells_present.saturating_mul(100) / possible;
        if percent < SPARSE_MIN_FILL_PERCENT {
            return Err(format!(
                "line {line}: its keys make the schema {columns} columns wide, but the first {} records fill only \
                 {percent}% of their cells (at least {SPARSE_MIN_FILL_PERCENT}% is needed); declare the schema to \
                 ingest data this sparse",
                self.records
            ));
        }
        Ok(())
    }

    /// Columns that were only ever null are strings: the most permissive scalar.
    pub fn finish(self) -> Vec<ColumnSpec> {
        let kinds = self.kinds;
        self.order
            .into_iter()
            .map(|name| {
                let kind = kinds.get(&name).copied().flatten().unwrap_or(ColumnKind::String);
                ColumnSpec { name, kind }
            })
            .collect()
    }
}

/// The kind a CSV field's text suggests; `None` for an empty field.
pub fn text_kind(text: &str) -> Option<ColumnKind> {
    if text.is_empty() {
        None
    } else if text == "true" || text == "false" {
        Some(ColumnKind::Boolean)
    } else if text.parse::<i64>().is_ok() {
        Some(ColumnKind::Integer)
    } else if text.parse::<f64>().is_ok_and(f64::is_finite) {
        Some(ColumnKind::Float)
    } else {
        Some(ColumnKind::String)
    }
}

/// Infers CSV column kinds; a CSV cell is text, so mixed kinds fall back to string.
pub fn unify_text_kinds(current: Option<ColumnKind>, seen: Option<ColumnKind>) -> Option<ColumnKind> {
    match (current, seen) {
        (Some(a), Some(b)) if a == b => Some(a),
        (Some(ColumnKind::Integer), Some(ColumnKind::Float)) | (Some(ColumnKind::Float), Some(ColumnKind::Integer)) => {
            Some(ColumnKind::Float)
        }
        (Some(_), Some(_)) => Some(ColumnKind::String),
        (a, b) => a.or(b),
    }
}

/// Converts a JSON value to a cell of `kind`, or says why it does not fit.
pub fn json_cell(value: &serde_json::Value, kind: ColumnKind) -> Result<Cell, String> {
    use serde_json::Value;
    Ok(match (kind, value) {
        (_, Value::Null) => Cell::Null,
        (ColumnKind::Json, other) => Cell::Str(other.to_string()),
        (ColumnKind::Boolean, Value::Bool(b)) => Cell::Bool(*b),
        (ColumnKind::Integer, Value::Number(n)) if n.is_i64() => Cell::Int(n.as_i64().unwrap_or_default()),
        (ColumnKind::Float, Value::Number(n)) => Cell::Float(n.as_f64().unwrap_or(f64::NAN)),
        (ColumnKind::String, Value::String(s)) => Cell::Str(s.clone()),
        (expected, found) => {
            return Err(format!(
                "expected {expected}, found {}",
                json_kind(found).map(|k| k.as_str()).unwrap_or("null")
            ))
        }
    })
}

/// Converts CSV text to a cell of `kind`, or says why it does not fit.
pub fn text_cell(text: &str, kind: ColumnKind) -> Result<Cell, String> {
    if text.is_empty() {
        return Ok(Cell::Null);
    }
    let mismatch = || format!("expected {kind}, found {text:?}");
    Ok(match kind {
        ColumnKind::Boolean => match text {
            "true" => Cell::Bool(true),
            "false" => Cell::Bool(false),
            _ => return Err(mismatch()),
        },
        ColumnKind::Integer => Cell::Int(text.parse().map_err(|_| mismatch())?),
        ColumnKind::Float => Cell::Float(text.parse().map_err(|_| mismatch())?),
        ColumnKind::String | ColumnKind::Json => Cell::Str(text.to_string()),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn inference_widens_numbers_and_keeps_mixed_values_as_json() {
        let mut inference = JsonInference::new(10);
        for (number, line) in [r#"{"a": 1, "b": "x", "c": null}"#, r#"{"a": 2.5, "b": 3, "d": [1]}"#].iter().enumerate()
        {
            inference.observe(number as u64 + 1, &serde_json::from_str(line).unwrap()).unwrap();
        }
        let kinds: Vec<(String, ColumnKind)> = inference.finish().into_iter().map(|c| (c.name, c.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("a".to_string(), ColumnKind::Float),
                ("b".to_string(), ColumnKind::Json),
                ("c".to_string(), ColumnKind::String),
                ("d".to_string(), ColumnKind::Json),
            ]
        );
    }

    #[test]
    fn cells_name_the_mismatch() {
        assert_eq!(
            json_cell(&serde_json::json!("7"), ColumnKind::Integer).unwrap_err(),
            "expected integer, found string"
        );
        assert_eq!(json_cell(&serde_json::json!(7), ColumnKind::Float).unwrap(), Cell::Float(7.0));
        assert_eq!(text_cell("x", ColumnKind::Integer).unwrap_err(), "expected integer, found \"x\"");
        assert_eq!(text_kind("12"), Some(ColumnKind::Integer));
        assert_eq!(unify_text_kinds(Some(ColumnKind::Integer), Some(ColumnKind::String)), Some(ColumnKind::String));
    }
}
