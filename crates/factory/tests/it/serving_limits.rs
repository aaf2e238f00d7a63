//! What a deployment refuses once it is full or spent: a burst past the engine's batch and
//! queue (429 with Retry-After), requests past a key's rate, and requests past a budget.

use serde_json::json;

use crate::support::{call, inference_logged, ServingFactory};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_a_spent_rate_and_a_spent_budget_answer_429() {
    let env = [
        ("FACTORY_SERVING__MAX_BATCH", "2"),
        ("FACTORY_SERVING__MAX_WAITING", "2"),
        // A price that makes one request cost at least 0.001.
        ("FACTORY_SERVING__PRICES", "{ bard = { prompt_per_1k = 1.0, completion_per_1k = 1.0 } }"),
    ];
    let ServingFactory { dir: _dir, server: _server, url, engineer, app } = ServingFactory::start(&env, 1).await;
    let client = reqwest::Client::new();
    let logged = |deployment: &'static str, status: &'static str| inference_logged(&url, &engineer, deployment, status);

    // A burst past the engine's batch and queue gets 429 with Retry-After, never unbounded memory.
    // (Large enough that the engine, 2 in the batch and 2 waiting, cannot keep up however fast
    // it decodes.)
    let burst = (0..48).map(|_| {
        client
            .post(format!("{url}/v1/completions"))
            .bearer_auth(&app)
            .json(&json!({ "model": "chat", "prompt": "KING:", "max_tokens": 80, "temperature": 0 }))
            .send()
    });
    let replies = futures::future::join_all(burst).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.as_ref().unwrap().status().as_u16()).collect();
    assert!(statuses.contains(&200) && statuses.contains(&429), "{statuses:?}");
    for reply in replies.iter().flatten().filter(|r| r.status() == 429) {
        assert_eq!(reply.headers()["retry-after"], "1");
    }

    // Limits: two requests a minute per key; a budget the first request spends.
    let limited = json!({ "name": "limited", "variants": [{ "model": "bard@1" }],
                          "limits": { "key_requests_per_minute": 2 } });
    assert_eq!(call(&url, "POST", "/api/v1/deployments", Some(&engineer), Some(limited)).await.status, 201);
    let statuses = {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let reply = client
                .post(format!("{url}/v1/completions"))
                .bearer_auth(&app)
                .json(&json!({ "model": "limited", "prompt": "KING:", "max_tokens": 2 }))
                .send()
                .await
                .unwrap();
            statuses.push((
                reply.status().as_u16(),
                reply.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string()),
            ));
        }
        statuses
    };
    assert_eq!(statuses[..2], [(200, None), (200, None)]);
    assert_eq!(statuses[2].0, 429);
    assert!(statuses[2].1.as_deref().is_some_and(|s| s.parse::<u64>().unwrap() >= 1), "{statuses:?}");
    let other_key = client
        .post(format!("{url}/v1/completions"))
        .bearer_auth(&engineer)
        .json(&json!({ "model": "limited", "prompt": "KING:", "max_tokens": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(other_key.status(), 200, "limits are per key");
    let budgeted = json!({ "name": "budgeted", "variants": [{ "model": "bard@1" }],
                           "limits": { "budget": { "amount": 0.001, "window_secs": 3600 } } });
    assert_eq!(call(&url, "POST", "/api/v1/deployments", Some(&engineer), Some(budgeted)).await.status, 201);
    let ask_budgeted = || {
        client
            .post(format!("{url}/v1/completions"))
            .bearer_auth(&app)
            .json(&json!({ "model": "budgeted", "prompt": "KING:", "max_tokens": 2 }))
            .send()
    };
    assert_eq!(ask_budgeted().await.unwrap().status(), 200);
    assert_eq!(ask_budgeted().await.unwrap().status(), 429, "the budget is spent");
    assert!(logged("budgeted", "ok").await);
    let rows = call(&url, "GET", "/api/v1/deployments/budgeted/inferences", Some(&engineer), None).await;
    assert!(rows.body["inferences"][0]["cost"].as_f64().unwrap() >= 0.001, "{}", rows.text);

    // A batch is charged to the same budget: its request spends it, and then an interactive
    // request is refused.
    let budgeted = json!({ "name": "budgeted-batch", "variants": [{ "model": "bard@1" }],
                           "limits": { "budget": { "amount": 0.001, "window_secs": 3600 } } });
    assert_eq!(call(&url, "POST", "/api/v1/deployments", Some(&engineer), Some(budgeted)).await.status, 201);
    let lines: Vec<String> = (0..1)
        .map(|i| {
            json!({ "custom_id": format!("r{i}"), "method": "POST", "url": "/v1/completions",
                    "body": { "model": "budgeted-batch", "prompt": "KING:", "max_tokens": 2 } })
            .to_string()
        })
        .collect();
    let boundary = "factory-test-boundary";
    // The file before its purpose, as the Node client sends them.
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"requests.jsonl\"\r\n\
         Content-Type: application/jsonl\r\n\r\n{}\r\n--{boundary}\r\n\
         Content-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}--\r\n",
        lines.join("\n")
    );
    let uploaded = client
        .post(format!("{url}/v1/files"))
        .bearer_auth(&app)
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 200);
    let file: serde_json::Value = uploaded.json().await.unwrap();
    let batch = json!({ "input_file_id": file["id"], "endpoint": "/v1/completions", "completion_window": "24h" });
    let created = call(&url, "POST", "/v1/batches", Some(&app), Some(batch)).await;
    assert_eq!(created.status, 200, "{}", created.text);
    let path = format!("/v1/batches/{}", created.body["id"].as_str().unwrap());
    let completed = crate::support::eventually(60, || async {
        call(&url, "GET", &path, Some(&app), None).await.body["status"] == "completed"
    })
    .await;
    let finished = call(&url, "GET", &path, Some(&app), None).await;
    assert!(completed, "{}", finished.text);
    assert_eq!(finished.body["request_counts"]["completed"], 1, "{}", finished.text);
    let after = client
        .post(format!("{url}/v1/completions"))
        .bearer_auth(&app)
        .json(&json!({ "model": "budgeted-batch", "prompt": "KING:", "max_tokens": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 429, "the batch spent the budget");
}
