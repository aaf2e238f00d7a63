//! A dataset's pages: its versions and the upload form (the page's script sends the file to the
//! API's ingest with a progress bar), and a version's schema, PII report, profile plots, dedup
//! report, lineage and first rows, masked as the API masks them.

use axum::extract::Path;
use axum::response::Response;
use serde_json::Value;

use super::plot::{self, bars};
use super::{segment, when, Shown, Visit};
use crate::service::datasets;
use crate::service_error::ErrorKind;

/// Rows previewed on a version's page.
const PREVIEW_ROWS: u64 = 20;

pub async fn dataset_page(visit: Visit, Path(name): Path<String>) -> Response {
    visit
        .tenant_page("/console/datasets", async |state, caller, tenant| {
            let (dataset, versions) = datasets::show(state, caller, tenant, &name).await?;
            let versions: Vec<minijinja::Value> = versions
                .iter()
                .rev()
                .map(|v| {
                    minijinja::context! {
                        version => v.version, rows => v.rows, bytes => v.bytes, created => when(v.created_at),
                        by => v.created_by,
                        href => format!("/console/datasets/{}/versions/{}", segment(&name), v.version),
                    }
                })
                .collect();
            let context = minijinja::context! {
                name => dataset.name, classification => dataset.classification.to_string(),
                jurisdiction => dataset.jurisdiction.to_string(), site => dataset.site, owner => dataset.owner,
                description => dataset.description, tags => dataset.tags,
                pii_policy => serde_json::to_string(&dataset.pii_policy).unwrap_or_default(),
                retention_days => dataset.retention_days, created => when(dataset.created_at),
                versions => versions,
                upload_url => format!("/api/v1/datasets/{}/versions", segment(&name)),
            };
            Ok(Shown::new("dataset.html", context))
        })
        .await
}

pub async fn dataset_version_page(visit: Visit, Path((name, version)): Path<(String, i64)>) -> Response {
    visit
        .tenant_page("/console/datasets", async |state, caller, tenant| {
            let loaded = datasets::manifest(state, caller, tenant, &name, version).await?;
            // Rows are read (and audited, when the version kept PII) only for keys that may.
            let preview = match datasets::rows(state, caller, tenant, &name, version, 0, PREVIEW_ROWS).await {
                Ok(read) => Some(read),
                Err(error) if error.kind == ErrorKind::Forbidden => None,
                Err(error) => return Err(error),
            };
            let manifest = &loaded.manifest;
            let columns: Vec<String> = manifest.schema.iter().map(|c| c.name.clone()).collect();
            let rows: Option<Vec<Vec<String>>> = preview.as_ref().map(|read| preview_rows(&columns, &read.rows));
            let masked = preview.as_ref().map(|read| read.masked_columns.clone()).unwrap_or_default();
            let figures = plot::figures(profile_figures(&manifest.profile));
            let dedup: Vec<(String, String)> = manifest
                .dedup
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, value)| !value.is_object())
                .map(|(key, value)| (key.replace('_', " "), cell_text(value)))
                .collect();
            let lineage = plot::lineage(
                "Where this version came from",
                &[
                    manifest.lineage.derived_from.iter().map(|from| plot::Node::plain(from)).collect(),
                    vec![plot::Node::plain(&format!("{name}@{version}"))],
                ],
            );
            let context = minijinja::context! {
                name => name, version => version, digest => loaded.digest, created => when(loaded.created_at),
                rows_total => manifest.rows, rows_skipped => manifest.rows_skipped, shards => manifest.shards.len(),
                classification => manifest.classification, jurisdiction => manifest.jurisdiction, site => manifest.site,
                source => minijinja::context! {
                    digest => manifest.source.digest, bytes => manifest.source.bytes,
                    format => format!("{:?}", manifest.source.format).to_lowercase(),
                    by => manifest.source.uploaded_by, at => manifest.source.uploaded_at,
                },
                schema => schema_rows(manifest), dropped => manifest.dropped_columns, columns => columns, rows => rows,
                masked => masked, figures => figures, dedup => dedup,
                derived_from => manifest.lineage.derived_from, lineage_run => manifest.lineage.run_id,
                lineage => minijinja::Value::from_safe_string(lineage),
                dataset_href => format!("/console/datasets/{}", segment(&name)),
            };
            Ok(Shown::new("dataset_version.html", context))
        })
        .await
}

