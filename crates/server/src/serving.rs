//! Deployments at run time: which model version a request reaches, and the engines that serve
//! them. A model version is loaded only after its signature and every file's digest check out
//! (`registry::open_manifest`, `registry::fetch_file`); engines are shared by every deployment
//! that serves the same signed manifest. An adapter version (a LoRA fine-tune) runs on its base's
//! engine, its adapter applied to its own requests only, so one base serves many adapters.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use factory_engine::embed::Embedder;
use factory_engine::{Engine, EngineSettings};
use factory_model::{
    Decoder, Device, KvPrecision, Llama, LlamaConfig, LoraAdapters, LoraConfig, ServingAdapter, Weights,
};
use factory_store::models::ModelVersion;
use factory_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use factory_objects::ContentStore;

use crate::registry::{self, ModelKeys, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::service_error::{ErrorKind, ServiceError};

/// The tokenizer of a GGUF file's vocabulary: byte-level BPE (`gpt2`) or SentencePiece
/// (`llama`).
pub fn gguf_tokenizer(
    summary: &factory_model::gguf::GgufSummary,
    vocabulary: &factory_model::gguf::Vocabulary,
) -> Result<Tokenizer, String> {
    let made = match summary.tokenizer.model.as_str() {
        "gpt2" => Tokenizer::from_gguf_bpe(
            &vocabulary.tokens,
            &vocabulary.merges,
            &vocabulary.token_types,
            &summary.tokenizer.pre,
        ),
        "llama" => Tokenizer::from_gguf_spm(
            &vocabulary.tokens,
            &vocabulary.scores,
            &vocabulary.token_types,
            vocabulary.add_space_prefix,
        ),
        other => {
            return Err(format!("tokenizer.ggml.model: {other:?} vocabularies are not tokenized (gpt2, llama are)"))
        }
    };
    made.map_err(|e| e.to_string())
}

/// What `POST /api/v1/deployments` stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    pub variants: Vec<VariantSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<crate::limits::LimitsSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guardrails: Vec<crate::guardrails::GuardrailSpec>,
    /// Whether prompts and answers go into the inference log: none unless this says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<LoggingSpec>,
    /// Drift monitors on this deployment's traffic and feedback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<crate::drift::DriftSpec>,
    /// Which tools callers may offer the model: any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ToolsSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsSpec {
    /// The function names a request may offer (`deployment.tool` refuses any other).
    pub allowed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSpec {
    /// The share of requests whose text is kept, 0 to 1.
    pub sample_rate: f64,
    /// Mask e-mails, phone numbers, IBANs, cards and IP addresses before storing (default on).
    #[serde(default = "default_redact")]
    pub redact_pii: bool,
}

fn default_redact() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    /// A registered model: `NAME@VERSION`, or `NAME@ALIAS` to follow the alias as it moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Or an external OpenAI-compatible endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamSpec>,
    /// Or a pool of servers inside the border the configuration declares
    /// (`[serving.endpoints.NAME]`): another factory's gateways, balanced and health-checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointVariant>,
    /// Relative share of traffic among primaries (0 takes none).
    #[serde(default = "default_weight")]
    pub weight: f64,
    #[serde(default)]
    pub role: VariantRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VariantRole {
    /// Answers its weighted share of requests.
    #[default]
    Primary,
    /// Tried in order when the chosen primary fails or times out.
    Fallback,
    /// Gets a copy of every request; its answer is logged, never returned.
    Shadow,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Base URL up to and including `/v1`.
    pub url: String,
    /// The model name the upstream knows.
    pub model: String,
    /// Where the upstream runs, as its operator declares; the tenant must allow it.
    pub jurisdiction: factory_core::Jurisdiction,
    /// The environment variable holding its API key (the key itself is never stored).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// How long to wait for its answer (or, streaming, its first byte) before falling back.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// A variant answered by a declared pool of servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointVariant {
    /// The pool's name in `[serving.endpoints]`.
    pub name: String,
    /// The model name its servers know.
    pub model: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    30_000
}

/// Upstream API keys come only from environment variables named with this prefix: an operator
/// sets them for upstreams on purpose, so no deployment can send the server's other secrets.
pub const UPSTREAM_KEY_PREFIX: &str = "UPSTREAM_KEY_";

impl VariantSpec {
    /// How the variant is named in logs, metrics and the `x-factory-model` header.
    pub fn label(&self) -> String {
        match (&self.model, &self.upstream, &self.endpoint) {
            (Some(model), _, _) => model.clone(),
            (None, Some(upstream), _) => format!("upstream:{}@{}", upstream.model, upstream.url),
            (None, None, Some(endpoint)) => format!("endpoint:{}@{}", endpoint.model, endpoint.name),
            (None, None, None) => "-".to_string(),
        }
    }
}

fn default_weight() -> f64 {
    1.0
}

impl DeploymentSpec {
    pub fn validate(&self) -> Result<(), String> {
        if self.variants.is_empty() || self.variants.len() > 16 {
            return Err("variants: give 1 to 16 variants".to_string());
        }
        for (index, variant) in self.variants.iter().enumerate() {
            if !(variant.weight >= 0.0 && variant.weight.is_finite()) {
                return Err(format!("variants[{index}].weight must be zero or positive"));
            }
            match (&variant.model, &variant.upstream, &variant.endpoint) {
                (Some(model), None, None) => {
                    if model.split_once('@').is_none_or(|(n, v)| n.is_empty() || v.is_empty()) {
                        return Err(format!("variants[{index}].model: expected NAME@VERSION or NAME@ALIAS"));
                    }
                }
                (None, Some(upstream), None) => {
                    if !(upstream.url.starts_with("http://") || upstream.url.starts_with("https://")) {
                        return Err(format!("variants[{index}].upstream.url: expected an http(s) URL"));
                    }
                    if upstream.model.is_empty() || upstream.timeout_ms == 0 {
                        return Err(format!("variants[{index}].upstream: give a model and a positive timeout_ms"));
                    }
                    if upstream.api_key_env.as_deref().is_some_and(|name| !name.starts_with(UPSTREAM_KEY_PREFIX)) {
                        return Err(format!(
                            "variants[{index}].upstream.api_key_env must name a variable starting {UPSTREAM_KEY_PREFIX}"
                        ));
                    }
                }
                (None, None, Some(endpoint)) => {
                    if endpoint.name.is_empty() || endpoint.model.is_empty() || endpoint.timeout_ms == 0 {
                        return Err(format!(
                            "variants[{index}].endpoint: give a name, a model and a positive timeout_ms"
                        ));
                    }
                }
                _ => return Err(format!("variants[{index}]: give one of model, upstream or endpoint")),
            }
        }
        if let Some(limits) = &self.limits {
            limits.validate()?;
        }
        crate::guardrails::Guardrails::compile(&self.guardrails)?;
        if let Some(logging) = &self.logging {
            if !(0.0..=1.0).contains(&logging.sample_rate) {
                return Err("logging.sample_rate must be between 0 and 1".to_string());
            }
        }
        if let Some(drift) = &self.drift {
            drift.validate(self.logging.as_ref().map(|l| l.sample_rate))?;
        }
        let primaries = self.variants.iter().filter(|v| v.role == VariantRole::Primary);
        if !primaries.clone().any(|v| v.weight > 0.0) {
            return Err("variants: at least one primary variant needs a positive weight".to_string());
        }
        Ok(())
    }

    /// The primary for a draw in [0, 1), by weight.
    pub fn pick(&self, draw: f64) -> &VariantSpec {
        let primaries: Vec<&VariantSpec> =
            self.variants.iter().filter(|v| v.role == VariantRole::Primary && v.weight > 0.0).collect();
        let total: f64 = primaries.iter().map(|v| v.weight).sum();
        let mut point = draw * total;
        for variant in &primaries {
            if point < variant.weight {
                return variant;
            }
            point -= variant.weight;
        }
        primaries.last().copied().unwrap_or(&self.variants[0])
    }

    pub fn with_role(&self, role: VariantRole) -> impl Iterator<Item = &VariantSpec> {
        self.variants.iter().filter(move |v| v.role == role)
    }
}

/// A text generator: the engine that runs it and what turns messages into its prompt.
#[derive(Clone)]
pub struct Generator {
    pub engine: Engine,
    /// The model the engine runs, for the adapters that run on it.
    pub config: Arc<LlamaConfig>,
    pub tokenizer: Tokenizer,
    /// `tokenizer_config.json`'s `chat_template` (or a GGUF file's), when the model has one.
    pub chat_template: Option<String>,
    /// What the chat template calls `bos_token` and `eos_token`.
    pub special: SpecialTokens,
}

/// The texts of a model's own beginning and end tokens, for its chat template.
#[derive(Debug, Clone, Default)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
}

