//! GGUF import (issue 18, point 1) through the real binary: files written by the `gguf` package
//! (llama.cpp's own writer, from PyPI) are streamed in with `factory model import-gguf`,
//! checked whole, and registered as signed versions N@1, N@2 with the declared residency and the
//! file's summary in their lineage; a truncated file, an architecture the factory does not run
//! and a template that does not compile are refused with a 422 that names the problem, and
//! register nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{call, cli, cli_env, tenant_with_keys, upload, Server};

/// Writes a tiny GGUF of `architecture` (with `template` as its chat template and `pre` as its
/// pre-tokenizer, if given) with `scripts/make_gguf.py`, or says why it cannot.
fn make_gguf(dir: &Path, architecture: &str, template: Option<&str>, pre: Option<&str>) -> Option<PathBuf> {
    let path = dir.join(format!("tiny-{architecture}-{}-{}.gguf", template.map_or(0, str::len), pre.unwrap_or("")));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/make_gguf.py");
    let default_template = "{% for m in messages %}{{ m.content }}{% endfor %}";
    let mut args = vec![script, path.to_str().unwrap(), architecture];
    if template.is_some() || pre.is_some() {
        args.push(template.unwrap_or(default_template));
    }
    args.extend(pre);
    let output = Command::new("python3").args(&args).output().ok()?;
    if !output.status.success() {
        factory_testkit::missing(&format!(
            "the gguf package (pip install gguf): GGUF import untested\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
        return None;
    }
    Some(path)
}

#[tokio::test(flavor = "multi_thread")]
async fn gguf_files_import_as_signed_versions_and_bad_ones_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let Some(llama) = make_gguf(dir.path(), "llama", None, None) else { return };
    let Some(gemma) = make_gguf(dir.path(), "gemma", None, None) else { return };
    let Some(broken_template) = make_gguf(dir.path(), "qwen2", Some("{% for message in messages %}"), None) else {
        return;
    };
    let Some(unknown_pre) = make_gguf(dir.path(), "qwen2", None, Some("no-such-pre")) else { return };
    let server = Server::start(&dir.path().join("factory"), &["--jurisdiction", "eu"], &[]);
    let keys = tenant_with_keys(&server, "acme", &["engineer"]).await;
    let key = keys[0].1.as_str();
    let env = cli_env(&server.url, key);

    let import = ["model", "import-gguf", llama.to_str().unwrap(), "--name", "tiny", "--jurisdiction", "eu"];
    for expected in [1, 2] {
        let (ok, stdout, stderr) = cli(&import, &env);
        assert!(ok, "{stdout}\n{stderr}");
        let version: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!((version["name"].as_str(), version["version"].as_i64()), (Some("tiny"), Some(expected)));
        assert_eq!(version["origin"], "imported");
    }
    let detail = call(&server.url, "GET", "/api/v1/models/tiny/versions/1", Some(key), None).await;
    assert_eq!(detail.status, 200, "{}", detail.text);
    let manifest = &detail.body["manifest"];
    let file = manifest["files"].as_array().unwrap().iter().find(|f| f["path"] == "model.gguf").expect("kept whole");
    assert_eq!(file["size"].as_u64(), Some(std::fs::metadata(&llama).unwrap().len()));
    assert_eq!(manifest["architecture"], "llama");
    assert_eq!(manifest["residency"]["jurisdiction"], "eu");
    assert_eq!(manifest["residency"]["derived_from"], "declared at import");
    let summary = &manifest["lineage"]["config"]["gguf"];
    assert_eq!((summary["version"].as_u64(), summary["tensors"].as_u64()), (Some(3), Some(20)));
    assert_eq!(
        (summary["tokenizer"]["model"].as_str(), summary["tokenizer"]["pre"].as_str()),
        (Some("gpt2"), Some("default"))
    );
    assert_eq!(
        (summary["tokenizer"]["vocab_size"].as_u64(), summary["tokenizer"]["eos"].as_u64()),
        (Some(258), Some(2))
    );
    assert_eq!(
        (summary["hyper"]["head_count"].as_u64(), summary["hyper"]["head_count_kv"].as_u64()),
        (Some(4), Some(2))
    );
    let types = &summary["tensor_types"];
    assert_eq!((types["q8_0"].as_u64(), types["f16"].as_u64(), types["f32"].as_u64()), (Some(13), Some(2), Some(5)));
    assert!(summary["chat_template"].as_str().unwrap().contains("messages"));
    // The version verifies on the client like any other: signature and every file's digest.
    let (ok, stdout, stderr) = cli(&["model", "verify", "tiny@2"], &env);
    assert!(ok && stdout.contains("model.gguf ok") && stdout.contains("tiny@2 verified"), "{stdout}\n{stderr}");

    // Refusals name what is wrong, and register nothing.
    let bytes = std::fs::read(&llama).unwrap();
    let path = "/api/v1/models/tiny/import-gguf?jurisdiction=eu";
    let truncated = upload(&server.url, key, path, bytes[..bytes.len() - 500].to_vec()).await;
    assert_eq!(truncated.status, 422, "{}", truncated.text);
    let message = truncated.body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("GGUF: tensor ") && message.contains("truncated"), "{message}");
    let unknown = upload(&server.url, key, path, std::fs::read(&gemma).unwrap()).await;
    assert_eq!(unknown.status, 422, "{}", unknown.text);
    assert!(unknown.body["error"]["message"].as_str().unwrap().contains("general.architecture: \"gemma\""));
    let garbage = upload(&server.url, key, path, b"not a model".to_vec()).await;
    assert_eq!(
        (garbage.status, garbage.body["error"]["message"].as_str()),
        (422, Some("GGUF: not a GGUF file (its first bytes are not GGUF)"))
    );
    // A chat template is code that runs on every chat call: one that does not compile is refused.
    let template = upload(&server.url, key, path, std::fs::read(&broken_template).unwrap()).await;
    assert_eq!((template.status, template.body["error"]["code"].as_str()), (422, Some("bad_chat_template")));
    // A byte-level vocabulary must make a tokenizer: an unknown pre-tokenizer is named.
    let pre = upload(&server.url, key, path, std::fs::read(&unknown_pre).unwrap()).await;
    assert_eq!(pre.status, 422, "{}", pre.text);
    assert!(
        pre.body["error"]["message"].as_str().unwrap().contains("tokenizer.ggml.pre: \"no-such-pre\""),
        "{}",
        pre.text
    );
    let versions = call(&server.url, "GET", "/api/v1/models/tiny", Some(key), None).await;
    assert_eq!(versions.body["versions"].as_array().map(Vec::len), Some(2), "{}", versions.text);

    // The declared jurisdiction must be one the tenant allows: refused before a byte is read.
    let (ok, _, stderr) =
        cli(&["model", "import-gguf", llama.to_str().unwrap(), "--name", "tiny", "--jurisdiction", "us"], &env);
    assert!(!ok && stderr.contains("403"), "{stderr}");
}
