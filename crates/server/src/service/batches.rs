//! The Batch API's use cases. Files: upload (`file.upload`, streamed into the object store and
//! bounded by `batch.max_file_mb`), list and show (`file.read`), content (`file.read`, audited
//! as `file.downloaded` before a byte leaves), delete (`file.delete`). Batches: create from a
//! file, or from a dataset version and a template (`batch.create`, with the job that runs it
//! enqueued in the same change), show and list (`batch.read`), cancel (`batch.cancel`).
//! Running a batch is the work of the `batch.run` job (`batches.rs`, beside `training.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use factory_core::{AccessRequest, Action, Classification, Jurisdiction, Resource, TenantName};
use factory_store::batches::{Batch, BatchRequest, BatchStep, StoredFile};
use factory_store::jobs::NewJob;
use factory_store::Event;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::caller::Caller;
use crate::service::access::{audit_read, authorize_as, hide_foreign};
use crate::service::datasets::{self, NewDataset};
use crate::service::inference::invalid_param;
use crate::service::inference::plan::tenant_of_key;
use crate::service::Recorded;
use crate::service_error::{ErrorKind, ServiceError};
use crate::state::AppState;

/// The job kind that runs a batch.
pub const BATCH_KIND: &str = "batch.run";
/// The endpoints a batch's requests may call.
pub const ENDPOINTS: [&str; 2] = ["/v1/chat/completions", "/v1/completions"];
/// How long a batch has to finish: OpenAI's only window.
pub const COMPLETION_WINDOW: &str = "24h";
const WINDOW_MILLIS: i64 = 24 * 3600 * 1000;
/// Batches wait behind their tenant's other jobs (a priority orders only its tenant's work).
const BATCH_JOB_PRIORITY: i64 = -50;
/// OpenAI's bounds on metadata: 16 pairs, keys of 64 and values of 512 characters.
const MAX_METADATA_PAIRS: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;
const MAX_FILENAME_BYTES: usize = 255;
/// A dataset batch's template renders one message per row.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// The most files or batches one page lists.
pub const MAX_PAGE: i64 = 100;

/// An uploaded file's bytes, stored and held (not yet a file anyone can see) until
/// [`record_file`] records them or drops them.
pub struct ReceivedFile {
    id: String,
    tenant: TenantName,
    filename: String,
    receipt: factory_objects::PutReceipt,
    lease: crate::pending_objects::ObjectLease,
}

/// Checks a file's `purpose` (only `batch` is taken here), before or after its bytes arrive.
pub fn check_purpose(purpose: &str) -> Result<(), ServiceError> {
    if purpose != "batch" {
        return Err(invalid_param(
            "purpose",
            &format!("files here are for batches: use purpose \"batch\", not {purpose:?}"),
        ));
    }
    Ok(())
}

/// Streams an upload's bytes into the object store (`file.upload` decided first): at most
/// `batch.max_file_mb`, held until [`record_file`].
pub async fn receive_file<S>(
    state: &AppState,
    caller: &Caller,
    filename: &str,
    body: S,
) -> Result<ReceivedFile, ServiceError>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send,
{
    let tenant = tenant_of_key(caller)?;
    if filename.is_empty() || filename.len() > MAX_FILENAME_BYTES || filename.chars().any(char::is_control) {
        return Err(invalid_param("file", &format!("give a file name of 1 to {MAX_FILENAME_BYTES} bytes")));
    }
    let id = factory_core::secrets::new_id("file");
    let request = AccessRequest::new(&caller.principal, Action::FileUpload, Resource::file(&tenant, &id));
    authorize_as(state, caller, &request, &tenant).await?;
    let limit = state.config.batch.max_file_bytes;
    let too_large = Arc::new(AtomicBool::new(false));
    let mut seen = 0u64;
    let flag = too_large.clone();
    let bounded = body.map(move |chunk| {
        let chunk = chunk?;
        seen += chunk.len() as u64;
        if seen > limit {
            flag.store(true, Ordering::SeqCst);
            return Err(std::io::Error::other("the file is larger than allowed"));
        }
        Ok(chunk)
    });
    let stored = state.objects.put_stream(Box::pin(bounded)).await;
    let receipt = match stored {
        Ok(receipt) => receipt,
        Err(_) if too_large.load(Ordering::SeqCst) => {
            let message = format!("file: at most {} MiB (batch.max_file_mb)", limit >> 20);
            return Err(ServiceError::new(ErrorKind::TooLarge, message).at_param("file"));
        }
        Err(error) => return Err(ServiceError::invalid(format!("file: the upload failed: {error}"))),
    };
    let mut lease = state.pending_objects.lease(state.store.clone(), state.objects.clone());
    lease.hold(receipt.digest).await;
    if receipt.size == 0 {
        lease.discard().await;
        return Err(invalid_param("file", "the file is empty"));
    }
    Ok(ReceivedFile { id, tenant, filename: filename.to_string(), receipt, lease })
}

