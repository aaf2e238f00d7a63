//! Model versions as use cases: register one (from a run, or a draft an import or a training
//! job built), resolve `NAME@VERSION` or `NAME@ALIAS` as a caller may, move an alias, and
//! verify a version the way serving will before loading it. Registration is the one path by
//! which a model becomes a version: files go to the object store under a lease, the manifest is
//! built (with the generated model card) and signed, and one governed change inserts the version
//! row, the references to every object, the audit record and `model.version.created`.

use bytes::Bytes;
use factory_core::{AccessRequest, Action, Classification, Principal, Resource, SiteKind, TenantName};
use factory_model::LlamaConfig;
use factory_objects::ObjectDigest;
use factory_registry::{
    model_card, sign, strictest_residency, tar_end, tar_header, tar_padding, DatasetInput, Lineage, ModelFile,
    ModelManifest, Origin, Residency, MANIFEST_FORMAT,
};
use factory_store::models::{ModelVersion, NewModelVersion};
use factory_store::{Committed, Event};
use factory_tokenizer::Tokenizer;

use super::access::{audit_read, authorize_as, hide_foreign, hide_foreign_refusal, site_facts, valid_name};
use super::run_spec::{BaseModel, RegisterSpec, RunSpec, FINETUNE_KIND, PRETRAIN_KIND};
use super::Recorded;
use crate::caller::Caller;
use crate::registry::{self, Draft, DraftFile, FileSource, Signing, GGUF_FILE};
use crate::service_error::{ErrorKind, ServiceError};
use crate::state::AppState;

/// The version `reference` (a number or an alias) of `name`, unauthorized: for the factory's
/// own bookkeeping (monitors, pipelines), which authorizes what it then does.
pub async fn version_of(
    state: &AppState,
    tenant: &TenantName,
    name: &str,
    reference: &str,
) -> Result<Option<ModelVersion>, ServiceError> {
    registry::version_of(&state.store, tenant, name, reference).await
}

/// A version's signed manifest, checked against the trusted keys, and who signed it.
pub async fn open_manifest(state: &AppState, version: &ModelVersion) -> Result<(ModelManifest, String), ServiceError> {
    registry::open_manifest(&state.objects, &state.model_keys, version).await
}

/// One file of a verified manifest, checked against its digest and size.
pub async fn fetch_file(state: &AppState, manifest: &ModelManifest, path: &str) -> Result<Bytes, ServiceError> {
    registry::fetch_file(&state.objects, manifest, path).await
}

pub fn valid_model_name(name: &str) -> Result<(), ServiceError> {
    valid_name::<factory_core::ModelName>("name", name)
}

pub fn valid_alias(alias: &str) -> Result<(), ServiceError> {
    if alias.parse::<i64>().is_ok() {
        return Err(ServiceError::invalid("alias: a number names a version; aliases need a letter"));
    }
    valid_name::<factory_core::AliasName>("alias", alias)
}

/// Authorizes `action` on the model `name` (an existing version's residency, or `fallback`
/// for a name with no version yet).
pub async fn authorize_model(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    version: Option<&ModelVersion>,
    action: Action,
) -> Result<(), ServiceError> {
    let resource = match version {
        Some(v) => Resource::model(tenant, name, v.classification, Some(&v.jurisdiction)),
        None => Resource::model(tenant, name, Classification::Public, None),
    };
    authorize_as(state, caller, &AccessRequest::new(&caller.principal, action, resource), tenant).await
}

/// The version `reference` (a number or an alias) of `name`, after authorizing `action`.
pub async fn resolve(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    reference: &str,
    action: Action,
) -> Result<ModelVersion, ServiceError> {
    let Some(version) = version_of(state, tenant, name, reference).await? else {
        // Refuse a foreign tenant's probe the same way whether or not the model exists.
        authorize_model(state, caller, tenant, name, None, Action::ModelRead).await?;
        return Err(ServiceError::not_found(format!("model {name} has no version {reference}")));
    };
    authorize_model(state, caller, tenant, name, Some(&version), action).await?;
    Ok(version)
}

/// Splits `name@reference`.
pub fn split_reference(text: &str) -> Result<(&str, &str), ServiceError> {
    text.split_once('@')
        .filter(|(name, reference)| !name.is_empty() && !reference.is_empty())
        .ok_or_else(|| ServiceError::invalid(format!("{text:?} is not NAME@VERSION or NAME@ALIAS")))
}

