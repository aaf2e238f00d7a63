//! Telephone numbers.
//!
//! Three shapes are recognised, each with enough structure that plain years, amounts, dates,
//! times and identifiers do not pass:
//!
//! - International (ITU-T E.164): `+`, a country code starting 1-9, then digit groups separated
//!   by single spaces, dashes or dots, with an optional parenthesised group ("+44 (0)20 ...");
//!   8 to 15 digits in all (E.164 allows at most 15; real numbers have at least 8).
//! - North American (NANP): `(NPA) NXX-XXXX` or `NPA-NXX-XXXX` / `NPA.NXX.XXXX`. The area code
//!   starts with 2-9 as the NANP requires; the bare form also needs a consistent separator.
//! - National with a trunk prefix (most of Europe): `0`, then 1-9, an area-code group of 2-5
//!   digits, then groups of 2-8 digits separated by single spaces, dashes, slashes or dots;
//!   9 to 13 digits in all, 10 when there are only two groups ("030 1234567", "02 123 45 67",
//!   "01 23 45 67 89", "020 7946 0958", but not the ZIP+4 code "02110-1301"). A separator is
//!   required, so a bare run of digits (an identifier) is not a number; the separators after
//!   the first must all be the same, which rules out "05-01-2024 12:30" and "01/02/2024 10".

use crate::scan::{byte_at, continues_number, digit_run_end, ends_number, is_digit_at};

const E164_MIN_DIGITS: usize = 8;
const E164_MAX_DIGITS: usize = 15;

/// The end of the E.164 number whose `+` is at `plus`.
pub(crate) fn e164_at(b: &[u8], plus: usize) -> Option<usize> {
    if !matches!(byte_at(b, plus + 1), b'1'..=b'9') {
        return None;
    }
    let mut pos = plus + 1;
    let mut digits = 0;
    loop {
        if byte_at(b, pos) == b'(' {
            // A parenthesised group: an optional trunk prefix "(0)" or an area code "(415)".
            let run_end = digit_run_end(b, pos + 1);
            let len = run_end - (pos + 1);
            if !(1..=4).contains(&len) || byte_at(b, run_end) != b')' {
                return None;
            }
            digits += len;
            pos = run_end + 1;
        } else {
            let run_end = digit_run_end(b, pos);
            digits += run_end - pos;
            pos = run_end;
        }
        if digits > E164_MAX_DIGITS {
            return None;
        }
        let c = byte_at(b, pos);
        let next = byte_at(b, pos + 1);
        if c.is_ascii_digit() || c == b'(' {
            // Right after a parenthesised group, or a group glued to "(0)": no separator.
            continue;
        }
        if matches!(c, b' ' | b'-' | b'.') && (next.is_ascii_digit() || next == b'(') {
            pos += 1;
            continue;
        }
        break;
    }
    (digits >= E164_MIN_DIGITS && ends_number(b, pos)).then_some(pos)
}

/// The end of the NANP number whose area code opens with the `(` at `open`: "(555) 123-4567",
/// "(555)123-4567", "(555) 1234567".
pub(crate) fn area_code_in_parens_at(b: &[u8], open: usize) -> Option<usize> {
    let area = open + 1;
    if !matches!(b[area], b'2'..=b'9') || digit_run_end(b, area) != area + 3 {
        return None;
    }
    if byte_at(b, area + 3) != b')' {
        return None;
    }
    let mut pos = area + 4;
    if matches!(byte_at(b, pos), b' ' | b'-') {
        pos += 1;
    }
    let end = subscriber_end(b, pos, b"-. ")?;
    ends_number(b, end).then_some(end)
}

/// `NXX` `sep`? `XXXX` starting at `pos`, where `sep` is one of `separators`; or the seven
/// digits run together.
fn subscriber_end(b: &[u8], pos: usize, separators: &[u8]) -> Option<usize> {
    let run_end = digit_run_end(b, pos);
    match run_end - pos {
        7 => Some(run_end),
        3 if separators.contains(&byte_at(b, run_end)) && digit_run_end(b, run_end + 1) == run_end + 5 => {
            Some(run_end + 5)
        }
        _ => None,
    }
}

/// The end of the national number (NANP without parentheses, or trunk-prefixed) starting at the
/// digit `i`.
pub(crate) fn national_at(b: &[u8], i: usize) -> Option<usize> {
    if b[i] == b'0' {
        trunk_prefixed_at(b, i)
    } else {
        nanp_at(b, i)
    }
}