/// Records a received file under `purpose` (`file.created`), or lets its bytes go.
pub async fn record_file(
    state: &AppState,
    caller: &Caller,
    received: ReceivedFile,
    purpose: &str,
) -> Result<Recorded<StoredFile>, ServiceError> {
    let ReceivedFile { id, tenant, filename, receipt, lease } = received;
    if let Err(error) = check_purpose(purpose) {
        lease.discard().await;
        return Err(error);
    }
    let file = StoredFile {
        id,
        tenant: tenant.clone(),
        purpose: purpose.to_string(),
        filename,
        bytes: receipt.size as i64,
        digest: receipt.digest.to_string(),
        created_at: factory_core::time::now_millis(),
        created_by: caller.principal.id.clone(),
    };
    let request = AccessRequest::new(&caller.principal, Action::FileUpload, Resource::file(&tenant, &file.id));
    let committed = async {
        let mut change = state.store.begin_change(state.pdp.as_ref(), request, &caller.request_id).await?;
        change.add_file(&file).await?;
        let details = serde_json::json!({
            "tenant": tenant, "file": file.id, "purpose": file.purpose, "bytes": file.bytes, "digest": file.digest,
        });
        change.commit(details.clone(), Event::new("file.created", details)).await
    }
    .await;
    match committed {
        Ok(committed) => {
            lease.keep().await;
            Ok(Recorded { value: file, committed })
        }
        Err(error) => {
            lease.discard().await;
            Err(hide_foreign(caller, Some(&tenant), error))
        }
    }
}

/// The caller's tenant's file `id`, if the caller may see it.
pub async fn show_file(state: &AppState, caller: &Caller, id: &str) -> Result<StoredFile, ServiceError> {
    let tenant = tenant_of_key(caller)?;
    let request = AccessRequest::new(&caller.principal, Action::FileRead, Resource::file(&tenant, id));
    authorize_as(state, caller, &request, &tenant).await?;
    state.store.file(&tenant, id).await?.ok_or_else(ServiceError::no_such_resource)
}

/// A page of a list, and whether more follow it.
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

impl<T> Page<T> {
    /// A page of at most `limit` from `read`, which was asked for one more.
    fn of(mut read: Vec<T>, limit: i64) -> Page<T> {
        let has_more = read.len() as i64 > limit;
        read.truncate(limit as usize);
        Page { items: read, has_more }
    }
}

/// The caller's tenant's files, newest first, a page of at most `limit` after `after`.
pub async fn list_files(
    state: &AppState,
    caller: &Caller,
    purpose: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Page<StoredFile>, ServiceError> {
    let tenant = tenant_of_key(caller)?;
    let request = AccessRequest::new(&caller.principal, Action::FileRead, Resource::file(&tenant, "*"));
    authorize_as(state, caller, &request, &tenant).await?;
    let limit = limit.clamp(1, MAX_PAGE);
    Ok(Page::of(state.store.files(&tenant, purpose, after, limit + 1).await?, limit))
}

/// A file's bytes, verified as they stream; the read is audited (`file.downloaded`) first,
/// since a file holds prompts and answers.
pub async fn file_content(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(StoredFile, factory_objects::VerifiedStream), ServiceError> {
    let file = show_file(state, caller, id).await?;
    let digest = file.digest.parse().map_err(|_| ServiceError::internal("a file names an invalid object"))?;
    let request = AccessRequest::new(&caller.principal, Action::FileRead, Resource::file(&file.tenant, id));
    let details = serde_json::json!({ "tenant": file.tenant, "file": file.id, "bytes": file.bytes });
    audit_read(state, caller, request, &file.tenant, "file.downloaded", details).await?;
    let stream = state.objects.open_stream(&digest).await.map_err(ServiceError::fault)?;
    Ok((file, stream))
}

/// Deletes the caller's tenant's file `id` (`file.deleted`); its object goes with the next
/// orphan sweep, once nothing else refers to it.
pub async fn delete_file(state: &AppState, caller: &Caller, id: &str) -> Result<Recorded<()>, ServiceError> {
    let tenant = tenant_of_key(caller)?;
    let request = AccessRequest::new(&caller.principal, Action::FileDelete, Resource::file(&tenant, id));
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(&tenant), e))?;
    if !change.delete_file(&tenant, id).await? {
        return Err(ServiceError::no_such_resource());
    }
    let details = serde_json::json!({ "tenant": tenant, "file": id });
    let committed = change.commit(details.clone(), Event::new("file.deleted", details)).await?;
    Ok(Recorded { value: (), committed })
}

