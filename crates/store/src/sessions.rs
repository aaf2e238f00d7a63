//! The console's sessions. A session's secret (the cookie) is stored only as its SHA-256;
//! sessions are opened and closed through a `Change`, and the time a session was last seen is
//! bookkeeping.

use factory_core::secrets::sha256_hex;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Change, Store, StoreError};

/// A console session, as stored (never its secret).
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// What audit records name it by.
    pub id: String,
    /// The API key it signed in with, whose rights it acts with.
    pub key_id: String,
    /// The token every form it posts must carry.
    pub csrf: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

const SESSION_COLUMNS: &str = "id, key_id, csrf, created_at, last_seen_at, expires_at, revoked_at";

fn session_from_row(row: &AnyRow) -> Result<Session, StoreError> {
    Ok(Session {
        id: row.try_get("id")?,
        key_id: row.try_get("key_id")?,
        csrf: row.try_get("csrf")?,
        created_at: row.try_get("created_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?,
    })
}

impl Change {
    /// Opens `session`, whose cookie carries `secret`.
    pub async fn open_session(&mut self, session: &Session, secret: &str) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO console_sessions (token_hash, {SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(sha256_hex(secret.as_bytes()))
        .bind(&session.id)
        .bind(&session.key_id)
        .bind(&session.csrf)
        .bind(session.created_at)
        .bind(session.last_seen_at)
        .bind(session.expires_at)
        .bind(session.revoked_at)
        .execute(self.connection())
        .await?;
        Ok(())
    }

    /// Closes session `id` at `now`; false when it was already closed or never existed.
    pub async fn close_session(&mut self, id: &str, now: i64) -> Result<bool, StoreError> {
        let closed = sqlx::query("UPDATE console_sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(self.connection())
            .await?
            .rows_affected();
        Ok(closed > 0)
    }
}

impl Store {
    /// The session whose cookie carries `secret`, open or not.
    pub async fn session(&self, secret: &str) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(&format!("SELECT {SESSION_COLUMNS} FROM console_sessions WHERE token_hash = $1"))
            .bind(sha256_hex(secret.as_bytes()))
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// Records that session `id` was used at `now` (what its idle bound counts from).
    pub async fn session_seen(&self, id: &str, now: i64) -> Result<(), StoreError> {
        let mut write = self.begin_write().await?;
        sqlx::query("UPDATE console_sessions SET last_seen_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *write.transaction)
            .await?;
        write.commit().await
    }
}
