//! Canary analysis: the candidate takes a share of a deployment's traffic beside the stable
//! version until each has answered enough requests (and collected enough feedback); then
//! one-sided tests ask whether the candidate is worse on failures (two-proportion z), time per
//! generated token (Mann-Whitney U) and feedback (permutation test on means). Worse on any:
//! roll back; else promote (the alias moves, the weights return to one variant). The decision
//! and its evidence are the step's result, which the run's governed record carries into the
//! audit log.

use std::collections::HashMap;
use std::time::Duration;

use factory_core::TenantName;
use factory_drift::stats;
use factory_model::{DType, Device, Llama, LlamaConfig, Weights};
use factory_store::models::ModelVersion;
use factory_tokenizer::Tokenizer;

use crate::caller::Caller;
use crate::rollout::promote;
use crate::service::{deployments, models, ServiceError};
use crate::serving::{VariantRole, VariantSpec};
use crate::state::AppState;
use crate::workers::JobControl;

/// What a canary step asked for.
pub struct CanaryPlan {
    pub deployment: String,
    /// The candidate's share of primary traffic, 0..1.
    pub share: f64,
    pub min_requests: usize,
    pub min_feedback: usize,
    pub max_duration_secs: u64,
    /// The feedback metric compared, if any.
    pub metric: Option<String>,
    pub alpha: f64,
    /// The alias promotion moves.
    pub alias: String,
}

/// Why a canary ended without a decision.
pub enum CanaryError {
    /// The run was cancelled; the deployment's routing was restored first.
    Cancelled,
    Service(ServiceError),
}

impl From<ServiceError> for CanaryError {
    fn from(error: ServiceError) -> Self {
        CanaryError::Service(error)
    }
}

/// The decision with its evidence; `promoted` is false when the canary rolled back.
pub struct CanaryOutcome {
    pub result: serde_json::Value,
    pub promoted: bool,
}

/// Mean next-token loss of a verified model version on `texts` (joined as in training), over
/// at most `windows` windows of `seq_len` tokens.
pub async fn held_out_loss(
    state: &AppState,
    version: &ModelVersion,
    texts: &[String],
    seq_len: usize,
    windows: usize,
) -> Result<(f64, usize), String> {
    let (manifest, _) = models::open_manifest(state, version).await.map_err(|e| e.message)?;
    let mut files = HashMap::new();
    for path in ["config.json", "model.safetensors", "tokenizer.json"] {
        files.insert(path, models::fetch_file(state, &manifest, path).await.map_err(|e| e.message)?);
    }
    let texts = texts.to_vec();
    tokio::task::spawn_blocking(move || {
        let config =
            LlamaConfig::from_json(&String::from_utf8_lossy(&files["config.json"])).map_err(|e| e.to_string())?;
        let weights = Weights::from_safetensors(&config, &files["model.safetensors"], DType::F32, &Device::Cpu)
            .map_err(|e| e.to_string())?;
        let tokenizer =
            Tokenizer::from_json(&String::from_utf8_lossy(&files["tokenizer.json"])).map_err(|e| e.to_string())?;
        let seq_len = seq_len.min(config.max_position_embeddings.saturating_sub(1)).max(8);
        let model = Llama::new(config, weights).map_err(|e| e.to_string())?;
        let stream = factory_train::tokenize_documents(&tokenizer, texts).map_err(|e| e.to_string())?;
        let metrics = factory_train::evaluate(&model, &stream, seq_len, windows, 0).map_err(|e| e.to_string())?;
        Ok((metrics.validation_loss, metrics.tokens))
    })
    .await
    .map_err(|e| e.to_string())?
}

#[derive(Default)]
struct Arm {
    answered: usize,
    failed: usize,
    latencies: Vec<f64>,
    feedback: Vec<f64>,
}

impl Arm {
    fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.answered + self.failed, "failed": self.failed, "feedback": self.feedback.len(),
            "ms_per_token_p50": stats::quantile(&stats::sorted(self.latencies.clone()), 0.5),
            "feedback_mean": if self.feedback.is_empty() { serde_json::Value::Null } else { stats::mean(&self.feedback).into() },
        })
    }
}

