//! The console in a real headless Chromium (Debian's `chromium`, driven through the DevTools
//! protocol by `console_browser.py`): each role signs in through the form, walks the pages at
//! desktop and phone widths (screenshots under the test's output), sees only what its key may
//! see, loads nothing from another origin, logs no console error, and signs out for good.

use std::process::Command;

use serde_json::{json, Value};

use crate::support::{call, shakespeare, tenant_with_keys, text_dataset, Server};

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
    let shots = dir.path().join("screenshots");
    let script = format!("{}/tests/it/console_browser.py", env!("CARGO_MANIFEST_DIR"));
    let output =
        Command::new(python).args([&script, &url, shots.to_str().unwrap(), &keys.to_string()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let seen: Value = serde_json::from_str(&stdout).unwrap();
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
