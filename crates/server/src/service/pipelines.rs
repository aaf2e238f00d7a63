//! Pipelines as use cases: declare one (its TOML parsed and checked, its secrets granted to
//! the tenant), list and read them and their runs, and start a run (by hand here; events and
//! cron schedules start them through [`start`] too). The declaration's types and rules live
//! here so that the orchestration that runs the steps (the `pipelines` module, a floor above)
//! reads the same spec the service checked.

use factory_core::{AccessRequest, Action, Principal, Resource, TenantName};
use factory_store::jobs::NewJob;
use factory_store::pipelines::{Pipeline, PipelineRun, Triggered};
use factory_store::Event;
use serde::{Deserialize, Serialize};

use super::access::{authorize_as, hide_foreign, hide_foreign_refusal, valid_name};
use super::Recorded;
use crate::caller::Caller;
use crate::service_error::ServiceError;
use crate::state::AppState;

/// The job kind that runs one step of a pipeline run.
pub const STEP_KIND: &str = "pipeline.step";
/// `notify` secrets come only from environment variables with this prefix.
pub const WEBHOOK_SECRET_PREFIX: &str = "WEBHOOK_SECRET_";
/// The events a pipeline may be triggered by.
pub const EVENTS: [&str; 3] = ["dataset.version.created", "drift.detected", "feedback.degraded"];

/// A declaration: what starts the pipeline and the steps it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub triggers: Vec<TriggerSpec>,
    pub steps: Vec<StepSpec>,
}

/// One of `event` (with the `deployment` or `dataset` it concerns), `cron` or `subject`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    pub event: Option<String>,
    pub deployment: Option<String>,
    pub dataset: Option<String>,
    /// Five fields, UTC: minute hour day-of-month month day-of-week.
    pub cron: Option<String>,
    /// A message on NATS subject `<prefix>.triggers.<tenant>.<subject>` (`[events] nats_url`)
    /// starts the run; its JSON body is kept in the run's trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// Whether `name` can be one token of a NATS subject: no dots, spaces or wildcards.
pub fn is_subject_token(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Train,
    Finetune,
    Evaluate,
    Gate,
    Canary,
    Promote,
    Rollback,
    Notify,
}

/// When a step runs: after everything before it succeeded (the default), after something
/// failed, or always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum When {
    #[default]
    Success,
    Failure,
    Always,
}

/// A step; which fields apply depends on its kind (see `validate`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub kind: Option<StepKind>,
    pub name: Option<String>,
    #[serde(default)]
    pub when: Option<When>,
    /// train, finetune, evaluate: `DATASET@VERSION` or `DATASET@latest`.
    pub dataset: Option<String>,
    /// finetune: the model to start from, `NAME@VERSION` or `NAME@ALIAS` (pinned at run time).
    pub base: Option<String>,
    /// train, finetune: the model name the result registers as.
    pub register: Option<String>,
    /// train, finetune: further fields of `POST /api/v1/runs` (train, model, tokenizer, seed,
    /// priority, eval_sets), as a template.
    pub run: Option<serde_json::Value>,
    /// evaluate: the production model to compare the candidate with (`NAME@ALIAS`).
    pub against: Option<String>,
    /// evaluate: windows of `seq_len` tokens scored per model (default 32, seq_len 128).
    pub max_windows: Option<usize>,
    pub seq_len: Option<usize>,
    /// gate: an expression over `candidate`, `production` and `steps`, e.g.
    /// `candidate.perplexity <= production.perplexity * 1.02`.
    pub condition: Option<String>,
    /// canary, promote, rollback: the deployment.
    pub deployment: Option<String>,
    /// canary, promote: the alias promotion moves (default `production`).
    pub alias: Option<String>,
    /// canary: the candidate's share of traffic (0..1, default 0.2).
    pub weight: Option<f64>,
    /// canary: requests each variant must answer before the analysis (default 50).
    pub min_requests: Option<u64>,
    /// canary: feedback values each variant must have on `metric` (default 30).
    pub min_feedback: Option<u64>,
    /// canary: the longest wait for that traffic (default 600 s); short of it, roll back.
    pub max_duration_secs: Option<u64>,
    /// canary: the feedback metric compared (declared in `[feedback.metrics]`).
    pub metric: Option<String>,
    /// canary: significance of each one-sided test (default 0.05).
    pub alpha: Option<f64>,
    /// notify: the webhook URL (allowed by `[pipelines] webhooks`).
    pub url: Option<String>,
    /// notify: the environment variable (`WEBHOOK_SECRET_*`) holding the HMAC key.
    pub secret_env: Option<String>,
}

