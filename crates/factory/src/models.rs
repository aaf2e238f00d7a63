//! `factory model ...`: the registry from the command line. `verify` checks a version here,
//! on the client, against the signed manifest: the server is not trusted to say its own
//! artifacts are intact. `export` and `import` move signed bundles between installations.

use std::path::Path;

use anyhow::{anyhow, Context};
use factory_registry::{verify_file, ModelManifest, NoteVerifier};
use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::args::{Declared, ExportFormat, ImportGgufArgs, ImportHfArgs, Remote};
use crate::client::{api_key, call, error_message, send_bytes, tenant_query};

fn split_reference(text: &str) -> anyhow::Result<(&str, &str)> {
    text.split_once('@')
        .filter(|(name, version)| !name.is_empty() && !version.is_empty())
        .ok_or_else(|| anyhow!("{text:?}: expected NAME@VERSION or NAME@ALIAS"))
}

fn url(remote: &Remote, path: &str) -> String {
    format!("{}{path}", remote.url.trim_end_matches('/'))
}

async fn get_bytes(remote: &Remote, path: &str) -> anyhow::Result<Vec<u8>> {
    let response = reqwest::Client::new()
        .get(url(remote, path))
        .bearer_auth(api_key(remote)?)
        .send()
        .await
        .with_context(|| format!("cannot reach the factory at {}", remote.url))?;
    let status = response.status();
    let bytes = response.bytes().await?;
    if !status.is_success() {
        return Err(error_message(status, &String::from_utf8_lossy(&bytes)));
    }
    Ok(bytes.to_vec())
}

/// Verifies NAME@VERSION: the manifest's signature against `key` (or, without one, the keys
/// the server says it trusts, which is said on stderr) and every file against its digest.
pub async fn verify(remote: &Remote, reference: &str, key: Option<&str>, tenant: Option<&str>) -> anyhow::Result<()> {
    let (name, version) = split_reference(reference)?;
    let base = format!("/api/v1/models/{name}/versions/{version}");
    let note = String::from_utf8(get_bytes(remote, &format!("{base}/manifest{}", tenant_query(tenant, "?"))).await?)
        .context("the manifest is not UTF-8")?;
    let trusted: Vec<NoteVerifier> = match key {
        Some(key) => vec![NoteVerifier::from_verifier_key(key.trim()).map_err(|e| anyhow!("--key: {e}"))?],
        None => {
            eprintln!("note: checking against the keys the server trusts; pin one with --key for an independent check");
            let keys = call(remote, Method::GET, "/api/v1/models/signing-key", None).await?;
            keys["trusted"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str())
                .map(|k| NoteVerifier::from_verifier_key(k).map_err(|e| anyhow!("server key {k}: {e}")))
                .collect::<anyhow::Result<_>>()?
        }
    };
    let (manifest, signer) =
        ModelManifest::open(&note, &trusted).map_err(|e| anyhow!("{reference} FAILED verification: {e}"))?;
    println!("{} signature ok (signed by {signer})", manifest.reference());
    let mut failures = Vec::new();
    for file in &manifest.files {
        let path = format!("{base}/files/{}{}", file.path, tenant_query(tenant, "?"));
        match get_bytes(remote, &path).await {
            Ok(bytes) => match verify_file(file, &bytes) {
                Ok(()) => println!("  {} ok ({} bytes, sha256 {})", file.path, file.size, file.digest),
                Err(error) => failures.push(error.to_string()),
            },
            Err(error) => failures.push(format!("{}: {error}", file.path)),
        }
    }
    if !failures.is_empty() {
        for failure in &failures {
            println!("  FAILED {failure}");
        }
        return Err(anyhow!("{reference} FAILED verification: {} of {} files", failures.len(), manifest.files.len()));
    }
    println!("{} verified: {} files", manifest.reference(), manifest.files.len());
    Ok(())
}

