//! The one place where errors become HTTP statuses and log levels.
//!
//! Every error body is `{"error": {"code": "...", "message": "..."}}`; the match below is
//! exhaustive on purpose, so a new error kind forces a decision here.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use factory_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::service_error::{ErrorKind, ServiceError};

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
    crate::service_error::error_type(status.as_u16())
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
        ServiceError::from(error).into()
    }
}

/// The status each kind of failure answers with: the one mapping from the services' terms to
/// HTTP's.
fn status_of(kind: ErrorKind) -> StatusCode {
    StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        ApiError {
            status: status_of(error.kind),
            code: error.kind.code(),
            message: error.message,
            retry_after_secs: error.retry_after_secs,
            param: error.param,
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

/// Turns axum's own rejections (bad JSON, bad query, bad path) into the JSON error shape.
pub fn rejection(status: StatusCode, message: String) -> ApiError {
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "payload_too_large" } else { "invalid_request" };
    ApiError::new(status, code, message)
}
