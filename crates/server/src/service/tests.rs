//! The use cases the pipelines drive, called as the pipelines call them: through the service
//! functions, with a caller, on a factory opened in-process. Each change must be governed
//! (refused as the policies say, audited when made) and answer in the services' own terms.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use factory_core::{Role, TenantName};
use factory_datasets::{DedupMode, Format, OnError};

use super::datasets::{self, NewDataset, Upload};
use super::runs::{self, ModelSpec, NewRun, RunKind, RunOptions, RunSpec, TOKENIZER_KIND};
use super::ErrorKind;
use crate::caller::Caller;
use crate::testing::TestFactory;

const CORPUS: &str = "The quick brown fox jumps over the lazy dog.\nA second line of text to train on.\n\
                      Pipelines create runs through the service layer.\nAnd the runs are governed.\n";

/// Defines `notes` in the caller's tenant and ingests the corpus as its first version.
async fn notes_version(factory: &TestFactory, caller: &Caller) -> TenantName {
    let tenant = caller.principal.tenant.clone().unwrap();
    let new = NewDataset {
        name: "notes".to_string(),
        classification: "internal".to_string(),
        jurisdiction: None,
        site: None,
        owner: None,
        retention_days: None,
        description: String::new(),
        tags: Vec::new(),
        pii_policy: None,
        schema: None,
    };
    datasets::create(&factory.state, caller, &tenant, new).await.unwrap();
    let upload = Upload {
        format: Format::Text,
        text_column: None,
        on_error: OnError::Fail,
        paragraphs: None,
        dedup: DedupMode::Off,
        max_row_bytes: None,
        shard_rows: None,
        derived_from: Vec::new(),
    };
    let reader = std::io::Cursor::new(CORPUS.as_bytes().to_vec());
    match datasets::ingest(&factory.state, caller, &tenant, "notes", upload, reader).await {
        Ok(ingested) => assert_eq!(ingested.value.version, 1),
        Err(_) => panic!("the corpus ingests"),
    }
    tenant
}

fn tokenizer_run(tenant: &str, version: i64) -> NewRun {
    NewRun {
        kind: RunKind::Tokenizer,
        dataset: "notes".to_string(),
        version,
        tenant: Some(tenant.to_string()),
        options: RunOptions::default(),
        base: None,
        register: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_pins_the_shards_of_the_version_it_was_created_on_and_is_audited() {
    let factory = TestFactory::open().await;
    let engineer = factory.caller("acme", Role::Engineer).await;
    let tenant = notes_version(&factory, &engineer).await;
    let (dataset, version) = datasets::find_version(&factory.state, &tenant, "notes@latest").await.unwrap();
    let manifest = datasets::load_manifest(&factory.state, &dataset, version).await.unwrap().manifest;

    let head = factory.state.store.audit_size().await.unwrap();
    let created = runs::create(&factory.state, &engineer, tokenizer_run("acme", 1)).await.unwrap();
    assert_eq!(created.value.kind, TOKENIZER_KIND);
    // The creation is one record, by the engineer, for job.enqueue.
    let records = factory.state.store.audit_records(head, 100, None).await.unwrap();
    let creation = records.iter().find(|r| r.record.index == created.committed.audit_index).expect("audited");
    assert_eq!(
        (creation.record.principal.as_str(), creation.record.action.as_str()),
        (engineer.principal.id.as_str(), "job.enqueue")
    );
    let spec: RunSpec = serde_json::from_value(created.value.payload.clone()).unwrap();
    assert_eq!(spec.shards, manifest.shard_digests(), "the run reads exactly the version's shards");
    assert_eq!((spec.dataset.as_str(), spec.version, spec.text_column.as_str()), ("notes", 1, "text"));
    assert_eq!(spec.requested_by.as_ref().map(|p| p.id.as_str()), Some(engineer.principal.id.as_str()));
    let stored = factory.state.store.job(&created.value.id).await.unwrap().expect("the job was enqueued");
    assert_eq!(stored.tenant, tenant);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_refused_in_the_services_terms() {
    let factory = TestFactory::open().await;
    let engineer = factory.caller("acme", Role::Engineer).await;
    notes_version(&factory, &engineer).await;

    let missing = runs::create(&factory.state, &engineer, tokenizer_run("acme", 7)).await.err().unwrap();
    assert_eq!(missing.kind, ErrorKind::NotFound, "{}", missing.message);
    assert!(missing.message.contains("no version 7"), "{}", missing.message);

    // Another tenant's dataset is no oracle: the same answer whether it exists or not.
    let outsider = factory.caller("globex", Role::Engineer).await;
    let foreign = runs::create(&factory.state, &outsider, tokenizer_run("acme", 1)).await.err().unwrap();
    let absent = NewRun { dataset: "nothing".to_string(), ..tokenizer_run("acme", 1) };
    let foreign_absent = runs::create(&factory.state, &outsider, absent).await.err().unwrap();
    assert_eq!((foreign.kind, foreign.message.as_str()), (ErrorKind::NotFound, "no such resource"));
    assert_eq!((foreign_absent.kind, foreign_absent.message.as_str()), (foreign.kind, foreign.message.as_str()));

    // An app key may not enqueue work: refused by policy, in its own tenant.
    let app = factory.caller("acme", Role::App).await;
    let refused = runs::create(&factory.state, &app, tokenizer_run("acme", 1)).await.err().unwrap();
    assert_eq!(refused.kind, ErrorKind::Forbidden, "{}", refused.message);

    // A model too large to train here is refused before anything is allocated for it.
    let huge = serde_json::json!({
        "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 1024,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
    });
    let options = RunOptions { model: Some(ModelSpec { preset: None, config: Some(huge) }), ..RunOptions::default() };
    let pretrain = NewRun { kind: RunKind::Pretrain, options, ..tokenizer_run("acme", 1) };
    let too_large = runs::create(&factory.state, &engineer, pretrain).await.err().unwrap();
    assert_eq!(too_large.kind, ErrorKind::Invalid, "{}", too_large.message);
    assert!(too_large.message.contains("jobs.max_model_parameters = 500000000"), "{}", too_large.message);

    let finetune_without_base = NewRun { kind: RunKind::Finetune, ..tokenizer_run("acme", 1) };
    let invalid = runs::create(&factory.state, &engineer, finetune_without_base).await.err().unwrap();
    assert_eq!(invalid.kind, ErrorKind::Invalid);
    assert!(invalid.message.starts_with("base:"), "{}", invalid.message);
}
