//! Datasets as use cases: find a dataset or a version as a caller may see it, read a version's
//! manifest and text, and ingest a version.
//!
//! An ingest runs in three steps so that no lock is held while bytes stream in: authorize (a
//! refusal is audited), stream the upload into content-addressed shards and a manifest, then
//! make the version visible in one governed transaction. A failed or interrupted ingest leaves
//! no version, and its shards are deleted unless another version references them.

use bytes::Bytes;
use factory_core::{
    AccessRequest, Action, Classification, Jurisdiction, Principal, Resource, Role, SiteKind, TenantName,
};
use factory_datasets::{
    ColumnSpec, DedupMode, Format, IngestError, IngestOptions, ManifestLineage, ManifestSource, OnError, PiiPolicy,
    ShardSink, VersionManifest,
};
use factory_objects::ObjectDigest;
use factory_store::datasets::{Dataset, DatasetVersion, NewVersion};
use factory_store::{Committed, Event};

use super::access::{audit_read, authorize_as, hide_foreign, valid_name};
use super::Recorded;
use crate::caller::Caller;
use crate::lineage::{facet, LineageDataset, LineageRun, RunState};
use crate::pending_objects::ObjectLease;
use crate::service_error::ServiceError;
use crate::state::AppState;

/// The residency facts Cedar decides on: whether the tenant allows the jurisdiction and whether
/// the named site stores data inside it.
pub async fn residency(
    state: &AppState,
    tenant: &TenantName,
    jurisdiction: &Jurisdiction,
    site: &str,
) -> Result<(bool, bool), ServiceError> {
    let tenant_record = state.store.tenant(tenant).await?;
    let allowed = tenant_record.is_some_and(|t| t.jurisdictions.contains(jurisdiction));
    let storage = state
        .config
        .sites
        .iter()
        .any(|s| s.name == site && &s.jurisdiction == jurisdiction && s.kinds.contains(&SiteKind::Storage));
    Ok((allowed, storage))
}

/// The dataset and version number `NAME@VERSION` (or `NAME@latest`) names.
pub async fn find_version(
    state: &AppState,
    tenant: &TenantName,
    reference: &str,
) -> Result<(Dataset, i64), ServiceError> {
    let (name, version) = reference
        .split_once('@')
        .ok_or_else(|| ServiceError::invalid(format!("{reference:?} is not DATASET@VERSION")))?;
    let dataset = find_dataset(state, tenant, name).await?;
    let version = match version {
        "latest" => dataset.latest_version,
        number => {
            number.parse().map_err(|_| ServiceError::invalid(format!("{reference:?}: {number:?} is not a version")))?
        }
    };
    Ok((dataset, version))
}

/// The dataset `name` of `tenant` as `caller` may see it: the catalogue is authorized before
/// anything is looked up, so a caller of another tenant gets the same refusal whether the
/// dataset exists or not, and then the dataset itself is (its classification may hide it).
pub async fn find_dataset_for(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
) -> Result<Dataset, ServiceError> {
    let catalogue = AccessRequest::new(&caller.principal, Action::DatasetRead, Resource::dataset_catalogue(tenant));
    authorize_as(state, caller, &catalogue, tenant).await?;
    let dataset = find_dataset(state, tenant, name).await?;
    authorize_on(state, caller, &dataset, Action::DatasetRead, &[]).await?;
    Ok(dataset)
}

pub async fn find_dataset(state: &AppState, tenant: &TenantName, name: &str) -> Result<Dataset, ServiceError> {
    state
        .store
        .dataset(tenant, name)
        .await?
        .ok_or_else(|| ServiceError::not_found(format!("dataset {name} does not exist")))
}

pub async fn authorize_on(
    state: &AppState,
    caller: &Caller,
    dataset: &Dataset,
    action: Action,
    context: &[(&str, bool)],
) -> Result<(), ServiceError> {
    let mut request = AccessRequest::new(&caller.principal, action, dataset_resource(dataset));
    for (key, value) in context {
        request = request.with_context(key, *value);
    }
    state
        .store
        .authorize(state.pdp.as_ref(), &request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(&dataset.tenant), e))?;
    Ok(())
}

