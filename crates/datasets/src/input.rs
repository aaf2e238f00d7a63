//! Reading an upload: hashing the bytes as received, undoing gzip or zstd, and cutting the
//! stream into records (JSON lines, CSV records, text lines or paragraphs) with their line
//! numbers, never holding more than one record in memory.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::schema::Cell;

/// What the source bytes were, for the manifest's lineage.
#[derive(Debug, Clone, Default)]
pub struct SourceStats {
    pub bytes: u64,
    hasher: Sha256,
}

impl SourceStats {
    pub fn digest(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

/// Hashes and counts every byte read through it, before any decompression.
pub struct HashingReader<R> {
    inner: R,
    stats: Arc<Mutex<SourceStats>>,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> (Self, Arc<Mutex<SourceStats>>) {
        let stats = Arc::new(Mutex::new(SourceStats::default()));
        (HashingReader { inner, stats: stats.clone() }, stats)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        if let Ok(mut stats) = self.stats.lock() {
            stats.bytes += read as u64;
            stats.hasher.update(&buf[..read]);
        }
        Ok(read)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The decompressed size of an upload passed `max_decompressed_bytes`. Carried inside an
/// `io::Error` through every reader above it, and recognised at the top by `limit_reached`.
#[derive(Debug)]
pub struct LimitReached {
    limit: u64,
}

impl std::fmt::Display for LimitReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the upload decompresses to more than {} bytes (the limit is max_decompressed_bytes)", self.limit)
    }
}

impl std::error::Error for LimitReached {}

/// The decompression limit an I/O error reports, if that is what it is.
pub fn limit_reached(error: &io::Error) -> Option<&LimitReached> {
    error.get_ref().and_then(|inner| inner.downcast_ref::<LimitReached>())
}

/// Fails once more than `limit` bytes came through, so a compressed bomb stops at the limit
/// (give or take one read) instead of when memory or disk runs out.
struct Limited<R> {
    inner: R,
    total: u64,
    limit: u64,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.total > self.limit {
            return Err(io::Error::other(LimitReached { limit: self.limit }));
        }
        let read = self.inner.read(buf)?;
        self.total = self.total.saturating_add(read as u64);
        if self.total > self.limit {
            return Err(io::Error::other(LimitReached { limit: self.limit }));
        }
        Ok(read)
    }
}

/// Recognises gzip and zstd by their magic numbers, so clients need not say, and caps what
/// they expand to at `max_decompressed_bytes`.
pub fn decompress<R: Read + Send + 'static>(
    reader: R,
    max_decompressed_bytes: u64,
) -> io::Result<(Box<dyn BufRead + Send>, Compression)> {
    let mut buffered = BufReader::with_capacity(256 * 1024, reader);
    let head = buffered.fill_buf()?;
    let limited = |inner| Limited { inner, total: 0, limit: max_decompressed_bytes };
    if head.starts_with(&[0x1f, 0x8b]) {
        let decoder: Box<dyn Read + Send> = Box::new(flate2::bufread::MultiGzDecoder::new(buffered));
        Ok((Box::new(BufReader::with_capacity(256 * 1024, limited(decoder))), Compression::Gzip))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder: Box<dyn Read + Send> = Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?);
        Ok((Box::new(BufReader::with_capacity(256 * 1024, limited(decoder))), Compression::Zstd))
    } else {
        Ok((Box::new(buffered), Compression::None))
    }
}

/// One line, or why it could not be had.
pub enum Line {
    /// The line's bytes are in the caller's buffer (without the line break).
    Read {
        number: u64,
    },
    TooLong {
        number: u64,
    },
}

