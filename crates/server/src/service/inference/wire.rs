//! OpenAI's JSON on the wire, for whatever answers in its name: the request bodies of
//! `/v1/completions` and `/v1/chat/completions` decoded into an [`Inference`], and a whole
//! answer encoded as `text_completion` or `chat.completion`. The HTTP handlers and the Batch
//! API (whose input lines are such bodies and whose output lines hold such answers) share them.

use factory_engine::Usage;
use serde::Deserialize;

use super::tools::Tools;
use super::{
    invalid_param, Call, CallKind, ChatMessage, Choice, Completion, Inference, OneOrMany, Sampling, TokenLogprobs,
};
use crate::service_error::ServiceError;

#[derive(Debug, Deserialize)]
pub(crate) struct CompletionRequest {
    model: String,
    prompt: OneOrMany,
    #[serde(flatten)]
    sampling: Sampling,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    model: String,
    pub(crate) messages: Vec<ChatMessage>,
    #[serde(flatten)]
    sampling: Sampling,
}

fn invalid_body(error: serde_json::Error) -> ServiceError {
    ServiceError::invalid(format!("request body: {error}"))
}

impl Inference {
    /// A `/v1/completions` body.
    pub fn completion(raw: serde_json::Value, episode: Option<String>) -> Result<Inference, ServiceError> {
        let body: CompletionRequest = serde_json::from_value(raw.clone()).map_err(invalid_body)?;
        let prompts = body.prompt.into_vec();
        let [prompt] = prompts.as_slice() else {
            return Err(invalid_param("prompt", "give one prompt (a string)"));
        };
        Ok(Inference {
            deployment: body.model,
            call: Call::Completion(prompt.clone()),
            sampling: body.sampling,
            raw,
            episode,
            tools: None,
            priority: Default::default(),
        })
    }

    /// A `/v1/chat/completions` body.
    pub fn chat(raw: serde_json::Value, episode: Option<String>) -> Result<Inference, ServiceError> {
        let body: ChatRequest = serde_json::from_value(raw.clone()).map_err(invalid_body)?;
        if body.messages.is_empty() {
            return Err(invalid_param("messages", "give at least one message"));
        }
        for (index, message) in body.messages.iter().enumerate() {
            if !matches!(message.role.as_str(), "system" | "user" | "assistant" | "developer" | "tool") {
                let field = format!("messages[{index}].role");
                return Err(invalid_param(&field, &format!("unknown role {:?}", message.role)));
            }
        }
        let tools = Tools::from_request(&raw)?;
        Ok(Inference {
            deployment: body.model,
            call: Call::Chat(body.messages),
            sampling: body.sampling,
            raw,
            episode,
            tools,
            priority: Default::default(),
        })
    }
}

pub fn object(kind: CallKind, chunk: bool) -> &'static str {
    match (kind, chunk) {
        (CallKind::Completion, _) => "text_completion",
        (CallKind::Chat, false) => "chat.completion",
        (CallKind::Chat, true) => "chat.completion.chunk",
    }
}

pub fn usage_json(usage: &Usage) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": usage.cached_tokens },
    })
}

/// A whole answer as OpenAI's `text_completion` or `chat.completion`. An upstream's own JSON is
/// passed on (with our id and model), with the text an output guardrail rewrote.
pub fn whole_json(completion: Completion) -> serde_json::Value {
    let Completion { head, choices, usage, upstream_body, rewritten, .. } = completion;
    if let Some(mut json) = upstream_body {
        if rewritten {
            for (index, choice) in choices.into_iter().enumerate() {
                let pointer = match head.kind {
                    CallKind::Chat => format!("/choices/{index}/message/content"),
                    CallKind::Completion => format!("/choices/{index}/text"),
                };
                if let Some(slot) = json.pointer_mut(&pointer) {
                    *slot = serde_json::Value::String(choice.text);
                }
                if choice.finish_reason.as_deref() == Some("content_filter") {
                    json["choices"][index]["finish_reason"] = "content_filter".into();
                }
            }
        }
        return json;
    }
    let choices: Vec<serde_json::Value> = choices
        .into_iter()
        .enumerate()
        .map(|(index, Choice { text, finish_reason, logprobs, tool_calls })| {
            let logprobs = logprobs_json(head.kind, logprobs.as_deref(), 0);
            match head.kind {
                CallKind::Completion => serde_json::json!({
                    "index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason,
                }),
                CallKind::Chat => {
                    // OpenAI's shape: content null beside tool calls and no empty list without them.
                    let mut message = serde_json::json!({ "role": "assistant", "content": text });
                    if !tool_calls.is_empty() {
                        if text.is_empty() {
                            message["content"] = serde_json::Value::Null;
                        }
                        message["tool_calls"] = serde_json::json!(tool_calls);
                    }
                    serde_json::json!({
                        "index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason,
                    })
                }
            }
        })
        .collect();
    serde_json::json!({
        "id": head.id, "object": object(head.kind, false), "created": head.created, "model": head.model,
        "choices": choices, "usage": usage_json(&usage),
    })
}

/// Log-probabilities in the shape of the call's API: chat's `content` entries (each token with
/// its UTF-8 bytes and its alternatives), or the completions API's parallel lists (tokens, their
/// log-probabilities, alternatives by token, and each token's offset in the text from `offset`).
/// `null` when the request did not ask.
pub fn logprobs_json(kind: CallKind, entries: Option<&[TokenLogprobs]>, offset: usize) -> serde_json::Value {
    let Some(entries) = entries else { return serde_json::Value::Null };
    let described = |token: &str, logprob: f32| serde_json::json!({ "token": token, "logprob": logprob, "bytes": token.as_bytes() });
    match kind {
        CallKind::Chat => {
            let content: Vec<serde_json::Value> = entries
                .iter()
                .map(|entry| {
                    let mut described_entry = described(&entry.token, entry.logprob);
                    let top: Vec<serde_json::Value> =
                        entry.top.iter().map(|(token, logprob)| described(token, *logprob)).collect();
                    described_entry["top_logprobs"] = top.into();
                    described_entry
                })
                .collect();
            serde_json::json!({ "content": content })
        }
        CallKind::Completion => {
            let mut offsets = Vec::with_capacity(entries.len());
            let mut at = offset;
            for entry in entries {
                offsets.push(at);
                at += entry.token.len();
            }
            let top: Vec<serde_json::Map<String, serde_json::Value>> = entries
                .iter()
                .map(|entry| entry.top.iter().map(|(token, logprob)| (token.clone(), (*logprob).into())).collect())
                .collect();
            serde_json::json!({
                "tokens": entries.iter().map(|entry| entry.token.as_str()).collect::<Vec<_>>(),
                "token_logprobs": entries.iter().map(|entry| entry.logprob).collect::<Vec<_>>(),
                "top_logprobs": top,
                "text_offset": offsets,
            })
        }
    }
}