pub fn dataset_resource(dataset: &Dataset) -> Resource {
    Resource::dataset(&dataset.tenant, &dataset.name, dataset.classification, &dataset.jurisdiction)
}

/// A version's manifest, and the facts of its row (number, manifest digest, creation time).
pub struct LoadedManifest {
    pub manifest: VersionManifest,
    pub version: i64,
    pub digest: String,
    pub created_at: i64,
}

/// The manifest of `dataset`'s `version`.
pub async fn load_manifest(state: &AppState, dataset: &Dataset, version: i64) -> Result<LoadedManifest, ServiceError> {
    let name = &dataset.name;
    let stored = state
        .store
        .dataset_version(&dataset.tenant, name, version)
        .await?
        .ok_or_else(|| ServiceError::not_found(format!("dataset {name} has no version {version}")))?;
    let digest: ObjectDigest =
        stored.manifest_digest.parse().map_err(|_| ServiceError::internal("stored manifest digest is invalid"))?;
    let bytes =
        state.objects.get(&digest).await.map_err(|e| ServiceError::internal(format!("reading the manifest: {e}")))?;
    let manifest: VersionManifest =
        serde_json::from_slice(&bytes).map_err(|e| ServiceError::internal(format!("manifest: {e}")))?;
    Ok(LoadedManifest { manifest, version, digest: stored.manifest_digest, created_at: stored.created_at })
}

/// The text column of the shards (by digest), in order.
pub async fn shard_texts(state: &AppState, shards: &[String], column: &str) -> Result<Vec<String>, String> {
    let mut texts = Vec::new();
    for digest in shards {
        let digest: ObjectDigest = digest.parse().map_err(|e| format!("shard digest: {e}"))?;
        let bytes = state.objects.get(&digest).await.map_err(|e| e.to_string())?;
        let column = column.to_string();
        let shard = tokio::task::spawn_blocking(move || factory_datasets::read::shard_texts(bytes, &column))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        texts.extend(shard);
    }
    Ok(texts)
}

/// The text column of a dataset version, from its manifest.
pub async fn manifest_texts(
    state: &AppState,
    manifest: &factory_datasets::VersionManifest,
) -> Result<Vec<String>, String> {
    let column = manifest.text_column.as_deref().ok_or("the dataset version has no text_column")?;
    shard_texts(state, &manifest.shard_digests(), column).await
}

/// How to read an upload into a new version.
#[derive(Debug, Clone)]
pub struct Upload {
    pub format: Format,
    /// The column language models train on (text uploads: `text`).
    pub text_column: Option<String>,
    pub on_error: OnError,
    /// Text uploads: one record per paragraph instead of per line.
    pub paragraphs: Option<bool>,
    pub dedup: DedupMode,
    pub max_row_bytes: Option<usize>,
    pub shard_rows: Option<u64>,
    /// What a version the factory derives itself comes from (`dataset:TENANT/NAME@V`,
    /// `model:TENANT/NAME@V`, ...): none for an upload.
    pub derived_from: Vec<String>,
}

/// What an ingest made of its upload.
pub struct Ingested {
    pub version: i64,
    pub manifest_digest: String,
    pub rows: u64,
    pub rows_skipped: u64,
    pub errors: serde_json::Value,
    pub pii: serde_json::Value,
    pub dedup: serde_json::Value,
    pub shards: usize,
    pub source_digest: String,
}

/// Why an ingest made no version: the data itself (with the rows at fault), or the service.
pub enum IngestFailure {
    Data(IngestError),
    Service(ServiceError),
}

impl From<ServiceError> for IngestFailure {
    fn from(error: ServiceError) -> Self {
        IngestFailure::Service(error)
    }
}

impl From<factory_store::StoreError> for IngestFailure {
    fn from(error: factory_store::StoreError) -> Self {
        IngestFailure::Service(error.into())
    }
}

/// Writes shards to the object store, each held by the upload's lease until its version
/// commits, so neither the sweep nor another failed upload can delete it first.
struct ObjectSink {
    objects: std::sync::Arc<factory_objects::ContentStore>,
    lease: ObjectLease,
    runtime: tokio::runtime::Handle,
}

