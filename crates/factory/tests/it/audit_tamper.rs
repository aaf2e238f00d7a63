//! Tampering with the stored audit log in every way the issue names: `factory audit verify`
//! must catch each one and name the first bad record.

use std::path::Path;

use sqlx::sqlite::SqlitePoolOptions;
use sqlx::Row;

use crate::support::{cli, tenant_with_keys, Server};

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

    // An attacker who rewrites a record and recomputes its leaf hash is caught by the checkpoint.
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
