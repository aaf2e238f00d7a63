//! Pipelines at work: started by events (a new dataset version, drift, degraded feedback), a
//! cron schedule or by hand, and run step by step as jobs from the queue (`pipeline.step`).
//! The declaration, its checks and how a run starts are use cases (`service::pipelines`). Each
//! step acts with its author's rights through the same services the HTTP API calls, so every
//! change it makes is authorized, audited and published like a user's; the run's own progress
//! is recorded by the `system` principal.

use std::sync::Arc;
use std::time::Duration;

use factory_core::{AccessRequest, Action, Principal, Resource, TenantName};
use factory_store::jobs::{Job, JobState};
use factory_store::outbox::{DeliveredEvent, Subscriber};
use factory_store::pipelines::{Pipeline, PipelineRun};
use factory_store::Event;
use tokio::sync::watch;

use factory_cluster::jetstream::TriggerMessage;

use crate::caller::Caller;
use crate::canary::CanaryError;
use crate::event_stream::NatsLink;
use crate::rollout::promote;
use crate::service::pipelines::{
    enqueue_step, kind_name, parse_cron, start, PipelineSpec, StepKind, StepSpec, When, EVENTS, STEP_KIND,
};
use crate::service::runs::{NewRun, RegisterSpec, RunKind, RunOptions};
use crate::service::{datasets, deployments, models, runs, ServiceError};
use crate::serving::DeploymentSpec;
use crate::state::AppState;
use crate::workers::{JobControl, JobError, JobHandler};

/// Starts the pipelines whose triggers match delivered events.
pub struct EventTrigger {
    pub state: AppState,
}

#[async_trait::async_trait]
impl Subscriber for EventTrigger {
    fn name(&self) -> &str {
        "pipeline-triggers"
    }

    fn wants(&self, topic: &str) -> bool {
        EVENTS.contains(&topic)
    }

