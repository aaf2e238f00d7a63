//! Ingest end to end on real bytes: every format, every kind of bad input, PII treatments,
//! dedup, and reading the shards back.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use bytes::Bytes;

use super::*;

/// Keeps shards in memory, by SHA-256, like the object store does on disk.
#[derive(Default)]
struct MemorySink {
    shards: HashMap<String, Vec<u8>>,
    order: Vec<String>,
}

impl ShardSink for MemorySink {
    fn put_shard(&mut self, parquet: Vec<u8>) -> Result<String, String> {
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(&parquet));
        self.order.push(digest.clone());
        self.shards.insert(digest.clone(), parquet);
        Ok(digest)
    }
}

fn run(input: &[u8], options: &IngestOptions) -> (Result<Ingested, IngestError>, MemorySink) {
    let mut sink = MemorySink::default();
    let result = ingest(std::io::Cursor::new(input.to_vec()), options, &mut sink);
    (result, sink)
}

fn all_rows(sink: &MemorySink, ingested: &Ingested) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let mut rows = Vec::new();
    for shard in &ingested.shards {
        rows.extend(read::shard_rows(Bytes::from(sink.shards[&shard.digest].clone()), 0, usize::MAX).unwrap());
    }
    rows
}

fn jsonl(options: impl FnOnce(&mut IngestOptions)) -> IngestOptions {
    let mut o = IngestOptions::new(Format::Jsonl);
    options(&mut o);
    o
}

#[test]
fn jsonl_round_trips_through_parquet_with_inferred_types() {
    let input = b"{\"id\": 1, \"text\": \"hello\", \"score\": 0.5, \"ok\": true, \"meta\": {\"a\": [1]}}\n\n{\"id\": 2, \"text\": \"world\", \"score\": 2, \"ok\": null}\n";
    let (result, sink) = run(input, &jsonl(|_| {}));
    let ingested = result.unwrap();
    assert_eq!(ingested.rows, 2);
    let kinds: Vec<(String, ColumnKind)> = ingested.schema.iter().map(|c| (c.name.clone(), c.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            ("id".into(), ColumnKind::Integer),
            ("text".into(), ColumnKind::String),
            ("score".into(), ColumnKind::Float),
            ("ok".into(), ColumnKind::Boolean),
            ("meta".into(), ColumnKind::Json),
        ]
    );
    let rows = all_rows(&sink, &ingested);
    assert_eq!(
        serde_json::Value::Object(rows[0].clone()),
        serde_json::json!({"id": 1, "text": "hello", "score": 0.5, "ok": true, "meta": {"a": [1]}})
    );
    assert_eq!(rows[1]["score"], 2.0);
    assert_eq!(rows[1]["meta"], serde_json::Value::Null);
    assert_eq!(ingested.source.bytes, input.len() as u64);
    assert_eq!(ingested.source.compression, Compression::None);
}

#[test]
fn bad_rows_are_named_by_line_and_fail_or_skip() {
    let input = b"{\"n\": 1}\n{\"n\": 2\n{\"n\": \"three\"}\n[4]\n{\"n\": 5}\n{\"m\": 6}\n";
    // The schema comes from the first record only, so later records are checked against it.
    let (result, sink) = run(input, &jsonl(|o| o.inference_rows = 1));
    let error = result.unwrap_err();
    assert_eq!(error.kind, IngestErrorKind::Rejected);
    assert!(error.message.starts_with("line 2: invalid JSON"), "{}", error.message);
    assert!(sink.shards.is_empty(), "nothing is stored before the first bad row fails the ingest");

    let (result, _) = run(
        input,
        &jsonl(|o| {
            o.on_error = OnError::Skip;
            o.inference_rows = 1;
        }),
    );
    let ingested = result.unwrap();
    assert_eq!((ingested.rows, ingested.rows_skipped), (2, 4));
    let lines: Vec<u64> = ingested.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![2, 3, 4, 6]);
    assert_eq!(ingested.errors[1].message, "field \"n\": expected integer, found string");
    assert_eq!(ingested.errors[2].message, "expected a JSON object");
    assert!(ingested.errors[3].message.contains("not in the dataset's schema"), "{:?}", ingested.errors[3]);
}

