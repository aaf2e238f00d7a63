//! The outbox's events published to NATS JetStream (`[events] nats_url`), by the worker role's
//! dispatcher like any other subscriber: at least once, in commit order, resuming from its
//! durable cursor after a crash; the outbox id as `Nats-Msg-Id` lets JetStream drop what a
//! crashed publisher sends again (`factory_cluster::jetstream`).

use std::sync::Arc;

use factory_cluster::jetstream::{EventStream, OutgoingEvent};
use factory_config::EventSettings;
use factory_store::outbox::{DeliveredEvent, Subscriber};

use crate::metrics::Metrics;

/// The connection to the stream, made when first needed and again after it failed, shared by the
/// publisher and the pipelines' trigger listener.
pub struct NatsLink {
    settings: EventSettings,
    url: String,
    stream: tokio::sync::Mutex<Option<Arc<EventStream>>>,
}

impl NatsLink {
    pub fn from_config(settings: &EventSettings) -> Option<Arc<NatsLink>> {
        let url = settings.nats_url.clone()?;
        Some(Arc::new(NatsLink { settings: settings.clone(), url, stream: tokio::sync::Mutex::default() }))
    }

    pub async fn stream(&self) -> Result<Arc<EventStream>, String> {
        let mut stream = self.stream.lock().await;
        if let Some(stream) = stream.as_ref() {
            return Ok(stream.clone());
        }
        let connected = EventStream::connect(&self.url, &self.settings.stream, &self.settings.subject_prefix)
            .await
            .map_err(|error| format!("NATS at {}: {error}", self.url))?;
        let connected = Arc::new(connected);
        *stream = Some(connected.clone());
        Ok(connected)
    }
}

/// Publishes every outbox event to the stream.
pub struct JetStreamPublisher {
    pub link: Arc<NatsLink>,
    pub metrics: Arc<Metrics>,
}

#[async_trait::async_trait]
impl Subscriber for JetStreamPublisher {
    fn name(&self) -> &str {
        "nats-jetstream"
    }

    async fn handle(&self, event: &DeliveredEvent) -> Result<(), String> {
        self.handle_batch(std::slice::from_ref(event)).await.map_err(|(_, message)| message)
    }

    async fn handle_batch(&self, events: &[DeliveredEvent]) -> Result<(), (usize, String)> {
        let stream = self.link.stream().await.map_err(|message| {
            self.metrics.cluster.event_publish_failures.inc();
            (0, message)
        })?;
        let outgoing: Vec<OutgoingEvent> = events
            .iter()
            .map(|event| OutgoingEvent {
                id: event.id,
                tenant: event.payload["tenant"].as_str().map(str::to_string),
                topic: event.topic.clone(),
                payload: serde_json::to_vec(&published_body(event)).unwrap_or_default().into(),
            })
            .collect();
        let published = stream.publish(&outgoing).await;
        let cluster = &self.metrics.cluster;
        cluster.events_published.inc_by(published.acknowledged as u64);
        cluster.events_duplicate.inc_by(published.duplicates as u64);
        match published.error {
            None => Ok(()),
            Some(error) => {
                cluster.event_publish_failures.inc();
                Err((published.acknowledged, format!("publishing to JetStream: {error}")))
            }
        }
    }
}

/// What a consumer of the stream receives: the event and where it sits in the audit log (to
/// check against a signed checkpoint).
fn published_body(event: &DeliveredEvent) -> serde_json::Value {
    serde_json::json!({
        "id": event.id,
        "topic": event.topic,
        "idempotency_key": event.idempotency_key,
        "audit_index": event.audit_index,
        "payload": event.payload,
    })
}
