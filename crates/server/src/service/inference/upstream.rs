//! Answering through an OpenAI-compatible upstream: the client's request (guarded, with the
//! upstream's model name) is sent under the variant's timeout (to the first byte when
//! streaming). A whole answer comes back typed, an event stream is relayed event by event and
//! metered as it goes. The upstream's 4xx answers are the client's to see; anything else that
//! fails is a reason to try the next variant.

use bytes::Bytes;
use factory_engine::{FinishReason, Timings, Usage};
use futures::StreamExt;

use super::{AnswerHead, Answered, CallKind, Choice, Completion, Inference};
use crate::inference_log::Meter;
use crate::service_error::{ErrorKind, ServiceError};
use crate::serving::{EndpointVariant, UpstreamSpec};
use crate::state::AppState;

/// The replica of `endpoint`'s pool to send a request to (the healthy one with the fewest
/// outstanding), as an upstream, and the count that holds it outstanding until dropped.
pub fn endpoint_replica(
    state: &AppState,
    endpoint: &EndpointVariant,
) -> Result<(UpstreamSpec, crate::endpoints::Outstanding), ServiceError> {
    let pool = state.engines.endpoints.get(&endpoint.name).ok_or_else(|| {
        ServiceError::new(
            ErrorKind::UpstreamFailed,
            format!("endpoint {:?} is not declared in this installation ([serving.endpoints])", endpoint.name),
        )
    })?;
    let outstanding = pool.pick().ok_or_else(|| {
        ServiceError::new(ErrorKind::UpstreamFailed, format!("no replica of endpoint {:?} is healthy", endpoint.name))
    })?;
    let jurisdiction = factory_core::Jurisdiction::new(&pool.settings.jurisdiction)
        .map_err(|error| ServiceError::invalid(format!("serving.endpoints.{}.jurisdiction: {error}", endpoint.name)))?;
    let upstream = UpstreamSpec {
        url: outstanding.replica.url.clone(),
        model: endpoint.model.clone(),
        jurisdiction,
        api_key_env: pool.settings.api_key_env.clone(),
        timeout_ms: endpoint.timeout_ms,
    };
    Ok((upstream, outstanding))
}

