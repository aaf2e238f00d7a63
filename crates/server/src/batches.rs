//! Running a batch: the `batch.run` job.
//!
//! validating (the input file's lines checked off the async workers, or a dataset version's
//! rows rendered into requests) -> in_progress (each request answered through
//! `service::inference::complete` as the key that created the batch, so every one is
//! authorized, limited, guarded, metered and charged like an interactive one, at the engine's
//! batch priority) -> finalizing (the parts joined into the output and error files, or the
//! answers ingested as a new dataset version) -> completed; or cancelled, expired (each with
//! what was answered), or failed (the input did not validate). Answers are stored in parts of
//! [`PART_LINES`] as they come, so a batch whose worker dies resumes where it was.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use factory_core::{AccessRequest, Action, Principal, Resource, TenantName};
use factory_engine::Priority;
use factory_objects::ObjectDigest;
use factory_store::batches::{Batch, BatchPart, BatchStep, StoredFile, UNFINISHED};
use factory_store::jobs::Job;
use factory_store::Event;
use futures::StreamExt;
use serde::Deserialize;

use crate::caller::Caller;
use crate::service::batches::{DatasetSource, BATCH_KIND, ENDPOINTS};
use crate::service::datasets::{self, Upload};
use crate::service::inference::wire::whole_json;
use crate::service::inference::{self, Answered, Inference};
use crate::service_error::{error_type, ErrorKind, ServiceError};
use crate::state::AppState;
use crate::workers::{JobControl, JobError, JobHandler};

/// Answers stored together as one part: what a crashed batch asks again at most.
const PART_LINES: usize = 256;
/// How often a running batch looks for cancellation, preemption and its deadline.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// The most line errors a batch that fails validation reports.
const MAX_REPORTED_ERRORS: usize = 100;
/// OpenAI's bound on a request's `custom_id`.
const MAX_CUSTOM_ID_BYTES: usize = 512;
/// Rows a dataset batch reads per page.
const ROWS_PER_PAGE: u64 = 1000;
/// Instructions a dataset batch's template may spend on one row.
const TEMPLATE_FUEL: u64 = 200_000;

pub struct BatchHandler {
    pub state: AppState,
}

#[async_trait::async_trait]
impl JobHandler for BatchHandler {
    fn kind(&self) -> &'static str {
        BATCH_KIND
    }

    async fn run(&self, job: &Job, control: JobControl) -> Result<serde_json::Value, JobError> {
        let id = job.payload.get("batch").and_then(|v| v.as_str()).unwrap_or(&job.id).to_string();
        match run(&self.state, &job.tenant, &id, control).await {
            Ok(result) => Ok(result),
            Err(Stop::Preempted) => Err(JobError::Preempted),
            Err(Stop::Failed(message)) => {
                // The last attempt ends the batch as failed, with what it answered written out,
                // rather than leaving it unfinished for good.
                if job.attempts >= job.max_attempts {
                    let ended = match self.state.store.batch(&job.tenant, &id).await {
                        Ok(Some(batch)) => {
                            let errors = vec![error_entry("batch_failed", &message, None)];
                            finish(&self.state, &batch, Ending::Failed(errors), None).await.err()
                        }
                        Ok(None) => None,
                        Err(error) => Some(failed(error)),
                    };
                    if let Some(Stop::Failed(error)) = ended {
                        tracing::error!(batch = %id, %error, "could not end a failed batch");
                    }
                }
                Err(JobError::Failed(message))
            }
        }
    }
}

/// Adds the batch job kind to a worker pool.
pub fn with_batch_handler(mut pool: crate::workers::WorkerPool, state: &AppState) -> crate::workers::WorkerPool {
    pool.handlers.insert(BATCH_KIND, Arc::new(BatchHandler { state: state.clone() }));
    pool
}

enum Stop {
    /// The worker is wanted for more urgent work: the parts stored so far are kept.
    Preempted,
    Failed(String),
}

fn failed(error: impl std::fmt::Display) -> Stop {
    Stop::Failed(error.to_string())
}

/// How the batch ended.
#[derive(Debug, Clone, PartialEq)]
enum Ending {
    Answered,
    Cancelled,
    Expired,
    /// It could not run (its input, its creator's key, its job), for these reasons.
    Failed(Vec<serde_json::Value>),
}

/// A batch's requests: its input's bytes and where each line lies in them.
struct Requests {
    bytes: Bytes,
    lines: Vec<Range<usize>>,
    deployment: String,
}

/// One line of a batch's input, as OpenAI defines it.
#[derive(Debug, Deserialize)]
struct Line {
    custom_id: String,
    method: String,
    url: String,
    body: serde_json::Value,
}

