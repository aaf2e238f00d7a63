//! The one place where errors become HTTP statuses and log levels.
//!
//! Every error body is `{"error": {"code": "...", "message": "..."}}`; the match below is
//! exhaustive on purpose, so a new error kind forces a decision here.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use factory_store::{StoreError, StoreErrorKind};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
    /// The request field at fault, when one is (OpenAI's `param`).
    pub param: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// Also OpenAI's error shape, so its SDKs read our errors on the `/v1` routes.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code such as `forbidden` or `invalid_request`.
    pub code: String,
    pub message: String,
    /// The class of error as OpenAI names it (`invalid_request_error`, `rate_limit_error`, ...).
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
}

fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        409 => "conflict_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after_secs: None, param: None }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The one answer for "does not exist" and "exists in another tenant", so that ids and
    /// names are no oracle of what other tenants have.
    pub fn no_such_resource() -> Self {
        Self::not_found("no such resource")
    }

    pub fn overloaded(message: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut error = Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message);
        error.retry_after_secs = Some(retry_after_secs);
        error
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let message = error.to_string();
        match error.kind() {
            StoreErrorKind::Denied => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
            StoreErrorKind::NotFound => ApiError::not_found(message),
            StoreErrorKind::Conflict => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            StoreErrorKind::Invalid => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message),
            StoreErrorKind::QuotaExceeded => {
                // Spent compute comes back only when an admin raises the quota; an hour is a
                // polite interval to ask again.
                let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message);
                error.retry_after_secs = Some(3600);
                error
            }
            StoreErrorKind::Config | StoreErrorKind::Database | StoreErrorKind::Corrupt => {
                tracing::error!(error = %message, "metadata store failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the metadata store failed; see the server log",
                )
            }
            // `StoreErrorKind` is non-exhaustive across crates; anything new is a server fault
            // until it is mapped here.
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(status = %self.status, code = self.code, message = %self.message, "request failed");
        }
        let detail = ErrorDetail {
            code: self.code.to_string(),
            message: self.message,
            kind: error_type(self.status),
            param: self.param,
        };
        let body = ErrorBody { error: detail };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<crate::orphans::SweepError> for ApiError {
    fn from(error: crate::orphans::SweepError) -> Self {
        match error {
            crate::orphans::SweepError::Store(error) => error.into(),
            crate::orphans::SweepError::Objects(error) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("object store: {error}"))
            }
        }
    }
}

/// Turns axum's own rejections (bad JSON, bad query, bad path) into the JSON error shape.
pub fn rejection(status: StatusCode, message: String) -> ApiError {
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "payload_too_large" } else { "invalid_request" };
    ApiError::new(status, code, message)
}
