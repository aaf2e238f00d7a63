#![allow(clippy::unwrap_used)]

use super::*;

fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("factory.toml");
    std::fs::write(&path, text).unwrap();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::load(Some(&path), env, &FlagOverrides::default())
}

#[test]
fn embedded_default_is_one_local_site() {
    let config = Config::load(None, Vec::new(), &FlagOverrides::default()).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.data_dir, PathBuf::from("./factory-data"));
    assert_eq!(config.sites.len(), 1);
    assert_eq!(config.sites[0].name, "local");
    assert_eq!(config.sites[0].jurisdiction.as_str(), "local");
    assert_eq!(config.sites[0].kinds, SiteKind::ALL.to_vec());
    assert!(config.effective_database_url().starts_with("sqlite://"));
}

#[test]
fn jurisdiction_flag_sets_the_default_site() {
    let flags = FlagOverrides { jurisdiction: Some("de".to_string()), ..Default::default() };
    let config = Config::load(None, Vec::new(), &flags).unwrap();
    assert_eq!(config.sites[0].jurisdiction.as_str(), "de");
}

#[test]
fn example_file_parses_and_matches_the_defaults() {
    let example = load_text(Config::example_toml(), &[]).unwrap();
    let defaults = Config::load(None, Vec::new(), &FlagOverrides::default()).unwrap();
    assert_eq!(example, defaults);
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let errors = load_text(
        r#"
listen = "not an address"
colour = "blue"
[server]
request_timeout_secs = -1
[[sites]]
name = "eu-1"
jurisdiction = "EU"
kinds = ["storage", "gpu"]
"#,
        &[],
    )
    .unwrap_err();
    let text = errors.to_string();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        vec!["listen", "sites[0].jurisdiction", "sites[0].kinds[1]", "server.request_timeout_secs", "colour"],
        "{text}"
    );
    assert!(text.contains("expected one of storage, compute, serving"), "{text}");
    assert!(text.contains("allowed keys here are"), "{text}");
}

#[test]
fn environment_overrides_the_file_and_flags_override_both() {
    let config = load_text(
        "listen = \"127.0.0.1:1000\"\n[server]\njson_logs = false\n",
        &[
            ("FACTORY_LISTEN", "127.0.0.1:2000"),
            ("FACTORY_SERVER__JSON_LOGS", "true"),
            ("FACTORY_URL", "http://ignored"),
            ("HOME", "/root"),
        ],
    )
    .unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:2000");
    assert!(config.server.json_logs);

    let flags = FlagOverrides { listen: Some("127.0.0.1:3000".to_string()), ..Default::default() };
    let env = vec![("FACTORY_LISTEN".to_string(), "127.0.0.1:2000".to_string())];
    let config = Config::load(None, env, &flags).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:3000");

    let errors = load_text("", &[("FACTORY_SERVR__JSON_LOGS", "true")]).unwrap_err();
    assert_eq!(errors.0[0].key, "servr", "{errors}");
}

#[test]
fn roles_come_from_the_file_the_environment_and_the_flag() {
    assert_eq!(load_text("", &[]).unwrap().server.roles, Roles::ALL);
    let config = load_text("[server]\nroles = \"api, worker\"\n", &[]).unwrap();
    assert_eq!(config.server.roles.names(), vec!["api", "worker"]);
    let config = load_text("", &[("FACTORY_SERVER__ROLES", "gateway")]).unwrap();
    assert_eq!(config.server.roles.names(), vec!["gateway"]);
    let flags = FlagOverrides { roles: Some("worker".to_string()), ..Default::default() };
    let env = vec![("FACTORY_SERVER__ROLES".to_string(), "gateway".to_string())];
    assert_eq!(Config::load(None, env, &flags).unwrap().server.roles.names(), vec!["worker"]);
    let errors = load_text("[server]\nroles = \"api,cook\"\n", &[]).unwrap_err();
    assert_eq!(errors.0[0].key, "server.roles", "{errors}");
    assert!(errors.to_string().contains("\"cook\" is not a role"), "{errors}");
}

