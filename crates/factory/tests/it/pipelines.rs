//! Pipelines through the HTTP API and the CLI: declarations checked with line numbers, manual
//! triggers deduplicated by request id, cron schedules, new dataset versions as triggers, a
//! notify webhook, and who may do what.

use crate::support::{call, cli, eventually, tenant_with_keys, text_dataset, JsonCollector, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_are_declared_triggered_deduplicated_and_scheduled() {
    let collector = JsonCollector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("factory.toml");
    std::fs::write(
        &config,
        format!("[pipelines]\nwebhooks = [{:?}]\n[secrets]\nacme = [\"WEBHOOK_SECRET_TEST\"]\n", collector.url),
    )
    .unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap(), "--jurisdiction", "eu"],
        &[("WEBHOOK_SECRET_TEST", "s3cret")],
    );
    let keys = tenant_with_keys(&server, "acme", &["engineer", "auditor"]).await;
    let (engineer, auditor) = (keys[0].1.clone(), keys[1].1.clone());
    let env = [("FACTORY_URL", server.url.as_str()), ("FACTORY_API_KEY", engineer.as_str())];

    // A broken declaration is refused with the line it breaks on, and nothing is stored.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[[steps]]\nkind = \"gate\"\ncondition = \n").unwrap();
    let (ok, _, stderr) = cli(&["pipeline", "apply", "ping", "--file", broken.to_str().unwrap()], &env);
    assert!(!ok && stderr.contains("400") && stderr.contains("line 3"), "{stderr}");
    assert_eq!(call(&server.url, "GET", "/api/v1/pipelines/ping", Some(&engineer), None).await.status, 404);

    let declaration = format!(
        "description = \"ping the operators every minute\"\n\n[[triggers]]\ncron = \"* * * * *\"\n\n\
         [[steps]]\nname = \"check\"\nkind = \"gate\"\ncondition = \"true\"\n\n\
         [[steps]]\nkind = \"notify\"\nwhen = \"always\"\nurl = \"{}\"\nsecret_env = \"WEBHOOK_SECRET_TEST\"\n",
        collector.url
    );
    let file = dir.path().join("ping.toml");
    std::fs::write(&file, &declaration).unwrap();
    // Auditors read pipelines but do not declare them.
    let (ok, _, stderr) = cli(
        &["pipeline", "apply", "ping", "--file", file.to_str().unwrap()],
        &[("FACTORY_URL", server.url.as_str()), ("FACTORY_API_KEY", auditor.as_str())],
    );
    assert!(!ok && stderr.contains("403"), "{stderr}");
    let (ok, stdout, stderr) = cli(&["pipeline", "apply", "ping", "--file", file.to_str().unwrap()], &env);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"revision\": 1"), "{stdout}");
    let (ok, stdout, _) = cli(&["pipeline", "list"], &env);
    assert!(ok && stdout.contains("ping the operators"), "{stdout}");

    // A manual trigger starts a run; the same request again (a client's retry) starts nothing.
    let client = reqwest::Client::new();
    let trigger = || {
        client
            .post(format!("{}/api/v1/pipelines/ping/runs", server.url))
            .bearer_auth(&engineer)
            .header("x-request-id", "retry-me-1")
            .send()
    };
    let first: serde_json::Value = trigger().await.unwrap().json().await.unwrap();
    assert_eq!(first["outcome"], "started", "{first}");
    let second: serde_json::Value = trigger().await.unwrap().json().await.unwrap();
    assert_eq!(second["outcome"], "duplicate", "{second}");
    assert_eq!(second["run"], first["run"]);
    let run_path = format!("/api/v1/pipelines/ping/runs/{}", first["run"].as_str().unwrap());
    let finished = eventually(60, || async {
        call(&server.url, "GET", &run_path, Some(&engineer), None).await.body["status"] == "succeeded"
    })
    .await;
    let run = call(&server.url, "GET", &run_path, Some(&engineer), None).await.body;
    assert!(finished, "{run}");
    assert_eq!(run["steps"][0]["passed"], true, "{run}");
    assert_eq!(run["steps"][1]["status"], 200, "{run}");
    assert!(collector.bodies().iter().any(|b| b["run"] == first["run"] && b["pipeline"] == "ping"));

    // The CLI triggers and lists runs too.
    let (ok, stdout, stderr) = cli(&["pipeline", "trigger", "ping"], &env);
    assert!(ok && stdout.contains("\"outcome\""), "{stdout}{stderr}");
    let (ok, stdout, _) = cli(&["pipeline", "runs", "ping"], &env);
    assert!(ok && stdout.contains(first["run"].as_str().unwrap()), "{stdout}");

    // The cron schedule starts runs by itself (the next minute boundary, checked every 10 s).
    let scheduled = eventually(80, || async {
        let runs = call(&server.url, "GET", "/api/v1/pipelines/ping/runs", Some(&engineer), None).await.body;
        runs["runs"].as_array().unwrap().iter().any(|r| r["trigger"]["kind"] == "cron")
    })
    .await;
    assert!(scheduled, "no cron run within 80 s");

    // A new version of the dataset a pipeline watches starts a run; a version of another
    // dataset does not.
    let watcher = dir.path().join("on-data.toml");
    std::fs::write(
        &watcher,
        "[[triggers]]\nevent = \"dataset.version.created\"\ndataset = \"notes\"\n\n\
         [[steps]]\nkind = \"gate\"\ncondition = \"true\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = cli(&["pipeline", "apply", "on-data", "--file", watcher.to_str().unwrap()], &env);
    assert!(ok, "{stderr}");
    for name in ["other", "notes"] {
        let text = format!("A first note about {name}.\n\nA second note, longer than the first one.\n");
        text_dataset(&server.url, &engineer, name, "internal", text.into_bytes()).await;
    }
    let runs_of_data = || async {
        call(&server.url, "GET", "/api/v1/pipelines/on-data/runs", Some(&engineer), None).await.body["runs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let started = eventually(60, || async {
        runs_of_data().await.iter().any(|r| r["trigger"]["topic"] == "dataset.version.created")
    })
    .await;
    let runs = runs_of_data().await;
    assert!(started, "no run for the new version of notes: {runs:?}");
    // Had the other dataset's version matched, it would hold the run (it came first) and the
    // watched one would have been coalesced into it.
    assert_eq!(runs.len(), 1, "only the watched dataset starts a run: {runs:?}");
    assert_eq!(runs[0]["trigger"]["dataset"], "notes", "{runs:?}");

    // Another tenant sees none of it; drift of a deployment that does not exist is a 404.
    let globex = tenant_with_keys(&server, "globex", &["engineer"]).await;
    let foreign = call(&server.url, "GET", "/api/v1/pipelines/ping/runs?tenant=acme", Some(&globex[0].1), None).await;
    assert_eq!(foreign.status, 404, "{}", foreign.text);
    let (ok, _, stderr) = cli(&["drift", "show", "nothing"], &env);
    assert!(!ok && stderr.contains("404"), "{stderr}");
    let audit =
        call(&server.url, "GET", "/api/v1/audit/records?from=0&limit=1000", Some(&server.admin_key), None).await;
    let actions: Vec<&str> =
        audit.body["records"].as_array().unwrap().iter().filter_map(|r| r["record"]["action"].as_str()).collect();
    for action in ["pipeline.write", "pipeline.trigger", "pipeline.run"] {
        assert!(actions.contains(&action), "{action} not audited: {actions:?}");
    }
    server.terminate();
}