    async fn handle(&self, event: &DeliveredEvent) -> Result<(), String> {
        let payload = &event.payload;
        let Some(tenant) = payload["tenant"].as_str() else { return Ok(()) };
        let subject = |field: &str| payload[field].as_str().map(str::to_string);
        let Ok(tenant) = TenantName::new(tenant) else { return Ok(()) };
        for pipeline in self.state.store.pipelines(Some(&tenant)).await.map_err(|e| e.to_string())? {
            let Ok(spec) = serde_json::from_value::<PipelineSpec>(pipeline.spec.clone()) else { continue };
            let matches = spec.triggers.iter().any(|t| {
                t.event.as_deref() == Some(event.topic.as_str())
                    && (t.deployment.is_none() || t.deployment == subject("deployment"))
                    && (t.dataset.is_none() || t.dataset == subject("dataset"))
            });
            if !matches {
                continue;
            }
            let trigger = serde_json::json!({
                "kind": "event", "topic": event.topic, "audit_index": event.audit_index,
                "deployment": subject("deployment"), "dataset": subject("dataset"), "monitor": subject("monitor"),
            });
            let request_id = format!("event-{}", event.id);
            start(
                &self.state,
                &pipeline,
                &Principal::system(),
                Action::PipelineRun,
                &request_id,
                &event.idempotency_key,
                trigger,
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Starts pipelines on their cron schedules (UTC), from this process's start on.
pub async fn schedule(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut checked = chrono::Utc::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.changed() => return,
        }
        let now = chrono::Utc::now();
        let Ok(pipelines) = state.store.pipelines(None).await else { continue };
        for pipeline in pipelines {
            let Ok(spec) = serde_json::from_value::<PipelineSpec>(pipeline.spec.clone()) else { continue };
            for expression in spec.triggers.iter().filter_map(|t| t.cron.as_deref()) {
                let Ok(cron) = parse_cron(expression) else { continue };
                let Ok(due) = cron.find_next_occurrence(&checked, false) else { continue };
                if due > now {
                    continue;
                }
                let key = format!("cron:{expression}:{}", due.timestamp());
                let trigger = serde_json::json!({ "kind": "cron", "cron": expression, "due": due.to_rfc3339() });
                let outcome =
                    start(&state, &pipeline, &Principal::system(), Action::PipelineRun, &key, &key, trigger).await;
                if let Err(error) = outcome {
                    tracing::warn!(pipeline = %pipeline.name, error = %error.message, "cron trigger failed");
                }
            }
        }
        checked = now;
    }
}

/// Starts the pipelines whose `subject` triggers match messages on the event stream, until
/// `stop`. A message is acknowledged once every matching pipeline has started (or none
/// matched); one that failed comes again, and starting twice is idempotent by its sequence.
pub async fn listen_for_triggers(state: AppState, link: Arc<NatsLink>, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let messages = match link.stream().await {
            Ok(stream) => stream.next_triggers(32, Duration::from_secs(1)).await.map_err(|error| error.to_string()),
            Err(error) => Err(error),
        };
        let messages = match messages {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%error, "cannot read pipeline triggers from NATS; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
        };
        for message in messages {
            state.metrics.cluster.trigger_messages.inc();
            match start_on_message(&state, &message).await {
                Ok(()) => {
                    if let Err(error) = message.acknowledge().await {
                        tracing::warn!(%error, sequence = message.sequence, "cannot acknowledge a trigger message");
                    }
                }
                Err(error) => tracing::warn!(%error, sequence = message.sequence, "a trigger message failed"),
            }
        }
    }
}

async fn start_on_message(state: &AppState, message: &TriggerMessage) -> Result<(), String> {
    let Ok(tenant) = TenantName::new(&message.tenant) else { return Ok(()) };
    for pipeline in state.store.pipelines(Some(&tenant)).await.map_err(|e| e.to_string())? {
        let Ok(spec) = serde_json::from_value::<PipelineSpec>(pipeline.spec.clone()) else { continue };
        if !spec.triggers.iter().any(|t| t.subject.as_deref() == Some(message.name.as_str())) {
            continue;
        }
        let trigger = serde_json::json!({
            "kind": "message", "subject": message.name, "sequence": message.sequence, "payload": message.payload,
        });
        let key = format!("message:{}", message.sequence);
        start(state, &pipeline, &Principal::system(), Action::PipelineRun, &key, &key, trigger)
            .await
            .map_err(|error| error.message)?;
    }
    Ok(())
}

/// Runs one step of a pipeline run, records its result and enqueues the next step.
pub struct StepHandler {
    pub state: AppState,
}

/// Whether the key a pipeline acts as may still act: steps run as their author, so a revoked,
/// expired or deleted author key stops the pipeline at its next step, not only at the door.
async fn author_standing(state: &AppState, pipeline: &Pipeline) -> Result<(), String> {
    let author = &pipeline.author;
    if author.id == Principal::system().id {
        return Ok(());
    }
    let key = state.store.api_key(&author.id).await.map_err(|e| e.to_string())?;
    match key {
        Some(key) if key.usable_at(factory_core::time::now_millis()) && key.role == author.role => Ok(()),
        Some(_) => Err(format!(
            "the pipeline's author key {} is revoked, expired or changed; the pipeline is suspended until \
             someone who may write it applies it again",
            author.id
        )),
        None => Err(format!("the pipeline's author key {} no longer exists; the pipeline is suspended", author.id)),
    }
}

/// Records that a pipeline stopped for its author's standing: an audit record and an event,
/// by the factory itself.
async fn suspend(state: &AppState, pipeline: &Pipeline, run_id: &str, reason: &str) {
    let request = AccessRequest::new(
        &Principal::system(),
        Action::PipelineRun,
        Resource::pipeline(&pipeline.tenant, &pipeline.name),
    );
    let details = serde_json::json!({
        "tenant": pipeline.tenant, "pipeline": pipeline.name, "run": run_id, "author": pipeline.author.id,
        "suspended": reason,
    });
    let recorded = async {
        let change = state.store.begin_change(state.pdp.as_ref(), request, &format!("{run_id}/suspend")).await?;
        change.commit(details.clone(), Event::new("pipeline.suspended", details)).await
    };
    if let Err(error) = recorded.await {
        tracing::warn!(%error, pipeline = %pipeline.name, "could not record a pipeline's suspension");
    }
}

fn failed(error: impl std::fmt::Display) -> JobError {
    JobError::Failed(error.to_string())
}

#[async_trait::async_trait]
impl JobHandler for StepHandler {
    fn kind(&self) -> &'static str {
        STEP_KIND
    }