pub async fn aliases_of(state: &AppState, version: &ModelVersion) -> Result<Vec<String>, ServiceError> {
    let aliases = state.store.model_aliases(&version.tenant, &version.name).await?;
    Ok(aliases.into_iter().filter(|a| a.version == version.version).map(|a| a.alias).collect())
}

/// What checking a version found: who signed it and its files, or why it fails.
pub struct Verification {
    pub model: String,
    pub verified: bool,
    pub signer: Option<String>,
    pub files: Vec<String>,
    pub error: Option<String>,
}

/// Checks a version the way a deployment will before loading it: the signature against the
/// trusted keys and every file against its digest.
pub async fn verify_version(state: &AppState, version: &ModelVersion) -> Verification {
    let reference = format!("{}@{}", version.name, version.version);
    let outcome = async {
        let (manifest, signer) = open_manifest(state, version).await?;
        for file in &manifest.files {
            fetch_file(state, &manifest, &file.path).await?;
        }
        Ok::<_, ServiceError>((signer, manifest.files.iter().map(|f| f.path.clone()).collect()))
    }
    .await;
    match outcome {
        Ok((signer, files)) => {
            Verification { model: reference, verified: true, signer: Some(signer), files, error: None }
        }
        Err(error) => Verification {
            model: reference,
            verified: false,
            signer: None,
            files: Vec::new(),
            error: Some(error.message),
        },
    }
}

/// An alias as it was moved.
pub struct AliasMove {
    pub model: String,
    pub alias: String,
    pub version: i64,
    pub previous: Option<i64>,
}

/// Points `name@alias` at `version` of `tenant`'s model, as the caller may
/// (`model.alias`).
pub async fn move_alias(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    alias: &str,
    version: i64,
) -> Result<Recorded<AliasMove>, ServiceError> {
    valid_alias(alias)?;
    let target = resolve(state, caller, tenant, name, &version.to_string(), Action::ModelAlias).await?;
    let resource = Resource::model(tenant, name, target.classification, Some(&target.jurisdiction));
    let request = AccessRequest::new(&caller.principal, Action::ModelAlias, resource);
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(tenant), e))?;
    let previous = change.set_model_alias(tenant, name, alias, version).await?;
    let details = serde_json::json!({
        "tenant": tenant, "model": name, "alias": alias, "version": version, "previous": previous,
    });
    let committed = change.commit(details.clone(), Event::new("model.alias.set", details)).await?;
    let moved = AliasMove { model: name.to_string(), alias: alias.to_string(), version, previous };
    Ok(Recorded { value: moved, committed })
}

/// Registers a succeeded pretrain or finetune run of `tenant` as the next version of `name`.
pub async fn register_run(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    run: &str,
    intended_use: Option<String>,
) -> Result<Recorded<ModelVersion>, ServiceError> {
    valid_model_name(name)?;
    let job = state
        .store
        .job(run)
        .await?
        .filter(|job| (job.kind == PRETRAIN_KIND || job.kind == FINETUNE_KIND) && &job.tenant == tenant)
        .ok_or_else(|| ServiceError::not_found(format!("no pretrain or finetune run {run} in tenant {tenant}")))?;
    if job.state != factory_store::jobs::JobState::Succeeded {
        return Err(ServiceError::new(
            ErrorKind::Conflict,
            format!("run {} is {}, not succeeded", job.id, job.state.as_str()),
        ));
    }
    if let Some(existing) = state.store.model_version_of_run(&job.id).await? {
        return Err(ServiceError::new(
            ErrorKind::Conflict,
            format!("run {} is already registered as {}@{}", job.id, existing.name, existing.version),
        ));
    }
    let spec: RunSpec = serde_json::from_value(job.payload.clone())
        .map_err(|e| ServiceError::invalid(format!("run {} predates registration: {e}", job.id)))?;
    let result = job.result.clone().unwrap_or_default();
    let registration = RegisterSpec { name: name.to_string(), intended_use };
    let draft = draft_from_run(state, &job.tenant, &spec, &job.id, &result, &registration).await?;
    let (version, committed) = register(state, &caller.principal, &caller.request_id, Action::ModelRegister, draft)
        .await
        .map_err(|e| hide_foreign_refusal(caller, Some(tenant), e))?;
    Ok(Recorded { value: version, committed })
}

