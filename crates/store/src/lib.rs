//! The metadata store: every durable fact the factory keeps about tenants, keys, jobs, events
//! and its audit log, behind one interface with two adapters (SQLite embedded, PostgreSQL at
//! scale) that share all SQL but the DDL and the job-claim statement.
//!
//! Architecture Invariant: the only way to change state is a `Change`, which `begin_change`
//! hands out after the policy decision point allowed the request, and whose `commit` appends
//! the audit record and the outbox event in the same transaction as the change itself. A denied
//! request is audited too. Bookkeeping that changes no domain fact (delivery cursors, lease
//! heartbeats, checkpoint signatures over the log) is written directly.

mod audit_log;
pub mod batches;
pub mod datasets;
pub mod deployments;
mod governed;
pub mod identity;
pub mod inference;
pub mod jobs;
mod migrations;
pub mod models;
pub mod outbox;
pub mod pipelines;
pub mod runs;
pub mod sessions;

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use tokio::sync::{Mutex, Notify};

pub use audit_log::{AuditEntry, AuditSearch, CheckpointIssuer, DetailsCheck};
pub use governed::{Change, Committed, Event};

/// Which database the store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn from_url(url: &str) -> Result<Dialect, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Dialect::Postgres)
        } else {
            Err(StoreError::new(StoreErrorKind::Config, format!("unsupported database URL {url:?}")))
        }
    }
}

/// What callers branch on; the message says the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The policy decision point said no; the denial is already audited.
    Denied,
    NotFound,
    /// A uniqueness or state rule was violated (tenant exists, key already revoked).
    Conflict,
    /// The caller's input was unacceptable.
    Invalid,
    Config,
    Database,
    /// Stored data failed an integrity check.
    Corrupt,
    /// A tenant's quota (compute-seconds) is spent.
    QuotaExceeded,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    /// The decision behind a `Denied` error, so the API can name the policies.
    pub decision: Option<factory_core::Decision>,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError { kind, message: message.into(), decision: None }
    }

    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        let kind = match &error {
            sqlx::Error::RowNotFound => StoreErrorKind::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreErrorKind::Conflict,
            _ => StoreErrorKind::Database,
        };
        StoreError::new(kind, format!("database: {error}"))
    }
}

/// The metadata store. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// SQLite allows one writer; queueing writers here instead of in SQLite's busy loop keeps
    /// latency fair and avoids `SQLITE_BUSY` on lock upgrades.
    sqlite_writer: Option<Arc<Mutex<()>>>,
    /// Woken after every commit so the outbox dispatcher delivers without polling delay.
    pub(crate) committed: Arc<Notify>,
    /// Governed changes committed through this handle (and its clones) so far: caches of what
    /// changes write are valid only while it stays the same.
    pub(crate) changes: Arc<std::sync::atomic::AtomicU64>,
}

impl Store {
    /// Connects and applies pending migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::from_url(url)?;
        let max_connections = match dialect {
            Dialect::Sqlite => 8,
            Dialect::Postgres => 16,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await
            .map_err(|e| StoreError::new(StoreErrorKind::Database, format!("cannot open {}: {e}", redact_url(url))))?;
        if dialect == Dialect::Sqlite {
            // WAL lets readers (and `factory audit verify`) run beside the writer; the setting
            // persists in the file.
            sqlx::query("PRAGMA journal_mode=WAL").execute(&pool).await?;
        }
        let store = Store {
            pool,
            dialect,
            sqlite_writer: (dialect == Dialect::Sqlite).then(|| Arc::new(Mutex::new(()))),
            committed: Arc::new(Notify::new()),
            changes: Arc::default(),
        };
        migrations::apply(&store).await?;
        Ok(store)
    }

    /// Connects without migrating or writing anything, for offline inspection such as
    /// `factory audit verify`. SQLite URLs are opened read-only.
    pub async fn open_read_only(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::from_url(url)?;
        let url = match dialect {
            Dialect::Sqlite => {
                let path = url.split('?').next().unwrap_or(url);
                format!("{path}?mode=ro")
            }
            Dialect::Postgres => url.to_string(),
        };
        let pool =
            AnyPoolOptions::new().max_connections(2).connect(&url).await.map_err(|e| {
                StoreError::new(StoreErrorKind::Database, format!("cannot open {}: {e}", redact_url(&url)))
            })?;
        Ok(Store { pool, dialect, sqlite_writer: None, committed: Arc::new(Notify::new()), changes: Arc::default() })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// True when the database answers; used by `/readyz`.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await.is_ok()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs `sql` in a write transaction outside the governed path. Only migrations and
    /// bookkeeping use it (see the crate doc).
    pub(crate) async fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let guard = match &self.sqlite_writer {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        // SQLite: a transaction that has read cannot wait for the write lock (it fails at once,
        // "database is locked"), and a dropped transaction's rollback runs only when its
        // connection next works, so the lock can outlive the writer guard for a moment. Taking
        // the lock at BEGIN waits for it instead.
        let transaction = match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.pool.begin().await?,
        };
        Ok(WriteTransaction { transaction, _guard: guard })
    }
}

pub(crate) struct WriteTransaction {
    pub(crate) transaction: sqlx::Transaction<'static, sqlx::Any>,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTransaction {
    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        self.transaction.commit().await?;
        Ok(())
    }
}

/// A database URL with its password hidden, fit for logs and messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// The error for a stored value that no longer parses.
pub(crate) fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::new(StoreErrorKind::Corrupt, format!("stored {what} is invalid: {error}"))
}

pub(crate) fn opt_string(row: &AnyRow, column: &str) -> Result<Option<String>, StoreError> {
    Ok(row.try_get::<Option<String>, _>(column)?)
}

/// Keeps `digest` from the orphan sweep for `owner` (a run, a model version, a file, a batch)
/// of `tenant`: an object is deleted only when no owner references it.
pub(crate) async fn reference_artifact(
    connection: &mut sqlx::AnyConnection,
    digest: &str,
    tenant: &factory_core::TenantName,
    owner: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO artifact_references (digest, tenant, owner) VALUES ($1, $2, $3) \
         ON CONFLICT (digest, tenant, owner) DO NOTHING",
    )
    .bind(digest)
    .bind(tenant.as_str())
    .bind(owner)
    .execute(connection)
    .await?;
    Ok(())
}

/// Drops every reference `owner` of `tenant` holds; what nothing else references goes with the
/// next orphan sweep.
pub(crate) async fn release_artifacts(
    connection: &mut sqlx::AnyConnection,
    tenant: &factory_core::TenantName,
    owner: &str,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM artifact_references WHERE tenant = $1 AND owner = $2")
        .bind(tenant.as_str())
        .bind(owner)
        .execute(connection)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests;