/// Reads lines of at most `max_bytes`; a longer line is skipped to its end and reported, so a
/// single huge line cannot exhaust memory.
pub struct LineReader<R> {
    inner: R,
    line: u64,
    max_bytes: usize,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R, max_bytes: usize) -> Self {
        LineReader { inner, line: 0, max_bytes }
    }

    pub fn next_line(&mut self, buffer: &mut Vec<u8>) -> io::Result<Option<Line>> {
        buffer.clear();
        let mut too_long = false;
        let mut any = false;
        loop {
            let available = self.inner.fill_buf()?;
            if available.is_empty() {
                if !any {
                    return Ok(None);
                }
                break;
            }
            any = true;
            let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
                Some(end) => (&available[..end], end + 1),
                None => (available, available.len()),
            };
            if !too_long {
                if buffer.len() + chunk.len() > self.max_bytes {
                    too_long = true;
                    buffer.clear();
                } else {
                    buffer.extend_from_slice(chunk);
                }
            }
            let found_newline = done > chunk.len();
            self.inner.consume(done);
            if found_newline {
                break;
            }
        }
        self.line += 1;
        if buffer.last() == Some(&b'\r') {
            buffer.pop();
        }
        Ok(Some(if too_long { Line::TooLong { number: self.line } } else { Line::Read { number: self.line } }))
    }
}

/// A record as cut from the input, before it is typed against the schema.
#[derive(Debug, Clone)]
pub enum RawRecord {
    Object(serde_json::Map<String, serde_json::Value>),
    Fields(Vec<String>),
    Text(String),
    Cells(Vec<Cell>),
}

/// What a parsed JSON object holds per entry beyond its key and value: the index map's slot
/// and hash. An estimate; it only has to grow with the real size.
const MAP_ENTRY_BYTES: usize = 48;

fn value_footprint(value: &serde_json::Value) -> usize {
    std::mem::size_of::<serde_json::Value>()
        + match value {
            serde_json::Value::String(text) => text.capacity(),
            serde_json::Value::Array(items) => items.iter().map(value_footprint).sum(),
            serde_json::Value::Object(object) => object_footprint(object),
            _ => 0,
        }
}

fn object_footprint(object: &serde_json::Map<String, serde_json::Value>) -> usize {
    object.iter().map(|(key, value)| MAP_ENTRY_BYTES + key.capacity() + value_footprint(value)).sum()
}

impl RawRecord {
    /// An estimate of the memory this record takes, for budgets that must hold in bytes: a
    /// record of ten bytes may be a thousand cells in memory, one of a megabyte only one.
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<RawRecord>()
            + match self {
                RawRecord::Object(object) => object_footprint(object),
                RawRecord::Fields(fields) => {
                    fields.iter().map(|f| std::mem::size_of::<String>() + f.capacity()).sum::<usize>()
                }
                RawRecord::Text(text) => text.capacity(),
                RawRecord::Cells(cells) => crate::schema::cells_footprint(cells),
            }
    }
}

/// A record with the line (or record) number it starts at, or the reason it is unreadable.
pub type NumberedRecord = (u64, Result<RawRecord, String>);

/// The memory a numbered record takes, by the same estimate.
pub fn record_footprint(record: &NumberedRecord) -> usize {
    match &record.1 {
        Ok(raw) => raw.footprint(),
        Err(message) => std::mem::size_of::<NumberedRecord>() + message.capacity(),
    }
}

/// Anything that yields numbered records.
pub trait RecordSource {
    /// Column names known from the input itself (a CSV header, a Parquet schema).
    fn header(&self) -> Option<Vec<crate::ColumnSpec>> {
        None
    }

    fn next_record(&mut self) -> io::Result<Option<NumberedRecord>>;
}

fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))
}

pub struct JsonLines<R> {
    lines: LineReader<R>,
    buffer: Vec<u8>,
    max_bytes: usize,
    max_fields: usize,
}

impl<R: BufRead> JsonLines<R> {
    /// Lines of at most `max_bytes`, objects of at most `max_fields` keys.
    pub fn new(reader: R, max_bytes: usize, max_fields: usize) -> Self {
        JsonLines { lines: LineReader::new(reader, max_bytes), buffer: Vec::new(), max_bytes, max_fields }
    }
}