impl ShardSink for ObjectSink {
    fn put_shard(&mut self, parquet: Vec<u8>) -> Result<String, String> {
        self.lease.hold_blocking(ObjectDigest::of(&parquet));
        self.runtime
            .block_on(self.objects.put_bytes(Bytes::from(parquet)))
            .map(|digest| digest.to_string())
            .map_err(|e| e.to_string())
    }
}

/// The lineage of one ingest: START is published when it begins, COMPLETE with its version,
/// and FAIL when it fails or is abandoned (dropped before it finished, as when the client
/// disconnects mid-upload).
struct IngestRun {
    state: AppState,
    request: AccessRequest,
    request_id: String,
    tenant: String,
    run: LineageRun,
    output: LineageDataset,
    finished: bool,
}

impl IngestRun {
    /// Authorizes the ingest (a refusal is audited) and publishes START in the same change.
    async fn start(
        state: &AppState,
        caller: &Caller,
        dataset: &Dataset,
        request: AccessRequest,
    ) -> Result<Self, ServiceError> {
        let namespace = &state.config.lineage.namespace;
        let run = LineageRun::new(namespace, dataset.tenant.as_str(), "ingest", &dataset.name);
        let output = LineageDataset::governed(namespace, dataset.tenant.as_str(), &dataset.name, None);
        let change = state
            .store
            .begin_change(state.pdp.as_ref(), request.clone(), &caller.request_id)
            .await
            .map_err(|e| hide_foreign(caller, Some(&dataset.tenant), e))?;
        let details = serde_json::json!({ "run_id": run.run_id.to_string(), "phase": "start" });
        change.commit(details, run.event(RunState::Start, &[], std::slice::from_ref(&output), None)).await?;
        Ok(IngestRun {
            state: state.clone(),
            request,
            request_id: caller.request_id.clone(),
            tenant: dataset.tenant.to_string(),
            run,
            output,
            finished: false,
        })
    }

    /// The COMPLETE event, published by the change that makes the version visible.
    fn complete_event(&mut self, version: i64, source: LineageDataset, schema: &[ColumnSpec], rows: u64) -> Event {
        self.finished = true;
        let namespace = &self.state.config.lineage.namespace;
        let fields: Vec<serde_json::Value> =
            schema.iter().map(|c| serde_json::json!({ "name": c.name, "type": c.kind.to_string() })).collect();
        let output = LineageDataset::governed(namespace, &self.tenant, &self.output.name, Some(version))
            .with_facet("schema", facet("SchemaDatasetFacet", serde_json::json!({ "fields": fields })))
            .with_facet(
                "outputStatistics",
                facet("OutputStatisticsOutputDatasetFacet", serde_json::json!({ "rowCount": rows })),
            );
        self.run.event(RunState::Complete, &[source], &[output], None)
    }

    async fn fail(mut self, message: &str) {
        self.finished = true;
        record_failure(
            self.state.clone(),
            self.request.clone(),
            self.request_id.clone(),
            self.run.clone(),
            self.output.clone(),
            message.to_string(),
        )
        .await;
    }
}

impl Drop for IngestRun {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (state, request, request_id) = (self.state.clone(), self.request.clone(), self.request_id.clone());
        let (run, output) = (self.run.clone(), self.output.clone());
        tokio::spawn(record_failure(state, request, request_id, run, output, "the upload was interrupted".to_string()));
    }
}

async fn record_failure(
    state: AppState,
    request: AccessRequest,
    request_id: String,
    run: LineageRun,
    output: LineageDataset,
    message: String,
) {
    let recorded = async {
        let change = state.store.begin_change(state.pdp.as_ref(), request, &request_id).await?;
        let details = serde_json::json!({ "run_id": run.run_id.to_string(), "phase": "fail", "error": message });
        change.commit(details, run.event(RunState::Fail, &[], &[output], Some(&message))).await
    }
    .await;
    if let Err(error) = recorded {
        tracing::warn!(%error, run_id = %run.run_id, "could not record a failed ingest");
    }
}

