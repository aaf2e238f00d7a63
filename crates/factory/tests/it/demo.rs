//! `factory demo --quick`: the whole loop through the public API, on a fresh data directory,
//! ending with `factory audit verify`. The full-size demo is the same code with bigger numbers.

use std::process::Command;

use crate::support::factory_binary;

#[test]
fn the_demo_closes_the_loop_and_the_audit_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("demo");
    let corpora = std::env::var("FACTORY_SHARED_DATA")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data").to_string());
    let output = Command::new(factory_binary())
        .args(["demo", "--quick", "--corpora", &corpora, "--data-dir"])
        .arg(&data_dir)
        .env_remove("FACTORY_URL")
        .env_remove("FACTORY_API_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let log = std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}\nserver log tail:\n{}",
        String::from_utf8_lossy(&output.stderr),
        &log[log.len().saturating_sub(4000)..]
    );
    println!("{stdout}");
    for expected in [
        "shift to Twain: drift detected",
        "pipeline retrain started",
        "step finetune",
        "step evaluate",
        "step gate",
        "step canary",
        "received, HMAC verified",
        "the audit log verifies",
    ] {
        assert!(stdout.contains(expected), "the report lacks {expected:?}:\n{stdout}");
    }
    // A second demo in the same directory is refused: it needs a fresh one.
    let again = Command::new(factory_binary()).args(["demo", "--quick", "--data-dir"]).arg(&data_dir).output().unwrap();
    assert!(!again.status.success());
}
