//! Metering: every inference request's usage, cost, latency split and outcome, counted in
//! Prometheus at once and written to the inference log in batches by a background task, off
//! the request path. The queue to the writer is bounded: when it is full a record is dropped
//! and counted (`factory_inference_log_dropped`), never buffered without limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use factory_engine::{FinishReason, Timings, Usage};
use factory_store::inference::InferenceRecord;
use factory_store::Store;
use tokio::sync::{mpsc, watch, Mutex};

use crate::metrics::{DeploymentLabels, InferenceLabels, Metrics, TokenLabels};

/// Records waiting for the writer; past it, records are dropped and counted.
const QUEUE: usize = 10_000;
/// Records written per transaction.
const BATCH: usize = 256;

pub struct InferenceLog {
    sender: mpsc::Sender<LogEntry>,
    receiver: Mutex<Option<mpsc::Receiver<LogEntry>>>,
    metrics: Arc<Metrics>,
}

/// What the writer is sent, in order.
enum LogEntry {
    Record(Box<InferenceRecord>),
    /// An output guardrail stopped answer `id` after its engine had ended it (and the record
    /// was sent): its finish reason becomes `content_filter`.
    Filtered(String),
}

impl InferenceLog {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        InferenceLog { sender, receiver: Mutex::new(Some(receiver)), metrics }
    }

    fn record(&self, record: InferenceRecord) {
        if self.sender.try_send(LogEntry::Record(Box::new(record))).is_err() {
            self.metrics.inference.log_dropped.inc();
        }
    }

    /// Records that an output guardrail stopped answer `id` (`content_filter`), after the
    /// engine's own ending was recorded.
    pub fn content_filtered(&self, id: &str) {
        if self.sender.try_send(LogEntry::Filtered(id.to_string())).is_err() {
            self.metrics.inference.log_dropped.inc();
        }
    }

    /// Writes batches until `stop`, then drains what is queued.
    pub async fn write(self: Arc<Self>, store: Store, mut stop: watch::Receiver<bool>) {
        let Some(mut receiver) = self.receiver.lock().await.take() else { return };
        loop {
            let first = tokio::select! {
                record = receiver.recv() => record,
                _ = stop.changed() => { receiver.close(); receiver.recv().await }
            };
            let Some(first) = first else { return };
            let mut entries = vec![first];
            while entries.len() < BATCH {
                match receiver.try_recv() {
                    Ok(entry) => entries.push(entry),
                    Err(_) => break,
                }
            }
            let mut batch = Vec::with_capacity(entries.len());
            let mut filtered_earlier = Vec::new();
            for entry in entries {
                match entry {
                    LogEntry::Record(record) => batch.push(*record),
                    // Sent after its record: in this batch, or written by an earlier one.
                    LogEntry::Filtered(id) => match batch.iter_mut().find(|record| record.id == id) {
                        Some(record) => record.finish_reason = Some("content_filter".to_string()),
                        None => filtered_earlier.push(id),
                    },
                }
            }
            if !filtered_earlier.is_empty() {
                if let Err(error) = store.mark_inferences_filtered(&filtered_earlier).await {
                    tracing::warn!(%error, "could not record answers stopped by an output guardrail");
                }
            }
            if batch.is_empty() {
                continue;
            }
            if let Err(error) = store.record_inferences(&batch).await {
                tracing::warn!(%error, records = batch.len(), "could not write inference log records; retrying once");
                tokio::time::sleep(Duration::from_millis(200)).await;
                if store.record_inferences(&batch).await.is_err() {
                    self.metrics.inference.log_dropped.inc_by(batch.len() as u64);
                }
            }
        }
    }
}

/// One request's measurements, recorded exactly once: when it ends, or as `cancelled` when it
/// is dropped unfinished (the client hung up mid-stream).
pub struct Meter {
    pub log: Arc<InferenceLog>,
    pub metrics: Arc<Metrics>,
    pub record: InferenceRecord,
    /// Price per 1,000 tokens (prompt, completion).
    pub price: (f64, f64),
    pub started: Instant,
    pub done: bool,
    /// A shadow's answer is logged as `shadow`, never returned.
    pub shadow: bool,
    /// The deployment's limits, charged with what the request used when it ends.
    pub settle: Option<Settlement>,
    /// Set when the deployment's logging policy sampled this request: whether to mask PII.
    pub keep_text: Option<bool>,
    /// The answer called tools.
    pub called_tools: bool,
}

