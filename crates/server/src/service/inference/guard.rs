//! Guardrails on a request's way in: every text the request carries is checked and masked in
//! place (the typed call, and every other string of the body, since upstreams are sent it),
//! and every verdict is audited as the caller's invocation of the deployment and counted.

use factory_core::{AccessRequest, Action, Resource, TenantName};

use super::{estimated_tokens, Call, CallKind, Inference};
use crate::caller::Caller;
use crate::guardrails::{GuardAction, Guardrails, Stage, Verdict};
use crate::service_error::{ErrorKind, ServiceError};
use crate::state::AppState;

/// Applies the input rules to the prompt (or each message), masking in place; returns every
/// verdict and the first that blocks.
pub fn input(guardrails: &Guardrails, request: &mut Inference) -> (Vec<Verdict>, Option<Verdict>) {
    let mut verdicts = Vec::new();
    let mut first_block = None;
    let mut apply = |text: &mut String| {
        let checked = guardrails.check(Stage::Input, text, &estimated_tokens);
        *text = checked.text;
        verdicts.extend(checked.verdicts);
        if first_block.is_none() {
            first_block = checked.blocked;
        }
    };
    // Every other text the request carries (a message's `name`, `user`, `metadata`, `stop`,
    // ...) reaches the model or the upstream too: each is checked and masked like the prompt.
    other_fields(&mut request.raw, request.call.kind(), &mut apply);
    match &mut request.call {
        Call::Completion(prompt) => {
            apply(prompt);
            request.raw["prompt"] = serde_json::Value::String(prompt.clone());
        }
        Call::Chat(messages) => {
            for (index, message) in messages.iter_mut().enumerate() {
                apply(&mut message.content);
                request.raw["messages"][index]["content"] = serde_json::Value::String(message.content.clone());
                // A call's arguments are text the model reads back, like a tool's result.
                for (call_index, call) in message.tool_calls.iter_mut().enumerate() {
                    apply(&mut call.function.arguments);
                    let arguments = serde_json::Value::String(call.function.arguments.clone());
                    if let Some(slot) = request.raw["messages"][index]["tool_calls"][call_index].get_mut("function") {
                        slot["arguments"] = arguments;
                    }
                }
            }
            // Token limits apply to the conversation as a whole, not only to each message.
            let whole: String = messages
                .iter()
                .flat_map(|m| {
                    std::iter::once(m.content.as_str())
                        .chain(m.tool_calls.iter().map(|c| c.function.arguments.as_str()))
                })
                .collect::<Vec<_>>()
                .join("\n");
            if let Some(verdict) = guardrails.check_total(Stage::Input, &whole, &estimated_tokens) {
                if verdict.action == GuardAction::Block && first_block.is_none() {
                    first_block = Some(verdict.clone());
                }
                verdicts.push(verdict);
            }
        }
    }
    (verdicts, first_block)
}

/// Applies `apply` to every string of a request body except the deployment's name, roles, and
/// the text the typed call carries (a completion's `prompt`, a chat's message contents and
/// tool calls), which
/// is checked as the call and written back. A chat's stray `prompt` or a completion's stray
/// `messages` is checked here like any other field, since it is forwarded too.
pub fn other_fields(raw: &mut serde_json::Value, kind: CallKind, apply: &mut impl FnMut(&mut String)) {
    fn every_string(value: &mut serde_json::Value, apply: &mut impl FnMut(&mut String)) {
        match value {
            serde_json::Value::String(text) => apply(text),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|item| every_string(item, apply)),
            serde_json::Value::Object(fields) => fields.values_mut().for_each(|field| every_string(field, apply)),
            _ => {}
        }
    }
    let Some(fields) = raw.as_object_mut() else { return };
    for (key, value) in fields.iter_mut() {
        match key.as_str() {
            "model" => {}
            "prompt" if kind == CallKind::Completion => {}
            "messages" if kind == CallKind::Chat => {
                for message in value.as_array_mut().into_iter().flatten() {
                    for (field, part) in message.as_object_mut().into_iter().flatten() {
                        if field != "content" && field != "role" && field != "tool_calls" {
                            every_string(part, apply);
                        }
                    }
                }
            }
            _ => every_string(value, apply),
        }
    }
}

/// Audits every verdict (as the caller's invocation of the deployment) and counts it.
pub async fn record(state: &AppState, caller: &Caller, tenant: &TenantName, deployment: &str, verdicts: &[Verdict]) {
    for verdict in verdicts {
        let labels = crate::metrics::GuardrailLabels {
            deployment: deployment.to_string(),
            rule: verdict.rule.clone(),
            kind: verdict.kind.to_string(),
            action: format!("{:?}", verdict.action).to_lowercase(),
            stage: format!("{:?}", verdict.stage).to_lowercase(),
        };
        state.metrics.inference.guardrail_verdicts.get_or_create(&labels).inc();
        let request =
            AccessRequest::new(&caller.principal, Action::DeploymentInvoke, Resource::deployment(tenant, deployment));
        let details = serde_json::json!({ "deployment": deployment, "verdict": verdict });
        let recorded = async {
            let change = state.store.begin_change(state.pdp.as_ref(), request, &caller.request_id).await?;
            change.commit(details.clone(), factory_store::Event::new("guardrail.verdict", details)).await
        };
        if let Err(error) = recorded.await {
            tracing::warn!(%error, rule = %verdict.rule, "could not audit a guardrail verdict");
        }
    }
}

/// The refusal of a request a rule blocked.
pub fn blocked(verdict: &Verdict) -> ServiceError {
    ServiceError::new(
        ErrorKind::GuardrailBlocked,
        format!("the request was blocked by guardrail {} ({})", verdict.rule, verdict.kind),
    )
    .at_param(if verdict.stage == Stage::Input { "messages" } else { "output" })
}
