//! The one pass over a text's bytes that drives the built-in detectors.
//!
//! Every built-in kind needs an ASCII digit, an `@` or a `:` (IPv6 without a decimal digit is
//! not reported, see `ip`), so the scanner skips everything else with a table lookup per byte and
//! only looks around those trigger bytes. Each detector is anchored where its kind begins: an
//! e-mail at its `@` (the local part is found by looking back), an IPv6 address at its first
//! colon, everything else at the first digit of a number, looking back one or two bytes for a
//! `+` (E.164), a `(` (an area code) or a country code (IBAN). Candidates may overlap (a digit
//! run can be both the end of an IPv4 address and the local part of an e-mail); `Detector`
//! resolves that once, after the pass.

use crate::{card, email, iban, ip, phone, PiiKind, Span};

/// Bytes that can start the look-around for some built-in kind.
static TRIGGER: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = b'0';
    while c <= b'9' {
        table[c as usize] = true;
        c += 1;
    }
    table[b'@' as usize] = true;
    table[b':' as usize] = true;
    table
};

/// The byte at `i`, or NUL past the end, which no detector accepts, so bounds need no
/// separate check.
#[inline]
pub(crate) fn byte_at(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

/// Letters, digits and `_`: a value glued to one of these is part of a longer token.
#[inline]
pub(crate) fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

#[inline]
pub(crate) fn is_digit_at(b: &[u8], i: usize) -> bool {
    byte_at(b, i).is_ascii_digit()
}

/// The index just past the run of ASCII digits starting at `i`.
#[inline]
pub(crate) fn digit_run_end(b: &[u8], i: usize) -> usize {
    let mut e = i;
    while is_digit_at(b, e) {
        e += 1;
    }
    e
}

/// Whether the number starting at `i` is really the continuation of an earlier one: the byte
/// before it is one of `separators` and the byte before that is a digit ("1234 5678": the
/// "5678" is not a number of its own).
#[inline]
pub(crate) fn continues_number(b: &[u8], i: usize, separators: &[u8]) -> bool {
    i >= 2 && separators.contains(&b[i - 1]) && b[i - 2].is_ascii_digit()
}

/// Whether a number ending at `e` really ends there: not glued to a letter or digit and not
/// followed by a decimal or thousands separator and more digits ("1234.56", "1,234").
#[inline]
pub(crate) fn ends_number(b: &[u8], e: usize) -> bool {
    let c = byte_at(b, e);
    let glued = is_word(c);
    let decimals = matches!(c, b'.' | b',') && is_digit_at(b, e + 1);
    !(glued || decimals)
}

/// Appends every built-in candidate in `text` to `out`, in order of discovery (not necessarily
/// sorted, possibly overlapping).
pub(crate) fn scan(text: &str, out: &mut Vec<Span>) {
    let b = text.as_bytes();
    let mut i = 0;
    // Colons before this index lie in a window already rejected as IPv6.
    let mut ipv6_rejected_until = 0;
    // Where the last IPv6 address ended: a later one may not reach back into it (after
    // "1::2:" is accepted as "1::2", the trailing colon must not find "1::2" again).
    let mut ipv6_floor = 0;
    while let Some(offset) = b[i..].iter().position(|&c| TRIGGER[c as usize]) {
        i += offset;
        match b[i] {
            b'@' => match email::around(b, i) {
                Some((start, end)) => {
                    out.push(span(start, end, PiiKind::Email));
                    i = end;
                }
                None => i += 1,
            },
            b':' => {
                if i >= ipv6_rejected_until {
                    match ip::ipv6_around(b, i, ipv6_floor) {
                        Ok((start, end)) => {
                            out.push(span(start, end, PiiKind::Ipv6));
                            i = end;
                            ipv6_floor = end;
                            continue;
                        }
                        Err(window_end) => ipv6_rejected_until = window_end,
                    }
                }
                i += 1;
            }
            _ => i = at_digit(b, i, out),
        }
    }
}

fn span(start: usize, end: usize, kind: PiiKind) -> Span {
    Span { start, end, kind }
}

/// Tries the number-shaped kinds at the digit `b[i]` and returns where scanning resumes.
fn at_digit(b: &[u8], i: usize, out: &mut Vec<Span>) -> usize {
    let prev = if i > 0 { b[i - 1] } else { b' ' };
    if is_word(prev) {
        // Inside a word the digit only matters as an IBAN's check digits after its country
        // code ("DE89..."); otherwise the whole digit run belongs to that word.
        if i >= 2 && prev.is_ascii_uppercase() && b[i - 2].is_ascii_uppercase() && (i == 2 || !is_word(b[i - 3])) {
            if let Some(end) = iban::at(b, i - 2) {
                out.push(span(i - 2, end, PiiKind::Iban));
                return end;
            }
        }
        return digit_run_end(b, i);
    }
    if prev == b'+' && (i < 2 || !is_word(b[i - 2])) {
        if let Some(end) = phone::e164_at(b, i - 1) {
            out.push(span(i - 1, end, PiiKind::Phone));
            return end;
        }
    }
    if prev == b'(' {
        if let Some(end) = phone::area_code_in_parens_at(b, i - 1) {
            out.push(span(i - 1, end, PiiKind::Phone));
            return end;
        }
    }
    let found = ip::ipv4_at(b, i)
        .map(|end| (end, PiiKind::Ipv4))
        .or_else(|| card::at(b, i).map(|end| (end, PiiKind::Card)))
        .or_else(|| phone::national_at(b, i).map(|end| (end, PiiKind::Phone)));
    match found {
        Some((end, kind)) => {
            out.push(span(i, end, kind));
            end
        }
        None => digit_run_end(b, i),
    }
}