#[test]
fn shared_limits_and_the_event_stream_are_configured_and_checked() {
    let defaults = load_text("", &[]).unwrap();
    assert_eq!((defaults.serving.shared_state, defaults.serving.shared_state_fail_open), (None, false));
    assert_eq!(defaults.events.nats_url, None);
    let env = [
        ("FACTORY_SERVING__SHARED_STATE", "redis://10.0.0.5:6379"),
        ("FACTORY_SERVING__SHARED_STATE_FAILURE", "open"),
        ("FACTORY_EVENTS__NATS_URL", "nats://10.0.0.6:4222"),
        ("FACTORY_EVENTS__SUBJECT_PREFIX", "agency.factory"),
    ];
    let config = load_text("", &env).unwrap();
    assert_eq!(config.serving.shared_state.as_deref(), Some("redis://10.0.0.5:6379"));
    assert!(config.serving.shared_state_fail_open);
    assert_eq!(config.events.nats_url.as_deref(), Some("nats://10.0.0.6:4222"));
    assert_eq!(
        (config.events.stream.as_str(), config.events.subject_prefix.as_str()),
        ("FACTORY_EVENTS", "agency.factory")
    );
    let errors = load_text(
        "[serving]\nshared_state = \"http://x\"\nshared_state_failure = \"maybe\"\n         [events]\nnats_url = \"http://y\"\nstream = \"a.b\"\nsubject_prefix = \"f.>\"\n",
        &[],
    )
    .unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    for key in [
        "serving.shared_state",
        "serving.shared_state_failure",
        "events.nats_url",
        "events.stream",
        "events.subject_prefix",
    ] {
        assert!(keys.contains(&key), "{key} not in {errors}");
    }
}

#[test]
fn toml_syntax_errors_name_the_line() {
    let errors = load_text("listen = \"a\"\n[server\n", &[]).unwrap_err();
    assert!(errors.0[0].key.ends_with("factory.toml:2"), "{errors}");
}

#[test]
fn s3_objects_need_a_bucket() {
    let errors = load_text("[objects]\nkind = \"s3\"\n", &[]).unwrap_err();
    assert_eq!(errors.0[0].key, "objects.s3.bucket");
    let errors = load_text("[objects]\nkind = \"ftp\"\n", &[]).unwrap_err();
    assert!(errors.to_string().contains("expected one of local, s3"), "{errors}");
    let config = load_text("[objects]\nkind = \"s3\"\n[objects.s3]\nbucket = \"b\"\nallow_http = true\n", &[]).unwrap();
    assert!(matches!(config.objects, ObjectSettings::S3(ref s3) if s3.bucket == "b" && s3.allow_http));
}

#[test]
fn orphan_collection_and_lineage_sinks_are_configurable() {
    let config = load_text(
        "[objects]\norphan_grace_secs = 0\norphan_sweep_interval_secs = 0\n[lineage]\nnamespace = \"gov\"\nfile = \"/tmp/l.jsonl\"\nhttp_url = \"http://127.0.0.1:5000/api/v1/lineage\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(config.orphans.grace, Duration::ZERO);
    assert_eq!(config.orphans.sweep_interval, Duration::ZERO);
    assert_eq!(config.lineage.namespace, "gov");
    assert_eq!(config.lineage.file, Some(PathBuf::from("/tmp/l.jsonl")));
    assert_eq!(config.lineage.http_url.as_deref(), Some("http://127.0.0.1:5000/api/v1/lineage"));

    let errors = load_text("[objects]\norphan_grace_secs = -5\n[lineage]\nhttp_url = \"ftp://x\"\n", &[]).unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, vec!["objects.orphan_grace_secs", "lineage.http_url"], "{errors}");
}

#[test]
fn registry_trusts_listed_verifier_keys_and_names_bad_ones() {
    let config = load_text("[registry]\ntrusted_keys = [\"other/models+1a2b3c4d+AQ+D\"]\n", &[]).unwrap();
    assert_eq!(config.registry.trusted_keys, vec!["other/models+1a2b3c4d+AQ+D".to_string()]);
    let errors = load_text("[registry]\ntrusted_keys = [\"ok+1+A\", \"nonsense\", 3]\n", &[]).unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, vec!["registry.trusted_keys[2]", "registry.trusted_keys[1]"], "{errors}");
}

