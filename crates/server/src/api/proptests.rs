//! Property tests (issue 16, point 22) for the server's parsers of outside text: pipeline
//! declarations, chat templates (the importer's code) with callers' messages, OpenAI request
//! bodies, and the egress allowlist's URL check. Each must end cleanly (never a panic), a
//! template within its budgets, and no URL may leave for another host, port or path than an
//! allowlist entry names.
//!
//! 64 cases per property by default (seconds); `FACTORY_PROPTEST_CASES=10000` runs longer.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;
use serde::Serialize;

use crate::service::inference::wire::{ChatRequest, CompletionRequest};
use crate::service::inference::ChatMessage;

/// What one case may take, in a debug build on a shared core.
const CASE_TIME: Duration = Duration::from_secs(2);

fn mutations() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    vec((any::<usize>(), any::<u8>(), 0..4u8), 1..10)
}

// ---------------------------------------------------------------------------------------------
// Pipeline declarations

const WEBHOOKS: &[&str] = &["https://hooks.example.gov/", "http://127.0.0.1:9000/ml"];

fn webhooks() -> Vec<String> {
    WEBHOOKS.iter().map(|s| s.to_string()).collect()
}

const PIPELINE: &str = r#"
description = "retrain on news"
[[triggers]]
event = "drift.detected"
deployment = "bard"
[[triggers]]
event = "dataset.version.created"
dataset = "news"
[[triggers]]
cron = "30 2 * * 1"
[[steps]]
kind = "finetune"
base = "bard@production"
dataset = "news@latest"
register = "bard"
run = { train = { steps = 100 } }
[[steps]]
kind = "evaluate"
dataset = "news@latest"
against = "bard@production"
max_windows = 8
[[steps]]
kind = "gate"
condition = "candidate.perplexity <= production.perplexity * 1.02"
[[steps]]
kind = "canary"
deployment = "bard"
weight = 0.1
alpha = 0.05
metric = "thumbs_up"
[[steps]]
kind = "rollback"
deployment = "bard"
when = "failure"
[[steps]]
kind = "notify"
when = "always"
url = "https://hooks.example.gov/ml"
secret_env = "WEBHOOK_SECRET_OPS"
"#;

/// Every field of a declaration, and a stranger.
#[rustfmt::skip]
const PIPELINE_KEYS: &[&str] = &[
    "kind", "name", "when", "dataset", "base", "register", "run", "against", "max_windows", "seq_len",
    "condition", "deployment", "alias", "weight", "min_requests", "min_feedback", "max_duration_secs", "metric",
    "alpha", "url", "secret_env", "event", "cron", "description", "steps", "triggers", "other",
];

/// Values of every TOML type, good and bad for each field.
#[rustfmt::skip]
const PIPELINE_VALUES: &[&str] = &[
    "\"train\"", "\"finetune\"", "\"evaluate\"", "\"gate\"", "\"canary\"", "\"promote\"", "\"rollback\"",
    "\"notify\"", "\"success\"", "\"failure\"", "\"always\"", "\"drift.detected\"", "\"feedback.degraded\"",
    "\"dataset.version.created\"", "\"* * * * *\"", "\"61 * * * *\"", "\"*/0 * * * *\"", "\"0 0 31 2 *\"",
    "\"@yearly\"", "\"L W # ? *\"", "\"1-59/2,3 0-23 1-31 1-12 0-7\"", "\"candidate.x > 1\"", "\"a <=\"",
    "\"{{\"", "\"range(100000)|length > 0\"", "\"https://hooks.example.gov/x\"",
    "\"https://hooks.example.gov.evil.test/\"", "\"http://127.0.0.1:9000/ml/../admin\"",
    "\"WEBHOOK_SECRET_X\"", "\"AWS_SECRET\"", "\"d@1\"", "\"\"", "0", "1", "-1", "0.5", "1.5", "nan", "inf",
    "18446744073709551615", "true", "[]", "{}", "{ train = { steps = 1 } }", "[\"a\"]",
];