#[test]
fn invalid_utf8_oversized_rows_and_empty_inputs_are_refused_clearly() {
    let mut input = b"{\"t\": \"ok\"}\n{\"t\": \"".to_vec();
    input.extend_from_slice(&[0xff, 0xfe]);
    input.extend_from_slice(b"\"}\n");
    let error = run(&input, &jsonl(|_| {})).0.unwrap_err();
    assert_eq!(error.message, "line 2: invalid UTF-8 at byte 7");

    let long = format!("{{\"t\": \"{}\"}}\n{{\"t\": \"short\"}}\n", "x".repeat(5000));
    let ingested = run(
        long.as_bytes(),
        &jsonl(|o| {
            o.max_row_bytes = 1024;
            o.on_error = OnError::Skip;
        }),
    )
    .0
    .unwrap();
    assert_eq!(ingested.rows, 1);
    assert_eq!(ingested.errors[0].message, "row is longer than 1024 bytes");

    let error = run(b"", &jsonl(|_| {})).0.unwrap_err();
    assert_eq!(error.message, "the upload holds no rows");
    let error = run(b"\n\n  \n", &jsonl(|_| {})).0.unwrap_err();
    assert_eq!(error.message, "the upload holds no rows");
    let error = run(b"{\"a\": [}\n", &jsonl(|o| o.on_error = OnError::Skip)).0.unwrap_err();
    assert!(error.message.contains("all 1 rows were bad"), "{}", error.message);
}

#[test]
fn a_type_conflict_after_the_inference_window_is_a_schema_error() {
    let mut input = String::new();
    for i in 0..5 {
        input.push_str(&format!("{{\"n\": {i}}}\n"));
    }
    input.push_str("{\"n\": \"late string\"}\n");
    let error = run(input.as_bytes(), &jsonl(|o| o.inference_rows = 3)).0.unwrap_err();
    assert_eq!(error.message, "line 6: field \"n\": expected integer, found string");
    let declared = jsonl(|o| o.schema = Some(vec![ColumnSpec { name: "n".into(), kind: ColumnKind::String }]));
    let error = run(b"{\"n\": 1}\n", &declared).0.unwrap_err();
    assert_eq!(error.message, "line 1: field \"n\": expected string, found integer");
}

#[test]
fn csv_and_compressed_inputs() {
    let csv = b"id,name,score\n1,anna,3.5\n2,ben,\n3,carl,x\n";
    let mut options = IngestOptions::new(Format::Csv);
    let inferred = run(csv, &options).0.unwrap();
    assert_eq!(inferred.schema[2].kind, ColumnKind::String, "\"x\" in the first records makes the column text");
    options.inference_rows = 2;
    let error = run(csv, &options).0.unwrap_err();
    assert_eq!(error.message, "line 4: column 3: expected float, found \"x\"");
    options.on_error = OnError::Skip;
    let (result, sink) = run(csv, &options);
    let ingested = result.unwrap();
    assert_eq!(ingested.rows, 2);
    let rows = all_rows(&sink, &ingested);
    assert_eq!(rows[1]["score"], serde_json::Value::Null);
    let ragged = run(b"a,b\n1,2\n3\n", &IngestOptions::new(Format::Csv)).0.unwrap_err();
    assert_eq!(ragged.message, "line 3: expected 2 fields as in the header, found 1");

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, b"{\"a\": 1}\n{\"a\": 2}\n").unwrap();
    let gz = gz.finish().unwrap();
    let ingested = run(&gz, &jsonl(|_| {})).0.unwrap();
    assert_eq!(
        (ingested.rows, ingested.source.compression, ingested.source.bytes),
        (2, Compression::Gzip, gz.len() as u64)
    );
    let zst = zstd::encode_all(&b"{\"a\": 1}\n"[..], 3).unwrap();
    assert_eq!(run(&zst, &jsonl(|_| {})).0.unwrap().source.compression, Compression::Zstd);
    let truncated = &gz[..gz.len() - 12];
    assert_eq!(run(truncated, &jsonl(|_| {})).0.unwrap_err().kind, IngestErrorKind::Input);
}

#[test]
fn text_by_lines_or_paragraphs() {
    let text = b"First line\nsecond line\n\nNew paragraph\n";
    let mut options = IngestOptions::new(Format::Text);
    options.text_column = Some("text".into());
    assert_eq!(run(text, &options).0.unwrap().rows, 3);
    options.paragraphs = true;
    let (result, sink) = run(text, &options);
    let ingested = result.unwrap();
    let rows = all_rows(&sink, &ingested);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["text"], "First line\nsecond line");
    assert!(ingested.profile["text"]["documents"].as_u64().is_some(), "{}", ingested.profile);
}

#[test]
fn parquet_uploads_and_multi_shard_merges_round_trip() {
    let mut input = String::new();
    for i in 0..20_000 {
        input.push_str(&format!("{{\"i\": {i}, \"t\": \"row {i}\"}}\n"));
    }
    let (result, sink) = run(input.as_bytes(), &jsonl(|o| o.max_shard_rows = 8192));
    let ingested = result.unwrap();
    assert!(ingested.shards.len() >= 2, "{:?}", ingested.shards);
    assert_eq!(ingested.shards.iter().map(|s| s.rows).sum::<u64>(), 20_000);
    let mut merged = Vec::new();
    let shards = sink.order.iter().map(|d| Ok(Bytes::from(sink.shards[d].clone())));
    read::merge_shards(shards, &mut merged).unwrap();
    let (result, sink) = run(&merged, &IngestOptions::new(Format::Parquet));
    let again = result.unwrap();
    assert_eq!(again.rows, 20_000);
    let rows = all_rows(&sink, &again);
    assert_eq!(rows[19_999]["t"], "row 19999");
    let error = run(b"not parquet at all", &IngestOptions::new(Format::Parquet)).0.unwrap_err();
    assert!(error.message.contains("not a readable Parquet file"), "{}", error.message);
}

