//! The store suite. Every test body runs against both adapters: an embedded SQLite file and a
//! fresh database on the PostgreSQL server at 127.0.0.1:5432 (or `FACTORY_TEST_POSTGRES_URL`),
//! which is skipped with a loud message only when no server answers.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use factory_audit::checkpoint::NoteSigner;
use factory_authz::CedarAuthorizer;
use factory_core::{AccessRequest, Action, Jurisdiction, Principal, Resource, Role, TenantName};

use crate::jobs::{NewJob, Outcome};
use crate::outbox::{DeliveredEvent, Dispatcher, Subscriber};
use crate::{CheckpointIssuer, Event, Store, StoreErrorKind};

/// Where a test's database lives; dropping it removes the SQLite directory. PostgreSQL test
/// databases are dropped by `finish`.
pub(crate) enum TestDatabase {
    Sqlite(tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl TestDatabase {
    pub(crate) fn url(&self) -> String {
        match self {
            TestDatabase::Sqlite(dir) => format!("sqlite://{}?mode=rwc", dir.path().join("metadata.db").display()),
            TestDatabase::Postgres { admin_url, name } => {
                let base = admin_url.rsplit_once('/').map(|(base, _)| base).unwrap_or(admin_url);
                format!("{base}/{name}")
            }
        }
    }

    async fn finish(self, store: Store) {
        store.close().await;
        if let TestDatabase::Postgres { admin_url, name } = self {
            if let Ok(admin) = sqlx::AnyPool::connect(&admin_url).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await;
            }
        }
    }
}

pub(crate) async fn sqlite_database() -> Option<TestDatabase> {
    Some(TestDatabase::Sqlite(tempfile::tempdir().unwrap()))
}

pub(crate) async fn postgres_database() -> Option<TestDatabase> {
    sqlx::any::install_default_drivers();
    let admin_url = std::env::var("FACTORY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    let admin = match sqlx::AnyPool::connect(&admin_url).await {
        Ok(admin) => admin,
        Err(error) => {
            factory_testkit::missing(&format!(
                "PostgreSQL at {admin_url} ({error}): the PostgreSQL adapter is untested"
            ));
            return None;
        }
    };
    let name = format!("factory_test_{}", hex::encode(&factory_core::secrets::random_bytes()[..6]));
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.unwrap();
    admin.close().await;
    Some(TestDatabase::Postgres { admin_url, name })
}

macro_rules! store_suite {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let database = super::sqlite_database().await.unwrap();
                    let store = crate::Store::open(&database.url()).await.unwrap();
                    super::$name(&store, &database).await;
                    database.finish(store).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(database) = super::postgres_database().await else { return };
                    let store = crate::Store::open(&database.url()).await.unwrap();
                    super::$name(&store, &database).await;
                    database.finish(store).await;
                }
            )+
        }
    };
}

store_suite!(
    migrations_are_idempotent,
    a_dropped_change_never_blocks_the_next_writer,
    a_change_commits_with_its_audit_record_and_event,
    denials_are_audited_and_change_nothing,
    the_audit_log_is_searched_by_who_what_and_when,
    an_abandoned_change_leaves_nothing,
    keys_authenticate_until_revoked_or_expired,
    audit_proofs_and_checkpoints_verify,
    offline_verification_catches_tampering,
    outbox_delivers_in_order_at_least_once_across_restarts,
    one_change_may_publish_several_events,
    jobs_follow_priority_and_retry_with_backoff,
    expired_leases_are_claimed_again,
    cancellation_and_concurrent_claims,
    dataset_versions_appear_whole_and_numbered,
    run_metrics_checkpoints_and_artifacts_are_kept,
    model_versions_are_numbered_immutable_and_aliased,
    scheduling_respects_quotas_and_preempts_lower_priority_work,
    a_priority_never_preempts_or_overtakes_another_tenant,
    a_tenants_urgent_job_preempts_its_own_work_while_others_wait,
    deployments_are_created_revised_and_deleted,
    the_inference_log_takes_batches_and_reads_back,
    pipeline_triggers_start_one_run_coalesce_and_deduplicate,
    files_and_batches_page_step_and_keep_their_objects,
);

/// The audit log's proof index, checkpoint publishing and the upgrade of existing logs.
mod audit_log;

fn authorizer() -> CedarAuthorizer {
    CedarAuthorizer::with_defaults().unwrap()
}

fn tenant(name: &str) -> TenantName {
    TenantName::new(name).unwrap()
}

fn platform_admin() -> Principal {
    Principal { id: "key_admin".to_string(), tenant: None, role: Role::Admin }
}

async fn create_tenant(store: &Store, name: &str) {
    let pdp = authorizer();
    let request = AccessRequest::new(&platform_admin(), Action::TenantCreate, Resource::platform());
    let mut change = store.begin_change(&pdp, request, "req-tenant").await.unwrap();
    change.create_tenant(&tenant(name), &[Jurisdiction::new("eu").unwrap()]).await.unwrap();
    change
        .commit(serde_json::json!({ "tenant": name }), Event::new("tenant.created", serde_json::json!({})))
        .await
        .unwrap();
}

async fn count(store: &Store, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(store.pool()).await.unwrap()
}

async fn migrations_are_idempotent(_store: &Store, database: &TestDatabase) {
    let again = Store::open(&database.url()).await.unwrap();
    let versions: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM schema_migrations").fetch_one(again.pool()).await.unwrap();
    assert_eq!(versions, 16);
    again.close().await;
}

async fn run_metrics_checkpoints_and_artifacts_are_kept(store: &Store, _database: &TestDatabase) {
    create_tenant(store, "acme").await;
    let rows = vec![(1, serde_json::json!({ "loss": 5.0 })), (2, serde_json::json!({ "loss": 4.0 }))];
    store.record_run_metrics("run_a", "train", &rows).await.unwrap();
    // A resumed attempt writes step 2 again: the first value stays.
    store.record_run_metrics("run_a", "train", &[(2, serde_json::json!({ "loss": 9.0 }))]).await.unwrap();
    store.record_run_metrics("run_a", "eval", &[(2, serde_json::json!({ "perplexity": 50.0 }))]).await.unwrap();
    let metrics = store.run_metrics("run_a", 0, 100).await.unwrap();
    let seen: Vec<(String, i64)> = metrics.iter().map(|m| (m.kind.clone(), m.step)).collect();
    assert_eq!(seen, vec![("train".into(), 1), ("eval".into(), 2), ("train".into(), 2)]);
    assert_eq!(metrics[2].metrics["loss"], 4.0);
    assert_eq!(store.run_metrics("run_a", 1, 100).await.unwrap().len(), 2);

    assert_eq!(store.latest_run_checkpoint("run_a").await.unwrap(), None);
    let acme = tenant("acme");
    for step in [10, 20] {
        let checkpoint = crate::runs::RunCheckpoint {
            step,
            weights_digest: format!("w{step}"),
            optimizer_digest: format!("o{step}"),
            created_at: step,
        };
        store.record_run_checkpoint(&acme, "run_a", &checkpoint).await.unwrap();
    }
    assert_eq!(store.latest_run_checkpoint("run_a").await.unwrap().map(|c| c.step), Some(20));
    assert!(store.object_is_referenced("w10").await.unwrap(), "checkpoints keep their objects");
    assert!(!store.object_is_referenced("final").await.unwrap());
    store.reference_artifacts(&acme, "run_a", &["final".to_string()]).await.unwrap();
    assert!(store.object_is_referenced("final").await.unwrap());
}