/// Lines of a declaration: its tables, its fields, values of every TOML type.
fn pipeline_text() -> impl Strategy<Value = String> {
    let key = prop::sample::select(PIPELINE_KEYS);
    let value = prop::sample::select(PIPELINE_VALUES);
    let line = prop_oneof![
        Just("[[steps]]".to_string()),
        Just("[[triggers]]".to_string()),
        Just("[steps]".to_string()),
        (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
    ];
    vec(line, 0..24).prop_map(|lines| lines.join("\n"))
}

fn check_pipeline(source: &str) -> Result<(), TestCaseError> {
    let started = Instant::now();
    match crate::service::pipelines::parse(source, &webhooks()) {
        Ok(spec) => {
            prop_assert!((1..=32).contains(&spec.steps.len()));
            for step in &spec.steps {
                if let Some(url) = &step.url {
                    prop_assert!(crate::egress::allowed_url(&webhooks(), url).is_some(), "{url}");
                }
            }
        }
        Err(message) => prop_assert!(!message.is_empty()),
    }
    prop_assert!(started.elapsed() < CASE_TIME, "took {:?}", started.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Chat templates

#[derive(Debug, Clone, Serialize)]
struct Message {
    role: String,
    content: String,
}

fn messages() -> impl Strategy<Value = Vec<Message>> {
    let role = prop_oneof![
        prop::sample::select(vec!["system", "user", "assistant", "tool", ""]).prop_map(str::to_string),
        vec(any::<char>(), 0..8).prop_map(|c| c.into_iter().collect()),
    ];
    let content = vec(any::<char>(), 0..48).prop_map(|c| c.into_iter().collect::<String>());
    vec((role, content).prop_map(|(role, content)| Message { role, content }), 0..6)
}

/// Counts a render may be given: loop lengths at and past `range`'s own cap, repetitions that
/// reach the output bound. Repetitions stay at or below 100 and never repeat a repetition (`x`
/// is set from the strings below, not from itself): the fuel counts instructions, not bytes,
/// so with larger or chained ones a loop's captured output outgrows memory, or its strings
/// take seconds per case (a 200,000-case run found `x = content * 1000` then `x = x * 1000`,
/// 40 MB an iteration, 4 s). That gap is kept in
/// `chat_templates_cannot_yet_exhaust_memory_or_time`.
#[rustfmt::skip]
const LOOP_COUNTS: &[&str] = &["0", "1", "3", "100", "100000", "100001", "-1", "9223372036854775807"];
const REPEATS: &[&str] = &["0", "1", "2", "100", "-1"];
#[rustfmt::skip]
const STRINGS: &[&str] = &["'ab'", "m.content", "messages[0].content", "eos_token", "'\\u00e9'"];

/// Pieces of template text: outputs, conditionals, calls, errors, stray delimiters.
#[rustfmt::skip]
const TEMPLATE_PIECES: &[&str] = &[
    "<|", "|>", "\n", "{{ m.role }}", "{{ m.content }}", "{{ messages[0].content }}", "{{ eos_token }}",
    "{{ bos_token }}", "{{ loop.index }}", "{{ i }}", "{{ x }}", "{{ messages|length }}",
    "{{ m.content|upper }}", "{{ m.content ~ m.content }}", "{{ f(1) }}", "{{ f(n + 1) }}",
    "{{ raise_exception('no') }}", "{{ messages[99].content }}", "{{ 1 / 0 }}", "{{ 2 ** 64 }}",
    "{% if add_generation_prompt %}<|assistant|>{% endif %}", "{%", "{{", "}}", "%}", "{% endfor %}",
    "{# note #}", "{% raw %}{{{% endraw %}",
];

/// Template text as a tree of Jinja pieces, so that most cases compile and run: loops over the
/// messages and over ranges, conditionals, macros (recursive ones too), `set`, and strings
/// repeated by integers, around stray pieces that do not compile.
fn template() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        prop::sample::select(TEMPLATE_PIECES).prop_map(str::to_string),
        (prop::sample::select(STRINGS), prop::sample::select(REPEATS))
            .prop_map(|(s, n)| format!("{{{{ {s} * {n} }}}}")),
        (prop::sample::select(STRINGS), prop::sample::select(REPEATS))
            .prop_map(|(s, n)| format!("{{% set x = {s} * {n} %}}")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let body = vec(inner, 0..6).prop_map(|parts| parts.concat());
        prop_oneof![
            body.clone().prop_map(|b| format!("{{% for m in messages %}}{b}{{% endfor %}}")),
            (prop::sample::select(LOOP_COUNTS), body.clone())
                .prop_map(|(n, b)| format!("{{% for i in range({n}) %}}{b}{{% endfor %}}")),
            (body.clone(), body.clone()).prop_map(|(a, b)| format!(
                "{{% if m is defined and m.role == 'user' %}}{a}{{% else %}}{b}{{% endif %}}"
            )),
            body.clone().prop_map(|b| format!("{{% macro f(n) %}}{b}{{% endmacro %}}{{{{ f(0) }}}}")),
            body.prop_map(|b| format!("{{% set y %}}{b}{{% endset %}}{{{{ y }}}}")),
        ]
    })
}

/// The property: within its time, and within its output bound when it renders.
fn check_render(template: &str, messages: &[Message]) -> Result<(), TestCaseError> {
    let text_bytes: usize = messages.iter().map(|m| m.role.len() + m.content.len()).sum();
    let started = Instant::now();
    let rendered = crate::chat_template::render(template, messages, None, text_bytes, "<s>", "</s>");
    prop_assert!(started.elapsed() < CASE_TIME, "took {:?}: {template}", started.elapsed());
    match rendered {
        Ok(text) => prop_assert!(text.len() <= text_bytes * 2 + 64 * 1024, "{} bytes", text.len()),
        Err(error) => prop_assert!(!error.0.is_empty()),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// OpenAI request bodies

const CHAT_BODY: &str = r#"{"model": "bard", "messages": [{"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi \u00e9"}], "max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
    "seed": 7, "stop": ["\n", "</s>"], "stream": true, "stream_options": {"include_usage": true}, "n": 1,
    "ignore_eos": false, "user": "u1", "metadata": {"a": [1, 2, {"b": null}]}}"#;
const COMPLETION_BODY: &str = r#"{"model": "bard", "prompt": ["Once", "upon"], "max_completion_tokens": 4,
    "stop": "x", "stream": false, "logit_bias": {"50256": -100}}"#;

/// Pieces of request bodies: the fields, strings and numbers at the edges.
#[rustfmt::skip]
const JSON_PIECES: &[&str] = &[
    "{", "}", "[", "]", ",", ":", " ", "\"model\"", "\"messages\"", "\"prompt\"", "\"role\"", "\"content\"",
    "\"stop\"", "\"stream\"", "\"n\"", "\"max_tokens\"", "\"temperature\"", "\"top_k\"", "\"seed\"",
    "\"stream_options\"", "\"include_usage\"", "\"bard\"", "\"\"", "\"\\ud800\"", "\"\\u0000\"", "0", "-1",
    "1e999", "18446744073709551616", "3.4e38", "true", "null",
];

fn json_fragment() -> impl Strategy<Value = &'static str> {
    prop::sample::select(JSON_PIECES)
}

