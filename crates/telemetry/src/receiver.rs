//! A real OTLP/HTTP traces receiver for tests: it listens on 127.0.0.1, keeps every
//! `POST /v1/traces` body and decodes them with the protocol's own generated types, so tests check
//! what a collector would receive rather than what the exporter was asked to send.
//!
//! It runs on its own thread and runtime because the exporter flushes synchronously when the
//! guard drops: a receiver on the test's runtime could be starved by that very wait. Available to
//! other crates' tests with the `test-receiver` feature.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prost::Message;
use tokio::sync::oneshot;

type Bodies = Arc<Mutex<Vec<Bytes>>>;

/// A span as received, reduced to what tests check.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    pub name: String,
    /// The span's attributes, values rendered as text.
    pub attributes: BTreeMap<String, String>,
    /// The attributes of the resource that sent the span (`service.name`, ...).
    pub resource: BTreeMap<String, String>,
}

/// Listens until dropped.
pub struct TraceReceiver {
    endpoint: String,
    bodies: Bodies,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TraceReceiver {
    /// Binds a free port on 127.0.0.1 and starts serving.
    pub fn start() -> std::io::Result<TraceReceiver> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let endpoint = format!("http://{}/v1/traces", listener.local_addr()?);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let bodies = Bodies::default();
        let app = Router::new().route("/v1/traces", post(keep)).with_state(bodies.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("otlp-receiver".to_string()).spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(_) => return,
                };
                // Stopping drops the runtime and with it any connection still open: the
                // exporter's client keeps idle connections alive, which would stall a
                // graceful shutdown.
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
        })?;
        Ok(TraceReceiver { endpoint, bodies, stop: Some(stop), thread: Some(thread) })
    }

    /// The URL to export to, such as `http://127.0.0.1:PORT/v1/traces`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// How many export requests arrived.
    pub fn requests(&self) -> usize {
        self.bodies.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Result<Vec<ReceivedSpan>, prost::DecodeError> {
        let bodies = self.bodies.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut spans = Vec::new();
        for body in bodies {
            let request = ExportTraceServiceRequest::decode(body)?;
            for resource_spans in request.resource_spans {
                let resource =
                    resource_spans.resource.map(|resource| attributes(&resource.attributes)).unwrap_or_default();
                for scope_spans in resource_spans.scope_spans {
                    for span in scope_spans.spans {
                        spans.push(ReceivedSpan {
                            name: span.name,
                            attributes: attributes(&span.attributes),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        Ok(spans)
    }
}

impl Drop for TraceReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn keep(State(bodies): State<Bodies>, body: Bytes) -> StatusCode {
    bodies.lock().unwrap_or_else(PoisonError::into_inner).push(body);
    StatusCode::OK
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter().map(|pair| (pair.key.clone(), text(pair.value.as_ref()))).collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
