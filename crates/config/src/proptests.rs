//! Property tests (issue 16, point 22): the configuration file and the `FACTORY_*` variables
//! are text from outside the program, so any of it must load into a `Config` or into errors
//! that each name the key (or the file and line) they concern; never a panic, and never a
//! number other than the one given.
//!
//! 64 cases per property by default (seconds); `FACTORY_PROPTEST_CASES=10000` runs longer.
#![allow(clippy::unwrap_used)]

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

/// Every key the loader reads, its tables, and keys it does not know (empty, dotted, stray).
#[rustfmt::skip]
const KEYS: &[&str] = &[
    "data_dir", "listen", "database_url", "jurisdiction", "name", "kinds", "request_body_limit_bytes",
    "request_timeout_secs", "max_in_flight", "max_in_flight_per_tenant", "max_transfers", "max_transfers_per_tenant",
    "min_transfer_bytes_per_sec", "transfer_grace_secs", "json_logs", "shutdown_grace_secs", "otlp_endpoint", "roles", "kind",
    "path", "bucket", "endpoint", "region", "access_key_id", "secret_access_key", "allow_http", "prefix",
    "orphan_grace_secs", "orphan_sweep_interval_secs", "origin", "checkpoint_interval_secs", "checkpoint_dir",
    "policy_files", "workers", "lease_secs", "max_attempts", "max_batch", "max_waiting", "prefill_chunk",
    "max_request_bytes", "adapter_cache_mb", "max_choices", "prefix_cache_mb", "kv_cache", "upstreams", "prompt_per_1k", "completion_per_1k", "transfer_timeout_secs",
    "max_columns", "max_decompressed_bytes", "max_buffered_bytes", "type", "better", "level", "interval_ms", "webhooks",
    "namespace", "file", "http_url", "trusted_keys", "acme", "server", "objects", "s3", "audit", "authz", "jobs",
    "serving", "prices", "datasets", "custom_pii", "feedback", "metrics", "drift", "pipelines", "secrets", "lineage",
    "registry", "sites", "batch", "max_file_mb", "max_requests", "concurrency", "\"\"", "\"a.b\"", "server.max_batch", "x",
];

/// The loader's tables and arrays of tables, and some it does not have.
#[rustfmt::skip]
const TABLES: &[&str] = &[
    "[server]", "[objects]", "[objects.s3]", "[audit]", "[authz]", "[jobs]", "[serving]", "[serving.prices.m]",
    "[serving.prices]", "[datasets]", "[datasets.custom_pii]", "[feedback.metrics.thumbs]", "[feedback]", "[drift]",
    "[pipelines]", "[secrets]", "[batch]", "[lineage]", "[registry]", "[[sites]]", "[[server]]", "[\"\"]", "[x.y.z]",
];

/// Values of every TOML type, valid and invalid for each key, integers at the edges.
#[rustfmt::skip]
const VALUES: &[&str] = &[
    "\"\"", "\"local\"", "\"s3\"", "\"eu\"", "\"EU\"", "\"f16\"", "\"127.0.0.1:8080\"", "\"[::1]:0\"",
    "\"not an address\"", "\"sqlite://x.db\"", "\"postgres://h/db\"", "\"https://hooks.example.gov/\"",
    "\"name+1+AAAA\"", "\"UPSTREAM_KEY_A\"", "\"has space\"", "0", "1", "-1", "3", "4294967296", "4294967299",
    "9223372036854775807", "-9223372036854775808", "0.5", "-0.0", "nan", "inf", "true", "false", "[]",
    "[\"storage\", \"gpu\"]", "[\"compute\"]", "[1, \"a\"]", "[\"UPSTREAM_KEY_A\", \"WEBHOOK_SECRET_B\"]", "{}",
    "{ prompt_per_1k = 1, completion_per_1k = 2 }", "{ type = \"float\" }", "{ prompt_per_1k = -1 }",
    "1979-05-27T07:32:00Z", "\"\\u00e9\"", "'literal'", "\"\"\"multi\nline\"\"\"",
];

/// Environment variable names the loader reads, and some that stretch its path splitting.
fn env_name() -> impl Strategy<Value = String> {
    prop_oneof![
        (prop::sample::select(KEYS), prop::option::of(prop::sample::select(KEYS))).prop_map(|(a, b)| match b {
            Some(b) => format!("FACTORY_{}__{}", a.to_uppercase(), b.to_uppercase()),
            None => format!("FACTORY_{}", a.to_uppercase()),
        }),
        prop::sample::select(vec![
            "FACTORY_",
            "FACTORY___",
            "FACTORY_SERVER__",
            "FACTORY___X",
            "FACTORY_SERVER__MAX_BATCH__X",
            "FACTORY_URL",
            "FACTORY_TOKEN",
            "FACTORYX",
            "PATH",
        ])
        .prop_map(str::to_string),
    ]
}

fn env_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(VALUES).prop_map(str::to_string),
        vec(any::<char>(), 0..12).prop_map(|chars| chars.into_iter().collect()),
    ]
}

