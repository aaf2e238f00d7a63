//! OpenLineage run events: what each run (an ingest today; training runs later) read and
//! wrote, in the shape lineage tools such as Marquez consume.
//!
//! Events are published through the outbox like every other event, on the topic
//! [`TOPIC`], inside the same transaction as the fact they describe (the COMPLETE of an ingest
//! commits with its version). [`LineageSink`] forwards them to a file and/or an HTTP endpoint;
//! delivery is at least once, so a consumer may see an event again after a crash and should
//! key on `run.runId` plus `eventType`.

use std::path::PathBuf;

use factory_store::outbox::{DeliveredEvent, Subscriber};
use factory_store::Event;
use serde_json::{json, Value};

pub const TOPIC: &str = "openlineage.run";
const PRODUCER: &str = "https://sovereign-ai-factory.local/factory";
const SCHEMA_URL: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/definitions/RunEvent";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Start,
    Complete,
    Fail,
}

impl RunState {
    fn as_str(self) -> &'static str {
        match self {
            RunState::Start => "START",
            RunState::Complete => "COMPLETE",
            RunState::Fail => "FAIL",
        }
    }
}

/// A dataset as OpenLineage names it, with its facets.
#[derive(Debug, Clone)]
pub struct LineageDataset {
    pub namespace: String,
    pub name: String,
    pub facets: Value,
}

impl LineageDataset {
    /// A governed dataset of the factory: namespace `factory://<namespace>/<tenant>`, named
    /// by the dataset, with a version facet when the version is known.
    pub fn governed(namespace: &str, tenant: &str, dataset: &str, version: Option<i64>) -> Self {
        let mut facets = serde_json::Map::new();
        if let Some(version) = version {
            facets.insert(
                "version".into(),
                facet("DatasetVersionDatasetFacet", json!({ "datasetVersion": version.to_string() })),
            );
        }
        LineageDataset {
            namespace: format!("factory://{namespace}/{tenant}"),
            name: dataset.to_string(),
            facets: Value::Object(facets),
        }
    }

    /// Bytes uploaded by a client, known by their digest.
    pub fn upload(source_digest: &str, uploaded_by: &str) -> Self {
        LineageDataset {
            namespace: "upload".to_string(),
            name: format!("sha256:{source_digest}"),
            facets: json!({ "ownership": facet("OwnershipDatasetFacet", json!({ "owners": [{ "name": uploaded_by, "type": "uploader" }] })) }),
        }
    }

    pub fn with_facet(mut self, name: &str, value: Value) -> Self {
        if let Value::Object(facets) = &mut self.facets {
            facets.insert(name.to_string(), value);
        }
        self
    }

    fn to_json(&self) -> Value {
        json!({ "namespace": self.namespace, "name": self.name, "facets": self.facets })
    }
}

/// A facet with the `_producer` and `_schemaURL` every OpenLineage facet carries.
pub fn facet(schema: &str, fields: Value) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("_producer".into(), PRODUCER.into());
    object.insert("_schemaURL".into(), format!("https://openlineage.io/spec/facets/1-0-0/{schema}.json").into());
    if let Value::Object(fields) = fields {
        object.extend(fields);
    }
    Value::Object(object)
}

/// One run of one job, as OpenLineage sees it.
#[derive(Debug, Clone)]
pub struct LineageRun {
    pub run_id: uuid::Uuid,
    pub job_namespace: String,
    pub job_name: String,
}

impl LineageRun {
    /// A new run of the job `<tenant>.<kind>.<subject>` in the configured namespace.
    pub fn new(namespace: &str, tenant: &str, kind: &str, subject: &str) -> Self {
        LineageRun {
            run_id: uuid::Uuid::now_v7(),
            job_namespace: namespace.to_string(),
            job_name: format!("{tenant}.{kind}.{subject}"),
        }
    }

    /// The outbox event for one state of this run. A FAIL carries `error` as an error facet.
    pub fn event(
        &self,
        state: RunState,
        inputs: &[LineageDataset],
        outputs: &[LineageDataset],
        error: Option<&str>,
    ) -> Event {
        let mut run_facets = serde_json::Map::new();
        if let Some(message) = error {
            run_facets.insert(
                "errorMessage".into(),
                facet("ErrorMessageRunFacet", json!({ "message": message, "programmingLanguage": "rust" })),
            );
        }
        let payload = json!({
            "eventType": state.as_str(),
            "eventTime": factory_core::time::now_rfc3339(),
            "run": { "runId": self.run_id.to_string(), "facets": run_facets },
            "job": { "namespace": self.job_namespace, "name": self.job_name, "facets": {} },
            "inputs": inputs.iter().map(LineageDataset::to_json).collect::<Vec<_>>(),
            "outputs": outputs.iter().map(LineageDataset::to_json).collect::<Vec<_>>(),
            "producer": PRODUCER,
            "schemaURL": SCHEMA_URL,
        });
        Event::new(TOPIC, payload)
    }
}

/// Forwards lineage events from the outbox to a file (one JSON event per line) or an
/// OpenLineage HTTP endpoint. Each target is its own subscriber with its own cursor, so a
/// failing endpoint is retried (with back-off) without writing the file twice.
pub enum LineageSink {
    File(PathBuf),
    Http { client: reqwest::Client, url: String },
}

impl LineageSink {
    /// One subscriber per configured target.
    pub fn from_config(settings: &factory_config::LineageSettings) -> Vec<Self> {
        let mut sinks = Vec::new();
        if let Some(path) = &settings.file {
            sinks.push(LineageSink::File(path.clone()));
        }
        if let Some(url) = &settings.http_url {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_else(|_| reqwest::Client::new());
            sinks.push(LineageSink::Http { client, url: url.clone() });
        }
        sinks
    }
}

#[async_trait::async_trait]
impl Subscriber for LineageSink {
    fn name(&self) -> &str {
        match self {
            LineageSink::File(_) => "lineage-file",
            LineageSink::Http { .. } => "lineage-http",
        }
    }

    fn wants(&self, topic: &str) -> bool {
        topic == TOPIC
    }

    async fn handle(&self, event: &DeliveredEvent) -> Result<(), String> {
        match self {
            LineageSink::File(path) => {
                let mut line = event.payload.to_string();
                line.push('\n');
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    use std::io::Write;
                    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
                    file.write_all(line.as_bytes())?;
                    file.sync_data()
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("appending to the lineage file: {e}"))
            }
            LineageSink::Http { client, url } => {
                let response = client
                    .post(url)
                    .json(&event.payload)
                    .send()
                    .await
                    .map_err(|e| format!("posting to the lineage endpoint: {e}"))?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("the lineage endpoint answered {}", response.status()))
                }
            }
        }
    }
}
