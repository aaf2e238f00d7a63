//! Serving endpoints elsewhere: pools of OpenAI-compatible servers inside the border (other
//! factory gateways, or any server an operator runs) that a deployment variant names
//! (`{"endpoint": "gpu-pool", "model": "bard"}`), declared in `[serving.endpoints.NAME]`.
//!
//! Each request goes to the healthy replica with the fewest requests outstanding from this
//! gateway (ties by turn). Replicas are checked every two seconds (`GET <url><health_path>`;
//! any answer below 500 is alive, so a server that wants a key still counts) and marked down at
//! once when a request cannot reach them. A replica that drains (a factory gateway stops
//! accepting connections on SIGTERM) fails its check and gets no new requests while the ones it
//! holds finish.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use factory_config::EndpointSettings;
use tokio::sync::watch;

/// How often replicas are checked, and how long a check may take.
const CHECK_EVERY: Duration = Duration::from_secs(2);
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Replica {
    pub url: String,
    healthy: AtomicBool,
    outstanding: AtomicUsize,
}

impl Replica {
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Marks the replica down until its next check passes (it could not be reached).
    pub fn mark_down(&self) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(url = %self.url, "an endpoint replica could not be reached; marked down");
        }
    }
}

pub struct Endpoint {
    pub settings: EndpointSettings,
    pub replicas: Vec<Arc<Replica>>,
    turn: AtomicUsize,
}

/// A request outstanding on a replica: counted until dropped.
pub struct Outstanding {
    pub replica: Arc<Replica>,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.replica.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Endpoint {
    /// The healthy replica with the fewest requests outstanding, counted as one more.
    pub fn pick(&self) -> Option<Outstanding> {
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let count = self.replicas.len();
        let replica = (0..count)
            .map(|offset| &self.replicas[(start + offset) % count])
            .filter(|replica| replica.healthy())
            .min_by_key(|replica| replica.outstanding())?
            .clone();
        replica.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(Outstanding { replica })
    }
}

/// Every endpoint the configuration declares, by name.
#[derive(Default)]
pub struct Endpoints {
    by_name: BTreeMap<String, Endpoint>,
}

impl Endpoints {
    pub fn from_config(endpoints: &BTreeMap<String, EndpointSettings>) -> Self {
        let by_name = endpoints
            .iter()
            .map(|(name, settings)| {
                let replicas = settings
                    .urls
                    .iter()
                    .map(|url| {
                        let url = url.trim_end_matches('/').to_string();
                        Arc::new(Replica { url, healthy: AtomicBool::new(true), outstanding: AtomicUsize::new(0) })
                    })
                    .collect();
                (name.clone(), Endpoint { settings: settings.clone(), replicas, turn: AtomicUsize::new(0) })
            })
            .collect();
        Endpoints { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Endpoint> {
        self.by_name.get(name)
    }

    /// Whether `url` is a replica of a declared endpoint (the operator named it: requests may
    /// go there without an `upstreams` entry).
    pub fn declares(&self, url: &str) -> bool {
        self.by_name.values().flat_map(|endpoint| &endpoint.replicas).any(|replica| url.starts_with(&replica.url))
    }

    /// Checks every replica until `stop`.
    pub async fn watch(self: Arc<Self>, client: reqwest::Client, mut stop: watch::Receiver<bool>) {
        if self.by_name.is_empty() {
            return;
        }
        loop {
            for endpoint in self.by_name.values() {
                for replica in &endpoint.replicas {
                    let url = format!("{}{}", replica.url, endpoint.settings.health_path);
                    let alive = client
                        .get(&url)
                        .timeout(CHECK_TIMEOUT)
                        .send()
                        .await
                        .is_ok_and(|answer| answer.status().as_u16() < 500);
                    if alive != replica.healthy.swap(alive, Ordering::Relaxed) {
                        tracing::info!(url = %replica.url, alive, "an endpoint replica changed state");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pool(urls: &[&str]) -> Endpoints {
        let settings = EndpointSettings {
            urls: urls.iter().map(|url| url.to_string()).collect(),
            jurisdiction: "eu".to_string(),
            api_key_env: None,
            health_path: "/models".to_string(),
        };
        Endpoints::from_config(&BTreeMap::from([("pool".to_string(), settings)]))
    }

    #[test]
    fn requests_go_to_the_healthy_replica_with_the_fewest_outstanding() {
        let endpoints = pool(&["http://a/v1", "http://b/v1/"]);
        let endpoint = endpoints.get("pool").unwrap();
        let first = endpoint.pick().unwrap();
        let second = endpoint.pick().unwrap();
        assert_ne!(first.replica.url, second.replica.url, "the second goes where none is outstanding");
        drop(first);
        let third = endpoint.pick().unwrap();
        assert_ne!(third.replica.url, second.replica.url);
        // One marked down takes nothing until it passes a check again.
        second.replica.mark_down();
        let picks: Vec<String> = (0..4).map(|_| endpoint.pick().unwrap().replica.url.clone()).collect();
        assert!(picks.iter().all(|url| *url == third.replica.url), "{picks:?}");
        third.replica.mark_down();
        assert!(endpoint.pick().is_none());
        assert!(endpoints.declares("http://b/v1/chat/completions") && !endpoints.declares("http://c/v1"));
    }
}