/// Lines of TOML made of the loader's own tables, keys and values of every type.
fn toml_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        prop::sample::select(TABLES).prop_map(str::to_string),
        (prop::sample::select(KEYS), prop::sample::select(VALUES)).prop_map(|(k, v)| format!("{k} = {v}")),
    ];
    vec(line, 0..24).prop_map(|lines| lines.join("\n"))
}

/// The property: a `Config`, or errors that each name something the input gave: the file
/// (and line), an environment variable, or a key whose first part the text or a variable
/// holds.
fn load_checked(text: &str, env: &[(String, String)]) -> Result<Result<Config, ConfigErrors>, TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("factory.toml");
    std::fs::write(&path, text).unwrap();
    let file = path.display().to_string();
    let result = Config::load(Some(&path), env.iter().cloned(), &FlagOverrides::default());
    if let Err(errors) = &result {
        prop_assert!(!errors.0.is_empty(), "an error without a problem");
        for error in &errors.0 {
            prop_assert!(!error.message.is_empty(), "{error:?}");
            let given = |part: &str| {
                text.contains(part) || env.iter().any(|(name, _)| name.to_ascii_lowercase().contains(part))
            };
            let named = error.key.starts_with(&file)
                || error.key.starts_with("environment variable FACTORY_")
                || match error.key.strip_prefix('"') {
                    // A quoted key (`""`, `"a.b"`): its text up to the first escape.
                    Some(quoted) => quoted.split(['"', '\\']).next().is_some_and(given),
                    None => error.key.split(['.', '[']).next().is_some_and(|first| !first.is_empty() && given(first)),
                };
            prop_assert!(named, "{:?} names no key of the input: {error}\n{text}\n{env:?}", error.key);
        }
    }
    Ok(result)
}

/// The property, when the outcome itself is not looked at.
fn check(text: &str, env: &[(String, String)]) -> Result<(), TestCaseError> {
    load_checked(text, env).map(drop)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: factory_testkit::proptest_cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_loads_or_names_its_keys(text in vec(any::<char>(), 0..256)) {
        check(&text.into_iter().collect::<String>(), &[])?;
    }

    #[test]
    fn toml_of_the_loaders_own_keys_loads_or_names_them(
        text in toml_text(),
        env in vec((env_name(), env_value()), 0..3),
    ) {
        check(&text, &env)?;
    }

    #[test]
    fn mutated_examples_load_or_name_their_keys(mutations in vec((any::<usize>(), any::<u8>(), 0..4u8), 1..8)) {
        let text = factory_testkit::mutate(Config::example_toml().as_bytes().to_vec(), &mutations);
        check(&String::from_utf8_lossy(&text), &[])?;
    }

    /// Integers are kept as given or refused naming their key; never narrowed to another.
    #[test]
    fn integers_are_kept_or_refused(
        key in 0..6usize,
        value in prop_oneof![any::<i64>(), 0..10i64, Just(1 << 32), Just((1 << 32) + 3), Just(i64::MAX)],
    ) {
        const KEYS: [(&str, &str); 6] = [
            ("jobs", "max_attempts"), ("jobs", "workers"), ("jobs", "lease_secs"), ("serving", "max_batch"),
            ("datasets", "max_columns"), ("server", "request_timeout_secs"),
        ];
        let (table, name) = KEYS[key];
        match load_checked(&format!("[{table}]\n{name} = {value}\n"), &[])? {
            Ok(config) => {
                let kept = match key {
                    0 => u64::from(config.jobs.max_attempts),
                    1 => config.jobs.workers as u64,
                    2 => config.jobs.lease.as_secs(),
                    3 => config.serving.max_batch as u64,
                    4 => config.datasets.max_columns as u64,
                    _ => config.server.request_timeout.as_secs(),
                };
                prop_assert_eq!(i128::from(kept), i128::from(value), "{}.{}", table, name);
            }
            Err(errors) => {
                let key = format!("{table}.{name}");
                prop_assert!(errors.0.iter().any(|e| e.key == key), "{errors}");
            }
        }
    }
}

/// What the properties found, pinned: a narrowed integer, and errors that named no key.
#[test]
fn the_cases_found_stay_fixed() {
    let load = |text: &str, env: &[(&str, &str)]| {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        load_checked(text, &env).unwrap()
    };
    let errors = load("[jobs]\nmax_attempts = 4294967296\n", &[]).unwrap_err();
    assert_eq!(errors.0[0].key, "jobs.max_attempts", "{errors}");
    let errors = load("", &[("FACTORY_", "1"), ("FACTORY_SERVER__", "1")]).unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["environment variable FACTORY_", "environment variable FACTORY_SERVER__"], "{errors}");
    let errors = load("\"\" = 1\n\"a.b\" = 2\n[server]\n\"\" = 3\n", &[]).unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["server.\"\"", "\"\"", "\"a.b\""], "{errors}");
}