impl StepSpec {
    /// Its kind (`notify` for a step that names none, which validation refuses).
    pub fn kind(&self) -> StepKind {
        self.kind.unwrap_or(StepKind::Notify)
    }

    /// Its name, else `KIND-INDEX`.
    pub fn label(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("{}-{index}", kind_name(self.kind())))
    }

    /// When it runs (after success unless it says otherwise).
    pub fn when(&self) -> When {
        self.when.unwrap_or_default()
    }
}

/// The kind as declarations write it.
pub fn kind_name(kind: StepKind) -> &'static str {
    match kind {
        StepKind::Train => "train",
        StepKind::Finetune => "finetune",
        StepKind::Evaluate => "evaluate",
        StepKind::Gate => "gate",
        StepKind::Canary => "canary",
        StepKind::Promote => "promote",
        StepKind::Rollback => "rollback",
        StepKind::Notify => "notify",
    }
}

/// Parses and checks a declaration; errors name the line (TOML) or the field.
pub fn parse(source: &str, webhooks: &[String]) -> Result<PipelineSpec, String> {
    let spec: PipelineSpec = toml::from_str(source).map_err(|e| e.to_string())?;
    validate(&spec, webhooks)?;
    Ok(spec)
}

fn validate(spec: &PipelineSpec, webhooks: &[String]) -> Result<(), String> {
    if spec.steps.is_empty() || spec.steps.len() > 32 {
        return Err("steps: give 1 to 32 steps".into());
    }
    for (index, trigger) in spec.triggers.iter().enumerate() {
        let at = format!("triggers[{index}]");
        match (&trigger.event, &trigger.cron, &trigger.subject) {
            (Some(event), None, None) => {
                if !EVENTS.contains(&event.as_str()) {
                    return Err(format!("{at}.event: {event:?} is not one of {}", EVENTS.join(", ")));
                }
                let needs_dataset = event == "dataset.version.created";
                if needs_dataset != trigger.dataset.is_some() || needs_dataset == trigger.deployment.is_some() {
                    return Err(format!(
                        "{at}: {event} names the {} it concerns, and only that",
                        if needs_dataset { "dataset" } else { "deployment" }
                    ));
                }
            }
            (None, Some(cron), None) => {
                parse_cron(cron).map_err(|e| format!("{at}.cron: {e}"))?;
            }
            (None, None, Some(subject)) => {
                if !is_subject_token(subject) {
                    return Err(format!("{at}.subject: 1 to 64 letters, digits, '_' or '-'"));
                }
            }
            _ => return Err(format!("{at}: give one of event, cron or subject")),
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for (index, step) in spec.steps.iter().enumerate() {
        let at = format!("steps[{index}]");
        let kind = step.kind.ok_or_else(|| {
            format!("{at}.kind: missing (train, finetune, evaluate, gate, canary, promote, rollback, notify)")
        })?;
        if !names.insert(step.label(index)) {
            return Err(format!("{at}.name: {:?} is used twice", step.label(index)));
        }
        let need = |field: &str, value: bool| {
            if value {
                Ok(())
            } else {
                Err(format!("{at}.{field}: a {} step needs it", kind_name(kind)))
            }
        };
        match kind {
            StepKind::Train | StepKind::Finetune => {
                need("dataset", step.dataset.is_some())?;
                need("register", step.register.is_some())?;
                need("base", (kind == StepKind::Finetune) == step.base.is_some())?;
                if step.run.as_ref().is_some_and(|r| !r.is_object()) {
                    return Err(format!("{at}.run: expected a table"));
                }
            }
            StepKind::Evaluate => {
                need("dataset", step.dataset.is_some())?;
                need("against", step.against.is_some())?;
            }
            StepKind::Gate => {
                let condition =
                    step.condition.as_deref().ok_or_else(|| format!("{at}.condition: a gate step needs it"))?;
                minijinja::Environment::new()
                    .compile_expression(condition)
                    .map_err(|e| format!("{at}.condition: {e}"))?;
            }
            StepKind::Canary => {
                need("deployment", step.deployment.is_some())?;
                if step.weight.is_some_and(|w| !(w > 0.0 && w < 1.0)) {
                    return Err(format!("{at}.weight: between 0 and 1"));
                }
                if step.alpha.is_some_and(|a| !(a > 0.0 && a < 0.5)) {
                    return Err(format!("{at}.alpha: between 0 and 0.5"));
                }
            }
            StepKind::Promote | StepKind::Rollback => need("deployment", step.deployment.is_some())?,
            StepKind::Notify => {
                let url = step.url.as_deref().ok_or_else(|| format!("{at}.url: a notify step needs it"))?;
                if crate::egress::allowed_url(webhooks, url).is_none() {
                    return Err(format!("{at}.url: {url} is not under a prefix in [pipelines] webhooks"));
                }
                if step.secret_env.as_deref().is_none_or(|e| !e.starts_with(WEBHOOK_SECRET_PREFIX)) {
                    return Err(format!("{at}.secret_env: name a variable starting {WEBHOOK_SECRET_PREFIX}"));
                }
            }
        }
    }
    Ok(())
}

/// A five-field cron expression (UTC).
pub fn parse_cron(expression: &str) -> Result<croner::Cron, String> {
    croner::Cron::new(expression).parse().map_err(|e| e.to_string())
}

/// Starts a run of `pipeline` for `key` (or folds the trigger into the active run); a
/// trigger seen before changes nothing.
pub async fn start(
    state: &AppState,
    pipeline: &Pipeline,
    principal: &Principal,
    action: Action,
    request_id: &str,
    key: &str,
    trigger: serde_json::Value,
) -> Result<Triggered, ServiceError> {
    let request = AccessRequest::new(principal, action, Resource::pipeline(&pipeline.tenant, &pipeline.name));
    let mut change = state.store.begin_change(state.pdp.as_ref(), request, request_id).await?;
    let run_id = factory_core::secrets::new_id("prun");
    let outcome = change.trigger_pipeline(pipeline, &run_id, key, &trigger).await?;
    let details = serde_json::json!({
        "tenant": pipeline.tenant, "pipeline": pipeline.name, "trigger": trigger, "key": key,
    });
    let event = match &outcome {
        Triggered::Duplicate(_) => return Ok(outcome),
        Triggered::Coalesced(run) => {
            Event::new("pipeline.trigger.coalesced", serde_json::json!({ "run": run, "details": details }))
        }
        Triggered::Started(run) => {
            enqueue_step(&mut change, &pipeline.tenant, &run.id, 0, state.config.jobs.max_attempts).await?;
            Event::new("pipeline.run.started", serde_json::json!({ "run": run.id, "details": details }))
        }
    };
    change.commit(details, event).await?;
    Ok(outcome)
}

/// Enqueues step `step` of `run` as a `pipeline.step` job of `tenant`, inside `change`.
pub async fn enqueue_step(
    change: &mut factory_store::Change,
    tenant: &TenantName,
    run: &str,
    step: i64,
    max_attempts: u32,
) -> Result<(), factory_store::StoreError> {
    let job = NewJob {
        kind: STEP_KIND.to_string(),
        payload: serde_json::json!({ "run": run, "step": step }),
        priority: 5,
        max_attempts,
    };
    change.enqueue_job_as(&factory_core::secrets::new_id("pstep"), tenant, &job).await?;
    Ok(())
}

async fn authorize(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    action: Action,
) -> Result<(), ServiceError> {
    let request = AccessRequest::new(&caller.principal, action, Resource::pipeline(tenant, name));
    authorize_as(state, caller, &request, tenant).await
}

async fn find(state: &AppState, tenant: &TenantName, name: &str) -> Result<Pipeline, ServiceError> {
    state
        .store
        .pipeline(tenant, name)
        .await?
        .ok_or_else(|| ServiceError::not_found(format!("pipeline {name} does not exist")))
}

/// Declares `tenant`'s pipeline `name` from its TOML `source`, or replaces it (`pipeline.updated`).
pub async fn put(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    source: &str,
) -> Result<Recorded<Pipeline>, ServiceError> {
    valid_name::<factory_core::PipelineName>("name", name)?;
    let request = AccessRequest::new(&caller.principal, Action::PipelineWrite, Resource::pipeline(tenant, name));
    // Who may declare pipelines here is decided before the declaration is read.
    authorize_as(state, caller, &request, tenant).await?;
    let spec = parse(source, &state.config.pipelines.webhooks)
        .map_err(|e| ServiceError::invalid(format!("pipeline {name}: {e}")))?;
    // The same answer whether the variable exists or not: names of secrets are no oracle.
    for (index, step) in spec.steps.iter().enumerate() {
        if let Some(variable) = &step.secret_env {
            if !crate::egress::secret_granted(&state.config.secrets, tenant.as_str(), variable) {
                return Err(ServiceError::invalid(format!(
                    "pipeline {name}: steps[{index}].secret_env: not granted to tenant {tenant} ([secrets])"
                )));
            }
        }
    }
    let spec = serde_json::to_value(&spec).unwrap_or_default();
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(tenant), e))?;
    let pipeline = change.put_pipeline(tenant, name, source, &spec).await?;
    let details =
        serde_json::json!({ "tenant": tenant, "pipeline": name, "revision": pipeline.revision, "spec": spec });
    let committed = change.commit(details.clone(), Event::new("pipeline.updated", details)).await?;
    Ok(Recorded { value: pipeline, committed })
}

