//! The governed path: authorize, write, append the audit record, enqueue the event, commit.

use factory_audit::record::{details_digest, AuditRecord, Decision as RecordDecision};
use factory_core::{AccessRequest, Decision, Effect, PolicyDecisionPoint};
use sqlx::AnyConnection;

use crate::{Store, StoreError, StoreErrorKind, WriteTransaction};

/// The event a change publishes through the outbox once it commits.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub topic: String,
    pub payload: serde_json::Value,
}

impl Event {
    pub fn new(topic: &str, payload: serde_json::Value) -> Self {
        Event { topic: topic.to_string(), payload }
    }
}

/// What a committed change left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub audit_index: u64,
    pub event_id: i64,
}

/// An authorized, open write transaction. Dropping it without `commit` rolls everything back,
/// so a failed handler leaves neither the change nor its audit record behind.
pub struct Change {
    write: WriteTransaction,
    request: AccessRequest,
    decision: Decision,
    request_id: String,
    store: Store,
}

impl Store {
    /// Asks the policy decision point; a denial is audited and returned as a `Denied` error.
    pub async fn authorize(
        &self,
        pdp: &dyn PolicyDecisionPoint,
        request: &AccessRequest,
        request_id: &str,
    ) -> Result<Decision, StoreError> {
        let decision = pdp.decide(request);
        if decision.is_allowed() {
            return Ok(decision);
        }
        let mut write = self.begin_write().await?;
        let details = serde_json::json!({ "errors": decision.errors, "context": request.context });
        append_audit_record(&mut write.transaction, request, &decision, request_id, &details).await?;
        write.commit().await?;
        self.committed.notify_one();
        Err(denied(request, decision))
    }

    /// How many governed changes this process has committed: read it before reading what a
    /// change could alter, and the copy is current as long as the count has not moved.
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Authorizes `request` and opens the transaction its change is written in.
    pub async fn begin_change(
        &self,
        pdp: &dyn PolicyDecisionPoint,
        request: AccessRequest,
        request_id: &str,
    ) -> Result<Change, StoreError> {
        let decision = self.authorize(pdp, &request, request_id).await?;
        let write = self.begin_write().await?;
        Ok(Change { write, request, decision, request_id: request_id.to_string(), store: self.clone() })
    }

    /// For changes whose resource is only known inside the transaction (a worker claiming
    /// whichever job is next): the caller asks the PDP itself before writing.
    pub(crate) async fn begin_change_unauthorized(&self, request_id: &str) -> Result<PendingChange, StoreError> {
        Ok(PendingChange { write: self.begin_write().await?, request_id: request_id.to_string(), store: self.clone() })
    }
}

/// A transaction that has not been authorized yet; it can only read, or become a `Change`.
pub(crate) struct PendingChange {
    pub(crate) write: WriteTransaction,
    request_id: String,
    store: Store,
}

impl PendingChange {
    pub(crate) async fn authorize(
        self,
        pdp: &dyn PolicyDecisionPoint,
        request: AccessRequest,
    ) -> Result<Change, StoreError> {
        let decision = pdp.decide(&request);
        if !decision.is_allowed() {
            drop(self.write);
            let _ = self.store.authorize(pdp, &request, &self.request_id).await?;
            return Err(denied(&request, decision));
        }
        Ok(Change { write: self.write, request, decision, request_id: self.request_id, store: self.store })
    }
}

impl Change {
    pub fn request(&self) -> &AccessRequest {
        &self.request
    }

    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    pub(crate) fn connection(&mut self) -> &mut AnyConnection {
        &mut self.write.transaction
    }

    /// Appends the audit record (with a digest of `details`) and the outbox event, then commits
    /// all of it at once.
    pub async fn commit(self, details: serde_json::Value, event: Event) -> Result<Committed, StoreError> {
        self.commit_events(details, vec![event]).await
    }

