//! The console in a real headless Chromium (Debian's `chromium`, driven through the DevTools
//! protocol by `console_browser.py`): each role signs in through the form, walks the pages at
//! desktop and phone widths (screenshots under the test's output), sees only what its key may
//! see, loads nothing from another origin, logs no console error, and signs out for good.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{call, eventually, shakespeare, tenant_with_keys, text_dataset, Server, ServingFactory};

/// axe-core's script, installed from npm for the tests only (`.ci/run` puts it in
/// `~/.cache/factory-axe`; `AXE_JS` names another); none is reported as missing.
fn axe_core() -> Option<String> {
    let path = std::env::var("AXE_JS").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/factory-axe/node_modules/axe-core/axe.min.js")
    });
    if std::path::Path::new(&path).exists() {
        return Some(path);
    }
    factory_testkit::missing("axe-core (npm install --prefix ~/.cache/factory-axe axe-core)");
    None
}

/// Runs one errand of `console_browser.py` and returns what it saw.
fn browse(python: &str, errand: &str, url: &str, shots: &std::path::Path, plan: &Value, axe: Option<&str>) -> Value {
    let script = format!("{}/tests/it/console_browser.py", env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new(python);
    command.args([&script, errand, url, shots.to_str().unwrap(), &plan.to_string()]);
    if let Some(axe) = axe {
        command.env("AXE_JS", axe);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(&stdout).unwrap()
}

/// A Python with the `websockets` package and a Chromium, or none (reported as missing).
fn browser_tools() -> Option<String> {
    let python = std::env::var("OPENAI_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let websockets = Command::new(&python).args(["-c", "import websockets"]).output().is_ok_and(|o| o.status.success());
    let chromium = Command::new("sh").args(["-c", "command -v chromium"]).output().is_ok_and(|o| o.status.success());
    (websockets && chromium).then_some(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_signs_in_sees_what_its_key_may_and_signs_out_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("a"), &["--jurisdiction", "eu"], &[]);
    let url = server.url.clone();
    let acme = tenant_with_keys(&server, "acme", &["engineer", "auditor", "app"]).await;
    let globex = tenant_with_keys(&server, "globex", &["engineer"]).await;
    text_dataset(&url, &acme[0].1, "plays", "confidential", shakespeare(2_000)).await;
    text_dataset(&url, &globex[0].1, "ledger", "internal", shakespeare(2_000)).await;
    let job =
        call(&url, "POST", "/api/v1/tenants/acme/jobs", Some(&acme[0].1), Some(json!({ "kind": "platform.sleep" })));
    assert_eq!(job.await.status, 201);

    // Without a browser: the form's own token, and keys that do not exist.
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let root = client.get(format!("{url}/")).send().await.unwrap();
    assert_eq!((root.status().as_u16(), root.headers()["location"].to_str().unwrap()), (303, "/console"));
    let forged = client
        .post(format!("{url}/console/sign-in"))
        .form(&[("api_key", acme[0].1.as_str()), ("csrf", "made-up")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403, "a sign-in without the form's token is refused");
    let form = client.get(format!("{url}/console/sign-in")).send().await.unwrap();
    let csp = form.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    let token = form.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let csrf = token.split_once('=').unwrap().1.to_string();
    let wrong = client
        .post(format!("{url}/console/sign-in"))
        .header("cookie", &token)
        .form(&[("api_key", "fk_nothing"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let Some(python) = browser_tools() else {
        factory_testkit::missing("Chromium (apt install chromium) and the `websockets` Python package");
        return;
    };
    let keys = json!({ "engineer": acme[0].1, "auditor": acme[1].1, "app": acme[2].1, "globex": globex[0].1 });
    let axe = axe_core();
    let seen = browse(&python, "walk", &url, &dir.path().join("screenshots"), &keys, axe.as_deref());
    let text = |role: &str, page: &str| seen[role]["pages"][page]["text"].as_str().unwrap_or_default().to_string();
    let heading =
        |role: &str, page: &str| seen[role]["pages"][page]["heading"].as_str().unwrap_or_default().to_string();
    for role in ["engineer", "auditor", "app", "globex"] {
        let saw = &seen[role];
        assert_eq!(saw["unsigned_lands_on"], "/console/sign-in", "{role}: {saw}");
        assert_eq!(saw["signed_in_lands_on"], "/console", "{role}: {saw}");
        assert_eq!(saw["cookie"], json!({ "httpOnly": true, "sameSite": "Strict" }), "{role}: {saw}");
        assert_eq!(saw["signed_out_lands_on"], "/console/sign-in", "{role}: {saw}");
        assert_eq!(saw["after_sign_out"], "/console/sign-in", "signing out ends the session: {role}: {saw}");
        assert_eq!(saw["errors"], json!([]), "no console errors: {role}: {saw}");
        assert_eq!(saw["foreign_requests"], json!([]), "nothing leaves the installation: {role}: {saw}");
        assert_eq!(saw["first_tab"], "Skip to content", "{role}: {saw}");
        for (page, found) in saw["pages"].as_object().unwrap() {
            assert_eq!(found["unlabelled"], 0, "{role} {page}: every control is labelled");
            if axe.is_some() {
                assert_eq!(found["accessibility"], json!([]), "{role} {page}: axe-core finds nothing serious");
            }
            for size in found["screenshots"].as_array().unwrap() {
                assert!(size.as_u64().unwrap() > 3_000, "{role} {page}: a screenshot with content");
            }
        }
        let signed_in_as = if role == "globex" { "engineer" } else { role };
        assert!(text(role, "/console").contains(signed_in_as), "{role}: {saw}");
        // The cookie of a closed session opens nothing.
        let stolen = saw["stolen_cookie"].as_str().unwrap();
        let replayed = client
            .get(format!("{url}/console/datasets"))
            .header("cookie", format!("factory_session={stolen}"))
            .send()
            .await
            .unwrap();
        assert_eq!(replayed.status(), 303, "{role}");
    }
    // The navigation offers each key the pages it may open, as the policies decide.
    let nav = |role: &str| {
        seen[role]["nav"].as_array().unwrap().iter().map(|h| h.as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    for page in ["/console/datasets", "/console/jobs", "/console/models", "/console/deployments", "/console/pipelines"]
    {
        assert!(nav("engineer").contains(&page.to_string()), "{page}: {seen}");
    }
    assert!(!nav("app").contains(&"/console/jobs".to_string()), "{seen}");
    assert!(!nav("auditor").contains(&"/console/jobs".to_string()), "{seen}");
    assert!(text("engineer", "/console/jobs").contains("platform.sleep"), "{seen}");
    assert!(text("engineer", "/console/models").contains("No models"), "{seen}");
    assert!(!text("globex", "/console/jobs").contains("platform.sleep"), "{seen}");
    // Each key sees what its rights allow, as the API decides it.
    assert!(text("engineer", "/console/datasets").contains("plays"), "{seen}");
    assert!(!text("engineer", "/console/datasets").contains("ledger"), "{seen}");
    assert!(text("auditor", "/console/datasets").contains("plays"), "auditors see the catalogue: {seen}");
    assert!(!text("app", "/console/datasets").contains("plays"), "applications see no confidential data: {seen}");
    assert!(!text("globex", "/console/datasets").contains("plays"), "{seen}");
    assert!(text("globex", "/console/datasets").contains("ledger"), "{seen}");
    // The checkpoint holds only hashes: every key sees it; the records only auditors (and admins).
    for role in ["engineer", "auditor", "app", "globex"] {
        assert_eq!(heading(role, "/console/audit"), "Audit", "{role}: {seen}");
        assert!(text(role, "/console/audit").contains("factory.local/audit"), "{role}: {seen}");
    }
    assert!(text("auditor", "/console/audit").contains("session.open"), "{seen}");
    for role in ["engineer", "app", "globex"] {
        assert!(text(role, "/console/audit").contains("may not read the audit log's records"), "{role}: {seen}");
    }
    // Every sign-in and sign-out is in the audit log.
    let records = call(&url, "GET", "/api/v1/audit/records?from=0&limit=1000", Some(&server.admin_key), None).await;
    let actions: Vec<&str> =
        records.body["records"].as_array().unwrap().iter().filter_map(|r| r["record"]["action"].as_str()).collect();
    assert!(actions.iter().filter(|a| **a == "session.open").count() >= 4, "{actions:?}");
    assert!(actions.iter().filter(|a| **a == "session.close").count() >= 4, "{actions:?}");
}

/// Signs in through the console's form without a browser; returns the session cookie and its
/// CSRF token (from the page's meta tag).
async fn console_session(client: &reqwest::Client, url: &str, key: &str) -> (String, String) {
    let form = client.get(format!("{url}/console/sign-in")).send().await.unwrap();
    let token = form.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let csrf = token.split_once('=').unwrap().1.to_string();
    let signed = client
        .post(format!("{url}/console/sign-in"))
        .header("cookie", &token)
        .form(&[("api_key", key), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 303);
    let session = signed
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .find(|c| c.starts_with("factory_session=") && c.len() > "factory_session=".len())
        .unwrap();
    let page =
        client.get(format!("{url}/console")).header("cookie", &session).send().await.unwrap().text().await.unwrap();
    let meta = page.split("name=\"csrf-token\" content=\"").nth(1).unwrap();
    (session, meta.split('"').next().unwrap().to_string())
}

/// Declares pipeline `name` (TOML) as `key` and starts a run of it.
async fn declare_and_start_pipeline(url: &str, key: &str, name: &str, declaration: &str) {
    let put = reqwest::Client::new()
        .put(format!("{url}/api/v1/pipelines/{name}"))
        .bearer_auth(key)
        .header("content-type", "application/toml")
        .body(declaration.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());
    let trigger = call(url, "POST", &format!("/api/v1/pipelines/{name}/runs"), Some(key), None).await;
    assert_eq!(trigger.body["outcome"], "started", "{}", trigger.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_does_each_pages_work_in_a_real_browser() {
    let factory =
        ServingFactory::start(&[("FACTORY_FEEDBACK__METRICS", "{ thumbs = { type = \"boolean\" } }")], 2).await;
    let (url, engineer) = (factory.url.clone(), factory.engineer.clone());
    let admin = factory.server.admin_key.clone();
    let auditor =
        call(&url, "POST", "/api/v1/tenants/acme/keys", Some(&admin), Some(json!({ "role": "auditor" }))).await;
    let auditor = auditor.body["secret"].as_str().unwrap().to_string();
    let globex = tenant_with_keys(&factory.server, "globex", &["engineer"]).await;

    // A page's script calls the API with the session's cookie; a change needs its CSRF token.
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let (session, csrf) = console_session(&client, &url, &engineer).await;
    let api =
        |method: reqwest::Method, path: &str| client.request(method, format!("{url}{path}")).header("cookie", &session);
    let read = api(reqwest::Method::GET, "/api/v1/datasets/plays").send().await.unwrap();
    assert_eq!(read.status(), 200, "a session reads through the API as its key");
    let body = json!({ "model": "chat", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 2 });
    let forged = api(reqwest::Method::POST, "/v1/chat/completions").json(&body).send().await.unwrap();
    assert_eq!(forged.status(), 403, "a change without the session's token is refused");
    let chat = api(reqwest::Method::POST, "/v1/chat/completions").header("x-csrf-token", &csrf).json(&body);
    assert_eq!(chat.send().await.unwrap().status(), 200);
    // Another tenant's objects are not found, by page or by API, whether or not they exist.
    let (foreign, _) = console_session(&client, &url, &globex[0].1).await;
    for path in ["/console/datasets/plays", "/console/models/bard", "/console/deployments/chat", "/console/jobs/job-x"]
    {
        let page = client.get(format!("{url}{path}")).header("cookie", &foreign).send().await.unwrap();
        assert_eq!(page.status(), 404, "{path}");
    }
    let (app, _) = console_session(&client, &url, &factory.app).await;
    let refused =
        client.get(format!("{url}/console/models/bard/versions/1")).header("cookie", &app).send().await.unwrap();
    assert_eq!(refused.status(), 403, "an application's key sees no model's pages");

    // What the browser works on: a file to upload (with PII), a pipeline that ran, and a run
    // that trains long enough to be watched.
    let upload_file = factory.dir.path().join("letters.jsonl");
    let lines: Vec<String> = (0..400)
        .map(|i| {
            json!({ "text": format!("Letter {i}: write to clerk{i}@example.org about the harvest"), "n": i })
                .to_string()
        })
        .collect();
    std::fs::write(&upload_file, lines.join("\n")).unwrap();
    let declaration = "[[steps]]\nname = \"check\"\nkind = \"gate\"\ncondition = \"true\"\n";
    declare_and_start_pipeline(&url, &engineer, "gate", declaration).await;
    let ran = eventually(60, || async {
        let runs = call(&url, "GET", "/api/v1/pipelines/gate/runs", Some(&engineer), None).await.body;
        runs["runs"][0]["status"] == "succeeded"
    });
    assert!(ran.await);
    // A pipeline fine-tunes a candidate and runs a canary analysis of it on a deployment while
    // the application asks it questions (before the long run below takes the worker).
    let canaried =
        json!({ "name": "canaried", "variants": [{ "model": "bard@1" }], "logging": { "sample_rate": 1.0 } });
    assert_eq!(call(&url, "POST", "/api/v1/deployments", Some(&engineer), Some(canaried)).await.status, 201);
    let release = r#"
[[steps]]
name = "finetune"
kind = "finetune"
base = "bard@1"
dataset = "plays@1"
register = "tuned"
run = { seed = 4, train = { steps = 3, seq_len = 32, batch_size = 4, warmup_steps = 1, eval_every = 3 } }

[[steps]]
name = "canary"
kind = "canary"
deployment = "canaried"
weight = 0.5
min_requests = 5
alias = "candidate"
max_duration_secs = 120
"#;
    declare_and_start_pipeline(&url, &engineer, "release", release).await;
    let mut release_status = Value::Null;
    let mut release_runs = Value::Null;
    let asking_since = std::time::Instant::now();
    for question in 0.. {
        let body = json!({ "model": "canaried", "prompt": format!("QUEEN: a question, {question}"), "max_tokens": 2 });
        assert_eq!(call(&url, "POST", "/v1/completions", Some(&factory.app), Some(body)).await.status, 200);
        release_runs = call(&url, "GET", "/api/v1/pipelines/release/runs", Some(&engineer), None).await.body;
        release_status = release_runs["runs"][0]["status"].clone();
        let ended = release_status != "running" && release_status != "pending";
        if ended || asking_since.elapsed() > Duration::from_secs(300) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(release_status == "succeeded" || release_status == "rolled_back", "{release_runs}");

    let run = call(
        &url,
        "POST",
        "/api/v1/runs",
        Some(&engineer),
        Some(json!({
            "kind": "pretrain", "dataset": "plays", "version": 1, "seed": 3,
            "tokenizer": { "vocab_size": 320 },
            "model": { "config": { "vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                   "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024 } },
            "train": { "steps": 100000, "seq_len": 32, "batch_size": 4, "warmup_steps": 3, "eval_every": 25,
                       "checkpoint_every": 0, "eval_windows": 2 },
            "register": { "name": "watched" },
        })),
    )
    .await;
    assert_eq!(run.status, 201, "{}", run.text);
    let run_id = run.body["id"].as_str().unwrap().to_string();

    // A deployment whose drift monitors have judged its logged prompts, with feedback; its output
    // guardrail stops every answer longer than one token (the even lines ask for twelve).
    let watched = json!({
        "name": "watched", "variants": [{ "model": "bard@1" }], "logging": { "sample_rate": 1.0 },
        "drift": { "settings": { "window": 10, "every": 5, "baseline": 20, "bootstraps": 200 } },
        "guardrails": [{ "name": "brief", "stage": "output", "action": "block",
                         "rule": { "kind": "token_limit", "max_tokens": 1 } }],
    });
    assert_eq!(call(&url, "POST", "/api/v1/deployments", Some(&engineer), Some(watched)).await.status, 201);
    let mut answer_id = String::new();
    let mut endings: std::collections::BTreeMap<String, usize> = Default::default();
    for line in 0..25 {
        let body = json!({ "model": "watched", "prompt": format!("KING RICHARD: speak, line {line}"),
                           "max_tokens": if line % 2 == 0 { 12 } else { 1 }, "ignore_eos": true });
        let reply = call(&url, "POST", "/v1/completions", Some(&factory.app), Some(body)).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        answer_id = reply.body["id"].as_str().unwrap().to_string();
        *endings.entry(reply.body["choices"][0]["finish_reason"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert!(
        endings.get("content_filter").is_some_and(|&n| n >= 10),
        "the output guardrail stops long answers: {endings:?}"
    );
    let judged = eventually(60, || async {
        let drift = call(&url, "GET", "/api/v1/deployments/watched/drift", Some(&engineer), None).await.body;
        drift["status"]["readings"].as_array().is_some_and(|r| r.iter().any(|r| r["monitor"] == "prompt.words"))
    });
    assert!(judged.await, "the drift monitors did not judge");
    let thumbs = json!({ "inference_id": answer_id, "metric": "thumbs", "value": true });
    assert_eq!(call(&url, "POST", "/api/v1/feedback", Some(&factory.app), Some(thumbs)).await.status, 201);

    let Some(python) = browser_tools() else {
        factory_testkit::missing("Chromium (apt install chromium) and the `websockets` Python package");
        return;
    };
    let plan = json!({
        "engineer": engineer, "auditor": auditor, "run": run_id, "pipeline": "gate",
        "upload": upload_file.to_str().unwrap(),
    });
    let seen = browse(&python, "work", &url, &factory.dir.path().join("screenshots"), &plan, None);
    let text = |pointer: &str| seen.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_string();
    assert_eq!(seen["errors"], json!([]), "{seen}");
    assert_eq!(seen["foreign_requests"], json!([]), "{seen}");

    // The upload made version 2 with its progress at the end, and its page shows the PII found.
    assert!(text("/upload/status").starts_with("Version 2: 400 rows"), "{seen}");
    assert_eq!(seen["upload"]["progress"], 100, "{seen}");
    assert_eq!(text("/version_page/path"), "/console/datasets/plays/versions/2", "{seen}");
    let version_page = text("/version_page/text");
    assert!(version_page.contains("email") && version_page.contains("400"), "{version_page}");
    assert!(seen["version_page"]["plots"].as_u64().unwrap() >= 5, "profile plots drawn: {seen}");
    let version = call(&url, "GET", "/api/v1/datasets/plays/versions/2", Some(&engineer), None).await;
    assert_eq!(version.body["rows"], 400, "{}", version.text);

    // The curves grew without a reload, and the run was cancelled from its page.
    assert!(seen["run"]["first"].as_u64().unwrap_or(0) >= 1, "{seen}");
    assert!(seen["run"]["grown"].as_u64().unwrap_or(0) > seen["run"]["first"].as_u64().unwrap_or(0), "{seen}");
    assert_eq!(seen["run"]["same_document"], true, "{seen}");
    let log = text("/run/log");
    assert!(log.lines().count() >= 2 && log.contains("train step 1 ") && log.contains("loss="), "{log}");
    assert!(text("/run/after_cancel").contains("cancel requested") || text("/run/after_cancel").contains("cancelled"));
    let cancelled = eventually(60, || async {
        call(&url, "GET", &format!("/api/v1/runs/{run_id}"), Some(&engineer), None).await.body["state"] == "cancelled"
    });
    assert!(cancelled.await, "the console's cancel stops the run");

    // The alias moved after its confirmation, as the API shows.
    assert!(text("/alias/confirm").contains("Move bard@production?"), "{seen}");
    assert_eq!(text("/alias/path"), "/console/models/bard", "{seen}");
    let model = call(&url, "GET", "/api/v1/models/bard", Some(&engineer), None).await;
    let aliased: Vec<&Value> =
        model.body["versions"].as_array().unwrap().iter().filter(|v| v["aliases"] == json!(["production"])).collect();
    assert_eq!(aliased.len(), 1, "{}", model.text);
    assert_eq!(aliased[0]["version"], 2, "{}", model.text);

    // The version page verified the signature and links its lineage to the data and the run.
    assert!(text("/model_version/signature").starts_with("Verified now"), "{seen}");
    let links = seen["model_version"]["lineage_links"].to_string();
    assert!(links.contains("/console/datasets/plays/versions/1") && links.contains("/console/jobs/"), "{links}");

    // The playground streamed an answer, which the inference log and the page's traffic count.
    assert_eq!(seen["playground"]["done"], true, "{seen}");
    assert!(!text("/playground/answer").is_empty(), "{seen}");
    assert!(text("/deployment/text").contains("Latency p50"), "{seen}");
    assert!(seen["deployment"]["plots"].as_u64().unwrap() >= 1, "{seen}");

    // The watched deployment's page shows its monitors against their thresholds and its feedback.
    let watched = text("/watched");
    assert!(watched.contains("prompt.words") && watched.contains("prompt.length"), "{watched}");
    assert!(watched.contains("thumbs") && watched.contains("Requests\n25"), "{watched}");
    for (ending, count) in &endings {
        assert!(watched.contains(&format!("{ending}: {count}")), "{ending}: {count} in {watched}");
    }

    // The canary analysis with its decision, both arms and the tests' evidence.
    let canary = text("/canaried");
    assert!(canary.contains("tuned@1 against bard@1") && canary.contains("pipeline release"), "{canary}");
    assert!(
        canary.contains("ms_per_token") && canary.contains("p_value") && canary.contains("\"requests\""),
        "{canary}"
    );

    // The pipeline's run as a timeline.
    assert!(text("/pipeline/text").contains("succeeded") && text("/pipeline/text").contains("check"), "{seen}");
    assert!(seen["pipeline"]["bars"].as_u64().unwrap() >= 1, "{seen}");

    // The auditor found the alias move, verified it in the browser, and saw tampering fail.
    assert!(text("/audit_search").contains("model.alias"), "{seen}");
    assert!(text("/audit_record/path").starts_with("/console/audit/records/"), "{seen}");
    assert!(text("/audit_record/verified").starts_with("Verified: record"), "{seen}");
    assert!(text("/audit_record/tampered").starts_with("Not verified"), "{seen}");
    assert!(text("/audit_record/wrong_key").starts_with("Not verified"), "{seen}");
    assert!(text("/auditor_rows").contains("may not read this version's rows"), "{seen}");
}
