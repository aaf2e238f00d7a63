//! IP addresses.
//!
//! IPv4 is the dotted-decimal form of four octets 0-255, each written without leading zeros
//! (RFC 3986 §3.2.2 `dec-octet`; a leading zero would be octal to `inet_aton`). A dotted quad
//! that is part of a longer dotted number ("1.2.3.4.5", "v1.2.3.4" is a version) is not
//! reported.
//!
//! IPv6 follows the text forms of RFC 4291 §2.2: eight groups of one to four hex digits, or
//! fewer with one `::` standing for the missing zero groups, the last 32 bits optionally in
//! dotted IPv4 form ("::ffff:192.0.2.1"). A zone index ("%eth0") or prefix length ("/64") is not
//! part of the reported span. To keep `A::B`-style identifiers and bare `::` out, an address
//! must contain at least one decimal digit, as every address in practice does (2001:, fe80:,
//! ::1).

use crate::scan::{byte_at, digit_run_end, is_word};

/// "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", the longest text form.
const MAX_IPV6_TEXT: usize = 45;

/// The end of the IPv4 address starting at the digit `i`.
pub(crate) fn ipv4_at(b: &[u8], i: usize) -> Option<usize> {
    if i >= 2 && b[i - 1] == b'.' && b[i - 2].is_ascii_digit() {
        return None;
    }
    let end = dotted_quad_end(b, i)?;
    let c = byte_at(b, end);
    if is_word(c) || (c == b'.' && byte_at(b, end + 1).is_ascii_digit()) {
        return None;
    }
    if has_version_suffix(b, end) || follows_numbering_word(b, i) {
        return None;
    }
    Some(end)
}

/// Whether the dotted quad ending at `end` carries a package-version suffix: a Debian or RPM
/// revision ("1.2.5.1-2", but not the range "10.0.0.1-10.0.0.9") or a `+`/`~` qualifier
/// ("24.3.4.5+dfsg", "1.2.3.4~rc1").
fn has_version_suffix(b: &[u8], end: usize) -> bool {
    match byte_at(b, end) {
        b'-' if byte_at(b, end + 1).is_ascii_digit() => byte_at(b, digit_run_end(b, end + 1)) != b'.',
        b'+' | b'~' => byte_at(b, end + 1).is_ascii_alphanumeric(),
        _ => false,
    }
}

/// Words after which four dotted numbers are a version or a section of a document, not an
/// address ("version 1.2.2.3", "section 5.7.1.2", "§ 4.2.2.2").
const NUMBERING_WORDS: [&[u8]; 14] = [
    b"version",
    b"ver",
    b"release",
    b"rev",
    b"revision",
    b"section",
    b"sec",
    b"chapter",
    b"clause",
    b"annex",
    b"appendix",
    b"paragraph",
    b"step",
    b"released",
];

/// Whether the number at `i` follows one of `NUMBERING_WORDS` (or `§`), across at most two
/// spaces, `(` or `-` ("(rev 1.2.3.4)", "#section-4.2.2.2").
fn follows_numbering_word(b: &[u8], i: usize) -> bool {
    let mut k = i;
    while k > 0 && i - k < 2 && matches!(b[k - 1], b' ' | b'(' | b'-') {
        k -= 1;
    }
    // "§" is U+00A7, two bytes in UTF-8.
    if k >= 2 && b[k - 2..k] == [0xC2, 0xA7] {
        return true;
    }
    let word_end = k;
    while k > 0 && word_end - k <= 9 && b[k - 1].is_ascii_alphabetic() {
        k -= 1;
    }
    let word = &b[k..word_end];
    let singular = word.strip_suffix(b"s").unwrap_or(word);
    (k == 0 || !is_word(b[k - 1])) && NUMBERING_WORDS.iter().any(|w| w.eq_ignore_ascii_case(singular))
}

/// Four `dec-octet`s separated by dots, starting at `i`; the end of the fourth.
fn dotted_quad_end(b: &[u8], i: usize) -> Option<usize> {
    let mut pos = i;
    for k in 0..4 {
        if k > 0 {
            if byte_at(b, pos) != b'.' {
                return None;
            }
            pos += 1;
        }
        let end = digit_run_end(b, pos);
        let octet = &b[pos..end];
        let value = match octet {
            [d] => u32::from(d - b'0'),
            [b'1'..=b'9', ..] if octet.len() <= 3 => octet.iter().fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0')),
            _ => return None,
        };
        if value > 255 {
            return None;
        }
        pos = end;
    }
    Some(pos)
}

fn is_ipv6_char(c: u8) -> bool {
    c.is_ascii_hexdigit() || c == b':'
}

/// The IPv6 address containing the colon at `p` and starting at or after `floor`, as
/// `Ok((start, end))` with `end > p`, or `Err(window_end)` when the run of hex digits, colons
/// and dots around it is not one, so the scanner can skip the remaining colons of that run.
pub(crate) fn ipv6_around(b: &[u8], p: usize, floor: usize) -> Result<(usize, usize), usize> {
    let mut s = p;
    while s > floor && is_ipv6_char(b[s - 1]) {
        s -= 1;
        if p - s > MAX_IPV6_TEXT {
            return Err(p + 1);
        }
    }
    let mut e = p + 1;
    while e < b.len() && (is_ipv6_char(b[e]) || b[e] == b'.') {
        e += 1;
        if e - s > MAX_IPV6_TEXT + 1 {
            // Too long to be an address; let the scanner move on colon by colon.
            return Err(p + 1);
        }
    }
    let window_end = e;
    // Sentence punctuation after the address: "... at fe80::1." or "fe80::1: down".
    while e > s && b[e - 1] == b'.' {
        e -= 1;
    }
    if e - s >= 2 && b[e - 1] == b':' && b[e - 2] != b':' {
        e -= 1;
    }
    // A label glued on the left: "ip:fe80::1".
    if e - s >= 2 && b[s] == b':' && b[s + 1] != b':' {
        s += 1;
    }
    let glued = (s > 0 && is_word(b[s - 1])) || is_word(byte_at(b, e));
    let candidate = &b[s..e];
    if glued
        || e <= p
        || candidate.len() > MAX_IPV6_TEXT
        || !candidate.iter().any(u8::is_ascii_digit)
        || !is_ipv6(candidate)
    {
        return Err(window_end);
    }
    Ok((s, e))
}