/// A verified model version, ready to serve: a generator (Llama) or an embedder (BERT).
pub struct LoadedModel {
    pub generator: Option<Generator>,
    pub embedder: Option<Arc<Embedder>>,
    /// `name@version`.
    pub reference: String,
    /// Where the model may be served, from its signed manifest.
    pub jurisdiction: factory_core::Jurisdiction,
    /// An adapter version: the adapter its requests run with on its base's engine (which
    /// `generator` is).
    pub adapter: Option<Arc<ServingAdapter>>,
}

/// How engines are built: the `serving` settings they start with.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    pub kv_cache_half: bool,
    pub max_batch: usize,
    pub max_waiting: usize,
    pub prefill_chunk: usize,
    /// What loaded adapters may hold together.
    pub adapter_cache_bytes: usize,
    /// What each engine's prefix cache may hold.
    pub prefix_cache_bytes: usize,
}

/// Engines by signed manifest digest.
pub struct Engines {
    /// Where versions' files are read from, and the keys their manifests must be signed with.
    objects: Arc<ContentStore>,
    model_keys: Arc<ModelKeys>,
    options: EngineOptions,
    /// Where large files (GGUF weights) are spooled while they load.
    spool_dir: std::path::PathBuf,
    metrics: Arc<crate::metrics::Metrics>,
    /// One cell per signed manifest: the map's lock is held only to find the cell, and each
    /// model loads once while requests for other models go on.
    loaded: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<LoadedModel>>>>>,
    /// Embedding requests computing or waiting at once; past it, 429.
    pub embedding_permits: Arc<tokio::sync::Semaphore>,
    /// The connection pool to upstream variants.
    pub upstream: reqwest::Client,
    /// The pools of servers elsewhere that variants may name, with their replicas' health.
    pub endpoints: Arc<crate::endpoints::Endpoints>,
    /// Rate limits and budgets of every deployment, by caller.
    pub limits: Arc<crate::limits::Limits>,
    /// Denied topics' example vectors, by encoder manifest and examples.
    topic_vectors: std::sync::Mutex<HashMap<String, crate::guardrails::ExampleVectors>>,
    /// By manifest digest: the base an adapter version runs on, or `None` for a whole model.
    adapter_bases: std::sync::Mutex<HashMap<String, Option<String>>>,
    /// Adapter versions ready to serve on their base's engine.
    adapters: std::sync::Mutex<AdapterCache>,
}