/// Ingests `reader` (the upload's bytes, read on a blocking thread) as the next version of
/// `tenant`'s dataset `name` (`dataset.version.created`, with the lineage run's START, COMPLETE
/// or FAIL).
pub async fn ingest(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    upload: Upload,
    reader: impl std::io::Read + Send + 'static,
) -> Result<Recorded<Ingested>, IngestFailure> {
    let dataset = find_dataset_for(state, caller, tenant, name).await?;
    let (jurisdiction_allowed, storage_site) = residency(state, tenant, &dataset.jurisdiction, &dataset.site).await?;
    let resource = Resource::dataset(tenant, name, dataset.classification, &dataset.jurisdiction);
    let request = AccessRequest::new(&caller.principal, Action::DatasetIngest, resource)
        .with_context("jurisdiction_allowed", jurisdiction_allowed)
        .with_context("storage_site", storage_site);
    let mut run = IngestRun::start(state, caller, &dataset, request.clone()).await?;

    let mut options = IngestOptions::new(upload.format);
    options.on_error = upload.on_error;
    options.dedup = upload.dedup;
    options.paragraphs = upload.paragraphs.unwrap_or(false);
    options.text_column = match (upload.format, &upload.text_column) {
        (Format::Text, None) => Some("text".to_string()),
        (_, column) => column.clone(),
    };
    if let Some(max) = upload.max_row_bytes {
        options.max_row_bytes = max.clamp(1024, 64 * 1024 * 1024);
    }
    if let Some(rows) = upload.shard_rows {
        options.max_shard_rows = rows.clamp(100, 10_000_000);
    }
    options.pii_policy = serde_json::from_value(dataset.pii_policy.clone()).unwrap_or_default();
    options.custom_pii = state.config.datasets.custom_pii.clone();
    options.max_columns = state.config.datasets.max_columns;
    options.max_decompressed_bytes = state.config.datasets.max_decompressed_bytes;
    options.max_buffered_bytes = state.config.datasets.max_buffered_bytes;
    options.pii_hash_key = state.pii_hash_key(tenant);
    options.schema = dataset.declared_schema.clone().and_then(|s| serde_json::from_value(s).ok());
    // Parquet uploads are spooled to disk: on the data volume, like downloads.
    options.temp_dir = Some(state.spool_dir());

    let lease = state.pending_objects.lease(state.store.clone(), state.objects.clone());
    let mut sink = ObjectSink { objects: state.objects.clone(), lease, runtime: tokio::runtime::Handle::current() };
    let outcome = tokio::task::spawn_blocking(move || {
        let result = factory_datasets::ingest(reader, &options, &mut sink);
        (result, sink)
    })
    .await
    .map_err(|e| ServiceError::internal(format!("ingest task failed: {e}")))?;
    let (result, ObjectSink { mut lease, .. }) = outcome;
    let ingested = match result {
        Ok(ingested) => ingested,
        Err(error) => {
            lease.discard().await;
            run.fail(&error.message).await;
            return Err(IngestFailure::Data(error));
        }
    };

    let manifest = VersionManifest {
        tenant: tenant.to_string(),
        dataset: name.to_string(),
        classification: dataset.classification.to_string(),
        jurisdiction: dataset.jurisdiction.to_string(),
        site: dataset.site.clone(),
        schema: ingested.schema.clone(),
        text_column: ingested.text_column.clone(),
        pii_columns: ingested.pii_columns.clone(),
        dropped_columns: ingested.dropped_columns.clone(),
        rows: ingested.rows,
        rows_skipped: ingested.rows_skipped,
        errors: ingested.errors.clone(),
        shards: ingested.shards.clone(),
        source: ManifestSource {
            digest: ingested.source.digest.clone(),
            bytes: ingested.source.bytes,
            format: ingested.source.format,
            compression: ingested.source.compression,
            uploaded_by: caller.principal.id.clone(),
            uploaded_at: factory_core::time::now_rfc3339(),
            request_id: caller.request_id.clone(),
        },
        // Uploads derive from nothing governed; versions the factory derives itself (a batch's
        // answers) name their inputs here.
        lineage: ManifestLineage {
            run_id: run.run.run_id.to_string(),
            job: run.run.job_name.to_string(),
            derived_from: upload.derived_from.clone(),
        },
        pii: ingested.pii.clone(),
        dedup: ingested.dedup.clone(),
        profile: ingested.profile.clone(),
    };
    let shard_digests: Vec<String> = ingested.shards.iter().map(|s| s.digest.clone()).collect();
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap_or_default();
    lease.hold(ObjectDigest::of(&manifest_bytes)).await;
    let manifest_digest = match state.objects.put_bytes(Bytes::from(manifest_bytes)).await {
        Ok(digest) => digest.to_string(),
        Err(error) => {
            lease.discard().await;
            run.fail(&format!("storing the manifest: {error}")).await;
            return Err(ServiceError::internal(format!("storing the manifest: {error}")).into());
        }
    };
    let mut objects = shard_digests.clone();
    objects.push(manifest_digest.clone());
    let new_version = NewVersion {
        manifest_digest: manifest_digest.clone(),
        rows: ingested.rows as i64,
        bytes: ingested.shards.iter().map(|s| s.bytes as i64).sum(),
        source_digest: ingested.source.digest.clone(),
        objects,
    };
    let source = LineageDataset::upload(&ingested.source.digest, &caller.principal.id);
    let committed = async {
        let mut change = state.store.begin_change(state.pdp.as_ref(), request, &caller.request_id).await?;
        let version = change.add_dataset_version(tenant, name, &new_version).await?;
        let payload = serde_json::json!({
            "tenant": tenant, "dataset": name, "version": version, "manifest": manifest_digest,
            "rows": ingested.rows, "source_digest": ingested.source.digest, "run_id": run.run.run_id.to_string(),
        });
        let complete = run.complete_event(version, source, &ingested.schema, ingested.rows);
        let events = vec![Event::new("dataset.version.created", payload.clone()), complete];
        let committed = change.commit_events(payload, events).await?;
        Ok::<_, factory_store::StoreError>((version, committed))
    }
    .await;
    let (version, committed) = match committed {
        Ok(done) => done,
        Err(error) => {
            lease.discard().await;
            run.fail(&error.to_string()).await;
            return Err(ServiceError::from(error).into());
        }
    };
    lease.keep().await;
    let report = Ingested {
        version,
        manifest_digest,
        rows: ingested.rows,
        rows_skipped: ingested.rows_skipped,
        errors: serde_json::to_value(&ingested.errors).unwrap_or_default(),
        pii: ingested.pii,
        dedup: ingested.dedup,
        shards: ingested.shards.len(),
        source_digest: ingested.source.digest,
    };
    Ok(Recorded { value: report, committed })
}