pub(crate) async fn run(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    plan: &CanaryPlan,
    candidate: &str,
    control: JobControl,
) -> Result<CanaryOutcome, CanaryError> {
    let deployment = plan.deployment.clone();
    let original = deployments::spec(state, caller, tenant, &deployment).await?;
    let stable_reference = original
        .variants
        .iter()
        .find(|v| v.role == VariantRole::Primary && v.weight > 0.0 && v.model.is_some())
        .and_then(|v| v.model.clone())
        .ok_or_else(|| ServiceError::invalid("the deployment has no primary model variant to compare with"))?;
    let (name, reference) = stable_reference.split_once('@').unwrap_or_default();
    let stable = models::version_of(state, tenant, name, reference)
        .await?
        .map(|v| format!("{}@{}", v.name, v.version))
        .ok_or_else(|| ServiceError::not_found(format!("{stable_reference} does not exist")))?;
    let share = plan.share;
    let mut spec = original.clone();
    let total: f64 = spec.variants.iter().filter(|v| v.role == VariantRole::Primary).map(|v| v.weight).sum();
    for variant in spec.variants.iter_mut().filter(|v| v.role == VariantRole::Primary) {
        variant.weight = variant.weight / total * (1.0 - share);
    }
    spec.variants.push(VariantSpec {
        model: Some(candidate.to_string()),
        upstream: None,
        endpoint: None,
        weight: share,
        role: VariantRole::Primary,
    });
    deployments::update(state, caller, tenant, &deployment, spec).await?;
    let started = factory_core::time::now_millis();
    let (min_requests, min_feedback) = (plan.min_requests, plan.min_feedback);
    let deadline = std::time::Instant::now() + Duration::from_secs(plan.max_duration_secs);
    let metric = plan.metric.clone();
    let higher_is_better =
        metric.as_ref().and_then(|m| state.config.feedback.get(m)).is_none_or(|m| m.better == "higher");
    let mut cancel = control.cancel.clone();
    let (arms, enough) = loop {
        let arms = observe(state, tenant, &deployment, started, metric.as_deref(), higher_is_better).await?;
        let ready = |label: &str| {
            arms.get(label).is_some_and(|a| {
                a.answered + a.failed >= min_requests && (metric.is_none() || a.feedback.len() >= min_feedback)
            })
        };
        let enough = ready(&stable) && ready(candidate);
        if enough || std::time::Instant::now() >= deadline {
            break (arms, enough);
        }
        let cancelled = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => false,
            _ = cancel.wait_for(|c| *c) => true,
        };
        if cancelled {
            deployments::update(state, caller, tenant, &deployment, original).await?;
            return Err(CanaryError::Cancelled);
        }
    };
    let empty = Arm::default();
    let (control_arm, treatment) = (arms.get(&stable).unwrap_or(&empty), arms.get(candidate).unwrap_or(&empty));
    let alpha = plan.alpha;
    let mut tests = vec![
        (
            "failures",
            stats::rate_higher(
                control_arm.failed,
                control_arm.answered + control_arm.failed,
                treatment.failed,
                treatment.answered + treatment.failed,
            ),
        ),
        ("ms_per_token", stats::tends_larger(&control_arm.latencies, &treatment.latencies)),
    ];
    if let Some(metric) = &metric {
        let seed = started as u64;
        let mut comparison = stats::mean_lower(&control_arm.feedback, &treatment.feedback, 1999, seed);
        if !higher_is_better {
            comparison.control = -comparison.control;
            comparison.treatment = -comparison.treatment;
        }
        tests.push((metric.as_str(), comparison));
    }
    let shortfall = (!enough).then(|| {
        let feedback = if metric.is_some() { format!(" and {min_feedback} feedback values") } else { String::new() };
        format!(
            "not enough traffic within {} s (each variant needs {min_requests} requests{feedback})",
            plan.max_duration_secs
        )
    });
    let (decision, reason) = decide(&tests, shortfall, alpha);
    let evidence: serde_json::Map<String, serde_json::Value> =
        tests.iter().map(|(name, t)| (name.to_string(), serde_json::to_value(t).unwrap_or_default())).collect();
    let mut result = serde_json::json!({
        "deployment": deployment, "stable": stable, "candidate": candidate, "share": share,
        "decision": decision, "reason": reason, "evidence": evidence,
        "arms": { "stable": control_arm.summary(), "candidate": treatment.summary() },
        "original_spec": original,
    });
    if decision == "promote" {
        let promotion = promote(state, caller, tenant, &deployment, &plan.alias, candidate, Some(original)).await?;
        result["promotion"] = serde_json::to_value(promotion).unwrap_or_default();
        return Ok(CanaryOutcome { result, promoted: true });
    }
    deployments::update(state, caller, tenant, &deployment, original).await?;
    result["rolled_back"] = true.into();
    Ok(CanaryOutcome { result, promoted: false })
}

