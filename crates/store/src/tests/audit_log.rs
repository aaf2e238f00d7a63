//! The audit log's proof index (stored subtree roots), checkpoint publishing, and the
//! migration that indexes logs written before the index existed. Every body runs on SQLite and
//! on PostgreSQL, like the rest of the suite.

use std::path::Path;

use factory_audit::checkpoint::{NoteVerifier, PublishedCheckpoint};
use factory_audit::merkle::{self, Frontier, Hash};
use factory_audit::record::AuditRecord;
use factory_audit::verify::{verify_log_against, Expectations, TrustedCheckpoint};
use factory_authz::CedarAuthorizer;
use factory_core::{AccessRequest, Action, Jurisdiction, Resource};
use sqlx::Row;

use super::{
    authorizer, issuer, platform_admin, postgres_database, sqlite_database, tenant, verify_store, TestDatabase,
};
use crate::{Event, Store, StoreErrorKind};

store_suite!(
    proofs_from_the_index_equal_proofs_from_every_leaf,
    checkpoints_are_published_and_a_rewritten_log_is_not_signed,
    existing_logs_are_indexed_by_the_migration,
);

/// Appends `n` records through the governed path (tenant creations), sharing one PDP.
async fn append(store: &Store, pdp: &CedarAuthorizer, prefix: &str, n: usize) {
    for i in 0..n {
        let request = AccessRequest::new(&platform_admin(), Action::TenantCreate, Resource::platform());
        let mut change = store.begin_change(pdp, request, "req-audit").await.unwrap();
        change.create_tenant(&tenant(&format!("{prefix}{i}")), &[Jurisdiction::new("eu").unwrap()]).await.unwrap();
        change
            .commit(serde_json::json!({ "n": i }), Event::new("tenant.created", serde_json::json!({})))
            .await
            .unwrap();
    }
}

/// Every stored leaf hash, in order, read the way the verifier reads them.
async fn all_leaves(store: &Store) -> Vec<Hash> {
    let mut leaves = Vec::new();
    let mut after = None;
    loop {
        let page = store.stored_audit_page(after, u64::MAX >> 2, 1000, false).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.0.index);
        leaves.extend(page.into_iter().map(|(record, _)| <Hash>::try_from(record.leaf_hash.as_slice()).unwrap()));
    }
    leaves
}

/// The same deterministic "random" indices on every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

async fn proofs_from_the_index_equal_proofs_from_every_leaf(store: &Store, _database: &TestDatabase) {
    append(store, &authorizer(), "p", 300).await;
    let leaves = all_leaves(store).await;
    assert_eq!(leaves.len(), 300);
    let mut random = Lcg(17);
    for size in 1..=300u64 {
        let tree = &leaves[..size as usize];
        assert_eq!(store.audit_root(size).await.unwrap(), merkle::root(tree), "root of {size}");
        for index in [0, size - 1, random.below(size), random.below(size)] {
            let (leaf, proof) = store.inclusion_proof(index, size).await.unwrap();
            assert_eq!(leaf, tree[index as usize]);
            assert_eq!(proof, merkle::inclusion_proof(tree, index).unwrap(), "inclusion of {index} in {size}");
        }
        for old_size in [1, size, 1 + random.below(size)] {
            assert_eq!(
                store.consistency_proof(old_size, size).await.unwrap(),
                merkle::consistency_proof(tree, old_size).unwrap(),
                "consistency {old_size} -> {size}"
            );
        }
    }
    assert_eq!(store.audit_root(301).await.unwrap_err().kind(), StoreErrorKind::NotFound);
    assert_eq!(store.inclusion_proof(3, 301).await.unwrap_err().kind(), StoreErrorKind::NotFound);
    assert_eq!(store.consistency_proof(0, 3).await.unwrap_err().kind(), StoreErrorKind::Invalid);
    // The index itself is what the verifier recomputes from the leaves.
    assert_eq!(verify_store(store, &issuer()).await, Ok(300));

    // A damaged index is caught by the verifier and reported by the proofs, not served.
    sqlx::query("UPDATE audit_records SET subtree_roots = NULL WHERE idx = 255").execute(store.pool()).await.unwrap();
    let error = verify_store(store, &issuer()).await.unwrap_err();
    assert!(error.starts_with("record 255: stored subtree roots do not match"), "{error}");
    assert_eq!(store.audit_root(256).await.unwrap_err().kind(), StoreErrorKind::Corrupt);
}

