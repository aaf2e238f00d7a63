//! Console sessions. A browser signs in with an API key (`session.open`) and holds a cookie
//! whose value is a random secret (stored only as its digest); each request of the session acts
//! as the key, as the key stands then, through the same authorization as the API; signing out
//! closes it (`session.close`). A session ends on its own when idle for [`IDLE_MILLIS`] or
//! [`LIFETIME_MILLIS`] after it began, and with its key.

use factory_core::secrets::{encode_hex, new_id, random_bytes};
use factory_core::time::now_millis;
use factory_core::{AccessRequest, Action, Resource};
use factory_store::sessions::Session;
use factory_store::Event;

use crate::caller::Caller;
use crate::service::Recorded;
use crate::service_error::ServiceError;
use crate::state::AppState;

/// A session unused this long is over.
pub const IDLE_MILLIS: i64 = 30 * 60 * 1000;
/// A session ends this long after it began, however busy.
pub const LIFETIME_MILLIS: i64 = 12 * 3600 * 1000;
/// The longest cookie value looked up as a session's secret (secrets are 64 hex digits).
const MAX_SECRET_BYTES: usize = 128;
/// How often a session's last use is written: its idle bound is this coarse, and a busy
/// session costs one write a minute, not one a page.
const SEEN_EVERY_MILLIS: i64 = 60 * 1000;

/// A new session and the secret its cookie carries (shown once, as an API key is).
pub struct SignedIn {
    pub secret: String,
    pub session: Session,
}

/// Opens a session for the key whose secret is `key_secret` (`session.opened`).
pub async fn sign_in(state: &AppState, request_id: &str, key_secret: &str) -> Result<Recorded<SignedIn>, ServiceError> {
    let key = state
        .lookups
        .key(key_secret)
        .await?
        .ok_or_else(|| ServiceError::unauthorized("the API key is unknown, revoked or expired"))?;
    let now = now_millis();
    let session = Session {
        id: new_id("session"),
        key_id: key.id.clone(),
        csrf: encode_hex(&random_bytes()),
        created_at: now,
        last_seen_at: now,
        expires_at: key.expires_at.map_or(now + LIFETIME_MILLIS, |end| end.min(now + LIFETIME_MILLIS)),
        revoked_at: None,
    };
    let secret = encode_hex(&random_bytes());
    let request =
        AccessRequest::new(&key.principal(), Action::SessionOpen, Resource::session(&key.id, key.tenant.as_ref()));
    let mut change = state.store.begin_change(state.pdp.as_ref(), request, request_id).await?;
    change.open_session(&session, &secret).await?;
    let details = serde_json::json!({ "session": session.id, "key": key.id, "expires_at": session.expires_at });
    let committed = change.commit(details.clone(), Event::new("session.opened", details)).await?;
    Ok(Recorded { value: SignedIn { secret, session }, committed })
}

/// The session whose cookie carries `secret` and the caller its request acts as; `None` when
/// it is over (signed out, idle, past its end) or its key is no longer usable.
pub async fn resume(
    state: &AppState,
    secret: &str,
    request_id: String,
    client_request_id: Option<String>,
) -> Result<Option<(Session, Caller)>, ServiceError> {
    // A cookie longer than any secret this issues is no session; it is not even looked up.
    if secret.len() > MAX_SECRET_BYTES {
        return Ok(None);
    }
    let Some(session) = state.store.session(secret).await? else { return Ok(None) };
    let now = now_millis();
    if session.revoked_at.is_some() || now >= session.expires_at || now - session.last_seen_at > IDLE_MILLIS {
        return Ok(None);
    }
    let Some(key) = state.store.api_key(&session.key_id).await?.filter(|key| key.usable_at(now)) else {
        return Ok(None);
    };
    if now - session.last_seen_at > SEEN_EVERY_MILLIS {
        state.store.session_seen(&session.id, now).await?;
    }
    Ok(Some((session, Caller { principal: key.principal(), request_id, client_request_id })))
}

/// Closes `session` (`session.closed`): its cookie opens nothing any more.
pub async fn sign_out(state: &AppState, caller: &Caller, session: &Session) -> Result<Recorded<()>, ServiceError> {
    let resource = Resource::session(&session.key_id, caller.principal.tenant.as_ref());
    let request = AccessRequest::new(&caller.principal, Action::SessionClose, resource);
    let mut change = state.store.begin_change(state.pdp.as_ref(), request, &caller.request_id).await?;
    change.close_session(&session.id, now_millis()).await?;
    let details = serde_json::json!({ "session": session.id, "key": session.key_id });
    let committed = change.commit(details.clone(), Event::new("session.closed", details)).await?;
    Ok(Recorded { value: (), committed })
}