    async fn run(&self, job: &Job, control: JobControl) -> Result<serde_json::Value, JobError> {
        let state = &self.state;
        let run_id = job.payload["run"].as_str().unwrap_or_default().to_string();
        let step = job.payload["step"].as_i64().unwrap_or_default();
        let run = state.store.pipeline_run(&run_id).await.map_err(failed)?.ok_or_else(|| failed("no such run"))?;
        if run.status != "running" || run.step != step {
            return Ok(serde_json::json!({ "skipped": "the run has moved on" }));
        }
        let pipeline = state
            .store
            .pipeline(&job.tenant, &run.pipeline)
            .await
            .map_err(failed)?
            .ok_or_else(|| failed("the pipeline was removed"))?;
        let spec: PipelineSpec = serde_json::from_value(pipeline.spec.clone()).map_err(failed)?;
        let index = step as usize;
        let step_spec = spec.steps.get(index).ok_or_else(|| failed("no such step"))?;
        let caller = Caller {
            principal: pipeline.author.clone(),
            request_id: format!("{run_id}/{step}"),
            client_request_id: None,
        };
        let started = std::time::Instant::now();
        tracing::info!(run = %run_id, step = %step_spec.label(index), "pipeline step started");
        let outcome = match author_standing(state, &pipeline).await {
            Ok(()) => execute(state, &caller, &job.tenant, &run, step_spec, control).await,
            Err(reason) => {
                suspend(state, &pipeline, &run_id, &reason).await;
                Err(StepError::Failed(reason))
            }
        };
        let (mut result, ok, rolled_back) = match outcome {
            Ok(StepOutcome { result, ok, rolled_back }) => (result, ok, rolled_back),
            Err(StepError::Cancelled) => return Err(JobError::Cancelled),
            Err(StepError::Failed(message)) => (serde_json::json!({ "error": message }), false, false),
            Err(StepError::Service(error)) => {
                (serde_json::json!({ "error": error.message, "code": error.kind.code() }), false, false)
            }
        };
        if let Some(object) = result.as_object_mut() {
            object.insert("name".into(), step_spec.label(index).into());
            object.insert("kind".into(), kind_name(step_spec.kind()).into());
            object.insert("ok".into(), ok.into());
            object.insert("seconds".into(), ((started.elapsed().as_secs_f64() * 10.0).round() / 10.0).into());
        }
        let failed_before = run.steps.iter().any(|s| s["ok"] == false);
        let any_failed = failed_before || !ok;
        let rolled_back = rolled_back || run.steps.iter().any(|s| s["rolled_back"] == true);
        let next = spec.steps.iter().enumerate().skip(index + 1).find_map(|(j, s)| {
            let runs = match s.when() {
                When::Success => !any_failed,
                When::Failure => any_failed,
                When::Always => true,
            };
            runs.then_some(j as i64)
        });
        let status = match (next, rolled_back, any_failed) {
            (Some(_), _, _) => "running",
            (None, true, _) => "rolled_back",
            (None, false, true) => "failed",
            (None, false, false) => "succeeded",
        };
        let reason =
            (!ok).then(|| result["error"].as_str().or(result["reason"].as_str()).unwrap_or("failed").to_string());
        let request = AccessRequest::new(
            &Principal::system(),
            Action::PipelineRun,
            Resource::pipeline(&job.tenant, &run.pipeline),
        );
        let mut change =
            state.store.begin_change(state.pdp.as_ref(), request, &caller.request_id).await.map_err(failed)?;
        let advanced =
            change.advance_pipeline_run(&run_id, &result, next, status, reason.as_deref()).await.map_err(failed)?;
        if let Some(next) = next {
            enqueue_step(&mut change, &job.tenant, &run_id, next, state.config.jobs.max_attempts)
                .await
                .map_err(failed)?;
        }
        let details = serde_json::json!({
            "tenant": job.tenant, "pipeline": run.pipeline, "run": run_id, "step": step, "result": result,
            "status": status,
        });
        let mut events = vec![Event::new("pipeline.step.finished", details.clone())];
        if advanced.finished_at.is_some() {
            events.push(Event::new(
                "pipeline.run.finished",
                serde_json::json!({ "tenant": job.tenant, "pipeline": run.pipeline, "run": run_id, "status": status }),
            ));
        }
        change.commit_events(details, events).await.map_err(failed)?;
        tracing::info!(run = %run_id, step = %step_spec.label(index), ok, status, "pipeline step finished");
        Ok(result)
    }
}

pub fn with_pipeline_handlers(mut pool: crate::workers::WorkerPool, state: &AppState) -> crate::workers::WorkerPool {
    pool.handlers.insert(STEP_KIND, Arc::new(StepHandler { state: state.clone() }));
    pool
}

struct StepOutcome {
    result: serde_json::Value,
    ok: bool,
    rolled_back: bool,
}

enum StepError {
    Cancelled,
    Failed(String),
    /// A use case refused or failed; its kind goes into the step's result beside the message.
    Service(ServiceError),
}