/// Bounds on what a dataset's catalogue entry carries, like a key's description: every list
/// and show returns them, so an unbounded one would weigh on every reader.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG_BYTES: usize = 64;

fn check_catalogue_text(description: &str, tags: &[String], owner: Option<&str>) -> Result<(), ServiceError> {
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(ServiceError::invalid(format!("description: at most {MAX_DESCRIPTION_BYTES} bytes")));
    }
    if tags.len() > MAX_TAGS {
        return Err(ServiceError::invalid(format!("tags: at most {MAX_TAGS} tags")));
    }
    if let Some(index) = tags.iter().position(|t| t.is_empty() || t.len() > MAX_TAG_BYTES) {
        return Err(ServiceError::invalid(format!("tags[{index}]: 1 to {MAX_TAG_BYTES} bytes")));
    }
    if owner.is_some_and(|o| o.is_empty() || o.len() > MAX_TAG_BYTES * 2) {
        return Err(ServiceError::invalid(format!("owner: 1 to {} bytes", MAX_TAG_BYTES * 2)));
    }
    Ok(())
}

/// A dataset to define: its name, residency and catalogue entry, as the caller gives them.
pub struct NewDataset {
    pub name: String,
    /// public, internal, confidential or secret.
    pub classification: String,
    /// Defaults to the tenant's first allowed jurisdiction.
    pub jurisdiction: Option<String>,
    /// Defaults to the first storage site in the jurisdiction.
    pub site: Option<String>,
    pub owner: Option<String>,
    pub retention_days: Option<i64>,
    pub description: String,
    pub tags: Vec<String>,
    pub pii_policy: Option<PiiPolicy>,
    pub schema: Option<Vec<ColumnSpec>>,
}

