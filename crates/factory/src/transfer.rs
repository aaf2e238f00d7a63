//! `factory dataset ingest` and `download`: large bodies streamed to and from the server with
//! a progress bar, never read whole into memory.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, Context};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncWriteExt;

use crate::args::{IngestArgs, Remote};
use crate::client::{api_key, error_message, tenant_query};

/// The format a file name suggests, looking through a .gz or .zst suffix.
fn format_from_name(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let name = name.trim_end_matches(".gz").trim_end_matches(".zst");
    [("jsonl", "jsonl"), ("ndjson", "jsonl"), ("csv", "csv"), ("parquet", "parquet"), ("txt", "text")]
        .into_iter()
        .find(|(extension, _)| name.ends_with(&format!(".{extension}")))
        .map(|(_, format)| format)
}

fn progress_bar(length: Option<u64>) -> ProgressBar {
    let bar = match length {
        Some(length) => ProgressBar::new(length),
        None => ProgressBar::new_spinner(),
    };
    let template = "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

pub async fn ingest(args: &IngestArgs) -> anyhow::Result<()> {
    let remote = &args.remote;
    let key = api_key(remote)?;
    let format = match args.format.as_deref() {
        Some(format) => format.to_string(),
        None => format_from_name(&args.file)
            .ok_or_else(|| anyhow!("cannot tell the format of {}; pass --format", args.file.display()))?
            .to_string(),
    };
    let file =
        tokio::fs::File::open(&args.file).await.with_context(|| format!("cannot open {}", args.file.display()))?;
    let length = file.metadata().await?.len();
    let bar = progress_bar(Some(length));
    let counted = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            counted.inc(chunk.len() as u64);
        }
    });
    let mut query = format!("format={format}&on_error={}&dedup={}", args.on_error, args.dedup);
    if let Some(column) = &args.text_column {
        query.push_str(&format!("&text_column={column}"));
    }
    if args.paragraphs {
        query.push_str("&paragraphs=true");
    }
    query.push_str(&tenant_query(args.tenant.name(), "&"));
    let url = format!("{}/api/v1/datasets/{}/versions?{query}", remote.url.trim_end_matches('/'), args.name);
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(key)
        .header(reqwest::header::CONTENT_LENGTH, length)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .with_context(|| format!("cannot reach the factory at {}", remote.url))?;
    bar.set_message("server finishing");
    let status = response.status();
    let text = response.text().await?;
    bar.finish_and_clear();
    if !status.is_success() {
        if let Ok(body) = serde_json::from_str::<serde_json::Value>(&text) {
            for row in body["error"]["rows"].as_array().into_iter().flatten().take(10) {
                eprintln!("  line {}: {}", row["line"], row["message"].as_str().unwrap_or_default());
            }
        }
        return Err(error_message(status, &text));
    }
    let report: serde_json::Value = serde_json::from_str(&text)?;
    let seconds = started.elapsed().as_secs_f64();
    let rows = report["rows"].as_u64().unwrap_or(0);
    println!(
        "{} version {}: {rows} rows ({} skipped) in {seconds:.1} s, {:.0} rows/s, {:.1} MB/s",
        args.name,
        report["version"],
        report["rows_skipped"],
        rows as f64 / seconds.max(1e-9),
        length as f64 / 1e6 / seconds.max(1e-9)
    );
    println!("  manifest {}", report["manifest_digest"].as_str().unwrap_or_default());
    println!("  pii {}", report["pii"]);
    if !report["dedup"].is_null() {
        println!("  dedup {}", report["dedup"]);
    }
    for error in report["errors"].as_array().into_iter().flatten().take(10) {
        println!("  skipped line {}: {}", error["line"], error["message"].as_str().unwrap_or_default());
    }
    Ok(())
}

pub async fn download(
    remote: &Remote,
    name: &str,
    version: i64,
    output: &Path,
    tenant: Option<&str>,
) -> anyhow::Result<()> {
    let key = api_key(remote)?;
    let url = format!(
        "{}/api/v1/datasets/{name}/versions/{version}/download{}",
        remote.url.trim_end_matches('/'),
        tenant_query(tenant, "?")
    );
    let response = reqwest::Client::new()
        .get(&url)
        .bearer_auth(key)
        .send()
        .await
        .with_context(|| format!("cannot reach the factory at {}", remote.url))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await?;
        return Err(error_message(status, &text));
    }
    let bar = progress_bar(response.content_length());
    // Written beside the target and renamed at the end, so a broken download leaves no file.
    let partial = output.with_extension("partial");
    let mut file =
        tokio::fs::File::create(&partial).await.with_context(|| format!("cannot write {}", partial.display()))?;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the download broke off")?;
        file.write_all(&chunk).await?;
        bar.inc(chunk.len() as u64);
    }
    file.flush().await?;
    drop(file);
    tokio::fs::rename(&partial, output).await?;
    bar.finish_and_clear();
    println!("wrote {} ({} bytes)", output.display(), bar.position());
    Ok(())
}
