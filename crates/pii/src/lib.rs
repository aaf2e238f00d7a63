//! PII detection and redaction for ingested datasets.
//!
//! The ingest pipeline calls [`Detector::find`] on every string value of every row, so the
//! built-in detectors are hand-written byte scanners rather than regexes: a text without an ASCII
//! digit, `@` or `:` is rejected after one pass over its bytes, and each candidate is then checked
//! against its standard (RFC 5321 addresses, E.164 numbers, ISO 13616 mod-97 for IBANs, Luhn for
//! card numbers, RFC 4291 text forms for IPv6). Operators add their own kinds as regexes.
//!
//! Around detection sit [`redact`] (mask or keyed-hash the spans) and [`PiiReport`] (counts per
//! column and kind, mergeable across shards scanned in parallel).
//!
//! Architecture Invariant: pure and synchronous. No I/O, no knowledge of Arrow, HTTP or the
//! metadata store, so the ingest workers can call it from any thread.

mod card;
mod detector;
mod email;
mod iban;
mod ip;
mod phone;
mod redact;
mod report;
mod scan;

pub use detector::Detector;
pub use iban::iban_length;
pub use redact::{redact, PiiAction};
pub use report::PiiReport;

/// What a detected span is. Built-in kinds have fixed names; `Custom(i)` is the `i`-th pattern
/// given to [`Detector::new`], named by the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PiiKind {
    Email,
    Phone,
    Iban,
    Card,
    Ipv4,
    Ipv6,
    Custom(u16),
}

impl PiiKind {
    /// The built-in kinds, in the order their names sort in reports.
    pub const BUILTIN: [PiiKind; 6] =
        [PiiKind::Email, PiiKind::Phone, PiiKind::Iban, PiiKind::Card, PiiKind::Ipv4, PiiKind::Ipv6];

    /// The stable lowercase name of a built-in kind; `None` for a custom kind, whose name only
    /// the [`Detector`] that defined it knows (see [`Detector::kind_name`]).
    pub fn builtin_name(self) -> Option<&'static str> {
        match self {
            PiiKind::Email => Some("email"),
            PiiKind::Phone => Some("phone"),
            PiiKind::Iban => Some("iban"),
            PiiKind::Card => Some("card"),
            PiiKind::Ipv4 => Some("ipv4"),
            PiiKind::Ipv6 => Some("ipv6"),
            PiiKind::Custom(_) => None,
        }
    }

    /// The built-in kind with this name.
    pub fn from_builtin_name(name: &str) -> Option<PiiKind> {
        PiiKind::BUILTIN.into_iter().find(|kind| kind.builtin_name() == Some(name))
    }
}

/// One detected value: `text[start..end]`, byte offsets on `char` boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub kind: PiiKind,
}

impl Span {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Why a [`Detector`] could not be built; each variant names the offending custom kind.
#[derive(Debug, thiserror::Error)]
pub enum PiiError {
    #[error("custom pii kind {name:?}: invalid regex: {source}")]
    InvalidRegex {
        name: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("custom pii kind {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("too many custom pii kinds: {count} (at most {max})")]
    TooManyCustomKinds { count: usize, max: usize },
}
