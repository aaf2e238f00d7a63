//! Redaction: replacing detected spans before a value is stored.
//!
//! `Mask` keeps only the kind (`[EMAIL]`). `Hash` keeps joinability: the token carries the first
//! 64 bits of HMAC-SHA256 (RFC 2104) of the value under a per-tenant key, so the same address
//! maps to the same token across a tenant's datasets, while without the key nobody can confirm a
//! guess (phone numbers and card numbers are few enough to enumerate, so a plain hash would
//! not protect them). `Keep` and `DropColumn` return the text untouched: dropping a whole
//! column is the caller's decision, made per column before any value reaches this function.

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{PiiKind, Span};

type HmacSha256 = Hmac<Sha256>;

/// Hex digits of the HMAC kept in a hash token: 64 bits, enough that distinct values in one
/// tenant do not collide in practice, short enough to keep redacted text readable.
const HASH_HEX_DIGITS: usize = 16;

/// What to do with the PII found in a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiAction {
    Keep,
    Mask,
    Hash,
    DropColumn,
}

/// `text` with each span replaced according to `action`. `spans` are those of
/// [`crate::Detector::find`] on this same `text`: sorted, disjoint, on `char` boundaries. A span
/// that is not (out of range, overlapping the previous one, inside a character) is skipped
/// rather than trusted. Custom kinds are labelled `CUSTOM_<i>`; [`crate::Detector::redact`]
/// labels them by name.
pub fn redact<'a>(text: &'a str, spans: &[Span], action: PiiAction, hash_key: &[u8]) -> Cow<'a, str> {
    redact_labelled(text, spans, action, hash_key, |_| None)
}

/// [`redact`], asking `custom_label` for the label of each custom kind first.
pub(crate) fn redact_labelled<'a, 'l>(
    text: &'a str,
    spans: &[Span],
    action: PiiAction,
    hash_key: &[u8],
    custom_label: impl Fn(PiiKind) -> Option<Cow<'l, str>>,
) -> Cow<'a, str> {
    let hash = match action {
        PiiAction::Keep | PiiAction::DropColumn => return Cow::Borrowed(text),
        _ if spans.is_empty() => return Cow::Borrowed(text),
        PiiAction::Mask => false,
        PiiAction::Hash => true,
    };
    // One keyed state for the whole call; each span clones it instead of re-deriving the pads.
    let mac = HmacSha256::new_from_slice(hash_key).expect("HMAC accepts keys of any length");
    let mut out = String::with_capacity(text.len() + spans.len() * 8);
    let mut copied = 0;
    for span in spans {
        let valid = span.start >= copied
            && span.start < span.end
            && span.end <= text.len()
            && text.is_char_boundary(span.start)
            && text.is_char_boundary(span.end);
        if !valid {
            continue;
        }
        out.push_str(&text[copied..span.start]);
        out.push('[');
        match custom_label(span.kind) {
            Some(label) => out.push_str(&label),
            None => push_label(&mut out, span.kind),
        }
        if hash {
            let mut value_mac = mac.clone();
            value_mac.update(&text.as_bytes()[span.start..span.end]);
            let digest = value_mac.finalize().into_bytes();
            out.push(':');
            out.push_str(&hex::encode(&digest[..HASH_HEX_DIGITS / 2]));
        }
        out.push(']');
        copied = span.end;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

fn push_label(out: &mut String, kind: PiiKind) {
    match kind.builtin_name() {
        Some(name) => out.extend(name.chars().map(|c| c.to_ascii_uppercase())),
        None => {
            if let PiiKind::Custom(i) = kind {
                out.push_str("CUSTOM_");
                out.push_str(&i.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Masks, keyed hash tokens, and the actions that leave text alone.

    use super::*;
    use crate::Detector;

    const TEXT: &str = "Ann <ann@example.org>, +49 30 1234567, ann@example.org";

    fn spans() -> Vec<Span> {
        Detector::new(&[]).unwrap_or_else(|e| panic!("{e}")).find(TEXT)
    }

    #[test]
    fn mask_replaces_each_span_with_its_kind() {
        assert_eq!(redact(TEXT, &spans(), PiiAction::Mask, b"k"), "Ann <[EMAIL]>, [PHONE], [EMAIL]");
        let custom = [Span { start: 0, end: 3, kind: PiiKind::Custom(2) }];
        assert_eq!(redact(TEXT, &custom, PiiAction::Mask, b"")[..12], *"[CUSTOM_2] <");
    }

    #[test]
    fn hash_is_keyed_and_stable() {
        let a = redact(TEXT, &spans(), PiiAction::Hash, b"tenant-a");
        let b = redact(TEXT, &spans(), PiiAction::Hash, b"tenant-b");
        let tokens = |s: &str| -> Vec<String> {
            s.split('[').skip(1).map(|t| t.split(']').next().unwrap_or_default().to_string()).collect()
        };
        let ta = tokens(&a);
        assert_eq!(ta.len(), 3, "{a}");
        assert!(ta[0].starts_with("EMAIL:") && ta[0].len() == "EMAIL:".len() + 16);
        assert!(ta[1].starts_with("PHONE:"));
        // Same value, same key: same token. Other key: other token.
        assert_eq!(ta[0], ta[2]);
        assert_ne!(ta[0], tokens(&b)[0]);
    }

    #[test]
    fn hash_matches_hmac_sha256() {
        // RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
        let text = "what do ya want for nothing?";
        let span = [Span { start: 0, end: text.len(), kind: PiiKind::Email }];
        assert_eq!(redact(text, &span, PiiAction::Hash, b"Jefe"), "[EMAIL:5bdcc146bf60754e]");
    }

    #[test]
    fn keep_drop_and_no_spans_borrow() {
        for action in [PiiAction::Keep, PiiAction::DropColumn] {
            assert!(matches!(redact(TEXT, &spans(), action, b""), Cow::Borrowed(_)));
        }
        assert!(matches!(redact(TEXT, &[], PiiAction::Mask, b""), Cow::Borrowed(_)));
    }

    #[test]
    fn untrustworthy_spans_are_skipped() {
        let text = "aé b";
        let bad = [
            Span { start: 2, end: 3, kind: PiiKind::Email },
            Span { start: 4, end: 99, kind: PiiKind::Email },
            Span { start: 4, end: 5, kind: PiiKind::Phone },
        ];
        assert_eq!(redact(text, &bad, PiiAction::Mask, b""), "aé [PHONE]");
    }

    #[test]
    fn actions_serialise_in_snake_case() {
        let names: Vec<String> = [PiiAction::Keep, PiiAction::DropColumn]
            .iter()
            .map(|a| serde_json::to_string(a).unwrap_or_default())
            .collect();
        assert_eq!(names, ["\"keep\"", "\"drop_column\""]);
    }
}
