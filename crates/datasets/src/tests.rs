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

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, bytes).unwrap();
    gz.finish().unwrap()
}

/// Writes `batch` as a Parquet file, as a client would upload it.
fn parquet_file(batch: &arrow_array::RecordBatch) -> Vec<u8> {
    let mut writer = parquet::arrow::ArrowWriter::try_new(Vec::new(), batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.into_inner().unwrap()
}

fn string_batch(names: &[&str], rows: usize) -> arrow_array::RecordBatch {
    use std::sync::Arc;
    let fields: Vec<arrow_schema::Field> =
        names.iter().map(|n| arrow_schema::Field::new(*n, arrow_schema::DataType::Utf8, true)).collect();
    let columns: Vec<arrow_array::ArrayRef> = names
        .iter()
        .map(|n| {
            Arc::new(arrow_array::StringArray::from_iter_values((0..rows).map(|i| format!("{n}{i}"))))
                as arrow_array::ArrayRef
        })
        .collect();
    arrow_array::RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), columns).unwrap()
}

// Issue 16, point 18: `a,a` used to keep one of the two columns and drop the other silently.
#[test]
fn duplicate_column_names_are_refused_in_every_format() {
    for header in ["a,a\n1,2\n", "a, a\n1,2\n", "id,a,b,a\n1,2,3,4\n"] {
        let error = run(header.as_bytes(), &IngestOptions::new(Format::Csv)).0.unwrap_err();
        assert_eq!(error.kind, IngestErrorKind::Rejected);
        assert_eq!(
            error.message, "line 1: the CSV header names column \"a\" twice; every column needs its own name",
            "{header}"
        );
    }

    // serde_json keeps the last of two equal keys; the row is bad instead, at any depth.
    let error = run(b"{\"a\": 1}\n{\"a\": 1, \"a\": 2}\n", &jsonl(|_| {})).0.unwrap_err();
    assert_eq!(error.message, "line 2: duplicate field \"a\"");
    let error = run(b"{\"m\": {\"k\": 1, \"k\": 2}}\n", &jsonl(|_| {})).0.unwrap_err();
    assert_eq!(error.message, "line 1: duplicate key \"k\" in a nested object");
    let ingested =
        run(b"{\"a\": 1}\n{\"a\": 1, \"a\": 2}\n{\"a\": 3}\n", &jsonl(|o| o.on_error = OnError::Skip)).0.unwrap();
    assert_eq!((ingested.rows, ingested.errors[0].line), (2, 2));

    let file = parquet_file(&string_batch(&["a", "b", "a"], 3));
    let error = run(&file, &IngestOptions::new(Format::Parquet)).0.unwrap_err();
    assert_eq!(error.kind, IngestErrorKind::Rejected);
    assert_eq!(error.message, "the Parquet file has two columns named \"a\"; every column needs its own name");
}

// Issue 16, point 7: one row of 5,000 keys then 20,000 `{}` (12 KB of gzip) made a schema of
// 5,000 columns that every empty row then filled with nulls: 940 MB of memory and a 2.6 MB
// manifest. The column count is capped, naming the line and the limit.
#[test]
fn the_column_count_is_capped_naming_the_line_and_the_limit() {
    let wide: String = (0..5000).map(|i| format!("\"k{i}\": {i}")).collect::<Vec<_>>().join(", ");
    let mut attack = format!("{{{wide}}}\n");
    attack.push_str(&"{}\n".repeat(20_000));
    let (result, sink) = run(&gzip(attack.as_bytes()), &jsonl(|_| {}));
    let error = result.unwrap_err();
    assert_eq!(error.kind, IngestErrorKind::Rejected);
    assert_eq!(error.message, "line 1: the object has more than 1000 keys; a dataset may have at most 1000 columns");
    assert!(sink.shards.is_empty());

    // Keys spread over several lines are counted together.
    let mut spread = String::new();
    for line in 0..4 {
        let keys: Vec<String> = (0..4).map(|k| format!("\"c{line}_{k}\": 1")).collect();
        spread.push_str(&format!("{{{}}}\n", keys.join(", ")));
    }
    let error = run(spread.as_bytes(), &jsonl(|o| o.max_columns = 10)).0.unwrap_err();
    assert_eq!(
        error.message,
        "line 3: field \"c2_2\" would be column 11, but a dataset may have at most 10 columns (max_columns)"
    );

    let header: Vec<String> = (0..11).map(|i| format!("c{i}")).collect();
    let csv = format!("{}\n", header.join(","));
    let mut options = IngestOptions::new(Format::Csv);
    options.max_columns = 10;
    let error = run(csv.as_bytes(), &options).0.unwrap_err();
    assert_eq!(error.message, "line 1: the CSV header has 11 columns; a dataset may have at most 10 (max_columns)");

    let names: Vec<String> = (0..11).map(|i| format!("c{i}")).collect();
    let file = parquet_file(&string_batch(&names.iter().map(String::as_str).collect::<Vec<_>>(), 2));
    let mut options = IngestOptions::new(Format::Parquet);
    options.max_columns = 10;
    let error = run(&file, &options).0.unwrap_err();
    assert_eq!(error.message, "the Parquet file has 11 columns; a dataset may have at most 10 (max_columns)");

    let long_name = "n".repeat(300);
    let error = run(format!("{{\"{long_name}\": 1}}\n").as_bytes(), &jsonl(|_| {})).0.unwrap_err();
    assert!(error.message.starts_with("line 1: the column name \"nnnn"), "{}", error.message);
    assert!(error.message.ends_with("is longer than 256 bytes"), "{}", error.message);
}

