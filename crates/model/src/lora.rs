//! Low-rank adapters (LoRA): for each targeted projection `W` (`[out, in]`), a pair `A`
//! (`[rank, in]`) and `B` (`[out, rank]`) so the layer computes `x W^T + (alpha / rank) x A^T B^T`.
//! Only `A` and `B` train; `B` starts at zero, so an untrained adapter leaves the model as it
//! was. Adapters are stored apart from the base weights, under PEFT's names
//! (`adapter_model.safetensors`, `adapter_config.json`), and can be merged into them.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_distr::Distribution;
use serde::{Deserialize, Serialize};

use crate::{LlamaConfig, ModelError, Weights};

/// The projections an adapter may target, as PEFT names them.
const MODULES: &[(&str, &str)] = &[
    ("q_proj", "self_attn.q_proj"),
    ("k_proj", "self_attn.k_proj"),
    ("v_proj", "self_attn.v_proj"),
    ("o_proj", "self_attn.o_proj"),
    ("gate_proj", "mlp.gate_proj"),
    ("up_proj", "mlp.up_proj"),
    ("down_proj", "mlp.down_proj"),
];

/// PEFT prefixes every adapter tensor with this.
const PEFT_PREFIX: &str = "base_model.model.";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// Short names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
    #[serde(default = "default_targets")]
    pub target_modules: Vec<String>,
}

fn default_targets() -> Vec<String> {
    vec!["q_proj".to_string(), "v_proj".to_string()]
}

impl LoraConfig {
    pub fn validate(&self) -> Result<(), ModelError> {
        let mut problems = Vec::new();
        if self.rank == 0 || self.rank > 256 {
            problems.push("lora.rank must be 1 to 256".to_string());
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            problems.push("lora.alpha must be positive".to_string());
        }
        if self.target_modules.is_empty() {
            problems.push("lora.target_modules must name at least one projection".to_string());
        }
        for module in &self.target_modules {
            if !MODULES.iter().any(|(short, _)| short == module) {
                let known: Vec<&str> = MODULES.iter().map(|(short, _)| *short).collect();
                problems.push(format!("lora.target_modules: {module:?} is not one of {}", known.join(", ")));
            }
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(ModelError::Config(problems.join("; "))),
        }
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// PEFT's `adapter_config.json`.
    pub fn adapter_config_json(&self, base_model: &str) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": 0.0,
            "target_modules": self.target_modules,
            "bias": "none",
            "fan_in_fan_out": false,
        })
    }

    /// The config PEFT's `adapter_config.json` describes (`r`, `lora_alpha`, `target_modules`
    /// as a list or one name); adapters of another kind, with biases or fan-in-fan-out weights
    /// are refused by name.
    pub fn from_adapter_config(config: &serde_json::Value) -> Result<Self, ModelError> {
        let refuse = |why: &str| Err(ModelError::Config(format!("adapter_config.json: {why}")));
        if config["peft_type"].as_str().is_some_and(|kind| kind != "LORA") {
            return refuse("only LORA adapters are served");
        }
        if config["bias"].as_str().is_some_and(|bias| bias != "none") || config["fan_in_fan_out"] == true {
            return refuse("adapters with biases or fan-in-fan-out weights are not served");
        }
        let Some(rank) = config["r"].as_u64() else { return refuse("r must be a positive integer") };
        let Some(alpha) = config["lora_alpha"].as_f64() else { return refuse("lora_alpha must be a number") };
        let target_modules = match &config["target_modules"] {
            serde_json::Value::String(one) => vec![one.clone()],
            serde_json::Value::Array(names) => names.iter().filter_map(|n| n.as_str().map(str::to_string)).collect(),
            _ => return refuse("target_modules must name the projections"),
        };
        let lora = LoraConfig { rank: rank as usize, alpha, target_modules };
        lora.validate()?;
        Ok(lora)
    }

    /// `(parameter name of W, its [out, in] shape)` of every targeted projection.
    fn targets(&self, config: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
        let wanted: Vec<&str> = MODULES
            .iter()
            .filter(|(short, _)| self.target_modules.iter().any(|m| m == short))
            .map(|(_, path)| *path)
            .collect();
        crate::parameter_shapes(config)
            .into_iter()
            .filter(|(name, _)| wanted.iter().any(|path| name.ends_with(&format!("{path}.weight"))))
            .collect()
    }
}

/// The trainable adapter tensors, keyed by the base parameter they adapt
/// (`model.layers.0.self_attn.q_proj.weight`) with suffix `.lora_A` / `.lora_B`.
pub struct LoraAdapters {
    pub config: LoraConfig,
    pub params: BTreeMap<String, Var>,
}

fn adapter_names(weight: &str) -> (String, String) {
    let module = weight.trim_end_matches(".weight");
    (format!("{module}.lora_A.weight"), format!("{module}.lora_B.weight"))
}