/// Whether `text` is an RFC 4291 §2.2 text form.
fn is_ipv6(text: &[u8]) -> bool {
    match find_double_colon(text) {
        Some(k) => {
            let (head, tail) = (&text[..k], &text[k + 2..]);
            if find_double_colon(tail).is_some() {
                return false;
            }
            match (groups(head, false), groups(tail, true)) {
                (Some(h), Some(t)) => h + t <= 7,
                _ => false,
            }
        }
        None => groups(text, true) == Some(8),
    }
}

fn find_double_colon(text: &[u8]) -> Option<usize> {
    text.windows(2).position(|w| w == b"::")
}

/// The number of 16-bit groups in a colon-separated list (empty for none), or `None` when a
/// group is malformed. A dotted IPv4 last group counts as two when `ipv4_last` allows it.
fn groups(text: &[u8], ipv4_last: bool) -> Option<usize> {
    if text.is_empty() {
        return Some(0);
    }
    let mut count = 0;
    let mut parts = text.split(|&c| c == b':').peekable();
    while let Some(part) = parts.next() {
        let last = parts.peek().is_none();
        if last && ipv4_last && part.contains(&b'.') {
            if dotted_quad_end(part, 0) != Some(part.len()) {
                return None;
            }
            count += 2;
        } else if (1..=4).contains(&part.len()) && part.iter().all(u8::is_ascii_hexdigit) {
            count += 1;
        } else {
            return None;
        }
    }
    Some(count)
}

#[cfg(test)]
mod tests {
    //! Addresses of both families, and the dotted or colon-separated text that is not one.

    use crate::{Detector, PiiKind};

    fn v4(text: &str) -> Vec<&str> {
        found(text, PiiKind::Ipv4)
    }

    fn v6(text: &str) -> Vec<&str> {
        found(text, PiiKind::Ipv6)
    }

    fn found(text: &str, kind: PiiKind) -> Vec<&str> {
        let detector = Detector::new(&[]).unwrap_or_else(|e| panic!("{e}"));
        detector.find(text).into_iter().filter(|s| s.kind == kind).map(|s| &text[s.start..s.end]).collect()
    }

    #[test]
    fn finds_ipv4() {
        assert_eq!(v4("from 192.168.0.1 to 10.0.0.255."), ["192.168.0.1", "10.0.0.255"]);
        assert_eq!(v4("0.0.0.0:8080"), ["0.0.0.0"]);
        assert_eq!(v4("255.255.255.255/32"), ["255.255.255.255"]);
        assert_eq!(v4("10.0.0.1-10.0.0.9"), ["10.0.0.1", "10.0.0.9"]);
        assert_eq!(v4("host=8.8.8.8,"), ["8.8.8.8"]);
    }

    #[test]
    fn rejects_non_ipv4() {
        assert!(v4("999.1.1.1").is_empty());
        assert!(v4("1.2.3.256").is_empty());
        assert!(v4("version 1.2.3.4.5").is_empty());
        assert!(v4("v1.2.3.4").is_empty());
        assert!(v4("1.2.3").is_empty());
        assert!(v4("192.168.01.1").is_empty());
        assert!(v4("1.2.3.4a").is_empty());
        assert!(v4("1234.56").is_empty());
        // Package versions and document sections.
        assert!(v4("socat 1.7.4.4-2 and 24.3.4.5+dfsg, 1.2.3.4~rc1").is_empty());
        assert!(v4("zlib version 1.2.2.3, Section 5.7.1.2, § 4.2.2.2, (rev 1.2.3.4)").is_empty());
        assert!(!v4("server 1.2.3.4, versions: 10.0.0.1").is_empty());
    }

    #[test]
    fn finds_ipv6() {
        for addr in [
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            "2001:db8::1",
            "fe80::1",
            "::1",
            "2001:db8::",
            "::ffff:192.0.2.1",
            "64:ff9b::192.0.2.33",
            "1:2:3:4:5:6:7:8",
        ] {
            let text = format!("peer {addr}.");
            assert_eq!(v6(&text), [addr], "{text}");
        }
        assert_eq!(v6("[2001:db8::1]:443"), ["2001:db8::1"]);
        assert_eq!(v6("ip:fe80::1%eth0"), ["fe80::1"]);
        // A trailing colon is punctuation, and is not the start of a second address.
        assert_eq!(v6("1::2: up"), ["1::2"]);
    }

    #[test]
    fn rejects_non_ipv6() {
        for text in [
            "at 12:30:45",
            "2024-01-05T12:30:45Z",
            "std::io::Read",
            "Bad::Add",
            "a :: b",
            "1:2:3:4:5:6:7:8:9",
            "1::2::3",
            "12345::1",
            "00:1A:2B:3C:4D:5E",
            "KING HENRY VI:",
        ] {
            assert!(v6(text).is_empty(), "{text}: {:?}", v6(text));
        }
    }
}