pub struct Settlement {
    pub limits: Arc<crate::limits::Limits>,
    pub spec: crate::limits::LimitsSpec,
    pub scope: String,
    pub subject: crate::limits::Subject,
}

/// Who a metered request is, as its inference log row names it.
pub struct MeteredRequest {
    /// The answer's id, which feedback refers to.
    pub id: String,
    pub tenant: String,
    pub deployment: String,
    /// `completion`, `chat` or `embedding`.
    pub kind: String,
    pub request_id: String,
    pub episode_id: Option<String>,
}

impl Meter {
    /// Starts measuring a request. It is not armed: a refusal before the request reaches a
    /// model is no inference, and records nothing until [`Meter::arm`].
    pub fn new(log: Arc<InferenceLog>, metrics: Arc<Metrics>, request: MeteredRequest) -> Meter {
        let MeteredRequest { id, tenant, deployment, kind, request_id, episode_id } = request;
        let record = InferenceRecord {
            id,
            tenant,
            deployment,
            variant: String::new(),
            kind,
            request_id,
            episode_id,
            status: String::new(),
            finish_reason: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost: 0.0,
            queue_ms: 0.0,
            first_token_ms: 0.0,
            decode_ms: 0.0,
            total_ms: 0.0,
            created_at: factory_core::time::now_millis(),
            prompt_text: None,
            completion_text: None,
            structure_json: None,
            cached_tokens: 0,
        };
        Meter {
            log,
            metrics,
            record,
            price: (0.0, 0.0),
            started: Instant::now(),
            done: true,
            shadow: false,
            settle: None,
            keep_text: None,
            called_tools: false,
        }
    }

    /// Arms the meter once the request reaches `variant`, priced per 1,000 tokens as `price`:
    /// from now on it records exactly once.
    pub fn arm(&mut self, variant: &str, price: (f64, f64)) {
        self.record.variant = variant.to_string();
        self.price = price;
        self.done = false;
    }

    /// `text` as the logging policy keeps it: none unless the request was sampled, PII-masked
    /// unless the policy says otherwise.
    fn kept(&self, text: &str) -> Option<String> {
        let redact = self.keep_text?;
        Some(match redact {
            true => match factory_pii::Detector::new(&[]) {
                Ok(detector) => {
                    let spans = detector.find(text);
                    detector.redact(text, &spans, factory_pii::PiiAction::Mask, &[]).into_owned()
                }
                Err(_) => String::new(),
            },
            false => text.to_string(),
        })
    }

    /// Records the texts if the request was sampled, masked as the policy says.
    pub fn texts(&mut self, prompt: Option<&str>, completion: Option<&str>) {
        if let Some(prompt) = prompt {
            self.record.prompt_text = self.kept(prompt);
        }
        if let Some(completion) = completion {
            self.record.completion_text = self.kept(completion);
        }
    }

    /// Records that the answer called tools (its finish reason is `tool_calls`), and the calls
    /// if the request was sampled.
    pub fn tool_calls(&mut self, calls: serde_json::Value) {
        self.called_tools = true;
        self.structure(serde_json::json!({ "tool_calls": calls }));
    }

    /// Records what the request asked of the answer's shape and the tool calls it got (a JSON
    /// object), if the request was sampled; fields merge into what was recorded before.
    pub fn structure(&mut self, fields: serde_json::Value) {
        if self.keep_text.is_none() || fields.as_object().is_none_or(|fields| fields.is_empty()) {
            return;
        }
        let mut merged: serde_json::Value = self
            .record
            .structure_json
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        if let (Some(merged), serde_json::Value::Object(fields)) = (merged.as_object_mut(), fields) {
            merged.extend(fields);
        }
        self.record.structure_json = self.kept(&merged.to_string());
    }