/// The names of the published checkpoint files in `dir`, in order.
fn published_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| PublishedCheckpoint::size_in_file_name(name).is_some())
        .collect();
    names.sort();
    names
}

/// What the review's attacker does with write access to the database: delete records,
/// renumber and re-hash the rest (leaf hashes and subtree roots, as the store computes them)
/// and delete the checkpoints that covered what was deleted, leaving a self-consistent log.
async fn rewrite_without(store: &Store, deleted: impl Fn(u64) -> bool) {
    let rows = sqlx::query("SELECT idx, record, details, tenant, created_at FROM audit_records ORDER BY idx")
        .fetch_all(store.pool())
        .await
        .unwrap();
    let first_deleted = (0..rows.len() as u64).find(|index| deleted(*index)).unwrap();
    sqlx::query("DELETE FROM audit_records").execute(store.pool()).await.unwrap();
    let mut frontier = Frontier::new();
    for row in rows {
        let index: i64 = row.get("idx");
        if deleted(index as u64) {
            continue;
        }
        let mut record = AuditRecord::from_canonical(row.get::<String, _>("record").as_bytes()).unwrap();
        record.index = frontier.size();
        let bytes = record.canonical_bytes();
        let leaf = merkle::leaf_hash(&bytes);
        let mut roots = Vec::new();
        frontier.push_completing(leaf, |node| roots.extend_from_slice(&node));
        sqlx::query(
            "INSERT INTO audit_records (idx, record, leaf_hash, details, tenant, created_at, subtree_roots) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(record.index as i64)
        .bind(String::from_utf8(bytes).unwrap())
        .bind(leaf.to_vec())
        .bind(row.get::<String, _>("details"))
        .bind(row.get::<Option<String>, _>("tenant"))
        .bind(row.get::<i64, _>("created_at"))
        .bind(roots)
        .execute(store.pool())
        .await
        .unwrap();
    }
    sqlx::query("UPDATE audit_head SET size = $1").bind(frontier.size() as i64).execute(store.pool()).await.unwrap();
    // Outbox events name audit indexes too; the renumbered ones would collide with new events.
    sqlx::query("DELETE FROM outbox").execute(store.pool()).await.unwrap();
    sqlx::query("DELETE FROM audit_checkpoints WHERE size > $1")
        .bind(first_deleted as i64)
        .execute(store.pool())
        .await
        .unwrap();
}

async fn checkpoints_are_published_and_a_rewritten_log_is_not_signed(store: &Store, _database: &TestDatabase) {
    let pdp = authorizer();
    let witness = tempfile::tempdir().unwrap();
    let dir = witness.path().join("checkpoints");
    let publisher = issuer().publishing_to(dir.clone());
    let verifier = NoteVerifier::from_verifier_key(&publisher.signer.verifier_key()).unwrap();

    append(store, &pdp, "a", 5).await;
    let first = store.issue_checkpoint(&publisher).await.unwrap();
    assert_eq!(published_files(&dir), vec![PublishedCheckpoint::file_name(5)]);
    let text = std::fs::read_to_string(dir.join(PublishedCheckpoint::file_name(5))).unwrap();
    assert_eq!(PublishedCheckpoint::note_in_file(&text).unwrap(), first);
    assert_eq!(store.issue_checkpoint(&publisher).await.unwrap(), first, "an unchanged log reuses its checkpoint");
    assert_eq!(published_files(&dir).len(), 1);

    append(store, &pdp, "b", 7).await;
    let second = store.issue_checkpoint(&publisher).await.unwrap();
    assert_eq!(verifier.verify(&second).unwrap().size, 12);
    assert_eq!(published_files(&dir), vec![PublishedCheckpoint::file_name(5), PublishedCheckpoint::file_name(12)]);

    // A checkpoint stored but not published (a directory set up later) is published when reused.
    std::fs::remove_file(dir.join(PublishedCheckpoint::file_name(12))).unwrap();
    let restarted = issuer().publishing_to(dir.clone());
    assert_eq!(store.issue_checkpoint(&restarted).await.unwrap(), second);
    assert_eq!(published_files(&dir).len(), 2);
    // Published but not stored (a crash in between): stored on the next run, the same note.
    sqlx::query("DELETE FROM audit_checkpoints WHERE size = 12").execute(store.pool()).await.unwrap();
    assert_eq!(store.issue_checkpoint(&issuer().publishing_to(dir.clone())).await.unwrap(), second);
    assert_eq!(store.latest_checkpoint().await.unwrap(), Some(second.clone()));
    append(store, &pdp, "c", 3).await;
    store.issue_checkpoint(&restarted).await.unwrap();

    // The attack: records 6 and 9 deleted, the rest renumbered and re-hashed, the later
    // checkpoints deleted. The database alone still verifies ...
    rewrite_without(store, |index| index == 6 || index == 9).await;
    assert_eq!(verify_store(store, &publisher).await, Ok(13));
    // ... but not against the published checkpoints a witness copied ...
    let trusted: Vec<TrustedCheckpoint> = published_files(&dir)
        .into_iter()
        .map(|name| TrustedCheckpoint {
            note: PublishedCheckpoint::note_in_file(&std::fs::read_to_string(dir.join(&name)).unwrap()).unwrap(),
            from: name,
        })
        .collect();
    let expectations = Expectations {
        expected_size: 13,
        stored_checkpoints: &store.audit_checkpoints().await.unwrap(),
        trusted_checkpoints: &trusted,
        max_uncovered_span: None,
    };
    let records: Vec<_> = store.stored_audit_page(None, 13, 100, true).await.unwrap();
    let error =
        verify_log_against(records.into_iter().map(|(record, _)| record), &expectations, &verifier).unwrap_err();
    assert!(error.to_string().contains("trusted checkpoint checkpoint-00000000000000000012.json"), "{error}");

    // ... and the factory refuses to vouch for it with a new signature, whether it remembers
    // what it published or reads it from the directory after a restart.
    append(store, &pdp, "d", 3).await;
    for issuer in [&restarted, &issuer().publishing_to(dir.clone())] {
        let error = store.issue_checkpoint(issuer).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Corrupt);
        assert!(error.to_string().contains("refusing to sign"), "{error}");
    }
    assert_eq!(published_files(&dir).len(), 3);
    // An issuer that publishes nothing has nothing to compare with (the witness must).
    assert!(store.issue_checkpoint(&issuer()).await.is_ok());
}

