//! A throwaway S3-compatible server for the S3 adapter's tests.
//!
//! Mocking the S3 client would only test our assumptions about S3, so the tests run against
//! moto's `moto_server`, a real HTTP implementation of the S3 API. It is an optional test-time
//! tool: when it is not installed the S3 test says so loudly and skips.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running `moto_server`, killed when dropped.
pub struct MotoServer {
    child: Child,
    port: u16,
}

impl MotoServer {
    /// Where `moto_server` is on PATH, if anywhere.
    pub fn locate() -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).map(|dir| dir.join("moto_server")).find(|candidate| candidate.is_file())
    }

    /// Starts a server on a free loopback port and waits until it answers.
    pub async fn start(program: &PathBuf) -> Result<Self, String> {
        // The free port is found by binding and releasing it, so another process can grab it in
        // between; a server that exits at once is retried on a fresh port
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            let child = Command::new(program)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot spawn {}: {e}", program.display()))?;
            let mut server = Self { child, port };
            match server.wait_ready().await {
                Ok(()) => return Ok(server),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("moto_server exited early with {status}"));
            }
            if let Ok((status, _)) = self.request("GET", "/").await {
                if status == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err("moto_server did not answer within 60 s".to_string())
    }

    /// Sends one bodiless HTTP/1.1 request and returns the status code and body. moto accepts
    /// unsigned requests, which is all bucket setup and inspection need, so no HTTP client
    /// dependency is pulled in for it.
    pub async fn request(&self, method: &str, target: &str) -> Result<(u16, String), String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await.map_err(|e| format!("connect: {e}"))?;
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.map_err(|e| format!("receive: {e}"))?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| format!("malformed response: {response:?}"))?;
        let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
        Ok((status, body))
    }

    pub async fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        match self.request("PUT", &format!("/{bucket}")).await? {
            (200, _) => Ok(()),
            (status, body) => Err(format!("create bucket {bucket}: HTTP {status}: {body}")),
        }
    }

    /// Multipart uploads that were started and neither completed nor aborted: parts an
    /// object listing cannot show but that still cost storage.
    pub async fn pending_multipart_uploads(&self, bucket: &str) -> Result<usize, String> {
        match self.request("GET", &format!("/{bucket}?uploads")).await? {
            (200, body) => Ok(body.matches("<Upload>").count()),
            (status, body) => Err(format!("list uploads: HTTP {status}: {body}")),
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind a free port: {e}"))?;
    listener.local_addr().map(|addr| addr.port()).map_err(|e| format!("cannot read bound port: {e}"))
}