async fn a_change_commits_with_its_audit_record_and_event(store: &Store, _database: &TestDatabase) {
    create_tenant(store, "acme").await;
    assert_eq!(store.tenant(&tenant("acme")).await.unwrap().unwrap().jurisdictions[0].as_str(), "eu");
    assert_eq!(store.audit_size().await.unwrap(), 1);
    let records = store.audit_records(0, 10, None).await.unwrap();
    let record = &records[0].record;
    assert_eq!(record.action, "tenant.create");
    assert_eq!(record.principal, "key_admin");
    assert_eq!(record.policies, vec!["platform-admin".to_string()]);
    assert_eq!(record.request_id, "req-tenant");
    assert_eq!(record.details_digest, factory_audit::record::details_digest(&records[0].details));
    assert_eq!(count(store, "outbox").await, 1);

    let pdp = authorizer();
    let request = AccessRequest::new(&platform_admin(), Action::TenantCreate, Resource::platform());
    let mut change = store.begin_change(&pdp, request, "req-again").await.unwrap();
    let error = change.create_tenant(&tenant("acme"), &[Jurisdiction::new("eu").unwrap()]).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Conflict);
}

async fn denials_are_audited_and_change_nothing(store: &Store, _database: &TestDatabase) {
    let pdp = authorizer();
    let intruder = Principal { id: "key_intruder".to_string(), tenant: Some(tenant("globex")), role: Role::Admin };
    let request = AccessRequest::new(&intruder, Action::TenantCreate, Resource::platform());
    let error = store.begin_change(&pdp, request, "req-denied").await.err().unwrap();
    assert_eq!(error.kind(), StoreErrorKind::Denied);
    assert!(!error.decision.unwrap().is_allowed());
    let records = store.audit_records(0, 10, None).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].record.principal, "key_intruder");
    assert_eq!(records[0].record.decision, factory_audit::record::Decision::Deny);
    assert_eq!(records[0].record.tenant.as_deref(), Some("globex"));
    assert_eq!(count(store, "tenants").await, 0);
    assert_eq!(count(store, "outbox").await, 0);
}

async fn the_audit_log_is_searched_by_who_what_and_when(store: &Store, _database: &TestDatabase) {
    create_tenant(store, "acme").await;
    let pdp = authorizer();
    let intruder = Principal { id: "key_intruder".to_string(), tenant: Some(tenant("globex")), role: Role::Admin };
    for _ in 0..3 {
        let request = AccessRequest::new(&intruder, Action::TenantCreate, Resource::platform());
        assert!(store.begin_change(&pdp, request, "req-denied").await.is_err());
    }
    let search = |search: crate::AuditSearch, from: u64| async move {
        let found = store.search_audit(&search, from, 10).await.unwrap();
        found.iter().map(|e| e.record.index).collect::<Vec<_>>()
    };
    let all = crate::AuditSearch::default();
    assert_eq!(search(all.clone(), 0).await, vec![0, 1, 2, 3]);
    assert_eq!(search(all.clone(), 2).await, vec![2, 3]);
    let by = |principal: &str| crate::AuditSearch { principal: Some(principal.to_string()), ..Default::default() };
    assert_eq!(search(by("key_intruder"), 0).await, vec![1, 2, 3]);
    assert_eq!(search(by("key_admin"), 0).await, vec![0]);
    assert_eq!(search(by("key_%"), 0).await, Vec::<u64>::new(), "a term is matched whole, not as a pattern");
    let action =
        crate::AuditSearch { action: Some("tenant.create".into()), principal: Some("key_admin".into()), ..all.clone() };
    assert_eq!(search(action, 0).await, vec![0]);
    let globex = crate::AuditSearch { tenant: Some(tenant("globex")), ..all.clone() };
    assert_eq!(search(globex, 0).await, vec![1, 2, 3]);
    let now = factory_core::time::now_millis();
    assert_eq!(search(crate::AuditSearch { since: Some(now + 60_000), ..all.clone() }, 0).await, Vec::<u64>::new());
    assert_eq!(search(crate::AuditSearch { until: Some(now - 3_600_000), ..all.clone() }, 0).await, Vec::<u64>::new());
    assert_eq!(
        search(crate::AuditSearch { since: Some(now - 3_600_000), until: Some(now + 60_000), ..all }, 0).await.len(),
        4
    );
    // A record is read back with the bytes the log hashed.
    let (entry, canonical) = store.audit_record(1).await.unwrap().unwrap();
    assert_eq!(canonical.as_bytes(), entry.record.canonical_bytes());
    assert!(store.audit_record(99).await.unwrap().is_none());
}

async fn an_abandoned_change_leaves_nothing(store: &Store, _database: &TestDatabase) {
    let pdp = authorizer();
    let request = AccessRequest::new(&platform_admin(), Action::TenantCreate, Resource::platform());
    let mut change = store.begin_change(&pdp, request, "req").await.unwrap();
    change.create_tenant(&tenant("ghost"), &[Jurisdiction::new("eu").unwrap()]).await.unwrap();
    drop(change);
    assert!(store.tenant(&tenant("ghost")).await.unwrap().is_none());
    assert_eq!(store.audit_size().await.unwrap(), 0);
    assert_eq!(count(store, "audit_records").await, 0);
    // The writer lock was released: the next change goes through.
    create_tenant(store, "real").await;
    assert_eq!(store.audit_size().await.unwrap(), 1);
}

async fn keys_authenticate_until_revoked_or_expired(store: &Store, _database: &TestDatabase) {
    create_tenant(store, "acme").await;
    let pdp = authorizer();
    let request = AccessRequest::new(&platform_admin(), Action::KeyCreate, Resource::tenant(&tenant("acme")));
    let mut change = store.begin_change(&pdp, request, "req").await.unwrap();
    let issued = change.create_api_key(Some(&tenant("acme")), Role::Engineer, "ci", None).await.unwrap();
    let short_lived = change
        .create_api_key(Some(&tenant("acme")), Role::App, "soon gone", Some(factory_core::time::now_millis() + 300))
        .await
        .unwrap();
    change.commit(serde_json::json!({}), Event::new("key.created", serde_json::json!({}))).await.unwrap();

    let stored_hash: String = sqlx::query_scalar("SELECT secret_hash FROM api_keys WHERE id = $1")
        .bind(&issued.key.id)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_ne!(stored_hash, issued.secret, "the secret must not be stored");
    assert_eq!(store.authenticate(&issued.secret).await.unwrap().unwrap().role, Role::Engineer);
    assert!(store.authenticate("fk_wrong").await.unwrap().is_none());
    assert!(store.authenticate(&short_lived.secret).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.authenticate(&short_lived.secret).await.unwrap().is_none(), "expired keys fail");

    let request = AccessRequest::new(
        &platform_admin(),
        Action::KeyRevoke,
        Resource::api_key(&issued.key.id, Some(&tenant("acme"))),
    );
    let mut change = store.begin_change(&pdp, request.clone(), "req").await.unwrap();
    change.revoke_api_key(&issued.key.id).await.unwrap();
    change.commit(serde_json::json!({}), Event::new("key.revoked", serde_json::json!({}))).await.unwrap();
    assert!(store.authenticate(&issued.secret).await.unwrap().is_none());
    let mut change = store.begin_change(&pdp, request, "req").await.unwrap();
    assert_eq!(change.revoke_api_key(&issued.key.id).await.unwrap_err().kind(), StoreErrorKind::Conflict);
}

fn issuer() -> CheckpointIssuer {
    CheckpointIssuer::new("test.local/audit".to_string(), NoteSigner::generate("test.local/audit", [7u8; 32]).unwrap())
}

