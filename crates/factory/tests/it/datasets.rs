//! Governed datasets through the real server: residency, ingest and its failures, PII masking
//! by role, read back, and atomicity when the client or the server dies mid-upload.

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use crate::support::{call, cli, create_dataset, eventually, tenant_with_keys, upload, JsonCollector, Server};

fn labeled_rows() -> Vec<u8> {
    // The shared generator writes realistic rows with PII spliced into Shakespeare; it sits
    // beside the checkout on developer machines and CI alike.
    let generator = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/bench/gen/jsonl_gen.py");
    let output = std::process::Command::new("python3")
        .args([generator, "--rows", "400", "--seed", "3"])
        .output()
        .expect("python3 runs the shared JSONL generator");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

fn object_files(dir: &std::path::Path) -> usize {
    fn count(path: &std::path::Path) -> usize {
        std::fs::read_dir(path)
            .map(|entries| {
                entries.filter_map(Result::ok).map(|e| if e.path().is_dir() { count(&e.path()) } else { 1 }).sum()
            })
            .unwrap_or(0)
    }
    count(&dir.join("objects").join("objects"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_are_governed_from_the_first_byte() {
    let dir = tempfile::tempdir().unwrap();
    let lineage = JsonCollector::start().await;
    let server = Server::start(dir.path(), &["--jurisdiction", "eu"], &[("FACTORY_LINEAGE__HTTP_URL", &lineage.url)]);
    let url = server.url.clone();
    let keys = tenant_with_keys(&server, "acme", &["engineer", "steward", "app"]).await;
    let (engineer, steward, app) = (keys[0].1.clone(), keys[1].1.clone(), keys[2].1.clone());

    // Residency: a jurisdiction the tenant does not allow, or one without a storage site.
    let refused = call(
        &url,
        "POST",
        "/api/v1/datasets",
        Some(&engineer),
        Some(json!({ "name": "d", "classification": "internal", "jurisdiction": "us" })),
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    let de = call(
        &url,
        "POST",
        "/api/v1/tenants",
        Some(&server.admin_key),
        Some(json!({ "name": "detenant", "jurisdictions": ["de"] })),
    )
    .await;
    assert_eq!(de.status, 201);
    let no_site = call(
        &url,
        "POST",
        "/api/v1/datasets?tenant=detenant",
        Some(&server.admin_key),
        Some(json!({ "name": "d", "classification": "internal" })),
    )
    .await;
    assert_eq!(no_site.status, 403, "{}", no_site.text);
    let records = call(&url, "GET", "/api/v1/audit/records?limit=1000", Some(&server.admin_key), None).await;
    let residency_denials = records.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["record"]["action"] == "dataset.create" && r["record"]["policies"] == json!(["residency"]))
        .count();
    assert_eq!(residency_denials, 2, "both refusals are audited with the residency policy");

    // Bad input: a malformed row rejects the version, names its line, and keeps nothing.
    for (name, policy) in [("feedback", "mask"), ("raw", "keep")] {
        let created = call(
            &url,
            "POST",
            "/api/v1/datasets",
            Some(&engineer),
            Some(json!({ "name": name, "classification": "confidential", "tags": ["support"], "pii_policy": { "default": policy } })),
        )
        .await;
        assert_eq!(created.status, 201, "{}", created.text);
        assert_eq!(created.body["jurisdiction"], "eu");
    }
    let mut rows = labeled_rows();
    let objects_before = object_files(dir.path());
    let mut broken = rows.clone();
    broken.extend_from_slice(b"{\"id\": 9999, \"text\": \"unterminated\n");
    let rejected =
        upload(&url, &engineer, "/api/v1/datasets/feedback/versions?format=jsonl&text_column=text", broken).await;
    assert_eq!(rejected.status, 422, "{}", rejected.text);
    assert!(
        rejected.body["error"]["message"].as_str().unwrap().starts_with("line 401: invalid JSON"),
        "{}",
        rejected.text
    );
    assert_eq!(rejected.body["error"]["rows"][0]["line"], 401);
    let shown = call(&url, "GET", "/api/v1/datasets/feedback", Some(&engineer), None).await;
    assert_eq!(
        (shown.body["latest_version"].as_i64(), shown.body["versions"].as_array().map(Vec::len)),
        (Some(0), Some(0))
    );
    assert_eq!(object_files(dir.path()), objects_before, "a rejected ingest leaves no objects");

    // A good ingest (gzip-compressed), then read back.
    let mut gz = flate2_encode(&rows);
    let ingested = upload(
        &url,
        &engineer,
        "/api/v1/datasets/feedback/versions?format=jsonl&text_column=text&dedup=flag",
        std::mem::take(&mut gz),
    )
    .await;
    assert_eq!(ingested.status, 201, "{}", ingested.text);
    assert_eq!((ingested.body["version"].as_i64(), ingested.body["rows"].as_u64()), (Some(1), Some(400)));
    assert!(ingested.body["pii"].to_string().contains("email"), "{}", ingested.text);
    let manifest = call(&url, "GET", "/api/v1/datasets/feedback/versions/1", Some(&engineer), None).await;
    assert_eq!(manifest.status, 200);
    assert_eq!(manifest.body["source"]["compression"], "gzip");
    assert_eq!(manifest.body["source"]["uploaded_by"], keys[0].0.as_str());
    let page = call(&url, "GET", "/api/v1/datasets/feedback/versions/1/rows?offset=10&limit=5", Some(&app), None).await;
    assert_eq!(page.status, 403, "confidential rows are not for applications: {}", page.text);
    let page =
        call(&url, "GET", "/api/v1/datasets/feedback/versions/1/rows?offset=10&limit=5", Some(&engineer), None).await;
    assert_eq!(page.body["rows"].as_array().unwrap().len(), 5);
    assert_eq!(page.body["rows"][0]["id"], 10);
    assert!(!page.text.contains("@example"), "masked at ingest: {}", page.text);
    let profile = call(&url, "GET", "/api/v1/datasets/feedback/versions/1/profile", Some(&engineer), None).await;
    assert!(profile.body["profile"]["columns"]["amount"].is_object(), "{}", profile.text);
    assert!(profile.body["profile"]["text"].is_object(), "{}", profile.text);

    // Raw PII kept by policy: stewards see it, engineers see it masked and may not download it.
    rows.truncate(rows.len());
    let raw = upload(&url, &engineer, "/api/v1/datasets/raw/versions?format=jsonl&text_column=text", rows).await;
    assert_eq!(raw.status, 201, "{}", raw.text);
    let as_steward = call(&url, "GET", "/api/v1/datasets/raw/versions/1/rows?limit=400", Some(&steward), None).await;
    assert!(as_steward.text.contains("@"), "stewards see kept PII");
    let as_engineer = call(&url, "GET", "/api/v1/datasets/raw/versions/1/rows?limit=400", Some(&engineer), None).await;
    assert_eq!(as_engineer.status, 200);
    assert!(as_engineer.body["masked_columns"].as_array().unwrap().iter().any(|c| c == "text"), "{}", as_engineer.text);
    assert!(!as_engineer.text.contains("@example"), "engineers see kept PII masked");
    let download = reqwest::Client::new()
        .get(format!("{url}/api/v1/datasets/raw/versions/1/download"))
        .bearer_auth(&engineer)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status().as_u16(), 403);

    // The steward downloads through the CLI; pyarrow reads the file when it is installed.
    let target = dir.path().join("raw.parquet");
    let env = [("FACTORY_URL", url.as_str()), ("FACTORY_API_KEY", steward.as_str())];
    let (ok, stdout, stderr) =
        cli(&["dataset", "download", "raw", "--version", "1", "-o", target.to_str().unwrap()], &env);
    assert!(ok, "{stdout}{stderr}");
    let bytes = std::fs::read(&target).unwrap();
    assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));
    // Only a missing pyarrow is a skip: a read-back that fails is a failure.
    let has_pyarrow = std::process::Command::new("python3")
        .args(["-c", "import pyarrow.parquet"])
        .output()
        .is_ok_and(|output| output.status.success());
    if has_pyarrow {
        let check = std::process::Command::new("python3")
            .args(["-c", "import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1]); print(t.num_rows)"])
            .arg(&target)
            .output()
            .unwrap();
        assert!(check.status.success(), "pyarrow cannot read our Parquet: {}", String::from_utf8_lossy(&check.stderr));
        assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "400");
    } else {
        factory_testkit::missing("pyarrow (pip install pyarrow): the download was checked as Parquet bytes only");
    }

    // The CLI ingests a file with its progress bar and prints the report.
    let text_file = dir.path().join("notes.txt");
    std::fs::write(&text_file, "first paragraph\nstill first\n\nsecond paragraph\n").unwrap();
    let (ok, _, stderr) = cli(
        &["dataset", "create", "notes", "--classification", "internal"],
        &[("FACTORY_URL", url.as_str()), ("FACTORY_API_KEY", engineer.as_str())],
    );
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = cli(
        &["dataset", "ingest", "notes", text_file.to_str().unwrap(), "--paragraphs"],
        &[("FACTORY_URL", url.as_str()), ("FACTORY_API_KEY", engineer.as_str())],
    );
    assert!(ok && stdout.contains("notes version 1: 2 rows"), "{stdout}{stderr}");

    // Lineage: every ingest is a run whose START, then COMPLETE or FAIL, reached the endpoint.
    let all_delivered = eventually(20, || async { lineage.bodies().len() == 8 }).await;
    let events = lineage.bodies();
    assert!(all_delivered, "{events:#?}");
    let story: Vec<(String, String)> = events
        .iter()
        .map(|e| (e["job"]["name"].as_str().unwrap().to_string(), e["eventType"].as_str().unwrap().to_string()))
        .collect();
    let expected = [
        ("acme.ingest.feedback", "START"),
        ("acme.ingest.feedback", "FAIL"),
        ("acme.ingest.feedback", "START"),
        ("acme.ingest.feedback", "COMPLETE"),
        ("acme.ingest.raw", "START"),
        ("acme.ingest.raw", "COMPLETE"),
        ("acme.ingest.notes", "START"),
        ("acme.ingest.notes", "COMPLETE"),
    ];
    assert_eq!(story, expected.map(|(job, state)| (job.to_string(), state.to_string())));
    assert!(events[1]["run"]["facets"]["errorMessage"]["message"].as_str().unwrap().contains("line 401"));
    let complete = &events[3];
    assert_eq!(complete["run"]["runId"], events[2]["run"]["runId"]);
    assert_ne!(complete["run"]["runId"], events[0]["run"]["runId"]);
    assert_eq!(manifest.body["lineage"]["run_id"], complete["run"]["runId"], "the manifest names its run");
    assert_eq!(
        complete["inputs"][0]["name"],
        format!("sha256:{}", manifest.body["source"]["digest"].as_str().unwrap())
    );
    assert_eq!(complete["outputs"][0]["namespace"], "factory://factory/acme");
    assert_eq!(complete["outputs"][0]["name"], "feedback");
    assert_eq!(complete["outputs"][0]["facets"]["version"]["datasetVersion"], "1");
    let fields = complete["outputs"][0]["facets"]["schema"]["fields"].as_array().unwrap();
    assert!(fields.iter().any(|f| f["name"] == "text"), "{complete}");
    assert_eq!(complete["outputs"][0]["facets"]["outputStatistics"]["rowCount"], 400);
}