impl From<ServiceError> for StepError {
    fn from(error: ServiceError) -> Self {
        StepError::Service(error)
    }
}

impl From<CanaryError> for StepError {
    fn from(error: CanaryError) -> Self {
        match error {
            CanaryError::Cancelled => StepError::Failed("cancelled; the deployment was restored".to_string()),
            CanaryError::Service(error) => StepError::Service(error),
        }
    }
}

impl From<StepError> for String {
    fn from(error: StepError) -> Self {
        match error {
            StepError::Cancelled => "cancelled".to_string(),
            StepError::Failed(message) => message,
            StepError::Service(error) => error.message,
        }
    }
}

impl From<String> for StepError {
    fn from(error: String) -> Self {
        StepError::Failed(error)
    }
}

fn passed(result: serde_json::Value) -> Result<StepOutcome, StepError> {
    Ok(StepOutcome { result, ok: true, rolled_back: false })
}

/// What earlier steps of the run produced: the candidate model, the evaluation, results by name.
struct Context {
    candidate: Option<String>,
    evaluation: serde_json::Value,
    by_name: serde_json::Map<String, serde_json::Value>,
    canary: Option<serde_json::Value>,
    promotion: Option<serde_json::Value>,
}

fn context(run: &PipelineRun) -> Context {
    let mut context = Context {
        candidate: None,
        evaluation: serde_json::Value::Null,
        by_name: serde_json::Map::new(),
        canary: None,
        promotion: None,
    };
    for step in &run.steps {
        match step["kind"].as_str() {
            Some("train" | "finetune") => context.candidate = step["model"].as_str().map(str::to_string),
            Some("evaluate") => context.evaluation = step.clone(),
            Some("canary") => context.canary = Some(step.clone()),
            Some("promote") => context.promotion = Some(step.clone()),
            _ => {}
        }
        if let Some(name) = step["name"].as_str() {
            context.by_name.insert(name.to_string(), step.clone());
        }
    }
    context
}

async fn execute(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    run: &PipelineRun,
    step: &StepSpec,
    control: JobControl,
) -> Result<StepOutcome, StepError> {
    let context = context(run);
    let candidate =
        || context.candidate.clone().ok_or("no earlier train or finetune step produced a model".to_string());
    match step.kind() {
        StepKind::Train | StepKind::Finetune => train(state, caller, tenant, step, control).await,
        StepKind::Evaluate => evaluate(state, caller, tenant, step, &candidate()?).await,
        StepKind::Gate => gate(step, &context),
        StepKind::Canary => {
            let plan = crate::canary::CanaryPlan {
                deployment: step.deployment.clone().unwrap_or_default(),
                share: step.weight.unwrap_or(0.2),
                min_requests: step.min_requests.unwrap_or(50) as usize,
                min_feedback: step.min_feedback.unwrap_or(30) as usize,
                max_duration_secs: step.max_duration_secs.unwrap_or(600),
                metric: step.metric.clone(),
                alpha: step.alpha.unwrap_or(0.05),
                alias: step.alias.clone().unwrap_or_else(|| "production".to_string()),
            };
            let outcome = crate::canary::run(state, caller, tenant, &plan, &candidate()?, control).await?;
            Ok(StepOutcome { result: outcome.result, ok: outcome.promoted, rolled_back: !outcome.promoted })
        }
        StepKind::Promote => {
            let deployment = step.deployment.as_deref().unwrap_or_default();
            let alias = step.alias.as_deref().unwrap_or("production");
            let promotion = promote(state, caller, tenant, deployment, alias, &candidate()?, None).await?;
            passed(serde_json::to_value(promotion).unwrap_or_default())
        }
        StepKind::Rollback => rollback(state, caller, tenant, step, &context).await,
        StepKind::Notify => notify(state, step, run).await,
    }
}

/// `NAME@VERSION` that `NAME@REFERENCE` (a number or an alias) means now.
async fn pinned(state: &AppState, tenant: &TenantName, reference: &str) -> Result<String, StepError> {
    let (name, version) = reference.split_once('@').ok_or(format!("{reference:?} is not NAME@VERSION"))?;
    let found =
        models::version_of(state, tenant, name, version).await?.ok_or(format!("model {reference} does not exist"))?;
    Ok(format!("{}@{}", found.name, found.version))
}

