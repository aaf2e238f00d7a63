//! A fast OpenAI-compatible upstream for the gateway benchmark: answers every chat completion
//! at once with the same small body, so what a gateway in front of it adds is what is measured.
//!
//!   cargo run --release -p factory-bench --bin mock-upstream -- --port 9100

use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 9100)]
    port: u16,
}

async fn chat() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": "mock",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": "ok" }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6 },
    }))
}

async fn models() -> Json<serde_json::Value> {
    Json(
        serde_json::json!({ "object": "list", "data": [{ "id": "mock", "object": "model", "created": 0, "owned_by": "bench" }] }),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let app = Router::new().route("/v1/chat/completions", post(chat)).route("/v1/models", get(models));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
