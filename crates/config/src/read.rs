//! Reads a merged TOML table into `Config`, key by key, collecting every problem.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use factory_core::{Jurisdiction, SiteKind};
use toml::{Table, Value};

use crate::{
    AuditSettings, AuthzSettings, BatchSettings, ComputeSettings, Config, DatasetSettings, DriftSettings,
    EndpointSettings, EventSettings, JobSettings, LineageSettings, ObjectSettings, OrphanSettings, PipelineSettings,
    RegistrySettings, S3ObjectSettings, ServerSettings, ServingSettings, Site, SlurmSettings,
};

/// One problem, tied to the dotted key (or file and line) it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { key: key.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found, in the order found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn new(errors: Vec<ConfigError>) -> Self {
        ConfigErrors(errors)
    }

    pub fn single(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problem{})", self.0.len(), if self.0.len() == 1 { "" } else { "s" })?;
        for error in &self.0 {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Environment values are TOML when they parse as such (`true`, `30`, `["a"]`), else strings,
/// so `FACTORY_LISTEN=0.0.0.0:80` needs no quoting.
pub(crate) fn env_value(raw: &str) -> Value {
    match format!("value = {raw}").parse::<Table>() {
        Ok(mut table) => table.remove("value").unwrap_or_else(|| Value::String(raw.to_string())),
        Err(_) => Value::String(raw.to_string()),
    }
}

pub(crate) fn set_path(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    // `FACTORY_` or `FACTORY_SERVER__` would set a key named by nothing.
    if path.iter().any(String::is_empty) {
        return Err("names no key (a name is empty before, between or after `__`)".to_string());
    }
    match path {
        [] => Err("names no key".to_string()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table.entry(first.clone()).or_insert_with(|| Value::Table(Table::new()));
            match entry {
                Value::Table(inner) => set_path(inner, rest, value),
                _ => Err(format!("{first} is not a table")),
            }
        }
    }
}

/// A view of one table that remembers which keys were read, so the rest can be reported as
/// unknown together with the keys that are allowed.
struct Section<'a> {
    path: String,
    table: &'a Table,
    read: BTreeSet<&'static str>,
}

impl<'a> Section<'a> {
    fn new(path: &str, table: &'a Table) -> Self {
        Section { path: path.to_string(), table, read: BTreeSet::new() }
    }

    fn key(&self, key: &str) -> String {
        // A key that is not bare (`"" = 1`, `"a.b" = 1`) is quoted as TOML writes it, so an
        // error always names something and a dot in a name is not read as a path.
        let bare = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let key = if bare { key.to_string() } else { format!("{key:?}") };
        if self.path.is_empty() {
            key
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.read.insert(key);
        self.table.get(key)
    }

    fn string(&mut self, key: &'static str, errors: &mut Vec<ConfigError>) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s.clone()),
            other => {
                errors.push(ConfigError::new(self.key(key), format!("expected a string, found {}", other.type_str())));
                None
            }
        }
    }