/// Defines `tenant`'s dataset (`dataset.created`), where its residency allows.
pub async fn create(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    new: NewDataset,
) -> Result<Recorded<Dataset>, ServiceError> {
    valid_name::<factory_core::DatasetName>("name", &new.name)?;
    let classification: Classification =
        new.classification.parse().map_err(|e| ServiceError::invalid(format!("classification: {e}")))?;
    let catalogue = AccessRequest::new(&caller.principal, Action::DatasetRead, Resource::dataset_catalogue(tenant));
    authorize_as(state, caller, &catalogue, tenant).await?;
    let tenant_record = state
        .store
        .tenant(tenant)
        .await?
        .ok_or_else(|| ServiceError::not_found(format!("tenant {tenant} does not exist")))?;
    let jurisdiction = match &new.jurisdiction {
        Some(j) => Jurisdiction::new(j).map_err(|e| ServiceError::invalid(format!("jurisdiction: {e}")))?,
        None => tenant_record
            .jurisdictions
            .first()
            .cloned()
            .ok_or_else(|| ServiceError::invalid("jurisdiction: required"))?,
    };
    let site = match &new.site {
        Some(site) => site.clone(),
        None => state
            .config
            .sites
            .iter()
            .find(|s| s.jurisdiction == jurisdiction && s.kinds.contains(&SiteKind::Storage))
            .map(|s| s.name.clone())
            .unwrap_or_default(),
    };
    check_catalogue_text(&new.description, &new.tags, new.owner.as_deref())?;
    if new.retention_days.is_some_and(|d| d <= 0) {
        return Err(ServiceError::invalid("retention_days: must be positive"));
    }
    if new.schema.as_ref().is_some_and(|schema| schema.is_empty()) {
        return Err(ServiceError::invalid("schema: declare at least one column"));
    }
    let (jurisdiction_allowed, storage_site) = residency(state, tenant, &jurisdiction, &site).await?;
    let resource = Resource::dataset(tenant, &new.name, classification, &jurisdiction);
    let request = AccessRequest::new(&caller.principal, Action::DatasetCreate, resource)
        .with_context("jurisdiction_allowed", jurisdiction_allowed)
        .with_context("storage_site", storage_site);
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(tenant), e))?;
    let dataset = Dataset {
        tenant: tenant.clone(),
        name: new.name.clone(),
        classification,
        jurisdiction,
        site,
        owner: new.owner.clone().unwrap_or_else(|| caller.principal.id.clone()),
        retention_days: new.retention_days,
        description: new.description,
        tags: new.tags,
        pii_policy: serde_json::to_value(new.pii_policy.unwrap_or_default()).unwrap_or_default(),
        declared_schema: new.schema.map(|s| serde_json::to_value(s).unwrap_or_default()),
        latest_version: 0,
        created_at: factory_core::time::now_millis(),
        created_by: caller.principal.id.clone(),
    };
    change.create_dataset(&dataset).await?;
    let payload = serde_json::json!({
        "tenant": tenant, "dataset": dataset.name, "classification": dataset.classification,
        "jurisdiction": dataset.jurisdiction, "site": dataset.site,
    });
    let committed = change.commit(payload.clone(), Event::new("dataset.created", payload)).await?;
    Ok(Recorded { value: dataset, committed })
}

/// `tenant`'s datasets that the caller may read.
pub async fn list(state: &AppState, caller: &Caller, tenant: &TenantName) -> Result<Vec<Dataset>, ServiceError> {
    let catalogue = AccessRequest::new(&caller.principal, Action::DatasetRead, Resource::dataset_catalogue(tenant));
    authorize_as(state, caller, &catalogue, tenant).await?;
    let mut visible = Vec::new();
    for dataset in state.store.datasets(tenant).await? {
        // The catalogue shows what the caller may read; refusals here are not audited one by
        // one, since listing reveals nothing the caller could not ask for by name.
        let request = AccessRequest::new(&caller.principal, Action::DatasetRead, dataset_resource(&dataset));
        if factory_core::PolicyDecisionPoint::decide(state.pdp.as_ref(), &request).is_allowed() {
            visible.push(dataset);
        }
    }
    Ok(visible)
}