// Issue 16, point 7, within the column cap: a few short lines naming new keys made every row a
// thousand cells. A wide schema the first records leave mostly null is refused, naming the line
// that widened it; a declared schema may still be that sparse.
#[test]
fn a_mostly_null_inferred_schema_is_refused() {
    let wide: String = (0..1000).map(|i| format!("\"k{i}\": {i}")).collect::<Vec<_>>().join(", ");
    let mut attack = "{\"k0\": 1}\n".to_string();
    attack.push_str(&format!("{{{wide}}}\n"));
    attack.push_str(&"{}\n".repeat(20_000));
    let error = run(&gzip(attack.as_bytes()), &jsonl(|_| {})).0.unwrap_err();
    assert_eq!(error.kind, IngestErrorKind::Rejected);
    assert!(
        error
            .message
            .starts_with("line 2: its keys make the schema 1000 columns wide, but the first 1000 records fill only 0%"),
        "{}",
        error.message
    );

    let declared: Vec<ColumnSpec> =
        (0..1000).map(|i| ColumnSpec { name: format!("k{i}"), kind: ColumnKind::Integer }).collect();
    let sparse: String = attack.lines().take(102).map(|line| format!("{line}\n")).collect();
    let ingested = run(sparse.as_bytes(), &jsonl(|o| o.schema = Some(declared))).0.unwrap();
    assert_eq!((ingested.rows, ingested.schema.len()), (102, 1000));

    // Wide and full is fine.
    let mut full = String::new();
    for _ in 0..50 {
        full.push_str(&format!("{{{}}}\n", (0..100).map(|i| format!("\"k{i}\": {i}")).collect::<Vec<_>>().join(", ")));
    }
    assert_eq!(run(full.as_bytes(), &jsonl(|_| {})).0.unwrap().schema.len(), 100);
}

// Issue 16, point 7: the error report quoted whole fields (up to the row limit each) into the
// manifest and the 422 body.
#[test]
fn error_reports_are_bounded() {
    let mut csv = "n\n1\n".to_string();
    for _ in 0..30 {
        csv.push_str(&format!("{}\n", "x".repeat(100_000)));
    }
    let mut options = IngestOptions::new(Format::Csv);
    options.inference_rows = 1;
    let error = run(csv.as_bytes(), &options).0.unwrap_err();
    assert!(error.message.starts_with("line 3: column 1: expected integer, found \"xxx"), "{}", error.message);
    assert!(error.message.len() <= MAX_MESSAGE_BYTES && error.message.ends_with('\u{2026}'));
    options.on_error = OnError::Skip;
    let ingested = run(csv.as_bytes(), &options).0.unwrap();
    assert_eq!((ingested.rows, ingested.rows_skipped, ingested.errors.len()), (1, 30, 20));
    assert!(ingested.errors.iter().all(|e| e.message.len() <= MAX_MESSAGE_BYTES));
    let manifest = serde_json::to_string(&ingested).unwrap();
    assert!(manifest.len() < 64 * 1024, "{} bytes", manifest.len());
}

