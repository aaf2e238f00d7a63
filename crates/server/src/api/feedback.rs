//! Feedback: clients report metrics declared in `[feedback.metrics]` on an answer (by the
//! response id the OpenAI API returned) or on an episode (by `x-episode-id`). Each report is a
//! governed change on the deployment that answered; drift monitoring and canary analysis read
//! them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use factory_core::{AccessRequest, Action, Resource};
use factory_store::inference::Feedback;
use factory_store::Event;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::datasets::TenantQuery;
use super::tenant_of;
use super::{authorize_as, committed_response, hide_foreign};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, Caller};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFeedback {
    /// The `id` of a completion (`chatcmpl-...`, `cmpl-...`): for per-inference metrics.
    pub inference_id: Option<String>,
    /// The `x-episode-id` the requests carried: for per-episode metrics.
    pub episode_id: Option<String>,
    pub metric: String,
    /// `true`/`false` for boolean metrics, a number for float ones.
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedbackView {
    pub id: String,
    pub deployment: String,
    pub variant: Option<String>,
    pub metric: String,
    pub value: f64,
}

#[utoipa::path(post, path = "/api/v1/feedback", tag = "serving", request_body = CreateFeedback, params(TenantQuery),
    responses((status = 201, body = FeedbackView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<TenantQuery>,
    ApiJson(body): ApiJson<CreateFeedback>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    // Who may report in this tenant at all is decided before anything of it is looked up.
    let gate = AccessRequest::new(&caller.principal, Action::FeedbackCreate, Resource::deployment(&tenant, "*"));
    authorize_as(&state, &caller, &gate, &tenant).await?;
    let metric = state.config.feedback.get(&body.metric).ok_or_else(|| {
        let known: Vec<&str> = state.config.feedback.keys().map(String::as_str).collect();
        ApiError::invalid(format!("metric: {:?} is not declared (declared: {})", body.metric, known.join(", ")))
    })?;
    let value = match (metric.kind.as_str(), &body.value) {
        ("boolean", serde_json::Value::Bool(flag)) => f64::from(u8::from(*flag)),
        ("float", serde_json::Value::Number(number)) => number.as_f64().filter(|v| v.is_finite()).unwrap_or(f64::NAN),
        (kind, other) => return Err(ApiError::invalid(format!("value: {other} is not a {kind}"))),
    };
    if value.is_nan() {
        return Err(ApiError::invalid("value: expected a finite number"));
    }
    let inference = match (metric.level.as_str(), &body.inference_id, &body.episode_id) {
        ("inference", Some(id), _) => state.store.inference(id).await?.filter(|r| r.tenant == tenant.as_str()),
        ("episode", _, Some(episode)) => state.store.episode_inference(&tenant, episode).await?,
        (level, _, _) => {
            let field = if level == "episode" { "episode_id" } else { "inference_id" };
            return Err(ApiError::invalid(format!("{field}: metric {} is reported per {level}", body.metric)));
        }
    };
    let inference = inference.ok_or_else(|| {
        let which = body.inference_id.as_deref().or(body.episode_id.as_deref()).unwrap_or_default();
        ApiError::not_found(format!("no inference or episode {which} in tenant {tenant}"))
    })?;
    let request = AccessRequest::new(
        &caller.principal,
        Action::FeedbackCreate,
        Resource::deployment(&tenant, &inference.deployment),
    );
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(&caller, Some(&tenant), e))?;
    let episode = metric.level == "episode";
    let feedback = Feedback {
        id: format!("fb_{}", uuid::Uuid::new_v4().simple()),
        tenant: tenant.to_string(),
        deployment: inference.deployment.clone(),
        variant: (!episode).then(|| inference.variant.clone()),
        inference_id: (!episode).then(|| inference.id.clone()),
        episode_id: if episode { body.episode_id.clone() } else { inference.episode_id.clone() },
        metric: body.metric.clone(),
        value,
        created_at: factory_core::time::now_millis(),
        created_by: caller.principal.id.clone(),
    };
    change.add_feedback(&feedback).await?;
    let details = serde_json::to_value(&feedback).unwrap_or_default();
    let committed = change.commit(details.clone(), Event::new("feedback.created", details)).await?;
    let view = FeedbackView {
        id: feedback.id,
        deployment: feedback.deployment,
        variant: feedback.variant,
        metric: feedback.metric,
        value,
    };
    Ok(committed_response(StatusCode::CREATED, Json(view), committed))
}