fn flate2_encode(bytes: &[u8]) -> Vec<u8> {
    // gzip by hand through the system's gzip, keeping flate2 out of the test's dependencies.
    let mut child = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    child.wait_with_output().unwrap().stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_leaves_no_version() {
    let dir = tempfile::tempdir().unwrap();
    let lineage_file = dir.path().join("lineage.jsonl");
    // The periodic sweep is off so that the test sees what a crash leaves before sweeping it.
    let env = [
        ("FACTORY_LINEAGE__FILE", lineage_file.to_str().unwrap()),
        ("FACTORY_OBJECTS__ORPHAN_SWEEP_INTERVAL_SECS", "0"),
    ];
    let server = Server::start(dir.path(), &["--jurisdiction", "eu"], &env);
    let keys = tenant_with_keys(&server, "acme", &["engineer"]).await;
    let engineer = keys[0].1.clone();
    create_dataset(&server.url, &engineer, "d", "internal").await;

    // The client promises 10 MB, sends 1 MB of good rows (small shards, so some are written)
    // and hangs up: its shards are deleted and the run's lineage ends in FAIL.
    let address = server.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    let head = format!(
        "POST /api/v1/datasets/d/versions?format=jsonl&shard_rows=1000 HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {engineer}\r\nContent-Length: 10000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let row = b"{\"text\": \"a perfectly good row of text\"}\n";
    for _ in 0..(1_000_000 / row.len()) {
        stream.write_all(row).unwrap();
    }
    drop(stream);
    let failed = eventually(20, || async {
        let events = lineage_events(&lineage_file);
        events.len() == 2 && events[1]["eventType"] == "FAIL"
    })
    .await;
    assert!(failed, "START then FAIL: {:?}", lineage_events(&lineage_file));
    let events = lineage_events(&lineage_file);
    assert_eq!(events[0]["eventType"], "START");
    assert_eq!(events[0]["run"]["runId"], events[1]["run"]["runId"]);
    assert_eq!(events[1]["job"]["name"], "acme.ingest.d");
    assert!(events[1]["run"]["facets"]["errorMessage"]["message"].is_string(), "{}", events[1]);
    let shown = call(&server.url, "GET", "/api/v1/datasets/d", Some(&engineer), None).await;
    assert_eq!(shown.body["versions"], json!([]), "{}", shown.text);
    assert!(
        eventually(10, || async { object_files(dir.path()) == 0 }).await,
        "the disconnected upload's shards are deleted"
    );

    // kill -9 in the middle of a large upload: after a restart there is still no version.
    let url = server.url.clone();
    let big: Vec<u8> = row.iter().copied().cycle().take(row.len() * 400_000).collect();
    let uploading = tokio::spawn({
        let url = url.clone();
        let engineer = engineer.clone();
        async move {
            let chunks = big.chunks(64 * 1024).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>();
            let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks).then(|c| async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                c
            }));
            let _ = reqwest::Client::new()
                .post(format!("{url}/api/v1/datasets/d/versions?format=jsonl&shard_rows=1000"))
                .bearer_auth(&engineer)
                .body(body)
                .send()
                .await;
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.kill();
    let _ = uploading.await;
    let restarted = Server::start(dir.path(), &["--jurisdiction", "eu"], &env);
    let shown = call(&restarted.url, "GET", "/api/v1/datasets/d", Some(&engineer), None).await;
    assert_eq!(shown.body["versions"], json!([]), "{}", shown.text);
    assert_eq!(shown.body["latest_version"], 0);

    // The crash left shards that nothing references. A committed version's objects survive the
    // sweep; the orphans do not, and the sweep is audited.
    let orphans = object_files(dir.path());
    assert!(orphans > 0, "the killed upload had written shards");
    let kept = upload(&restarted.url, &engineer, "/api/v1/datasets/d/versions?format=jsonl", row.repeat(10)).await;
    assert_eq!(kept.status, 201, "{}", kept.text);
    let committed = object_files(dir.path()) - orphans;
    assert_eq!(committed, 2, "one shard and one manifest");
    let cli_env = [("FACTORY_URL", restarted.url.as_str()), ("FACTORY_API_KEY", engineer.as_str())];
    let (ok, _, stderr) = cli(&["objects", "sweep", "--grace-secs", "0"], &cli_env);
    assert!(!ok && stderr.contains("403"), "only the platform sweeps: {stderr}");
    let cli_env = [("FACTORY_URL", restarted.url.as_str()), ("FACTORY_API_KEY", restarted.admin_key.as_str())];
    let (ok, stdout, stderr) = cli(&["objects", "sweep", "--grace-secs", "0"], &cli_env);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["objects_deleted"].as_u64(), Some(orphans as u64), "{stdout}");
    assert_eq!(object_files(dir.path()), committed);
    let rows = call(&restarted.url, "GET", "/api/v1/datasets/d/versions/1/rows", Some(&engineer), None).await;
    assert_eq!(rows.body["rows"].as_array().map(Vec::len), Some(10), "{}", rows.text);
    let records =
        call(&restarted.url, "GET", "/api/v1/audit/records?limit=1000", Some(&restarted.admin_key), None).await;
    assert!(records.text.contains("objects.collect"), "the sweep is audited");
}

fn lineage_events(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}
