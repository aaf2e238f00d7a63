//! GGUF import (issue 18, point 1) through the real binary: files written by the `gguf` package
//! (llama.cpp's own writer, from PyPI) are streamed in with `factory model import-gguf`,
//! checked whole, and registered as signed versions N@1, N@2 with the declared residency and the
//! file's summary in their lineage; a truncated file, an architecture the factory does not run
//! and a template that does not compile are refused with a 422 that names the problem, and
//! register nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{call, cli, cli_env, resident_mib, tenant_with_keys, upload, Server};

/// Writes a tiny GGUF of `architecture` (with `template` as its chat template and `pre` as its
/// pre-tokenizer, if given) with `scripts/make_gguf.py`, or says why it cannot.
fn make_gguf(dir: &Path, architecture: &str, template: Option<&str>, pre: Option<&str>) -> Option<PathBuf> {
    make_gguf_ending(dir, architecture, template, pre, false)
}

/// As [`make_gguf`]; with `ends_at_once`, a model whose greedy answer is its end-of-turn token.
fn make_gguf_ending(
    dir: &Path,
    architecture: &str,
    template: Option<&str>,
    pre: Option<&str>,
    ends_at_once: bool,
) -> Option<PathBuf> {
    let path = dir.join(format!(
        "tiny-{architecture}-{}-{}-{ends_at_once}.gguf",
        template.map_or(0, str::len),
        pre.unwrap_or("")
    ));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/make_gguf.py");
    let default_template = "{% for m in messages %}{{ m.content }}{% endfor %}";
    let mut args = vec![script, path.to_str().unwrap(), architecture];
    if template.is_some() || pre.is_some() || ends_at_once {
        args.push(template.unwrap_or(default_template));
        args.push(pre.unwrap_or("default"));
    }
    if ends_at_once {
        args.push("ends-at-once");
    }
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

/// Point 2 and 5 of issue 18 through the real binary: an imported GGUF version deploys and
/// answers OpenAI chat calls from its quantized blocks, rendered with the file's own chat
/// template, streamed as UTF-8 deltas; it stops at the end-of-turn token the file declares.
#[tokio::test(flavor = "multi_thread")]
async fn gguf_versions_serve_chat_from_their_blocks_and_stop_at_their_end_of_turn() {
    let dir = tempfile::tempdir().unwrap();
    let template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}{{ eos_token }}<|assistant|>";
    let Some(talker) = make_gguf(dir.path(), "llama", Some(template), None) else { return };
    let Some(quiet) = make_gguf_ending(dir.path(), "llama", Some(template), None, true) else { return };
    let server = Server::start(&dir.path().join("factory"), &["--jurisdiction", "eu"], &[]);
    let keys = tenant_with_keys(&server, "acme", &["engineer", "app"]).await;
    let (engineer, app) = (keys[0].1.as_str(), keys[1].1.as_str());
    let env = cli_env(&server.url, engineer);
    for (file, name) in [(&talker, "talker"), (&quiet, "quiet")] {
        let import = ["model", "import-gguf", file.to_str().unwrap(), "--name", name, "--jurisdiction", "eu"];
        let (ok, stdout, stderr) = cli(&import, &env);
        assert!(ok, "{stdout}\n{stderr}");
        let variant = format!("{name}@1");
        let (ok, stdout, stderr) = cli(&["deploy", "create", name, "--variant", &variant], &env);
        assert!(ok, "{stdout}\n{stderr}");
    }
    let resident_before = resident_mib(server.pid());

    let chat = |model: &str, stream: bool| {
        serde_json::json!({
            "model": model, "stream": stream, "temperature": 0, "max_tokens": 6,
            "messages": [{"role": "user", "content": "abcd abcd"}],
        })
    };
    let answer = call(&server.url, "POST", "/v1/chat/completions", Some(app), Some(chat("talker", false))).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.body["choices"][0]["finish_reason"], "length", "{}", answer.text);
    assert_eq!(answer.body["usage"]["completion_tokens"], 6);
    // The file's template was rendered: `<|user|>abcd abcd</s>?<|assistant|>` is more tokens
    // than the message alone (the vocabulary merges "ab" and "cd").
    let prompt_tokens = answer.body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 6, "{}", answer.text);
    let whole = answer.body["choices"][0]["message"]["content"].as_str().unwrap().to_string();

    // Streamed, the same greedy answer arrives as deltas, each valid UTF-8 on its own.
    let streamed = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .bearer_auth(app)
        .json(&chat("talker", true))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    let body = streamed.bytes().await.unwrap();
    let mut joined = String::new();
    for line in body.split(|&b| b == b'\n').filter(|line| line.starts_with(b"data: {")) {
        let event: serde_json::Value = serde_json::from_slice(&line[6..]).expect("each event is UTF-8 JSON");
        joined.push_str(event["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert_eq!(joined, whole, "streamed and whole greedy answers agree");

    // The quiet model's greedy first token is its declared end of turn: it stops there.
    let ended = call(&server.url, "POST", "/v1/chat/completions", Some(app), Some(chat("quiet", false))).await;
    assert_eq!(ended.status, 200, "{}", ended.text);
    assert_eq!(ended.body["choices"][0]["finish_reason"], "stop", "{}", ended.text);
    assert_eq!(ended.body["choices"][0]["message"]["content"], "", "{}", ended.text);

    // Two tiny models loaded: a few MiB, not a widened copy per request.
    let grown = resident_mib(server.pid()).saturating_sub(resident_before);
    assert!(grown < 64, "serving two tiny GGUF models grew the server by {grown} MiB");
}

/// Whether llama-cpp-python is here, and a serving factory whose trained `bard@1` is quantized
/// to Q8_0 as `bard@2` (the CLI's answer).
async fn quantized_bard() -> (bool, crate::support::ServingFactory, String) {
    let python_has_llama_cpp =
        Command::new("python3").args(["-c", "import llama_cpp"]).output().is_ok_and(|output| output.status.success());
    let factory = crate::support::ServingFactory::start(&[], 1).await;
    let (ok, stdout, stderr) =
        cli(&["model", "quantize", "bard@1", "--type", "q8_0"], &cli_env(&factory.url, &factory.engineer));
    assert!(ok, "{stdout}\n{stderr}");
    (python_has_llama_cpp, factory, stdout)
}

/// Point 6 (and 9) through the real binary: a trained version quantizes into a new signed
/// version whose lineage names its source and whose residency is the source's; exported as
/// GGUF it loads in llama.cpp (llama-cpp-python) and answers a greedy completion with the
/// text the factory's own engine answers.
#[tokio::test(flavor = "multi_thread")]
async fn trained_versions_quantize_and_export_as_gguf_that_llama_cpp_answers_alike() {
    let (python_has_llama_cpp, factory, stdout) = quantized_bard().await;
    let (url, engineer, app) = (factory.url.as_str(), factory.engineer.as_str(), factory.app.as_str());
    let env = cli_env(url, engineer);
    let quantized: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((quantized["version"].as_i64(), quantized["origin"].as_str()), (Some(2), Some("quantized")));
    let detail = call(url, "GET", "/api/v1/models/bard/versions/2", Some(engineer), None).await;
    let manifest = &detail.body["manifest"];
    assert_eq!(manifest["lineage"]["base_model"], "bard@1");
    assert_eq!(manifest["lineage"]["datasets"][0]["name"], "plays", "the source's training data stays in the lineage");
    assert_eq!(manifest["residency"]["derived_from"], "quantized from bard@1");
    let source = call(url, "GET", "/api/v1/models/bard/versions/1", Some(engineer), None).await;
    assert_eq!(manifest["residency"]["jurisdiction"], source.body["manifest"]["residency"]["jurisdiction"]);
    assert_eq!(manifest["lineage"]["config"]["gguf"]["tensor_types"]["q8_0"].as_u64().map(|n| n > 0), Some(true));
    let (ok, stdout, stderr) = cli(&["model", "verify", "bard@2"], &env);
    assert!(ok && stdout.contains("bard@2 verified"), "{stdout}\n{stderr}");
    // A type the factory does not write is named.
    let (ok, _, stderr) = cli(&["model", "quantize", "bard@1", "--type", "q3_k"], &env);
    assert!(!ok && stderr.contains("q3_k"), "{stderr}");

    // The quantized version serves.
    let (ok, stdout, stderr) = cli(&["deploy", "create", "small", "--variant", "bard@2"], &env);
    assert!(ok, "{stdout}\n{stderr}");
    let body =
        |model: &str| serde_json::json!({ "model": model, "prompt": "ROMEO:", "max_tokens": 12, "temperature": 0 });
    let answer = call(url, "POST", "/v1/completions", Some(app), Some(body("small"))).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.body["usage"]["completion_tokens"].as_u64().map(|n| n > 0), Some(true));

    // Exported as one GGUF file, audited; llama.cpp loads it and completes as we do.
    let out = factory.dir.path().join("bard-1.gguf");
    let export = ["model", "export", "bard@1", "--format", "gguf", "--out", out.to_str().unwrap()];
    let (ok, _, stderr) = cli(&export, &env);
    assert!(!ok && stderr.contains("--destination"), "a GGUF export names where it goes: {stderr}");
    // Residency follows the weights out: an eu model does not go to us, and the refusal is audited.
    let (ok, _, stderr) = cli(&[&export[..], &["--destination", "us"]].concat(), &env);
    assert!(!ok && stderr.contains("403"), "{stderr}");
    let (ok, stdout, stderr) = cli(&[&export[..], &["--destination", "eu"]].concat(), &env);
    assert!(ok && stdout.contains("as GGUF"), "{stdout}\n{stderr}");
    assert_eq!(&std::fs::read(&out).unwrap()[..4], b"GGUF");
    let admin = factory.server.admin_key.as_str();
    let audited = call(url, "GET", "/api/v1/audit/records?limit=1000", Some(admin), None).await;
    assert!(audited.text.contains(r#""format":"gguf""#), "the export is audited: {}", audited.text);
    let refused = audited.body["records"].as_array().unwrap().iter().any(|r| {
        r["record"]["action"] == "model.export"
            && r["record"]["decision"] == "deny"
            && r["record"]["policies"].as_array().unwrap().iter().any(|p| p == "model-export-residency")
    });
    assert!(refused, "the refused export is in the audit log");
    if !python_has_llama_cpp {
        factory_testkit::missing("llama-cpp-python (pip install llama-cpp-python): exported GGUF not run by llama.cpp");
        return;
    }
    let ours = call(url, "POST", "/v1/completions", Some(app), Some(body("chat"))).await;
    assert_eq!(ours.status, 200, "{}", ours.text);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/llama_cpp_complete.py");
    let output = Command::new("python3").args([script, out.to_str().unwrap(), "ROMEO:", "12"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let theirs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        theirs["text"].as_str(),
        ours.body["choices"][0]["text"].as_str(),
        "llama.cpp's greedy completion of the exported file, prompt tokenized as {}",
        theirs["prompt_tokens"]
    );
}

/// Point 4 (and 5) through the real binary: a Hugging Face checkpoint as transformers writes
/// one (Qwen2 and Qwen3, bf16 and f16, sharded with its index) imports with `import-hf`, serves
/// with its weights kept in half precision (two bytes a weight, as the metrics report) and
/// renders its own chat template.
#[tokio::test(flavor = "multi_thread")]
async fn half_precision_sharded_checkpoints_import_and_serve_without_widening() {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/make_hf_checkpoint.py");
    let server = Server::start(&dir.path().join("factory"), &["--jurisdiction", "eu"], &[]);
    let keys = tenant_with_keys(&server, "acme", &["engineer", "app"]).await;
    let (engineer, app) = (keys[0].1.as_str(), keys[1].1.as_str());
    let env = cli_env(&server.url, engineer);
    for (family, dtype) in [("qwen2", "bfloat16"), ("qwen3", "float16")] {
        let checkpoint = dir.path().join(family);
        let output =
            Command::new("python3").args([script, checkpoint.to_str().unwrap(), family, dtype]).output().unwrap();
        if !output.status.success() {
            factory_testkit::missing(&format!(
                "torch and transformers: Hugging Face checkpoints untested\n{}",
                String::from_utf8_lossy(&output.stderr)
            ));
            return;
        }
        let shards: Vec<String> = std::fs::read_dir(&checkpoint)
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with("model-") && name.ends_with(".safetensors"))
            .collect();
        assert!(shards.len() > 1, "{family}: the checkpoint is sharded: {shards:?}");
        let weights_size: u64 =
            shards.iter().map(|shard| std::fs::metadata(checkpoint.join(shard)).unwrap().len()).sum();
        let import = ["model", "import-hf", checkpoint.to_str().unwrap(), "--name", family, "--jurisdiction", "eu"];
        let (ok, stdout, stderr) = cli(&import, &env);
        assert!(ok, "{stdout}\n{stderr}");
        let detail =
            call(&server.url, "GET", &format!("/api/v1/models/{family}/versions/1"), Some(engineer), None).await;
        let files: Vec<&str> =
            detail.body["manifest"]["files"].as_array().unwrap().iter().filter_map(|f| f["path"].as_str()).collect();
        assert!(files.contains(&"model.safetensors.index.json"), "{files:?}");
        assert!(shards.iter().all(|shard| files.contains(&shard.as_str())), "{files:?}");
        let (ok, stdout, stderr) = cli(&["deploy", "create", family, "--variant", &format!("{family}@1")], &env);
        assert!(ok, "{stdout}\n{stderr}");

        // The model's own template (ChatML) frames the prompt.
        let chat = serde_json::json!({
            "model": family, "temperature": 0, "max_tokens": 5,
            "messages": [{"role": "user", "content": "Now is the winter"}],
        });
        let answer = call(&server.url, "POST", "/v1/chat/completions", Some(app), Some(chat)).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert!(answer.body["usage"]["prompt_tokens"].as_u64().unwrap() >= 9, "{}", answer.text);

        // Loaded at two bytes a weight: within the checkpoint's size, not twice it.
        let metrics = call(&server.url, "GET", "/metrics", Some(&server.admin_key), None).await;
        let line = metrics
            .text
            .lines()
            .find(|line| line.starts_with("factory_model_weight_bytes") && line.contains(&format!("{family}@1")))
            .unwrap_or_else(|| panic!("no weight gauge for {family}: {}", metrics.text));
        let bytes: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(bytes <= weights_size as f64 * 1.05, "{family}: {bytes} bytes of weights from {weights_size} on disk");
    }

    // A shard the index does not name, or an index naming a path, is refused by name.
    let checkpoint = dir.path().join("qwen2");
    std::fs::copy(
        checkpoint.join("model-00001-of-00004.safetensors"),
        checkpoint.join("model-00009-of-00009.safetensors"),
    )
    .unwrap();
    let import = ["model", "import-hf", checkpoint.to_str().unwrap(), "--name", "stray", "--jurisdiction", "eu"];
    let (ok, _, stderr) = cli(&import, &env);
    assert!(!ok && stderr.contains("model-00009-of-00009.safetensors"), "{stderr}");
}

/// Point 7 through the real binary: LoRA fine-tunes a quantized GGUF version with its base
/// frozen in its blocks (the run reports the base's bytes, far below four a weight, and its
/// resident peak, per step and whole); a full fine-tune of it is refused by name. The result is a
/// signed GGUF version with its adapters beside it, which serves, and exports to llama.cpp,
/// which answers as the factory does.
#[tokio::test(flavor = "multi_thread")]
async fn lora_fine_tunes_a_quantized_base_frozen_in_its_blocks_and_the_result_serves_and_exports() {
    let (python_has_llama_cpp, factory, _) = quantized_bard().await;
    let (url, engineer, app) = (factory.url.as_str(), factory.engineer.as_str(), factory.app.as_str());
    let env = cli_env(url, engineer);

    let write_config = |name: &str, train: serde_json::Value| {
        let path = factory.dir.path().join(name);
        std::fs::write(&path, serde_json::json!({ "train": train }).to_string()).unwrap();
        path
    };
    let lora = write_config(
        "lora.json",
        serde_json::json!({ "seq_len": 32, "batch_size": 4, "checkpoint_every": 0, "eval_every": 0, "eval_windows": 4,
                            "learning_rate": 0.05, "warmup_steps": 0,
                            "lora": { "rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj", "down_proj"] } }),
    );
    let full = write_config("full.json", serde_json::json!({ "seq_len": 32, "batch_size": 4 }));
    let train = |config: &Path| {
        let config = config.to_str().unwrap().to_string();
        let args = ["train", "--dataset", "plays@1", "--name", "bard", "--base", "bard@2", "--config", &config];
        cli(&[&args[..], &["--max-steps", "6", "--wait"]].concat(), &env)
    };
    let (ok, _, stderr) = train(&full);
    assert!(!ok && stderr.contains("train.lora") && stderr.contains("quantized"), "{stderr}");
    let (ok, stdout, stderr) = train(&lora);
    assert!(ok && stderr.contains("registered bard@3"), "{stdout}\n{stderr}");

    let version = |number: u32| async move {
        call(url, "GET", &format!("/api/v1/models/bard/versions/{number}"), Some(engineer), None).await.body
    };
    let (base, tuned) = (version(2).await, version(3).await);
    let files = |body: &serde_json::Value| -> Vec<(String, String)> {
        let files = body["manifest"]["files"].as_array().unwrap().iter();
        files.map(|f| (f["path"].as_str().unwrap().to_string(), f["digest"].as_str().unwrap().to_string())).collect()
    };
    let digest_of = |body: &serde_json::Value, wanted: &str| files(body).into_iter().find(|(path, _)| path == wanted);
    for path in ["model.gguf", "adapter_model.safetensors", "adapter_config.json"] {
        assert!(digest_of(&tuned, path).is_some(), "{path}: {tuned}");
    }
    assert_ne!(
        digest_of(&tuned, "model.gguf"),
        digest_of(&base, "model.gguf"),
        "the adapters are merged into the weights"
    );
    let lineage = &tuned["manifest"]["lineage"];
    assert_eq!((lineage["origin"].as_str(), lineage["base_model"].as_str()), (Some("fine_tuned"), Some("bard@2")));
    assert_eq!(lineage["config"]["model"]["gguf"]["tensor_types"]["q8_0"].as_u64().map(|n| n > 0), Some(true));
    let (ok, stdout, stderr) = cli(&["model", "verify", "bard@3"], &env);
    assert!(ok && stdout.contains("bard@3 verified"), "{stdout}\n{stderr}");

    // The run's memory: the base held in its 8-bit blocks, and the process's resident peak.
    let run_id = lineage["run"].as_str().unwrap();
    let run = call(url, "GET", &format!("/api/v1/runs/{run_id}"), Some(engineer), None).await;
    let memory = &run.body["result"]["memory"];
    let parameters = base["parameters"].as_u64().unwrap();
    let frozen = memory["frozen_base_bytes"].as_u64().unwrap();
    assert!(frozen > parameters / 2 && frozen < parameters * 3 / 2, "{frozen} bytes for {parameters} weights: {run:?}");
    let peak = memory["peak_resident_bytes"].as_u64().unwrap();
    assert!(peak >= memory["resident_at_start_bytes"].as_u64().unwrap() && peak > 0, "{}", run.text);
    let metrics = call(url, "GET", &format!("/api/v1/runs/{run_id}/metrics"), Some(engineer), None).await;
    assert!(metrics.text.contains("peak_resident_bytes"), "each step reports the peak: {}", metrics.text);

    // The result serves as an adapter on its base's engine, beside the base and a second adapter:
    // concurrent requests for all three share the one engine's batches, and each answers as it
    // does alone.
    let second = write_config(
        "second.json",
        serde_json::json!({ "seq_len": 32, "batch_size": 4, "checkpoint_every": 0, "eval_every": 0, "eval_windows": 4,
                            "learning_rate": 0.05, "warmup_steps": 0, "lora": { "rank": 2, "alpha": 4.0, "target_modules": ["o_proj", "up_proj"] } }),
    );
    let (ok, stdout, stderr) = train(&second);
    assert!(ok && stderr.contains("registered bard@4"), "{stdout}\n{stderr}");
    for (name, variant) in [("base", "bard@2"), ("tuned", "bard@3"), ("second", "bard@4")] {
        let (ok, stdout, stderr) = cli(&["deploy", "create", name, "--variant", variant], &env);
        assert!(ok, "{stdout}\n{stderr}");
    }
    // Sampled with a fixed seed, so that any change to the logits shows in the text.
    let sampled = |deployment: &'static str| async move {
        let body = serde_json::json!({ "model": deployment, "prompt": "ROMEO:", "max_tokens": 24, "temperature": 1.0, "seed": 7 });
        let answer = call(url, "POST", "/v1/completions", Some(app), Some(body)).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        answer.body["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let complete = |deployment: &'static str| async move {
        let body = serde_json::json!({ "model": deployment, "prompt": "ROMEO:", "max_tokens": 12, "temperature": 0 });
        let answer = call(url, "POST", "/v1/completions", Some(app), Some(body)).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        answer.body["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let mut alone = Vec::new();
    for deployment in ["base", "tuned", "second"] {
        alone.push(sampled(deployment).await);
    }
    // The adapters are applied: they answer otherwise than the base.
    assert!(alone[1] != alone[0] && alone[2] != alone[0], "{alone:?}");
    let together =
        futures::future::join_all(["base", "tuned", "second", "tuned", "base", "second"].into_iter().map(sampled))
            .await;
    let expected = [0, 1, 2, 1, 0, 2].map(|i| alone[i].clone());
    assert_eq!(together, expected, "{alone:?}");
    let metrics = call(url, "GET", "/metrics", Some(&factory.server.admin_key), None).await.text;
    let engines: Vec<&str> = metrics.lines().filter(|line| line.starts_with("factory_model_weight_bytes{")).collect();
    assert!(engines.iter().any(|line| line.contains("bard@2")), "{metrics}");
    assert!(!engines.iter().any(|line| line.contains("bard@3") || line.contains("bard@4")), "{engines:?}");
    assert!(metrics.lines().any(|line| line == "factory_adapter_loads_total 2"), "{metrics}");
    let cached = metrics.lines().find_map(|line| line.strip_prefix("factory_adapter_cache_bytes ")).unwrap();
    assert!(cached.parse::<u64>().unwrap() > 0, "{metrics}");

    // It exports as one merged GGUF, which llama.cpp answers from as the factory does.
    let out = factory.dir.path().join("bard-3.gguf");
    let export = ["model", "export", "bard@3", "--format", "gguf", "--destination", "eu", "--out"];
    let (ok, stdout, stderr) = cli(&[&export[..], &[out.to_str().unwrap()]].concat(), &env);
    assert!(ok, "{stdout}\n{stderr}");
    let (ok, stdout, stderr) =
        cli(&["model", "import-gguf", out.to_str().unwrap(), "--name", "merged", "--jurisdiction", "eu"], &env);
    assert!(ok, "{stdout}\n{stderr}");
    let (ok, stdout, stderr) = cli(&["deploy", "create", "merged", "--variant", "merged@1"], &env);
    assert!(ok, "{stdout}\n{stderr}");
    let ours = complete("merged").await;
    if !python_has_llama_cpp {
        factory_testkit::missing(
            "llama-cpp-python (pip install llama-cpp-python): fine-tuned GGUF not run by llama.cpp",
        );
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/llama_cpp_complete.py");
    let output = Command::new("python3").args([script, out.to_str().unwrap(), "ROMEO:", "12"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let theirs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(theirs["text"].as_str(), Some(ours.as_str()), "{theirs}");
}
