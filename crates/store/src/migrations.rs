//! Versioned schema migrations, applied at start inside one transaction each.
//!
//! Hand-written rather than `sqlx::migrate!` because the macro would compile both database
//! drivers a second time for the host, which costs minutes on a cold build. The DDL is written
//! once with two placeholders that differ between SQLite and PostgreSQL.

use crate::{Dialect, Store, StoreError, StoreErrorKind};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "spine", include_str!("migrations/0001_spine.sql")),
    (2, "datasets", include_str!("migrations/0002_datasets.sql")),
    (3, "runs", include_str!("migrations/0003_runs.sql")),
    (4, "models", include_str!("migrations/0004_models.sql")),
    (5, "scheduling", include_str!("migrations/0005_scheduling.sql")),
    (6, "deployments", include_str!("migrations/0006_deployments.sql")),
    (7, "inference_log", include_str!("migrations/0007_inference_log.sql")),
    (8, "inference_bodies", include_str!("migrations/0008_inference_bodies.sql")),
    (9, "feedback", include_str!("migrations/0009_feedback.sql")),
    (10, "pipelines", include_str!("migrations/0010_pipelines.sql")),
    (11, "audit_subtrees", include_str!("migrations/0011_audit_subtrees.sql")),
    (12, "inference_structure", include_str!("migrations/0012_inference_structure.sql")),
    (13, "batches", include_str!("migrations/0013_batches.sql")),
    (14, "console_sessions", include_str!("migrations/0014_console_sessions.sql")),
    (15, "console_search", include_str!("migrations/0015_console_search.sql")),
    (16, "job_placement", include_str!("migrations/0016_job_placement.sql")),
];

/// The migration that adds the audit log's proof index, which existing records need filled in.
pub(crate) const AUDIT_SUBTREES: i64 = 11;

pub(crate) async fn apply(store: &Store) -> Result<(), StoreError> {
    let mut write = store.begin_write().await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)")
        .execute(&mut *write.transaction)
        .await?;
    write.commit().await?;

    for (version, name, template) in MIGRATIONS {
        let mut write = store.begin_write().await?;
        let applied: Option<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
            .bind(*version)
            .fetch_optional(&mut *write.transaction)
            .await?;
        if applied.is_some() {
            continue;
        }
        for statement in render(template, store.dialect()).split(';') {
            let statement = statement.trim();
            if statement.is_empty() {
                continue;
            }
            sqlx::query(statement).execute(&mut *write.transaction).await.map_err(|e| {
                StoreError::new(StoreErrorKind::Database, format!("migration {version} ({name}) failed: {e}"))
            })?;
        }
        if *version == AUDIT_SUBTREES {
            // Data, not DDL: computed in Rust, committed with the column so no reader ever
            // sees the column without its values.
            crate::audit_log::index_existing_records(&mut write.transaction).await?;
        }
        sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
            .bind(*version)
            .bind(*name)
            .bind(factory_core::time::now_millis())
            .execute(&mut *write.transaction)
            .await?;
        write.commit().await?;
        tracing::info!(version, name, "applied metadata migration");
    }
    let newest: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations").fetch_one(store.pool()).await?;
    let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if newest.unwrap_or(0) > known {
        return Err(StoreError::new(
            StoreErrorKind::Config,
            format!("the database is at schema version {newest:?}, newer than this binary knows ({known}); upgrade the binary"),
        ));
    }
    Ok(())
}

/// Substitutes the dialect's types and drops `--` comment lines, so that splitting the result
/// on `;` yields exactly the statements.
fn render(template: &str, dialect: Dialect) -> String {
    let (blob, serial) = match dialect {
        Dialect::Sqlite => ("BLOB", "INTEGER PRIMARY KEY AUTOINCREMENT"),
        Dialect::Postgres => ("BYTEA", "BIGSERIAL PRIMARY KEY"),
    };
    let without_comments: Vec<&str> = template.lines().filter(|line| !line.trim_start().starts_with("--")).collect();
    let mut sql = without_comments.join("\n").replace("{blob}", blob).replace("{serial_primary_key}", serial);
    // `{record_field:NAME}`: the top-level string field NAME of the JSON in the `record` column.
    while let Some(start) = sql.find("{record_field:") {
        let Some(length) = sql[start..].find('}') else { break };
        let field = sql[start + "{record_field:".len()..start + length].to_string();
        let expression = match dialect {
            Dialect::Sqlite => format!("json_extract(record, '$.{field}')"),
            Dialect::Postgres => format!("(record::json ->> '{field}')"),
        };
        sql.replace_range(start..=start + length, &expression);
    }
    sql
}
