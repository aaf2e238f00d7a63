//! The OpenAI-compatible API on the wire: `/v1/models`, `/v1/completions`,
//! `/v1/chat/completions` and `/v1/embeddings`, plain or streamed as server-sent events ending
//! in `data: [DONE]`. `model` names a deployment of the caller's tenant. Each handler decodes
//! the body, calls one use case of `service::inference` (which authorizes, routes, guards,
//! answers and meters) and encodes its typed answer: OpenAI's JSON shapes, or its event stream.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use factory_engine::Usage;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::{ApiJson, Caller};
use crate::service::inference::local::finish_name;
use crate::service::inference::plan::tenant_of_key;
use crate::service::inference::wire::{logprobs_json, object, usage_json, whole_json};
use crate::service::inference::{
    self, invalid_param, AnswerHead, Answered, CallKind, Completion, Embedding, Inference, OneOrMany, TokenEvent,
};
use crate::state::AppState;

const EPISODE_HEADER: &str = "x-episode-id";
const VARIANT_HEADER: &str = "x-factory-model";

#[derive(Debug, Serialize)]
struct ModelObject {
    id: String,
    object: &'static str,
    created: i64,
    owned_by: String,
}

pub async fn models(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let tenant = tenant_of_key(&caller)?;
    let data: Vec<ModelObject> = crate::service::deployments::list(&state, &caller, &tenant)
        .await?
        .into_iter()
        .map(|d| ModelObject {
            id: d.name,
            object: "model",
            created: d.created_at / 1000,
            owned_by: tenant.to_string(),
        })
        .collect();
    Ok(Json(serde_json::json!({ "object": "list", "data": data })).into_response())
}

fn episode(headers: &HeaderMap) -> Option<String> {
    headers.get(EPISODE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string)
}

pub async fn completions(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(raw): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let request = Inference::completion(raw, episode(&headers))?;
    complete(&state, &caller, request).await
}

pub async fn chat_completions(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(raw): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let request = Inference::chat(raw, episode(&headers))?;
    complete(&state, &caller, request).await
}

/// Calls the use case and encodes its answer as the client asked: JSON, or events.
async fn complete(state: &AppState, caller: &Caller, request: Inference) -> Result<Response, ApiError> {
    let wants_stream = request.sampling.stream;
    let include_usage = request.sampling.include_usage();
    let response = match inference::complete(state, caller, request).await? {
        Answered::Whole(completion) if wants_stream => {
            // Generated whole (output guardrails needed all of it), sent as its stream would
            // have been.
            let events = whole_as_events(&completion, include_usage);
            let mut response = ([(header::CONTENT_TYPE, "text/event-stream")], events).into_response();
            with_variant(&mut response, &completion.variant);
            response
        }
        Answered::Whole(completion) => {
            let variant = completion.variant.clone();
            let mut response = Json(whole_json(completion)).into_response();
            with_variant(&mut response, &variant);
            response
        }
        Answered::Tokens { head, variant, choices, events } => {
            event_stream(&variant, Body::from_stream(token_events(head, choices, events, include_usage)))
        }
        Answered::Relayed { variant, events } => event_stream(&variant, Body::from_stream(events)),
        Answered::Refused { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    };
    Ok(response)
}

fn with_variant(response: &mut Response, variant: &str) {
    let value = HeaderValue::from_str(variant).unwrap_or(HeaderValue::from_static("-"));
    response.headers_mut().insert(VARIANT_HEADER, value);
}

fn event_stream(variant: &str, body: Body) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    let mut response = (headers, body).into_response();
    with_variant(&mut response, variant);
    response
}

