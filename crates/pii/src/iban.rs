//! International Bank Account Numbers (ISO 13616).
//!
//! An IBAN is a two-letter country code, two check digits and a national BBAN of letters and
//! digits, of a length fixed per country by the SWIFT IBAN registry. It is written either
//! without spaces (the electronic format) or, on paper, in groups of four separated by single
//! spaces with a shorter last group. A candidate is reported only when its country is in the
//! registry table below, it has exactly that country's length, and it passes the ISO 7064
//! MOD 97-10 check that ISO 13616 prescribes. The fixed length also tells where a grouped IBAN
//! ends when more digits follow it on the line.

use crate::scan::{byte_at, is_word};

/// The longest IBAN in the registry (Saint Lucia, 32) rounded up to the ISO 13616 maximum.
const MAX_LEN: usize = 34;

/// The IBAN length the SWIFT IBAN registry fixes for `country` (an ISO 3166 alpha-2 code in
/// upper case), for every SEPA country and the other registry members; `None` for others.
pub fn iban_length(country: &str) -> Option<usize> {
    match country.as_bytes() {
        &[a, b] => registry_length([a, b]),
        _ => None,
    }
}

fn registry_length(country: [u8; 2]) -> Option<usize> {
    let len = match &country {
        b"AD" => 24,
        b"AE" => 23,
        b"AL" => 28,
        b"AT" => 20,
        b"AZ" => 28,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BI" => 27,
        b"BR" => 29,
        b"BY" => 28,
        b"CH" => 21,
        b"CR" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DK" => 18,
        b"DO" => 28,
        b"EE" => 20,
        b"EG" => 29,
        b"ES" => 24,
        b"FI" => 18,
        b"FO" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GE" => 22,
        b"GI" => 23,
        b"GL" => 18,
        b"GR" => 27,
        b"GT" => 28,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IQ" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"JO" => 30,
        b"KW" => 30,
        b"KZ" => 20,
        b"LB" => 28,
        b"LC" => 32,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"MC" => 27,
        b"MD" => 24,
        b"ME" => 22,
        b"MK" => 19,
        b"MR" => 27,
        b"MT" => 31,
        b"MU" => 30,
        b"NL" => 18,
        b"NO" => 15,
        b"PK" => 24,
        b"PL" => 28,
        b"PS" => 29,
        b"PT" => 25,
        b"QA" => 29,
        b"RO" => 24,
        b"RS" => 22,
        b"SA" => 24,
        b"SC" => 31,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"ST" => 25,
        b"SV" => 28,
        b"TL" => 23,
        b"TN" => 24,
        b"TR" => 26,
        b"UA" => 29,
        b"VA" => 22,
        b"VG" => 24,
        b"XK" => 20,
        _ => return None,
    };
    Some(len)
}

/// The end of the IBAN whose country code starts at `s`, if one starts there.
pub(crate) fn at(b: &[u8], s: usize) -> Option<usize> {
    let len = registry_length([byte_at(b, s), byte_at(b, s + 1)])?;
    if !(is_digit(byte_at(b, s + 2)) && is_digit(byte_at(b, s + 3))) {
        return None;
    }
    // The paper format puts a space after every group of four; it is all or nothing.
    let grouped = byte_at(b, s + 4) == b' ';
    let mut chars = [0u8; MAX_LEN];
    let mut n = 0;
    let mut pos = s;
    while n < len {
        if n > 0 && n % 4 == 0 && grouped {
            if byte_at(b, pos) != b' ' {
                return None;
            }
            pos += 1;
        }
        let c = byte_at(b, pos);
        if !(c.is_ascii_uppercase() || is_digit(c)) {
            return None;
        }
        chars[n] = c;
        n += 1;
        pos += 1;
    }
    if is_word(byte_at(b, pos)) {
        return None;
    }
    mod97(&chars[..len]).then_some(pos)
}

fn is_digit(c: u8) -> bool {
    c.is_ascii_digit()
}

/// ISO 7064 MOD 97-10 as ISO 13616 applies it: move the first four characters to the end, read
/// letters as 10..=35, and the resulting number must be 1 modulo 97. Computed digit by digit so
/// the 60-odd-digit number never has to exist.
fn mod97(iban: &[u8]) -> bool {
    let (head, tail) = iban.split_at(4);
    let mut rest: u32 = 0;
    for &c in tail.iter().chain(head) {
        rest = if c.is_ascii_digit() {
            (rest * 10 + u32::from(c - b'0')) % 97
        } else {
            (rest * 100 + u32::from(c - b'A') + 10) % 97
        };
    }
    rest == 1
}

#[cfg(test)]
mod tests {
    //! Registry examples (valid by construction), broken checksums, lengths and groupings.

    use crate::{Detector, PiiKind};

    fn ibans(text: &str) -> Vec<&str> {
        let detector = Detector::new(&[]).unwrap_or_else(|e| panic!("{e}"));
        detector.find(text).into_iter().filter(|s| s.kind == PiiKind::Iban).map(|s| &text[s.start..s.end]).collect()
    }

    #[test]
    fn finds_registry_examples() {
        for iban in [
            "DE89 3704 0044 0532 0130 00",
            "DE89370400440532013000",
            "FR14 2004 1010 0505 0001 3M02 606",
            "NL91 ABNA 0417 1643 00",
            "GB29 NWBK 6016 1331 9268 19",
            "BE68 5390 0754 7034",
            "NO93 8601 1117 947",
            "MT84 MALT 0110 0001 2345 MTLC AST0 01S",
            "LC55 HEMM 0001 0001 0012 0012 0002 3015",
        ] {
            let text = format!("pay to {iban}, thanks");
            assert_eq!(ibans(&text), [iban], "{text}");
        }
        assert_eq!(ibans("IBAN:DE89370400440532013000"), ["DE89370400440532013000"]);
    }

    #[test]
    fn a_grouped_iban_ends_at_its_registry_length() {
        assert_eq!(ibans("DE89 3704 0044 0532 0130 00 1234"), ["DE89 3704 0044 0532 0130 00"]);
    }

    #[test]
    fn rejects_bad_checksums_lengths_and_shapes() {
        // One check digit off.
        assert!(ibans("DE88 3704 0044 0532 0130 00").is_empty());
        // One BBAN digit off.
        assert!(ibans("DE89370400440532013001").is_empty());
        // Too short and too long for Germany.
        assert!(ibans("DE8937040044053201300").is_empty());
        assert!(ibans("DE893704004405320130001").is_empty());
        // Mixed grouping, lowercase, unknown country, glued to a word.
        assert!(ibans("DE89 37040044 0532 0130 00").is_empty());
        assert!(ibans("de89370400440532013000").is_empty());
        assert!(ibans("ZZ89370400440532013000").is_empty());
        assert!(ibans("XDE89370400440532013000").is_empty());
    }

    #[test]
    fn registry_lengths() {
        assert_eq!(super::iban_length("DE"), Some(22));
        assert_eq!(super::iban_length("FR"), Some(27));
        assert_eq!(super::iban_length("NL"), Some(18));
        assert_eq!(super::iban_length("de"), None);
        assert_eq!(super::iban_length("DEU"), None);
    }
}
