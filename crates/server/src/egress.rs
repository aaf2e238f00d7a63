//! What may leave the installation: outbound URLs (upstream variants, pipeline webhooks) are
//! checked against the operator's allowlist by their parsed parts, and the secrets sent with
//! them are only those the operator granted to the tenant that names them.

use std::collections::BTreeMap;

use reqwest::Url;

/// The URL a deployment or pipeline may send to, parsed, when some allowlist entry admits it:
/// same scheme, host and port, and a path under the entry's path on a segment boundary. A URL
/// with credentials, a query or a fragment is never admitted, and neither is an entry with
/// credentials, nor one whose path hides a separator or a dot segment in an escape or a `;`
/// parameter. The parsed form (dot segments resolved) is what gets sent, so what was checked
/// is what is requested.
pub fn allowed_url(allowlist: &[String], url: &str) -> Option<Url> {
    let candidate = parse_plain(url)?;
    if candidate.query().is_some() || candidate.fragment().is_some() || candidate.path_segments()?.any(hidden_step) {
        return None;
    }
    let admitted = allowlist.iter().filter_map(|entry| parse_plain(entry)).any(|entry| {
        entry.scheme() == candidate.scheme()
            && entry.host_str() == candidate.host_str()
            && entry.port_or_known_default() == candidate.port_or_known_default()
            && path_within(entry.path(), candidate.path())
    });
    admitted.then_some(candidate)
}

/// An http(s) URL with a host and no user name or password.
fn parse_plain(text: &str) -> Option<Url> {
    let url = Url::parse(text).ok()?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none();
    plain.then_some(url)
}

/// Whether a path segment becomes a separator or a dot segment once an upstream (or a proxy
/// before it) decodes its escapes or drops its `;` parameters, as many do: `..%2fadmin`,
/// `%2e%2e;x` and `..;` would climb out of the prefix the check saw.
fn hidden_step(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    let hex = |at: usize| bytes.get(at).and_then(|&b| (b as char).to_digit(16));
    while at < bytes.len() {
        match (bytes[at], hex(at + 1), hex(at + 2)) {
            (b'%', Some(high), Some(low)) => {
                decoded.push((high * 16 + low) as u8);
                at += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                at += 1;
            }
        }
    }
    let without_parameters = decoded.split(|&b| b == b';').next().unwrap_or_default();
    decoded.iter().any(|&b| b == b'/' || b == b'\\') || matches!(without_parameters, b"." | b"..")
}

/// Whether `path` is `prefix` or lies below it: `/v1` admits `/v1` and `/v1/chat`, not `/v1x`.
fn path_within(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Whether the operator granted the environment variable `variable` to `tenant`
/// (`[secrets] TENANT = ["UPSTREAM_KEY_...", "WEBHOOK_SECRET_..."]`). Nothing is granted by
/// default: a tenant can name only its own secrets, never another tenant's or the server's.
pub fn secret_granted(grants: &BTreeMap<String, Vec<String>>, tenant: &str, variable: &str) -> bool {
    grants.get(tenant).is_some_and(|granted| granted.iter().any(|g| g == variable))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(allowlist: &[&str], url: &str) -> bool {
        let allowlist: Vec<String> = allowlist.iter().map(|s| s.to_string()).collect();
        allowed_url(&allowlist, url).is_some()
    }

    #[test]
    fn urls_are_compared_by_scheme_host_port_and_path() {
        let list = ["http://127.0.0.1:1890"];
        assert!(allowed(&list, "http://127.0.0.1:1890/v1"));
        assert!(allowed(&list, "http://127.0.0.1:1890"));
        // The review's bypasses: a longer port, and credentials that move the real host.
        assert!(!allowed(&list, "http://127.0.0.1:18905/v1"));
        assert!(!allowed(&list, "http://127.0.0.1:1890@127.0.0.1:18905/v1"));
        assert!(!allowed(&list, "http://user:pw@127.0.0.1:1890/v1"));
        assert!(!allowed(&list, "https://127.0.0.1:1890/v1"), "another scheme");
        assert!(!allowed(&list, "http://127.0.0.2:1890/v1"), "another host");
        assert!(!allowed(&list, "http://127.0.0.1:1890/v1?x=1"), "a query");
        assert!(!allowed(&list, "ftp://127.0.0.1:1890/v1"));
        assert!(!allowed(&list, "not a url"));

        let list = ["https://partner.example.gov/v1"];
        assert!(allowed(&list, "https://partner.example.gov/v1"));
        assert!(allowed(&list, "https://partner.example.gov:443/v1/chat"), "the default port is the same port");
        assert!(allowed(&list, "https://PARTNER.example.gov/v1/"), "hosts compare case-insensitively");
        assert!(!allowed(&list, "https://partner.example.gov/v10"), "a path prefix ends at a segment");
        assert!(!allowed(&list, "https://partner.example.gov/v1/../admin"), "dot segments are resolved first");
        for hidden in ["/v1/..%2fadmin", "/v1/%2e%2e%5cadmin", "/v1/..;/admin", "/v1/%2e%2e;x/admin", "/v1/a%2f..%2f.."]
        {
            assert!(!allowed(&list, &format!("https://partner.example.gov{hidden}")), "{hidden}: decoded, it climbs");
        }
        assert!(allowed(&list, "https://partner.example.gov/v1/a%20b;v=1/c.d"), "other escapes and parameters pass");
        assert!(!allowed(&list, "https://partner.example.gov.evil.test/v1"));
        assert!(!allowed(&["https://u:p@partner.example.gov/"], "https://partner.example.gov/v1"));
        assert!(!allowed(&[], "https://partner.example.gov/v1"), "nothing is allowed by default");
    }

    #[test]
    fn secrets_are_granted_per_tenant() {
        let grants = BTreeMap::from([("acme".to_string(), vec!["UPSTREAM_KEY_PARTNER".to_string()])]);
        assert!(secret_granted(&grants, "acme", "UPSTREAM_KEY_PARTNER"));
        assert!(!secret_granted(&grants, "globex", "UPSTREAM_KEY_PARTNER"));
        assert!(!secret_granted(&grants, "acme", "UPSTREAM_KEY_OTHER"));
    }
}