/// Parses a body the ways the handlers do: straight from bytes, and through a `Value` first.
fn check_body(bytes: &[u8]) -> Result<(), TestCaseError> {
    let chat = serde_json::from_slice::<ChatRequest>(bytes);
    let _ = serde_json::from_slice::<CompletionRequest>(bytes);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let _ = serde_json::from_value::<CompletionRequest>(value.clone());
        let _ = serde_json::from_value::<ChatRequest>(value);
    }
    if let Ok(chat) = chat {
        let messages: Vec<ChatMessage> = chat.messages;
        let template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>";
        let text_bytes: usize = messages.iter().map(|m| m.role.len() + m.content.len()).sum();
        let rendered = crate::chat_template::render(template, &messages, None, text_bytes, "<s>", "</s>").unwrap();
        prop_assert!(rendered.len() <= text_bytes * 2 + 64 * 1024);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Egress

/// Allowlist entries by their parts (scheme, host, port, path), so that candidate URLs can be
/// built as near misses of them.
const ENTRIES: &[(&str, &str, &str, &str)] = &[
    ("http", "127.0.0.1", ":1890", ""),
    ("https", "partner.example.gov", "", "/v1"),
    ("https", "hooks.example.gov", "", "/"),
    ("http", "[::1]", ":8080", "/api/"),
    ("http", "10.0.0.1", "", "/a/b"),
];
/// An entry with credentials, which admits nothing.
const CREDENTIALED_ENTRY: &str = "https://user:pw@secret.example.gov/";

fn allowlist() -> Vec<String> {
    let mut entries: Vec<String> = ENTRIES.iter().map(|(s, h, p, path)| format!("{s}://{h}{p}{path}")).collect();
    entries.push(CREDENTIALED_ENTRY.to_string());
    entries
}

const SCHEMES: &[&str] = &["http", "https", "HTTP", "ftp", "javascript", "", "http:"];
const SEPARATORS: &[&str] = &["://", ":/", ":\\\\", ":///", ":", "//"];
#[rustfmt::skip]
const USERINFO: &[&str] = &["u@", "u:p@", "127.0.0.1:1890@", "@", "hooks.example.gov@", "partner.example.gov:443@"];
#[rustfmt::skip]
const HOSTS: &[&str] = &[
    "127.0.0.1", "127.1", "0x7f.0.0.1", "2130706433", "0177.0.0.1", "127.0.0.1.", "partner.example.gov",
    "PARTNER.example.gov", "partner.example.gov.", "partner.example.gov.evil.test", "evil.test", "hooks.example.gov",
    "hooks.example.gov%2f", "hooks.example.gov\\", "[::1]", "[::ffff:127.0.0.1]", "[0:0:0:0:0:0:0:1]", "10.0.0.1",
    "10.1", "\u{ff48}ooks.example.gov", "secret.example.gov", "",
];
const PORTS: &[&str] = &[":1890", ":18905", ":443", ":80", ":8080", ":0", ":65536", ":", ":01890"];
#[rustfmt::skip]
const PATHS: &[&str] = &[
    "", "/", "/x", "/..", "/../admin", "/%2e%2e/admin", "/..%2fadmin", "/%2E%2E%2Fadmin", "/..%5cadmin", "/.%2e/admin",
    "x", "0", "/./x", "//evil.test", "\\..\\admin", "?x=1", "#f", " /x", "\t/x", "/%00", "/%2f..%2f..%2fadmin",
    "%2f..", "/v1", "/api", "/a/b/../../c", "/%76%31", ";/x", "/..;/admin", "/%2e%2e;x/admin", "/.;/x", "/x;y",
];

/// URLs near the allowlist's entries, where checks go wrong: the same entry with another
/// scheme, user info, host notation or port, or a path that leaves it in some encoding; plus
/// URLs assembled from those parts and arbitrary text.
fn url_text() -> impl Strategy<Value = String> {
    let pick = |list: &'static [&'static str]| prop::sample::select(list);
    let near_miss = (
        prop::sample::select(ENTRIES),
        prop::option::weighted(0.2, pick(SCHEMES)),
        prop::option::weighted(0.1, pick(SEPARATORS)),
        prop::option::weighted(0.2, pick(USERINFO)),
        prop::option::weighted(0.2, pick(HOSTS)),
        prop::option::weighted(0.2, pick(PORTS)),
        vec(pick(PATHS), 0..3),
    )
        .prop_map(|((scheme, host, port, path), s, sep, user, h, p, more)| {
            format!(
                "{}{}{}{}{}{path}{}",
                s.unwrap_or(scheme),
                sep.unwrap_or("://"),
                user.unwrap_or(""),
                h.unwrap_or(host),
                p.unwrap_or(port),
                more.concat()
            )
        });
    let assembled = (pick(SCHEMES), pick(SEPARATORS), pick(USERINFO), pick(HOSTS), pick(PORTS), pick(PATHS))
        .prop_map(|(s, sep, u, h, p, path)| format!("{s}{sep}{u}{h}{p}{path}"));
    prop_oneof![
        6 => near_miss,
        2 => assembled,
        1 => vec(any::<char>(), 0..40).prop_map(|c| c.into_iter().collect()),
    ]
}

