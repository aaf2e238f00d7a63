//! Feedback on the wire: clients report metrics declared in `[feedback.metrics]` on an answer
//! or an episode; `service::feedback` does the checking and records it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use factory_store::inference::Feedback;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::datasets::TenantQuery;
use super::{committed_response, tenant_of};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, Caller};
use crate::service::feedback::{self, NewFeedback};
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

impl From<Feedback> for FeedbackView {
    fn from(feedback: Feedback) -> Self {
        FeedbackView {
            id: feedback.id,
            deployment: feedback.deployment,
            variant: feedback.variant,
            metric: feedback.metric,
            value: feedback.value,
        }
    }
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
    let report = NewFeedback {
        inference_id: body.inference_id,
        episode_id: body.episode_id,
        metric: body.metric,
        value: body.value,
    };
    let created = feedback::create(&state, &caller, &tenant, report).await?;
    Ok(committed_response(StatusCode::CREATED, Json(FeedbackView::from(created.value)), created.committed))
}
