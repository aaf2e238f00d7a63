//! The factory's events on NATS JetStream, and the messages that trigger pipelines.
//!
//! Subjects, under a configured prefix:
//! - `<prefix>.events.<tenant>.<topic>`: each outbox event, with the outbox id as
//!   `Nats-Msg-Id`, so JetStream drops a republished event within its duplicate window (a
//!   publisher that crashed between the server's acknowledgement and storing its cursor).
//!   Platform events (no tenant) go under `_platform`.
//! - `<prefix>.triggers.<tenant>.<name>`: published by other systems to start the tenant's
//!   pipelines that declare `subject = "<name>"`. The tenant is a subject token, so a
//!   publisher's permissions on the NATS server decide whose pipelines it may start.
//!
//! One stream holds both (`<prefix>.>`), so triggers wait in it while no worker is up.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EventStreamError(pub String);

fn failed(error: impl std::fmt::Display) -> EventStreamError {
    EventStreamError(error.to_string())
}

/// How long a republished event is recognised as a duplicate.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// The durable consumer through which workers share the trigger messages.
const TRIGGER_CONSUMER: &str = "factory-pipeline-triggers";
/// Trigger payloads past this are passed on as absent rather than parsed.
pub const MAX_TRIGGER_PAYLOAD: usize = 64 * 1024;

/// One outbox event to publish.
#[derive(Debug, Clone)]
pub struct OutgoingEvent {
    pub id: i64,
    pub tenant: Option<String>,
    pub topic: String,
    pub payload: Bytes,
}

/// What publishing a batch achieved: events the stream acknowledged (in order), how many of
/// those it already held, and the error that stopped it early, if any.
#[derive(Debug, Default)]
pub struct Published {
    pub acknowledged: usize,
    pub duplicates: usize,
    pub error: Option<String>,
}

/// A message asking to start a tenant's pipelines.
pub struct TriggerMessage {
    pub tenant: String,
    pub name: String,
    /// The stream's sequence number: the same message redelivered keeps it.
    pub sequence: u64,
    pub payload: Option<serde_json::Value>,
    message: jetstream::Message,
}

impl TriggerMessage {
    /// Tells the stream the message was handled; until then it is redelivered.
    pub async fn acknowledge(&self) -> Result<(), EventStreamError> {
        self.message.ack().await.map_err(failed)
    }
}

/// Replaces what cannot stand in a subject token (dots, spaces, wildcards).
fn token(text: &str) -> String {
    let token: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    if token.is_empty() {
        "_".to_string()
    } else {
        token
    }
}

pub struct EventStream {
    client: async_nats::Client,
    context: jetstream::Context,
    stream: String,
    prefix: String,
    /// The trigger consumer, looked up (or created) once rather than on every poll.
    triggers: tokio::sync::OnceCell<consumer::PullConsumer>,
}