/// Loaded adapter versions by manifest digest, within a memory budget: the one used longest ago
/// leaves first.
#[derive(Default)]
struct AdapterCache {
    entries: HashMap<String, CachedAdapter>,
    bytes: usize,
    clock: u64,
}

struct CachedAdapter {
    loaded: Arc<LoadedModel>,
    bytes: usize,
    used: u64,
}

impl AdapterCache {
    fn get(&mut self, digest: &str) -> Option<Arc<LoadedModel>> {
        self.clock += 1;
        let entry = self.entries.get_mut(digest)?;
        entry.used = self.clock;
        Some(entry.loaded.clone())
    }

    /// Adds `loaded`, evicting the least recently used until it fits `budget`; what was
    /// evicted, by reference (requests under way keep their own handle to it).
    fn insert(&mut self, digest: String, loaded: Arc<LoadedModel>, bytes: usize, budget: usize) -> Vec<String> {
        let mut evicted = Vec::new();
        if let Some(previous) = self.entries.remove(&digest) {
            self.bytes -= previous.bytes;
        }
        while self.bytes + bytes > budget {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, entry)| entry.used).map(|(key, _)| key.clone())
            else {
                break;
            };
            if let Some(entry) = self.entries.remove(&oldest) {
                self.bytes -= entry.bytes;
                evicted.push(entry.loaded.reference.clone());
            }
        }
        self.clock += 1;
        self.bytes += bytes;
        self.entries.insert(digest, CachedAdapter { loaded, bytes, used: self.clock });
        evicted
    }
}