async fn run(state: &AppState, tenant: &TenantName, id: &str, control: JobControl) -> Result<serde_json::Value, Stop> {
    let batch = state.store.batch(tenant, id).await.map_err(failed)?.ok_or_else(|| failed("no such batch"))?;
    if batch.finished() {
        return Ok(serde_json::json!({ "status": batch.status }));
    }
    // The requests run with the rights of the key that made the batch, as they stand now.
    let key = state.store.api_key(&batch.created_by).await.map_err(failed)?;
    let caller = key.filter(|key| key.usable_at(factory_core::time::now_millis())).map(|key| Caller {
        principal: key.principal(),
        request_id: batch.request.id.clone(),
        client_request_id: None,
    });
    if batch.status == "cancelling" {
        return finish(state, &batch, Ending::Cancelled, caller.as_ref()).await;
    }
    let Some(caller) = caller else {
        let errors = vec![error_entry("key_revoked", "the key that created this batch is revoked or expired", None)];
        return finish(state, &batch, Ending::Failed(errors), None).await;
    };
    let requests = match read_requests(state, &caller, &batch).await? {
        Ok(requests) => requests,
        Err(errors) => return finish(state, &batch, Ending::Failed(errors), None).await,
    };
    if batch.status == "validating" {
        let step = BatchStep {
            status: "in_progress".to_string(),
            deployment: Some(requests.deployment.clone()),
            total: Some(requests.lines.len() as i64),
            ..BatchStep::default()
        };
        if step_batch(state, &batch, &["validating"], step, &[], serde_json::json!({})).await?.is_none() {
            // Cancelled while validating.
            return finish(state, &batch, Ending::Cancelled, Some(&caller)).await;
        }
    }
    let ending = answer_all(state, &caller, &batch, Arc::new(requests), control).await?;
    finish(state, &batch, ending, Some(&caller)).await
}

/// What a dataset batch reads, when the batch is one.
fn dataset_source(batch: &Batch) -> Result<Option<DatasetSource>, Stop> {
    batch.request.source.as_ref().map(|source| serde_json::from_value(source.clone())).transpose().map_err(failed)
}

/// One entry of a batch's `errors` list.
fn error_entry(code: &str, message: &str, line: Option<usize>) -> serde_json::Value {
    serde_json::json!({ "code": code, "message": message, "param": null, "line": line })
}

/// The batch's requests, or why its input does not validate.
async fn read_requests(
    state: &AppState,
    caller: &Caller,
    batch: &Batch,
) -> Result<Result<Requests, Vec<serde_json::Value>>, Stop> {
    let bytes = match dataset_source(batch)? {
        // The batch keeps its input's content referenced, even when the file is deleted.
        None => {
            let digest = batch.request.input_digest.as_deref().unwrap_or_default();
            let digest: ObjectDigest = digest.parse().map_err(|_| failed("the batch names an invalid input"))?;
            state.objects.get(&digest).await.map_err(failed)?
        }
        Some(source) => match dataset_requests(state, caller, batch, &source).await? {
            Ok(bytes) => bytes,
            Err(errors) => return Ok(Err(errors)),
        },
    };
    let endpoint = batch.request.endpoint.clone();
    let (max_requests, max_body) = (state.config.batch.max_requests, state.config.serving.max_request_bytes);
    tokio::task::spawn_blocking(move || {
        let (lines, deployment) = match validate(&bytes, &endpoint, max_requests, max_body) {
            Ok(valid) => valid,
            Err(errors) => return Err(errors),
        };
        Ok(Requests { bytes, lines, deployment })
    })
    .await
    .map_err(failed)
}