/// A batch over an uploaded file of requests, as OpenAI's `POST /v1/batches` takes it.
#[derive(Debug, Clone, Deserialize)]
pub struct NewFileBatch {
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A batch over a dataset version: each row rendered by `template` (minijinja, the row's
/// columns as variables) into one user message to `deployment`, the answers written as a new
/// version of dataset `output`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetSource {
    pub dataset: String,
    pub version: i64,
    pub template: String,
    pub output: String,
    #[serde(default)]
    pub deployment: String,
    /// Fields every request carries besides the message (`max_tokens`, `temperature`,
    /// `response_format`, ...).
    #[serde(default)]
    pub request: serde_json::Map<String, serde_json::Value>,
    /// Filled in at creation: what the answers derive from, and the residency they get.
    #[serde(default)]
    pub derived_from: Vec<String>,
}

fn check_metadata(metadata: &serde_json::Map<String, serde_json::Value>) -> Result<(), ServiceError> {
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(invalid_param("metadata", &format!("at most {MAX_METADATA_PAIRS} pairs")));
    }
    for (key, value) in metadata {
        let fits = value.as_str().is_some_and(|value| value.chars().count() <= MAX_METADATA_VALUE);
        if key.chars().count() > MAX_METADATA_KEY || !fits {
            let message =
                format!("keys of at most {MAX_METADATA_KEY} characters, string values of at most {MAX_METADATA_VALUE}");
            return Err(invalid_param("metadata", &message));
        }
    }
    Ok(())
}

/// Creates a batch over the caller's tenant's file (`batch.created`), its job enqueued in the
/// same change. Its lines are checked when it runs (`validating`), as OpenAI does.
pub async fn create(state: &AppState, caller: &Caller, new: NewFileBatch) -> Result<Recorded<Batch>, ServiceError> {
    let tenant = tenant_of_key(caller)?;
    if !ENDPOINTS.contains(&new.endpoint.as_str()) {
        return Err(invalid_param("endpoint", &format!("batches call one of {}", ENDPOINTS.join(", "))));
    }
    if new.completion_window != COMPLETION_WINDOW {
        return Err(invalid_param("completion_window", &format!("the only window is {COMPLETION_WINDOW:?}")));
    }
    let metadata = new.metadata.unwrap_or_default();
    check_metadata(&metadata)?;
    let input = show_file(state, caller, &new.input_file_id).await?;
    if input.purpose != "batch" {
        return Err(invalid_param("input_file_id", "the file's purpose is not \"batch\""));
    }
    let batch = BatchRequest {
        id: factory_core::secrets::new_id("batch"),
        tenant,
        endpoint: new.endpoint,
        input_file_id: Some(input.id),
        input_digest: Some(input.digest),
        source: None,
        completion_window: new.completion_window,
        metadata: serde_json::Value::Object(metadata),
        expires_at: factory_core::time::now_millis() + WINDOW_MILLIS,
    };
    enqueue(state, caller, batch).await
}

