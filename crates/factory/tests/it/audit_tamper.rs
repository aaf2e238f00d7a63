//! Tampering with the stored audit log in every way the issue names: `factory audit verify`
//! must catch each one and name the first bad record.

use std::path::{Path, PathBuf};

use factory_audit::checkpoint::{NoteSigner, NoteVerifier, PublishedCheckpoint};
use factory_audit::merkle::{self, Frontier};
use factory_audit::record::AuditRecord;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::Row;

use crate::support::{call, cli, tenant_with_keys, Server};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

async fn tamper(dir: &Path, statements: &[String]) {
    let url = format!("sqlite://{}", dir.join("metadata.db").display());
    let pool = SqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    for statement in statements {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    pool.close().await;
}

fn verify(dir: &Path) -> (bool, String) {
    let (ok, stdout, stderr) = cli(&["audit", "verify", "--data-dir", dir.to_str().unwrap()], &[]);
    (ok, format!("{stdout}{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_catches_every_kind_of_tampering() {
    let root = tempfile::tempdir().unwrap();
    let original = root.path().join("original");
    let server = Server::start(&original, &[], &[]);
    tenant_with_keys(&server, "acme", &["engineer", "auditor"]).await;
    tenant_with_keys(&server, "globex", &["admin"]).await;
    assert!(server.terminate().success());

    let (ok, output) = verify(&original);
    assert!(ok, "the untouched log must verify: {output}");
    assert!(output.contains("audit log verified: 6 records"), "{output}");

    // Each case: what is done to a copy, and what the verifier must say.
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "flip a byte in a record",
            vec!["UPDATE audit_records SET record = REPLACE(record, '\"principal\":\"', '\"principal\":\"x') WHERE idx = 3".into()],
            "record 3",
        ),
        ("delete a record", vec!["DELETE FROM audit_records WHERE idx = 2".into()], "record 2"),
        (
            "reorder two records",
            vec![
                "UPDATE audit_records SET idx = -1 WHERE idx = 1".into(),
                "UPDATE audit_records SET idx = 1 WHERE idx = 4".into(),
                "UPDATE audit_records SET idx = 4 WHERE idx = -1".into(),
            ],
            "record 1",
        ),
        (
            "truncate the tail and the head counter",
            vec!["DELETE FROM audit_records WHERE idx >= 4".into(), "UPDATE audit_head SET size = 4".into()],
            "checkpoint",
        ),
        ("truncate the tail only", vec!["DELETE FROM audit_records WHERE idx >= 5".into()], "record 5"),
        (
            "forge a checkpoint",
            vec!["UPDATE audit_checkpoints SET note = REPLACE(note, char(10) || '6' || char(10), char(10) || '5' || char(10)) WHERE size = 6".into()],
            "checkpoint",
        ),
        (
            "alter the details behind a record",
            vec!["UPDATE audit_records SET details = '{\"role\":\"admin\"}' WHERE idx = 4".into()],
            "record 4",
        ),
    ];
    for (name, statements, expected) in cases {
        let copy = root.path().join(name.replace(' ', "-"));
        copy_dir(&original, &copy);
        tamper(&copy, &statements).await;
        let (ok, output) = verify(&copy);
        assert!(!ok, "{name}: verify must fail, said {output}");
        assert!(output.contains(expected), "{name}: expected {expected:?} in {output}");
    }

    // An attacker who rewrites a record and recomputes its leaf hash, and the subtree roots
    // stored with the records, is caught by the checkpoint.
    let copy = root.path().join("rewrite-with-leaf-hash");
    copy_dir(&original, &copy);
    let url = format!("sqlite://{}", copy.join("metadata.db").display());
    let pool = SqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let record: String =
        sqlx::query("SELECT record FROM audit_records WHERE idx = 2").fetch_one(&pool).await.unwrap().get("record");
    let forged = record.replace("\"engineer\"", "\"admin\"").replace("\"allow\"", "\"deny\"");
    assert_ne!(forged, record);
    let leaf = factory_audit::merkle::leaf_hash(forged.as_bytes()).to_vec();
    sqlx::query("UPDATE audit_records SET record = $1, leaf_hash = $2 WHERE idx = 2")
        .bind(&forged)
        .bind(leaf)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    // Recomputed for the forged leaf, the damage in the proof index is caught first.
    let (ok, output) = verify(&copy);
    assert!(!ok && output.contains("record 3: stored subtree roots do not match"), "{output}");
    reindex(&copy).await;
    let (ok, output) = verify(&copy);
    assert!(!ok && output.contains("does not match the root"), "{output}");

    // A checkpoint forged with another key: signed correctly, but not by the factory.
    let copy = root.path().join("foreign-key");
    copy_dir(&original, &copy);
    let other = factory_audit::checkpoint::NoteSigner::generate("factory.local/audit", [9u8; 32]).unwrap();
    let forged = other.sign(&factory_audit::checkpoint::Checkpoint {
        origin: "factory.local/audit".to_string(),
        size: 6,
        root: [0u8; 32],
    });
    tamper(&copy, &[format!("UPDATE audit_checkpoints SET note = '{forged}' WHERE size = 6")]).await;
    let (ok, output) = verify(&copy);
    assert!(!ok && output.contains("checkpoint"), "{output}");

    // Replacing audit.pub with the forger's key is caught when the key is pinned.
    let pinned = std::fs::read_to_string(original.join("audit.pub")).unwrap();
    std::fs::write(copy.join("audit.pub"), other.verifier_key()).unwrap();
    let (ok, stdout, stderr) =
        cli(&["audit", "verify", "--data-dir", copy.to_str().unwrap(), "--public-key", pinned.trim()], &[]);
    assert!(!ok, "{stdout}{stderr}");

    // The stored rows are what the verifier read: make sure the original still has them all.
    let url = format!("sqlite://{}", original.join("metadata.db").display());
    let pool = SqlitePoolOptions::new().connect(&url).await.unwrap();
    let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_records").fetch_one(&pool).await.unwrap().get("n");
    assert_eq!(count, 6);
}

/// Recomputes the subtree roots stored with every record from the stored leaf hashes, as the
/// factory would have written them.
async fn reindex(dir: &Path) {
    let url = format!("sqlite://{}", dir.join("metadata.db").display());
    let pool = SqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let rows = sqlx::query("SELECT idx, leaf_hash FROM audit_records ORDER BY idx").fetch_all(&pool).await.unwrap();
    let mut frontier = Frontier::new();
    for row in rows {
        let leaf: Vec<u8> = row.get("leaf_hash");
        let mut roots = Vec::new();
        frontier.push_completing(leaf.try_into().unwrap(), |node| roots.extend_from_slice(&node));
        sqlx::query("UPDATE audit_records SET subtree_roots = $1 WHERE idx = $2")
            .bind(roots)
            .bind(row.get::<i64, _>("idx"))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
}

fn verify_with(dir: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["audit", "verify", "--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = cli(&args, &[]);
    (ok, format!("{stdout}{stderr}"))
}

/// The attack of issue 16: with write access to the database, delete a tenant's records,
/// renumber and re-hash the rest exactly as the factory computes them (canonical records, leaf
/// hashes, subtree roots, head counter), and delete the checkpoints that covered what was
/// deleted. `later_last_record` also moves the last record's time on by that many seconds.
/// Returns how many records are left.
async fn rewrite_without_tenant(dir: &Path, tenant: &str, later_last_record: i64) -> u64 {
    let url = format!("sqlite://{}", dir.join("metadata.db").display());
    let pool = SqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let first_deleted: i64 = sqlx::query("SELECT MIN(idx) AS first FROM audit_records WHERE tenant = $1")
        .bind(tenant)
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("first");
    sqlx::query("DELETE FROM audit_records WHERE tenant = $1").bind(tenant).execute(&pool).await.unwrap();
    let rows = sqlx::query("SELECT idx, record FROM audit_records ORDER BY idx").fetch_all(&pool).await.unwrap();
    let count = rows.len();
    let mut frontier = Frontier::new();
    for (position, row) in rows.into_iter().enumerate() {
        let old_index: i64 = row.get("idx");
        let mut record = AuditRecord::from_canonical(row.get::<String, _>("record").as_bytes()).unwrap();
        record.index = position as u64;
        if position + 1 == count && later_last_record != 0 {
            let millis = factory_audit::record::utc_millis(&record.time).unwrap() + later_last_record * 1000;
            record.time = factory_core::time::millis_to_rfc3339(millis);
        }
        let bytes = record.canonical_bytes();
        let leaf = merkle::leaf_hash(&bytes);
        let mut roots = Vec::new();
        frontier.push_completing(leaf, |node| roots.extend_from_slice(&node));
        // Ascending order: each row moves down into a slot already vacated.
        sqlx::query(
            "UPDATE audit_records SET idx = $1, record = $2, leaf_hash = $3, subtree_roots = $4 WHERE idx = $5",
        )
        .bind(position as i64)
        .bind(String::from_utf8(bytes).unwrap())
        .bind(leaf.to_vec())
        .bind(roots)
        .bind(old_index)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query("UPDATE audit_head SET size = $1").bind(count as i64).execute(&pool).await.unwrap();
    sqlx::query("DELETE FROM audit_checkpoints WHERE size > $1").bind(first_deleted).execute(&pool).await.unwrap();
    pool.close().await;
    count as u64
}

fn published(dir: &Path, size: u64) -> PathBuf {
    dir.join("checkpoints").join(PublishedCheckpoint::file_name(size))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_log_fails_against_a_published_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let original = root.path().join("original");
    let server = Server::start(&original, &[], &[]);
    tenant_with_keys(&server, "acme", &["engineer", "auditor"]).await;
    // A checkpoint between the tenants, as the periodic task would sign.
    let reply = call(&server.url, "GET", "/api/v1/audit/checkpoint", Some(&server.admin_key), None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    tenant_with_keys(&server, "globex", &["admin"]).await;
    assert!(server.terminate().success());
    let pinned = std::fs::read_to_string(original.join("audit.pub")).unwrap();
    let pinned = pinned.trim();

    // Every signed checkpoint was published as a file outside the database, the final one too.
    let mut names: Vec<String> = std::fs::read_dir(original.join("checkpoints"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    // One at start (its size depends on how soon the task runs), one asked for, one at shutdown.
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[1..], [PublishedCheckpoint::file_name(4), PublishedCheckpoint::file_name(6)]);
    let verifier = NoteVerifier::from_verifier_key(pinned).unwrap();
    let text = std::fs::read_to_string(published(&original, 6)).unwrap();
    assert_eq!(verifier.verify(&PublishedCheckpoint::note_in_file(&text).unwrap()).unwrap().size, 6);

    // The genuine log passes against its published checkpoints, given or found in the data dir.
    let (ok, output) = verify(&original);
    assert!(ok && output.contains("audit log verified: 6 records") && output.contains("(3 trusted)"), "{output}");
    let genuine = root.path().join("genuine");
    copy_dir(&original, &genuine);
    let final_checkpoint = published(&original, 6);
    let (ok, output) =
        verify_with(&genuine, &["--checkpoint", final_checkpoint.to_str().unwrap(), "--public-key", pinned]);
    assert!(ok && output.contains("(1 trusted)"), "{output}");

    // The attack. The copy holds the database and keys but not the published checkpoints, so
    // the database alone is all the verifier sees: and it is self-consistent.
    let copy = root.path().join("rewritten");
    copy_dir(&original, &copy);
    assert_eq!(rewrite_without_tenant(&copy, "acme", 0).await, 4);
    let (ok, output) = verify_with(&copy, &["--public-key", pinned]);
    assert!(ok && output.contains("audit log verified: 4 records"), "the rewrite is self-consistent: {output}");

    // A witness's copy of a published checkpoint catches it: the log no longer extends it.
    let at_four = published(&original, 4);
    let (ok, output) = verify_with(&copy, &["--checkpoint", at_four.to_str().unwrap(), "--public-key", pinned]);
    assert!(!ok, "{output}");
    assert!(
        output.contains(&format!("trusted checkpoint {} for size 4 does not match the root", at_four.display())),
        "{output}"
    );
    let (ok, output) = verify_with(&copy, &["--checkpoint", final_checkpoint.to_str().unwrap()]);
    assert!(!ok && output.contains("record 4: missing, though trusted checkpoint"), "{output}");
    let directory = original.join("checkpoints");
    let (ok, output) = verify_with(&copy, &["--checkpoint", directory.to_str().unwrap(), "--public-key", pinned]);
    assert!(!ok && output.contains("trusted checkpoint"), "{output}");

    // Without a witness, a rewrite that leaves records uncovered for longer than the
    // checkpoint interval allows shows as a stale newest checkpoint.
    let stale = root.path().join("rewritten-later");
    copy_dir(&original, &stale);
    rewrite_without_tenant(&stale, "acme", 3600).await;
    let (ok, output) = verify(&stale);
    assert!(!ok && output.contains("not covered by any checkpoint"), "{output}");
    let (ok, output) = verify_with(&stale, &["--checkpoint-interval-secs", "3600"]);
    assert!(ok, "a long enough interval allows it: {output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_pinned_key_catches_a_log_signed_with_another_key() {
    let root = tempfile::tempdir().unwrap();
    let original = root.path().join("original");
    let server = Server::start(&original, &[], &[]);
    tenant_with_keys(&server, "acme", &["engineer"]).await;
    assert!(server.terminate().success());
    let pinned = std::fs::read_to_string(original.join("audit.pub")).unwrap();
    let pinned = pinned.trim();
    let genuine = NoteVerifier::from_verifier_key(pinned).unwrap();

    // The only fault: every stored checkpoint re-signed, same sizes and roots, by a fresh key
    // of the same name, and audit.pub replaced by its verifier key. The records are untouched.
    let copy = root.path().join("resigned");
    copy_dir(&original, &copy);
    let forger = NoteSigner::generate(genuine.name(), [42u8; 32]).unwrap();
    assert_ne!(forger.verifier_key(), pinned);
    let url = format!("sqlite://{}", copy.join("metadata.db").display());
    let pool = SqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let notes = sqlx::query("SELECT size, note FROM audit_checkpoints").fetch_all(&pool).await.unwrap();
    assert!(!notes.is_empty());
    for row in notes {
        let checkpoint = genuine.verify(&row.get::<String, _>("note")).unwrap();
        sqlx::query("UPDATE audit_checkpoints SET note = $1 WHERE size = $2")
            .bind(forger.sign(&checkpoint))
            .bind(row.get::<i64, _>("size"))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    std::fs::write(copy.join("audit.pub"), forger.verifier_key()).unwrap();

    // Trusting the key file beside the database, everything checks out ...
    let (ok, output) = verify(&copy);
    assert!(ok && output.contains("audit log verified"), "{output}");
    // ... and only the pinned key tells the signatures are not the factory's.
    let (ok, output) = verify_with(&copy, &["--public-key", pinned]);
    assert!(!ok, "{output}");
    assert!(output.contains("checkpoint 0 (in the order given) does not verify: note has no signature by"), "{output}");
    // A witness's published checkpoint, signed by the real key, refuses the forged key too.
    let witnessed = published(&original, 3);
    let (ok, output) = verify_with(&copy, &["--checkpoint", witnessed.to_str().unwrap()]);
    assert!(!ok && output.contains("does not verify"), "{output}");
}
