//! The canonical audit record: what one leaf of the audit log says, byte for byte.
//!
//! A Merkle tree commits to bytes, not to meanings, so every record has exactly one encoding:
//! compact JSON with the fields in their declared order and no whitespace. Decoding is strict in
//! the other direction too; bytes that decode to a record but are not its canonical encoding
//! (reordered fields, escaped characters that need no escaping, spaces, unknown fields) are
//! refused, so two different byte strings can never stand for the same record in the log.
//!
//! The free-form details of a request are kept outside the log (they may be large, or need
//! redaction); the record carries only their digest, computed here over a key-sorted encoding
//! so the digest does not depend on how a JSON object happened to be built.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The policy decision the audited request received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The request was allowed; serialised as `"allow"`.
    Allow,
    /// The request was denied; serialised as `"deny"`.
    Deny,
}

/// One entry of the audit log. The field order is part of the format: it is the order of the
/// canonical JSON encoding, so fields must never be reordered, and new ones only appended with
/// care (old records would no longer decode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position of the record in the log, from 0.
    pub index: u64,
    /// When the decision was made, RFC 3339 in UTC.
    pub time: String,
    /// The tenant the request acted in, if any.
    pub tenant: Option<String>,
    /// Who made the request.
    pub principal: String,
    /// What was attempted.
    pub action: String,
    /// What it was attempted on.
    pub resource: String,
    /// Whether it was allowed.
    pub decision: Decision,
    /// The policies that determined the decision.
    pub policies: Vec<String>,
    /// The request identifier, to correlate with traces and logs.
    pub request_id: String,
    /// Hex SHA-256 of the request details, see [`details_digest`].
    pub details_digest: String,
}

/// Why bytes are not a canonical audit record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The bytes are not JSON of the record's shape (includes unknown or missing fields).
    #[error("record does not decode: {0}")]
    Decode(String),
    /// The bytes decode, but are not the canonical encoding of what they decode to.
    #[error("record bytes are not the canonical encoding of the record")]
    NotCanonical,
}

impl AuditRecord {
    /// The canonical encoding: compact JSON, fields in declared order. These bytes are the leaf
    /// data of the Merkle tree.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // serde_json only fails on maps with non-string keys or on failing custom Serialize
        // impls; a record holds neither, only strings, integers, an option, a list and a unit
        // enum.
        serde_json::to_vec(self).expect("an audit record always serialises to JSON")
    }

    /// Decodes a record and checks that `bytes` are exactly its canonical encoding.
    pub fn from_canonical(bytes: &[u8]) -> Result<AuditRecord, RecordError> {
        let record: AuditRecord = serde_json::from_slice(bytes).map_err(|e| RecordError::Decode(e.to_string()))?;
        // Re-encoding catches everything the decoder tolerates: whitespace, field order,
        // escapes, number spellings such as 1e1.
        if record.canonical_bytes() != bytes {
            return Err(RecordError::NotCanonical);
        }
        Ok(record)
    }
}