async fn train(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    step: &StepSpec,
    control: JobControl,
) -> Result<StepOutcome, StepError> {
    let (dataset, version) = datasets::find_version(state, tenant, step.dataset.as_deref().unwrap_or_default()).await?;
    let dataset = dataset.name;
    let finetune = step.kind() == StepKind::Finetune;
    let base = match &step.base {
        Some(base) => Some(pinned(state, tenant, base).await?),
        None => None,
    };
    // What the step says about how to train; what it trains on and what it registers are the
    // pipeline's own fields, which win over anything the table repeats. A base in the table of
    // a step that names none would make a fine-tune of a train step: refused, as a run is.
    let mut options = step.run.clone().and_then(|r| r.as_object().cloned()).unwrap_or_default();
    if base.is_none() && options.contains_key("base") {
        return Err(StepError::Failed(
            "base: a finetune run names its base model, and only a finetune run does".into(),
        ));
    }
    for owned in ["kind", "dataset", "version", "tenant", "register", "base"] {
        options.remove(owned);
    }
    let options: RunOptions =
        serde_json::from_value(serde_json::Value::Object(options)).map_err(|e| format!("run: {e}"))?;
    let run = NewRun {
        kind: if finetune { RunKind::Finetune } else { RunKind::Pretrain },
        dataset: dataset.clone(),
        version,
        tenant: Some(tenant.to_string()),
        options,
        base: base.clone(),
        register: Some(RegisterSpec { name: step.register.clone().unwrap_or_default(), intended_use: None }),
    };
    let run_id = runs::create(state, caller, run).await?.value.id;
    let mut cancel = control.cancel.clone();
    let job = loop {
        let job = state.store.job(&run_id).await.map_err(|e| e.to_string())?.ok_or("the run vanished".to_string())?;
        if matches!(job.state, JobState::Succeeded | JobState::Dead | JobState::Cancelled) {
            break job;
        }
        let cancelled = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => false,
            _ = cancel.wait_for(|c| *c) => true,
        };
        if cancelled {
            return Err(StepError::Cancelled);
        }
    };
    let result = job.result.clone().unwrap_or_default();
    if job.state != JobState::Succeeded {
        return Ok(StepOutcome {
            result: serde_json::json!({ "run": run_id, "error": job.last_error.unwrap_or_else(|| job.state.as_str().to_string()) }),
            ok: false,
            rolled_back: false,
        });
    }
    let model = format!("{}@{}", result["model"]["name"].as_str().unwrap_or_default(), result["model"]["version"]);
    passed(serde_json::json!({
        "run": run_id, "model": model, "dataset": format!("{dataset}@{version}"), "base": base,
        "validation_loss": result["eval"]["validation_loss"], "steps": result["eval"]["step"],
    }))
}

async fn evaluate(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    step: &StepSpec,
    candidate: &str,
) -> Result<StepOutcome, StepError> {
    let (dataset, version) = datasets::find_version(state, tenant, step.dataset.as_deref().unwrap_or_default()).await?;
    // Scoring reads rows: the author must be allowed to.
    datasets::authorize_on(state, caller, &dataset, Action::DatasetReadRows, &[("raw_pii", false)]).await?;
    let manifest = datasets::load_manifest(state, &dataset, version).await?.manifest;
    let texts = datasets::manifest_texts(state, &manifest).await?;
    // The end of the data, as training holds out the end of its token stream.
    let held_out: Vec<String> = texts[texts.len() - (texts.len() / 10).max(1).min(texts.len())..].to_vec();
    let production = pinned(state, tenant, step.against.as_deref().unwrap_or_default()).await?;
    let (seq_len, windows) = (step.seq_len.unwrap_or(128), step.max_windows.unwrap_or(32));
    let mut scores = serde_json::Map::new();
    for (role, reference) in [("candidate", candidate.to_string()), ("production", production)] {
        let (model_name, number) = reference.split_once('@').unwrap_or_default();
        let version = models::resolve(state, caller, tenant, model_name, number, Action::ModelRead).await?;
        let (loss, tokens) = crate::canary::held_out_loss(state, &version, &held_out, seq_len, windows).await?;
        scores.insert(
            role.into(),
            serde_json::json!({ "model": reference, "loss": loss, "perplexity": loss.exp(), "tokens": tokens }),
        );
    }
    scores.insert("dataset".into(), format!("{}@{version}", dataset.name).into());
    scores.insert("documents".into(), held_out.len().into());
    passed(serde_json::Value::Object(scores))
}

