//! What the factory's test suites share, and nothing the product runs.
//!
//! A test whose dependency is missing (PostgreSQL, moto, pyarrow, the `openai` package, torch,
//! all-MiniLM-L6-v2, the shared corpora) must not pass silently: libtest hides the output of a
//! passing test, so a bare `eprintln!` turned whole suites into quiet passes. [`missing`] fails
//! the test under CI (`CI=true`), where `.ci/run` installs everything; elsewhere it writes past
//! libtest's capture, so the skip shows in the terminal even when the test passes.
//!
//! [`modules::check`] reads a crate's module import graph, so that a unit test can hold the
//! crate to its layers.

pub mod modules;

use std::io::Write;

/// Reports that `what` is missing, so the calling test checks less than it says. Panics when
/// `CI` is set (to anything but `false` or `0`); returns otherwise, after saying so loudly.
pub fn missing(what: &str) {
    let in_ci = std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false" && value != "0");
    if in_ci {
        panic!("{what} is missing, and CI must run every test (install it in .ci/run)");
    }
    // Straight to the process's stderr: libtest captures only the print macros.
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {what} ***\n");
}

/// Cases each property test runs: 64 by default (seconds in all), `FACTORY_PROPTEST_CASES` for
/// longer runs (`bench/fuzz.sh`).
pub fn proptest_cases() -> u32 {
    std::env::var("FACTORY_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

/// Flips, overwrites, inserts or deletes bytes of `bytes` at the given positions (modulo its
/// length): `(position, byte, kind)` with kind 0 flip, 1 overwrite, 2 insert, else delete. The
/// mutations property tests apply to valid inputs to reach the parsers' edge cases.
pub fn mutate(mut bytes: Vec<u8>, mutations: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(position, byte, kind) in mutations {
        let at = if bytes.is_empty() { 0 } else { position % bytes.len() };
        match kind {
            0 if !bytes.is_empty() => bytes[at] ^= byte.max(1),
            1 if !bytes.is_empty() => bytes[at] = byte,
            2 => bytes.insert(at, byte),
            _ if !bytes.is_empty() => {
                bytes.remove(at);
            }
            _ => bytes.push(byte),
        }
    }
    bytes
}