    fn bool(&mut self, key: &'static str, default: bool, errors: &mut Vec<ConfigError>) -> bool {
        match self.get(key) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(other) => {
                errors.push(ConfigError::new(
                    self.key(key),
                    format!("expected true or false, found {}", other.type_str()),
                ));
                default
            }
        }
    }

    fn positive_integer(&mut self, key: &'static str, default: u64, errors: &mut Vec<ConfigError>) -> u64 {
        match self.get(key) {
            None => default,
            Some(Value::Integer(n)) if *n > 0 => *n as u64,
            Some(other) => {
                errors.push(ConfigError::new(self.key(key), format!("expected a positive integer, found {other}")));
                default
            }
        }
    }

    fn non_negative_integer(&mut self, key: &'static str, default: u64, errors: &mut Vec<ConfigError>) -> u64 {
        match self.get(key) {
            None => default,
            Some(Value::Integer(n)) if *n >= 0 => *n as u64,
            Some(other) => {
                errors.push(ConfigError::new(self.key(key), format!("expected an integer >= 0, found {other}")));
                default
            }
        }
    }

    fn parsed<T: FromStr>(&mut self, key: &'static str, errors: &mut Vec<ConfigError>) -> Option<T>
    where
        T::Err: fmt::Display,
    {
        let text = self.string(key, errors)?;
        match text.parse() {
            Ok(value) => Some(value),
            Err(e) => {
                errors.push(ConfigError::new(self.key(key), e.to_string()));
                None
            }
        }
    }

    fn table(&mut self, key: &'static str, errors: &mut Vec<ConfigError>) -> Option<Section<'a>> {
        let path = self.key(key);
        match self.get(key) {
            None => None,
            Some(Value::Table(table)) => Some(Section::new(&path, table)),
            Some(other) => {
                errors.push(ConfigError::new(path, format!("expected a table, found {}", other.type_str())));
                None
            }
        }
    }

    fn finish(self, errors: &mut Vec<ConfigError>) {
        for key in self.table.keys() {
            if !self.read.contains(key.as_str()) {
                let allowed: Vec<&str> = self.read.iter().copied().collect();
                errors.push(ConfigError::new(
                    self.key(key),
                    format!("unknown key; allowed keys here are {}", allowed.join(", ")),
                ));
            }
        }
    }
}

pub(crate) fn resolve(table: &Table, errors: &mut Vec<ConfigError>) -> Option<Config> {
    let empty = Table::new();
    let mut root = Section::new("", table);
    let data_dir = root.string("data_dir", errors).map(PathBuf::from).unwrap_or_else(|| "./factory-data".into());
    let listen =
        root.parsed::<SocketAddr>("listen", errors).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let database_url = root.string("database_url", errors);
    if let Some(url) = &database_url {
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            errors.push(ConfigError::new("database_url", "expected a sqlite:, postgres:// or postgresql:// URL"));
        }
    }
    let jurisdiction = root.parsed::<Jurisdiction>("jurisdiction", errors);
    let jurisdiction = jurisdiction.or_else(|| Jurisdiction::new("local").ok())?;

    let sites = read_sites(&mut root, &jurisdiction, errors);
    let server = read_server(root.table("server", errors).unwrap_or(Section::new("server", &empty)), errors);
    let (objects, orphans) =
        read_objects(root.table("objects", errors).unwrap_or(Section::new("objects", &empty)), errors);
    let audit = read_audit(root.table("audit", errors).unwrap_or(Section::new("audit", &empty)), errors);
    let authz = read_authz(root.table("authz", errors).unwrap_or(Section::new("authz", &empty)), errors);
    let jobs = read_jobs(root.table("jobs", errors).unwrap_or(Section::new("jobs", &empty)), errors);
    let datasets = read_datasets(root.table("datasets", errors).unwrap_or(Section::new("datasets", &empty)), errors);
    let lineage = read_lineage(root.table("lineage", errors).unwrap_or(Section::new("lineage", &empty)), errors);
    let registry = read_registry(root.table("registry", errors).unwrap_or(Section::new("registry", &empty)), errors);
    let serving = read_serving(root.table("serving", errors).unwrap_or(Section::new("serving", &empty)), errors);
    let feedback = read_feedback(root.table("feedback", errors).unwrap_or(Section::new("feedback", &empty)), errors);
    let drift = {
        let mut section = root.table("drift", errors).unwrap_or(Section::new("drift", &empty));
        let settings =
            DriftSettings { interval: Duration::from_millis(section.positive_integer("interval_ms", 2000, errors)) };
        section.finish(errors);
        settings
    };
    let pipelines = {
        let mut section = root.table("pipelines", errors).unwrap_or(Section::new("pipelines", &empty));
        let settings = PipelineSettings { webhooks: string_list(&mut section, "webhooks", "a URL prefix", errors) };
        section.finish(errors);
        settings
    };
    let batch = {
        let mut section = root.table("batch", errors).unwrap_or(Section::new("batch", &empty));
        let settings = BatchSettings {
            max_file_bytes: section.positive_integer("max_file_mb", 200, errors).saturating_mul(1 << 20),
            max_requests: section.positive_integer("max_requests", 50_000, errors).min(1_000_000) as usize,
            concurrency: section.positive_integer("concurrency", 32, errors).min(1024) as usize,
        };
        section.finish(errors);
        settings
    };
    let compute = read_compute(root.table("compute", errors).unwrap_or(Section::new("compute", &empty)), errors);
    let events = read_events(root.table("events", errors).unwrap_or(Section::new("events", &empty)), errors);
    let secrets = read_secrets(root.table("secrets", errors).unwrap_or(Section::new("secrets", &empty)), errors);
    root.finish(errors);

    Some(Config {
        data_dir,
        listen,
        database_url,
        jurisdiction,
        sites,
        server,
        objects,
        orphans,
        audit,
        authz,
        jobs,
        datasets,
        lineage,
        registry,
        batch,
        compute,
        events,
        serving,
        feedback,
        drift,
        pipelines,
        secrets,
    })
}