async fn audit_proofs_and_checkpoints_verify(store: &Store, _database: &TestDatabase) {
    let issuer = issuer();
    let verifier = factory_audit::checkpoint::NoteVerifier::from_verifier_key(&issuer.signer.verifier_key()).unwrap();
    for i in 0..5 {
        create_tenant(store, &format!("t{i}")).await;
    }
    let first = store.issue_checkpoint(&issuer).await.unwrap();
    let first = verifier.verify(&first).unwrap();
    assert_eq!(first.size, 5);
    for i in 5..13 {
        create_tenant(store, &format!("t{i}")).await;
    }
    let note = store.issue_checkpoint(&issuer).await.unwrap();
    assert_eq!(store.issue_checkpoint(&issuer).await.unwrap(), note, "an unchanged log reuses its checkpoint");
    let second = verifier.verify(&note).unwrap();
    assert_eq!(second.size, 13);
    for index in 0..13 {
        let (leaf, proof) = store.inclusion_proof(index, 13).await.unwrap();
        factory_audit::merkle::verify_inclusion(&leaf, index, 13, &proof, &second.root).unwrap();
    }
    let proof = store.consistency_proof(5, 13).await.unwrap();
    factory_audit::merkle::verify_consistency(5, 13, &first.root, &second.root, &proof).unwrap();
    assert_eq!(store.inclusion_proof(13, 13).await.unwrap_err().kind(), StoreErrorKind::Invalid);
    assert_eq!(store.audit_checkpoints().await.unwrap().len(), 2);
}

async fn verify_store(store: &Store, issuer: &CheckpointIssuer) -> Result<u64, String> {
    let verifier = factory_audit::checkpoint::NoteVerifier::from_verifier_key(&issuer.signer.verifier_key()).unwrap();
    let mut records = Vec::new();
    let mut after = None;
    loop {
        let page = store.stored_audit_page(after, u64::MAX >> 2, 3, true).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.0.index);
        records.extend(page.into_iter().map(|(record, _)| record));
    }
    let checkpoints = store.audit_checkpoints().await.unwrap();
    let size = store.audit_size().await.unwrap();
    factory_audit::verify::verify_log(records.into_iter(), size, &checkpoints, &verifier)
        .map(|report| report.records)
        .map_err(|e| e.to_string())
}

async fn offline_verification_catches_tampering(store: &Store, _database: &TestDatabase) {
    let issuer = issuer();
    for i in 0..7 {
        create_tenant(store, &format!("t{i}")).await;
    }
    store.issue_checkpoint(&issuer).await.unwrap();
    assert_eq!(verify_store(store, &issuer).await, Ok(7));
    sqlx::query("UPDATE audit_records SET record = REPLACE(record, 'tenant.create', 'tenant.cre4te') WHERE idx = 3")
        .execute(store.pool())
        .await
        .unwrap();
    let error = verify_store(store, &issuer).await.unwrap_err();
    assert!(error.starts_with("record 3"), "{error}");
}

struct Recorder {
    name: String,
    seen: StdMutex<Vec<String>>,
    fail_first: StdMutex<u32>,
}

#[async_trait::async_trait]
impl Subscriber for Recorder {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(&self, event: &DeliveredEvent) -> Result<(), String> {
        let mut failures = self.fail_first.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            return Err("temporarily unavailable".to_string());
        }
        self.seen.lock().unwrap().push(event.idempotency_key.clone());
        Ok(())
    }
}

fn recorder(name: &str, fail_first: u32) -> Arc<Recorder> {
    Arc::new(Recorder {
        name: name.to_string(),
        seen: StdMutex::new(Vec::new()),
        fail_first: StdMutex::new(fail_first),
    })
}

async fn outbox_delivers_in_order_at_least_once_across_restarts(store: &Store, database: &TestDatabase) {
    for i in 0..3 {
        create_tenant(store, &format!("t{i}")).await;
    }
    let steady = recorder("steady", 0);
    let flaky = recorder("flaky", 1);
    let mut dispatcher = Dispatcher::new(store.clone(), vec![steady.clone(), flaky.clone()]);
    assert_eq!(dispatcher.deliver_pending().await.unwrap(), 3);
    assert_eq!(*steady.seen.lock().unwrap(), vec!["tenant.created#0", "tenant.created#1", "tenant.created#2"]);
    assert!(flaky.seen.lock().unwrap().is_empty(), "the failed delivery is retried later, not skipped");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(dispatcher.deliver_pending().await.unwrap(), 3);
    assert_eq!(flaky.seen.lock().unwrap().len(), 3);

    // A restart (a new store and dispatcher) delivers only what is new.
    create_tenant(store, "t3").await;
    let reopened = Store::open(&database.url()).await.unwrap();
    let after_restart = recorder("steady", 0);
    let mut dispatcher = Dispatcher::new(reopened.clone(), vec![after_restart.clone()]);
    assert_eq!(dispatcher.deliver_pending().await.unwrap(), 1);
    assert_eq!(*after_restart.seen.lock().unwrap(), vec!["tenant.created#3"]);
    reopened.close().await;
}

async fn one_change_may_publish_several_events(store: &Store, _database: &TestDatabase) {
    let pdp = authorizer();
    let request = AccessRequest::new(&platform_admin(), Action::TenantCreate, Resource::platform());
    let mut change = store.begin_change(&pdp, request, "req-two-events").await.unwrap();
    change.create_tenant(&tenant("acme"), &[Jurisdiction::new("eu").unwrap()]).await.unwrap();
    let events = vec![
        Event::new("tenant.created", serde_json::json!({ "n": 1 })),
        Event::new("openlineage.run", serde_json::json!({ "n": 2 })),
        Event::new("openlineage.run", serde_json::json!({ "n": 3 })),
    ];
    let committed = change.commit_events(serde_json::json!({}), events).await.unwrap();
    assert_eq!(committed.audit_index, 0);
    assert_eq!(store.audit_size().await.unwrap(), 1, "one audit record for the one change");
    let seen = recorder("all", 0);
    let mut dispatcher = Dispatcher::new(store.clone(), vec![seen.clone()]);
    assert_eq!(dispatcher.deliver_pending().await.unwrap(), 3);
    assert_eq!(*seen.seen.lock().unwrap(), vec!["tenant.created#0", "openlineage.run#0.1", "openlineage.run#0.2"]);
}

async fn enqueue(store: &Store, id: &str, kind: &str, priority: i64, max_attempts: u32) {
    let pdp = authorizer();
    let engineer = Principal { id: "key_eng".to_string(), tenant: Some(tenant("acme")), role: Role::Engineer };
    let request = AccessRequest::new(&engineer, Action::JobEnqueue, Resource::job(id, &tenant("acme")));
    let mut change = store.begin_change(&pdp, request, "req").await.unwrap();
    let new = NewJob { kind: kind.to_string(), payload: serde_json::json!({ "n": 1 }), priority, max_attempts };
    let job = change.enqueue_job(&new).await.unwrap();
    change.commit(serde_json::json!({}), Event::new("job.queued", serde_json::json!({ "job": job.id }))).await.unwrap();
}