/// Registers `draft` as `principal` (`model.register`, or `model.import` for imports).
pub async fn register(
    state: &AppState,
    principal: &Principal,
    request_id: &str,
    action: Action,
    draft: Draft,
) -> Result<(ModelVersion, Committed), ServiceError> {
    let residency = &draft.residency;
    let (allowed, storage) = site_facts(state, &draft.tenant, &residency.jurisdiction, SiteKind::Storage).await?;
    let resource = Resource::model(&draft.tenant, &draft.name, residency.classification, Some(&residency.jurisdiction));
    let request = AccessRequest::new(principal, action, resource)
        .with_context("jurisdiction_allowed", allowed)
        .with_context("storage_site", storage);
    // Refuse before storing anything; the change below asks again inside its transaction.
    state.store.authorize(state.pdp.as_ref(), &request, request_id).await?;

    let mut lease = state.pending_objects.lease(state.store.clone(), state.objects.clone());
    let mut files = Vec::with_capacity(draft.files.len() + 1);
    for file in draft.files {
        let (digest, size) = match file.source {
            FileSource::Stored(digest) => {
                let parsed: ObjectDigest = digest.parse().map_err(ServiceError::fault)?;
                (digest, state.objects.size(&parsed).await.map_err(ServiceError::fault)?)
            }
            FileSource::Bytes(bytes) => {
                let digest = ObjectDigest::of(&bytes);
                lease.hold(digest).await;
                let size = bytes.len() as u64;
                state.objects.put_bytes(bytes).await.map_err(ServiceError::fault)?;
                (digest.to_string(), size)
            }
        };
        files.push(ModelFile { path: file.path, digest, size });
    }

    let mut change = state.store.begin_change(state.pdp.as_ref(), request, request_id).await?;
    let version = match draft.version {
        Some(version) => version,
        None => change.next_model_version(&draft.tenant, &draft.name).await?,
    };
    let (note, manifest, signer) = match draft.signing {
        Signing::Signed { note, manifest, signer } => (note, *manifest, signer),
        Signing::Sign { intended_use } => {
            files.sort_by(|a, b| a.path.cmp(&b.path));
            let mut manifest = ModelManifest {
                format: MANIFEST_FORMAT.to_string(),
                tenant: draft.tenant.to_string(),
                name: draft.name.clone(),
                version,
                created_at: factory_core::time::now_millis(),
                architecture: draft.architecture.clone(),
                parameters: draft.parameters,
                residency: draft.residency.clone(),
                lineage: draft.lineage,
                evals: draft.evals,
                files,
            };
            let card = Bytes::from(model_card(&manifest, intended_use.as_deref()));
            let card_digest = ObjectDigest::of(&card);
            lease.hold(card_digest).await;
            let card_size = card.len() as u64;
            state.objects.put_bytes(card).await.map_err(ServiceError::fault)?;
            manifest.files.push(ModelFile {
                path: "README.md".to_string(),
                digest: card_digest.to_string(),
                size: card_size,
            });
            let keys = &state.model_keys;
            let note = sign(&manifest, &keys.signer).map_err(ServiceError::fault)?;
            (note, manifest, keys.signer.verifier_key())
        }
    };
    let note = Bytes::from(note);
    let note_digest = ObjectDigest::of(&note);
    lease.hold(note_digest).await;
    state.objects.put_bytes(note).await.map_err(ServiceError::fault)?;

    let mut objects: Vec<String> = manifest.files.iter().map(|f| f.digest.clone()).collect();
    objects.push(note_digest.to_string());
    let new = NewModelVersion {
        version: Some(version),
        origin: serde_json::to_value(manifest.lineage.origin)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        run_id: manifest.lineage.run.clone(),
        jurisdiction: manifest.residency.jurisdiction.clone(),
        classification: manifest.residency.classification,
        parameters: manifest.parameters as i64,
        manifest_digest: note_digest.to_string(),
        signer,
        evals: manifest.evals.clone(),
        objects,
    };
    let stored = change.add_model_version(&draft.tenant, &draft.name, version, &new).await?;
    let details = serde_json::json!({
        "tenant": draft.tenant, "model": draft.name, "version": version, "origin": stored.origin,
        "run": stored.run_id, "manifest": stored.manifest_digest, "signer": stored.signer,
        "jurisdiction": stored.jurisdiction, "classification": stored.classification,
        "datasets": manifest.lineage.datasets, "base_model": manifest.lineage.base_model,
    });
    let committed = change.commit(details.clone(), Event::new("model.version.created", details)).await?;
    lease.keep().await;
    Ok((stored, committed))
}