/// `[secrets]`: tenant name -> the secret variables the operator grants it.
fn read_secrets(
    section: Section<'_>,
    errors: &mut Vec<ConfigError>,
) -> std::collections::BTreeMap<String, Vec<String>> {
    const PREFIXES: [&str; 2] = ["UPSTREAM_KEY_", "WEBHOOK_SECRET_"];
    let mut grants = std::collections::BTreeMap::new();
    for (tenant, value) in section.table {
        let key = section.key(tenant);
        if factory_core::TenantName::new(tenant.as_str()).is_err() {
            errors.push(ConfigError::new(key.clone(), "expected a tenant name"));
        }
        let names: Option<Vec<String>> =
            value.as_array().and_then(|items| items.iter().map(|v| v.as_str().map(str::to_string)).collect());
        match names {
            Some(names) if names.iter().all(|n| PREFIXES.iter().any(|p| n.starts_with(p) && n.len() > p.len())) => {
                grants.insert(tenant.clone(), names);
            }
            _ => errors.push(ConfigError::new(
                key,
                "expected a list of environment variable names starting UPSTREAM_KEY_ or WEBHOOK_SECRET_",
            )),
        }
    }
    grants
}

fn read_sites(root: &mut Section<'_>, default_jurisdiction: &Jurisdiction, errors: &mut Vec<ConfigError>) -> Vec<Site> {
    let entries = match root.get("sites") {
        None => {
            return vec![Site {
                name: "local".to_string(),
                jurisdiction: default_jurisdiction.clone(),
                kinds: SiteKind::ALL.to_vec(),
            }]
        }
        Some(Value::Array(entries)) => entries,
        Some(other) => {
            errors.push(ConfigError::new("sites", format!("expected an array of tables, found {}", other.type_str())));
            return Vec::new();
        }
    };
    let mut sites: Vec<Site> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let path = format!("sites[{index}]");
        let Value::Table(table) = entry else {
            errors.push(ConfigError::new(path, "expected a table with name, jurisdiction and kinds"));
            continue;
        };
        let mut section = Section::new(&path, table);
        let name = section.string("name", errors);
        let jurisdiction = section.parsed::<Jurisdiction>("jurisdiction", errors);
        let kinds = read_site_kinds(&mut section, errors);
        if name.is_none() {
            errors.push(ConfigError::new(section.key("name"), "missing; every site needs a name"));
        }
        if jurisdiction.is_none() && !table.contains_key("jurisdiction") {
            errors.push(ConfigError::new(section.key("jurisdiction"), "missing; every site needs a jurisdiction"));
        }
        section.finish(errors);
        if let (Some(name), Some(jurisdiction)) = (name, jurisdiction) {
            if sites.iter().any(|s| s.name == name) {
                errors.push(ConfigError::new(format!("{path}.name"), format!("site {name:?} is declared twice")));
            }
            sites.push(Site { name, jurisdiction, kinds });
        }
    }
    sites
}