impl<R: BufRead> RecordSource for JsonLines<R> {
    fn next_record(&mut self) -> io::Result<Option<NumberedRecord>> {
        loop {
            let Some(line) = self.lines.next_line(&mut self.buffer)? else { return Ok(None) };
            let number = match line {
                Line::TooLong { number } => {
                    return Ok(Some((number, Err(format!("row is longer than {} bytes", self.max_bytes)))))
                }
                Line::Read { number } => number,
            };
            if self.buffer.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let record = utf8(&self.buffer)
                .and_then(|text| crate::json::parse_object(text, self.max_fields))
                .map(RawRecord::Object);
            return Ok(Some((number, record)));
        }
    }
}

/// Plain text: one record per non-empty line, or per blank-line-separated paragraph.
pub struct TextRecords<R> {
    lines: LineReader<R>,
    buffer: Vec<u8>,
    paragraphs: bool,
    max_bytes: usize,
}

impl<R: BufRead> TextRecords<R> {
    pub fn new(reader: R, paragraphs: bool, max_bytes: usize) -> Self {
        TextRecords { lines: LineReader::new(reader, max_bytes), buffer: Vec::new(), paragraphs, max_bytes }
    }
}

impl<R: BufRead> RecordSource for TextRecords<R> {
    fn header(&self) -> Option<Vec<crate::ColumnSpec>> {
        Some(vec![crate::ColumnSpec { name: "text".to_string(), kind: crate::ColumnKind::String }])
    }

    fn next_record(&mut self) -> io::Result<Option<NumberedRecord>> {
        let mut paragraph = String::new();
        let mut start = 0;
        let mut error = None;
        while let Some(line) = self.lines.next_line(&mut self.buffer)? {
            let number = match line {
                Line::TooLong { number } => {
                    error.get_or_insert((number, format!("line is longer than {} bytes", self.max_bytes)));
                    if !self.paragraphs {
                        break;
                    }
                    continue;
                }
                Line::Read { number } => number,
            };
            let blank = self.buffer.iter().all(u8::is_ascii_whitespace);
            if blank {
                if self.paragraphs && (!paragraph.is_empty() || error.is_some()) {
                    break;
                }
                continue;
            }
            let text = match utf8(&self.buffer) {
                Ok(text) => text,
                Err(message) => {
                    error.get_or_insert((number, message));
                    if !self.paragraphs {
                        break;
                    }
                    continue;
                }
            };
            if paragraph.is_empty() {
                start = number;
            } else {
                paragraph.push('\n');
            }
            if paragraph.len() + text.len() > self.max_bytes {
                error.get_or_insert((start, format!("paragraph is longer than {} bytes", self.max_bytes)));
                paragraph.clear();
                continue;
            }
            paragraph.push_str(text);
            if !self.paragraphs {
                break;
            }
        }
        if let Some((number, message)) = error {
            return Ok(Some((number, Err(message))));
        }
        if paragraph.is_empty() {
            return Ok(None);
        }
        Ok(Some((start, Ok(RawRecord::Text(paragraph)))))
    }
}

/// A CSV record as cut by the parser: its fields are in the parser's buffers.
enum Cut {
    /// Its field bytes passed the row limit; they were parsed to the record's end but not kept.
    TooLong,
    /// `fields` fields; when at most the ends kept, `ends[..fields]` delimit them in `output`.
    Fields { fields: usize },
}

/// CSV with a header row (RFC 4180: comma, double quotes, CRLF or LF). Field counts must match
/// the header. Parsed with `csv_core` rather than `csv::Reader` because that one holds a record
/// whole however long it is; here field bytes beyond `max_bytes` are dropped while parsing and
/// the record reported as too long, so one enormous record costs no memory.
pub struct CsvRecords<R> {
    input: R,
    core: csv_core::Reader,
    header: Vec<String>,
    output: Vec<u8>,
    ends: Vec<usize>,
    max_bytes: usize,
    done: bool,
}

