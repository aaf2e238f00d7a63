//! Property tests (issue 16, point 22): `config.json` and `model.safetensors` come from outside
//! (Hugging Face imports, bundles, fine-tune bases), so arbitrary and mutated texts and bytes
//! fed to the config readers and the weight loaders must end in `Ok` or a clean error, never
//! in a panic, and quickly: a size read from a config must not decide how much is allocated
//! before the weights have confirmed it.
//!
//! 64 cases per property by default (seconds); `FACTORY_PROPTEST_CASES=10000` runs longer.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

/// What one case may take, debug build included; the loaders read ~100 KiB here.
const CASE_TIME: Duration = Duration::from_secs(2);

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama").join(name))
        .unwrap()
}

fn llama_config_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| String::from_utf8(fixture("config.json")).unwrap())
}

fn llama_weights() -> &'static Vec<u8> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| fixture("model.safetensors"))
}

const BERT_CONFIG: &str = r#"{"model_type": "bert", "vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 1,
    "num_attention_heads": 2, "intermediate_size": 12, "max_position_embeddings": 16, "type_vocab_size": 2,
    "layer_norm_eps": 1e-12, "hidden_act": "gelu"}"#;

/// A tiny BERT's weights, as `transformers` names them (one tensor carries the `bert.` prefix
/// and a pooler rides along, as in real checkpoints).
fn bert_weights() -> &'static Vec<u8> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let config = BertConfig::from_json(BERT_CONFIG).unwrap();
        let mut tensors: Vec<(String, Tensor)> = config
            .shapes()
            .into_iter()
            .enumerate()
            .map(|(i, (name, shape))| {
                let count: usize = shape.iter().product();
                let values: Vec<f32> = (0..count).map(|j| ((i * 31 + j) % 17) as f32 / 17.0 - 0.5).collect();
                (name, Tensor::from_vec(values, shape, &Device::Cpu).unwrap())
            })
            .collect();
        tensors[0].0 = format!("bert.{}", tensors[0].0);
        tensors.push(("pooler.dense.bias".to_string(), Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap()));
        to_safetensors(tensors).unwrap()
    })
}

/// Splits safetensors bytes into the JSON header and the data after it.
fn split_safetensors(bytes: &[u8]) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + length]).unwrap();
    (header, bytes[8 + length..].to_vec())
}

fn join_safetensors(header: &serde_json::Map<String, serde_json::Value>, data: &[u8]) -> Vec<u8> {
    let header = serde_json::to_vec(header).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend_from_slice(data);
    bytes
}

/// A change to one tensor's header entry that keeps the file well-formed JSON: another
/// dtype, shape or byte range, or the entry gone.
#[derive(Debug, Clone)]
enum HeaderEdit {
    Dtype(&'static str),
    Shape(Vec<u64>),
    Offsets(u64, u64),
    Remove,
    Rename(String),
}

#[rustfmt::skip]
const DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL", "F8_E4M3", "F8_E5M2",
    "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64", "X",
];

fn header_edit() -> impl Strategy<Value = HeaderEdit> {
    let size = prop_oneof![0..80u64, Just(u64::MAX), Just(1 << 32), Just(u64::MAX / 2 + 1)];
    prop_oneof![
        prop::sample::select(DTYPES).prop_map(HeaderEdit::Dtype),
        vec(size.clone(), 0..4).prop_map(HeaderEdit::Shape),
        (0..200_000u64, prop_oneof![0..200_000u64, Just(u64::MAX)]).prop_map(|(a, b)| HeaderEdit::Offsets(a, b)),
        Just(HeaderEdit::Remove),
        prop::sample::select(vec!["lm_head.weight", "model.norm.weight", "x", "model.layers.9.mlp.up_proj.weight"])
            .prop_map(|name| HeaderEdit::Rename(name.to_string())),
    ]
}