/// `tenant`'s dataset `name` with its versions, as the caller may see it.
pub async fn show(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
) -> Result<(Dataset, Vec<DatasetVersion>), ServiceError> {
    let dataset = find_dataset_for(state, caller, tenant, name).await?;
    let versions = state.store.dataset_versions(tenant, name).await?;
    Ok((dataset, versions))
}

/// Whether `principal` sees PII a version kept, unmasked.
fn sees_raw_pii(principal: &Principal) -> bool {
    matches!(principal.role, Role::Steward | Role::Admin)
}

/// Masks the PII a profile quotes from columns whose PII was kept, for roles that see such
/// columns masked in rows too.
fn guard_profile_pii(caller: &Caller, manifest: &mut VersionManifest, raw_columns: &[String]) {
    if !raw_columns.is_empty() && !sees_raw_pii(&caller.principal) {
        factory_datasets::mask_profile_pii(&mut manifest.profile, raw_columns, manifest.text_column.as_deref());
    }
}

/// A version's manifest as the caller may read it: it needs only `dataset.read`, and its
/// profile quotes values only as far as the caller could read them as rows.
pub async fn manifest(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    version: i64,
) -> Result<LoadedManifest, ServiceError> {
    let dataset = find_dataset_for(state, caller, tenant, name).await?;
    let mut loaded = load_manifest(state, &dataset, version).await?;
    let raw_columns = loaded.manifest.raw_pii_columns();
    let rows = AccessRequest::new(&caller.principal, Action::DatasetReadRows, dataset_resource(&dataset))
        .with_context("raw_pii", !raw_columns.is_empty());
    if factory_core::PolicyDecisionPoint::decide(state.pdp.as_ref(), &rows).is_allowed() {
        guard_profile_pii(caller, &mut loaded.manifest, &raw_columns);
    } else {
        factory_datasets::strip_profile_values(&mut loaded.manifest.profile);
    }
    Ok(loaded)
}

/// A version's manifest for its profile: a profile quotes values, so it is authorized like the
/// rows, and masked like them.
pub async fn profile(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    version: i64,
) -> Result<VersionManifest, ServiceError> {
    let dataset = find_dataset_for(state, caller, tenant, name).await?;
    let mut manifest = load_manifest(state, &dataset, version).await?.manifest;
    let raw_columns = manifest.raw_pii_columns();
    authorize_on(state, caller, &dataset, Action::DatasetReadRows, &[("raw_pii", !raw_columns.is_empty())]).await?;
    guard_profile_pii(caller, &mut manifest, &raw_columns);
    Ok(manifest)
}

/// A page of a version's rows, masked where the caller may not see the PII they kept.
pub struct RowsRead {
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
    pub masked_columns: Vec<String>,
    /// The audit record of the read, when the version kept PII (audited masked or not).
    pub committed: Option<Committed>,
}