/// Milliseconds since the Unix epoch of a UTC time in the RFC 3339 form records use,
/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`; `None` for anything else. Written here (rather than by
/// a time library) to keep the crate's dependencies at hashing and signing; fractions beyond
/// milliseconds are truncated.
pub fn utc_millis(time: &str) -> Option<i64> {
    let bytes = time.as_bytes();
    let rest = bytes.strip_suffix(b"Z")?;
    let (whole, fraction) = match rest.iter().position(|&b| b == b'.') {
        Some(dot) => (&rest[..dot], Some(&rest[dot + 1..])),
        None => (rest, None),
    };
    let [y0, y1, y2, y3, b'-', mo0, mo1, b'-', d0, d1, b'T', h0, h1, b':', mi0, mi1, b':', s0, s1] = *whole else {
        return None;
    };
    let number = |digits: &[u8]| -> Option<i64> {
        digits.iter().try_fold(0i64, |value, &b| b.is_ascii_digit().then(|| value * 10 + i64::from(b - b'0')))
    };
    let (year, month, day) = (number(&[y0, y1, y2, y3])?, number(&[mo0, mo1])?, number(&[d0, d1])?);
    let (hour, minute, second) = (number(&[h0, h1])?, number(&[mi0, mi1])?, number(&[s0, s1])?);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    // Second 60 is a leap second, which RFC 3339 allows.
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let millis = match fraction {
        None => 0,
        Some(digits) if !digits.is_empty() => {
            let mut padded = [b'0'; 3];
            for (slot, digit) in padded.iter_mut().zip(digits) {
                *slot = *digit;
            }
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            number(&padded)?
        }
        Some(_) => return None,
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(seconds * 1_000 + millis)
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Hex SHA-256 of the compact JSON encoding of `details`, with object keys sorted.
///
/// This is the encoding serde_json produces with its default sorted maps. It is written out
/// here rather than left to `serde_json::to_vec` because serde_json's `preserve_order` feature,
/// once any crate in the build enables it, makes maps keep insertion order, and the digest
/// would then depend on how the value was built rather than on what it says.
pub fn details_digest(details: &Value) -> String {
    let mut text = String::new();
    write_sorted(details, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Appends the compact encoding of `value`, with every object's keys in byte order (the order
/// of Rust's `str` comparison, which is also serde_json's sorted map order).
fn write_sorted(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // Value's Display is serde_json's compact writer, so strings get its escaping.
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                write_sorted(item, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn sample() -> AuditRecord {
        AuditRecord {
            index: 17,
            time: "2025-01-02T03:04:05.678Z".to_string(),
            tenant: Some("acme".to_string()),
            principal: "user:alice".to_string(),
            action: "model.deploy".to_string(),
            resource: "model:acme/llm-7b".to_string(),
            decision: Decision::Allow,
            policies: vec!["p1".to_string(), "tenant-admins".to_string()],
            request_id: "req-0001".to_string(),
            details_digest: details_digest(&json!({})),
        }
    }

    #[test]
    fn canonical_bytes_are_compact_and_in_declared_order() {
        let record = sample();
        let expected = format!(
            concat!(
                r#"{{"index":17,"time":"2025-01-02T03:04:05.678Z","tenant":"acme","#,
                r#""principal":"user:alice","action":"model.deploy","#,
                r#""resource":"model:acme/llm-7b","decision":"allow","#,
                r#""policies":["p1","tenant-admins"],"request_id":"req-0001","#,
                r#""details_digest":"{}"}}"#
            ),
            record.details_digest
        );
        assert_eq!(String::from_utf8(record.canonical_bytes()).unwrap(), expected);

        let denied = AuditRecord { tenant: None, decision: Decision::Deny, policies: vec![], ..record };
        let text = String::from_utf8(denied.canonical_bytes()).unwrap();
        assert!(text.contains(r#""tenant":null,"#));
        assert!(text.contains(r#""decision":"deny","policies":[],"#));
    }

    #[test]
    fn canonical_round_trip() {
        let record = sample();
        let bytes = record.canonical_bytes();
        assert_eq!(AuditRecord::from_canonical(&bytes).unwrap(), record);

        let tricky = AuditRecord { principal: "user:\"quoted\" \\ back\nslash é 🦀 \u{1}".to_string(), ..record };
        let bytes = tricky.canonical_bytes();
        assert_eq!(AuditRecord::from_canonical(&bytes).unwrap(), tricky);
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        let canonical = String::from_utf8(sample().canonical_bytes()).unwrap();
        let variants = [
            // whitespace
            canonical.replacen(r#""index":17"#, r#""index": 17"#, 1),
            format!("{canonical}\n"),
            format!(" {canonical}"),
            // an unnecessary escape
            canonical.replacen("alice", r"\u0061lice", 1),
            // another spelling of the number
            canonical.replacen(r#""index":17"#, r#""index":1.7e1"#, 1),
            // fields out of order
            canonical.replacen(
                r#"{"index":17,"time":"2025-01-02T03:04:05.678Z","#,
                r#"{"time":"2025-01-02T03:04:05.678Z","index":17,"#,
                1,
            ),
        ];
        for variant in &variants {
            assert_ne!(variant, &canonical);
            assert!(AuditRecord::from_canonical(variant.as_bytes()).is_err(), "accepted {variant}");
        }
        // Unknown, missing and duplicated fields, and wrong values, do not decode at all.
        let undecodable = [
            canonical.replacen('}', r#","extra":1}"#, 1),
            canonical.replacen(r#""index":17,"#, "", 1),
            canonical.replacen(r#""index":17,"#, r#""index":17,"index":17,"#, 1),
            canonical.replacen(r#""allow""#, r#""Allow""#, 1),
            canonical.replacen(r#""index":17"#, r#""index":-1"#, 1),
            String::new(),
        ];
        for variant in &undecodable {
            assert!(
                matches!(AuditRecord::from_canonical(variant.as_bytes()), Err(RecordError::Decode(_))),
                "accepted {variant}"
            );
        }
    }

    #[test]
    fn details_digest_is_sha256_of_sorted_compact_json() {
        let details = json!({"b": 1, "a": [true, null, {"d": "x\"y", "c": 1.5}], "é": -2});
        let canonical = r#"{"a":[true,null,{"c":1.5,"d":"x\"y"}],"b":1,"é":-2}"#;
        assert_eq!(details_digest(&details), hex::encode(Sha256::digest(canonical.as_bytes())));
        assert_eq!(
            details_digest(&json!({})),
            // SHA-256 of the two bytes "{}".
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn record_times_parse_to_unix_milliseconds() {
        // The factory's own spelling (see factory_core::time), and its known value.
        assert_eq!(utc_millis("2023-11-14T22:13:20.123Z"), Some(1_700_000_000_123));
        assert_eq!(utc_millis("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(utc_millis("2023-11-14T22:13:20.1Z"), Some(1_700_000_000_100));
        assert_eq!(utc_millis("2023-11-14T22:13:20.123456789Z"), Some(1_700_000_000_123));
        assert_eq!(utc_millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(utc_millis("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        assert_eq!(utc_millis("2000-03-01T00:00:00Z"), Some(951_868_800_000));
        for bad in [
            "",
            "2023-11-14T22:13:20",
            "2023-11-14 22:13:20Z",
            "2023-11-14T22:13:20+00:00",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:2xZ",
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20.1a3Z",
        ] {
            assert_eq!(utc_millis(bad), None, "{bad}");
        }
    }

    #[test]
    fn details_digest_ignores_insertion_order() {
        let mut forward = serde_json::Map::new();
        forward.insert("zeta".into(), json!(1));
        forward.insert("alpha".into(), json!({"y": 2, "x": 3}));
        let mut backward = serde_json::Map::new();
        backward.insert("alpha".into(), json!({"x": 3, "y": 2}));
        backward.insert("zeta".into(), json!(1));
        assert_eq!(details_digest(&Value::Object(forward)), details_digest(&Value::Object(backward)));
    }
}