/// Creates a batch over a dataset version (`batch.created`). It checks now what would
/// otherwise fail after hours: the caller may read the version's rows, call the deployment,
/// and write the output dataset, whose residency is the strictest of the data's and the
/// models' (the output dataset is defined so when it does not exist).
pub async fn create_from_dataset(
    state: &AppState,
    caller: &Caller,
    deployment: &str,
    mut source: DatasetSource,
) -> Result<Recorded<Batch>, ServiceError> {
    let tenant = tenant_of_key(caller)?;
    if source.template.is_empty() || source.template.len() > MAX_TEMPLATE_BYTES {
        return Err(invalid_param("template", &format!("give a template of 1 to {MAX_TEMPLATE_BYTES} bytes")));
    }
    minijinja::Environment::new()
        .template_from_str(&source.template)
        .map_err(|e| invalid_param("template", &format!("the template does not compile: {e}")))?;
    for reserved in ["model", "messages", "stream", "n"] {
        if source.request.contains_key(reserved) {
            return Err(invalid_param(&format!("request.{reserved}"), "set by the batch itself"));
        }
    }
    source.deployment = deployment.to_string();
    let id = factory_core::secrets::new_id("batch");
    let create = AccessRequest::new(&caller.principal, Action::BatchCreate, Resource::batch(&tenant, &id));
    authorize_as(state, caller, &create, &tenant).await?;
    let dataset = datasets::find_dataset_for(state, caller, &tenant, &source.dataset).await?;
    let manifest = datasets::load_manifest(state, &dataset, source.version).await?.manifest;
    let raw_pii = !manifest.raw_pii_columns().is_empty();
    datasets::authorize_on(state, caller, &dataset, Action::DatasetReadRows, &[("raw_pii", raw_pii)]).await?;
    let invoke =
        AccessRequest::new(&caller.principal, Action::DeploymentInvoke, Resource::deployment(&tenant, deployment));
    authorize_as(state, caller, &invoke, &tenant).await?;
    let deployed = state.lookups.deployment(&tenant, deployment).await?.ok_or_else(|| {
        ServiceError::new(ErrorKind::ModelNotFound, format!("The model `{deployment}` does not exist"))
    })?;
    // What the answers derive from: the rows, and every model that may answer them.
    let mut inputs: Vec<(Jurisdiction, Classification)> = vec![(dataset.jurisdiction.clone(), dataset.classification)];
    let mut derived_from = vec![format!("dataset:{tenant}/{}@{}", dataset.name, source.version)];
    for variant in &deployed.spec.variants {
        if let Some(model) = &variant.model {
            let (name, reference) = model.split_once('@').unwrap_or((model.as_str(), "latest"));
            let version =
                state.lookups.model_version(&tenant, name, reference).await?.ok_or_else(|| {
                    ServiceError::new(ErrorKind::ModelUnavailable, format!("{model} is not registered"))
                })?;
            inputs.push((version.jurisdiction.clone(), version.classification));
            derived_from.push(format!("model:{tenant}/{}@{}", version.name, version.version));
        }
        if let Some(upstream) = &variant.upstream {
            inputs.push((upstream.jurisdiction.clone(), Classification::Internal));
            derived_from.push(format!("upstream:{}", upstream.url));
        }
        if let Some(endpoint) = &variant.endpoint {
            let pool = state.config.serving.endpoints.get(&endpoint.name).ok_or_else(|| {
                ServiceError::new(ErrorKind::ModelUnavailable, format!("endpoint {:?} is not declared", endpoint.name))
            })?;
            let jurisdiction =
                Jurisdiction::new(&pool.jurisdiction).map_err(|error| ServiceError::invalid(error.to_string()))?;
            inputs.push((jurisdiction, Classification::Internal));
            derived_from.push(format!("endpoint:{}", endpoint.name));
        }
    }
    let (jurisdiction, classification) = factory_registry::strictest_residency(inputs.iter().map(|(j, c)| (j, *c)))
        .map_err(|e| ServiceError::new(ErrorKind::Forbidden, format!("the answers' residency: {e}")))?;
    source.derived_from = derived_from;
    output_dataset(state, caller, &tenant, &source.output, &jurisdiction, classification, &dataset).await?;
    let batch = BatchRequest {
        id,
        tenant,
        endpoint: ENDPOINTS[0].to_string(),
        input_file_id: None,
        input_digest: None,
        source: Some(serde_json::to_value(&source).map_err(ServiceError::fault)?),
        completion_window: COMPLETION_WINDOW.to_string(),
        metadata: serde_json::json!({}),
        expires_at: factory_core::time::now_millis() + WINDOW_MILLIS,
    };
    enqueue(state, caller, batch).await
}