/// A path with its escapes decoded, backslashes as slashes, `;` parameters dropped and dot
/// segments resolved: what a lenient upstream (or a proxy in front of it) may route by.
fn routed_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[at], bytes.get(at + 1).copied().and_then(hex), bytes.get(at + 2).copied().and_then(hex)) {
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
    let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    format!("/{}", segments.join("/"))
}

fn within(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The property: an admitted URL is plain, is what a second parse of its text gives, and
/// matches an entry by scheme, host and port, with a path under the entry's, as sent and as
/// any upstream may read it.
fn check_url(allowlist: &[String], url: &str) -> Result<(), TestCaseError> {
    let Some(admitted) = crate::egress::allowed_url(allowlist, url) else { return Ok(()) };
    prop_assert!(admitted.username().is_empty() && admitted.password().is_none(), "{admitted}");
    prop_assert!(admitted.query().is_none() && admitted.fragment().is_none(), "{admitted}");
    prop_assert!(matches!(admitted.scheme(), "http" | "https"), "{admitted}");
    let sent = reqwest::Url::parse(admitted.as_str()).unwrap();
    prop_assert_eq!(&sent, &admitted, "the text sent parses to another URL");
    let matching = allowlist.iter().filter_map(|entry| reqwest::Url::parse(entry).ok()).find(|entry| {
        entry.username().is_empty()
            && entry.password().is_none()
            && entry.scheme() == sent.scheme()
            && entry.host() == sent.host()
            && entry.port_or_known_default() == sent.port_or_known_default()
            && within(entry.path(), sent.path())
            && within(entry.path(), &routed_path(sent.path()))
    });
    prop_assert!(matching.is_some(), "{url:?} was admitted as {admitted}, which no entry of {allowlist:?} covers");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: factory_testkit::proptest_cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_pipeline_text_parses_cleanly(text in vec(any::<char>(), 0..256)) {
        check_pipeline(&text.into_iter().collect::<String>())?;
    }

    #[test]
    fn pipeline_fields_parse_cleanly(text in pipeline_text()) {
        check_pipeline(&text)?;
    }

    #[test]
    fn mutated_pipelines_parse_cleanly(mutations in mutations()) {
        check_pipeline(&String::from_utf8_lossy(&factory_testkit::mutate(PIPELINE.as_bytes().to_vec(), &mutations)))?;
    }

    #[test]
    fn arbitrary_templates_end_within_budget(template in vec(any::<char>(), 0..128), messages in messages()) {
        check_render(&template.into_iter().collect::<String>(), &messages)?;
    }

    #[test]
    fn jinja_templates_end_within_budget(template in template(), messages in messages()) {
        check_render(&template, &messages)?;
    }

    #[test]
    fn arbitrary_bodies_parse_cleanly(bytes in vec(any::<u8>(), 0..512)) {
        check_body(&bytes)?;
    }

    #[test]
    fn json_bodies_parse_cleanly(parts in vec(json_fragment(), 0..48)) {
        check_body(parts.concat().as_bytes())?;
    }

    #[test]
    fn mutated_bodies_parse_cleanly(mutations in mutations(), chat in any::<bool>()) {
        let body = if chat { CHAT_BODY } else { COMPLETION_BODY };
        check_body(&factory_testkit::mutate(body.as_bytes().to_vec(), &mutations))?;
    }

    #[test]
    fn only_allowlisted_urls_leave(
        entries in prop::sample::subsequence(allowlist(), 0..=ENTRIES.len() + 1),
        url in url_text(),
    ) {
        check_url(&entries, &url)?;
    }
}

#[test]
fn the_samples_parse() {
    crate::service::pipelines::parse(PIPELINE, &webhooks()).unwrap();
    serde_json::from_str::<ChatRequest>(CHAT_BODY).unwrap();
    serde_json::from_str::<CompletionRequest>(COMPLETION_BODY).unwrap();
    assert!(crate::egress::allowed_url(&allowlist(), "https://partner.example.gov/v1/chat").is_some());
}

/// Templates that the sandbox does not yet stop: minijinja's fuel counts instructions, not the
/// bytes one instruction makes (a string repeated up to 100 MB, a concatenation, a filter's
/// width), and a macro's or `set` block's captured output is not the bounded writer. Each of
/// these aborts the process on memory or runs for minutes; the fix needs the render in a
/// process of its own with memory and CPU limits (or an engine that charges fuel by bytes).
#[test]
#[ignore = "known gap: aborts the test process (out of memory) until renders are isolated"]
fn chat_templates_cannot_yet_exhaust_memory_or_time() {
    let user = [Message { role: "user".into(), content: "Hi".into() }];
    for template in [
        "{% macro f() %}{% for i in range(100000) %}{{ 'a' * 1000000 }}{% endfor %}{% endmacro %}{{ f() }}",
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% macro f(s, n) %}{% if n < 30 %}{{ f(s ~ s, n + 1)|length }}{% endif %}{% endmacro %}{{ f('ab', 0) }}",
        "{{ 'x'|indent(100000000000) }}",
        "{% for i in range(100000) %}{% set x = 'a' * 100000000 %}{{ x|length }}{% endfor %}",
        "{% set y %}{% for i in range(100000) %}{% set x = messages[0].content * 1000 %}{% set x = x * 1000 %}\
         {% endfor %}{% endset %}{{ y }}",
    ] {
        let started = Instant::now();
        let rendered = crate::chat_template::render(template, &user, None, 4, "<s>", "</s>");
        assert!(rendered.is_err(), "{template}");
        assert!(started.elapsed() < CASE_TIME, "{template}: {:?}", started.elapsed());
    }
}