impl<R: BufRead> CsvRecords<R> {
    /// Reads the header: at most `max_columns` distinct, non-empty names of at most
    /// `MAX_COLUMN_NAME_BYTES` each.
    pub fn new(input: R, max_bytes: usize, max_columns: usize) -> Result<Self, crate::IngestError> {
        let mut records = CsvRecords {
            input,
            core: csv_core::Reader::new(),
            header: Vec::new(),
            output: vec![0; 4096.min(max_bytes + 1)],
            ends: vec![0; 16],
            max_bytes,
            done: false,
        };
        let rejected = crate::IngestError::rejected;
        let fields = match records.cut(max_columns).map_err(|e| crate::IngestError::from_io(&e))? {
            None => 0,
            Some((_, Cut::TooLong)) => {
                return Err(rejected(format!("line 1: the CSV header is longer than {max_bytes} bytes")))
            }
            Some((_, Cut::Fields { fields })) if fields > max_columns => {
                return Err(rejected(format!(
                    "line 1: the CSV header has {fields} columns; a dataset may have at most {max_columns} \
                     (max_columns)"
                )))
            }
            Some((_, Cut::Fields { fields })) => fields,
        };
        let mut header = Vec::with_capacity(fields);
        let mut seen = std::collections::HashSet::with_capacity(fields);
        for (i, name) in records.fields(fields).enumerate() {
            let name = std::str::from_utf8(name)
                .map(|s| s.trim().to_string())
                .map_err(|_| rejected(format!("line 1: header field {} is not UTF-8", i + 1)))?;
            crate::schema::check_column_name(&name).map_err(|e| rejected(format!("line 1: {e}")))?;
            if !seen.insert(name.clone()) {
                return Err(rejected(format!(
                    "line 1: the CSV header names column {name:?} twice; every column needs its own name"
                )));
            }
            header.push(name);
        }
        if header.is_empty() || header.iter().any(String::is_empty) {
            return Err(rejected("line 1: every CSV column needs a name in the header".to_string()));
        }
        records.header = header;
        Ok(records)
    }

    pub fn column_names(&self) -> &[String] {
        &self.header
    }

    /// The fields of the record just cut.
    fn fields(&self, count: usize) -> impl Iterator<Item = &[u8]> {
        (0..count.min(self.ends.len())).map(move |i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            &self.output[start..self.ends[i]]
        })
    }

    /// Cuts the next record and returns the line it starts on, or `None` at the end of the
    /// input. At most `max_fields` field boundaries are kept (the count is always right).
    fn cut(&mut self, max_fields: usize) -> io::Result<Option<(u64, Cut)>> {
        use csv_core::ReadRecordResult;
        if self.done {
            return Ok(None);
        }
        // As `csv::Reader` numbers records: the line the parser stood on when the record began.
        let line = self.core.line();
        let (mut output_len, mut ends_len, mut fields) = (0, 0, 0);
        let mut too_long = false;
        loop {
            let input = self.input.fill_buf()?;
            let (result, read, written, ended) =
                self.core.read_record(input, &mut self.output[output_len..], &mut self.ends[ends_len..]);
            self.input.consume(read);
            output_len += written;
            ends_len += ended;
            fields += ended;
            match result {
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull => {
                    // One byte beyond the limit tells a record of exactly `max_bytes` from a
                    // longer one; past that the bytes are thrown away as they are parsed.
                    if self.output.len() <= self.max_bytes {
                        let grown = (self.output.len() * 2).clamp(1, self.max_bytes + 1);
                        self.output.resize(grown, 0);
                    } else {
                        too_long = true;
                        output_len = 0;
                    }
                }
                ReadRecordResult::OutputEndsFull => {
                    if self.ends.len() <= max_fields {
                        let grown = (self.ends.len() * 2).clamp(1, max_fields + 1);
                        self.ends.resize(grown, 0);
                    } else {
                        // More fields than any record may have: keep counting, keep nothing.
                        ends_len = 0;
                    }
                }
                ReadRecordResult::Record => {
                    let cut = if too_long { Cut::TooLong } else { Cut::Fields { fields } };
                    return Ok(Some((line, cut)));
                }
                ReadRecordResult::End => {
                    self.done = true;
                    return Ok(None);
                }
            }
        }
    }
}