fn read_site_kinds(section: &mut Section<'_>, errors: &mut Vec<ConfigError>) -> Vec<SiteKind> {
    let key = section.key("kinds");
    let values: Vec<&Value> = match section.get("kinds") {
        None => return SiteKind::ALL.to_vec(),
        Some(Value::Array(values)) => values.iter().collect(),
        Some(value @ Value::String(_)) => vec![value],
        Some(other) => {
            errors.push(ConfigError::new(key, format!("expected a list of site kinds, found {}", other.type_str())));
            return Vec::new();
        }
    };
    let mut kinds = Vec::new();
    for (index, value) in values.into_iter().enumerate() {
        let parsed = value.as_str().ok_or_else(|| format!("expected one of {}", SiteKind::allowed()));
        match parsed.and_then(|s| s.parse::<SiteKind>().map_err(|e| e.to_string())) {
            Ok(kind) => kinds.push(kind),
            Err(message) => errors.push(ConfigError::new(format!("{key}[{index}]"), message)),
        }
    }
    kinds
}

fn read_server(mut section: Section<'_>, errors: &mut Vec<ConfigError>) -> ServerSettings {
    let settings = ServerSettings {
        request_body_limit_bytes: section.positive_integer("request_body_limit_bytes", 16 * 1024 * 1024, errors)
            as usize,
        request_timeout: Duration::from_secs(section.positive_integer("request_timeout_secs", 30, errors)),
        max_in_flight: section.positive_integer("max_in_flight", 512, errors) as usize,
        max_in_flight_per_tenant: section.positive_integer("max_in_flight_per_tenant", 128, errors) as usize,
        max_transfers: section.positive_integer("max_transfers", 32, errors) as usize,
        max_transfers_per_tenant: section.positive_integer("max_transfers_per_tenant", 8, errors) as usize,
        min_transfer_bytes_per_sec: section.positive_integer("min_transfer_bytes_per_sec", 1024, errors),
        transfer_grace: Duration::from_secs(section.positive_integer("transfer_grace_secs", 30, errors)),
        json_logs: section.bool("json_logs", false, errors),
        otlp_endpoint: section.string("otlp_endpoint", errors),
        shutdown_grace: Duration::from_secs(section.positive_integer("shutdown_grace_secs", 30, errors)),
        roles: section.parsed::<crate::Roles>("roles", errors).unwrap_or(crate::Roles::ALL),
    };
    section.finish(errors);
    settings
}

fn read_objects(mut section: Section<'_>, errors: &mut Vec<ConfigError>) -> (ObjectSettings, OrphanSettings) {
    let orphans = OrphanSettings {
        grace: Duration::from_secs(section.non_negative_integer("orphan_grace_secs", 3600, errors)),
        sweep_interval: Duration::from_secs(section.non_negative_integer("orphan_sweep_interval_secs", 3600, errors)),
    };
    let kind = section.string("kind", errors).unwrap_or_else(|| "local".to_string());
    let path = section.string("path", errors).map(PathBuf::from);
    let s3 = section.table("s3", errors);
    let settings = match kind.as_str() {
        "local" => {
            if s3.is_some() {
                errors.push(ConfigError::new("objects.s3", "only allowed when objects.kind is \"s3\""));
            }
            ObjectSettings::Local { path }
        }
        "s3" => {
            let empty = Table::new();
            let mut s3 = s3.unwrap_or(Section::new("objects.s3", &empty));
            let bucket = s3.string("bucket", errors);
            if bucket.is_none() {
                errors.push(ConfigError::new("objects.s3.bucket", "missing; an S3 object store needs a bucket"));
            }
            let settings = S3ObjectSettings {
                bucket: bucket.unwrap_or_default(),
                endpoint: s3.string("endpoint", errors),
                region: s3.string("region", errors).unwrap_or_else(|| "us-east-1".to_string()),
                access_key_id: s3.string("access_key_id", errors),
                secret_access_key: s3.string("secret_access_key", errors),
                allow_http: s3.bool("allow_http", false, errors),
                prefix: s3.string("prefix", errors).unwrap_or_default(),
            };
            s3.finish(errors);
            ObjectSettings::S3(settings)
        }
        other => {
            errors.push(ConfigError::new("objects.kind", format!("{other:?} is invalid: expected one of local, s3")));
            ObjectSettings::Local { path }
        }
    };
    section.finish(errors);
    (settings, orphans)
}