impl LoraAdapters {
    /// `A` from N(0, 1/in) (deterministic for a seed), `B` zero.
    pub fn init(model: &LlamaConfig, config: &LoraConfig, seed: u64, device: &Device) -> Result<Self, ModelError> {
        config.validate()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x4C6F_5241);
        let mut params = BTreeMap::new();
        for (weight, shape) in config.targets(model) {
            let (out, inner) = (shape[0], shape[1]);
            // PEFT's initialisation (Kaiming-uniform with a = sqrt(5)): A uniform within
            // ±1/sqrt(inner), B zero, so a fresh adapter changes nothing and both learn alike.
            let bound = (1.0 / inner as f32).sqrt();
            let uniform =
                rand_distr::Uniform::new_inclusive(-bound, bound).map_err(|e| ModelError::Config(e.to_string()))?;
            let a: Vec<f32> = (0..config.rank * inner).map(|_| uniform.sample(&mut rng)).collect();
            let (a_name, b_name) = adapter_names(&weight);
            params.insert(a_name, Var::from_tensor(&Tensor::from_vec(a, (config.rank, inner), device)?)?);
            params.insert(b_name, Var::from_tensor(&Tensor::zeros((out, config.rank), DType::F32, device)?)?);
        }
        Ok(LoraAdapters { config: config.clone(), params })
    }

    /// The adapter pair for base parameter `weight`, if it is targeted.
    pub fn pair(&self, weight: &str) -> Option<(&Tensor, &Tensor)> {
        let (a, b) = adapter_names(weight);
        Some((self.params.get(&a)?.as_tensor(), self.params.get(&b)?.as_tensor()))
    }

    /// `adapter_model.safetensors` bytes under PEFT's names.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, ModelError> {
        let tensors = self.params.iter().map(|(name, var)| (format!("{PEFT_PREFIX}{name}"), var.as_tensor().clone()));
        crate::to_safetensors(tensors.collect())
    }

    /// Reads adapters written by [`LoraAdapters::to_safetensors`] (or PEFT), checking that every
    /// targeted projection has its pair with the right shapes.
    pub fn from_safetensors(
        model: &LlamaConfig,
        config: &LoraConfig,
        bytes: &[u8],
        device: &Device,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        let mut tensors = crate::from_safetensors(bytes, device)?;
        let mut params = BTreeMap::new();
        for (weight, shape) in config.targets(model) {
            let (a_name, b_name) = adapter_names(&weight);
            for (name, expected) in [(a_name, vec![config.rank, shape[1]]), (b_name, vec![shape[0], config.rank])] {
                let tensor = tensors
                    .remove(&format!("{PEFT_PREFIX}{name}"))
                    .ok_or_else(|| ModelError::Weights(format!("adapter has no tensor {name}")))?;
                if tensor.dims() != expected.as_slice() {
                    return Err(ModelError::Weights(format!(
                        "{name} has shape {:?}, expected {expected:?}",
                        tensor.dims()
                    )));
                }
                params.insert(name, Var::from_tensor(&tensor.to_dtype(DType::F32)?)?);
            }
        }
        if let Some(name) = tensors.keys().next() {
            return Err(ModelError::Weights(format!("adapter has a tensor the config does not explain: {name}")));
        }
        Ok(LoraAdapters { config: config.clone(), params })
    }

    /// The base weights with every adapter folded in: `W + scale * B A`.
    pub fn merge_into(&self, base: &Weights) -> Result<Weights, ModelError> {
        let scale = self.config.scale();
        let mut params = BTreeMap::new();
        for (name, var) in &base.params {
            let tensor = match self.pair(name) {
                Some((a, b)) => {
                    let delta = (b.matmul(a)? * scale)?.to_dtype(var.dtype())?;
                    (var.as_tensor() + delta)?
                }
                None => var.as_tensor().clone(),
            };
            params.insert(name.clone(), Var::from_tensor(&tensor)?);
        }
        Ok(Weights { params, dtype: base.dtype, device: base.device.clone() })
    }

    /// `values` (the base matrix `weight`, row-major) with its adapter folded in, or as they are
    /// when it has none.
    pub fn merged(&self, weight: &str, values: Vec<f32>) -> Result<Vec<f32>, ModelError> {
        let Some((a, b)) = self.pair(weight) else {
            return Ok(values);
        };
        let delta = (b.matmul(a)? * self.config.scale())?.flatten_all()?.to_vec1::<f32>()?;
        if delta.len() != values.len() {
            return Err(ModelError::Weights(format!("{weight}: the adapter does not fit the matrix")));
        }
        Ok(values.into_iter().zip(delta).map(|(value, delta)| value + delta).collect())
    }

    pub fn parameter_count(&self) -> usize {
        self.params.values().map(|v| v.elem_count()).sum()
    }
}