impl EventStream {
    /// Connects and makes sure the stream exists.
    pub async fn connect(url: &str, stream_name: &str, prefix: &str) -> Result<EventStream, EventStreamError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(Duration::from_secs(5)))
            .connect(url)
            .await
            .map_err(failed)?;
        let context = jetstream::new(client.clone());
        let config = stream::Config {
            name: stream_name.to_string(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: DUPLICATE_WINDOW,
            storage: stream::StorageType::File,
            ..stream::Config::default()
        };
        context.get_or_create_stream(config).await.map_err(failed)?;
        Ok(EventStream {
            client,
            context,
            stream: stream_name.to_string(),
            prefix: prefix.to_string(),
            triggers: tokio::sync::OnceCell::new(),
        })
    }

    /// `<prefix>.events.<tenant>.<topic>`; each of the topic's dotted parts stays a token.
    pub fn event_subject(&self, tenant: Option<&str>, topic: &str) -> String {
        let tenant = tenant.map(token).unwrap_or_else(|| "_platform".to_string());
        let topic: Vec<String> = topic.split('.').map(token).collect();
        format!("{}.events.{tenant}.{}", self.prefix, topic.join("."))
    }

    /// `<prefix>.triggers.<tenant>.<name>`.
    pub fn trigger_subject(&self, tenant: &str, name: &str) -> String {
        format!("{}.triggers.{}.{}", self.prefix, token(tenant), token(name))
    }

    /// Publishes `events` in order: all are sent, then their acknowledgements awaited in order,
    /// so a batch costs one round trip, not one per event. Stops at the first failure; what was
    /// acknowledged before it stays acknowledged.
    pub async fn publish(&self, events: &[OutgoingEvent]) -> Published {
        let mut pending = Vec::with_capacity(events.len());
        let mut published = Published::default();
        for event in events {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, event.id.to_string().as_str());
            let subject = self.event_subject(event.tenant.as_deref(), &event.topic);
            match self.context.publish_with_headers(subject, headers, event.payload.clone()).await {
                Ok(acknowledgement) => pending.push(acknowledgement),
                Err(error) => {
                    published.error = Some(error.to_string());
                    break;
                }
            }
        }
        for acknowledgement in pending {
            match acknowledgement.await {
                Ok(ack) => {
                    published.acknowledged += 1;
                    published.duplicates += usize::from(ack.duplicate);
                }
                Err(error) => {
                    published.error = Some(error.to_string());
                    break;
                }
            }
        }
        published
    }

    /// Publishes a trigger message (what another system does to start a tenant's pipelines).
    pub async fn publish_trigger(&self, tenant: &str, name: &str, payload: Bytes) -> Result<u64, EventStreamError> {
        let ack = self.context.publish(self.trigger_subject(tenant, name), payload).await.map_err(failed)?;
        Ok(ack.await.map_err(failed)?.sequence)
    }

    /// Waits up to `wait` for trigger messages and returns up to `max` of them, unacknowledged.
    /// Workers share one durable consumer, so each message goes to one of them at a time; one
    /// not acknowledged within a minute is delivered again.
    pub async fn next_triggers(&self, max: usize, wait: Duration) -> Result<Vec<TriggerMessage>, EventStreamError> {
        let consumer = self
            .triggers
            .get_or_try_init(|| async {
                let stream = self.context.get_stream(&self.stream).await.map_err(failed)?;
                let config = consumer::pull::Config {
                    durable_name: Some(TRIGGER_CONSUMER.to_string()),
                    filter_subject: format!("{}.triggers.>", self.prefix),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(60),
                    ..consumer::pull::Config::default()
                };
                stream.get_or_create_consumer(TRIGGER_CONSUMER, config).await.map_err(failed)
            })
            .await?;
        let mut batch = consumer.fetch().max_messages(max).expires(wait).messages().await.map_err(failed)?;
        let mut triggers = Vec::new();
        let prefix = format!("{}.triggers.", self.prefix);
        while let Some(message) = batch.next().await {
            let message = message.map_err(failed)?;
            let sequence = message.info().map(|info| info.stream_sequence).map_err(failed)?;
            let Some((tenant, name)) = message.subject.strip_prefix(&prefix).and_then(|rest| rest.split_once('.'))
            else {
                // Not a trigger this factory understands: acknowledged so it is not redelivered.
                message.ack().await.map_err(failed)?;
                continue;
            };
            let payload = (message.payload.len() <= MAX_TRIGGER_PAYLOAD)
                .then(|| serde_json::from_slice::<serde_json::Value>(&message.payload).ok())
                .flatten();
            let (tenant, name) = (tenant.to_string(), name.to_string());
            triggers.push(TriggerMessage { tenant, name, sequence, payload, message });
        }
        Ok(triggers)
    }

    /// Whether the server answers and the stream exists, for `factory doctor`.
    pub async fn check(&self) -> Result<u64, EventStreamError> {
        self.client.flush().await.map_err(failed)?;
        let mut stream = self.context.get_stream(&self.stream).await.map_err(failed)?;
        Ok(stream.info().await.map_err(failed)?.state.messages)
    }
}