fn read_audit(mut section: Section<'_>, errors: &mut Vec<ConfigError>) -> AuditSettings {
    let origin = section.string("origin", errors).unwrap_or_else(|| "factory.local/audit".to_string());
    if origin.is_empty() || origin.contains(char::is_whitespace) || origin.contains('+') {
        errors.push(ConfigError::new("audit.origin", "must be non-empty without spaces or '+'"));
    }
    let settings = AuditSettings {
        origin,
        checkpoint_interval: Duration::from_secs(section.positive_integer("checkpoint_interval_secs", 60, errors)),
        checkpoint_dir: section.string("checkpoint_dir", errors).map(PathBuf::from),
    };
    section.finish(errors);
    settings
}

/// A list of strings at `section.key`, each problem named by its index.
fn string_list(section: &mut Section<'_>, key: &'static str, what: &str, errors: &mut Vec<ConfigError>) -> Vec<String> {
    let mut strings = Vec::new();
    let path = section.key(key);
    match section.get(key) {
        None => {}
        Some(Value::Array(values)) => {
            for (index, value) in values.iter().enumerate() {
                match value.as_str() {
                    Some(text) => strings.push(text.to_string()),
                    None => errors.push(ConfigError::new(format!("{path}[{index}]"), format!("expected {what}"))),
                }
            }
        }
        Some(other) => {
            errors.push(ConfigError::new(path, format!("expected a list of {what}s, found {}", other.type_str())))
        }
    }
    strings
}

fn read_authz(mut section: Section<'_>, errors: &mut Vec<ConfigError>) -> AuthzSettings {
    let policy_files = string_list(&mut section, "policy_files", "a path", errors).into_iter().map(PathBuf::from);
    let policy_files = policy_files.collect();
    section.finish(errors);
    AuthzSettings { policy_files }
}

fn read_registry(mut section: Section<'_>, errors: &mut Vec<ConfigError>) -> RegistrySettings {
    let trusted_keys = string_list(&mut section, "trusted_keys", "a verifier key", errors);
    for (index, key) in trusted_keys.iter().enumerate() {
        // The base64 part may itself hold '+', so only the first two separate fields.
        if key.splitn(3, '+').count() != 3 || key.splitn(3, '+').any(str::is_empty) {
            errors.push(ConfigError::new(
                format!("registry.trusted_keys[{index}]"),
                "expected a verifier key <name>+<id>+<base64>",
            ));
        }
    }
    section.finish(errors);
    RegistrySettings { trusted_keys }
}

fn read_jobs(mut section: Section<'_>, errors: &mut Vec<ConfigError>) -> JobSettings {
    let settings = JobSettings {
        workers: section.positive_integer("workers", 2, errors) as usize,
        lease: {
            let seconds = section.positive_integer("lease_secs", 30, errors);
            // A lease is added to the clock in milliseconds; a day is more than any heartbeat
            // needs, and far from overflowing it.
            if seconds > 86_400 {
                errors.push(ConfigError::new("jobs.lease_secs", format!("{seconds} is over a day (86400)")));
            }
            Duration::from_secs(seconds.min(86_400))
        },
        max_attempts: {
            let attempts = section.positive_integer("max_attempts", 3, errors);
            // Narrowed, 2^32 would become 0 attempts and 2^32 + 3 three.
            u32::try_from(attempts).unwrap_or_else(|_| {
                errors.push(ConfigError::new("jobs.max_attempts", format!("{attempts} is over {}", u32::MAX)));
                3
            })
        },
        max_model_parameters: section.positive_integer("max_model_parameters", 500_000_000, errors),
    };
    section.finish(errors);
    settings
}