fn edit_header(bytes: &[u8], edits: &[(usize, HeaderEdit)]) -> Vec<u8> {
    let (mut header, data) = split_safetensors(bytes);
    for (index, edit) in edits {
        let names: Vec<String> = header.keys().filter(|k| *k != "__metadata__").cloned().collect();
        let Some(name) = names.get(index % names.len().max(1)).cloned() else { continue };
        match edit {
            HeaderEdit::Dtype(dtype) => header[&name]["dtype"] = (*dtype).into(),
            HeaderEdit::Shape(shape) => header[&name]["shape"] = serde_json::json!(shape),
            HeaderEdit::Offsets(start, end) => header[&name]["data_offsets"] = serde_json::json!([start, end]),
            HeaderEdit::Remove => {
                header.remove(&name);
            }
            HeaderEdit::Rename(new_name) => {
                if let Some(entry) = header.remove(&name) {
                    header.insert(new_name.clone(), entry);
                }
            }
        }
    }
    join_safetensors(&header, &data)
}

/// JSON-ish pieces that reach the configs' checks: their keys, numbers at the edges, nesting.
#[rustfmt::skip]
const JSON_PIECES: &[&str] = &[
    "{", "}", "[", "]", ",", ":", " ", "\"vocab_size\"", "\"hidden_size\"", "\"intermediate_size\"",
    "\"num_hidden_layers\"", "\"num_attention_heads\"", "\"num_key_value_heads\"", "\"head_dim\"",
    "\"rope_parameters\"", "\"rope_theta\"", "\"rope_type\"", "\"rope_scaling\"", "\"model_type\"", "\"llama\"",
    "\"bert\"", "\"hidden_act\"", "\"silu\"", "\"gelu\"", "\"architectures\"", "\"attention_bias\"",
    "\"max_position_embeddings\"", "0", "1", "2", "7", "64", "-1", "1e309", "NaN", "18446744073709551615",
    "18446744073709551616", "1.5", "true", "null", "\"\"",
];

fn json_fragment() -> impl Strategy<Value = &'static str> {
    prop::sample::select(JSON_PIECES)
}

/// The loader property for a Llama: a clean outcome, within the time a case may take.
fn check_llama(config_text: &str, weights: &[u8]) -> Result<(), TestCaseError> {
    let started = Instant::now();
    match LlamaConfig::from_json(config_text) {
        Ok(config) => {
            // What callers compute from a config that passed.
            let _ = (config.parameter_count(), config.head_dim(), config.kv_heads(), config.to_json());
            if let Err(error) = Weights::from_safetensors(&config, weights, DType::F32, &Device::Cpu) {
                prop_assert!(!error.to_string().is_empty());
            }
        }
        Err(error) => prop_assert!(matches!(error, ModelError::Config(_)), "{error:?}"),
    }
    prop_assert!(started.elapsed() < CASE_TIME, "took {:?}", started.elapsed());
    Ok(())
}

fn check_bert(config_text: &str, weights: &[u8]) -> Result<(), TestCaseError> {
    let started = Instant::now();
    match BertConfig::from_json(config_text) {
        Ok(config) => {
            if let Ok(encoder) = BertEncoder::from_safetensors(config, weights, &Device::Cpu) {
                let _ = encoder.parameter_count();
            }
        }
        Err(error) => prop_assert!(matches!(error, ModelError::Config(_)), "{error:?}"),
    }
    prop_assert!(started.elapsed() < CASE_TIME, "took {:?}", started.elapsed());
    Ok(())
}