impl Engines {
    pub fn new(
        objects: Arc<ContentStore>,
        model_keys: Arc<ModelKeys>,
        options: EngineOptions,
        spool_dir: std::path::PathBuf,
        metrics: Arc<crate::metrics::Metrics>,
        limits: Arc<crate::limits::Limits>,
        endpoints: Arc<crate::endpoints::Endpoints>,
    ) -> Self {
        Engines {
            objects,
            model_keys,
            options,
            spool_dir,
            metrics,
            loaded: Mutex::default(),
            embedding_permits: Arc::new(tokio::sync::Semaphore::new(8)),
            // A redirect would take the request (and its key) to a host the allowlist never
            // admitted: a 3xx is the upstream's answer, not an instruction.
            upstream: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
            limits,
            endpoints,
            topic_vectors: std::sync::Mutex::default(),
            adapter_bases: std::sync::Mutex::default(),
            adapters: std::sync::Mutex::default(),
        }
    }
}

impl Engines {
    /// The engine for `version`, verifying and loading it on first use. A failed load is not
    /// kept: the next request tries again.
    pub async fn get(&self, version: &ModelVersion) -> Result<Arc<LoadedModel>, ServiceError> {
        let cell = self.loaded.lock().await.entry(version.manifest_digest.clone()).or_default().clone();
        cell.get_or_try_init(|| async { self.load(version).await.map(Arc::new) }).await.cloned()
    }
}

impl Engines {
    /// The base (`NAME@VERSION`) `version` runs on if it is an adapter version (a LoRA
    /// fine-tune with its adapter files and the base its lineage names), else `None`.
    pub async fn adapter_base(&self, version: &ModelVersion) -> Result<Option<String>, ServiceError> {
        let known = lock(&self.adapter_bases).get(&version.manifest_digest).cloned();
        if let Some(known) = known {
            return Ok(known);
        }
        let (manifest, _) = registry::open_manifest(&self.objects, &self.model_keys, version).await?;
        let has = |path: &str| manifest.file(path).is_some();
        let base = match has(ADAPTER_WEIGHTS) && has(ADAPTER_CONFIG) {
            true => manifest.lineage.base_model.clone(),
            false => None,
        };
        lock(&self.adapter_bases).insert(version.manifest_digest.clone(), base.clone());
        Ok(base)
    }