/// `tenant`'s pipelines, as the caller may read them.
pub async fn list(state: &AppState, caller: &Caller, tenant: &TenantName) -> Result<Vec<Pipeline>, ServiceError> {
    authorize(state, caller, tenant, "*", Action::PipelineRead).await?;
    Ok(state.store.pipelines(Some(tenant)).await?)
}

/// `tenant`'s pipeline `name`, as the caller may read it.
pub async fn show(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
) -> Result<Pipeline, ServiceError> {
    authorize(state, caller, tenant, name, Action::PipelineRead).await?;
    find(state, tenant, name).await
}

/// The latest runs (at most 100) of `tenant`'s pipeline `name`, as the caller may read them.
pub async fn runs(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
) -> Result<Vec<PipelineRun>, ServiceError> {
    authorize(state, caller, tenant, name, Action::PipelineRead).await?;
    find(state, tenant, name).await?;
    Ok(state.store.pipeline_runs(tenant, name, 100).await?)
}

/// The run `id` of `tenant`'s pipeline `name`, as the caller may read it.
pub async fn run(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    id: &str,
) -> Result<PipelineRun, ServiceError> {
    authorize(state, caller, tenant, name, Action::PipelineRead).await?;
    let run = state.store.pipeline_run(id).await?.filter(|r| r.tenant == tenant.as_str() && r.pipeline == name);
    run.ok_or_else(|| ServiceError::not_found(format!("pipeline {name} has no run {id}")))
}

