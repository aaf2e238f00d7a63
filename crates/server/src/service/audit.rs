//! The audit log's read side as use cases: a signed checkpoint of the log as it is now, the
//! key that verifies checkpoints, inclusion and consistency proofs, and pages of the records
//! themselves (a tenant's auditors see their own tenant's only). Each is authorized on the
//! audit log; none changes it.

use factory_audit::merkle::Hash;
use factory_core::{AccessRequest, Action, Resource};
use factory_store::{AuditEntry, AuditSearch};

use crate::caller::Caller;
use crate::service_error::ServiceError;
use crate::state::AppState;

/// A record's inclusion in the tree of `size` records.
#[derive(Debug, Clone)]
pub struct Inclusion {
    pub index: u64,
    pub size: u64,
    /// The RFC 6962 leaf hash of the record.
    pub leaf_hash: Hash,
    /// The root of the tree of `size` records.
    pub root: Hash,
    /// Hashes from the leaf to the root.
    pub proof: Vec<Hash>,
}

/// That the tree of `old` records is a prefix of the tree of `new`.
#[derive(Debug, Clone)]
pub struct Consistency {
    pub old: u64,
    pub new: u64,
    pub old_root: Hash,
    pub new_root: Hash,
    pub proof: Vec<Hash>,
}

/// A page of records.
#[derive(Debug, Clone)]
pub struct RecordsPage {
    pub entries: Vec<AuditEntry>,
    /// The `from` of the next page, `None` at the end.
    pub next: Option<u64>,
}

async fn allow(state: &AppState, caller: &Caller, action: Action) -> Result<(), ServiceError> {
    let request = AccessRequest::new(&caller.principal, action, Resource::audit_log());
    state.store.authorize(state.pdp.as_ref(), &request, &caller.request_id).await?;
    Ok(())
}

/// A signed checkpoint of the log as it is now (C2SP tlog-checkpoint).
pub async fn checkpoint(state: &AppState, caller: &Caller) -> Result<String, ServiceError> {
    allow(state, caller, Action::AuditProof).await?;
    Ok(state.store.issue_checkpoint(&state.checkpoints).await?)
}

/// The key that verifies checkpoints (a C2SP signed-note vkey).
pub async fn public_key(state: &AppState, caller: &Caller) -> Result<String, ServiceError> {
    allow(state, caller, Action::AuditProof).await?;
    Ok(state.checkpoints.signer.verifier_key())
}

/// The proof that record `index` is in the tree of `size` records.
pub async fn inclusion(state: &AppState, caller: &Caller, index: u64, size: u64) -> Result<Inclusion, ServiceError> {
    allow(state, caller, Action::AuditProof).await?;
    let log_size = state.store.audit_size().await?;
    if size > log_size || index >= size {
        return Err(ServiceError::invalid(format!(
            "index must be below size and size at most the log's size {log_size} (got index {index}, size {size})"
        )));
    }
    prove(state, index, size).await
}

async fn prove(state: &AppState, index: u64, size: u64) -> Result<Inclusion, ServiceError> {
    let (leaf_hash, proof) = state.store.inclusion_proof(index, size).await?;
    let root = state.store.audit_root(size).await?;
    Ok(Inclusion { index, size, leaf_hash, root, proof })
}

/// The proof that the tree of `old` records is a prefix of the tree of `new`.
pub async fn consistency(state: &AppState, caller: &Caller, old: u64, new: u64) -> Result<Consistency, ServiceError> {
    allow(state, caller, Action::AuditProof).await?;
    let size = state.store.audit_size().await?;
    if old == 0 || old > new || new > size {
        return Err(ServiceError::invalid(format!(
            "need 0 < old <= new <= {size} (the log's size); got old {old}, new {new}"
        )));
    }
    let proof = state.store.consistency_proof(old, new).await?;
    let old_root = state.store.audit_root(old).await?;
    let new_root = state.store.audit_root(new).await?;
    Ok(Consistency { old, new, old_root, new_root, proof })
}

/// At most `limit` records (1 to 1000, default 100) from index `from`; a tenant's caller sees
/// its own tenant's records only.
pub async fn records(
    state: &AppState,
    caller: &Caller,
    from: u64,
    limit: Option<u32>,
) -> Result<RecordsPage, ServiceError> {
    search(state, caller, AuditSearch::default(), from, limit).await
}

/// At most `limit` records (1 to 1000, default 100) from index `from` that match `search`; a
/// tenant's caller sees its own tenant's records only, whatever tenant it names.
pub async fn search(
    state: &AppState,
    caller: &Caller,
    mut search: AuditSearch,
    from: u64,
    limit: Option<u32>,
) -> Result<RecordsPage, ServiceError> {
    allow(state, caller, Action::AuditRead).await?;
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ServiceError::invalid("limit: must be between 1 and 1000"));
    }
    if let Some(tenant) = &caller.principal.tenant {
        search.tenant = Some(tenant.clone());
    }
    let entries = state.store.search_audit(&search, from, limit).await?;
    let next = if entries.len() == limit as usize { entries.last().map(|e| e.record.index + 1) } else { None };
    Ok(RecordsPage { entries, next })
}

/// A record with everything needed to check, without trusting the server, that the log holds
/// it: its canonical bytes (the leaf), a signed checkpoint, the proof of inclusion in the tree
/// that checkpoint signs, and the key that verifies the checkpoint.
pub struct ProvenRecord {
    pub entry: AuditEntry,
    pub canonical: String,
    pub checkpoint: String,
    pub inclusion: Inclusion,
    pub public_key: String,
}

/// Record `index` with its proof; another tenant's record is not found.
pub async fn proven_record(state: &AppState, caller: &Caller, index: u64) -> Result<ProvenRecord, ServiceError> {
    allow(state, caller, Action::AuditRead).await?;
    let missing = || ServiceError::not_found(format!("audit record {index} does not exist"));
    let (entry, canonical) = state.store.audit_record(index).await?.ok_or_else(missing)?;
    if let Some(tenant) = &caller.principal.tenant {
        if entry.record.tenant.as_deref() != Some(tenant.as_str()) {
            return Err(missing());
        }
    }
    let checkpoint = state.store.issue_checkpoint(&state.checkpoints).await?;
    let signed = state
        .checkpoints
        .signer
        .verifier()
        .verify(&checkpoint)
        .map_err(|e| ServiceError::internal(format!("the signed checkpoint: {e}")))?;
    let inclusion = prove(state, index, signed.size).await?;
    let public_key = state.checkpoints.signer.verifier_key();
    Ok(ProvenRecord { entry, canonical, checkpoint, inclusion, public_key })
}
