//! Feedback as a use case: a client reports a metric declared in `[feedback.metrics]` on an
//! answer (by the response id the OpenAI API returned) or on an episode (by `x-episode-id`).
//! Each report is a governed change on the deployment that answered (`feedback.created`);
//! drift monitoring and canary analysis read them.

use factory_core::{AccessRequest, Action, Resource, TenantName};
use factory_store::inference::Feedback;
use factory_store::Event;

use super::access::{authorize_as, hide_foreign};
use super::Recorded;
use crate::caller::Caller;
use crate::service_error::ServiceError;
use crate::state::AppState;

/// A report, as a client makes it.
#[derive(Debug, Clone)]
pub struct NewFeedback {
    /// The `id` of a completion (`chatcmpl-...`, `cmpl-...`): for per-inference metrics.
    pub inference_id: Option<String>,
    /// The `x-episode-id` the requests carried: for per-episode metrics.
    pub episode_id: Option<String>,
    pub metric: String,
    /// `true`/`false` for boolean metrics, a number for float ones.
    pub value: serde_json::Value,
}

/// Records `report` in `tenant` against the deployment that gave the answer or the episode
/// (`feedback.created`).
pub async fn create(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    report: NewFeedback,
) -> Result<Recorded<Feedback>, ServiceError> {
    // Who may report in this tenant at all is decided before anything of it is looked up.
    let gate = AccessRequest::new(&caller.principal, Action::FeedbackCreate, Resource::deployment(tenant, "*"));
    authorize_as(state, caller, &gate, tenant).await?;
    let metric = state.config.feedback.get(&report.metric).ok_or_else(|| {
        let known: Vec<&str> = state.config.feedback.keys().map(String::as_str).collect();
        ServiceError::invalid(format!("metric: {:?} is not declared (declared: {})", report.metric, known.join(", ")))
    })?;
    let value = match (metric.kind.as_str(), &report.value) {
        ("boolean", serde_json::Value::Bool(flag)) => f64::from(u8::from(*flag)),
        ("float", serde_json::Value::Number(number)) => number.as_f64().filter(|v| v.is_finite()).unwrap_or(f64::NAN),
        (kind, other) => return Err(ServiceError::invalid(format!("value: {other} is not a {kind}"))),
    };
    if value.is_nan() {
        return Err(ServiceError::invalid("value: expected a finite number"));
    }
    let inference = match (metric.level.as_str(), &report.inference_id, &report.episode_id) {
        ("inference", Some(id), _) => state.store.inference(id).await?.filter(|r| r.tenant == tenant.as_str()),
        ("episode", _, Some(episode)) => state.store.episode_inference(tenant, episode).await?,
        (level, _, _) => {
            let field = if level == "episode" { "episode_id" } else { "inference_id" };
            return Err(ServiceError::invalid(format!("{field}: metric {} is reported per {level}", report.metric)));
        }
    };
    let inference = inference.ok_or_else(|| {
        let which = report.inference_id.as_deref().or(report.episode_id.as_deref()).unwrap_or_default();
        ServiceError::not_found(format!("no inference or episode {which} in tenant {tenant}"))
    })?;
    let request = AccessRequest::new(
        &caller.principal,
        Action::FeedbackCreate,
        Resource::deployment(tenant, &inference.deployment),
    );
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(tenant), e))?;
    let episode = metric.level == "episode";
    let feedback = Feedback {
        id: format!("fb_{}", uuid::Uuid::new_v4().simple()),
        tenant: tenant.to_string(),
        deployment: inference.deployment.clone(),
        variant: (!episode).then(|| inference.variant.clone()),
        inference_id: (!episode).then(|| inference.id.clone()),
        episode_id: if episode { report.episode_id.clone() } else { inference.episode_id.clone() },
        metric: report.metric.clone(),
        value,
        created_at: factory_core::time::now_millis(),
        created_by: caller.principal.id.clone(),
    };
    change.add_feedback(&feedback).await?;
    let details = serde_json::to_value(&feedback).unwrap_or_default();
    let committed = change.commit(details.clone(), Event::new("feedback.created", details)).await?;
    Ok(Recorded { value: feedback, committed })
}