/// Starts a run of `tenant`'s pipeline `name` by hand, as the caller (or folds it into the active run).
pub async fn trigger(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
) -> Result<Triggered, ServiceError> {
    authorize(state, caller, tenant, name, Action::PipelineTrigger).await?;
    let pipeline = find(state, tenant, name).await?;
    // A client retrying with the same request id starts one run; without an id of its own,
    // every trigger is new.
    let key = format!("manual:{}", caller.client_request_id.as_deref().unwrap_or(&caller.request_id));
    let trigger = serde_json::json!({ "kind": "manual", "by": caller.principal.id });
    start(state, &pipeline, &caller.principal, Action::PipelineTrigger, &caller.request_id, &key, trigger)
        .await
        .map_err(|e| hide_foreign_refusal(caller, Some(tenant), e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const WEBHOOKS: &[&str] = &["https://hooks.example.gov/"];

    fn webhooks() -> Vec<String> {
        WEBHOOKS.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_full_declaration_parses() {
        let spec = parse(
            r#"
[[triggers]]
event = "drift.detected"
deployment = "bard"
[[triggers]]
event = "dataset.version.created"
dataset = "news"
[[triggers]]
cron = "30 2 * * 1"
[[steps]]
kind = "finetune"
base = "bard@production"
dataset = "news@latest"
register = "bard"
run = { train = { steps = 100 } }
[[steps]]
kind = "evaluate"
dataset = "news@latest"
against = "bard@production"
[[steps]]
kind = "gate"
condition = "candidate.perplexity <= production.perplexity * 1.02"
[[steps]]
kind = "canary"
deployment = "bard"
weight = 0.1
metric = "thumbs_up"
[[steps]]
kind = "rollback"
deployment = "bard"
when = "failure"
[[steps]]
kind = "notify"
when = "always"
url = "https://hooks.example.gov/ml"
secret_env = "WEBHOOK_SECRET_OPS"
"#,
            &webhooks(),
        )
        .unwrap();
        assert_eq!(spec.triggers.len(), 3);
        assert_eq!(spec.steps[4].when(), When::Failure);
        assert_eq!(spec.steps[2].label(2), "gate-2");
    }

    #[test]
    fn mistakes_are_named_by_line_or_field() {
        let error = |source: &str| parse(source, &webhooks()).unwrap_err();
        assert!(
            error("[[steps]]\nkind = \"gate\"\ncondition = \n").contains("line 3"),
            "{}",
            error("[[steps]]\nkind = \"gate\"\ncondition = \n")
        );
        assert!(error("[[steps]]\nkind = \"bake\"\n").contains("unknown variant"));
        assert!(error("[[steps]]\nkind = \"gate\"\n").contains("steps[0].condition"));
        assert!(error("[[steps]]\nkind = \"gate\"\ncondition = \"a <=\"\n").contains("steps[0].condition"));
        assert!(error("[[steps]]\nkind = \"train\"\ndataset = \"d@1\"\n").contains("steps[0].register"));
        assert!(
            error("[[steps]]\nkind = \"finetune\"\ndataset = \"d@1\"\nregister = \"m\"\n").contains("steps[0].base")
        );
        let hook =
            "[[steps]]\nkind = \"notify\"\nurl = \"https://evil.example.com/\"\nsecret_env = \"WEBHOOK_SECRET_X\"\n";
        assert!(error(hook).contains("steps[0].url"));
        let secret =
            "[[steps]]\nkind = \"notify\"\nurl = \"https://hooks.example.gov/x\"\nsecret_env = \"AWS_SECRET\"\n";
        assert!(error(secret).contains("steps[0].secret_env"));
        let trigger = "[[triggers]]\nevent = \"drift.detected\"\n[[steps]]\nkind = \"gate\"\ncondition = \"true\"\n";
        assert!(error(trigger).contains("triggers[0]"));
        let cron = "[[triggers]]\ncron = \"61 * * * *\"\n[[steps]]\nkind = \"gate\"\ncondition = \"true\"\n";
        assert!(error(cron).contains("triggers[0].cron"));
        assert!(error("steps = []\n").contains("steps"));
    }
}