#[test]
fn serving_limits_and_prices_are_read_and_checked() {
    let config = load_text(
        "[serving]\nmax_batch = 4\n[serving.prices]\nbard = { prompt_per_1k = 0.5, completion_per_1k = 2 }\n",
        &[],
    )
    .unwrap();
    assert_eq!((config.serving.max_batch, config.serving.max_waiting), (4, 64));
    assert_eq!(config.serving.prices.get("bard"), Some(&(0.5, 2.0)));
    assert!(!config.serving.kv_cache_half, "full precision by default");
    let errors = load_text("[serving.prices]\nbard = { prompt_per_1k = -1 }\n", &[]).unwrap_err();
    assert_eq!(errors.0[0].key, "serving.prices.bard", "{errors}");
    assert!(load_text("[serving]\nkv_cache = \"f16\"\n", &[]).unwrap().serving.kv_cache_half);
    let errors = load_text("[serving]\nkv_cache = \"int4\"\n", &[]).unwrap_err();
    assert_eq!(errors.0[0].key, "serving.kv_cache", "{errors}");
}

#[test]
fn feedback_metrics_are_declared_with_type_direction_and_level() {
    let config = load_text(
        "[feedback.metrics]\nthumbs = { type = \"boolean\" }\nlatency_ok = { type = \"float\", better = \"lower\", level = \"episode\" }\n",
        &[],
    )
    .unwrap();
    let thumbs = &config.feedback["thumbs"];
    assert_eq!(
        (thumbs.kind.as_str(), thumbs.better.as_str(), thumbs.level.as_str()),
        ("boolean", "higher", "inference")
    );
    assert_eq!(config.feedback["latency_ok"].level, "episode");
    let errors = load_text("[feedback.metrics]\nbad = { type = \"text\" }\n", &[]).unwrap_err();
    assert_eq!(errors.0[0].key, "feedback.metrics.bad", "{errors}");
}

#[test]
fn audit_checkpoints_are_published_under_the_data_dir_unless_configured() {
    let config = Config::load(None, Vec::new(), &FlagOverrides::default()).unwrap();
    assert_eq!(config.audit.checkpoint_dir, None);
    assert_eq!(config.effective_checkpoint_dir(), PathBuf::from("./factory-data/checkpoints"));
    let config = load_text("[audit]\ncheckpoint_dir = \"/witnessed/checkpoints\"\n", &[]).unwrap();
    assert_eq!(config.effective_checkpoint_dir(), PathBuf::from("/witnessed/checkpoints"));
}

#[test]
fn jobs_bound_their_lease_and_the_models_runs_may_train() {
    let config = load_text("", &[]).unwrap();
    assert_eq!((config.jobs.lease.as_secs(), config.jobs.max_model_parameters), (30, 500_000_000));
    let config = load_text("[jobs]\nmax_model_parameters = 1000\n", &[]).unwrap();
    assert_eq!(config.jobs.max_model_parameters, 1000);
    let errors = load_text("[jobs]\nlease_secs = 9223372036854775807\n", &[]).unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["jobs.lease_secs"], "{errors}");
}

#[test]
fn the_cluster_deployment_in_deploy_is_a_valid_configuration() {
    let config = load_text(include_str!("../../../deploy/factory.toml"), &[]).unwrap();
    assert!(matches!(config.objects, ObjectSettings::S3(_)));
    assert!(config.serving.shared_state.is_some() && config.events.nats_url.is_some());
}

#[test]
fn endpoints_elsewhere_are_declared_and_checked() {
    let config =
        load_text("[serving.endpoints]\npool = { urls = [\"http://10.0.0.7:8081/v1\"], jurisdiction = \"eu\" }\n", &[])
            .unwrap();
    let pool = &config.serving.endpoints["pool"];
    assert_eq!((pool.urls.len(), pool.jurisdiction.as_str(), pool.health_path.as_str()), (1, "eu", "/models"));
    for broken in [
        "pool = { urls = [], jurisdiction = \"eu\" }",
        "pool = { urls = [\"ftp://x\"], jurisdiction = \"eu\" }",
        "pool = { urls = [\"http://x/v1\"] }",
        "pool = { urls = [\"http://x/v1\"], jurisdiction = \"eu\", api_key_env = \"HOME\" }",
        "pool = { urls = [\"http://x/v1\"], jurisdiction = \"eu\", colour = \"blue\" }",
    ] {
        let errors = load_text(&format!("[serving.endpoints]\n{broken}\n"), &[]).unwrap_err();
        assert_eq!(errors.0[0].key, "serving.endpoints.pool", "{broken}: {errors}");
    }
}
