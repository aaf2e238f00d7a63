//! Issue 16, point 7: ingest memory must be bounded in bytes, whatever the shape of the records.
//! Each test replays a scaled-down attack and measures the peak of live heap bytes during the
//! ingest with a counting allocator; before the fix each peak grew with the input.
//!
//! The tests share the allocator's counters, so each holds a lock from start to end: another
//! test allocating or freeing its input meanwhile would skew the count.
#![allow(clippy::unwrap_used)]
// A counting global allocator is the only way to observe the heap's peak from a test; the
// unsafe is the delegation to `System` that `GlobalAlloc` requires, nothing more.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use factory_datasets::{
    ingest, ColumnKind, ColumnSpec, Format, IngestError, IngestOptions, Ingested, OnError, ShardSink,
};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

const MIB: usize = 1024 * 1024;

/// Counts shards without keeping them: what is measured is the ingest, not the store.
struct CountingSink(usize);

impl ShardSink for CountingSink {
    fn put_shard(&mut self, parquet: Vec<u8>) -> Result<String, String> {
        self.0 += 1;
        Ok(format!("{}-{}", self.0, parquet.len()))
    }
}

/// Ingests `input` and returns the result with the peak heap growth during the ingest. The
/// caller holds `serial()`.
fn measure(input: Vec<u8>, options: &IngestOptions) -> (Result<Ingested, IngestError>, usize) {
    let mut sink = CountingSink(0);
    let input = std::io::Cursor::new(input);
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = ingest(input, options, &mut sink);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    (result, peak)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, bytes).unwrap();
    gz.finish().unwrap()
}

// The attack: 100 rows of 16 MB (1.6 MB of gzip) reached 1.8 GB, since the inference window,
// the read-ahead batches and the shard's open batch were all counted in records. Scaled: 64
// rows of 1 MiB (64 MiB expanded) within a 4 MiB buffer budget.
#[test]
fn large_rows_are_buffered_within_the_byte_budget() {
    let _serial = serial();
    let row = format!("{{\"text\": \"{}\"}}\n", "x".repeat(MIB));
    let input = gzip(row.repeat(64).as_bytes());
    let mut options = IngestOptions::new(Format::Jsonl);
    options.max_row_bytes = 2 * MIB;
    options.max_buffered_bytes = 4 * MIB;
    options.max_shard_bytes = 4 * MIB;
    let (result, peak) = measure(input, &options);
    assert_eq!(result.unwrap().rows, 64);
    // Buffers, a few rows in flight (parsed, converted, profiled) and one shard; not 64 rows.
    assert!(peak < 24 * MIB, "peak heap {} MiB for 64 MiB of rows", peak / MIB);
}

// The attack: 20,000 `{}` rows against a schema of thousands of columns; each empty row became
// a row of null cells, and batches of 512 of them were 16 MB each. Scaled: a declared schema of
// 1,000 columns (inference would refuse one this sparse) and 20,000 empty rows.
#[test]
fn sparse_rows_are_buffered_within_the_byte_budget() {
    let _serial = serial();
    let input = gzip("{}\n".repeat(20_000).as_bytes());
    let mut options = IngestOptions::new(Format::Jsonl);
    options.schema = Some((0..1000).map(|i| ColumnSpec { name: format!("c{i}"), kind: ColumnKind::Integer }).collect());
    options.max_buffered_bytes = 4 * MIB;
    let (result, peak) = measure(input, &options);
    assert_eq!(result.unwrap().rows, 20_000);
    // The budget, a thousand column profilers and Parquet column writers; 20,000 rows of a
    // thousand cells would be 640 MB, and the old batches alone about 100 MB.
    assert!(peak < 48 * MIB, "peak heap {} MiB", peak / MIB);
}

// The attack as reported: one row of 5,000 keys, then 20,000 `{}` (12 KB of gzip) reached
// 940 MB and a 2.6 MB manifest. It is refused at the first line, having cost next to nothing.
#[test]
fn the_wide_then_empty_attack_is_refused_at_its_first_line() {
    let _serial = serial();
    let wide: String = (0..5000).map(|i| format!("\"k{i}\": {i}")).collect::<Vec<_>>().join(", ");
    let mut attack = format!("{{{wide}}}\n");
    attack.push_str(&"{}\n".repeat(20_000));
    let (result, peak) = measure(gzip(attack.as_bytes()), &IngestOptions::new(Format::Jsonl));
    let error = result.unwrap_err();
    assert!(error.message.starts_with("line 1: the object has more than 1000 keys"), "{}", error.message);
    assert!(peak < 8 * MIB, "peak heap {} MiB", peak / MIB);
}

// A line of 16 MB must be refused while it is read, never held whole, in every line format.
#[test]
fn an_oversized_record_is_refused_while_it_is_read() {
    let _serial = serial();
    let huge = "y".repeat(16 * MIB);
    let cases = [
        (Format::Jsonl, format!("{{\"t\": \"ok\"}}\n{{\"t\": \"{huge}\"}}\n"), "row is longer than 65536 bytes"),
        (Format::Csv, format!("t\nok\n\"{huge}\"\n"), "row is longer than 65536 bytes"),
        (Format::Text, format!("ok\n{huge}\n"), "line is longer than 65536 bytes"),
    ];
    for (format, text, message) in cases {
        let mut options = IngestOptions::new(format);
        options.max_row_bytes = 64 * 1024;
        options.on_error = OnError::Skip;
        let (result, peak) = measure(gzip(text.as_bytes()), &options);
        let ingested = result.unwrap();
        assert_eq!((ingested.rows, ingested.errors[0].message.as_str()), (1, message), "{format:?}");
        assert!(peak < 4 * MIB, "{format:?}: peak heap {} MiB for a 16 MiB record", peak / MIB);
    }
}