/// Checks every line of a batch's input as OpenAI does: a JSON object with a unique
/// `custom_id`, `method` `POST`, the batch's `url`, and a `body` naming one deployment for
/// all; no line longer than a request may be; at most `max_requests` lines. Returns where
/// each line lies and the deployment, or the errors by line (1-based).
fn validate(
    bytes: &[u8],
    endpoint: &str,
    max_requests: usize,
    max_body: usize,
) -> Result<(Vec<Range<usize>>, String), Vec<serde_json::Value>> {
    let mut errors = Vec::new();
    let mut lines = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut deployment: Option<String> = None;
    let mut start = 0;
    for (number, raw) in bytes.split(|byte| *byte == b'\n').enumerate() {
        let range = start..start + raw.len();
        start += raw.len() + 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let number = number + 1;
        if errors.len() >= MAX_REPORTED_ERRORS {
            break;
        }
        let mut problem = |code: &str, message: String| errors.push(error_entry(code, &message, Some(number)));
        if lines.len() >= max_requests {
            problem("too_many_requests", format!("a batch holds at most {max_requests} requests (batch.max_requests)"));
            break;
        }
        if raw.len() > max_body {
            problem("request_too_large", format!("a request is at most {max_body} bytes (serving.max_request_bytes)"));
            continue;
        }
        let line: Line = match serde_json::from_slice(raw) {
            Ok(line) => line,
            Err(error) => {
                problem("invalid_json_line", format!("not a request line: {error}"));
                continue;
            }
        };
        if line.custom_id.is_empty() || line.custom_id.len() > MAX_CUSTOM_ID_BYTES {
            problem("invalid_custom_id", format!("custom_id: 1 to {MAX_CUSTOM_ID_BYTES} bytes"));
        } else if !seen.insert(line.custom_id.clone()) {
            problem("duplicate_custom_id", format!("custom_id {:?} is used twice", line.custom_id));
        }
        if line.method != "POST" {
            problem("invalid_method", "method: only POST".to_string());
        }
        if line.url != endpoint {
            problem("mismatched_endpoint", format!("url: this batch's requests go to {endpoint}"));
        }
        match line.body.get("model").and_then(|model| model.as_str()) {
            None => problem("missing_required_parameter", "body.model: required".to_string()),
            Some(model) => match &deployment {
                None => deployment = Some(model.to_string()),
                Some(first) if first != model => {
                    problem("mismatched_model", format!("body.model: every request of a batch names {first}"))
                }
                Some(_) => {}
            },
        }
        if line.body.get("stream").and_then(|stream| stream.as_bool()) == Some(true) {
            problem("invalid_request", "body.stream: batches answer whole".to_string());
        }
        lines.push(range);
    }
    match deployment {
        _ if !errors.is_empty() => Err(errors),
        None => Err(vec![error_entry("empty_file", "the input holds no requests", None)]),
        Some(deployment) => Ok((lines, deployment)),
    }
}

/// A dataset batch's requests as JSONL: each row (read as the batch's creator reads it, PII
/// masked for roles that see it masked, the read audited) rendered by the template into one
/// chat message. Bounded like an uploaded file.
async fn dataset_requests(
    state: &AppState,
    caller: &Caller,
    batch: &Batch,
    source: &DatasetSource,
) -> Result<Result<Bytes, Vec<serde_json::Value>>, Stop> {
    let limit = state.config.batch.max_file_bytes as usize;
    let mut bytes = Vec::new();
    let mut offset = 0u64;
    loop {
        let page = match rows_page(state, caller, batch, source, offset).await {
            Ok(page) => page,
            Err(error) => {
                let message = format!("reading {}@{}: {}", source.dataset, source.version, error.message);
                return Ok(Err(vec![error_entry("unreadable_dataset", &message, None)]));
            }
        };
        if page.rows.is_empty() {
            break;
        }
        let (template, deployment, extra) =
            (source.template.clone(), source.deployment.clone(), source.request.clone());
        let first = offset;
        offset += page.rows.len() as u64;
        let bounds = Bounds { line: state.config.serving.max_request_bytes, total: limit.saturating_sub(bytes.len()) };
        let rendered =
            tokio::task::spawn_blocking(move || render_rows(&template, &deployment, &extra, &page.rows, first, bounds))
                .await
                .map_err(failed)?;
        match rendered {
            Ok(lines) => bytes.extend_from_slice(&lines),
            Err(errors) => return Ok(Err(errors)),
        }
    }
    Ok(Ok(Bytes::from(bytes)))
}

/// A page of a dataset batch's rows from `offset`, read as its creator reads them.
async fn rows_page(
    state: &AppState,
    caller: &Caller,
    batch: &Batch,
    source: &DatasetSource,
    offset: u64,
) -> Result<datasets::RowsRead, ServiceError> {
    datasets::rows(state, caller, &batch.request.tenant, &source.dataset, source.version, offset, ROWS_PER_PAGE).await
}

/// What rendered requests may take, in bytes: each line, and all of a page's lines.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    line: usize,
    total: usize,
}

