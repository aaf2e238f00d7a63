//! Wall-clock helpers. Times are stored as Unix milliseconds (portable across SQLite and
//! PostgreSQL) and shown as RFC 3339 UTC.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub fn millis_to_rfc3339(millis: i64) -> String {
    let nanos = i128::from(millis) * 1_000_000;
    let formatted = ::time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&::time::format_description::well_known::Rfc3339).ok());
    formatted.unwrap_or_else(|| millis.to_string())
}

pub fn now_rfc3339() -> String {
    millis_to_rfc3339(now_millis())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_milliseconds_as_utc() {
        assert_eq!(super::millis_to_rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
