//! `factory chat DEPLOYMENT`: a conversation through the OpenAI-compatible API, each answer
//! streamed token by token as the server sends it.

use std::io::{BufRead, Write};

use anyhow::{anyhow, Context};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::args::{ChatArgs, Remote};
use crate::client::{api_key, error_message};

pub async fn run(args: &ChatArgs) -> anyhow::Result<()> {
    let remote = &args.remote;
    let mut messages: Vec<Value> = Vec::new();
    if let Some(message) = &args.message {
        messages.push(json!({ "role": "user", "content": message }));
        ask(remote, args, &messages).await?;
        println!();
        return Ok(());
    }
    eprintln!("chatting with {} (one message per line; end with Ctrl-D)", args.deployment);
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        messages.push(json!({ "role": "user", "content": line }));
        let answer = ask(remote, args, &messages).await?;
        println!();
        messages.push(json!({ "role": "assistant", "content": answer }));
    }
    Ok(())
}

/// Streams one answer to stdout and returns it whole.
async fn ask(remote: &Remote, args: &ChatArgs, messages: &[Value]) -> anyhow::Result<String> {
    let mut body = json!({ "model": args.deployment, "messages": messages, "stream": true });
    if let Some(max_tokens) = args.max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    if let Some(temperature) = args.temperature {
        body["temperature"] = json!(temperature);
    }
    if let Some(seed) = args.seed {
        body["seed"] = json!(seed);
    }
    let url = format!("{}/v1/chat/completions", remote.url.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(api_key(remote)?)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach the factory at {}", remote.url))?;
    let status = response.status();
    if !status.is_success() {
        return Err(error_message(status, &response.text().await?));
    }
    let mut answer = String::new();
    let mut pending = String::new();
    let mut stream = response.bytes_stream();
    let mut stdout = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        pending.push_str(&String::from_utf8_lossy(&chunk.context("the answer broke off")?));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                return Ok(answer);
            }
            let value: Value = serde_json::from_str(data).context("the server sent a malformed event")?;
            if let Some(message) = value["error"]["message"].as_str() {
                return Err(anyhow!("the generation failed: {message}"));
            }
            if let Some(text) = value["choices"][0]["delta"]["content"].as_str() {
                answer.push_str(text);
                print!("{text}");
                stdout.flush()?;
            }
        }
    }
    Ok(answer)
}
