//! What a use case answers when it cannot do what was asked: a kind (what went wrong, in the
//! terms of the factory, not of HTTP) and a message for the person who asked.
//!
//! It sits below the services, not inside them, because the parts `AppState` is built from
//! (lookups, engines, the registry's verification) fail in the same terms; the HTTP layer maps
//! each kind to a status once, in `error.rs`.

use factory_store::{StoreError, StoreErrorKind};

/// Why a use case failed. Each kind is one stable machine-readable code (see [`Self::code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is malformed or out of bounds; the message names the field.
    Invalid,
    /// The input is well formed but the store refused it as inconsistent.
    Unprocessable,
    /// No usable API key.
    Unauthenticated,
    /// Policy refused the action.
    Forbidden,
    /// It does not exist, or not for this caller (the two answers are one).
    NotFound,
    /// A deployment named as an OpenAI `model` does not exist.
    ModelNotFound,
    /// The state has moved on (a run not finished, a name taken).
    Conflict,
    /// The tenant's compute quota is spent.
    QuotaExceeded,
    /// A deployment's rate limit or budget is spent.
    RateLimited,
    /// An engine or the embedding pool is full.
    EngineOverloaded,
    /// The tenant has its share of requests of this kind in flight.
    TenantInFlightLimit,
    /// The server as a whole is full.
    Overloaded,
    /// No variant of the deployment could answer.
    ModelUnavailable,
    /// A signature or a file digest does not check out.
    VerificationFailed,
    /// The model's files are signed but cannot be loaded into an engine.
    UnservableModel,
    /// A chat template does not compile or render.
    BadChatTemplate,
    /// A guardrail needs something the deployment lacks (an embedding model).
    GuardrailUnavailable,
    /// A guardrail refused the request or the answer.
    GuardrailBlocked,
    /// An upstream is not among those the installation allows.
    UpstreamNotAllowed,
    /// The secret an upstream names is not granted to the tenant.
    SecretNotGranted,
    /// An upstream answered with an error or not at all.
    UpstreamFailed,
    /// The engine failed while generating.
    GenerationFailed,
    /// A body past its size limit.
    TooLarge,
    /// The work took longer than it may.
    Timeout,
    /// A fault of the server (its store, its object store, a bug).
    Internal,
}

impl ErrorKind {
    /// The code error bodies carry.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Invalid | ErrorKind::Unprocessable => "invalid_request",
            ErrorKind::Unauthenticated => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::QuotaExceeded => "quota_exceeded",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::EngineOverloaded => "engine_overloaded",
            ErrorKind::TenantInFlightLimit => "tenant_in_flight_limit",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::ModelUnavailable => "model_unavailable",
            ErrorKind::VerificationFailed => "verification_failed",
            ErrorKind::UnservableModel => "unservable_model",
            ErrorKind::BadChatTemplate => "bad_chat_template",
            ErrorKind::GuardrailUnavailable => "guardrail_unavailable",
            ErrorKind::GuardrailBlocked => "guardrail_blocked",
            ErrorKind::UpstreamNotAllowed => "upstream_not_allowed",
            ErrorKind::SecretNotGranted => "secret_not_granted",
            ErrorKind::UpstreamFailed => "upstream_failed",
            ErrorKind::GenerationFailed => "generation_failed",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
        }
    }

    /// The HTTP status this kind of failure answers with: the one mapping from the services'
    /// terms to HTTP's (the API's errors and the Batch API's error lines both use it).
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::Invalid | ErrorKind::GuardrailBlocked => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::Forbidden | ErrorKind::UpstreamNotAllowed | ErrorKind::SecretNotGranted => 403,
            ErrorKind::NotFound | ErrorKind::ModelNotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::TooLarge => 413,
            ErrorKind::Unprocessable
            | ErrorKind::VerificationFailed
            | ErrorKind::UnservableModel
            | ErrorKind::BadChatTemplate
            | ErrorKind::GuardrailUnavailable => 422,
            ErrorKind::QuotaExceeded
            | ErrorKind::RateLimited
            | ErrorKind::EngineOverloaded
            | ErrorKind::TenantInFlightLimit => 429,
            ErrorKind::Overloaded | ErrorKind::ModelUnavailable => 503,
            ErrorKind::UpstreamFailed => 502,
            ErrorKind::Timeout => 504,
            ErrorKind::GenerationFailed | ErrorKind::Internal => 500,
        }
    }
}

/// The class of error OpenAI names for an HTTP status (`invalid_request_error`,
/// `rate_limit_error`, ...).
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        409 => "conflict_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

#[derive(Debug, Clone)]
pub struct ServiceError {
    pub kind: ErrorKind,
    pub message: String,
    /// The input field at fault, when one is (OpenAI's `param`).
    pub param: Option<String>,
    /// When asking again may succeed, in seconds (overload, limits, quota).
    pub retry_after_secs: Option<u64>,
}

impl ServiceError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ServiceError { kind, message: message.into(), param: None, retry_after_secs: None }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// A fault of the server, from any error's text (`.map_err(ServiceError::fault)`).
    pub fn fault(error: impl std::fmt::Display) -> Self {
        Self::internal(error.to_string())
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, message)
    }

    /// The one answer for "does not exist" and "exists in another tenant", so that ids and
    /// names are no oracle of what other tenants have.
    pub fn no_such_resource() -> Self {
        Self::not_found("no such resource")
    }

    pub fn overloaded(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(ErrorKind::Overloaded, message).retry_after(retry_after_secs)
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_secs = Some(seconds);
        self
    }

    pub fn at_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.code())
    }
}

impl std::error::Error for ServiceError {}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        let message = error.to_string();
        match error.kind() {
            StoreErrorKind::Denied => ServiceError::new(ErrorKind::Forbidden, message),
            StoreErrorKind::NotFound => ServiceError::not_found(message),
            StoreErrorKind::Conflict => ServiceError::new(ErrorKind::Conflict, message),
            StoreErrorKind::Invalid => ServiceError::new(ErrorKind::Unprocessable, message),
            // Spent compute comes back only when an admin raises the quota; an hour is a
            // polite interval to ask again.
            StoreErrorKind::QuotaExceeded => ServiceError::new(ErrorKind::QuotaExceeded, message).retry_after(3600),
            StoreErrorKind::Config | StoreErrorKind::Database | StoreErrorKind::Corrupt => {
                tracing::error!(error = %message, "metadata store failed");
                ServiceError::internal("the metadata store failed; see the server log")
            }
            // `StoreErrorKind` is non-exhaustive across crates; anything new is a server fault
            // until it is mapped here.
            _ => ServiceError::internal(message),
        }
    }
}