/// Promote unless the traffic fell short or any one-sided test says the candidate is worse.
fn decide(tests: &[(&str, stats::Comparison)], shortfall: Option<String>, alpha: f64) -> (&'static str, String) {
    if let Some(shortfall) = shortfall {
        return ("rollback", shortfall);
    }
    let worse: Vec<&str> = tests.iter().filter(|(_, t)| t.p_value < alpha).map(|(name, _)| *name).collect();
    if worse.is_empty() {
        ("promote", format!("the candidate is not significantly worse on any test (alpha {alpha})"))
    } else {
        ("rollback", format!("the candidate is significantly worse (p < {alpha}) on {}", worse.join(", ")))
    }
}

/// Requests and feedback since `since`, by the variant (`name@version`) that answered.
async fn observe(
    state: &AppState,
    tenant: &TenantName,
    deployment: &str,
    since: i64,
    metric: Option<&str>,
    higher_is_better: bool,
) -> Result<HashMap<String, Arm>, ServiceError> {
    let mut arms: HashMap<String, Arm> = HashMap::new();
    let mut after = since;
    loop {
        let rows = state.store.inferences(tenant, deployment, after, 1000).await?;
        for row in &rows {
            if row.status == "shadow" || row.status == "cancelled" {
                continue;
            }
            let arm = arms.entry(row.variant.clone()).or_default();
            if row.status == "ok" {
                arm.answered += 1;
                // Per generated token, so a candidate that answers at more length is not
                // counted slower for it.
                arm.latencies.push(row.total_ms / row.completion_tokens.max(1) as f64);
            } else {
                arm.failed += 1;
            }
        }
        match rows.last() {
            Some(last) if rows.len() == 1000 => after = last.created_at,
            _ => break,
        }
    }
    if let Some(metric) = metric {
        let mut after = since;
        loop {
            let items = state.store.feedback(tenant, deployment, after, 1000).await?;
            for item in items.iter().filter(|f| f.metric == metric) {
                let Some(variant) = &item.variant else { continue };
                arms.entry(variant.clone()).or_default().feedback.push(if higher_is_better {
                    item.value
                } else {
                    -item.value
                });
            }
            match items.last() {
                Some(last) if items.len() == 1000 => after = last.created_at,
                _ => break,
            }
        }
    }
    Ok(arms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worse_on_any_test_or_too_little_traffic_rolls_back() {
        let stable = vec![1.0; 40].into_iter().chain(vec![0.0; 10]).collect::<Vec<f64>>();
        let worse = vec![1.0; 15].into_iter().chain(vec![0.0; 35]).collect::<Vec<f64>>();
        let same_latency: Vec<f64> = (0..50).map(|i| 10.0 + f64::from(i % 7)).collect();
        let healthy = [
            ("failures", stats::rate_higher(1, 50, 1, 50)),
            ("ms_per_token", stats::tends_larger(&same_latency, &same_latency)),
            ("thumbs_up", stats::mean_lower(&stable, &stable, 999, 1)),
        ];
        assert_eq!(decide(&healthy, None, 0.01).0, "promote");
        let mut degraded = healthy.clone();
        degraded[2] = ("thumbs_up", stats::mean_lower(&stable, &worse, 999, 1));
        let (decision, reason) = decide(&degraded, None, 0.01);
        assert_eq!(decision, "rollback");
        assert!(reason.contains("thumbs_up") && !reason.contains("failures"), "{reason}");
        let failing = [("failures", stats::rate_higher(0, 50, 12, 50))];
        assert!(decide(&failing, None, 0.01).1.contains("failures"));
        assert_eq!(decide(&healthy, Some("not enough traffic".into()), 0.01).0, "rollback");
    }
}
