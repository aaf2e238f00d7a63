//! Payment card numbers (PANs).
//!
//! ISO/IEC 7812 numbers are 13 to 19 digits whose last digit is a Luhn check digit (ISO/IEC
//! 7812-1 Annex B). Random 16-digit strings pass Luhn one time in ten, so a candidate must also
//! start with an issuer identification number (IIN) of a scheme that issues cards of that
//! length. Numbers are written as one run or in groups separated by single spaces or by single
//! dashes (not both); grouped numbers start with a group of four, the way every scheme prints
//! them (4-4-4-4, 4-6-5, 4-4-4-4-3).

use crate::scan::{byte_at, continues_number, digit_run_end, ends_number};

const MIN_DIGITS: usize = 13;
const MAX_DIGITS: usize = 19;

/// The end of the card number starting at the digit `i`, if one starts there.
pub(crate) fn at(b: &[u8], i: usize) -> Option<usize> {
    // Major industry identifiers 2 to 6: the card schemes. Cheapest test first.
    if !matches!(b[i], b'2'..=b'6') || continues_number(b, i, b" -") {
        return None;
    }
    let mut digits = [0u8; MAX_DIGITS];
    let mut n = 0;
    let mut groups = 0;
    let mut first_group = 0;
    let mut separator = 0u8;
    let mut pos = i;
    loop {
        let run_end = digit_run_end(b, pos);
        let len = run_end - pos;
        if n + len > MAX_DIGITS {
            return None;
        }
        for (slot, &c) in digits[n..n + len].iter_mut().zip(&b[pos..run_end]) {
            *slot = c - b'0';
        }
        n += len;
        groups += 1;
        if groups == 1 {
            first_group = len;
        } else if !(2..=6).contains(&len) {
            return None;
        }
        pos = run_end;
        let c = byte_at(b, pos);
        if matches!(c, b' ' | b'-') && byte_at(b, pos + 1).is_ascii_digit() {
            if separator == 0 {
                separator = c;
            } else if separator != c {
                return None;
            }
            pos += 1;
            continue;
        }
        break;
    }
    if n < MIN_DIGITS || (groups > 1 && first_group != 4) || !ends_number(b, pos) {
        return None;
    }
    let digits = &digits[..n];
    (plausible_iin(digits) && luhn(digits)).then_some(pos)
}

/// Whether the number starts with the IIN range of a scheme issuing cards of its length.
fn plausible_iin(d: &[u8]) -> bool {
    let len = d.len();
    let prefix = |k: usize| d[..k].iter().fold(0u32, |acc, &x| acc * 10 + u32::from(x));
    match d[0] {
        // Visa.
        4 => matches!(len, 13 | 16 | 19),
        // Mastercard 51-55; Maestro 50, 56-59.
        5 => match prefix(2) {
            51..=55 => len == 16,
            _ => true,
        },
        // Mastercard 2221-2720.
        2 => (2221..=2720).contains(&prefix(4)) && len == 16,
        3 => match prefix(2) {
            // American Express.
            34 | 37 => len == 15,
            // Diners Club 300-305, 3095, 36, 38-39.
            30 => ((300..=305).contains(&prefix(3)) || prefix(4) == 3095) && len >= 14,
            36 | 38 | 39 => len >= 14,
            // JCB 3528-3589.
            35 => (3528..=3589).contains(&prefix(4)) && len >= 16,
            _ => false,
        },
        // Discover 6011, 644-649, 65; UnionPay 62; RuPay 60; Maestro 6x (12 to 19 digits).
        6 => true,
        _ => false,
    }
}

/// The Luhn check (ISO/IEC 7812-1 Annex B): doubling every second digit from the right, the
/// digit sum must be a multiple of ten.
fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(k, &x)| {
            let x = u32::from(x);
            if k % 2 == 1 {
                let doubled = x * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    //! Scheme test numbers in every grouping, Luhn failures and non-card digit runs.

    use crate::{Detector, PiiKind};

    fn cards(text: &str) -> Vec<&str> {
        let detector = Detector::new(&[]).unwrap_or_else(|e| panic!("{e}"));
        detector.find(text).into_iter().filter(|s| s.kind == PiiKind::Card).map(|s| &text[s.start..s.end]).collect()
    }

    #[test]
    fn finds_scheme_test_numbers() {
        for pan in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "5555 5555 5555 4444",
            "2223 0031 2200 3222",
            "3782 822463 10005",
            "6011 1111 1111 1117",
            "3530111333300000",
            "4222222222222",
        ] {
            let text = format!("card: {pan}.");
            assert_eq!(cards(&text), [pan], "{text}");
        }
    }

    #[test]
    fn rejects_luhn_failures() {
        assert!(cards("4111 1111 1111 1112").is_empty());
        assert!(cards("5555555555554445").is_empty());
    }

    #[test]
    fn rejects_other_digit_runs() {
        // Wrong IIN (Luhn-valid), wrong length for the scheme, unix time in milliseconds.
        assert!(cards("1111 1111 1111 1117").is_empty());
        assert!(cards("37828224631000").is_empty());
        assert!(cards("1700000000000 ms").is_empty());
        // Mixed separators, a stray leading group, glued to more digits or letters.
        assert!(cards("4111 1111-1111 1111").is_empty());
        assert!(cards("12 4111 1111 1111 1111").is_empty());
        assert!(cards("4111 1111 1111 1111 2024").is_empty());
        assert!(cards("4111111111111111x").is_empty());
        assert!(cards("4111111111111111.5").is_empty());
        // Groups that do not start with four digits.
        assert!(cards("41 11 11 11 11 11 11 11").is_empty());
    }
}