/// The version a finished run becomes: its weights, config and tokenizer as stored by the
/// run, a generation config and tokenizer config made here, lineage from the run's spec and
/// residency derived from its inputs (the strictest wins).
pub async fn draft_from_run(
    state: &AppState,
    tenant: &factory_core::TenantName,
    spec: &RunSpec,
    run_id: &str,
    result: &serde_json::Value,
    register: &RegisterSpec,
) -> Result<Draft, ServiceError> {
    let artifact = |name: &str| {
        result["artifacts"][name]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ServiceError::invalid(format!("run {run_id} produced no {name}")))
    };
    let adapter_files = [("adapter", "adapter_model.safetensors"), ("adapter_config", "adapter_config.json")]
        .into_iter()
        .filter_map(|(artifact, path)| {
            let digest = result["artifacts"][artifact].as_str()?.to_string();
            Some(DraftFile { path: path.into(), source: FileSource::Stored(digest) })
        });
    // A fine-tune of a GGUF base is one GGUF file (its adapters merged), as the base was.
    let (architecture, parameters, model_config, files) = if let Some(gguf) = result["artifacts"]["gguf"].as_str() {
        let summary = &result["artifacts"]["gguf_summary"];
        let architecture = summary["architecture"].as_str().unwrap_or("llama").to_string();
        let parameters = summary["parameters"].as_u64().unwrap_or_default();
        let files = vec![DraftFile { path: GGUF_FILE.into(), source: FileSource::Stored(gguf.to_string()) }];
        (architecture, parameters, serde_json::json!({ "gguf": summary }), files)
    } else {
        let (weights, config_digest, tokenizer_digest) =
            (artifact("weights")?, artifact("config")?, artifact("tokenizer")?);
        let stored = |digest: String| async move {
            let parsed: factory_objects::ObjectDigest =
                digest.parse().map_err(|_| ServiceError::invalid(format!("run {run_id}: bad artifact digest")))?;
            state.objects.get(&parsed).await.map_err(|e| ServiceError::invalid(format!("run {run_id}: {e}")))
        };
        let config = LlamaConfig::from_json(&String::from_utf8_lossy(&stored(config_digest.clone()).await?))
            .map_err(|e| ServiceError::invalid(format!("run {run_id}: {e}")))?;
        let tokenizer = Tokenizer::from_json(&String::from_utf8_lossy(&stored(tokenizer_digest.clone()).await?))
            .map_err(|e| ServiceError::invalid(format!("run {run_id}: {e}")))?;
        let end = tokenizer.token_id(factory_tokenizer::END_OF_TEXT);
        let generation = serde_json::json!({
            "bos_token_id": end, "eos_token_id": end, "do_sample": true, "temperature": 0.8, "top_p": 0.95,
            "max_new_tokens": 256,
        });
        let tokenizer_config = tokenizer.hf_tokenizer_config(config.max_position_embeddings);
        let json = |value: serde_json::Value| Bytes::from(serde_json::to_vec_pretty(&value).unwrap_or_default());
        let files = vec![
            DraftFile { path: "model.safetensors".into(), source: FileSource::Stored(weights) },
            DraftFile { path: "config.json".into(), source: FileSource::Stored(config_digest) },
            DraftFile { path: "tokenizer.json".into(), source: FileSource::Stored(tokenizer_digest) },
            DraftFile { path: "generation_config.json".into(), source: FileSource::Bytes(json(generation)) },
            DraftFile { path: "tokenizer_config.json".into(), source: FileSource::Bytes(json(tokenizer_config)) },
        ];
        let model_config = serde_json::from_str::<serde_json::Value>(&config.to_json()).unwrap_or_default();
        ("llama".to_string(), config.parameter_count() as u64, model_config, files)
    };

    let dataset = DatasetInput {
        name: spec.dataset.clone(),
        version: spec.version,
        jurisdiction: spec.jurisdiction.clone(),
        classification: spec.classification,
    };
    let mut inputs = vec![(&dataset.jurisdiction, dataset.classification)];
    if let Some(base) = &spec.base {
        inputs.push((&base.jurisdiction, base.classification));
    }
    let (jurisdiction, classification) =
        strictest_residency(inputs).map_err(|e| ServiceError::invalid(e.to_string()))?;
    let mut evals = serde_json::Map::new();
    if let Some(loss) = result["eval"]["validation_loss"].as_f64() {
        evals.insert("validation_loss".into(), loss.into());
        evals.insert("validation_perplexity".into(), loss.exp().into());
    }
    for score in result["eval_sets"].as_array().into_iter().flatten() {
        let name = score["name"].as_str().unwrap_or_default();
        evals.insert(format!("{name}.exact_match"), score["exact_match"].clone());
        evals.insert(format!("{name}.contains"), score["contains"].clone());
    }
    Ok(Draft {
        tenant: tenant.clone(),
        name: register.name.clone(),
        version: None,
        architecture,
        parameters,
        residency: Residency { jurisdiction, classification, derived_from: "training data".to_string() },
        lineage: Lineage {
            origin: if spec.base.is_some() { Origin::FineTuned } else { Origin::Trained },
            run: Some(run_id.to_string()),
            datasets: vec![dataset],
            base_model: spec.base.as_ref().map(BaseModel::reference),
            code_version: registry::code_version(),
            config: serde_json::json!({ "model": model_config, "train": spec.train, "tokenizer": spec.tokenizer }),
            seed: Some(spec.seed),
        },
        evals: serde_json::Value::Object(evals),
        files: files.into_iter().chain(adapter_files).collect(),
        signing: Signing::Sign { intended_use: register.intended_use.clone() },
    })
}