async fn existing_logs_are_indexed_by_the_migration(store: &Store, database: &TestDatabase) {
    append(store, &authorizer(), "e", 37).await;
    let leaves = all_leaves(store).await;
    // Back to the schema before the index: the column and its migration gone.
    sqlx::query("ALTER TABLE audit_records DROP COLUMN subtree_roots").execute(store.pool()).await.unwrap();
    sqlx::query("DELETE FROM schema_migrations WHERE version = 11").execute(store.pool()).await.unwrap();
    assert!(!store.audit_subtree_roots_stored().await.unwrap());
    // The verifier reads such a database without the index.
    let old_page = store.stored_audit_page(None, 37, 100, false).await.unwrap();
    assert!(old_page.iter().all(|(record, _)| record.subtree_roots.is_none()));

    let reopened = Store::open(&database.url()).await.unwrap();
    assert!(reopened.audit_subtree_roots_stored().await.unwrap());
    assert_eq!(verify_store(&reopened, &issuer()).await, Ok(37));
    for size in [1u64, 2, 16, 31, 37] {
        assert_eq!(reopened.audit_root(size).await.unwrap(), merkle::root(&leaves[..size as usize]));
        let (_, proof) = reopened.inclusion_proof(size - 1, size).await.unwrap();
        assert_eq!(proof, merkle::inclusion_proof(&leaves[..size as usize], size - 1).unwrap());
    }
    // Appending goes on from the indexed log.
    append(&reopened, &authorizer(), "f", 5).await;
    assert_eq!(verify_store(&reopened, &issuer()).await, Ok(42));
    reopened.close().await;
}