impl<R: BufRead> RecordSource for CsvRecords<R> {
    fn next_record(&mut self) -> io::Result<Option<NumberedRecord>> {
        let expected = self.header.len();
        let Some((line, cut)) = self.cut(expected)? else { return Ok(None) };
        let fields = match cut {
            Cut::TooLong => return Ok(Some((line, Err(format!("row is longer than {} bytes", self.max_bytes))))),
            Cut::Fields { fields } => fields,
        };
        if fields != expected {
            return Ok(Some((line, Err(format!("expected {expected} fields as in the header, found {fields}")))));
        }
        let fields = self
            .fields(fields)
            .enumerate()
            .map(|(i, field)| {
                std::str::from_utf8(field)
                    .map(str::to_string)
                    .map_err(|e| format!("field {}: invalid UTF-8 at byte {}", i + 1, e.valid_up_to()))
            })
            .collect::<Result<Vec<String>, String>>();
        Ok(Some((line, fields.map(RawRecord::Fields))))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn long_lines_are_skipped_and_numbered() {
        let input = b"short\nthis line is far too long\nok\r\nlast".to_vec();
        let mut lines = LineReader::new(&input[..], 10);
        let mut buffer = Vec::new();
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line(&mut buffer).unwrap() {
            match line {
                Line::Read { number } => seen.push(format!("{number}:{}", String::from_utf8_lossy(&buffer))),
                Line::TooLong { number } => seen.push(format!("{number}:too long")),
            }
        }
        assert_eq!(seen, vec!["1:short", "2:too long", "3:ok", "4:last"]);
    }

    #[test]
    fn paragraphs_start_at_their_first_line() {
        let input = b"one\ntwo\n\n\nthree\n".to_vec();
        let mut records = TextRecords::new(&input[..], true, 100);
        let mut seen = Vec::new();
        while let Some((number, record)) = records.next_record().unwrap() {
            if let Ok(RawRecord::Text(text)) = record {
                seen.push((number, text));
            }
        }
        assert_eq!(seen, vec![(1, "one\ntwo".to_string()), (5, "three".to_string())]);
    }

    #[test]
    fn csv_records_at_the_limit_pass_and_longer_ones_are_cut() {
        let input = b"a,b\nxxxx,yy\nxxxx,yyy\n\n1,2,3\n1,2\n".to_vec();
        let mut records = CsvRecords::new(&input[..], 6, 10).unwrap();
        let mut seen = Vec::new();
        while let Some((line, record)) = records.next_record().unwrap() {
            seen.push(match record {
                Ok(RawRecord::Fields(fields)) => format!("{line}:{}", fields.join("|")),
                Ok(_) => unreachable!(),
                Err(message) => format!("{line}:{message}"),
            });
        }
        assert_eq!(
            seen,
            vec!["2:xxxx|yy", "3:row is longer than 6 bytes", "4:expected 2 fields as in the header, found 3", "6:1|2"]
        );
    }

    #[test]
    fn compression_is_recognised_by_magic_number() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"{\"a\": 1}\n").unwrap();
        let gz = gz.finish().unwrap();
        let (mut reader, compression) = decompress(std::io::Cursor::new(gz), u64::MAX).unwrap();
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!((compression, text.as_str()), (Compression::Gzip, "{\"a\": 1}\n"));
        let zst = zstd::encode_all(&b"plain"[..], 3).unwrap();
        let (mut reader, compression) = decompress(std::io::Cursor::new(zst), u64::MAX).unwrap();
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!((compression, text.as_str()), (Compression::Zstd, "plain"));
    }
}