/// Makes sure the output dataset can hold the answers and the caller may write them: an
/// existing one must live in `jurisdiction` and be classified at least `classification`; a
/// missing one is defined so, with the input's PII policy.
async fn output_dataset(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    jurisdiction: &Jurisdiction,
    classification: Classification,
    input: &factory_store::datasets::Dataset,
) -> Result<(), ServiceError> {
    let output = match datasets::find_dataset_for(state, caller, tenant, name).await {
        Ok(existing) => {
            if &existing.jurisdiction != jurisdiction || existing.classification < classification {
                return Err(ServiceError::new(
                    ErrorKind::Forbidden,
                    format!(
                        "output: dataset {name} is {} in {}; the answers must live in {jurisdiction} as {classification} or stricter",
                        existing.classification, existing.jurisdiction
                    ),
                )
                .at_param("output"));
            }
            existing
        }
        Err(error) if error.kind == ErrorKind::NotFound => {
            let new = NewDataset {
                name: name.to_string(),
                classification: classification.to_string(),
                jurisdiction: Some(jurisdiction.to_string()),
                site: None,
                owner: None,
                retention_days: input.retention_days,
                description: format!("answers of a batch over {}", input.name),
                tags: vec!["batch".to_string()],
                pii_policy: serde_json::from_value(input.pii_policy.clone()).ok(),
                schema: None,
            };
            datasets::create(state, caller, tenant, new).await?.value
        }
        Err(error) => return Err(error),
    };
    // The answers are ingested as the batch's creator, hours from now: may it?
    let (allowed, storage) = datasets::residency(state, tenant, &output.jurisdiction, &output.site).await?;
    let facts = [("jurisdiction_allowed", allowed), ("storage_site", storage)];
    datasets::authorize_on(state, caller, &output, Action::DatasetIngest, &facts).await
}

/// Inserts `batch` and enqueues the job that runs it, in one governed change.
async fn enqueue(state: &AppState, caller: &Caller, batch: BatchRequest) -> Result<Recorded<Batch>, ServiceError> {
    let tenant = batch.tenant.clone();
    let request = AccessRequest::new(&caller.principal, Action::BatchCreate, Resource::batch(&tenant, &batch.id));
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(&tenant), e))?;
    let created = change.add_batch(&batch).await?;
    let job = NewJob {
        kind: BATCH_KIND.to_string(),
        payload: serde_json::json!({ "batch": created.request.id }),
        priority: BATCH_JOB_PRIORITY,
        max_attempts: state.config.jobs.max_attempts,
    };
    change.enqueue_job_as(&created.request.id, &tenant, &job).await?;
    let details = serde_json::json!({
        "tenant": tenant, "batch": created.request.id, "endpoint": created.request.endpoint,
        "input_file_id": created.request.input_file_id, "source": created.request.source,
    });
    let committed = change.commit(details.clone(), Event::new("batch.created", details)).await?;
    Ok(Recorded { value: created, committed })
}

/// The caller's tenant's batch `id`.
pub async fn show(state: &AppState, caller: &Caller, id: &str) -> Result<Batch, ServiceError> {
    let tenant = tenant_of_key(caller)?;
    let request = AccessRequest::new(&caller.principal, Action::BatchRead, Resource::batch(&tenant, id));
    authorize_as(state, caller, &request, &tenant).await?;
    state.store.batch(&tenant, id).await?.ok_or_else(ServiceError::no_such_resource)
}

/// The caller's tenant's batches, newest first, a page of at most `limit` after `after`.
pub async fn list(
    state: &AppState,
    caller: &Caller,
    after: Option<&str>,
    limit: i64,
) -> Result<Page<Batch>, ServiceError> {
    let tenant = tenant_of_key(caller)?;
    let request = AccessRequest::new(&caller.principal, Action::BatchRead, Resource::batch(&tenant, "*"));
    authorize_as(state, caller, &request, &tenant).await?;
    let limit = limit.clamp(1, MAX_PAGE);
    Ok(Page::of(state.store.batches(&tenant, after, limit + 1).await?, limit))
}

/// Asks a batch to stop (`batch.cancelling`): it finishes what it is doing, writes what it has
/// answered, and becomes `cancelled`. A finished batch cannot be cancelled (409).
pub async fn cancel(state: &AppState, caller: &Caller, id: &str) -> Result<Recorded<Batch>, ServiceError> {
    let tenant = tenant_of_key(caller)?;
    let request = AccessRequest::new(&caller.principal, Action::BatchCancel, Resource::batch(&tenant, id));
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(&tenant), e))?;
    let step = BatchStep { status: "cancelling".to_string(), ..BatchStep::default() };
    let Some(batch) = change.step_batch(&tenant, id, &["validating", "in_progress"], &step).await? else {
        drop(change);
        let batch = state.store.batch(&tenant, id).await?.ok_or_else(ServiceError::no_such_resource)?;
        return Err(ServiceError::new(
            ErrorKind::Conflict,
            format!("a batch that is {} cannot be cancelled", batch.status),
        ));
    };
    let details = serde_json::json!({ "tenant": tenant, "batch": id });
    let committed = change.commit(details.clone(), Event::new("batch.cancelling", details)).await?;
    Ok(Recorded { value: batch, committed })
}