#[test]
fn pii_is_reported_and_treated_per_policy() {
    let input = b"{\"text\": \"write to anna@example.org today\", \"contact\": \"+49 30 1234567\", \"note\": \"none\"}\n{\"text\": \"no pii here\", \"contact\": null, \"note\": \"none\"}\n";
    let mut policy = PiiPolicy { default: PiiTreatment::Mask, columns: Default::default() };
    policy.columns.insert("contact".into(), PiiTreatment::Hash);
    let (result, sink) = run(
        input,
        &jsonl(|o| {
            o.pii_policy = policy.clone();
            o.pii_hash_key = b"tenant-key".to_vec();
        }),
    );
    let ingested = result.unwrap();
    let rows = all_rows(&sink, &ingested);
    assert_eq!(rows[0]["text"], "write to [EMAIL] today");
    let hashed = rows[0]["contact"].as_str().unwrap();
    assert!(hashed.starts_with("[PHONE:") && !hashed.contains("1234567"), "{hashed}");
    assert_eq!(ingested.pii_columns.get("text"), Some(&PiiTreatment::Mask));
    assert_eq!(ingested.pii_columns.get("contact"), Some(&PiiTreatment::Hash));
    assert!(ingested.pii.to_string().contains("email"), "{}", ingested.pii);

    let dropping = PiiPolicy { default: PiiTreatment::DropColumn, columns: Default::default() };
    let (result, sink) = run(input, &jsonl(|o| o.pii_policy = dropping));
    let ingested = result.unwrap();
    assert_eq!(ingested.dropped_columns, vec!["text".to_string(), "contact".to_string()]);
    assert_eq!(all_rows(&sink, &ingested)[0].keys().collect::<Vec<_>>(), vec!["note"]);

    let keeping = PiiPolicy { default: PiiTreatment::Keep, columns: Default::default() };
    let (result, sink) = run(input, &jsonl(|o| o.pii_policy = keeping));
    let ingested = result.unwrap();
    let mut rows = all_rows(&sink, &ingested);
    assert_eq!(rows[0]["text"], "write to anna@example.org today");
    mask_pii_columns(&mut rows, &["text".to_string()]);
    assert_eq!(rows[0]["text"], "write to [EMAIL] today");
}

#[test]
fn duplicates_are_removed_or_flagged() {
    let input = b"{\"t\": \"The quick brown fox jumps over the lazy dog near the river bank today\"}\n{\"t\": \"the quick brown fox  jumps over the lazy dog near the river bank today\"}\n{\"t\": \"Something else entirely, with other words in it, about the weather tomorrow\"}\n";
    let (result, _) = run(
        input,
        &jsonl(|o| {
            o.text_column = Some("t".into());
            o.dedup = DedupMode::Remove;
        }),
    );
    let ingested = result.unwrap();
    assert_eq!(ingested.rows, 2);
    let (result, sink) = run(
        input,
        &jsonl(|o| {
            o.text_column = Some("t".into());
            o.dedup = DedupMode::Flag;
        }),
    );
    let ingested = result.unwrap();
    let rows = all_rows(&sink, &ingested);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1][pipeline::DUPLICATE_COLUMN], 0);
    assert_eq!(rows[2][pipeline::DUPLICATE_COLUMN], serde_json::Value::Null);
    let error = run(input, &jsonl(|o| o.dedup = DedupMode::Remove)).0.unwrap_err();
    assert!(error.message.contains("text_column"), "{}", error.message);
}

#[test]
fn training_text_leaves_out_flagged_duplicates() {
    let input = b"{\"t\": \"The quick brown fox jumps over the lazy dog near the river bank today\"}\n{\"t\": \"the quick brown fox  jumps over the lazy dog near the river bank today\"}\n{\"t\": null}\n{\"t\": \"Something else entirely\"}\n";
    let (result, sink) = run(
        input,
        &jsonl(|o| {
            o.text_column = Some("t".into());
            o.dedup = DedupMode::Flag;
        }),
    );
    let ingested = result.unwrap();
    let shard = Bytes::from(sink.shards[&ingested.shards[0].digest].clone());
    let texts = read::shard_texts(shard.clone(), "t").unwrap();
    assert_eq!(
        texts,
        vec!["The quick brown fox jumps over the lazy dog near the river bank today", "Something else entirely"]
    );
    assert!(read::shard_texts(shard, "missing").unwrap_err().contains("no column \"missing\""));
}