    pub fn finish(&mut self, reason: Option<FinishReason>, usage: &Usage, timings: &Timings, batch_size: usize) {
        let total_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let labels = DeploymentLabels { deployment: self.record.deployment.clone() };
        let inference = &self.metrics.inference;
        inference.time_to_first_token.get_or_create(&labels).observe(timings.first_token_ms / 1000.0);
        inference.queue.get_or_create(&labels).observe(timings.queue_ms / 1000.0);
        if usage.completion_tokens > 1 {
            let per_token = timings.decode_ms / 1000.0 / (usage.completion_tokens - 1) as f64;
            inference.time_per_output_token.get_or_create(&labels).observe(per_token);
            if per_token > 0.0 {
                inference.decode_tokens_per_second.get_or_create(&labels).observe(1.0 / per_token);
            }
        }
        let engine_ms = timings.first_token_ms + timings.decode_ms;
        inference.gateway_overhead.get_or_create(&labels).observe(((total_ms - engine_ms).max(0.0)) / 1000.0);
        inference.batch_size.observe(batch_size as f64);
        self.record.finish_reason = reason.map(|r| match r {
            FinishReason::Stop if self.called_tools => "tool_calls".to_string(),
            FinishReason::Stop => "stop".to_string(),
            FinishReason::Length => "length".to_string(),
        });
        self.record.prompt_tokens = usage.prompt_tokens as i64;
        self.record.completion_tokens = usage.completion_tokens as i64;
        self.record.cached_tokens = usage.cached_tokens as i64;
        self.record.queue_ms = timings.queue_ms;
        self.record.first_token_ms = timings.first_token_ms;
        self.record.decode_ms = timings.decode_ms;
        self.end("ok", total_ms);
    }

    pub fn fail(&mut self, status: &str) {
        let total_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.end(status, total_ms);
    }

    fn end(&mut self, status: &str, total_ms: f64) {
        if self.done {
            return;
        }
        self.done = true;
        let status = if self.shadow && status == "ok" { "shadow" } else { status };
        let record = &mut self.record;
        record.status = status.to_string();
        record.total_ms = total_ms;
        record.cost =
            (record.prompt_tokens as f64 * self.price.0 + record.completion_tokens as f64 * self.price.1) / 1000.0;
        let inference = &self.metrics.inference;
        let labels = InferenceLabels {
            deployment: record.deployment.clone(),
            variant: record.variant.clone(),
            status: status.to_string(),
        };
        inference.requests.get_or_create(&labels).inc();
        if let Some(settlement) = self.settle.take() {
            let tokens = (record.prompt_tokens + record.completion_tokens).max(0) as u64;
            settlement.limits.settle(&settlement.spec, &settlement.scope, &settlement.subject, tokens, record.cost);
        }
        // `cached`: prompt tokens the prefix cache supplied (a part of `prompt`).
        let counts = [
            ("prompt", record.prompt_tokens),
            ("completion", record.completion_tokens),
            ("cached", record.cached_tokens),
        ];
        for (kind, count) in counts {
            let labels = TokenLabels { deployment: record.deployment.clone(), kind: kind.to_string() };
            inference.tokens.get_or_create(&labels).inc_by(count.max(0) as u64);
        }
        self.log.record(record.clone());
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if !self.done {
            self.fail("cancelled");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::limits::{Limits, LimitsSpec, Subject};

    #[tokio::test]
    async fn a_request_dropped_midway_is_logged_cancelled_and_charged_what_it_used() {
        let metrics = Arc::new(Metrics::new());
        let log = Arc::new(InferenceLog::new(metrics.clone()));
        let mut receiver = log.receiver.lock().await.take().unwrap();
        let limits = Arc::new(Limits::default());
        let spec = LimitsSpec { key_tokens_per_minute: Some(60), ..LimitsSpec::default() };
        let subject = Subject { key: "key_app".to_string(), tenant: "acme".to_string() };
        let request = MeteredRequest {
            id: "chatcmpl-1".to_string(),
            tenant: "acme".to_string(),
            deployment: "chat".to_string(),
            kind: "chat".to_string(),
            request_id: "req".to_string(),
            episode_id: None,
        };
        let mut meter = Meter::new(log.clone(), metrics, request);
        meter.arm("bard@1", (1.0, 2.0));
        meter.settle = Some(Settlement {
            limits: limits.clone(),
            spec: spec.clone(),
            scope: "acme/chat".into(),
            subject: subject.clone(),
        });
        meter.record.prompt_tokens = 40;
        meter.record.completion_tokens = 30;
        drop(meter);
        let Some(LogEntry::Record(logged)) = receiver.recv().await else { panic!("no record") };
        let logged = *logged;
        assert_eq!((logged.status.as_str(), logged.prompt_tokens, logged.completion_tokens), ("cancelled", 40, 30));
        assert!((logged.cost - (40.0 * 1.0 + 30.0 * 2.0) / 1000.0).abs() < 1e-12, "{}", logged.cost);
        // 70 tokens against 60 a minute: the next request waits.
        assert!(limits.admit(&spec, "acme/chat", &subject).await.is_err());
    }
}