/// `NPA-NXX-XXXX` or `NPA.NXX.XXXX`.
fn nanp_at(b: &[u8], i: usize) -> Option<usize> {
    if !matches!(b[i], b'2'..=b'9') || digit_run_end(b, i) != i + 3 {
        return None;
    }
    let sep = byte_at(b, i + 3);
    if !matches!(sep, b'-' | b'.') || digit_run_end(b, i + 4) != i + 7 {
        return None;
    }
    if byte_at(b, i + 7) != sep || digit_run_end(b, i + 8) != i + 12 {
        return None;
    }
    let end = i + 12;
    let longer = byte_at(b, end) == sep && is_digit_at(b, end + 1);
    (!longer && ends_number(b, end)).then_some(end)
}

fn trunk_prefixed_at(b: &[u8], i: usize) -> Option<usize> {
    if !matches!(byte_at(b, i + 1), b'1'..=b'9') || continues_number(b, i, b" -/.") {
        return None;
    }
    let first = digit_run_end(b, i) - i;
    if !(2..=5).contains(&first) {
        return None;
    }
    let mut pos = i + first;
    let mut digits = first;
    let mut groups = 1;
    let mut first_sep = 0u8;
    let mut rest_sep = 0u8;
    loop {
        let c = byte_at(b, pos);
        if !matches!(c, b' ' | b'-' | b'/' | b'.') || !is_digit_at(b, pos + 1) {
            break;
        }
        if groups == 1 {
            first_sep = c;
        } else if rest_sep == 0 {
            rest_sep = c;
        } else if rest_sep != c {
            return None;
        }
        // Dots separate the whole number or nothing: "01.23.45.67.89", not "030.1234 567".
        if (c == b'.') != (first_sep == b'.') {
            return None;
        }
        let run_end = digit_run_end(b, pos + 1);
        let len = run_end - (pos + 1);
        if !(2..=8).contains(&len) {
            return None;
        }
        digits += len;
        groups += 1;
        pos = run_end;
        if digits > 13 {
            return None;
        }
    }
    // Two groups need ten digits: "030 1234567", but not the ZIP+4 code "02110-1301".
    let enough = digits >= 10 || (groups >= 3 && digits >= 9);
    (enough && ends_number(b, pos)).then_some(pos)
}

#[cfg(test)]
mod tests {
    //! The brief's formats and the number-shaped text that must not be taken for a phone.

    use crate::{Detector, PiiKind};

    fn phones(text: &str) -> Vec<&str> {
        let detector = Detector::new(&[]).unwrap_or_else(|e| panic!("{e}"));
        detector.find(text).into_iter().filter(|s| s.kind == PiiKind::Phone).map(|s| &text[s.start..s.end]).collect()
    }

    #[test]
    fn finds_e164_numbers() {
        for number in [
            "+49 30 1234567",
            "+33 1 23 45 67 89",
            "+14155550123",
            "+1 (415) 555-0123",
            "+44 (0)20 7946 0958",
            "+44 20.7946.0958",
            "+353-1-234-5678",
        ] {
            let text = format!("call {number}, please");
            assert_eq!(phones(&text), [number], "{text}");
        }
    }

    #[test]
    fn finds_national_numbers() {
        for number in [
            "(555) 123-4567",
            "(212)555-0199",
            "(212) 5550199",
            "212-555-0199",
            "212.555.0199",
            "030 1234567",
            "030/1234567",
            "01 23 45 67 89",
            "01.23.45.67.89",
            "020 7946 0958",
            "0151 12345678",
            "030-123 45 67",
            "02 123 45 67",
        ] {
            let text = format!("Tel. {number}\n");
            assert_eq!(phones(&text), [number], "{text}");
        }
    }

    #[test]
    fn rejects_years_amounts_ids_dates_and_times() {
        for text in [
            "in 1999 and 2024",
            "EUR 1234.56 and 1,234,567.89",
            "order 0301234567",
            "id 123456789012",
            "on 05-01-2024 12:30",
            "on 01/02/2024 10:15",
            "on 01.02.2024",
            "at 2024-01-05T12:30:45Z",
            "+15.5% and +1234",
            "3+49 30 1234567",
            "555-123-4567-89",
            "(123) 456-7890",
            "(555) 123-45678",
            "0 30 1234567",
            "Boston, MA 02110-1301, USA",
        ] {
            assert!(phones(text).is_empty(), "{text}: {:?}", phones(text));
        }
    }
}
