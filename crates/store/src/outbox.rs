//! Delivers committed events to in-process subscribers, at least once, in commit order.
//!
//! Each subscriber has a durable cursor (the last event id it acknowledged), so delivery
//! survives a restart; a handler may see an event again after a crash and must use the event's
//! idempotency key to stay idempotent. Event ids grow in commit order because every change
//! allocates its id while holding the audit head's row lock (see `governed.rs`), so a cursor
//! never skips a late-committing event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Row;
use tokio::sync::watch;

use crate::{Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveredEvent {
    pub id: i64,
    pub topic: String,
    pub idempotency_key: String,
    pub payload: serde_json::Value,
    pub audit_index: u64,
}

#[async_trait::async_trait]
pub trait Subscriber: Send + Sync {
    /// A stable name: the cursor is stored under it.
    fn name(&self) -> &str;

    fn wants(&self, _topic: &str) -> bool {
        true
    }

    async fn handle(&self, event: &DeliveredEvent) -> Result<(), String>;

    /// Handles `events` in order; on failure, how many were handled before it and why. A
    /// subscriber that can pipeline (publish a batch, then await the acknowledgements) overrides
    /// this; the cursor then moves once per batch.
    async fn handle_batch(&self, events: &[DeliveredEvent]) -> Result<(), (usize, String)> {
        for (handled, event) in events.iter().enumerate() {
            self.handle(event).await.map_err(|message| (handled, message))?;
        }
        Ok(())
    }
}

pub struct Dispatcher {
    store: Store,
    subscribers: Vec<Arc<dyn Subscriber>>,
    retry_at: HashMap<String, Instant>,
    batch: u32,
}

impl Dispatcher {
    pub fn new(store: Store, subscribers: Vec<Arc<dyn Subscriber>>) -> Self {
        Dispatcher { store, subscribers, retry_at: HashMap::new(), batch: 256 }
    }

    /// Delivers everything pending to every subscriber whose back-off has passed; returns how
    /// many deliveries succeeded.
    pub async fn deliver_pending(&mut self) -> Result<usize, StoreError> {
        let mut delivered = 0;
        for subscriber in self.subscribers.clone() {
            let name = subscriber.name().to_string();
            if self.retry_at.get(&name).is_some_and(|at| *at > Instant::now()) {
                continue;
            }
            delivered += self.deliver_to(subscriber.as_ref()).await?;
        }
        Ok(delivered)
    }

    async fn deliver_to(&mut self, subscriber: &dyn Subscriber) -> Result<usize, StoreError> {
        let name = subscriber.name();
        let cursor = self.cursor(name).await?;
        let rows = sqlx::query(
            "SELECT id, topic, idempotency_key, payload, audit_index FROM outbox WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(cursor)
        .bind(i64::from(self.batch))
        .fetch_all(self.store.pool())
        .await?;
        // The wanted events, each with the cursor to keep should it fail: the id before it, so
        // the events it skipped past are not delivered again.
        let (mut events, mut cursors_before) = (Vec::new(), Vec::new());
        let mut acknowledged = cursor;
        for row in rows {
            let payload: String = row.try_get("payload")?;
            let event = DeliveredEvent {
                id: row.try_get("id")?,
                topic: row.try_get("topic")?,
                idempotency_key: row.try_get("idempotency_key")?,
                payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
                audit_index: row.try_get::<i64, _>("audit_index")? as u64,
            };
            let id = event.id;
            if subscriber.wants(&event.topic) {
                cursors_before.push(acknowledged);
                events.push(event);
            }
            acknowledged = id;
        }
        if let Err((handled, message)) = subscriber.handle_batch(&events).await {
            let before_failure = cursors_before.get(handled).copied().unwrap_or(acknowledged);
            self.record_failure(name, before_failure, &message).await?;
            return Ok(handled);
        }
        let delivered = events.len();
        if acknowledged != cursor {
            self.store_cursor(name, acknowledged).await?;
        }
        self.retry_at.remove(name);
        Ok(delivered)
    }

    async fn cursor(&self, name: &str) -> Result<i64, StoreError> {
        let cursor: Option<i64> = sqlx::query_scalar("SELECT last_event_id FROM outbox_cursors WHERE subscriber = $1")
            .bind(name)
            .fetch_optional(self.store.pool())
            .await?;
        Ok(cursor.unwrap_or(0))
    }

    async fn store_cursor(&self, name: &str, last_event_id: i64) -> Result<(), StoreError> {
        let mut write = self.store.begin_write().await?;
        sqlx::query(
            "INSERT INTO outbox_cursors (subscriber, last_event_id, failures, last_error) VALUES ($1, $2, 0, NULL) \
             ON CONFLICT (subscriber) DO UPDATE SET last_event_id = excluded.last_event_id, failures = 0, last_error = NULL",
        )
        .bind(name)
        .bind(last_event_id)
        .execute(&mut *write.transaction)
        .await?;
        write.commit().await
    }

    async fn record_failure(&mut self, name: &str, acknowledged: i64, message: &str) -> Result<(), StoreError> {
        let mut write = self.store.begin_write().await?;
        let failures: i64 = sqlx::query_scalar(
            "INSERT INTO outbox_cursors (subscriber, last_event_id, failures, last_error) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (subscriber) DO UPDATE SET last_event_id = excluded.last_event_id, \
             failures = outbox_cursors.failures + 1, last_error = excluded.last_error RETURNING failures",
        )
        .bind(name)
        .bind(acknowledged)
        .bind(message)
        .fetch_one(&mut *write.transaction)
        .await?;
        write.commit().await?;
        let delay = Duration::from_millis(100u64.saturating_mul(1 << failures.clamp(0, 9)));
        tracing::warn!(subscriber = name, failures, error = message, "event delivery failed; retrying later");
        self.retry_at.insert(name.to_string(), Instant::now() + delay);
        Ok(())
    }

    /// Delivers until `shutdown` turns true, waking on every commit and at least every second.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            if let Err(error) = self.deliver_pending().await {
                tracing::error!(%error, "outbox dispatch failed");
            }
            tokio::select! {
                _ = self.store.committed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}