fn read_serving(mut section: Section<'_>, errors: &mut Vec<ConfigError>) -> ServingSettings {
    let mut prices = std::collections::BTreeMap::new();
    if let Some(table) = section.table("prices", errors) {
        for (model, value) in table.table {
            let price = |field: &str| value.get(field).and_then(|v| v.as_float().or(v.as_integer().map(|i| i as f64)));
            match (price("prompt_per_1k"), price("completion_per_1k")) {
                (Some(prompt), Some(completion)) if prompt >= 0.0 && completion >= 0.0 => {
                    prices.insert(model.clone(), (prompt, completion));
                }
                _ => errors.push(ConfigError::new(
                    format!("serving.prices.{model}"),
                    "expected { prompt_per_1k = N, completion_per_1k = N } with non-negative prices",
                )),
            }
        }
    }
    let mut endpoints = std::collections::BTreeMap::new();
    if let Some(table) = section.table("endpoints", errors) {
        for (name, value) in table.table {
            match read_endpoint(value) {
                Ok(endpoint) => {
                    endpoints.insert(name.clone(), endpoint);
                }
                Err(message) => errors.push(ConfigError::new(format!("serving.endpoints.{name}"), message)),
            }
        }
    }
    let shared_state = section.string("shared_state", errors);
    if let Some(url) = &shared_state {
        if !url.starts_with("redis://") {
            errors.push(ConfigError::new("serving.shared_state", "expected a redis:// URL"));
        }
    }
    let settings = ServingSettings {
        max_batch: section.positive_integer("max_batch", 32, errors) as usize,
        max_waiting: section.positive_integer("max_waiting", 64, errors) as usize,
        prefill_chunk: section.positive_integer("prefill_chunk", 256, errors) as usize,
        prices,
        upstreams: string_list(&mut section, "upstreams", "a URL prefix", errors),
        max_request_bytes: section.positive_integer("max_request_bytes", 4 * 1024 * 1024, errors) as usize,
        adapter_cache_bytes: (section.positive_integer("adapter_cache_mb", 1024, errors) as usize)
            .saturating_mul(1 << 20),
        max_choices: section.positive_integer("max_choices", 8, errors).min(128) as usize,
        prefix_cache_bytes: (section.non_negative_integer("prefix_cache_mb", 256, errors) as usize)
            .saturating_mul(1 << 20),
        shared_state,
        endpoints,
        shared_state_fail_open: match section.string("shared_state_failure", errors).as_deref() {
            None | Some("closed") => false,
            Some("open") => true,
            Some(other) => {
                errors.push(ConfigError::new(
                    "serving.shared_state_failure",
                    format!("expected \"closed\" or \"open\", found {other:?}"),
                ));
                false
            }
        },
        kv_cache_half: match section.string("kv_cache", errors).as_deref() {
            None | Some("f32") => false,
            Some("f16") => true,
            Some(other) => {
                errors.push(ConfigError::new(
                    "serving.kv_cache",
                    format!("expected \"f32\" or \"f16\", found {other:?}"),
                ));
                false
            }
        },
    };
    section.finish(errors);
    settings
}