pub async fn forward(
    state: &AppState,
    upstream: &UpstreamSpec,
    request: &Inference,
    head: AnswerHead,
    mut meter: Meter,
    shadow: bool,
) -> Result<Answered, ServiceError> {
    let path = if head.kind == CallKind::Chat { "/chat/completions" } else { "/completions" };
    let mut body = request.raw.clone();
    body["model"] = serde_json::Value::String(upstream.model.clone());
    if shadow || !request.sampling.stream {
        body["stream"] = serde_json::Value::Bool(false);
        if let Some(fields) = body.as_object_mut() {
            fields.remove("stream_options");
        }
    }
    let stream = body["stream"].as_bool().unwrap_or(false);
    if stream {
        // Usage arrives in a last chunk only when asked for; it is metered, and passed on only
        // if the client asked too.
        body["stream_options"] = serde_json::json!({ "include_usage": true });
    }
    // The allowlist and the tenant's grants are checked again here: configuration changes, and
    // the deployment was checked against the one in force when it was written.
    let url = format!("{}{path}", upstream.url.trim_end_matches('/'));
    // A replica of a declared endpoint is the operator's own naming, as an allowlist entry is.
    let declared = state.engines.endpoints.declares(&url).then(|| reqwest::Url::parse(&url).ok()).flatten();
    let Some(target) = declared.or_else(|| crate::egress::allowed_url(&state.config.serving.upstreams, &url)) else {
        meter.fail("upstream_not_allowed");
        return Err(ServiceError::new(
            ErrorKind::UpstreamNotAllowed,
            format!("{} is not among the upstreams this installation allows (serving.upstreams)", upstream.url),
        ));
    };
    let mut outgoing = state.engines.upstream.post(target).json(&body);
    if let Some(name) = upstream.api_key_env.as_deref() {
        let granted = name.starts_with(crate::serving::UPSTREAM_KEY_PREFIX)
            && crate::egress::secret_granted(&state.config.secrets, &meter.record.tenant, name);
        if !granted {
            meter.fail("secret_not_granted");
            return Err(ServiceError::new(
                ErrorKind::SecretNotGranted,
                format!("upstream.api_key_env: {name} is not granted to this tenant ([secrets])"),
            ));
        }
        if let Ok(key) = std::env::var(name) {
            outgoing = outgoing.bearer_auth(key);
        }
    }
    let budget = std::time::Duration::from_millis(upstream.timeout_ms);
    let unavailable = |message: String| ServiceError::new(ErrorKind::UpstreamFailed, message);
    let response = match tokio::time::timeout(budget, outgoing.send()).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            meter.fail("upstream_error");
            return Err(unavailable(format!("{}: {error}", upstream.url)));
        }
        Err(_) => {
            meter.fail("upstream_timeout");
            return Err(unavailable(format!("{} did not answer within {} ms", upstream.url, upstream.timeout_ms)));
        }
    };
    let status = response.status();
    let variant = meter.record.variant.clone();
    if status.is_success() && stream {
        let events = relay(response.bytes_stream(), meter, request.sampling.include_usage()).boxed();
        return Ok(Answered::Relayed { variant, events });
    }
    let remaining = budget.saturating_sub(meter.started.elapsed());
    let text = match tokio::time::timeout(remaining, response.text()).await {
        Ok(Ok(text)) => text,
        _ => {
            meter.fail("upstream_timeout");
            return Err(unavailable(format!("{} did not finish its answer in time", upstream.url)));
        }
    };
    if !status.is_success() {
        // A request the upstream finds malformed is the client's to see; a refused key or a
        // rate limit says the upstream cannot serve now, which the next variant may.
        if status.is_client_error() && !matches!(status.as_u16(), 401 | 403 | 429) {
            meter.fail("refused");
            return Ok(Answered::Refused { status: status.as_u16(), body: text });
        }
        meter.fail("upstream_error");
        return Err(unavailable(format!("{} answered {status}", upstream.url)));
    }
    let mut json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        meter.fail("upstream_error");
        unavailable(format!("{} answered with malformed JSON: {e}", upstream.url))
    })?;
    json["model"] = serde_json::Value::String(request.deployment.clone());
    // The id clients report feedback against is the one the inference log keeps.
    json["id"] = serde_json::Value::String(meter.record.id.clone());
    let usage = Usage {
        prompt_tokens: json["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize,
        completion_tokens: json["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize,
        cached_tokens: json["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0) as usize,
    };
    let choices: Vec<Choice> = json["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|choice| Choice {
            text: choice["message"]["content"].as_str().or(choice["text"].as_str()).unwrap_or_default().to_string(),
            finish_reason: choice["finish_reason"].as_str().map(str::to_string),
            ..Choice::default()
        })
        .collect();
    let reason = match choices.first().and_then(|choice| choice.finish_reason.as_deref()) {
        Some("length") => Some(FinishReason::Length),
        Some(_) => Some(FinishReason::Stop),
        None => None,
    };
    let calls: Vec<&serde_json::Value> =
        json["choices"].as_array().into_iter().flatten().filter_map(|c| c["message"].get("tool_calls")).collect();
    if calls.iter().any(|calls| !calls.is_null()) {
        meter.tool_calls(serde_json::json!(calls));
    }
    let elapsed = meter.started.elapsed().as_secs_f64() * 1000.0;
    meter.finish(reason, &usage, &Timings { queue_ms: 0.0, first_token_ms: elapsed, decode_ms: 0.0 }, 1);
    let head =
        AnswerHead { id: meter.record.id.clone(), created: json["created"].as_i64().unwrap_or(head.created), ..head };
    Ok(Answered::Whole(Completion { head, choices, usage, variant, upstream_body: Some(json), rewritten: false }))
}

/// Relays an upstream's event stream event by event, metering as it goes: each content chunk
/// counts a token until the usage chunk gives the exact figures, which are passed on only if the
/// client asked for them. The meter records when the stream ends, or `cancelled` if the client
/// leaves first.
fn relay(
    upstream: impl futures::Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static,
    meter: Meter,
    include_usage: bool,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let state = (Box::pin(upstream), meter, String::new(), false);
    futures::stream::unfold(state, move |(mut upstream, mut meter, mut pending, mut ended)| async move {
        loop {
            if let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                let data = event.trim().strip_prefix("data:").map(str::trim).unwrap_or_default();
                if data == "[DONE]" {
                    finish_relay(&mut meter);
                } else if let Ok(chunk) = serde_json::from_str::<serde_json::Value>(data) {
                    if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
                        meter.record.prompt_tokens = usage["prompt_tokens"].as_i64().unwrap_or(0);
                        meter.record.completion_tokens = usage["completion_tokens"].as_i64().unwrap_or(0);
                        if !include_usage && chunk["choices"].as_array().is_some_and(|c| c.is_empty()) {
                            continue;
                        }
                    } else {
                        let choice = &chunk["choices"][0];
                        let text = choice["delta"]["content"].as_str().or(choice["text"].as_str()).unwrap_or_default();
                        if !text.is_empty() {
                            meter.record.completion_tokens += 1;
                        }
                    }
                }
                return Some((Ok(Bytes::from(event)), (upstream, meter, pending, ended)));
            }
            if ended {
                finish_relay(&mut meter);
                if pending.is_empty() {
                    return None;
                }
                let rest = std::mem::take(&mut pending);
                return Some((Ok(Bytes::from(rest)), (upstream, meter, pending, ended)));
            }
            match upstream.next().await {
                Some(Ok(bytes)) => pending.push_str(&String::from_utf8_lossy(&bytes)),
                Some(Err(error)) => {
                    meter.fail("upstream_error");
                    return Some((Err(std::io::Error::other(error)), (upstream, meter, pending, true)));
                }
                None => ended = true,
            }
        }
    })
}

fn finish_relay(meter: &mut Meter) {
    if meter.done {
        return;
    }
    let elapsed = meter.started.elapsed().as_secs_f64() * 1000.0;
    let usage = Usage {
        prompt_tokens: meter.record.prompt_tokens.max(0) as usize,
        completion_tokens: meter.record.completion_tokens.max(0) as usize,
        cached_tokens: 0,
    };
    meter.finish(None, &usage, &Timings { queue_ms: 0.0, first_token_ms: elapsed, decode_ms: 0.0 }, 1);
}