// Issue 16, point 7: `csv::Reader` held a record whole, however long, before its length was
// checked. Now a record is cut off while it is parsed, for CSV as for JSON lines and text.
#[test]
fn oversized_csv_records_are_cut_off_and_numbered() {
    let mut csv = "a,b\n1,short\n".to_string();
    csv.push_str(&format!("2,\"{}\n{}\"\n", "y".repeat(5000), "z".repeat(5000)));
    csv.push_str("3,after\n");
    let mut options = IngestOptions::new(Format::Csv);
    options.max_row_bytes = 1024;
    options.on_error = OnError::Skip;
    let (result, sink) = run(csv.as_bytes(), &options);
    let ingested = result.unwrap();
    assert_eq!(ingested.rows, 2);
    assert_eq!(ingested.errors, vec![RowError { line: 3, message: "row is longer than 1024 bytes".into() }]);
    assert_eq!(all_rows(&sink, &ingested)[1]["b"], "after");
    let error = run(format!("{}\n1\n", "h".repeat(2000)).as_bytes(), &options).0.unwrap_err();
    assert_eq!(error.message, "line 1: the CSV header is longer than 1024 bytes");
    // Quoting, CRLF and a BOM still parse as before.
    let ingested = run(b"\xef\xbb\xbfa,b\r\n\"x, \"\"y\"\"\",2\r\n", &IngestOptions::new(Format::Csv));
    let (ingested, sink) = (ingested.0.unwrap(), ingested.1);
    assert_eq!(all_rows(&sink, &ingested)[0]["a"], "x, \"y\"");
}

// Issue 16, point 8: a 1 MB gzip Parquet upload expanded to an 857 MB file in the system's
// temporary directory. Compressed uploads are capped, and spooled where the caller says.
#[test]
fn decompression_is_capped_and_spools_stay_in_the_temp_dir() {
    let bomb = gzip(&vec![0u8; 8 * 1024 * 1024]);
    let zstd_bomb = zstd::encode_all(&vec![b'\n'; 8 * 1024 * 1024][..], 3).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let temp_dir = spool.path().join("ingest");
    for (input, format) in [(&bomb, Format::Parquet), (&bomb, Format::Csv), (&zstd_bomb, Format::Jsonl)] {
        let mut options = IngestOptions::new(format);
        options.max_decompressed_bytes = 1024 * 1024;
        options.temp_dir = Some(temp_dir.clone());
        let error = run(input, &options).0.unwrap_err();
        assert_eq!(error.kind, IngestErrorKind::Rejected, "{format:?}: {}", error.message);
        assert_eq!(
            error.message, "the upload decompresses to more than 1048576 bytes (the limit is max_decompressed_bytes)",
            "{format:?}"
        );
    }
    assert!(temp_dir.is_dir(), "Parquet spools under the temp dir the caller gave");
    assert_eq!(std::fs::read_dir(&temp_dir).unwrap().count(), 0, "and the spool is gone afterwards");

    // Within the limit, a compressed Parquet upload still spools and ingests there.
    let file = gzip(&parquet_file(&string_batch(&["a"], 10)));
    let mut options = IngestOptions::new(Format::Parquet);
    options.temp_dir = Some(temp_dir.clone());
    assert_eq!(run(&file, &options).0.unwrap().rows, 10);
    assert_eq!(std::fs::read_dir(&temp_dir).unwrap().count(), 0);
    // Uncompressed uploads are bounded by what the client sends, not by this limit.
    let mut options = jsonl(|o| o.max_decompressed_bytes = 16);
    options.max_row_bytes = 1024;
    assert_eq!(run(b"{\"a\": \"longer than sixteen bytes\"}\n", &options).0.unwrap().rows, 1);
}

#[test]
fn parquet_rows_over_the_row_limit_are_bad_rows() {
    let file = parquet_file(&string_batch(&["a"], 3));
    let mut options = IngestOptions::new(Format::Parquet);
    // A Parquet row counts 8 bytes per cell plus its strings' bytes: "a0" makes 10.
    options.max_row_bytes = 9;
    options.on_error = OnError::Skip;
    let error = run(&file, &options).0.unwrap_err();
    assert!(error.message.contains("all 3 rows were bad"), "{}", error.message);
    assert_eq!(error.errors[0].message, "row is longer than 9 bytes");
}