/// Sizes a config may claim: small ones that may fit, and ones far past any file.
fn claimed_size() -> impl Strategy<Value = u64> {
    prop_oneof![0..100u64, Just(1 << 20), Just(1 << 40), Just(u64::MAX)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: factory_testkit::proptest_cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_config_texts_end_cleanly(text in vec(any::<char>(), 0..256), bert in any::<bool>()) {
        let text: String = text.into_iter().collect();
        if bert {
            check_bert(&text, bert_weights())?;
        } else {
            check_llama(&text, llama_weights())?;
        }
    }

    #[test]
    fn config_fragments_end_cleanly(parts in vec(json_fragment(), 0..48), bert in any::<bool>()) {
        let text = parts.concat();
        if bert {
            check_bert(&text, bert_weights())?;
        } else {
            check_llama(&text, llama_weights())?;
        }
    }

    #[test]
    fn mutated_configs_end_cleanly(
        mutations in vec((any::<usize>(), any::<u8>(), 0..4u8), 1..8),
        bert in any::<bool>(),
    ) {
        if bert {
            let text = factory_testkit::mutate(BERT_CONFIG.as_bytes().to_vec(), &mutations);
            check_bert(&String::from_utf8_lossy(&text), bert_weights())?;
        } else {
            let text = factory_testkit::mutate(llama_config_text().as_bytes().to_vec(), &mutations);
            check_llama(&String::from_utf8_lossy(&text), llama_weights())?;
        }
    }

    /// A config that claims any size, against real weights: the loader must not list or
    /// allocate what the claim implies before the file confirms it.
    #[test]
    fn claimed_sizes_are_checked_against_the_weights(
        fields in vec((0..7usize, claimed_size()), 1..4),
        bert in any::<bool>(),
    ) {
        const FIELDS: [&str; 7] = [
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings",
        ];
        let base = if bert { BERT_CONFIG } else { llama_config_text() };
        let mut config: serde_json::Value = serde_json::from_str(base).unwrap();
        for (field, value) in fields {
            config[FIELDS[field]] = value.into();
        }
        if bert {
            check_bert(&config.to_string(), bert_weights())?;
        } else {
            check_llama(&config.to_string(), llama_weights())?;
        }
    }

    #[test]
    fn mutated_weights_end_cleanly(
        mutations in vec((any::<usize>(), any::<u8>(), 0..4u8), 1..12),
        bert in any::<bool>(),
    ) {
        if bert {
            check_bert(BERT_CONFIG, &factory_testkit::mutate(bert_weights().clone(), &mutations))?;
        } else {
            check_llama(llama_config_text(), &factory_testkit::mutate(llama_weights().clone(), &mutations))?;
        }
    }

    /// Well-formed headers that lie: dtypes whose sizes differ, shapes past the data, byte
    /// ranges out of bounds or overlapping, tensors missing or renamed.
    #[test]
    fn lying_headers_end_cleanly(edits in vec((any::<usize>(), header_edit()), 1..4), bert in any::<bool>()) {
        if bert {
            check_bert(BERT_CONFIG, &edit_header(bert_weights(), &edits))?;
        } else {
            check_llama(llama_config_text(), &edit_header(llama_weights(), &edits))?;
        }
    }
}

#[test]
fn the_fixtures_load() {
    let config = LlamaConfig::from_json(llama_config_text()).unwrap();
    Weights::from_safetensors(&config, llama_weights(), DType::F32, &Device::Cpu).unwrap();
    let bert = BertConfig::from_json(BERT_CONFIG).unwrap();
    BertEncoder::from_safetensors(bert, bert_weights(), &Device::Cpu).unwrap();
    // The header edits rewrite the JSON: an unedited rewrite must still load.
    let (header, data) = split_safetensors(llama_weights());
    Weights::from_safetensors(&config, &join_safetensors(&header, &data), DType::F32, &Device::Cpu).unwrap();
}

/// What the properties found, pinned: a layer count no file holds aborted the process while
/// the loader listed the names it implies; a count of parameters overflowed.
#[test]
fn claimed_sizes_are_refused_at_once() {
    let started = Instant::now();
    let mut config: serde_json::Value = serde_json::from_str(llama_config_text()).unwrap();
    config["num_hidden_layers"] = 1_000_000_000_000u64.into();
    let config = LlamaConfig::from_json(&config.to_string()).unwrap();
    let error = Weights::from_safetensors(&config, llama_weights(), DType::F32, &Device::Cpu).err().unwrap();
    assert!(error.to_string().contains("1000000000000 layers"), "{error}");
    let mut bert: serde_json::Value = serde_json::from_str(BERT_CONFIG).unwrap();
    bert["num_hidden_layers"] = 1_000_000_000_000u64.into();
    let bert = BertConfig::from_json(&bert.to_string()).unwrap();
    assert!(BertEncoder::from_safetensors(bert, bert_weights(), &Device::Cpu).is_err());
    assert!(started.elapsed() < CASE_TIME, "{:?}", started.elapsed());

    let huge = LlamaConfig::new(1 << 40, 1 << 40, 1 << 40, 1 << 20, 4);
    assert_eq!(huge.parameter_count(), usize::MAX);
}
