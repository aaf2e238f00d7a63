//! Crashes: kill -9 the server during a burst of writes, or while a worker runs a job.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::support::{call, cli, eventually, tenant_with_keys, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_write_burst_loses_no_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], &[]);
    let url = server.url.clone();
    let admin = server.admin_key.clone();
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let url = url.clone();
            let admin = admin.clone();
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for n in 0..10_000 {
                    let name = format!("t{writer}-{n}");
                    let sent = client
                        .post(format!("{url}/api/v1/tenants"))
                        .bearer_auth(&admin)
                        .json(&json!({ "name": name, "jurisdictions": ["eu"] }))
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status().as_u16() == 201 => {
                            let index: u64 =
                                response.headers()["x-factory-audit-index"].to_str().unwrap().parse().unwrap();
                            acknowledged.lock().unwrap().push((name, index));
                        }
                        Ok(response) => panic!("unexpected status {}", response.status()),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    // Let the burst get going, then pull the plug.
    assert!(eventually(30, || async { acknowledged.lock().unwrap().len() >= 50 }).await);
    server.kill();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    let restarted = Server::start(dir.path(), &[], &[]);
    let size = call(&restarted.url, "GET", "/api/v1/audit/records?limit=1", Some(&admin), None).await;
    assert_eq!(size.status, 200);
    let mut records = Vec::new();
    let mut from = 0;
    loop {
        let page =
            call(&restarted.url, "GET", &format!("/api/v1/audit/records?from={from}&limit=1000"), Some(&admin), None)
                .await;
        records.extend(page.body["records"].as_array().unwrap().iter().cloned());
        match page.body["next"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    for (name, index) in &acknowledged {
        let tenant = call(&restarted.url, "GET", &format!("/api/v1/tenants/{name}"), Some(&admin), None).await;
        assert_eq!(tenant.status, 200, "acknowledged tenant {name} is missing after the crash");
        let record = &records[*index as usize];
        assert_eq!(record["record"]["action"], "tenant.create");
        assert_eq!(record["details"]["tenant"], name.as_str(), "audit record {index} is not {name}'s");
    }
    // Consistency: every committed tenant has exactly one audit record, acknowledged or not,
    // and every record names a tenant that exists (the crash left no record without its write).
    let created: Vec<&str> = records
        .iter()
        .filter(|r| r["record"]["action"] == "tenant.create")
        .map(|r| r["details"]["tenant"].as_str().unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<&str> = created.iter().copied().collect();
    assert_eq!(distinct.len(), created.len(), "a tenant has more than one audit record");
    let acknowledged_names: std::collections::BTreeSet<&str> = acknowledged.iter().map(|(n, _)| n.as_str()).collect();
    assert!(acknowledged_names.is_subset(&distinct), "an acknowledged tenant has no audit record");
    for name in distinct.difference(&acknowledged_names) {
        let tenant = call(&restarted.url, "GET", &format!("/api/v1/tenants/{name}"), Some(&admin), None).await;
        assert_eq!(tenant.status, 200, "{name} has an audit record but no tenant");
    }
    let status = restarted.terminate();
    assert!(status.success(), "{status:?}");
    let (ok, stdout, stderr) = cli(&["audit", "verify", "--data-dir", dir.path().to_str().unwrap()], &[]);
    assert!(ok, "{stdout}{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_dies_is_claimed_again_after_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("FACTORY_JOBS__LEASE_SECS", "2"), ("FACTORY_JOBS__WORKERS", "1")];
    let server = Server::start(dir.path(), &[], &env);
    let keys = tenant_with_keys(&server, "acme", &["engineer"]).await;
    let engineer = keys[0].1.clone();
    let job = call(
        &server.url,
        "POST",
        "/api/v1/tenants/acme/jobs",
        Some(&engineer),
        Some(json!({ "kind": "platform.sleep", "payload": { "millis": 2500 } })),
    )
    .await;
    assert_eq!(job.status, 201, "{}", job.text);
    let path = format!("/api/v1/jobs/{}", job.body["id"].as_str().unwrap());
    let url = server.url.clone();
    assert!(
        eventually(20, || async { call(&url, "GET", &path, Some(&engineer), None).await.body["state"] == "running" })
            .await,
        "the job never started"
    );
    server.kill();

    let restarted = Server::start(dir.path(), &[], &env);
    let url = restarted.url.clone();
    assert!(
        eventually(30, || async { call(&url, "GET", &path, Some(&engineer), None).await.body["state"] == "succeeded" })
            .await,
        "the abandoned job was not run again"
    );
    let done = call(&url, "GET", &path, Some(&engineer), None).await;
    assert_eq!(done.body["attempts"], 2, "{}", done.text);
    assert_eq!(done.body["result"]["slept_millis"], 2500);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(restarted.terminate().success());
}