/// One event of a streamed answer: a piece of text (with its tokens' log-probabilities when
/// asked), or the end with its finish reason.
fn chunk(
    head: &AnswerHead,
    index: usize,
    text: Option<&str>,
    reason: Option<&str>,
    first: bool,
    logprobs: serde_json::Value,
) -> serde_json::Value {
    let choice = match head.kind {
        CallKind::Completion => serde_json::json!({
            "index": index, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": reason,
        }),
        CallKind::Chat => {
            let mut delta = serde_json::Map::new();
            if first {
                delta.insert("role".into(), "assistant".into());
            }
            if let Some(text) = text {
                delta.insert("content".into(), text.into());
            }
            serde_json::json!({ "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason })
        }
    };
    serde_json::json!({
        "id": head.id, "object": object(head.kind, true), "created": head.created, "model": head.model,
        "choices": [choice],
    })
}

/// A streamed piece of a tool call: its start (id and name, empty arguments) or more arguments.
fn tool_call_chunk(head: &AnswerHead, index: usize, call: serde_json::Value, first: bool) -> serde_json::Value {
    let mut delta = serde_json::json!({ "tool_calls": [call] });
    if first {
        delta["role"] = "assistant".into();
    }
    serde_json::json!({
        "id": head.id, "object": object(head.kind, true), "created": head.created, "model": head.model,
        "choices": [{ "index": index, "delta": delta, "logprobs": null, "finish_reason": null }],
    })
}

fn usage_chunk(head: &AnswerHead, usage: &Usage) -> serde_json::Value {
    serde_json::json!({
        "id": head.id, "object": object(head.kind, true), "created": head.created, "model": head.model,
        "choices": [], "usage": usage_json(usage),
    })
}

fn data(value: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// A whole answer as the events a stream of it would have been.
fn whole_as_events(completion: &Completion, include_usage: bool) -> Bytes {
    let head = &completion.head;
    let mut out = Vec::new();
    for (index, choice) in completion.choices.iter().enumerate() {
        let logprobs = logprobs_json(head.kind, choice.logprobs.as_deref(), 0);
        out.extend_from_slice(&data(&chunk(head, index, Some(&choice.text), None, true, logprobs)));
        for (call_index, call) in choice.tool_calls.iter().enumerate() {
            let mut call = serde_json::json!(call);
            call["index"] = call_index.into();
            out.extend_from_slice(&data(&tool_call_chunk(head, index, call, false)));
        }
        let last = chunk(head, index, None, choice.finish_reason.as_deref(), false, serde_json::Value::Null);
        out.extend_from_slice(&data(&last));
    }
    if include_usage {
        out.extend_from_slice(&data(&usage_chunk(head, &completion.usage)));
    }
    out.extend_from_slice(DONE);
    Bytes::from(out)
}

/// Where each choice of a stream stands.
#[derive(Clone, Copy)]
struct ChoiceStream {
    /// No chunk of this choice was sent yet (its first carries the role).
    first: bool,
    /// The text's length so far: where the next token's offset starts.
    offset: usize,
}

/// A local engine's token events (each with its choice's index) as server-sent events; the
/// usage (the prompt once, every choice's tokens) and `[DONE]` follow the last choice's end.
/// Dropping the stream (the client hung up) drops the engine's receivers, which the engine
/// notices at its next step.
fn token_events(
    head: AnswerHead,
    choices: usize,
    events: BoxStream<'static, (usize, TokenEvent)>,
    include_usage: bool,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let streams = vec![ChoiceStream { first: true, offset: 0 }; choices];
    // (events, head, each choice's state, choices not yet ended, the usage so far, ended)
    let state = (events, head, streams, choices, Usage::default(), false);
    futures::stream::unfold(state, move |(mut events, head, mut streams, mut left, mut usage, done)| async move {
        if done {
            return None;
        }
        let (index, event) = events.next().await?;
        let Some(stream) = streams.get_mut(index) else {
            return Some((Ok(Bytes::new()), (events, head, streams, left, usage, false)));
        };
        let first = stream.first;
        let mut done = false;
        let bytes = match event {
            TokenEvent::Delta { text, logprob: None } if text.is_empty() && !first => Bytes::new(),
            TokenEvent::Delta { text, logprob } => {
                let logprobs = logprobs_json(head.kind, logprob.as_ref().map(std::slice::from_ref), stream.offset);
                stream.offset += text.len();
                stream.first = false;
                data(&chunk(&head, index, Some(&text), None, first, logprobs))
            }
            TokenEvent::ToolCallStarted { index: call, id, name } => {
                let call = serde_json::json!({
                    "index": call, "id": id, "type": "function", "function": { "name": name, "arguments": "" },
                });
                stream.first = false;
                data(&tool_call_chunk(&head, index, call, first))
            }
            TokenEvent::ToolArguments { index: call, fragment } => {
                let call = serde_json::json!({ "index": call, "function": { "arguments": fragment } });
                stream.first = false;
                data(&tool_call_chunk(&head, index, call, first))
            }
            TokenEvent::Done { reason, usage: choice_usage, called_tools } => {
                let reason = finish_name(reason, called_tools);
                stream.first = false;
                let end = chunk(&head, index, None, Some(reason), first, serde_json::Value::Null);
                let mut out = data(&end).to_vec();
                usage.prompt_tokens = choice_usage.prompt_tokens;
                usage.cached_tokens = choice_usage.cached_tokens;
                usage.completion_tokens += choice_usage.completion_tokens;
                left = left.saturating_sub(1);
                if left == 0 {
                    if include_usage {
                        out.extend_from_slice(&data(&usage_chunk(&head, &usage)));
                    }
                    out.extend_from_slice(DONE);
                    done = true;
                }
                Bytes::from(out)
            }
            TokenEvent::Failed(message) => {
                let error = serde_json::json!({ "error": { "message": message, "type": "server_error", "code": "generation_failed" } });
                let mut out = data(&error).to_vec();
                out.extend_from_slice(DONE);
                done = true;
                Bytes::from(out)
            }
            TokenEvent::Vanished => {
                done = true;
                Bytes::from_static(DONE)
            }
        };
        Some((Ok(bytes), (events, head, streams, left, usage, done)))
    })
    .filter(|chunk| std::future::ready(!matches!(chunk, Ok(bytes) if bytes.is_empty())))
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: OneOrMany,
    /// `float` (default) or `base64` (little-endian f32, what the official SDKs ask for).
    pub encoding_format: Option<String>,
}

pub async fn embeddings(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    let inputs = body.input.into_vec();
    // The inputs are checked first, then the encoding: a request wrong in both names `input`.
    inference::check_embedding_inputs(&inputs)?;
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(invalid_param("encoding_format", &format!("{other:?} is not float or base64")).into())
        }
    };
    let request = Embedding { deployment: body.model.clone(), inputs, episode: episode(&headers) };
    let embedded = inference::embed(&state, &caller, request).await?;
    let data: Vec<serde_json::Value> = embedded
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                serde_json::Value::String(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes))
            } else {
                serde_json::json!(vector)
            };
            serde_json::json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    let tokens = embedded.prompt_tokens;
    let mut response = Json(serde_json::json!({
        "object": "list", "data": data, "model": body.model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&embedded.variant) {
        response.headers_mut().insert(VARIANT_HEADER, value);
    }
    Ok(response)
}
