//! Parsing one JSON line strictly. `serde_json::Value` keeps the last of two equal keys and
//! silently drops the first, so a row `{"a": 1, "a": 2}` would lose data; here a repeated key
//! (at any depth) makes the row bad instead. The top-level object's keys are also counted while
//! parsing, so a row with more keys than a dataset may have columns is refused before it is
//! built.

use std::fmt;

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `text` as one JSON object of at most `max_fields` keys, or says why it is not one.
pub fn parse_object(text: &str, max_fields: usize) -> Result<Map<String, Value>, String> {
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        return Err("expected a JSON object".to_string());
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let object = TopLevel { max_fields }.deserialize(&mut deserializer).map_err(describe)?;
    deserializer.end().map_err(describe)?;
    Ok(object)
}

/// Syntax errors keep serde_json's wording with the column; our own refusals (duplicate key,
/// too many keys) read better without serde_json's "at line 1 column N" suffix, since the
/// caller names the input line.
fn describe(error: serde_json::Error) -> String {
    match error.classify() {
        serde_json::error::Category::Data => {
            let text = error.to_string();
            let suffix = format!(" at line {} column {}", error.line(), error.column());
            text.strip_suffix(&suffix).map(str::to_string).unwrap_or(text)
        }
        _ => format!("invalid JSON at column {}: {error}", error.column()),
    }
}

/// The top-level object of a line.
struct TopLevel {
    max_fields: usize,
}

impl<'de> DeserializeSeed<'de> for TopLevel {
    type Value = Map<String, Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopLevel {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if object.len() == self.max_fields {
                return Err(A::Error::custom(format!(
                    "the object has more than {} keys; a dataset may have at most {} columns",
                    self.max_fields, self.max_fields
                )));
            }
            if object.contains_key(&key) {
                return Err(A::Error::custom(format!("duplicate field {key:?}")));
            }
            let value = access.next_value_seed(StrictValue)?;
            object.insert(key, value);
        }
        Ok(object)
    }
}

/// Any JSON value, refusing objects with a repeated key. Nesting depth is limited by
/// serde_json's own recursion limit.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_string()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = access.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(A::Error::custom(format!("duplicate key {key:?} in a nested object")));
            }
            let value = access.next_value_seed(StrictValue)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_like_serde_json_but_refuses_repeated_and_surplus_keys() {
        let line = r#"{"a": 1, "b": [1.5, "x", null, {"c": true}], "d": 18446744073709551615}"#;
        assert_eq!(Value::Object(parse_object(line, 10).unwrap()), serde_json::from_str::<Value>(line).unwrap());
        assert_eq!(parse_object(r#"{"a": 1, "a": 2}"#, 10).unwrap_err(), "duplicate field \"a\"");
        assert_eq!(
            parse_object(r#"{"m": {"k": 1, "k": 2}}"#, 10).unwrap_err(),
            "duplicate key \"k\" in a nested object"
        );
        assert_eq!(
            parse_object(r#"{"a": 1, "b": 2, "c": 3}"#, 2).unwrap_err(),
            "the object has more than 2 keys; a dataset may have at most 2 columns"
        );
        assert_eq!(parse_object("[1]", 10).unwrap_err(), "expected a JSON object");
        assert!(parse_object(r#"{"a": 1} x"#, 10).unwrap_err().starts_with("invalid JSON at column 10"));
        assert!(parse_object(r#"{"a": 1"#, 10).unwrap_err().starts_with("invalid JSON"));
    }
}
