//! Weighted variants of a deployment: an episode sticks to one variant while episodes spread
//! over all; a variant named by an alias follows it; feedback on an answer or an episode.

use serde_json::{json, Value};

use crate::support::{call, cli, ServingFactory};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_variants_keep_episodes_follow_aliases_and_take_feedback() {
    let feedback_metrics = "{ thumbs = { type = \"boolean\" }, resolved = { type = \"float\", level = \"episode\" } }";
    let ServingFactory { dir: _dir, server: _server, url, engineer, app } =
        ServingFactory::start(&[("FACTORY_FEEDBACK__METRICS", feedback_metrics)], 2).await;
    let cli_env = crate::support::cli_env(&url, &engineer);
    let app_env = [("FACTORY_URL", url.as_str()), ("FACTORY_API_KEY", app.as_str())];

    // Two weighted variants: an episode sticks to one; episodes spread over both.
    let (ok, stdout, stderr) =
        cli(&["deploy", "set-weights", "chat", "--variant", "bard@1=50", "--variant", "bard@2=50"], &cli_env);
    assert!(ok && stdout.contains("\"revision\": 2"), "{stdout}\n{stderr}");
    let client = reqwest::Client::new();
    let ask = |episode: String| {
        let request = client
            .post(format!("{url}/v1/completions"))
            .bearer_auth(&app)
            .header("x-episode-id", episode)
            .json(&json!({ "model": "chat", "prompt": "KING:", "max_tokens": 2 }));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.headers()["x-factory-model"].to_str().unwrap().to_string()
        }
    };
    let first = ask("episode-7".to_string()).await;
    for _ in 0..4 {
        assert_eq!(ask("episode-7".to_string()).await, first, "an episode stays on its variant");
    }
    let mut variants = std::collections::BTreeSet::new();
    for episode in 0..24 {
        variants.insert(ask(format!("episode-{episode}")).await);
    }
    assert_eq!(variants.into_iter().collect::<Vec<_>>(), vec!["bard@1", "bard@2"]);

    // A variant named by an alias follows the alias from the next request on.
    let point = |version: i64| {
        let path = "/api/v1/models/bard/aliases/live";
        call(&url, "PUT", path, Some(&engineer), Some(json!({ "version": version })))
    };
    assert_eq!(point(1).await.status, 200);
    for (name, variant) in [("one", "bard@1"), ("two", "bard@2"), ("live", "bard@live")] {
        let (ok, stdout, stderr) = cli(&["deploy", "create", name, "--variant", variant], &cli_env);
        assert!(ok, "{stdout}\n{stderr}");
    }
    // Sampled with one seed: the same version answers the same; these barely trained versions
    // answer alike when greedy.
    let seeded = |deployment: &str| {
        let body = json!({ "model": deployment, "prompt": "KING:", "max_tokens": 12, "temperature": 1.0, "seed": 11 });
        let request = client.post(format!("{url}/v1/completions")).bearer_auth(&app).json(&body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()["choices"][0]["text"].as_str().unwrap().to_string()
        }
    };
    let (one, two) = (seeded("one").await, seeded("two").await);
    assert_ne!(one, two, "the two versions answer differently");
    assert_eq!(seeded("one").await, one, "a seed repeats an answer");
    assert_eq!(seeded("live").await, one);
    assert_eq!(point(2).await.status, 200);
    assert_eq!(seeded("live").await, two, "the alias moved to bard@2");

    // Feedback on an answer (by the id the client got) and on an episode; bad reports are 4xx.
    let answered = client
        .post(format!("{url}/v1/completions"))
        .bearer_auth(&app)
        .json(&json!({ "model": "chat", "prompt": "KING:", "max_tokens": 2 }))
        .send()
        .await
        .unwrap();
    let answer_id = answered.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert!(
        crate::support::eventually(10, || async {
            call(&url, "GET", "/api/v1/deployments/chat/inferences?limit=1000", Some(&engineer), None)
                .await
                .text
                .contains(&answer_id)
        })
        .await
    );
    let (ok, stdout, stderr) =
        cli(&["feedback", "--inference", &answer_id, "--metric", "thumbs", "--value", "true"], &app_env);
    assert!(ok && stdout.contains("\"value\": 1.0"), "{stdout}\n{stderr}");
    let episode = json!({ "episode_id": "episode-7", "metric": "resolved", "value": 0.75 });
    assert_eq!(call(&url, "POST", "/api/v1/feedback", Some(&app), Some(episode)).await.status, 201);
    for (body, status) in [
        (json!({ "inference_id": answer_id, "metric": "stars", "value": 5 }), 400),
        (json!({ "inference_id": answer_id, "metric": "thumbs", "value": 0.5 }), 400),
        (json!({ "inference_id": "chatcmpl-unknown", "metric": "thumbs", "value": true }), 404),
        (json!({ "inference_id": answer_id, "metric": "resolved", "value": 1.0 }), 400),
    ] {
        let reply = call(&url, "POST", "/api/v1/feedback", Some(&app), Some(body.clone())).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text);
    }
    let reported = call(&url, "GET", "/api/v1/deployments/chat/feedback", Some(&engineer), None).await;
    let metrics: std::collections::BTreeSet<&str> =
        reported.body["feedback"].as_array().unwrap().iter().map(|f| f["metric"].as_str().unwrap()).collect();
    assert_eq!(metrics, ["resolved", "thumbs"].into(), "{}", reported.text);
}