/// A micro benchmark of the proof index: `cargo test -p factory-store --release -- --ignored
/// --nocapture proof_cost_at_100k_records`. Writes 100,000 records straight into an SQLite
/// log, then times proofs from the stored subtree roots against recomputing them from every
/// leaf in memory (what the store did before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark; run it by name"]
async fn proof_cost_at_100k_records() {
    use std::time::Instant;

    const RECORDS: u64 = 100_000;
    let database = sqlite_database().await.unwrap();
    let store = Store::open(&database.url()).await.unwrap();
    let mut frontier = Frontier::new();
    let mut leaves = Vec::new();
    let mut write = store.begin_write().await.unwrap();
    for index in 0..RECORDS {
        let record = AuditRecord {
            index,
            time: "2025-01-01T00:00:00Z".to_string(),
            tenant: None,
            principal: "bench".to_string(),
            action: "tenant.create".to_string(),
            resource: format!("platform:{index}"),
            decision: factory_audit::record::Decision::Allow,
            policies: vec![],
            request_id: "bench".to_string(),
            details_digest: String::new(),
        };
        let bytes = record.canonical_bytes();
        let leaf = merkle::leaf_hash(&bytes);
        let mut roots = Vec::new();
        frontier.push_completing(leaf, |node| roots.extend_from_slice(&node));
        leaves.push(leaf);
        sqlx::query(
            "INSERT INTO audit_records (idx, record, leaf_hash, details, tenant, created_at, subtree_roots) VALUES ($1, $2, $3, '{}', NULL, 0, $4)",
        )
        .bind(index as i64)
        .bind(String::from_utf8(bytes).unwrap())
        .bind(leaf.to_vec())
        .bind(roots)
        .execute(&mut *write.transaction)
        .await
        .unwrap();
    }
    sqlx::query("UPDATE audit_head SET size = $1").bind(RECORDS as i64).execute(&mut *write.transaction).await.unwrap();
    write.commit().await.unwrap();

    let mut random = Lcg(3);
    let rounds = 200;
    let started = Instant::now();
    for _ in 0..rounds {
        let index = random.below(RECORDS);
        let (_, proof) = store.inclusion_proof(index, RECORDS).await.unwrap();
        assert!(proof.len() <= 17);
    }
    let indexed = started.elapsed() / rounds;
    let started = Instant::now();
    for _ in 0..rounds {
        store.consistency_proof(1 + random.below(RECORDS - 1), RECORDS).await.unwrap();
    }
    let indexed_consistency = started.elapsed() / rounds;
    let started = Instant::now();
    for _ in 0..5 {
        merkle::inclusion_proof(&leaves, random.below(RECORDS)).unwrap();
    }
    let recomputed = started.elapsed() / 5;
    println!(
        "proofs at {RECORDS} records: inclusion {indexed:?}, consistency {indexed_consistency:?} from the index \
         (SQLite, each with its size check); recomputed from every leaf in memory: {recomputed:?}"
    );
    database.finish(store).await;
}
