//! The model's shape, read from and written as a Hugging Face `config.json`.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// The members of the Llama family the factory runs, and how they differ: Qwen2 adds biases to
/// the query, key and value projections; Qwen3 normalizes queries and keys per head (and may
/// size its heads apart from the hidden size); Mistral is Llama with its own name (and, in its
/// first release, a sliding window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

struct Llama3Scaling {
    factor: f64,
    low_frequency_factor: f64,
    high_frequency_factor: f64,
    original_context: f64,
}

/// A Llama-architecture decoder's hyperparameters, under the names `transformers` uses, so a
/// `config.json` written here loads in `LlamaForCausalLM` and one written there loads here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    #[serde(default = "llama_architectures")]
    pub architectures: Vec<String>,
    #[serde(default = "llama_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Fewer key/value heads than query heads is grouped-query attention; absent means equal.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default = "default_dtype")]
    pub torch_dtype: String,
    /// Keys this crate does not interpret are kept, so a round trip loses nothing.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn llama_architectures() -> Vec<String> {
    vec!["LlamaForCausalLM".to_string()]
}
fn llama_model_type() -> String {
    "llama".to_string()
}
fn default_max_positions() -> usize {
    2048
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_hidden_act() -> String {
    "silu".to_string()
}
fn default_dtype() -> String {
    "float32".to_string()
}

impl LlamaConfig {
    /// A model of the given shape with every other field at the Llama default.
    pub fn new(vocab_size: usize, hidden_size: usize, intermediate_size: usize, layers: usize, heads: usize) -> Self {
        LlamaConfig {
            architectures: llama_architectures(),
            model_type: llama_model_type(),
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: None,
            max_position_embeddings: 512,
            rope_theta: default_rope_theta(),
            rms_norm_eps: 1e-5,
            tie_word_embeddings: false,
            hidden_act: default_hidden_act(),
            bos_token_id: None,
            eos_token_id: None,
            torch_dtype: default_dtype(),
            extra: serde_json::Map::new(),
        }
    }

    /// Named sizes from a few hundred thousand parameters (tests, the demo) to ~125M.
    pub fn preset(name: &str, vocab_size: usize) -> Result<Self, ModelError> {
        let mut config = match name {
            "tiny" => LlamaConfig::new(vocab_size, 64, 192, 2, 4),
            "small" => LlamaConfig::new(vocab_size, 256, 768, 4, 8),
            // The shape of shared/bench/configs/ref-small.json (untied, 512 positions), sized to
            // the tokenizer: the benchmark's model, and the demo's.
            "ref-small" => {
                let mut config = LlamaConfig::new(vocab_size, 256, 768, 4, 8);
                config.tie_word_embeddings = false;
                config.max_position_embeddings = 512;
                config
            }
            "base" => LlamaConfig::new(vocab_size, 512, 1376, 8, 8),
            "125m" => LlamaConfig::new(vocab_size, 768, 2048, 12, 12),
            other => {
                return Err(ModelError::Config(format!(
                    "preset {other:?} is unknown; expected tiny, small, ref-small, base or 125m"
                )))
            }
        };
        if name == "125m" {
            config.max_position_embeddings = 2048;
        }
        Ok(config)
    }

    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let mut config: LlamaConfig =
            serde_json::from_str(text).map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        // transformers 5 moved `rope_theta` into `rope_parameters`; both spellings are read.
        if let Some(theta) = config.rope_parameters().and_then(|p| p.get("rope_theta")).and_then(|t| t.as_f64()) {
            config.rope_theta = theta;
        }
        config.validate()?;
        Ok(config)
    }

    fn rope_parameters(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.extra.get("rope_parameters").and_then(serde_json::Value::as_object)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// The width of one attention head: `head_dim` where the config sets it (Qwen3's heads
    /// are not `hidden_size / num_attention_heads` wide), else that quotient.
    pub fn head_dim(&self) -> usize {
        match self.extra.get("head_dim").and_then(serde_json::Value::as_u64) {
            Some(width) => width as usize,
            None => self.hidden_size / self.num_attention_heads.max(1),
        }
    }

    /// Which member of the Llama family this is, by `model_type`.
    pub fn family(&self) -> Result<Family, ModelError> {
        match self.model_type.as_str() {
            "llama" => Ok(Family::Llama),
            "mistral" => Ok(Family::Mistral),
            "qwen2" => Ok(Family::Qwen2),
            "qwen3" => Ok(Family::Qwen3),
            other => Err(ModelError::Config(format!(
                "model_type {other:?} is not a model the factory runs (llama, mistral, qwen2, qwen3)"
            ))),
        }
    }

    /// Whether the query, key and value projections add a bias (Qwen2's do).
    pub fn attention_bias(&self) -> bool {
        self.family().is_ok_and(|family| family == Family::Qwen2)
    }

    /// Whether queries and keys are RMS-normalized per head before rotation (Qwen3's are).
    pub fn query_key_norm(&self) -> bool {
        self.family().is_ok_and(|family| family == Family::Qwen3)
    }

    /// The positions a cache may hold: the context length, or a shorter sliding window
    /// (Mistral's first release), within which full attention is exactly what it computes.
    pub fn max_positions(&self) -> usize {
        match self.extra.get("sliding_window").and_then(serde_json::Value::as_u64) {
            Some(window) if window > 0 => self.max_position_embeddings.min(window as usize),
            _ => self.max_position_embeddings,
        }
    }

    /// The rotary frequencies `theta^(-2i/d)` of the `d/2` pairs of a head, with Llama 3's
    /// long-context scaling applied when the config asks for it (as `transformers` computes
    /// them, in f64).
    pub fn rope_frequencies(&self) -> Vec<f64> {
        let dim = self.head_dim();
        let plain = (0..dim / 2).map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / dim as f64));
        let Some(scaling) = self.llama3_scaling() else {
            return plain.collect();
        };
        let low_wavelength = scaling.original_context / scaling.low_frequency_factor;
        let high_wavelength = scaling.original_context / scaling.high_frequency_factor;
        plain
            .map(|frequency| {
                let wavelength = 2.0 * std::f64::consts::PI / frequency;
                if wavelength < high_wavelength {
                    frequency
                } else if wavelength > low_wavelength {
                    frequency / scaling.factor
                } else {
                    let smooth = (scaling.original_context / wavelength - scaling.low_frequency_factor)
                        / (scaling.high_frequency_factor - scaling.low_frequency_factor);
                    (1.0 - smooth) * frequency / scaling.factor + smooth * frequency
                }
            })
            .collect()
    }

    /// The `rope_type` (`rope_scaling` in transformers 4, `rope_parameters` in 5), with its map.
    fn rope_type(&self) -> Option<(&str, &serde_json::Map<String, serde_json::Value>)> {
        let scaling = self.extra.get("rope_scaling").and_then(serde_json::Value::as_object);
        let map = scaling.or(self.rope_parameters())?;
        let kind = map.get("rope_type").or(map.get("type")).and_then(serde_json::Value::as_str)?;
        Some((kind, map))
    }

    fn llama3_scaling(&self) -> Option<Llama3Scaling> {
        let (kind, map) = self.rope_type()?;
        if kind != "llama3" {
            return None;
        }
        let number = |key: &str| map.get(key).and_then(serde_json::Value::as_f64);
        Some(Llama3Scaling {
            factor: number("factor")?,
            low_frequency_factor: number("low_freq_factor")?,
            high_frequency_factor: number("high_freq_factor")?,
            original_context: number("original_max_position_embeddings")?,
        })
    }

    /// Checks what the forward pass relies on, naming the offending field.
    pub fn validate(&self) -> Result<(), ModelError> {
        let fail = |message: String| Err(ModelError::Config(message));
        self.family()?;
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return fail(format!("{field} must be positive"));
            }
        }
        let explicit_head_dim = self.extra.get("head_dim").and_then(serde_json::Value::as_u64);
        if explicit_head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.head_dim() == 0 || !self.head_dim().is_multiple_of(2) || self.head_dim() > 1024 {
            return fail(format!("the head dimension {} must be even (rotary pairs it), 2 to 1024", self.head_dim()));
        }
        // With `head_dim` set, the heads together may be wider than the hidden state (Qwen3's
        // are, twice), but not without bound: the widths below are allocated.
        let query_width = self.num_attention_heads.checked_mul(self.head_dim());
        if query_width.is_none_or(|width| width > self.hidden_size.saturating_mul(16)) {
            return fail(format!(
                "num_attention_heads {} of head_dim {} are wider than 16 x hidden_size {}",
                self.num_attention_heads,
                self.head_dim(),
                self.hidden_size
            ));
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return fail(format!(
                "num_key_value_heads {kv} must divide num_attention_heads {}",
                self.num_attention_heads
            ));
        }
        // Qwen2's biases are implied by its family; a flag asking for more (the output
        // projection's, or the MLP's) is not something this model computes.
        for flag in ["attention_bias", "mlp_bias"] {
            if self.extra.get(flag).and_then(serde_json::Value::as_bool) == Some(true) {
                return fail(format!("{flag} = true is not supported; these projections have no bias"));
            }
        }
        match self.rope_type() {
            None | Some(("default", _)) => {}
            Some(("llama3", _)) if self.llama3_scaling().is_some() => {}
            Some(("llama3", _)) => {
                return fail(
                    "rope llama3 scaling needs factor, low_freq_factor, high_freq_factor and \
                     original_max_position_embeddings"
                        .to_string(),
                )
            }
            Some((other, _)) => {
                return fail(format!("rope type {other:?} is not supported; only default and llama3"));
            }
        }
        if self.hidden_act != "silu" {
            return fail(format!("hidden_act {:?} is not supported; this family uses silu", self.hidden_act));
        }
        Ok(())
    }

    /// Trainable parameters, counting a tied embedding once. Sizes read from an outside
    /// config.json may pass `validate` and still overflow the count: it saturates at
    /// `usize::MAX` (no file holds that many) instead of panicking or wrapping to a small lie.
    pub fn parameter_count(&self) -> usize {
        let count = || {
            let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
            let kv_dim = self.kv_heads().checked_mul(self.head_dim())?;
            let q_dim = self.num_attention_heads.checked_mul(self.head_dim())?;
            let attention = h.checked_mul(q_dim)?.checked_add(h.checked_mul(kv_dim)?)?.checked_mul(2)?;
            let biases = if self.attention_bias() { q_dim.checked_add(kv_dim.checked_mul(2)?)? } else { 0 };
            let norms = if self.query_key_norm() { self.head_dim().checked_mul(2)? } else { 0 };
            let attention = attention.checked_add(biases)?.checked_add(norms)?;
            let mlp = h.checked_mul(i)?.checked_mul(3)?;
            let layer = attention.checked_add(mlp)?.checked_add(h.checked_mul(2)?)?;
            let embedding = v.checked_mul(h)?;
            let head = if self.tie_word_embeddings { 0 } else { embedding };
            embedding.checked_add(self.num_hidden_layers.checked_mul(layer)?)?.checked_add(h)?.checked_add(head)
        };
        count().unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reference_configs_read_and_count_like_transformers() {
        let small = LlamaConfig::from_json(
            r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 4096,
                "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
                "num_attention_heads": 8, "num_key_value_heads": 8, "max_position_embeddings": 512,
                "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": false,
                "hidden_act": "silu", "torch_dtype": "float32"}"#,
        )
        .unwrap();
        // transformers counts 5,507,328 parameters for this config (the shared bench README: 5.5M).
        assert_eq!(small.parameter_count(), 5_507_328);
        let reference = LlamaConfig::preset("ref-small", 4096).unwrap();
        let shared: LlamaConfig = LlamaConfig::from_json(include_str!("../tests/fixtures/ref-small.json")).unwrap();
        assert_eq!(reference.parameter_count(), shared.parameter_count());
        assert_eq!((reference.tie_word_embeddings, reference.max_position_embeddings), (false, 512));
        let big = LlamaConfig::preset("125m", 32_000).unwrap();
        assert!((100_000_000..140_000_000).contains(&big.parameter_count()), "{}", big.parameter_count());
    }

    #[test]
    fn bad_shapes_name_their_field() {
        let mut config = LlamaConfig::new(10, 30, 8, 1, 4);
        assert!(config.validate().unwrap_err().to_string().contains("num_attention_heads"));
        config.hidden_size = 32;
        config.num_key_value_heads = Some(3);
        assert!(config.validate().unwrap_err().to_string().contains("num_key_value_heads"));
        assert!(LlamaConfig::preset("huge", 10).is_err());
    }

    #[test]
    fn unknown_keys_survive_a_round_trip() {
        let mut config = LlamaConfig::new(10, 8, 16, 1, 2);
        config.extra.insert("rope_scaling".to_string(), serde_json::Value::Null);
        let again = LlamaConfig::from_json(&config.to_json()).unwrap();
        assert_eq!(again, config);
    }
}
