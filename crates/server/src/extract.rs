//! Request extractors: the authenticated caller, and JSON/query/path extractors whose
//! rejections use the factory's JSON error shape instead of axum's plain text.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

pub use crate::caller::Caller;
use crate::error::{rejection, ApiError};
use crate::state::AppState;

/// Who names a request: the server's own id, always fresh, and the client's `x-request-id` when
/// it sent a valid one. Audit records carry both, so a client can correlate its calls but can
/// neither bloat the log with a huge id nor pass one request off as another.
#[derive(Debug, Clone)]
pub struct RequestIds {
    pub server: String,
    pub client: Option<String>,
}

/// The longest client `x-request-id` kept; longer ones are refused, not truncated.
pub const MAX_CLIENT_REQUEST_ID: usize = 128;

impl RequestIds {
    /// Reads the client's id from `value`: 1 to 128 characters of `[A-Za-z0-9._:/+=-]` (UUIDs,
    /// hex and base64 ids fit), else an error naming the header.
    pub fn new(client: Option<&[u8]>) -> Result<Self, ApiError> {
        let client = client
            .map(|bytes| {
                let valid = (1..=MAX_CLIENT_REQUEST_ID).contains(&bytes.len())
                    && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"._:/+=-".contains(b));
                if valid {
                    Ok(String::from_utf8_lossy(bytes).into_owned())
                } else {
                    Err(ApiError::invalid(format!(
                        "x-request-id: 1 to {MAX_CLIENT_REQUEST_ID} characters of letters, digits and ._:/+=-"
                    )))
                }
            })
            .transpose()?;
        Ok(RequestIds { server: uuid::Uuid::now_v7().to_string(), client })
    }

    /// The id audit records and the inference log store: the server's, then the client's.
    pub fn recorded(&self) -> String {
        match &self.client {
            Some(client) => format!("{} client:{client}", self.server),
            None => self.server.clone(),
        }
    }

    /// The id a response echoes: the client's own, else the server's.
    pub fn echoed(&self) -> &str {
        self.client.as_deref().unwrap_or(&self.server)
    }
}

/// The request's recorded id (see [`RequestIds::recorded`]).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let id = parts.extensions.get::<RequestIds>().map(RequestIds::recorded).unwrap_or_else(|| "unknown".into());
        Ok(RequestId(id))
    }
}

/// The secret of an `Authorization: Bearer <key>` header, if the request has a well-formed one.
pub fn bearer_secret(headers: &axum::http::HeaderMap) -> Option<&str> {
    let header = headers.get(axum::http::header::AUTHORIZATION)?;
    let secret = header.to_str().ok()?.strip_prefix("Bearer ")?.trim();
    (!secret.is_empty()).then_some(secret)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let RequestId(request_id) = RequestId::from_request_parts(parts, state).await?;
        let client_request_id = parts.extensions.get::<RequestIds>().and_then(|ids| ids.client.clone());
        if !parts.headers.contains_key(axum::http::header::AUTHORIZATION) {
            if let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) {
                return session_caller(parts, state, secret, request_id, client_request_id).await;
            }
            return Err(ApiError::unauthorized("missing Authorization: Bearer <api key> header"));
        }
        let secret = bearer_secret(&parts.headers)
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <api key>`"))?;
        let key = state
            .lookups
            .key(secret)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the API key is unknown, revoked or expired"))?;
        Ok(Caller { principal: key.principal(), request_id, client_request_id })
    }
}

/// The console's session cookie.
pub const SESSION_COOKIE: &str = "factory_session";
/// The header a console page's script sends its session's CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The value of the cookie `name`, if the request carries one.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The caller a console session acts as, for the API its pages' scripts call: the session's
/// key as it stands now. A request that may change anything (any method but GET and HEAD) must
/// also carry the session's CSRF token in `x-csrf-token`, which no other site's page can set
/// (the cookie is SameSite=Strict besides).
async fn session_caller(
    parts: &Parts,
    state: &AppState,
    secret: &str,
    request_id: String,
    client_request_id: Option<String>,
) -> Result<Caller, ApiError> {
    let resumed = crate::service::sessions::resume(state, secret, request_id, client_request_id).await?;
    let (session, caller) = resumed.ok_or_else(|| ApiError::unauthorized("the console session is over"))?;
    let safe = matches!(parts.method, axum::http::Method::GET | axum::http::Method::HEAD);
    let token = parts.headers.get(CSRF_HEADER).map(|value| value.as_bytes());
    if !safe && token != Some(session.csrf.as_bytes()) {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            "x-csrf-token: a console session's request that changes anything must carry its token",
        ));
    }
    Ok(caller)
}

pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(error) => {
                let status = error.status();
                Err(rejection(status, error.body_text()))
            }
        }
    }
}

pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|error| rejection(error.status(), error.body_text()))
    }
}

pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(path) => Ok(ApiPath(path.0)),
            Err(error) => Err(rejection(error.status(), error.body_text())),
        }
    }
}