    /// Like [`Change::commit`], for a change that publishes several events (a new dataset
    /// version and the lineage event of the run that made it). `Committed` names the first.
    pub async fn commit_events(
        mut self,
        details: serde_json::Value,
        events: Vec<Event>,
    ) -> Result<Committed, StoreError> {
        let audit_index =
            append_audit_record(&mut self.write.transaction, &self.request, &self.decision, &self.request_id, &details)
                .await?;
        let mut first_event_id = None;
        for (position, event) in events.iter().enumerate() {
            let idempotency_key = match position {
                0 => format!("{}#{audit_index}", event.topic),
                _ => format!("{}#{audit_index}.{position}", event.topic),
            };
            let event_id: i64 = sqlx::query_scalar(
                "INSERT INTO outbox (topic, idempotency_key, payload, audit_index, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(&event.topic)
            .bind(&idempotency_key)
            .bind(event.payload.to_string())
            .bind(audit_index as i64)
            .bind(factory_core::time::now_millis())
            .fetch_one(&mut *self.write.transaction)
            .await?;
            first_event_id.get_or_insert(event_id);
        }
        self.write.commit().await?;
        self.store.changes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.store.committed.notify_one();
        Ok(Committed { audit_index, event_id: first_event_id.unwrap_or_default() })
    }
}

fn denied(request: &AccessRequest, decision: Decision) -> StoreError {
    let mut error = StoreError::new(
        StoreErrorKind::Denied,
        format!("{} on {} is not allowed for {}", request.action, request.resource, request.principal.id),
    );
    error.decision = Some(decision);
    error
}

/// Appends one canonical record to the Merkle log. The `UPDATE ... RETURNING` on the single
/// head row takes a row lock that serializes appenders until commit, so indexes are dense and
/// in commit order on PostgreSQL as on SQLite. The roots of the subtrees the record completes
/// are stored with it, in the same transaction, so proofs never recompute the tree.
async fn append_audit_record(
    connection: &mut AnyConnection,
    request: &AccessRequest,
    decision: &Decision,
    request_id: &str,
    details: &serde_json::Value,
) -> Result<u64, StoreError> {
    let size: i64 = sqlx::query_scalar("UPDATE audit_head SET size = size + 1 WHERE id = 1 RETURNING size")
        .fetch_one(&mut *connection)
        .await?;
    let index = (size - 1) as u64;
    let tenant = request.resource.tenant.as_ref().or(request.principal.tenant.as_ref()).map(|t| t.to_string());
    let now = factory_core::time::now_millis();
    let record = AuditRecord {
        index,
        time: factory_core::time::millis_to_rfc3339(now),
        tenant: tenant.clone(),
        principal: request.principal.id.clone(),
        action: request.action.as_str().to_string(),
        resource: request.resource.to_string(),
        decision: match decision.effect {
            Effect::Allow => RecordDecision::Allow,
            Effect::Deny => RecordDecision::Deny,
        },
        policies: decision.policies.clone(),
        request_id: request_id.to_string(),
        details_digest: details_digest(details),
    };
    let bytes = record.canonical_bytes();
    let leaf_hash = factory_audit::merkle::leaf_hash(&bytes);
    let subtree_roots = crate::audit_log::subtree_roots_for_append(&mut *connection, index, leaf_hash).await?;
    let text = String::from_utf8(bytes)
        .map_err(|_| StoreError::new(StoreErrorKind::Corrupt, "canonical audit record is not UTF-8"))?;
    sqlx::query(
        "INSERT INTO audit_records (idx, record, leaf_hash, details, tenant, created_at, subtree_roots, principal, action) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(index as i64)
    .bind(text)
    .bind(leaf_hash.to_vec())
    .bind(details.to_string())
    .bind(tenant)
    .bind(now)
    .bind(subtree_roots)
    .bind(&record.principal)
    .bind(&record.action)
    .execute(&mut *connection)
    .await?;
    Ok(index)
}