/// Each column: its type, the PII found in it and what the dataset's policy did with it.
fn schema_rows(manifest: &factory_datasets::VersionManifest) -> Vec<minijinja::Value> {
    let kind_name = |kind| serde_json::to_value(kind).ok().and_then(|k| k.as_str().map(str::to_string));
    manifest
        .schema
        .iter()
        .map(|column| {
            let treatment = manifest.pii_columns.get(&column.name).map(|t| format!("{t:?}").to_lowercase());
            let found = manifest.pii["columns"][&column.name].as_object().into_iter().flatten();
            let kinds: Vec<String> = found.map(|(kind, count)| format!("{kind}: {count}")).collect();
            minijinja::context! {
                name => column.name, kind => kind_name(column.kind), pii => treatment, found => kinds.join(", "),
                text => manifest.text_column.as_deref() == Some(column.name.as_str()),
            }
        })
        .collect()
}

/// The preview's cells, column by column, each clipped to a readable length.
fn preview_rows(columns: &[String], rows: &[serde_json::Map<String, Value>]) -> Vec<Vec<String>> {
    let cell = |row: &serde_json::Map<String, Value>, column: &String| {
        plot::clip(&cell_text(row.get(column).unwrap_or(&Value::Null)), 200)
    };
    rows.iter().map(|row| columns.iter().map(|column| cell(row, column)).collect()).collect()
}

/// A cell as the preview shows it: strings as they are, other values as JSON.
fn cell_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The bins of a histogram (`[{lower, upper, count}]`) as labelled bars.
fn histogram_bars(bins: &Value) -> Vec<(String, f64)> {
    bins.as_array()
        .into_iter()
        .flatten()
        .map(|bin| {
            let label = format!(
                "{}–{}",
                plot::number(bin["lower"].as_f64().unwrap_or(0.0)),
                plot::number(bin["upper"].as_f64().unwrap_or(0.0))
            );
            (label, bin["count"].as_f64().unwrap_or(0.0))
        })
        .collect()
}

/// The profile's plots, each a title and its SVG: per column its value or length histogram and
/// its top values; for the text column, languages, token lengths and document lengths.
fn profile_figures(profile: &Value) -> Vec<(String, String)> {
    let mut figures = Vec::new();
    let mut add = |title: String, drawn: Vec<(String, f64)>| {
        if !drawn.is_empty() {
            figures.push((title.clone(), bars(&title, &drawn)));
        }
    };
    for (column, summary) in profile["columns"].as_object().into_iter().flatten() {
        add(format!("{column}: values"), histogram_bars(&summary["numeric"]["histogram"]));
        add(format!("{column}: text lengths"), histogram_bars(&summary["strings"]["length"]["histogram"]));
        let top: Vec<(String, f64)> = summary["top_values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|top| Some((top["value"].as_str()?.to_string(), top["count"].as_f64()?)))
            .collect();
        add(format!("{column}: top values"), top);
    }
    let text = &profile["text"];
    let languages: Vec<(String, f64)> = text["languages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|share| Some((cell_text(&share["language"]), share["documents"].as_f64()?)))
        .collect();
    add("Languages (documents)".to_string(), languages);
    let lengths: Vec<(String, f64)> = text["token_lengths"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|bin| {
            let plus = if bin["and_longer"].as_bool() == Some(true) { "+" } else { "" };
            Some((format!("{}{plus}", bin["length"].as_u64()?), bin["count"].as_f64()?))
        })
        .collect();
    add("Token lengths (characters)".to_string(), lengths);
    add("Document lengths (characters)".to_string(), histogram_bars(&text["document_characters"]["histogram"]));
    figures
}