    /// Adapter version `version` on the engine of `base`: the base loads once for all its
    /// adapters (and its own requests), and an adapter loads on first use into the cache, which
    /// evicts the adapter used longest ago when the next does not fit its budget.
    pub async fn get_adapted(
        &self,
        version: &ModelVersion,
        base: &ModelVersion,
    ) -> Result<Arc<LoadedModel>, ServiceError> {
        if let Some(hit) = lock(&self.adapters).get(&version.manifest_digest) {
            return Ok(hit);
        }
        let base_model = self.get(base).await?;
        let reference = format!("{}@{}", version.name, version.version);
        let unservable = |e: String| ServiceError::new(ErrorKind::UnservableModel, format!("{reference}: {e}"));
        let generator = base_model.generator.clone().ok_or_else(|| unservable("its base generates no text".into()))?;
        let (manifest, _) = registry::open_manifest(&self.objects, &self.model_keys, version).await?;
        let weights = registry::fetch_file(&self.objects, &manifest, ADAPTER_WEIGHTS).await?;
        let config = registry::fetch_file(&self.objects, &manifest, ADAPTER_CONFIG).await?;
        let model = generator.config.clone();
        let adapter = tokio::task::spawn_blocking(move || {
            let config: serde_json::Value =
                serde_json::from_slice(&config).map_err(|e| format!("{ADAPTER_CONFIG}: {e}"))?;
            let lora = LoraConfig::from_adapter_config(&config).map_err(|e| e.to_string())?;
            let adapters =
                LoraAdapters::from_safetensors(&model, &lora, &weights, &Device::Cpu).map_err(|e| e.to_string())?;
            ServingAdapter::new(&model, &adapters).map_err(|e| e.to_string())
        })
        .await
        .map_err(ServiceError::fault)?
        .map_err(unservable)?;
        let bytes = adapter.bytes();
        let budget = self.options.adapter_cache_bytes;
        if bytes > budget {
            return Err(unservable(format!(
                "its adapter takes {bytes} bytes, more than serving.adapter_cache_mb allows all adapters"
            )));
        }
        let loaded = Arc::new(LoadedModel {
            generator: Some(generator),
            embedder: None,
            reference: manifest.reference(),
            jurisdiction: manifest.residency.jurisdiction.clone(),
            adapter: Some(Arc::new(adapter)),
        });
        let mut cache = lock(&self.adapters);
        let evicted = cache.insert(version.manifest_digest.clone(), loaded.clone(), bytes, budget);
        self.metrics.adapter_cache_bytes.set(cache.bytes as i64);
        drop(cache);
        self.metrics.adapter_loads.inc();
        for evicted in evicted {
            self.metrics.adapter_evictions.inc();
            tracing::info!(adapter = %evicted, "evicted an adapter from the cache to make room");
        }
        tracing::info!(adapter = %reference, base = %base_model.reference, bytes, "loaded an adapter version onto its base's engine");
        Ok(loaded)
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Engines {
    /// The unit vectors of a denied topic's examples under `embedder`, computed once.
    pub async fn topic_vectors(
        &self,
        manifest: &str,
        embedder: &Arc<Embedder>,
        examples: &[String],
    ) -> Result<crate::guardrails::ExampleVectors, String> {
        let key = format!("{manifest}|{examples:?}");
        if let Some(found) = self.topic_vectors.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(found.clone());
        }
        let (embedder, examples) = (embedder.clone(), examples.to_vec());
        let vectors = tokio::task::spawn_blocking(move || crate::guardrails::embed_examples(&embedder, &examples))
            .await
            .map_err(|e| e.to_string())??;
        let vectors = Arc::new(vectors);
        self.topic_vectors.lock().unwrap_or_else(|p| p.into_inner()).insert(key, vectors.clone());
        Ok(vectors)
    }
}

impl Engines {
    fn record_weights(&self, manifest: &factory_registry::ModelManifest, decoder: &Decoder) {
        let labels = crate::metrics::ModelLabels { tenant: manifest.tenant.to_string(), model: manifest.reference() };
        self.metrics.model_weight_bytes.get_or_create(&labels).set(decoder.weight_bytes() as i64);
    }

    fn engine_settings(&self) -> EngineSettings {
        EngineSettings {
            max_batch: self.options.max_batch,
            max_waiting: self.options.max_waiting,
            prefill_chunk: self.options.prefill_chunk,
            prefix_cache_bytes: self.options.prefix_cache_bytes,
        }
    }

    /// A GGUF version: streamed (verified) to a file under the spool directory, then read one
    /// tensor at a time into a decoder that keeps the file's quantized blocks.
    async fn load_gguf(&self, manifest: &factory_registry::ModelManifest) -> Result<LoadedModel, ServiceError> {
        let file =
            registry::fetch_to_file(&self.objects, manifest, registry::GGUF_FILE, self.spool_dir.clone()).await?;
        let kv_precision = if self.options.kv_cache_half { KvPrecision::F16 } else { KvPrecision::F32 };
        let invalid =
            |e: String| ServiceError::new(ErrorKind::UnservableModel, format!("{}: {e}", manifest.reference()));
        let loaded = tokio::task::spawn_blocking(move || {
            let mut reader = std::io::BufReader::new(file);
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let (decoder, inspected) =
                factory_model::gguf::load_decoder(&mut reader, threads).map_err(|e| e.to_string())?;
            let (summary, vocabulary) = (&inspected.summary, &inspected.vocabulary);
            let tokenizer = gguf_tokenizer(summary, vocabulary)?;
            let text_of = |id: Option<u32>| id.and_then(|id| vocabulary.tokens.get(id as usize).cloned());
            let special = SpecialTokens { bos: text_of(summary.tokenizer.bos), eos: text_of(summary.tokenizer.eos) };
            let end_tokens = factory_model::gguf::end_of_generation(summary, vocabulary);
            Ok::<_, String>((
                decoder.with_kv_precision(kv_precision),
                tokenizer,
                special,
                end_tokens,
                summary.chat_template.clone(),
            ))
        })
        .await
        .map_err(|e| invalid(e.to_string()))?
        .map_err(invalid)?;
        let (decoder, tokenizer, special, end_tokens, chat_template) = loaded;
        tracing::info!(
            model = %manifest.reference(),
            weight_bytes = decoder.weight_bytes(),
            "loaded a verified GGUF model version into an engine"
        );
        self.record_weights(manifest, &decoder);
        let config = Arc::new(decoder.config().clone());
        let engine = Engine::start(decoder, tokenizer.clone(), &end_tokens, self.engine_settings());
        Ok(LoadedModel {
            generator: Some(Generator { engine, config, tokenizer, chat_template, special }),
            embedder: None,
            reference: manifest.reference(),
            jurisdiction: manifest.residency.jurisdiction.clone(),
            adapter: None,
        })
    }