/// A model of a tenant as the list shows it.
pub struct ModelSummary {
    pub name: String,
    pub versions: usize,
    pub latest: i64,
    /// Alias -> version.
    pub aliases: Vec<(String, i64)>,
}

/// `tenant`'s models, with their version counts and aliases.
pub async fn list(state: &AppState, caller: &Caller, tenant: &TenantName) -> Result<Vec<ModelSummary>, ServiceError> {
    authorize_model(state, caller, tenant, "*", None, Action::ModelRead).await?;
    let versions = state.store.model_versions(tenant, None).await?;
    let mut models: Vec<ModelSummary> = Vec::new();
    for version in versions {
        match models.last_mut() {
            Some(summary) if summary.name == version.name => {
                summary.versions += 1;
                summary.latest = summary.latest.max(version.version);
            }
            _ => models.push(ModelSummary {
                name: version.name.clone(),
                versions: 1,
                latest: version.version,
                aliases: Vec::new(),
            }),
        }
    }
    for summary in &mut models {
        for alias in state.store.model_aliases(tenant, &summary.name).await? {
            summary.aliases.push((alias.alias, alias.version));
        }
    }
    Ok(models)
}

/// Every version of `tenant`'s model `name`, each with the aliases pointing at it.
pub async fn show(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
) -> Result<Vec<(ModelVersion, Vec<String>)>, ServiceError> {
    authorize_model(state, caller, tenant, name, None, Action::ModelRead).await?;
    let versions = state.store.model_versions(tenant, Some(name)).await?;
    if versions.is_empty() {
        return Err(ServiceError::not_found(format!("model {name} does not exist")));
    }
    let aliases = state.store.model_aliases(tenant, name).await?;
    Ok(versions
        .into_iter()
        .map(|v| {
            let names = aliases.iter().filter(|a| a.version == v.version).map(|a| a.alias.clone()).collect();
            (v, names)
        })
        .collect())
}

/// A version with its verified manifest and its aliases.
pub async fn detail(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    reference: &str,
) -> Result<(ModelVersion, ModelManifest, Vec<String>), ServiceError> {
    let version = resolve(state, caller, tenant, name, reference, Action::ModelRead).await?;
    let (manifest, _) = open_manifest(state, &version).await?;
    let aliases = aliases_of(state, &version).await?;
    Ok((version, manifest, aliases))
}

/// A version's signed manifest as stored, unverified: whoever asks for the signed note
/// verifies it themselves.
pub async fn signed_manifest(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    reference: &str,
) -> Result<Bytes, ServiceError> {
    let version = resolve(state, caller, tenant, name, reference, Action::ModelRead).await?;
    let digest = version.manifest_digest.parse().map_err(|_| ServiceError::invalid("stored manifest digest"))?;
    state
        .objects
        .get(&digest)
        .await
        .map_err(|e| ServiceError::new(ErrorKind::VerificationFailed, format!("manifest: {e}")))
}