async fn jobs_follow_priority_and_retry_with_backoff(store: &Store, _database: &TestDatabase) {
    let pdp = authorizer();
    create_tenant(store, "acme").await;
    enqueue(store, "job_low", "train", 1, 2).await;
    enqueue(store, "job_high", "train", 9, 2).await;
    let lease = Duration::from_secs(30);
    let first = store.claim_job(&pdp, "w1", lease).await.unwrap().unwrap();
    assert_eq!(first.id, "job_high");
    assert_eq!(first.attempts, 1);
    let retry_base = Duration::from_millis(200);
    let failed = store
        .finish_job(&pdp, "job_high", "w1", Outcome::Failed { error: "boom".to_string(), retry_base })
        .await
        .unwrap();
    assert_eq!(failed.state, crate::jobs::JobState::Queued);
    // Backing off: the low-priority job goes first.
    assert_eq!(store.claim_job(&pdp, "w1", lease).await.unwrap().unwrap().id, "job_low");
    assert!(store.claim_job(&pdp, "w1", lease).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = store.claim_job(&pdp, "w2", lease).await.unwrap().unwrap();
    assert_eq!((again.id.as_str(), again.attempts), ("job_high", 2));
    let dead = store
        .finish_job(&pdp, "job_high", "w2", Outcome::Failed { error: "boom again".to_string(), retry_base })
        .await
        .unwrap();
    assert_eq!(dead.state, crate::jobs::JobState::Dead);
    assert_eq!(dead.last_error.as_deref(), Some("boom again"));
    let done =
        store.finish_job(&pdp, "job_low", "w1", Outcome::Succeeded(serde_json::json!({"ok": true}))).await.unwrap();
    assert_eq!(done.state, crate::jobs::JobState::Succeeded);
    assert_eq!(
        store.finish_job(&pdp, "job_low", "w1", Outcome::Cancelled).await.unwrap_err().kind(),
        StoreErrorKind::Conflict
    );
    let actions: Vec<String> =
        store.audit_records(0, 100, None).await.unwrap().into_iter().map(|e| e.record.action).collect();
    assert_eq!(actions.iter().filter(|a| *a == "job.run").count(), 6, "three claims and three outcomes: {actions:?}");
}

async fn expired_leases_are_claimed_again(store: &Store, _database: &TestDatabase) {
    let pdp = authorizer();
    create_tenant(store, "acme").await;
    enqueue(store, "job_a", "train", 0, 2).await;
    let short = Duration::from_millis(150);
    let claimed = store.claim_job(&pdp, "doomed-worker", short).await.unwrap().unwrap();
    assert!(store.heartbeat(&claimed.id, "doomed-worker", short).await.unwrap().still_owned);
    assert!(store.claim_job(&pdp, "w2", short).await.unwrap().is_none(), "a live lease is respected");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let reclaimed = store.claim_job(&pdp, "w2", short).await.unwrap().unwrap();
    assert_eq!((reclaimed.lease_owner.as_deref(), reclaimed.attempts), (Some("w2"), 2));
    assert!(!store.heartbeat("job_a", "doomed-worker", short).await.unwrap().still_owned);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Out of attempts and abandoned again: the reaper marks it dead.
    assert_eq!(store.reap_expired_jobs(&pdp).await.unwrap(), 1);
    assert_eq!(store.job("job_a").await.unwrap().unwrap().state, crate::jobs::JobState::Dead);
}

async fn cancellation_and_concurrent_claims(store: &Store, _database: &TestDatabase) {
    let pdp = authorizer();
    create_tenant(store, "acme").await;
    enqueue(store, "job_queued", "train", 0, 1).await;
    let admin = platform_admin();
    let cancel = AccessRequest::new(&admin, Action::JobCancel, Resource::job("job_queued", &tenant("acme")));
    let mut change = store.begin_change(&pdp, cancel, "req").await.unwrap();
    assert_eq!(change.cancel_job().await.unwrap().state, crate::jobs::JobState::Cancelled);
    change.commit(serde_json::json!({}), Event::new("job.cancelled", serde_json::json!({}))).await.unwrap();

    enqueue(store, "job_running", "train", 0, 1).await;
    let lease = Duration::from_secs(30);
    store.claim_job(&pdp, "w1", lease).await.unwrap().unwrap();
    let cancel = AccessRequest::new(&admin, Action::JobCancel, Resource::job("job_running", &tenant("acme")));
    let mut change = store.begin_change(&pdp, cancel, "req").await.unwrap();
    assert_eq!(change.cancel_job().await.unwrap().state, crate::jobs::JobState::Running);
    change.commit(serde_json::json!({}), Event::new("job.cancel_requested", serde_json::json!({}))).await.unwrap();
    assert!(store.heartbeat("job_running", "w1", lease).await.unwrap().cancel_requested);
    let ended = store.finish_job(&pdp, "job_running", "w1", Outcome::Cancelled).await.unwrap();
    assert_eq!(ended.state, crate::jobs::JobState::Cancelled);

    for i in 0..12 {
        enqueue(store, &format!("job_{i:02}"), "train", 0, 1).await;
    }
    let claimers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let pdp = authorizer();
                let mut mine = Vec::new();
                while let Some(job) = store.claim_job(&pdp, &format!("w{w}"), Duration::from_secs(30)).await.unwrap() {
                    mine.push(job.id);
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for claimer in claimers {
        all.extend(claimer.await.unwrap());
    }
    all.sort();
    let expected: Vec<String> = (0..12).map(|i| format!("job_{i:02}")).collect();
    assert_eq!(all, expected, "every job claimed exactly once");
}

async fn dataset_versions_appear_whole_and_numbered(store: &Store, _database: &TestDatabase) {
    use crate::datasets::{Dataset, NewVersion};
    use factory_core::Classification;
    let pdp = authorizer();
    create_tenant(store, "acme").await;
    let engineer = Principal { id: "key_eng".to_string(), tenant: Some(tenant("acme")), role: Role::Engineer };
    let eu = Jurisdiction::new("eu").unwrap();
    let resource = Resource::dataset(&tenant("acme"), "corpus", Classification::Internal, &eu);
    let residency = |request: AccessRequest, allowed: bool| {
        request.with_context("jurisdiction_allowed", allowed).with_context("storage_site", true)
    };
    let dataset = Dataset {
        tenant: tenant("acme"),
        name: "corpus".to_string(),
        classification: Classification::Internal,
        jurisdiction: eu.clone(),
        site: "local".to_string(),
        owner: "key_eng".to_string(),
        retention_days: Some(30),
        description: String::new(),
        tags: vec!["a".to_string()],
        pii_policy: serde_json::json!({ "default": "mask" }),
        declared_schema: None,
        latest_version: 0,
        created_at: 0,
        created_by: String::new(),
    };
    let refused = residency(AccessRequest::new(&engineer, Action::DatasetCreate, resource.clone()), false);
    let error = store.begin_change(&pdp, refused, "req").await.err().unwrap();
    assert_eq!(error.decision.unwrap().policies, vec!["residency".to_string()]);

    let request = residency(AccessRequest::new(&engineer, Action::DatasetCreate, resource.clone()), true);
    let mut change = store.begin_change(&pdp, request.clone(), "req").await.unwrap();
    change.create_dataset(&dataset).await.unwrap();
    change.commit(serde_json::json!({}), Event::new("dataset.created", serde_json::json!({}))).await.unwrap();
    let mut change = store.begin_change(&pdp, request, "req").await.unwrap();
    assert_eq!(change.create_dataset(&dataset).await.unwrap_err().kind(), StoreErrorKind::Conflict);
    drop(change);

    let ingest = residency(AccessRequest::new(&engineer, Action::DatasetIngest, resource), true);
    for expected in 1..=2 {
        let new = NewVersion {
            manifest_digest: format!("m{expected}"),
            rows: 10,
            bytes: 100,
            source_digest: "s".to_string(),
            objects: vec![format!("m{expected}"), "shared-shard".to_string()],
        };
        let mut change = store.begin_change(&pdp, ingest.clone(), "req").await.unwrap();
        assert_eq!(change.add_dataset_version(&tenant("acme"), "corpus", &new).await.unwrap(), expected);
        if expected == 2 {
            // An abandoned version leaves no trace and consumes no number.
            drop(change);
            break;
        }
        change
            .commit(serde_json::json!({}), Event::new("dataset.version.created", serde_json::json!({})))
            .await
            .unwrap();
    }
    let stored = store.dataset(&tenant("acme"), "corpus").await.unwrap().unwrap();
    assert_eq!(
        (stored.latest_version, stored.tags.clone(), stored.retention_days),
        (1, vec!["a".to_string()], Some(30))
    );
    assert_eq!(store.dataset_versions(&tenant("acme"), "corpus").await.unwrap().len(), 1);
    assert!(store.dataset_version(&tenant("acme"), "corpus", 2).await.unwrap().is_none());
    assert!(store.object_is_referenced("shared-shard").await.unwrap());
    assert!(!store.object_is_referenced("m2").await.unwrap());
    assert_eq!(store.datasets(&tenant("acme")).await.unwrap().len(), 1);
}

/// What the model registry tests share: tenant acme with an engineer, and the requests to
/// register versions of its model `bard` and to move bard's aliases.
struct Bard {
    acme: TenantName,
    register: AccessRequest,
    alias: AccessRequest,
    eu: Jurisdiction,
}

async fn bard(store: &Store) -> Bard {
    use factory_core::Classification;
    create_tenant(store, "acme").await;
    let acme = tenant("acme");
    let engineer = Principal { id: "key_eng".to_string(), tenant: Some(acme.clone()), role: Role::Engineer };
    let eu = Jurisdiction::new("eu").unwrap();
    let resource = Resource::model(&acme, "bard", Classification::Internal, Some(&eu));
    let register = AccessRequest::new(&engineer, Action::ModelRegister, resource.clone())
        .with_context("jurisdiction_allowed", true)
        .with_context("storage_site", true);
    let alias = AccessRequest::new(&engineer, Action::ModelAlias, resource);
    Bard { acme, register, alias, eu }
}

impl Bard {
    /// A version whose manifest is `manifest`, trained by run `run_{manifest}`.
    fn version(&self, manifest: &str) -> crate::models::NewModelVersion {
        crate::models::NewModelVersion {
            version: None,
            origin: "trained".to_string(),
            run_id: Some(format!("run_{manifest}")),
            jurisdiction: self.eu.clone(),
            classification: factory_core::Classification::Internal,
            parameters: 1000,
            manifest_digest: manifest.to_string(),
            signer: "factory.local/models+1+AA".to_string(),
            evals: serde_json::json!({ "validation_perplexity": 9.5 }),
            objects: vec![manifest.to_string(), "weights".to_string()],
        }
    }
}

/// A change dropped after a failed write is rolled back when its connection next runs, not at
/// once; the next writer must still get the database (SQLite: a transaction that has read
/// cannot wait for the write lock, so writes begin by taking it).
async fn a_dropped_change_never_blocks_the_next_writer(store: &Store, _database: &TestDatabase) {
    let pdp = authorizer();
    let fixture = bard(store).await;
    let (acme, register, alias) = (fixture.acme.clone(), fixture.register.clone(), fixture.alias.clone());
    let mut change = store.begin_change(&pdp, register.clone(), "req").await.unwrap();
    change.add_model_version(&acme, "bard", 1, &fixture.version("m1")).await.unwrap();
    change.commit(serde_json::json!({}), Event::new("model.version.created", serde_json::json!({}))).await.unwrap();
    for round in 0..100 {
        let mut change = store.begin_change(&pdp, register.clone(), "req").await.unwrap();
        let error = change.add_model_version(&acme, "bard", 1, &fixture.version("again")).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Conflict);
        drop(change);
        let mut change = store.begin_change(&pdp, alias.clone(), "req").await.unwrap();
        let moved = change.set_model_alias(&acme, "bard", "production", 1).await;
        assert!(moved.is_ok(), "round {round}: {moved:?}");
        change.commit(serde_json::json!({}), Event::new("model.alias.set", serde_json::json!({}))).await.unwrap();
    }
}

async fn model_versions_are_numbered_immutable_and_aliased(store: &Store, _database: &TestDatabase) {
    let pdp = authorizer();
    let fixture = bard(store).await;
    let (acme, register, alias) = (fixture.acme.clone(), fixture.register.clone(), fixture.alias.clone());
    let new = |manifest: &str| fixture.version(manifest);
    for expected in 1..=2 {
        let mut change = store.begin_change(&pdp, register.clone(), "req").await.unwrap();
        let version = change.next_model_version(&acme, "bard").await.unwrap();
        assert_eq!(version, expected);
        let stored = change.add_model_version(&acme, "bard", version, &new(&format!("m{version}"))).await.unwrap();
        assert_eq!(stored.created_by, "key_eng");
        change.commit(serde_json::json!({}), Event::new("model.version.created", serde_json::json!({}))).await.unwrap();
    }
    // A number is never reused: registering 2 again is a conflict and leaves nothing.
    let mut change = store.begin_change(&pdp, register.clone(), "req").await.unwrap();
    let error = change.add_model_version(&acme, "bard", 2, &new("m-dup")).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Conflict);
    drop(change);
    assert!(!store.object_is_referenced("m-dup").await.unwrap());
    assert!(store.object_is_referenced("weights").await.unwrap());

    let mut change = store.begin_change(&pdp, alias.clone(), "req").await.unwrap();
    assert_eq!(change.set_model_alias(&acme, "bard", "production", 1).await.unwrap(), None);
    change.commit(serde_json::json!({}), Event::new("model.alias.set", serde_json::json!({}))).await.unwrap();
    let mut change = store.begin_change(&pdp, alias.clone(), "req").await.unwrap();
    assert_eq!(change.set_model_alias(&acme, "bard", "production", 2).await.unwrap(), Some(1));
    change.commit(serde_json::json!({}), Event::new("model.alias.set", serde_json::json!({}))).await.unwrap();
    let mut change = store.begin_change(&pdp, alias, "req").await.unwrap();
    assert_eq!(change.set_model_alias(&acme, "bard", "staging", 9).await.unwrap_err().kind(), StoreErrorKind::NotFound);
    drop(change);

    let aliases = store.model_aliases(&acme, "bard").await.unwrap();
    assert_eq!(aliases.iter().map(|a| (a.alias.as_str(), a.version)).collect::<Vec<_>>(), vec![("production", 2)]);
    let versions = store.model_versions(&acme, Some("bard")).await.unwrap();
    assert_eq!(versions.iter().map(|v| v.version).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(versions[0].evals["validation_perplexity"], 9.5);
    assert_eq!(store.model_version_of_run("run_m2").await.unwrap().unwrap().version, 2);
    assert!(store.model_version(&acme, "bard", 3).await.unwrap().is_none());
    assert_eq!(store.model_versions(&tenant("globex"), None).await.unwrap().len(), 0);
}

async fn enqueue_for(store: &Store, tenant_name: &str, id: &str, priority: i64) -> Result<(), crate::StoreError> {
    let pdp = authorizer();
    let engineer = Principal { id: "key_eng".to_string(), tenant: Some(tenant(tenant_name)), role: Role::Engineer };
    let request = AccessRequest::new(&engineer, Action::JobEnqueue, Resource::job(id, &tenant(tenant_name)));
    let mut change = store.begin_change(&pdp, request, "req").await.unwrap();
    let new = NewJob { kind: "train".to_string(), payload: serde_json::json!({}), priority, max_attempts: 3 };
    change.enqueue_job(&new).await?;
    change.commit(serde_json::json!({}), Event::new("job.queued", serde_json::json!({}))).await.unwrap();
    Ok(())
}

async fn set_quota(store: &Store, tenant_name: &str, concurrent: Option<i64>, seconds: Option<i64>) {
    let pdp = authorizer();
    let request = AccessRequest::new(&platform_admin(), Action::TenantQuota, Resource::tenant(&tenant(tenant_name)));
    let mut change = store.begin_change(&pdp, request, "req").await.unwrap();
    change.set_tenant_quota(concurrent, seconds).await.unwrap();
    change.commit(serde_json::json!({}), Event::new("tenant.quota.set", serde_json::json!({}))).await.unwrap();
}

async fn scheduling_respects_quotas_and_preempts_lower_priority_work(store: &Store, _database: &TestDatabase) {
    use crate::jobs::JobState;
    let pdp = authorizer();
    let lease = Duration::from_secs(30);
    create_tenant(store, "acme").await;
    create_tenant(store, "globex").await;
    // A tenant tenant admins cannot raise their own quota.
    let tenant_admin = Principal { id: "key_adm".to_string(), tenant: Some(tenant("acme")), role: Role::Admin };
    let request = AccessRequest::new(&tenant_admin, Action::TenantQuota, Resource::tenant(&tenant("acme")));
    assert_eq!(store.begin_change(&pdp, request, "req").await.err().unwrap().kind(), StoreErrorKind::Denied);

    // One job at a time for acme: its second job waits while globex's runs.
    set_quota(store, "acme", Some(1), None).await;
    enqueue_for(store, "acme", "acme_1", 5).await.unwrap();
    enqueue_for(store, "acme", "acme_2", 5).await.unwrap();
    enqueue_for(store, "globex", "globex_1", 0).await.unwrap();
    assert_eq!(store.claim_job(&pdp, "w1", lease).await.unwrap().unwrap().id, "acme_1");
    assert_eq!(store.claim_job(&pdp, "w2", lease).await.unwrap().unwrap().id, "globex_1");
    assert!(store.claim_job(&pdp, "w3", lease).await.unwrap().is_none(), "acme is at its limit");
    let quota = store.tenant_quota(&tenant("acme")).await.unwrap();
    assert_eq!((quota.max_concurrent_jobs, quota.running_jobs), (Some(1), 1));

    // A high-priority job of globex waits for a worker: the lowest-priority running job below
    // it is asked to yield, and yielding costs it no attempt.
    enqueue_for(store, "globex", "globex_urgent", 9).await.unwrap();
    let victim = store.request_preemption(&pdp).await.unwrap().unwrap();
    assert_eq!(victim.id, "globex_1", "priority 0 yields before priority 5");
    assert!(store.request_preemption(&pdp).await.unwrap().map(|j| j.id) != Some("globex_1".to_string()));
    let beat = store.heartbeat("globex_1", "w2", lease).await.unwrap();
    assert!(beat.preempt_requested && !beat.cancel_requested);
    let requeued = store.finish_job(&pdp, "globex_1", "w2", Outcome::Preempted).await.unwrap();
    assert_eq!((requeued.state, requeued.attempts, requeued.preempt_requested), (JobState::Queued, 0, false));
    assert_eq!(store.claim_job(&pdp, "w2", lease).await.unwrap().unwrap().id, "globex_urgent");

    // Compute-seconds: acme's spent time is counted; past the quota new jobs are refused and
    // queued ones wait.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let done = store.finish_job(&pdp, "acme_1", "w1", Outcome::Succeeded(serde_json::json!({}))).await.unwrap();
    assert!(done.compute_ms >= 30, "{}", done.compute_ms);
    set_quota(store, "acme", Some(1), Some(0)).await;
    let refused = enqueue_for(store, "acme", "acme_3", 0).await.unwrap_err();
    assert_eq!(refused.kind(), StoreErrorKind::QuotaExceeded);
    assert!(store.job("acme_3").await.unwrap().is_none());
    let next = store.claim_job(&pdp, "w1", lease).await.unwrap().unwrap();
    assert_eq!(next.id, "globex_1", "acme_2 waits for compute; globex's job resumes");
    set_quota(store, "acme", None, None).await;
    assert_eq!(store.claim_job(&pdp, "w3", lease).await.unwrap().unwrap().id, "acme_2");
    let actions: Vec<String> =
        store.audit_records(0, 200, None).await.unwrap().into_iter().map(|e| e.record.action).collect();
    assert!(actions.iter().any(|a| a == "tenant.quota"), "{actions:?}");
}

/// The review's attack: a tenant's `i64::MAX` priority made another tenant's run yield. A
/// priority orders one tenant's own work; across tenants, the one with fewer running jobs goes
/// first, whatever the numbers.
async fn a_priority_never_preempts_or_overtakes_another_tenant(store: &Store, _database: &TestDatabase) {
    let pdp = authorizer();
    let lease = Duration::from_secs(30);
    create_tenant(store, "acme").await;
    create_tenant(store, "globex").await;
    enqueue_for(store, "acme", "acme_run", 0).await.unwrap();
    assert_eq!(store.claim_job(&pdp, "w1", lease).await.unwrap().unwrap().id, "acme_run");
    enqueue_for(store, "globex", "globex_urgent", i64::MAX).await.unwrap();
    assert!(store.request_preemption(&pdp).await.unwrap().is_none(), "acme's run is not globex's to preempt");
    // Fair share: acme already runs a job, so globex's next job is taken before acme's, even
    // at a far lower priority.
    enqueue_for(store, "acme", "acme_second", i64::MAX).await.unwrap();
    enqueue_for(store, "globex", "globex_low", i64::MIN).await.unwrap();
    assert_eq!(store.claim_job(&pdp, "w2", lease).await.unwrap().unwrap().id, "globex_urgent");
    // One running each: priorities decide inside the tie, then age.
    assert_eq!(store.claim_job(&pdp, "w3", lease).await.unwrap().unwrap().id, "acme_second");
    assert_eq!(store.claim_job(&pdp, "w4", lease).await.unwrap().unwrap().id, "globex_low");
    // Inside one tenant, priority still preempts.
    enqueue_for(store, "globex", "globex_first", 50).await.unwrap();
    let victim = store.request_preemption(&pdp).await.unwrap().unwrap();
    assert_eq!(victim.id, "globex_low");
}

/// Fair share must not hide preemption: a tenant with nothing running waits first, but only a
/// job that outranks running work of its own tenant can make anything yield.
async fn a_tenants_urgent_job_preempts_its_own_work_while_others_wait(store: &Store, _database: &TestDatabase) {
    let pdp = authorizer();
    let lease = Duration::from_secs(30);
    create_tenant(store, "acme").await;
    create_tenant(store, "globex").await;
    enqueue_for(store, "acme", "acme_slow", 0).await.unwrap();
    assert_eq!(store.claim_job(&pdp, "w1", lease).await.unwrap().unwrap().id, "acme_slow");
    enqueue_for(store, "globex", "globex_waiting", 0).await.unwrap();
    enqueue_for(store, "acme", "acme_urgent", 50).await.unwrap();
    let victim = store.request_preemption(&pdp).await.unwrap();
    assert_eq!(victim.map(|j| j.id), Some("acme_slow".to_string()), "acme's urgent job preempts acme's own");
}

async fn deployments_are_created_revised_and_deleted(store: &Store, _database: &TestDatabase) {
    let pdp = authorizer();
    create_tenant(store, "acme").await;
    let acme = tenant("acme");
    let engineer = Principal { id: "key_eng".to_string(), tenant: Some(acme.clone()), role: Role::Engineer };
    let request = |action| {
        AccessRequest::new(&engineer, action, Resource::deployment(&acme, "chat"))
            .with_context("jurisdiction_allowed", true)
            .with_context("serving_site", true)
    };
    let spec = serde_json::json!({ "variants": [{ "model": "bard@1", "weight": 1 }] });
    let mut change = store.begin_change(&pdp, request(Action::DeploymentCreate), "req").await.unwrap();
    let created = change.put_deployment(&acme, "chat", &spec, false).await.unwrap();
    change.commit(serde_json::json!({}), Event::new("deployment.created", serde_json::json!({}))).await.unwrap();
    assert_eq!((created.revision, created.created_by.as_str()), (1, "key_eng"));
    let mut change = store.begin_change(&pdp, request(Action::DeploymentCreate), "req").await.unwrap();
    assert_eq!(change.put_deployment(&acme, "chat", &spec, false).await.unwrap_err().kind(), StoreErrorKind::Conflict);
    drop(change);
    let revised = serde_json::json!({ "variants": [{ "model": "bard@2", "weight": 1 }] });
    let mut change = store.begin_change(&pdp, request(Action::DeploymentUpdate), "req").await.unwrap();
    assert_eq!(change.put_deployment(&acme, "chat", &revised, true).await.unwrap().revision, 2);
    change.commit(serde_json::json!({}), Event::new("deployment.updated", serde_json::json!({}))).await.unwrap();
    assert_eq!(store.deployment(&acme, "chat").await.unwrap().unwrap().spec, revised);
    assert_eq!(store.deployments(&acme).await.unwrap().len(), 1);
    let delete = AccessRequest::new(&engineer, Action::DeploymentDelete, Resource::deployment(&acme, "chat"));
    let mut change = store.begin_change(&pdp, delete.clone(), "req").await.unwrap();
    change.delete_deployment(&acme, "chat").await.unwrap();
    change.commit(serde_json::json!({}), Event::new("deployment.deleted", serde_json::json!({}))).await.unwrap();
    assert!(store.deployment(&acme, "chat").await.unwrap().is_none());
    let mut change = store.begin_change(&pdp, delete, "req").await.unwrap();
    assert_eq!(change.delete_deployment(&acme, "chat").await.unwrap_err().kind(), StoreErrorKind::NotFound);
}

async fn the_inference_log_takes_batches_and_reads_back(store: &Store, _database: &TestDatabase) {
    use crate::inference::InferenceRecord;
    let record = |id: &str, deployment: &str, created_at: i64| InferenceRecord {
        id: id.to_string(),
        tenant: "acme".to_string(),
        deployment: deployment.to_string(),
        variant: "bard@1".to_string(),
        kind: "chat".to_string(),
        request_id: format!("req-{id}"),
        episode_id: Some("ep-1".to_string()),
        status: "ok".to_string(),
        finish_reason: Some("stop".to_string()),
        prompt_tokens: 12,
        completion_tokens: 30,
        cost: 0.00042,
        queue_ms: 0.5,
        first_token_ms: 12.5,
        decode_ms: 80.25,
        total_ms: 93.0,
        created_at,
        prompt_text: (id == "inf_2").then(|| "Hello [EMAIL]".to_string()),
        completion_text: None,
        structure_json: None,
        cached_tokens: 0,
    };
    let batch = vec![record("inf_1", "chat", 1000), record("inf_2", "chat", 2000), record("inf_3", "other", 3000)];
    store.record_inferences(&batch).await.unwrap();
    // A retried batch changes nothing.
    store.record_inferences(&batch[..1]).await.unwrap();
    assert_eq!(store.inference("inf_2").await.unwrap().unwrap(), batch[1]);
    let recent = store.inferences(&tenant("acme"), "chat", 1500, 10).await.unwrap();
    assert_eq!(recent.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec!["inf_2"]);
    assert_eq!(store.inferences(&tenant("acme"), "chat", 0, 10).await.unwrap().len(), 2);
    assert!(store.inference("inf_9").await.unwrap().is_none());
    assert_eq!(store.episode_inference(&tenant("acme"), "ep-1").await.unwrap().unwrap().id, "inf_3");

    // Feedback is written through the governed path and read back by deployment.
    create_tenant(store, "acme").await;
    let pdp = authorizer();
    let app = Principal { id: "key_app".to_string(), tenant: Some(tenant("acme")), role: Role::App };
    let request = AccessRequest::new(&app, Action::FeedbackCreate, Resource::deployment(&tenant("acme"), "chat"));
    let mut change = store.begin_change(&pdp, request, "req").await.unwrap();
    let feedback = crate::inference::Feedback {
        id: "fb_1".to_string(),
        tenant: "acme".to_string(),
        deployment: "chat".to_string(),
        variant: Some("bard@1".to_string()),
        inference_id: Some("inf_2".to_string()),
        episode_id: None,
        metric: "thumbs".to_string(),
        value: 1.0,
        created_at: 5000,
        created_by: "key_app".to_string(),
    };
    change.add_feedback(&feedback).await.unwrap();
    change.commit(serde_json::json!({}), Event::new("feedback.created", serde_json::json!({}))).await.unwrap();
    assert_eq!(store.feedback(&tenant("acme"), "chat", 0, 10).await.unwrap(), vec![feedback]);
    assert!(store.feedback(&tenant("acme"), "chat", 5000, 10).await.unwrap().is_empty());
}

async fn pipeline_triggers_start_one_run_coalesce_and_deduplicate(store: &Store, _database: &TestDatabase) {
    use crate::pipelines::Triggered;
    let pdp = authorizer();
    create_tenant(store, "acme").await;
    let acme = tenant("acme");
    let engineer = Principal { id: "key_eng".to_string(), tenant: Some(acme.clone()), role: Role::Engineer };
    let write = AccessRequest::new(&engineer, Action::PipelineWrite, Resource::pipeline(&acme, "retrain"));
    let mut change = store.begin_change(&pdp, write.clone(), "req").await.unwrap();
    let pipeline = change.put_pipeline(&acme, "retrain", "name = 'retrain'", &serde_json::json!({})).await.unwrap();
    change.commit(serde_json::json!({}), Event::new("pipeline.updated", serde_json::json!({}))).await.unwrap();
    assert_eq!((pipeline.revision, pipeline.author.id.as_str()), (1, "key_eng"));
    let mut change = store.begin_change(&pdp, write, "req").await.unwrap();
    let pipeline = change.put_pipeline(&acme, "retrain", "name = 'retrain' # 2", &serde_json::json!({})).await.unwrap();
    change.commit(serde_json::json!({}), Event::new("pipeline.updated", serde_json::json!({}))).await.unwrap();
    assert_eq!(pipeline.revision, 2);

    let system = AccessRequest::new(&Principal::system(), Action::PipelineRun, Resource::pipeline(&acme, "retrain"));
    let trigger = |key: &'static str, run: &'static str| {
        let (store, pdp, system, pipeline) = (store.clone(), &pdp, system.clone(), pipeline.clone());
        async move {
            let mut change = store.begin_change(pdp, system, "req").await.unwrap();
            let outcome =
                change.trigger_pipeline(&pipeline, run, key, &serde_json::json!({ "key": key })).await.unwrap();
            change
                .commit(serde_json::json!({}), Event::new("pipeline.triggered", serde_json::json!({})))
                .await
                .unwrap();
            outcome
        }
    };
    let Triggered::Started(run) = trigger("drift.detected#7", "prun_1").await else { panic!("no run started") };
    assert_eq!((run.status.as_str(), run.step), ("running", 0));
    assert_eq!(trigger("drift.detected#7", "prun_2").await, Triggered::Duplicate("prun_1".into()));
    assert_eq!(trigger("feedback.degraded#9", "prun_3").await, Triggered::Coalesced("prun_1".into()));
    let mut change = store.begin_change(&pdp, system.clone(), "req").await.unwrap();
    let run = change
        .advance_pipeline_run("prun_1", &serde_json::json!({ "step": "train" }), Some(1), "running", None)
        .await
        .unwrap();
    assert_eq!(run.step, 1);
    let run = change
        .advance_pipeline_run("prun_1", &serde_json::json!({ "step": "gate" }), None, "failed", Some("gate"))
        .await
        .unwrap();
    assert_eq!((run.steps[0]["index"].as_i64(), run.steps[1]["index"].as_i64()), (Some(0), Some(1)));
    change.commit(serde_json::json!({}), Event::new("pipeline.run.finished", serde_json::json!({}))).await.unwrap();
    assert_eq!((run.status.as_str(), run.steps.len(), run.coalesced.len()), ("failed", 2, 1));
    // A redelivered event stays a duplicate after the run ends; a new one starts a new run.
    assert_eq!(trigger("feedback.degraded#9", "prun_4").await, Triggered::Duplicate("prun_1".into()));
    assert!(matches!(trigger("manual#1", "prun_5").await, Triggered::Started(_)));
    assert_eq!(store.pipeline_runs(&acme, "retrain", 10).await.unwrap().len(), 2);
    assert_eq!(store.pipelines(None).await.unwrap().len(), 1);
}

async fn files_and_batches_page_step_and_keep_their_objects(store: &Store, _database: &TestDatabase) {
    use crate::batches::{BatchPart, BatchRequest, BatchStep, StoredFile};
    create_tenant(store, "acme").await;
    create_tenant(store, "globex").await;
    let pdp = authorizer();
    let acme = tenant("acme");
    let engineer = Principal { id: "key_eng".to_string(), tenant: Some(acme.clone()), role: Role::Engineer };
    for index in 0..3 {
        let id = format!("file_{index}");
        let request = AccessRequest::new(&engineer, Action::FileUpload, Resource::file(&acme, &id));
        let mut change = store.begin_change(&pdp, request, "req-file").await.unwrap();
        let file = StoredFile {
            id,
            tenant: acme.clone(),
            purpose: "batch".to_string(),
            filename: "requests.jsonl".to_string(),
            bytes: 10,
            digest: format!("{index:064x}"),
            created_at: 1000 + index,
            created_by: engineer.id.clone(),
        };
        change.add_file(&file).await.unwrap();
        change.commit(serde_json::json!({}), Event::new("file.created", serde_json::json!({}))).await.unwrap();
    }
    // Newest first, a page at a time, and a cursor of another tenant's or no file ends the list.
    let first = store.files(&acme, Some("batch"), None, 2).await.unwrap();
    assert_eq!(first.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), ["file_2", "file_1"]);
    let rest = store.files(&acme, None, Some("file_1"), 2).await.unwrap();
    assert_eq!(rest.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), ["file_0"]);
    assert!(store.files(&acme, Some("batch_output"), None, 10).await.unwrap().is_empty());
    assert!(store.files(&tenant("globex"), None, None, 10).await.unwrap().is_empty());
    assert!(store.files(&acme, None, Some("file_none"), 10).await.unwrap().is_empty());
    assert!(store.object_is_referenced(&format!("{:064x}", 1)).await.unwrap(), "a file keeps its object");

    let request = AccessRequest::new(&engineer, Action::BatchCreate, Resource::batch(&acme, "batch_1"));
    let mut change = store.begin_change(&pdp, request, "req-batch").await.unwrap();
    let asked = BatchRequest {
        id: "batch_1".to_string(),
        tenant: acme.clone(),
        endpoint: "/v1/chat/completions".to_string(),
        input_file_id: Some("file_0".to_string()),
        input_digest: Some(format!("{:064x}", 0)),
        source: None,
        completion_window: "24h".to_string(),
        metadata: serde_json::json!({ "job": "nightly" }),
        expires_at: 10_000,
    };
    let batch = change.add_batch(&asked).await.unwrap();
    change.commit(serde_json::json!({}), Event::new("batch.created", serde_json::json!({}))).await.unwrap();
    assert_eq!(
        (batch.status.as_str(), batch.request.clone(), batch.created_by.as_str()),
        ("validating", asked, "key_eng")
    );

    // Steps move only from the states named, only for the batch's own tenant.
    let system = Principal::system();
    let step = |status: &str| BatchStep { status: status.to_string(), ..BatchStep::default() };
    let request = AccessRequest::new(&system, Action::BatchRun, Resource::batch(&acme, "batch_1"));
    let mut change = store.begin_change(&pdp, request.clone(), "req-step").await.unwrap();
    assert!(change
        .step_batch(&tenant("globex"), "batch_1", &["validating"], &step("in_progress"))
        .await
        .unwrap()
        .is_none());
    let moved = BatchStep { total: Some(2), deployment: Some("chat".to_string()), ..step("in_progress") };
    let moved = change.step_batch(&acme, "batch_1", &["validating"], &moved).await.unwrap().unwrap();
    assert_eq!((moved.status.as_str(), moved.total, moved.deployment.as_deref()), ("in_progress", 2, Some("chat")));
    assert!(moved.in_progress_at.is_some() && moved.completed_at.is_none());
    assert!(change.step_batch(&acme, "batch_1", &["validating"], &step("failed")).await.unwrap().is_none());
    assert!(change.step_batch(&acme, "batch_1", &["in_progress"], &step("validating")).await.is_err());
    change.commit(serde_json::json!({}), Event::new("batch.in_progress", serde_json::json!({}))).await.unwrap();

    // Its input file deleted, the running batch still keeps the content.
    let delete = AccessRequest::new(&engineer, Action::FileDelete, Resource::file(&acme, "file_0"));
    let mut change = store.begin_change(&pdp, delete, "req-delete").await.unwrap();
    assert!(change.delete_file(&acme, "file_0").await.unwrap());
    change.commit(serde_json::json!({}), Event::new("file.deleted", serde_json::json!({}))).await.unwrap();
    assert!(store.object_is_referenced(&format!("{:064x}", 0)).await.unwrap(), "the running batch keeps its input");

    // A part's counts add up, and its objects are kept until the batch lets them go.
    let part = BatchPart {
        part: 0,
        first_line: 0,
        lines: 2,
        output_digest: format!("{:064x}", 10),
        error_digest: format!("{:064x}", 11),
        completed: 1,
        failed: 1,
    };
    store.add_batch_part(&acme, "batch_1", &part).await.unwrap();
    assert_eq!(store.batch_parts("batch_1").await.unwrap(), [part]);
    let counted = store.batch(&acme, "batch_1").await.unwrap().unwrap();
    assert_eq!((counted.completed, counted.failed), (1, 1));
    assert!(store.batch(&tenant("globex"), "batch_1").await.unwrap().is_none());
    assert!(store.object_is_referenced(&format!("{:064x}", 10)).await.unwrap());
    let mut change = store.begin_change(&pdp, request, "req-finish").await.unwrap();
    let done = BatchStep { output_file_id: Some("file_2".to_string()), ..step("completed") };
    let done = change.step_batch(&acme, "batch_1", &["in_progress"], &done).await.unwrap().unwrap();
    change.commit(serde_json::json!({}), Event::new("batch.completed", serde_json::json!({}))).await.unwrap();
    assert!(done.finished() && done.output_file_id.as_deref() == Some("file_2"));
    assert!(!store.object_is_referenced(&format!("{:064x}", 10)).await.unwrap(), "the parts' objects go");
    assert!(!store.object_is_referenced(&format!("{:064x}", 0)).await.unwrap(), "the finished batch let its input go");
    assert_eq!(store.batches(&acme, None, 10).await.unwrap().len(), 1);

    // Deleting a file lets its object go; deleting it again finds nothing.
    let request = AccessRequest::new(&engineer, Action::FileDelete, Resource::file(&acme, "file_1"));
    let mut change = store.begin_change(&pdp, request, "req-delete").await.unwrap();
    assert!(change.delete_file(&acme, "file_1").await.unwrap());
    assert!(!change.delete_file(&acme, "file_1").await.unwrap());
    change.commit(serde_json::json!({}), Event::new("file.deleted", serde_json::json!({}))).await.unwrap();
    assert!(!store.object_is_referenced(&format!("{:064x}", 1)).await.unwrap());
    assert!(store.file(&acme, "file_1").await.unwrap().is_none());
}