/// `{ urls = ["http://host:port/v1", ...], jurisdiction = "eu", api_key_env = "UPSTREAM_KEY_X",
/// health_path = "/models" }`.
fn read_endpoint(value: &Value) -> Result<EndpointSettings, String> {
    const EXPECTED: &str = "expected { urls = [\"http(s)://.../v1\", ...], jurisdiction = \"...\", \
                            api_key_env = \"UPSTREAM_KEY_...\" (optional), health_path = \"/...\" (optional) }";
    let table = value.as_table().ok_or(EXPECTED)?;
    if let Some(key) =
        table.keys().find(|key| !["urls", "jurisdiction", "api_key_env", "health_path"].contains(&key.as_str()))
    {
        return Err(format!("unknown key {key:?}; {EXPECTED}"));
    }
    let urls: Vec<String> = table
        .get("urls")
        .and_then(Value::as_array)
        .map(|urls| urls.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    if urls.is_empty() || urls.iter().any(|url| !(url.starts_with("http://") || url.starts_with("https://"))) {
        return Err(EXPECTED.to_string());
    }
    let jurisdiction = table.get("jurisdiction").and_then(Value::as_str).ok_or(EXPECTED)?;
    Jurisdiction::new(jurisdiction).map_err(|error| format!("jurisdiction: {error}"))?;
    let api_key_env = table.get("api_key_env").and_then(Value::as_str).map(str::to_string);
    if api_key_env.as_deref().is_some_and(|name| !name.starts_with("UPSTREAM_KEY_")) {
        return Err("api_key_env: a variable named UPSTREAM_KEY_*".to_string());
    }
    let health_path = table.get("health_path").and_then(Value::as_str).unwrap_or("/models").to_string();
    if !health_path.starts_with('/') {
        return Err("health_path: a path starting with /".to_string());
    }
    Ok(EndpointSettings { urls, jurisdiction: jurisdiction.to_string(), api_key_env, health_path })
}

fn read_feedback(
    mut section: Section<'_>,
    errors: &mut Vec<ConfigError>,
) -> std::collections::BTreeMap<String, crate::FeedbackMetric> {
    let mut metrics = std::collections::BTreeMap::new();
    if let Some(table) = section.table("metrics", errors) {
        for (name, value) in table.table {
            let field = |key: &str, allowed: &[&str], default: &str| -> Option<String> {
                let text = value.get(key).and_then(|v| v.as_str()).unwrap_or(default);
                allowed.contains(&text).then(|| text.to_string())
            };
            match (
                field("type", &["boolean", "float"], ""),
                field("better", &["higher", "lower"], "higher"),
                field("level", &["inference", "episode"], "inference"),
            ) {
                (Some(kind), Some(better), Some(level)) => {
                    metrics.insert(name.clone(), crate::FeedbackMetric { kind, better, level });
                }
                _ => errors.push(ConfigError::new(
                    format!("feedback.metrics.{name}"),
                    "expected { type = \"boolean\"|\"float\", better = \"higher\"|\"lower\", level = \"inference\"|\"episode\" }",
                )),
            }
        }
    }
    section.finish(errors);
    metrics
}

/// The job kinds Slurm runs unless `[compute.slurm] kinds` says otherwise.
const SLURM_KINDS: [&str; 3] = ["training.pretrain", "training.finetune", "batch.run"];

fn read_compute(mut section: Section<'_>, errors: &mut Vec<ConfigError>) -> ComputeSettings {
    let executor = section.string("executor", errors);
    let empty = Table::new();
    let mut slurm_section = section.table("slurm", errors).unwrap_or(Section::new("compute.slurm", &empty));
    let slurm = SlurmSettings {
        partition: slurm_section.string("partition", errors).unwrap_or_else(|| "factory".to_string()),
        account: slurm_section.string("account", errors),
        qos: slurm_section.string("qos", errors),
        time_limit_minutes: slurm_section.positive_integer("time_limit_minutes", 60, errors),
        cpus: slurm_section.positive_integer("cpus", 2, errors),
        memory_mb: slurm_section.positive_integer("memory_mb", 4096, errors),
        gpus: slurm_section.non_negative_integer("gpus", 0, errors),
        binary: slurm_section.string("binary", errors).map(PathBuf::from),
        kinds: {
            let kinds = string_list(&mut slurm_section, "kinds", "a job kind", errors);
            if kinds.is_empty() {
                SLURM_KINDS.iter().map(|kind| kind.to_string()).collect()
            } else {
                kinds
            }
        },
        log_dir: slurm_section.string("log_dir", errors).map(PathBuf::from),
    };
    // Slurm options are passed to sbatch as arguments: plain names only.
    let plain = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    for (key, value) in
        [("partition", Some(&slurm.partition)), ("account", slurm.account.as_ref()), ("qos", slurm.qos.as_ref())]
    {
        if value.is_some_and(|value| !plain(value)) {
            errors.push(ConfigError::new(format!("compute.slurm.{key}"), "expected letters, digits, '_', '-' or '.'"));
        }
    }
    slurm_section.finish(errors);
    let settings = match executor.as_deref() {
        None | Some("local") => ComputeSettings { slurm: None },
        Some("slurm") => ComputeSettings { slurm: Some(slurm) },
        Some(other) => {
            errors.push(ConfigError::new(
                "compute.executor",
                format!("expected \"local\" or \"slurm\", found {other:?}"),
            ));
            ComputeSettings::default()
        }
    };
    section.finish(errors);
    settings
}

fn read_events(mut section: Section<'_>, errors: &mut Vec<ConfigError>) -> EventSettings {
    let nats_url = section.string("nats_url", errors);
    if let Some(url) = &nats_url {
        if !(url.starts_with("nats://") || url.starts_with("tls://")) {
            errors.push(ConfigError::new("events.nats_url", "expected a nats:// or tls:// URL"));
        }
    }
    // Stream names and subject tokens: no dots, spaces or wildcards.
    let token =
        |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let stream = section.string("stream", errors).unwrap_or_else(|| "FACTORY_EVENTS".to_string());
    if !token(&stream) {
        errors.push(ConfigError::new("events.stream", "expected letters, digits, '_' or '-'"));
    }
    let subject_prefix = section.string("subject_prefix", errors).unwrap_or_else(|| "factory".to_string());
    if !subject_prefix.split('.').all(token) {
        errors.push(ConfigError::new(
            "events.subject_prefix",
            "expected dot-separated tokens of letters, digits, '_' or '-'",
        ));
    }
    let settings = EventSettings { nats_url, stream, subject_prefix };
    section.finish(errors);
    settings
}

fn read_lineage(mut section: Section<'_>, errors: &mut Vec<ConfigError>) -> LineageSettings {
    let http_url = section.string("http_url", errors);
    if let Some(url) = &http_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            errors.push(ConfigError::new("lineage.http_url", "expected an http:// or https:// URL"));
        }
    }
    let settings = LineageSettings {
        namespace: section.string("namespace", errors).unwrap_or_else(|| "factory".to_string()),
        file: section.string("file", errors).map(PathBuf::from),
        http_url,
    };
    section.finish(errors);
    settings
}

fn read_datasets(mut section: Section<'_>, errors: &mut Vec<ConfigError>) -> DatasetSettings {
    let mut custom_pii = Vec::new();
    if let Some(patterns) = section.table("custom_pii", errors) {
        for (name, value) in patterns.table {
            match value.as_str() {
                Some(pattern) => custom_pii.push((name.clone(), pattern.to_string())),
                None => errors.push(ConfigError::new(
                    format!("datasets.custom_pii.{name}"),
                    "expected a regular expression as a string",
                )),
            }
        }
    }
    let settings = DatasetSettings {
        custom_pii,
        transfer_timeout: Duration::from_secs(section.positive_integer("transfer_timeout_secs", 3600, errors)),
        max_columns: section.positive_integer("max_columns", 1000, errors) as usize,
        max_decompressed_bytes: section.positive_integer("max_decompressed_bytes", 16 << 30, errors),
        max_buffered_bytes: section.positive_integer("max_buffered_bytes", 64 << 20, errors) as usize,
    };
    section.finish(errors);
    settings
}