fn gate(step: &StepSpec, context: &Context) -> Result<StepOutcome, StepError> {
    let condition = step.condition.clone().unwrap_or_default();
    let values = serde_json::json!({
        "candidate": context.evaluation["candidate"],
        "production": context.evaluation["production"],
        "steps": context.by_name,
    });
    let environment = minijinja::Environment::new();
    let expression = environment.compile_expression(&condition).map_err(|e| e.to_string())?;
    let verdict = expression.eval(&values).map_err(|e| format!("condition: {e}"))?;
    let ok = verdict.is_true();
    Ok(StepOutcome {
        result: serde_json::json!({
            "condition": condition, "passed": ok,
            "candidate": values["candidate"], "production": values["production"],
            "reason": if ok { "" } else { "gate condition is false" },
        }),
        ok,
        rolled_back: false,
    })
}

async fn rollback(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    step: &StepSpec,
    context: &Context,
) -> Result<StepOutcome, StepError> {
    let deployment = step.deployment.as_deref().unwrap_or_default();
    let mut restored = serde_json::Map::new();
    if let Some(original) = context.canary.as_ref().and_then(|c| c.get("original_spec")).filter(|s| !s.is_null()) {
        let spec: DeploymentSpec = serde_json::from_value(original.clone()).map_err(|e| e.to_string())?;
        deployments::update(state, caller, tenant, deployment, spec).await?;
        restored.insert("deployment".into(), deployment.into());
    }
    if let Some(promotion) = &context.promotion {
        if let (Some(model), Some(alias), Some(previous)) =
            (promotion["promoted"].as_str(), promotion["alias"].as_str(), promotion["previous_version"].as_i64())
        {
            let name = model.split_once('@').map(|(n, _)| n).unwrap_or(model);
            models::move_alias(state, caller, tenant, name, alias, previous).await?;
            restored.insert("alias".into(), format!("{name}@{alias} -> {previous}").into());
        }
    }
    Ok(StepOutcome {
        result: serde_json::json!({ "restored": restored, "rolled_back": true }),
        ok: true,
        rolled_back: true,
    })
}

async fn notify(state: &AppState, step: &StepSpec, run: &PipelineRun) -> Result<StepOutcome, StepError> {
    use hmac::Mac;
    let url = step.url.clone().unwrap_or_default();
    let Some(target) = crate::egress::allowed_url(&state.config.pipelines.webhooks, &url) else {
        return Err(StepError::Failed(format!("{url} is no longer under a prefix in [pipelines] webhooks")));
    };
    let variable = step.secret_env.clone().unwrap_or_default();
    // Grants change with the configuration: checked again when the secret is about to leave.
    if !crate::egress::secret_granted(&state.config.secrets, &run.tenant, &variable) {
        return Err(StepError::Failed(format!("{variable} is not granted to this tenant ([secrets])")));
    }
    let secret = std::env::var(&variable).map_err(|_| format!("{variable} is not set"))?;
    let body = serde_json::to_vec(&serde_json::json!({
        "pipeline": run.pipeline, "run": run.id, "tenant": run.tenant, "trigger": run.trigger,
        "failed": run.steps.iter().any(|s| s["ok"] == false), "steps": run.steps,
    }))
    .unwrap_or_default();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| e.to_string())?;
    mac.update(&body);
    let signature = format!("sha256={}", hex_string(&mac.finalize().into_bytes()));
    let response = state
        .engines
        .upstream
        .post(target)
        .header("content-type", "application/json")
        .header("x-factory-signature", &signature)
        .timeout(Duration::from_secs(10))
        .body(body)
        .send()
        .await
        .map_err(|e| format!("webhook: {e}"))?;
    let status = response.status().as_u16();
    Ok(StepOutcome {
        result: serde_json::json!({ "url": url, "status": status, "reason": format!("webhook answered {status}") }),
        ok: response.status().is_success(),
        rolled_back: false,
    })
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn gates_evaluate_conditions_over_the_evaluation() {
        let step = StepSpec {
            condition: Some("candidate.perplexity <= production.perplexity * 1.02".into()),
            ..StepSpec::default()
        };
        let mut context = Context {
            candidate: Some("bard@2".into()),
            evaluation: serde_json::json!({ "candidate": { "perplexity": 50.0 }, "production": { "perplexity": 49.5 } }),
            by_name: serde_json::Map::new(),
            canary: None,
            promotion: None,
        };
        assert!(gate(&step, &context).ok().unwrap().ok);
        context.evaluation["candidate"]["perplexity"] = 51.0.into();
        let refused = gate(&step, &context).ok().unwrap();
        assert!(!refused.ok);
        assert_eq!(refused.result["reason"], "gate condition is false");
    }
}
