//! The `Detector`: built-in scanners plus the operator's custom patterns, and the one rule that
//! turns their possibly overlapping candidates into the spans the caller sees.
//!
//! Overlaps are resolved left to right: the candidate that starts first wins, and of two
//! starting at the same byte the longer wins ("1.2.3.4@example.com" is one e-mail, not an IPv4
//! address and the rest). Built-in and custom candidates compete under the same rule.

use std::borrow::Cow;
use std::cmp::Reverse;

use regex::Regex;

use crate::redact::{redact_labelled, PiiAction};
use crate::{scan, PiiError, PiiKind, Span};

/// Finds PII in text. Cheap to share: `Send + Sync`, and `find` takes `&self`.
#[derive(Debug, Clone)]
pub struct Detector {
    custom: Vec<Custom>,
}

#[derive(Debug, Clone)]
struct Custom {
    name: String,
    /// `name` in upper case, the label in masks and hash tokens.
    label: String,
    regex: Regex,
}

impl Detector {
    /// A detector for the built-in kinds plus `custom`, a list of `(name, regex)` pairs from
    /// the configuration. `custom[i]` reports as `PiiKind::Custom(i)`. Names must be unique,
    /// distinct from the built-in names, and made of lowercase ASCII letters, digits and `_`
    /// (they become report keys and redaction labels).
    pub fn new(custom: &[(String, String)]) -> Result<Detector, PiiError> {
        if custom.len() > usize::from(u16::MAX) {
            return Err(PiiError::TooManyCustomKinds { count: custom.len(), max: usize::from(u16::MAX) });
        }
        let mut compiled: Vec<Custom> = Vec::with_capacity(custom.len());
        for (name, pattern) in custom {
            let invalid = |reason| PiiError::InvalidName { name: name.clone(), reason };
            if name.is_empty() {
                return Err(invalid("the name is empty"));
            }
            if !name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_') {
                return Err(invalid("the name may only contain lowercase ASCII letters, digits and _"));
            }
            if PiiKind::from_builtin_name(name).is_some() {
                return Err(invalid("the name is taken by a built-in kind"));
            }
            if compiled.iter().any(|c| &c.name == name) {
                return Err(invalid("the name is given twice"));
            }
            let regex = Regex::new(pattern)
                .map_err(|source| PiiError::InvalidRegex { name: name.clone(), source: Box::new(source) })?;
            compiled.push(Custom { name: name.clone(), label: name.to_ascii_uppercase(), regex });
        }
        Ok(Detector { custom: compiled })
    }

    /// The PII in `text`: non-overlapping spans in left-to-right order, byte offsets.
    pub fn find(&self, text: &str) -> Vec<Span> {
        let mut spans = Vec::new();
        self.find_into(text, &mut spans);
        spans
    }

    /// Like [`Detector::find`], but reuses `out` (cleared first) so a caller scanning millions
    /// of values allocates once.
    pub fn find_into(&self, text: &str, out: &mut Vec<Span>) {
        out.clear();
        scan::scan(text, out);
        for (index, custom) in self.custom.iter().enumerate() {
            // `new` caps the number of custom kinds at u16::MAX, so the index fits.
            let kind = PiiKind::Custom(index as u16);
            out.extend(custom.regex.find_iter(text).filter(|m| !m.is_empty()).map(|m| Span {
                start: m.start(),
                end: m.end(),
                kind,
            }));
        }
        resolve_overlaps(out);
    }

    /// The stable lowercase name of `kind`: "email", "phone", ... or the configured name of a
    /// custom kind ("custom_<i>" for an index this detector does not define).
    pub fn kind_name(&self, kind: PiiKind) -> Cow<'_, str> {
        match kind {
            PiiKind::Custom(i) => match self.custom.get(usize::from(i)) {
                Some(custom) => Cow::Borrowed(custom.name.as_str()),
                None => Cow::Owned(format!("custom_{i}")),
            },
            builtin => Cow::Borrowed(builtin.builtin_name().unwrap_or_default()),
        }
    }

    /// The kind called `name`, built-in or custom.
    pub fn kind_by_name(&self, name: &str) -> Option<PiiKind> {
        PiiKind::from_builtin_name(name)
            .or_else(|| self.custom.iter().position(|c| c.name == name).map(|i| PiiKind::Custom(i as u16)))
    }

    /// The configured custom kind names, in index order.
    pub fn custom_names(&self) -> impl Iterator<Item = &str> {
        self.custom.iter().map(|c| c.name.as_str())
    }

    /// [`crate::redact`] with custom kinds labelled by their configured names ("[EMPLOYEE_ID]")
    /// rather than by index.
    pub fn redact<'a>(&self, text: &'a str, spans: &[Span], action: PiiAction, hash_key: &[u8]) -> Cow<'a, str> {
        redact_labelled(text, spans, action, hash_key, |kind| match kind {
            PiiKind::Custom(i) => self.custom.get(usize::from(i)).map(|c| Cow::Borrowed(c.label.as_str())),
            _ => None,
        })
    }
}

