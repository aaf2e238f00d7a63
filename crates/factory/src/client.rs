//! How a subcommand talks to a running factory: the API key, one JSON call, a raw upload, and
//! the server's error body turned into a message.
//!
//! Below every command module and above only `args` (for [`Remote`]), so any command can call
//! the API without knowing another command (`ARCHITECTURE.md`, "The CLI's layers").

use anyhow::{anyhow, Context};
use reqwest::Method;
use serde_json::Value;

use crate::args::Remote;

/// `?tenant=NAME` (or `&tenant=NAME`) when a platform key names the tenant.
pub fn tenant_query(tenant: Option<&str>, separator: &str) -> String {
    tenant.map(|t| format!("{separator}tenant={t}")).unwrap_or_default()
}

/// The API key, or the error that says where to find one.
pub fn api_key(remote: &Remote) -> anyhow::Result<&str> {
    remote.api_key.as_deref().map(str::trim).ok_or_else(|| {
        anyhow!("no API key: pass --api-key or set FACTORY_API_KEY (the platform admin key is in DATA_DIR/admin.key)")
    })
}

/// The `error.message` of an error body, or the body itself.
pub fn error_message(status: reqwest::StatusCode, text: &str) -> anyhow::Error {
    let value = serde_json::from_str::<Value>(text).ok();
    let message = value.as_ref().and_then(|v| v["error"]["message"].as_str()).unwrap_or(text);
    let rows = value.as_ref().and_then(|v| v["error"]["rows"].as_array()).filter(|rows| !rows.is_empty());
    match rows {
        Some(rows) => anyhow!("{status}: {message} ({} bad rows reported)", rows.len()),
        None => anyhow!("{status}: {message}"),
    }
}

pub async fn call(remote: &Remote, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let api_key = api_key(remote)?;
    let url = format!("{}{path}", remote.url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let mut request = client.request(method, &url).bearer_auth(api_key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.with_context(|| format!("cannot reach the factory at {}", remote.url))?;
    let status = response.status();
    let is_json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let text = response.text().await?;
    if !status.is_success() {
        return Err(error_message(status, &text));
    }
    if is_json {
        Ok(serde_json::from_str(&text)?)
    } else {
        Ok(Value::String(text))
    }
}

/// Sends `body` as it is (a TOML declaration, a tar bundle) and reads the JSON answer.
pub async fn send_bytes(
    remote: &Remote,
    method: Method,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> anyhow::Result<Value> {
    let url = format!("{}{path}", remote.url.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(api_key(remote)?)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach the factory at {}", remote.url))?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        return Err(error_message(status, &text));
    }
    Ok(serde_json::from_str(&text)?)
}