/// A writer that refuses bytes past its capacity, so a template cannot render more than a
/// request may hold (fuel counts instructions, not the bytes one instruction writes).
struct Capped {
    written: Vec<u8>,
    capacity: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.written.len() + bytes.len() > self.capacity {
            return Err(std::io::Error::other("the rendered message is larger than a request may be"));
        }
        self.written.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Request lines for `rows` (the first is row `first`): custom ids `row-N`, each line and
/// all of them within `bounds`.
fn render_rows(
    template: &str,
    deployment: &str,
    extra: &serde_json::Map<String, serde_json::Value>,
    rows: &[serde_json::Map<String, serde_json::Value>],
    first: u64,
    bounds: Bounds,
) -> Result<Vec<u8>, Vec<serde_json::Value>> {
    let mut environment = minijinja::Environment::new();
    environment.set_fuel(Some(TEMPLATE_FUEL));
    let template = environment
        .template_from_str(template)
        .map_err(|e| vec![error_entry("invalid_template", &e.to_string(), None)])?;
    let mut out = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let row_number = first + index as u64;
        let line_number = Some(row_number as usize + 1);
        let mut capped = Capped { written: Vec::new(), capacity: bounds.line };
        template
            .render_captured_to(row, &mut capped)
            .map_err(|e| vec![error_entry("invalid_template", &format!("row {row_number}: {e}"), line_number)])?;
        let content = String::from_utf8_lossy(&capped.written).into_owned();
        let mut body = extra.clone();
        body.insert("model".into(), deployment.into());
        body.insert("messages".into(), serde_json::json!([{ "role": "user", "content": content }]));
        let line = serde_json::json!({
            "custom_id": format!("row-{row_number}"), "method": "POST", "url": ENDPOINTS[0], "body": body,
        });
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
        if out.len() > bounds.total {
            let message = "the rendered requests exceed batch.max_file_mb";
            return Err(vec![error_entry("input_too_large", message, line_number)]);
        }
    }
    Ok(out)
}