/// Sorts candidates and keeps, left to right, each one that does not overlap the last kept.
fn resolve_overlaps(spans: &mut Vec<Span>) {
    if spans.len() < 2 {
        return;
    }
    spans.sort_unstable_by_key(|s| (s.start, Reverse(s.end), s.kind));
    let mut kept = 0;
    for k in 0..spans.len() {
        if kept == 0 || spans[k].start >= spans[kept - 1].end {
            spans[kept] = spans[k];
            kept += 1;
        }
    }
    spans.truncate(kept);
}

#[cfg(test)]
mod tests {
    //! Construction errors, custom kinds, and how overlapping candidates are resolved.

    use super::*;

    fn custom(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, p)| (n.to_string(), p.to_string())).collect()
    }

    #[test]
    fn an_invalid_custom_regex_is_an_error_naming_it() {
        let err = Detector::new(&custom(&[("ok", "a+"), ("employee_id", "EMP-(\\d+")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("employee_id"), "{err}");
        assert!(err.contains("invalid regex"), "{err}");
        assert!(!err.ends_with('.'), "{err}");
    }

    #[test]
    fn custom_names_are_checked() {
        for (name, reason) in [("", "empty"), ("Employee", "lowercase"), ("email", "built-in")] {
            let err = Detector::new(&custom(&[(name, "x")])).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(reason), "{name}: {err}");
        }
        let err = Detector::new(&custom(&[("a", "x"), ("a", "y")])).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn custom_kinds_are_found_and_named() {
        let d = Detector::new(&custom(&[("employee_id", r"\bEMP-\d{6}\b"), ("empty", "x*")]))
            .unwrap_or_else(|e| panic!("{e}"));
        let text = "EMP-123456 wrote to ops@example.org";
        let spans = d.find(text);
        assert_eq!(spans.len(), 2, "{spans:?}");
        assert_eq!(spans[0].kind, PiiKind::Custom(0));
        assert_eq!(&text[spans[0].start..spans[0].end], "EMP-123456");
        assert_eq!(spans[1].kind, PiiKind::Email);
        assert_eq!(d.kind_name(PiiKind::Custom(0)), "employee_id");
        assert_eq!(d.kind_name(PiiKind::Custom(9)), "custom_9");
        assert_eq!(d.kind_name(PiiKind::Ipv6), "ipv6");
        assert_eq!(d.kind_by_name("employee_id"), Some(PiiKind::Custom(0)));
        assert_eq!(d.kind_by_name("card"), Some(PiiKind::Card));
        assert_eq!(d.custom_names().collect::<Vec<_>>(), ["employee_id", "empty"]);
        assert_eq!(d.redact(text, &spans, PiiAction::Mask, b""), "[EMPLOYEE_ID] wrote to [EMAIL]");
    }

    #[test]
    fn overlaps_go_to_the_earliest_then_longest() {
        let d = Detector::new(&custom(&[("digits", r"\d+")])).unwrap_or_else(|e| panic!("{e}"));
        let text = "x 10.0.0.1 y";
        let spans = d.find(text);
        // The custom match "10" starts with the address but is shorter.
        assert_eq!(spans, [Span { start: 2, end: 10, kind: PiiKind::Ipv4 }]);
    }

    #[test]
    fn spans_are_ordered_and_disjoint_in_mixed_text() {
        let d = Detector::new(&[]).unwrap_or_else(|e| panic!("{e}"));
        let text = "Mail ann@example.org or call +49 30 1234567 from 10.1.2.3 / fe80::1, \
                    pay DE89 3704 0044 0532 0130 00 with 4111 1111 1111 1111 by 2024.";
        let spans = d.find(text);
        let kinds: Vec<_> = spans.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, [PiiKind::Email, PiiKind::Phone, PiiKind::Ipv4, PiiKind::Ipv6, PiiKind::Iban, PiiKind::Card]);
        assert!(spans.windows(2).all(|w| w[0].end <= w[1].start));
    }

    #[test]
    fn random_text_gives_ordered_disjoint_spans_on_char_boundaries() {
        // Text made of the pieces the scanners look at, so that every branch runs on
        // malformed input; a fixed xorshift seed keeps the test reproducible.
        let pieces: Vec<&str> = "0|1|4|9|25|255|030|4111|1111|+49|+1|(555)|DE89|NL91| | |-|.|:|::|/|(|)|@|a|fe80|\
                                 ffff|x|_|é|§|\n|example.org|section |1.2.3.4|2001:db8"
            .split('|')
            .collect();
        let d = Detector::new(&custom(&[("hex", "[a-f]{2,}")])).unwrap_or_else(|e| panic!("{e}"));
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 30) as usize;
            let text: String = (0..len).map(|_| pieces[(next() % pieces.len() as u64) as usize]).collect();
            let spans = d.find(&text);
            for s in &spans {
                assert!(s.start < s.end && s.end <= text.len(), "{text:?} {s:?}");
                assert!(text.is_char_boundary(s.start) && text.is_char_boundary(s.end));
            }
            assert!(spans.windows(2).all(|w| w[0].end <= w[1].start), "{text:?}");
            let _ = crate::redact(&text, &spans, PiiAction::Hash, b"k");
        }
    }

    #[test]
    fn number_shaped_text_that_is_not_pii() {
        let d = Detector::new(&[]).unwrap_or_else(|e| panic!("{e}"));
        for text in [
            "in 1999, 2024 and 20240105",
            "EUR 1234.56, 1,234,567.89 and -0.5",
            "2024-01-05T12:30:45Z",
            "2024-01-05 12:30:45.123",
            "at 12:30:45 on 05.01.2024",
            "1700000000 and 1700000000000",
            "v1.2.3.4, 1.2.3.4.5 and version 1.2.3.4",
            "999.1.1.1",
            "ISBN 978-3-16-148410-0",
            "order #123456789, x86_64, UTF-8",
            "sha256:abcdef0123 and 00:1A:2B:3C:4D:5E",
        ] {
            assert!(d.find(text).is_empty(), "{text}: {:?}", d.find(text));
        }
    }

    #[test]
    fn custom_patterns_may_use_unicode_classes_and_case_folding() {
        let d = Detector::new(&custom(&[("badge", r"(?i)\bbadge-\d+\b")])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.find("BADGE-42 and badge-7").len(), 2);
    }

    #[test]
    fn a_detector_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync + Clone>() {}
        shareable::<Detector>();
    }

    #[test]
    fn text_without_triggers_yields_nothing() {
        let d = Detector::new(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(d.find("").is_empty());
        assert!(d.find("First Citizen:\nBefore we proceed any further, hear me speak.").is_empty());
        assert!(d.find("Ünïcödé — “quoted” : @ 1").is_empty());
    }
}
