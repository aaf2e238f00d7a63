//! What the factory's test suites share, and nothing the product runs.
//!
//! A test whose dependency is missing (PostgreSQL, moto, pyarrow, the `openai` package, torch,
//! all-MiniLM-L6-v2, the shared corpora) must not pass silently: libtest hides the output of a
//! passing test, so a bare `eprintln!` turned whole suites into quiet passes. [`missing`] fails
//! the test under CI (`CI=true`), where `.ci/run` installs everything; elsewhere it writes past
//! libtest's capture, so the skip shows in the terminal even when the test passes.

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
