//! E-mail addresses, found from their `@`.
//!
//! The domain follows RFC 5321 §4.1.2 (`Domain = sub-domain *("." sub-domain)`, each label a
//! letter or digit, then letters, digits and hyphens, not ending in a hyphen), at most 63 octets
//! a label (RFC 1035 §2.3.4) and 253 in all, with at least two labels and an alphabetic (or
//! punycode `xn--`) top-level label, so "user@localhost" and "a@1.2.3.4" are not reported.
//!
//! The local part is at most 64 octets (RFC 5321 §4.5.3.1.1) of a conservative subset of the
//! RFC 5322 `atext`: letters, digits and `. _ % + - '`. The rest of `atext` (`/ = ? & ! # ...`)
//! is left out on purpose: in running text those characters belong to URLs and query strings
//! ("https://x.org/?to=ops@example.org"), and real mailboxes almost never use them. Quoted local
//! parts and internationalised (RFC 6531) ones are not recognised; for the latter only the ASCII
//! tail next to the `@` is reported.

use crate::scan::byte_at;

const MAX_LOCAL: usize = 64;
const MAX_LABEL: usize = 63;
const MAX_DOMAIN: usize = 253;

fn is_local_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-' | b'\'')
}

/// The address around the `@` at `at`, as `(start, end)` byte offsets.
pub(crate) fn around(b: &[u8], at: usize) -> Option<(usize, usize)> {
    let start = local_start(b, at)?;
    let end = domain_end(b, at + 1)?;
    Some((start, end))
}

fn local_start(b: &[u8], at: usize) -> Option<usize> {
    let mut s = at;
    while s > 0 && is_local_char(b[s - 1]) {
        // Dots may not be doubled (RFC 5322 dot-atom); "see..ann@x.org" starts after them.
        if b[s - 1] == b'.' && b[s] == b'.' {
            break;
        }
        s -= 1;
        if at - s > MAX_LOCAL {
            return None;
        }
    }
    // A quote, dot or sign before the address is punctuation of the sentence, not the address.
    while s < at && !(b[s].is_ascii_alphanumeric() || b[s] == b'_') {
        s += 1;
    }
    if s == at || b[at - 1] == b'.' {
        return None;
    }
    Some(s)
}

fn domain_end(b: &[u8], start: usize) -> Option<usize> {
    let mut pos = start;
    let mut labels = 0;
    let mut last_label;
    loop {
        let label_start = pos;
        while b.get(pos).is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'-') {
            pos += 1;
        }
        let label = &b[label_start..pos];
        match (label.first(), label.last()) {
            (Some(first), Some(last))
                if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() && label.len() <= MAX_LABEL => {}
            _ => return None,
        }
        labels += 1;
        last_label = (label_start, pos);
        if pos - start > MAX_DOMAIN {
            return None;
        }
        // A dot continues the domain only when another label follows; otherwise it ends the
        // sentence ("write to ann@example.org.").
        if byte_at(b, pos) == b'.' && byte_at(b, pos + 1).is_ascii_alphanumeric() {
            pos += 1;
        } else {
            break;
        }
    }
    if labels < 2 || pos - start > MAX_DOMAIN || matches!(byte_at(b, pos), b'@' | b'_') {
        return None;
    }
    let tld = &b[last_label.0..last_label.1];
    let alphabetic = tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic);
    let punycode = tld.len() > 4 && tld[..4].eq_ignore_ascii_case(b"xn--");
    if !(alphabetic || punycode) {
        return None;
    }
    Some(pos)
}

#[cfg(test)]
mod tests {
    //! Addresses in running text, and the near misses around them.

    use crate::{Detector, PiiKind};

    fn emails(text: &str) -> Vec<&str> {
        let detector = Detector::new(&[]).unwrap_or_else(|e| panic!("{e}"));
        detector.find(text).into_iter().filter(|s| s.kind == PiiKind::Email).map(|s| &text[s.start..s.end]).collect()
    }

    #[test]
    fn finds_addresses_in_text() {
        assert_eq!(emails("mail anna12@example.org now"), ["anna12@example.org"]);
        assert_eq!(emails("(j.smith+tag@mail.corp.example.com)"), ["j.smith+tag@mail.corp.example.com"]);
        assert_eq!(emails("write to k_mueller@example.de."), ["k_mueller@example.de"]);
        assert_eq!(emails("'o'brien@example.ie'"), ["o'brien@example.ie"]);
        assert_eq!(emails("a@b.co,c@d.io"), ["a@b.co", "c@d.io"]);
        assert_eq!(emails("x@xn--80ak6aa92e.xn--p1ai"), ["x@xn--80ak6aa92e.xn--p1ai"]);
        assert_eq!(emails("1.2.3.4@example.com"), ["1.2.3.4@example.com"]);
    }

    #[test]
    fn rejects_near_misses() {
        assert!(emails("@handle and user@ and @example.org").is_empty());
        assert!(emails("root@localhost").is_empty());
        assert!(emails("a@1.2.3.4 a@example.c0m a@-example.org a@example-.org").is_empty());
        assert!(emails("ann.@example.org").is_empty());
        assert!(emails("price: 3 @ 4.50").is_empty());
        let long = format!("{}@example.org", "a".repeat(65));
        assert!(emails(&long).is_empty());
    }

    #[test]
    fn stops_at_urls_and_non_ascii() {
        assert_eq!(emails("https://x.org/?to=ops@example.org"), ["ops@example.org"]);
        assert_eq!(emails("“ann@example.org”"), ["ann@example.org"]);
    }
}