    async fn load(&self, version: &ModelVersion) -> Result<LoadedModel, ServiceError> {
        let (manifest, _) = registry::open_manifest(&self.objects, &self.model_keys, version).await?;
        if manifest.file(registry::GGUF_FILE).is_some() {
            return self.load_gguf(&manifest).await;
        }
        // Every file is read and checked once, whether or not serving needs it: a version loads
        // only whole and unaltered.
        let mut files = HashMap::new();
        for file in &manifest.files {
            files.insert(file.path.clone(), registry::fetch_file(&self.objects, &manifest, &file.path).await?);
        }
        let mut take = |path: &str| {
            files
                .remove(path)
                .ok_or_else(|| ServiceError::not_found(format!("{} has no file {path}", manifest.reference())))
        };
        let (config, tokenizer) = (take("config.json")?, take("tokenizer.json")?);
        // One weights file, or the shards a sharded checkpoint's index names.
        let shard_names = match take(factory_registry::HF_SHARD_INDEX) {
            Ok(index) => factory_registry::shard_names(&index)
                .map_err(|e| ServiceError::new(ErrorKind::UnservableModel, e.to_string()))?,
            Err(_) => vec!["model.safetensors".to_string()],
        };
        let shards: Vec<Bytes> = shard_names.iter().map(|name| take(name)).collect::<Result<_, _>>()?;
        let generation_config = take("generation_config.json").ok();
        let sentence_config = take("sentence_bert_config.json").ok();
        let tokenizer_config = take("tokenizer_config.json").ok();
        let invalid = |e: String| ServiceError::new(ErrorKind::UnservableModel, e);
        if manifest.architecture == "bert" {
            // sentence-transformers' `max_seq_length`, else the encoder's whole context.
            let max_tokens = sentence_config
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                .and_then(|c| c["max_seq_length"].as_u64())
                .unwrap_or(512) as usize;
            let embedder = tokio::task::spawn_blocking(move || {
                Embedder::load(
                    &String::from_utf8_lossy(&config),
                    &shards[0],
                    &String::from_utf8_lossy(&tokenizer),
                    max_tokens,
                )
                .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| invalid(e.to_string()))?
            .map_err(invalid)?;
            tracing::info!(model = %manifest.reference(), "loaded a verified embedding model");
            return Ok(LoadedModel {
                generator: None,
                embedder: Some(Arc::new(embedder)),
                reference: manifest.reference(),
                jurisdiction: manifest.residency.jurisdiction.clone(),
                adapter: None,
            });
        }
        let reference = manifest.reference();
        let jurisdiction = manifest.residency.jurisdiction.clone();
        let kv_precision = if self.options.kv_cache_half { KvPrecision::F16 } else { KvPrecision::F32 };
        let (model, tokenizer) = tokio::task::spawn_blocking(move || {
            let config = LlamaConfig::from_json(&String::from_utf8_lossy(&config)).map_err(|e| e.to_string())?;
            // Served in the type it is stored in: half-precision weights stay half.
            let dtype = factory_model::stored_dtype(&shards[0]).map_err(|e| e.to_string())?;
            let shards: Vec<&[u8]> = shards.iter().map(|shard| &shard[..]).collect();
            let weights =
                Weights::from_safetensors_shards(&config, &shards, dtype, &Device::Cpu).map_err(|e| e.to_string())?;
            let model = Llama::new(config, weights).map_err(|e| e.to_string())?;
            let model = Decoder::new(&model).map_err(|e| e.to_string())?.with_kv_precision(kv_precision);
            let tokenizer = Tokenizer::from_json(&String::from_utf8_lossy(&tokenizer)).map_err(|e| e.to_string())?;
            Ok::<_, String>((model, tokenizer))
        })
        .await
        .map_err(|e| invalid(e.to_string()))?
        .map_err(invalid)?;
        let json =
            |bytes: Option<Bytes>| bytes.and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
        let (tokenizer_config, generation_config) = (json(tokenizer_config), json(generation_config));
        let chat_template =
            tokenizer_config.as_ref().and_then(|config| config["chat_template"].as_str().map(str::to_string));
        // tokenizer_config.json names the special tokens by text (or as {"content": ...}).
        let special_text = |key: &str| {
            let value = tokenizer_config.as_ref().map(|config| &config[key])?;
            value.as_str().or_else(|| value["content"].as_str()).map(str::to_string)
        };
        let special = SpecialTokens { bos: special_text("bos_token"), eos: special_text("eos_token") };
        // Sequences end at the config's eos, generation_config.json's (one id or a list: chat
        // models list their end of turn there), and the tokenizer config's eos token.
        let mut end_tokens: Vec<u32> = model.config().eos_token_id.into_iter().collect();
        match generation_config.as_ref().map(|config| &config["eos_token_id"]) {
            Some(serde_json::Value::Array(ids)) => {
                end_tokens.extend(ids.iter().filter_map(|id| id.as_u64()).map(|id| id as u32))
            }
            Some(id) => end_tokens.extend(id.as_u64().map(|id| id as u32)),
            None => {}
        }
        end_tokens.extend(special.eos.as_deref().and_then(|eos| tokenizer.token_id(eos)));
        end_tokens.retain(|&id| (id as usize) < model.config().vocab_size);
        let settings = self.engine_settings();
        tracing::info!(model = %reference, "loaded a verified model version into an engine");
        self.record_weights(&manifest, &model);
        let config = Arc::new(model.config().clone());
        let engine = Engine::start(model, tokenizer.clone(), &end_tokens, settings);
        Ok(LoadedModel {
            generator: Some(Generator { engine, config, tokenizer, chat_template, special }),
            embedder: None,
            reference,
            jurisdiction,
            adapter: None,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn adapter_version(reference: &str) -> Arc<LoadedModel> {
        Arc::new(LoadedModel {
            generator: None,
            embedder: None,
            reference: reference.to_string(),
            jurisdiction: factory_core::Jurisdiction::new("eu").unwrap(),
            adapter: None,
        })
    }

    #[test]
    fn the_adapter_cache_evicts_the_one_used_longest_ago_to_stay_in_budget() {
        let mut cache = AdapterCache::default();
        assert!(cache.insert("a".into(), adapter_version("m@1"), 40, 100).is_empty());
        assert!(cache.insert("b".into(), adapter_version("m@2"), 40, 100).is_empty());
        // `a` is used again, so `b` is the one used longest ago when `c` needs room.
        assert_eq!(cache.get("a").unwrap().reference, "m@1");
        assert_eq!(cache.insert("c".into(), adapter_version("m@3"), 40, 100), ["m@2"]);
        assert!(cache.get("b").is_none() && cache.get("a").is_some() && cache.get("c").is_some());
        assert_eq!(cache.bytes, 80);
        // One that needs the whole budget leaves nothing else.
        let evicted = cache.insert("d".into(), adapter_version("m@4"), 100, 100);
        assert_eq!(evicted.len(), 2);
        assert_eq!((cache.bytes, cache.entries.len()), (100, 1));
        // Loading one again replaces it, without counting it twice.
        assert!(cache.insert("d".into(), adapter_version("m@4"), 100, 100).is_empty());
        assert_eq!(cache.bytes, 100);
    }
}
