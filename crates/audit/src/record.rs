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
