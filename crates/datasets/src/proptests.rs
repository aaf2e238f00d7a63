//! Property tests (issue 16, point 22): arbitrary and mutated bytes, plain, gzip or zstd, fed
//! to every ingest path must end in `Ok` with counts bounded by the input, or in a clean error;
//! never in a panic, an unbounded report or a message longer than the limit.
//!
//! 64 cases per property by default (seconds); `FACTORY_PROPTEST_CASES=10000` runs longer.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

/// Discards shards after counting their rows' bytes: the properties are about ingest.
struct NullSink;

impl ShardSink for NullSink {
    fn put_shard(&mut self, parquet: Vec<u8>) -> Result<String, String> {
        Ok(format!("{}", parquet.len()))
    }
}

const FORMATS: [Format; 4] = [Format::Jsonl, Format::Csv, Format::Text, Format::Parquet];

/// Small limits, so that short inputs reach them.
fn options(format: Format, skip: bool, inference_rows: usize) -> IngestOptions {
    let mut options = IngestOptions::new(format);
    options.on_error = if skip { OnError::Skip } else { OnError::Fail };
    options.inference_rows = inference_rows;
    options.max_row_bytes = 512;
    options.max_columns = 8;
    options.max_buffered_bytes = 16 * 1024;
    options.max_decompressed_bytes = 256 * 1024;
    options.max_shard_bytes = 64 * 1024;
    options.paragraphs = inference_rows.is_multiple_of(2);
    options
}

fn sample(format: Format) -> Vec<u8> {
    match format {
        Format::Jsonl => {
            br#"{"id": 1, "text": "hello anna@example.org", "score": 0.5, "ok": true, "meta": {"a": [1, 2]}}
{"id": 2, "text": "world", "score": 2, "ok": null}

{"id": 3, "text": "caf\u00e9 \"quoted\"", "score": -1e3, "ok": false, "meta": null}
"#
            .to_vec()
        }
        Format::Csv => b"id,name,score\r\n1,anna,3.5\r\n2,\"b, \"\"en\"\"\",\n3,\"multi\nline\",7\n".to_vec(),
        Format::Text => b"First line\nsecond line\n\nA new paragraph\nwith two lines\n".to_vec(),
        Format::Parquet => parquet_sample().clone(),
    }
}

/// A Parquet file as the factory writes it: the shard of an ingested JSONL sample.
fn parquet_sample() -> &'static Vec<u8> {
    static SAMPLE: OnceLock<Vec<u8>> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        struct Keep(Vec<u8>);
        impl ShardSink for Keep {
            fn put_shard(&mut self, parquet: Vec<u8>) -> Result<String, String> {
                self.0 = parquet;
                Ok("sample".to_string())
            }
        }
        let mut keep = Keep(Vec::new());
        ingest(std::io::Cursor::new(sample(Format::Jsonl)), &IngestOptions::new(Format::Jsonl), &mut keep).unwrap();
        keep.0
    })
}

fn compress(bytes: &[u8], compression: u8) -> Vec<u8> {
    match compression {
        1 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, bytes).unwrap();
            gz.finish().unwrap()
        }
        2 => zstd::encode_all(bytes, 3).unwrap(),
        _ => bytes.to_vec(),
    }
}

/// The property: a clean outcome, bounded by the input and the options.
fn check(input: Vec<u8>, options: &IngestOptions) -> Result<(), TestCaseError> {
    let uploaded = input.len() as u64;
    let result = ingest(std::io::Cursor::new(input), options, &mut NullSink);
    match result {
        Ok(ingested) => {
            prop_assert!(ingested.schema.len() <= options.max_columns + 1, "{:?}", ingested.schema);
            prop_assert!(ingested.errors.len() <= 20);
            prop_assert!(ingested.errors.iter().all(|e| e.message.len() <= MAX_MESSAGE_BYTES));
            prop_assert_eq!(ingested.shards.iter().map(|s| s.rows).sum::<u64>(), ingested.rows);
            prop_assert_eq!(ingested.source.bytes, uploaded);
            // Every line-format record takes at least one byte of what was decompressed;
            // Parquet's run-length encoding may not, but these files are small.
            let records = ingested.rows + ingested.rows_skipped;
            let bound = match options.format {
                Format::Parquet => 1 << 20,
                _ => options.max_decompressed_bytes.max(uploaded) + 1,
            };
            prop_assert!(records <= bound, "{records} records from {uploaded} bytes");
            let manifest = serde_json::to_string(&ingested).unwrap();
            prop_assert!(manifest.len() < 256 * 1024, "a manifest of {} bytes", manifest.len());
        }
        Err(error) => {
            prop_assert!(!error.message.is_empty());
            prop_assert!(error.message.len() <= MAX_MESSAGE_BYTES, "{}", error.message);
            prop_assert!(error.errors.len() <= 20);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: factory_testkit::proptest_cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_end_cleanly(
        format in 0..4usize,
        bytes in vec(any::<u8>(), 0..2048),
        compression in 0..3u8,
        skip in any::<bool>(),
        inference_rows in 1..8usize,
    ) {
        check(compress(&bytes, compression), &options(FORMATS[format], skip, inference_rows))?;
    }

    #[test]
    fn mutated_samples_end_cleanly(
        format in 0..4usize,
        mutations in vec((any::<usize>(), any::<u8>(), 0..4u8), 0..12),
        compression in 0..3u8,
        after_compressing in any::<bool>(),
        skip in any::<bool>(),
        inference_rows in 1..8usize,
    ) {
        let format = FORMATS[format];
        let input = if after_compressing {
            factory_testkit::mutate(compress(&sample(format), compression), &mutations)
        } else {
            compress(&factory_testkit::mutate(sample(format), &mutations), compression)
        };
        check(input, &options(format, skip, inference_rows))?;
    }

    /// Lines built from JSON-ish fragments reach deeper than random bytes: keys, nesting,
    /// duplicates, numbers at the edges.
    #[test]
    fn jsonl_fragments_end_cleanly(
        lines in vec(vec(prop_oneof![
            Just("{"), Just("}"), Just("["), Just("]"), Just("\"a\""), Just("\"b\""), Just(":"), Just(","),
            Just("1"), Just("-0.5e300"), Just("18446744073709551616"), Just("null"), Just("true"),
            Just("\"\\u00e9\""), Just("\"\\ud800\""), Just(" "),
        ], 0..24), 0..24),
        compression in 0..3u8,
        skip in any::<bool>(),
    ) {
        let text: String = lines.iter().map(|parts| format!("{}\n", parts.concat())).collect();
        check(compress(text.as_bytes(), compression), &options(Format::Jsonl, skip, 3))?;
    }
}

#[test]
fn the_samples_ingest() {
    for format in FORMATS {
        let ingested = ingest(std::io::Cursor::new(sample(format)), &options(format, false, 100), &mut NullSink);
        assert!(ingested.is_ok(), "{format:?}: {:?}", ingested.err());
    }
}
