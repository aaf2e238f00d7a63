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

/// Recognises gzip and zstd by their magic numbers, so clients need not say.
pub fn decompress<R: Read + Send + 'static>(reader: R) -> io::Result<(Box<dyn BufRead + Send>, Compression)> {
    let mut buffered = BufReader::with_capacity(256 * 1024, reader);
    let head = buffered.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        let decoder = flate2::bufread::MultiGzDecoder::new(buffered);
        Ok((Box::new(BufReader::with_capacity(256 * 1024, decoder)), Compression::Gzip))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder = zstd::stream::read::Decoder::with_buffer(buffered)?;
        Ok((Box::new(BufReader::with_capacity(256 * 1024, decoder)), Compression::Zstd))
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

/// A record with the line (or record) number it starts at, or the reason it is unreadable.
pub type NumberedRecord = (u64, Result<RawRecord, String>);

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
}

impl<R: BufRead> JsonLines<R> {
    pub fn new(reader: R, max_bytes: usize) -> Self {
        JsonLines { lines: LineReader::new(reader, max_bytes), buffer: Vec::new(), max_bytes }
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
            let record = utf8(&self.buffer).and_then(|text| match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(object)) => Ok(RawRecord::Object(object)),
                Ok(_) => Err("expected a JSON object".to_string()),
                Err(e) => Err(format!("invalid JSON at column {}: {e}", e.column())),
            });
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

/// CSV with a header row. Field counts must match the header.
pub struct CsvRecords<R: Read> {
    reader: csv::Reader<R>,
    header: Vec<String>,
    record: csv::ByteRecord,
    max_bytes: usize,
}

impl<R: Read> CsvRecords<R> {
    pub fn new(reader: R, max_bytes: usize) -> Result<Self, String> {
        let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(reader);
        let header = reader
            .byte_headers()
            .map_err(|e| format!("line 1: cannot read the CSV header: {e}"))?
            .iter()
            .enumerate()
            .map(|(i, name)| {
                std::str::from_utf8(name)
                    .map(|s| s.trim().to_string())
                    .map_err(|_| format!("line 1: header field {} is not UTF-8", i + 1))
            })
            .collect::<Result<Vec<String>, String>>()?;
        if header.is_empty() || header.iter().any(String::is_empty) {
            return Err("line 1: every CSV column needs a name in the header".to_string());
        }
        Ok(CsvRecords { reader, header, record: csv::ByteRecord::new(), max_bytes })
    }

    pub fn column_names(&self) -> &[String] {
        &self.header
    }
}

impl<R: Read> RecordSource for CsvRecords<R> {
    fn next_record(&mut self) -> io::Result<Option<NumberedRecord>> {
        match self.reader.read_byte_record(&mut self.record) {
            Ok(false) => Ok(None),
            Ok(true) => {
                let line = self.record.position().map(|p| p.line()).unwrap_or(0);
                if self.record.as_slice().len() > self.max_bytes {
                    return Ok(Some((line, Err(format!("row is longer than {} bytes", self.max_bytes)))));
                }
                let fields = self
                    .record
                    .iter()
                    .enumerate()
                    .map(|(i, field)| {
                        std::str::from_utf8(field)
                            .map(str::to_string)
                            .map_err(|e| format!("field {}: invalid UTF-8 at byte {}", i + 1, e.valid_up_to()))
                    })
                    .collect::<Result<Vec<String>, String>>();
                Ok(Some((line, fields.map(RawRecord::Fields))))
            }
            Err(error) => {
                let line = error.position().map(|p| p.line()).unwrap_or(0);
                match error.kind() {
                    csv::ErrorKind::Io(_) => Err(io::Error::other(error.to_string())),
                    csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                        Ok(Some((line, Err(format!("expected {expected_len} fields as in the header, found {len}")))))
                    }
                    _ => Ok(Some((line, Err(error.to_string())))),
                }
            }
        }
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
    fn compression_is_recognised_by_magic_number() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"{\"a\": 1}\n").unwrap();
        let gz = gz.finish().unwrap();
        let (mut reader, compression) = decompress(std::io::Cursor::new(gz)).unwrap();
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!((compression, text.as_str()), (Compression::Gzip, "{\"a\": 1}\n"));
        let zst = zstd::encode_all(&b"plain"[..], 3).unwrap();
        let (mut reader, compression) = decompress(std::io::Cursor::new(zst)).unwrap();
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!((compression, text.as_str()), (Compression::Zstd, "plain"));
    }
}