/// Streams NAME@VERSION's bundle to `out` (written beside it, renamed when whole).
pub async fn export(
    remote: &Remote,
    reference: &str,
    out: &Path,
    format: ExportFormat,
    destination: Option<&str>,
    tenant: Option<&str>,
) -> anyhow::Result<()> {
    let (name, version) = split_reference(reference)?;
    let what = match format {
        ExportFormat::Bundle => "bundle",
        ExportFormat::Gguf => "gguf",
    };
    if format == ExportFormat::Gguf && destination.is_none() {
        return Err(anyhow!("a GGUF export leaves the factory: name where it goes with --destination"));
    }
    let mut path = format!("/api/v1/models/{name}/versions/{version}/{what}{}", tenant_query(tenant, "?"));
    if let Some(destination) = destination {
        let separator = if path.contains('?') { '&' } else { '?' };
        path.push_str(&format!("{separator}destination={destination}"));
    }
    let response = reqwest::Client::new()
        .get(url(remote, &path))
        .bearer_auth(api_key(remote)?)
        .send()
        .await
        .with_context(|| format!("cannot reach the factory at {}", remote.url))?;
    let status = response.status();
    if !status.is_success() {
        return Err(error_message(status, &response.text().await?));
    }
    let partial = out.with_extension("partial");
    let mut file =
        tokio::fs::File::create(&partial).await.with_context(|| format!("cannot write {}", partial.display()))?;
    let mut written = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the export broke off")?;
        file.write_all(&chunk).await?;
        written += chunk.len() as u64;
    }
    file.flush().await?;
    drop(file);
    tokio::fs::rename(&partial, out).await?;
    match format {
        ExportFormat::Bundle => {
            println!("wrote {} ({written} bytes): {reference}, signed manifest and files", out.display())
        }
        ExportFormat::Gguf => println!("wrote {} ({written} bytes): {reference} as GGUF", out.display()),
    }
    Ok(())
}

async fn post_tar(remote: &Remote, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
    send_bytes(remote, Method::POST, path, "application/x-tar", body).await
}

pub async fn import(remote: &Remote, file: &Path, tenant: Option<&str>) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let version = post_tar(remote, &format!("/api/v1/models/import{}", tenant_query(tenant, "?")), bytes).await?;
    println!("{}", serde_json::to_string_pretty(&version)?);
    Ok(())
}

/// Sends the directory's model files as a tar; the server checks it loads as a Llama.
pub async fn import_hf(args: &ImportHfArgs) -> anyhow::Result<()> {
    let declared = &args.declared;
    let mut tar = Vec::new();
    let mut sent = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(&args.dir)
        .with_context(|| format!("cannot read {}", args.dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| factory_registry::is_hf_file(name))
        .collect();
    names.sort();
    for name in &names {
        let path = args.dir.join(name);
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        tar.extend(factory_registry::tar_header(name, bytes.len() as u64)?);
        tar.extend_from_slice(&bytes);
        tar.extend(factory_registry::tar_padding(bytes.len() as u64));
        sent.push(name.as_str());
    }
    if !sent.contains(&"model.safetensors") && !sent.contains(&factory_registry::HF_SHARD_INDEX) {
        return Err(anyhow!("{} has no model.safetensors (nor a sharded checkpoint's index)", args.dir.display()));
    }
    tar.extend(factory_registry::tar_end());
    eprintln!("importing {} from {}: {}", declared.name, args.dir.display(), sent.join(", "));
    let path = format!("/api/v1/models/{}/import-hf?{}", declared.name, declared_query(declared));
    let version = post_tar(&declared.remote, &path, tar).await?;
    println!("{}", serde_json::to_string_pretty(&version)?);
    Ok(())
}

/// Streams a GGUF file to the server (never whole in memory); the server checks it whole.
pub async fn import_gguf(args: &ImportGgufArgs) -> anyhow::Result<()> {
    let declared = &args.declared;
    let file =
        tokio::fs::File::open(&args.file).await.with_context(|| format!("cannot read {}", args.file.display()))?;
    let size = file.metadata().await?.len();
    eprintln!("importing {} from {} ({size} bytes)", declared.name, args.file.display());
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    let path = format!("/api/v1/models/{}/import-gguf?{}", declared.name, declared_query(declared));
    let version = match send_bytes(&declared.remote, Method::POST, &path, "application/octet-stream", body).await {
        Ok(version) => version,
        Err(error) => return Err(refusal_before_the_body(&declared.remote, &path).await.unwrap_or(error)),
    };
    println!("{}", serde_json::to_string_pretty(&version)?);
    Ok(())
}

/// An import the server refuses before reading its body (authorization, residency) may close
/// the connection while the file is still being sent, so the client sees a broken pipe instead
/// of the answer. Asked again with an empty body (which can register nothing), the server says
/// why; only such a refusal is returned.
async fn refusal_before_the_body(remote: &Remote, path: &str) -> Option<anyhow::Error> {
    let response = reqwest::Client::new()
        .post(url(remote, path))
        .bearer_auth(api_key(remote).ok()?)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(Vec::new())
        .send()
        .await
        .ok()?;
    let status = response.status();
    let refused = matches!(status.as_u16(), 401 | 403 | 404 | 409 | 429);
    refused.then_some(error_message(status, &response.text().await.ok()?))
}

/// The query an import declares its model with.
fn declared_query(declared: &Declared) -> String {
    let mut query = format!("jurisdiction={}&classification={}", declared.jurisdiction, declared.classification);
    if let Some(intended_use) = &declared.intended_use {
        query.push_str(&format!("&intended_use={}", encode_query(intended_use)));
    }
    query.push_str(&tenant_query(declared.tenant.name(), "&"));
    query
}

fn encode_query(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