/// One file of a version (`model.export`, audited as `model.file.read`). Unverified on purpose
/// (the object store checks each object against its digest on read): `factory model verify`
/// fetches the files to check them against the signed manifest.
pub async fn file(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    reference: &str,
    path: &str,
) -> Result<Recorded<Bytes>, ServiceError> {
    let version = resolve(state, caller, tenant, name, reference, Action::ModelExport).await?;
    let digest = version.manifest_digest.parse().map_err(|_| ServiceError::invalid("stored manifest digest"))?;
    let note = state.objects.get(&digest).await.map_err(|e| ServiceError::invalid(format!("manifest: {e}")))?;
    let text = String::from_utf8_lossy(&note);
    let body = text.split("\n\n").next().unwrap_or_default();
    let manifest: ModelManifest =
        serde_json::from_str(body).map_err(|e| ServiceError::invalid(format!("stored manifest: {e}")))?;
    let entry =
        manifest.file(path).ok_or_else(|| ServiceError::not_found(format!("{name}@{reference} has no file {path}")))?;
    let digest = entry.digest.parse().map_err(|_| ServiceError::invalid("manifest digest"))?;
    let bytes = state
        .objects
        .get(&digest)
        .await
        .map_err(|e| ServiceError::new(ErrorKind::VerificationFailed, format!("{path}: {e}")))?;
    let resource = Resource::model(tenant, name, version.classification, Some(&version.jurisdiction));
    let request = AccessRequest::new(&caller.principal, Action::ModelExport, resource);
    let details = serde_json::json!({
        "tenant": tenant, "model": name, "version": version.version, "file": path, "digest": entry.digest,
    });
    let committed = audit_read(state, caller, request, tenant, "model.file.read", details).await?;
    Ok(Recorded { value: bytes, committed })
}

/// Checks `name@reference` as a deployment will before loading it.
pub async fn verify(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    reference: &str,
) -> Result<Verification, ServiceError> {
    let version = resolve(state, caller, tenant, name, reference, Action::ModelRead).await?;
    Ok(verify_version(state, &version).await)
}

/// A version as an air-gap bundle: its signed note, then every file, as a tar stream.
pub struct Export {
    pub version: i64,
    pub tar: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>,
}

/// Exports `name@reference` (`model.export`, audited as `model.exported` before the first
/// byte leaves), to `destination` when the exporter names one (then only to where the model
/// may live). Nothing leaves unless it verifies: a tampered store must not export a tampered
/// model under our signature.
pub async fn export(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    reference: &str,
    destination: Option<&str>,
) -> Result<Recorded<Export>, ServiceError> {
    use futures::StreamExt;
    let version = resolve(state, caller, tenant, name, reference, Action::ModelExport).await?;
    let (manifest, _) = open_manifest(state, &version).await?;
    let digest = version.manifest_digest.parse().map_err(|_| ServiceError::invalid("stored manifest digest"))?;
    let note = state.objects.get(&digest).await.map_err(|e| ServiceError::invalid(format!("manifest: {e}")))?;
    for file in &manifest.files {
        fetch_file(state, &manifest, &file.path).await?;
    }
    let destination = destination
        .map(|d| factory_core::Jurisdiction::new(d).map_err(|e| ServiceError::invalid(format!("destination: {e}"))))
        .transpose()?;
    let request = super::access::export_request(state, caller, tenant, &version, destination.as_ref()).await?;
    let details = serde_json::json!({
        "tenant": tenant, "model": name, "version": version.version, "manifest": version.manifest_digest,
        "destination": destination,
    });
    let committed = audit_read(state, caller, request, tenant, "model.exported", details).await?;

    let mut head = tar_header(factory_registry::BUNDLE_MANIFEST, note.len() as u64).map_err(ServiceError::fault)?;
    head.extend_from_slice(&note);
    head.extend(tar_padding(note.len() as u64));
    let objects = state.objects.clone();
    let files = futures::stream::iter(manifest.files).then(move |file| {
        let objects = objects.clone();
        async move {
            let digest = file.digest.parse().map_err(|_| std::io::Error::other("bad digest"))?;
            let bytes = objects.get(&digest).await.map_err(std::io::Error::other)?;
            factory_registry::verify_file(&file, &bytes).map_err(std::io::Error::other)?;
            let mut chunk = tar_header(&file.path, file.size).map_err(std::io::Error::other)?;
            chunk.extend_from_slice(&bytes);
            chunk.extend(tar_padding(file.size));
            Ok::<Bytes, std::io::Error>(Bytes::from(chunk))
        }
    });
    let tar = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(Bytes::from(head)) })
        .chain(files)
        .chain(futures::stream::once(async { Ok(Bytes::from(tar_end())) }))
        .boxed();
    Ok(Recorded { value: Export { version: version.version, tar }, committed })
}

/// This installation's model-signing verifier key, and every key whose signatures it trusts.
/// Public: any authenticated caller may read them.
pub fn signing_keys(state: &AppState) -> (String, Vec<String>) {
    let keys = &state.model_keys;
    (keys.signer.verifier_key(), keys.trusted.iter().map(|k| k.verifier_key()).collect())
}