/// Answers the requests not yet in a stored part, `2 x batch.concurrency` outstanding (the
/// engine serves interactive requests first), storing the answers in parts as they complete in
/// order, until all are answered, the batch is cancelled or expires, or the worker is wanted.
///
/// The requests run on a task of their own that only answers them: a request in flight may
/// hold a database connection, so the stream of them must keep being polled while this loop
/// waits on the store (a stream polled only between the loop's own waits starves them, and
/// the loop then waits for a connection one of them holds).
async fn answer_all(
    state: &AppState,
    caller: &Caller,
    batch: &Batch,
    requests: Arc<Requests>,
    control: JobControl,
) -> Result<Ending, Stop> {
    let parts = state.store.batch_parts(&batch.request.id).await.map_err(failed)?;
    let start = parts.iter().map(|part| (part.first_line + part.lines) as usize).max().unwrap_or(0);
    let mut part = PartWriter { number: parts.len() as i64, first_line: start, ..PartWriter::default() };
    let concurrency = state.config.batch.concurrency.max(1) * 2;
    let (sender, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let answering = {
        let (state, caller, batch, requests) = (state.clone(), caller.clone(), batch.clone(), requests.clone());
        tokio::spawn(async move {
            let lines = requests.lines.get(start..).unwrap_or_default().to_vec();
            let mut answered = futures::stream::iter(lines)
                .enumerate()
                .map(|(offset, range)| {
                    answer_line(&state, &caller, &batch, requests.bytes.slice(range), start + offset)
                })
                .buffered(concurrency);
            while let Some(answer) = answered.next().await {
                if sender.send(answer).is_err() {
                    return;
                }
            }
        })
    };
    // Dropping the task's requests drops their engine sequences at the next step.
    let answering_guard = AbortOnDrop(answering);
    let mut watch = tokio::time::interval(WATCH_INTERVAL);
    let ending = loop {
        tokio::select! {
            answered = answers.recv() => match answered {
                Some(line) => {
                    part.push(line);
                    if part.lines == PART_LINES {
                        part.store(state, batch).await?;
                    }
                }
                None => break Ending::Answered,
            },
            _ = watch.tick() => {
                if *control.preempt.borrow() {
                    drop(answering_guard);
                    part.take_answered(&mut answers);
                    part.store(state, batch).await?;
                    return Err(Stop::Preempted);
                }
                if *control.cancel.borrow() {
                    break Ending::Cancelled;
                }
                if factory_core::time::now_millis() >= batch.request.expires_at {
                    break Ending::Expired;
                }
                let now = state.store.batch(&batch.request.tenant, &batch.request.id).await.map_err(failed)?;
                if now.is_none_or(|now| now.status == "cancelling") {
                    break Ending::Cancelled;
                }
            }
        }
    };
    drop(answering_guard);
    part.take_answered(&mut answers);
    if ending == Ending::Expired {
        // What the window left unanswered is reported as OpenAI does, one error line each.
        for range in requests.lines.get(part.first_line + part.lines..).unwrap_or_default() {
            let custom_id = serde_json::from_slice::<Line>(&requests.bytes[range.clone()])
                .map(|line| line.custom_id)
                .unwrap_or_default();
            part.push_expired(custom_id);
        }
    }
    part.store(state, batch).await?;
    Ok(ending)
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One answered line: its custom id and OpenAI's `response` (status and body).
struct Answer {
    custom_id: String,
    status: u16,
    request_id: String,
    body: serde_json::Value,
}

/// Answers line `index` (0-based) through the governed inference path, as the batch's creator,
/// waiting out rate limits and a busy engine until the batch's deadline.
async fn answer_line(state: &AppState, caller: &Caller, batch: &Batch, bytes: Bytes, index: usize) -> Answer {
    let request_id = format!("{}#{}", batch.request.id, index + 1);
    let caller = Caller { request_id: request_id.clone(), ..caller.clone() };
    let line: Line = match serde_json::from_slice(&bytes) {
        Ok(line) => line,
        Err(error) => {
            let error = ServiceError::invalid(format!("not a request line: {error}"));
            return Answer::failed(String::new(), request_id, &error);
        }
    };
    let custom_id = line.custom_id;
    loop {
        let decoded = match batch.request.endpoint.as_str() {
            "/v1/completions" => Inference::completion(line.body.clone(), None),
            _ => Inference::chat(line.body.clone(), None),
        };
        let mut request = match decoded {
            Ok(request) => request,
            Err(error) => return Answer::failed(custom_id, request_id, &error),
        };
        request.priority = Priority::Batch;
        let error = match inference::complete(state, &caller, request).await {
            Ok(Answered::Whole(completion)) => {
                return Answer { custom_id, status: 200, request_id, body: whole_json(completion) };
            }
            Ok(Answered::Refused { status, body }) => {
                let body =
                    serde_json::from_str(&body).unwrap_or_else(|_| serde_json::json!({ "error": { "message": body } }));
                return Answer { custom_id, status, request_id, body };
            }
            Ok(_) => ServiceError::internal("a batch request was answered as a stream"),
            Err(error) => error,
        };
        let waits = matches!(
            error.kind,
            ErrorKind::RateLimited
                | ErrorKind::EngineOverloaded
                | ErrorKind::Overloaded
                | ErrorKind::TenantInFlightLimit
        );
        if !waits || factory_core::time::now_millis() >= batch.request.expires_at {
            return Answer::failed(custom_id, request_id, &error);
        }
        let wait = error.retry_after_secs.unwrap_or(1).clamp(1, 30);
        // The engine frees a place within a step; a rate limit says when.
        let pause = if error.kind == ErrorKind::EngineOverloaded {
            Duration::from_millis(50)
        } else {
            Duration::from_secs(wait)
        };
        tokio::time::sleep(pause).await;
    }
}

impl Answer {
    /// A request the factory refused, with OpenAI's error body.
    fn failed(custom_id: String, request_id: String, error: &ServiceError) -> Answer {
        let body = serde_json::json!({ "error": {
            "message": error.message, "type": error_type(error.kind.status()), "param": error.param,
            "code": error.kind.code(),
        } });
        Answer { custom_id, status: error.kind.status(), request_id, body }
    }
}

/// The answers of the part being filled: output lines (status 200) and error lines.
#[derive(Default)]
struct PartWriter {
    number: i64,
    first_line: usize,
    lines: usize,
    output: Vec<u8>,
    errors: Vec<u8>,
    completed: i64,
    failed: i64,
}

impl PartWriter {
    /// The answers already made when the requests stopped (the answering task is gone, so
    /// none follow), so that none is asked or charged twice.
    fn take_answered(&mut self, answers: &mut tokio::sync::mpsc::UnboundedReceiver<Answer>) {
        while let Ok(answer) = answers.try_recv() {
            self.push(answer);
        }
    }

    /// A request the completion window left unanswered.
    fn push_expired(&mut self, custom_id: String) {
        let error = serde_json::json!({ "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired." });
        self.write(false, custom_id, serde_json::Value::Null, error);
    }

    fn push(&mut self, answer: Answer) {
        let response = serde_json::json!({
            "status_code": answer.status, "request_id": answer.request_id, "body": answer.body,
        });
        self.write(answer.status == 200, answer.custom_id, response, serde_json::Value::Null);
    }

    /// One line of the output (`ok`) or the error file, as OpenAI writes them.
    fn write(&mut self, ok: bool, custom_id: String, response: serde_json::Value, error: serde_json::Value) {
        let line = serde_json::json!({
            "id": format!("batch_req_{}", uuid::Uuid::new_v4().simple()), "custom_id": custom_id,
            "response": response, "error": error,
        });
        let out = if ok { &mut self.output } else { &mut self.errors };
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
        if ok {
            self.completed += 1;
        } else {
            self.failed += 1;
        }
        self.lines += 1;
    }

    /// Stores the part (nothing when empty) and starts the next.
    async fn store(&mut self, state: &AppState, batch: &Batch) -> Result<(), Stop> {
        if self.lines == 0 {
            return Ok(());
        }
        let mut lease = state.pending_objects.lease(state.store.clone(), state.objects.clone());
        let mut digests = Vec::new();
        for bytes in [std::mem::take(&mut self.output), std::mem::take(&mut self.errors)] {
            lease.hold(ObjectDigest::of(&bytes)).await;
            digests.push(state.objects.put_bytes(Bytes::from(bytes)).await.map_err(failed)?.to_string());
        }
        let part = BatchPart {
            part: self.number,
            first_line: self.first_line as i64,
            lines: self.lines as i64,
            output_digest: digests[0].clone(),
            error_digest: digests[1].clone(),
            completed: self.completed,
            failed: self.failed,
        };
        let stored = state.store.add_batch_part(&batch.request.tenant, &batch.request.id, &part).await;
        lease.keep().await;
        stored.map_err(failed)?;
        *self =
            PartWriter { number: self.number + 1, first_line: self.first_line + self.lines, ..PartWriter::default() };
        Ok(())
    }
}

/// Moves the batch as the factory itself (`batch.run`), audited, recording the files it wrote;
/// `None` when it was no longer in one of `from`.
async fn step_batch(
    state: &AppState,
    batch: &Batch,
    from: &[&str],
    step: BatchStep,
    new_files: &[StoredFile],
    details: serde_json::Value,
) -> Result<Option<Batch>, Stop> {
    let request = AccessRequest::new(
        &Principal::system(),
        Action::BatchRun,
        Resource::batch(&batch.request.tenant, &batch.request.id),
    );
    let mut change = state.store.begin_change(state.pdp.as_ref(), request, &batch.request.id).await.map_err(failed)?;
    for file in new_files {
        change.add_file(file).await.map_err(failed)?;
    }
    let Some(moved) = change.step_batch(&batch.request.tenant, &batch.request.id, from, &step).await.map_err(failed)?
    else {
        return Ok(None);
    };
    let mut payload = serde_json::json!({
        "tenant": batch.request.tenant, "batch": batch.request.id, "status": moved.status, "total": moved.total,
        "completed": moved.completed, "failed": moved.failed,
    });
    payload["details"] = details;
    change.commit(payload.clone(), Event::new(&format!("batch.{}", moved.status), payload)).await.map_err(failed)?;
    Ok(Some(moved))
}

/// Writes what the batch answered and ends it: the output and error files (a dataset batch's
/// answers become a version of its output dataset instead of an output file).
async fn finish(
    state: &AppState,
    batch: &Batch,
    ending: Ending,
    caller: Option<&Caller>,
) -> Result<serde_json::Value, Stop> {
    let mut step = BatchStep::default();
    let status = match ending {
        Ending::Answered => {
            let finalizing = BatchStep { status: "finalizing".to_string(), ..BatchStep::default() };
            let moved = step_batch(state, batch, &["in_progress"], finalizing, &[], serde_json::json!({})).await?;
            // A cancel that came as the last answers did wins: the batch ends as asked.
            let now = match moved {
                Some(moved) => moved,
                None => state
                    .store
                    .batch(&batch.request.tenant, &batch.request.id)
                    .await
                    .map_err(failed)?
                    .unwrap_or_else(|| batch.clone()),
            };
            if now.status == "cancelling" {
                "cancelled"
            } else {
                "completed"
            }
        }
        Ending::Cancelled => "cancelled",
        Ending::Expired => "expired",
        Ending::Failed(errors) => {
            step.errors = Some(serde_json::json!({ "object": "list", "data": errors }));
            "failed"
        }
    };
    step.status = status.to_string();
    let parts = state.store.batch_parts(&batch.request.id).await.map_err(failed)?;
    let mut files = Vec::new();
    match (&dataset_source(batch)?, caller) {
        (Some(source), Some(caller)) if status != "failed" && parts.iter().any(|part| part.completed > 0) => {
            step.output_dataset = Some(ingest_answers(state, caller, batch, source, &parts).await?);
        }
        (Some(_), _) => {}
        (None, _) => {
            let digests: Vec<&str> =
                parts.iter().filter(|part| part.completed > 0).map(|part| part.output_digest.as_str()).collect();
            if let Some(file) = joined_file(state, batch, &digests, "output").await? {
                step.output_file_id = Some(file.id.clone());
                files.push(file);
            }
        }
    }
    let errors: Vec<&str> =
        parts.iter().filter(|part| part.failed > 0).map(|part| part.error_digest.as_str()).collect();
    if let Some(file) = joined_file(state, batch, &errors, "error").await? {
        step.error_file_id = Some(file.id.clone());
        files.push(file);
    }
    let details = serde_json::json!({ "files": files.iter().map(|file| &file.id).collect::<Vec<_>>() });
    step_batch(state, batch, &UNFINISHED, step, &files, details).await?;
    Ok(serde_json::json!({ "status": status }))
}

/// One file of the parts' objects `digests` joined in order (`None` when they hold nothing),
/// owned by the batch's creator.
async fn joined_file(
    state: &AppState,
    batch: &Batch,
    digests: &[&str],
    kind: &str,
) -> Result<Option<StoredFile>, Stop> {
    if digests.is_empty() {
        return Ok(None);
    }
    let mut parsed = Vec::with_capacity(digests.len());
    for digest in digests {
        parsed.push(digest.parse::<ObjectDigest>().map_err(|_| failed("a part names an invalid object"))?);
    }
    let objects = state.objects.clone();
    let chunks = futures::stream::iter(parsed).then(move |digest| {
        let objects = objects.clone();
        async move { objects.get(&digest).await.map_err(std::io::Error::other) }
    });
    let receipt = state.objects.put_stream(Box::pin(chunks)).await.map_err(failed)?;
    if receipt.size == 0 {
        return Ok(None);
    }
    Ok(Some(StoredFile {
        id: factory_core::secrets::new_id("file"),
        tenant: batch.request.tenant.clone(),
        purpose: "batch_output".to_string(),
        filename: format!("{}_{kind}.jsonl", batch.request.id),
        bytes: receipt.size as i64,
        digest: receipt.digest.to_string(),
        created_at: factory_core::time::now_millis(),
        created_by: batch.created_by.clone(),
    }))
}

/// A dataset batch's answers as the next version of its output dataset: each answered row
/// (read again as its creator reads it) with `answer`, `finish_reason`, `prompt_tokens` and
/// `completion_tokens`, ingested like any upload (PII scanned under the output's policy),
/// naming what it derives from. Returns the version made.
async fn ingest_answers(
    state: &AppState,
    caller: &Caller,
    batch: &Batch,
    source: &DatasetSource,
    parts: &[BatchPart],
) -> Result<serde_json::Value, Stop> {
    let mut answers = std::collections::HashMap::new();
    for part in parts.iter().filter(|part| part.completed > 0) {
        let digest: ObjectDigest = part.output_digest.parse().map_err(|_| failed("a part names an invalid object"))?;
        let bytes = state.objects.get(&digest).await.map_err(failed)?;
        for line in bytes.split(|byte| *byte == b'\n').filter(|line| !line.is_empty()) {
            let line: serde_json::Value = serde_json::from_slice(line).map_err(failed)?;
            let row: Option<u64> =
                line["custom_id"].as_str().and_then(|id| id.strip_prefix("row-")).and_then(|n| n.parse().ok());
            let body = &line["response"]["body"];
            if let Some(row) = row {
                let answer = serde_json::json!({
                    "answer": body["choices"][0]["message"]["content"],
                    "finish_reason": body["choices"][0]["finish_reason"],
                    "prompt_tokens": body["usage"]["prompt_tokens"],
                    "completion_tokens": body["usage"]["completion_tokens"],
                });
                answers.insert(row, answer);
            }
        }
    }
    let spool = state.spool_dir().join(format!("{}.answers.jsonl", batch.request.id));
    let mut out = Vec::new();
    let mut offset = 0u64;
    loop {
        let page = rows_page(state, caller, batch, source, offset).await.map_err(|e| failed(e.message))?;
        if page.rows.is_empty() {
            break;
        }
        let read = page.rows.len() as u64;
        for (index, mut row) in page.rows.into_iter().enumerate() {
            let Some(answer) = answers.remove(&(offset + index as u64)) else { continue };
            if let serde_json::Value::Object(fields) = answer {
                row.extend(fields);
            }
            out.extend_from_slice(serde_json::Value::Object(row).to_string().as_bytes());
            out.push(b'\n');
        }
        offset += read;
    }
    tokio::fs::create_dir_all(state.spool_dir()).await.map_err(failed)?;
    tokio::fs::write(&spool, &out).await.map_err(failed)?;
    drop(out);
    let file = std::fs::File::open(&spool).map_err(failed)?;
    let upload = Upload {
        format: factory_datasets::Format::Jsonl,
        text_column: Some("answer".to_string()),
        on_error: factory_datasets::OnError::Skip,
        paragraphs: None,
        dedup: factory_datasets::DedupMode::Off,
        max_row_bytes: None,
        shard_rows: None,
        derived_from: source.derived_from.clone(),
    };
    let ingested = datasets::ingest(state, caller, &batch.request.tenant, &source.output, upload, file).await;
    let _ = tokio::fs::remove_file(&spool).await;
    match ingested {
        Ok(recorded) => Ok(serde_json::json!({
            "dataset": source.output, "version": recorded.value.version, "rows": recorded.value.rows,
        })),
        Err(datasets::IngestFailure::Data(error)) => Err(failed(format!("ingesting the answers: {}", error.message))),
        Err(datasets::IngestFailure::Service(error)) => {
            Err(failed(format!("ingesting the answers: {}", error.message)))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn line(id: &str, model: &str) -> String {
        serde_json::json!({
            "custom_id": id, "method": "POST", "url": "/v1/chat/completions",
            "body": { "model": model, "messages": [{ "role": "user", "content": "hi" }] },
        })
        .to_string()
    }

    #[test]
    fn a_valid_input_gives_each_line_its_bytes_and_one_deployment() {
        let input = format!("{}\n\n{}\n", line("a", "chat"), line("b", "chat"));
        let (lines, deployment) = validate(input.as_bytes(), "/v1/chat/completions", 10, 1 << 20).unwrap();
        assert_eq!(deployment, "chat");
        assert_eq!(lines.len(), 2);
        let second: Line = serde_json::from_slice(&input.as_bytes()[lines[1].clone()]).unwrap();
        assert_eq!(second.custom_id, "b");
    }

    #[test]
    fn every_bad_line_is_reported_by_number_and_code() {
        let input = [
            line("a", "chat"),
            "{not json".to_string(),
            line("a", "chat"),
            line("c", "other"),
            line("d", "chat").replace("/v1/chat/completions", "/v1/embeddings"),
        ]
        .join("\n");
        let errors = validate(input.as_bytes(), "/v1/chat/completions", 10, 1 << 20).unwrap_err();
        let found: Vec<(String, u64)> =
            errors.iter().map(|e| (e["code"].as_str().unwrap().to_string(), e["line"].as_u64().unwrap())).collect();
        assert_eq!(
            found,
            [
                ("invalid_json_line".to_string(), 2),
                ("duplicate_custom_id".to_string(), 3),
                ("mismatched_model".to_string(), 4),
                ("mismatched_endpoint".to_string(), 5),
            ]
        );
        let errors =
            validate(format!("{}\n{}", line("a", "m"), line("b", "m")).as_bytes(), "/v1/chat/completions", 1, 1 << 20)
                .unwrap_err();
        assert_eq!(errors[0]["code"], "too_many_requests");
        assert_eq!(validate(b"\n \n", "/v1/chat/completions", 1, 1 << 20).unwrap_err()[0]["code"], "empty_file");
        let long = line("a", "m");
        assert_eq!(
            validate(long.as_bytes(), "/v1/chat/completions", 1, 10).unwrap_err()[0]["code"],
            "request_too_large"
        );
    }

    #[test]
    fn rows_render_into_chat_requests_with_the_extra_fields() {
        let mut extra = serde_json::Map::new();
        extra.insert("max_tokens".into(), 5.into());
        let rows: Vec<serde_json::Map<String, serde_json::Value>> =
            vec![serde_json::from_value(serde_json::json!({ "text": "a poem" })).unwrap()];
        let roomy = Bounds { line: 1 << 20, total: 1 << 20 };
        let out = render_rows("Summarize: {{ text }}", "chat", &extra, &rows, 7, roomy).unwrap();
        let line: serde_json::Value = serde_json::from_slice(out.trim_ascii_end()).unwrap();
        assert_eq!(line["custom_id"], "row-7");
        assert_eq!(line["body"]["messages"][0]["content"], "Summarize: a poem");
        assert_eq!(line["body"]["max_tokens"], 5);
        let runaway = render_rows(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            "chat",
            &extra,
            &rows,
            0,
            roomy,
        );
        assert_eq!(runaway.unwrap_err()[0]["code"], "invalid_template");
        // A template that writes more than a request may hold stops at the bound.
        let wide = render_rows("{{ text * 100000 }}", "chat", &extra, &rows, 0, Bounds { line: 1000, total: 1 << 20 });
        assert_eq!(wide.unwrap_err()[0]["code"], "invalid_template");
        let many: Vec<_> = std::iter::repeat_n(rows[0].clone(), 100).collect();
        let over = render_rows("{{ text }}", "chat", &extra, &many, 0, Bounds { line: 1000, total: 2000 });
        assert_eq!(over.unwrap_err()[0]["code"], "input_too_large");
    }
}