/// Up to `limit` (1 to 1000) rows of a version from `offset`.
pub async fn rows(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    version: i64,
    offset: u64,
    limit: u64,
) -> Result<RowsRead, ServiceError> {
    if !(1..=1000).contains(&limit) {
        return Err(ServiceError::invalid("limit: must be between 1 and 1000"));
    }
    let dataset = find_dataset_for(state, caller, tenant, name).await?;
    let manifest = load_manifest(state, &dataset, version).await?.manifest;
    let raw_columns = manifest.raw_pii_columns();
    authorize_on(state, caller, &dataset, Action::DatasetReadRows, &[("raw_pii", !raw_columns.is_empty())]).await?;
    let mut skip = offset;
    let mut wanted = limit;
    let mut rows = Vec::new();
    for shard in manifest.shards {
        if wanted == 0 {
            break;
        }
        if skip >= shard.rows {
            skip -= shard.rows;
            continue;
        }
        let digest: ObjectDigest =
            shard.digest.parse().map_err(|_| ServiceError::internal("manifest names an invalid shard"))?;
        let bytes =
            state.objects.get(&digest).await.map_err(|e| ServiceError::internal(format!("reading a shard: {e}")))?;
        let (from, take) = (skip as usize, wanted as usize);
        let mut page = tokio::task::spawn_blocking(move || factory_datasets::read::shard_rows(bytes, from, take))
            .await
            .map_err(|e| ServiceError::internal(e.to_string()))?
            .map_err(ServiceError::internal)?;
        skip = 0;
        wanted -= page.len() as u64;
        rows.append(&mut page);
    }
    let masked = !raw_columns.is_empty() && !sees_raw_pii(&caller.principal);
    if masked {
        factory_datasets::mask_pii_columns(&mut rows, &raw_columns);
    }
    let masked_columns = if masked { raw_columns.clone() } else { Vec::new() };
    if raw_columns.is_empty() {
        return Ok(RowsRead { rows, masked_columns, committed: None });
    }
    // Rows of a version that kept PII are audited per request, masked or not.
    let read = serde_json::json!({
        "tenant": tenant, "dataset": name, "version": version, "offset": offset, "rows": rows.len(),
        "masked_columns": masked_columns,
    });
    let request = AccessRequest::new(&caller.principal, Action::DatasetReadRows, dataset_resource(&dataset))
        .with_context("raw_pii", true);
    let committed = audit_read(state, caller, request, tenant, "dataset.rows.read", read).await?;
    Ok(RowsRead { rows, masked_columns, committed: Some(committed) })
}

/// A version as one Parquet file: its only shard, streamed and verified as it goes, or its
/// shards merged into a file spooled to disk (bounding memory).
pub enum Parquet {
    Shard(factory_objects::VerifiedStream),
    Spooled(tokio::fs::File),
}

/// A version for download, audited before the first byte leaves (`dataset.downloaded`).
pub async fn download(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    version: i64,
) -> Result<Recorded<Parquet>, ServiceError> {
    let dataset = find_dataset_for(state, caller, tenant, name).await?;
    let manifest = load_manifest(state, &dataset, version).await?.manifest;
    let raw = !manifest.raw_pii_columns().is_empty();
    authorize_on(state, caller, &dataset, Action::DatasetDownload, &[("raw_pii", raw)]).await?;
    let digests = manifest
        .shards
        .iter()
        .map(|s| s.digest.parse::<ObjectDigest>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ServiceError::internal("manifest names an invalid shard"))?;
    let request = AccessRequest::new(&caller.principal, Action::DatasetDownload, dataset_resource(&dataset))
        .with_context("raw_pii", raw);
    let read = serde_json::json!({
        "tenant": tenant, "dataset": name, "version": version, "raw_pii": raw, "shards": digests.len(),
    });
    let committed = audit_read(state, caller, request, tenant, "dataset.downloaded", read).await?;
    if let [only] = digests.as_slice() {
        let stream = state
            .objects
            .open_stream(only)
            .await
            .map_err(|e| ServiceError::internal(format!("reading a shard: {e}")))?;
        return Ok(Recorded { value: Parquet::Shard(stream), committed });
    }
    let objects = state.objects.clone();
    let runtime = tokio::runtime::Handle::current();
    let spool_dir = state.spool_dir();
    let spooled = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&spool_dir).map_err(|e| e.to_string())?;
        let mut file = tempfile::tempfile_in(&spool_dir).map_err(|e| e.to_string())?;
        let shards = digests.iter().map(|digest| runtime.block_on(objects.get(digest)).map_err(|e| e.to_string()));
        factory_datasets::read::merge_shards(shards, &mut file)?;
        std::io::Seek::rewind(&mut file).map_err(|e| e.to_string())?;
        Ok::<_, String>(file)
    })
    .await
    .map_err(|e| ServiceError::internal(e.to_string()))?
    .map_err(ServiceError::internal)?;
    Ok(Recorded { value: Parquet::Spooled(tokio::fs::File::from_std(spooled)), committed })
}
