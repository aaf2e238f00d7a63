//! GGUF files served by the decoder: products on every block type, every family's layout, and
//! the logits of quantized weights against the same weights widened to `f32`.
#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use super::{load_decoder, storage_type, write_llama, GgufVocabulary, TENSOR_TYPES};
use crate::projection::Projection;
use crate::quantized::QuantizedMatrix;
use crate::{Decoder, KvCache, Llama, LlamaConfig, StepInput, Weights};

pub(super) fn random(count: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `|a - b|` over the largest `|b|`.
fn relative_difference(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The bound of each type's product against its widened weights: the activations are rounded
/// to 8 bits per block (Q8_0 or Q8_K) for the quantized types, to 11 significant bits for F16
/// and 8 for BF16 (llama.cpp rounds them the same way).
fn product_bound(kind: GgmlDType) -> f32 {
    match kind {
        GgmlDType::F32 => 1e-5,
        GgmlDType::F16 => 2e-3,
        GgmlDType::BF16 => 1e-2,
        _ => 2e-2,
    }
}

#[test]
fn every_served_type_multiplies_on_its_blocks_within_its_bound() {
    let (rows, inner, x_rows) = (70, 512, 3);
    let weights = random(rows * inner, 1);
    let x = random(x_rows * inner, 2);
    for &kind in TENSOR_TYPES {
        let matrix = QuantizedMatrix::quantize(kind, rows, inner, &weights).unwrap();
        let widened = matrix.dequantize();
        let expected: Vec<f32> = (0..x_rows)
            .flat_map(|r| {
                let (x, widened) = (&x[r * inner..(r + 1) * inner], &widened);
                (0..rows).map(move |c| x.iter().zip(&widened[c * inner..(c + 1) * inner]).map(|(a, b)| a * b).sum())
            })
            .collect();
        // Two parts side by side, as q/k/v are, multiplied a few units at a time.
        let (top, bottom) = weights.split_at(40 * inner);
        let parts = Projection::Quantized(vec![
            Arc::new(QuantizedMatrix::quantize(kind, 40, inner, top).unwrap()),
            Arc::new(QuantizedMatrix::quantize(kind, 30, inner, bottom).unwrap()),
        ]);
        let mut out = vec![0.0f32; x_rows * rows];
        let address = out.as_mut_ptr() as usize;
        for unit in 0..parts.units() {
            // SAFETY: `out` is `[x_rows, rows]` and each unit writes its own columns.
            #[allow(unsafe_code)]
            unsafe {
                parts.multiply(&x, x_rows, address, false, unit..unit + 1)
            };
        }
        let difference = relative_difference(&out, &expected);
        assert!(difference < product_bound(kind), "{kind:?}: relative difference {difference:e}");
        // The widened weights are the blocks' values: close to the originals for every type.
        assert!(relative_difference(&widened, &weights) < 0.2, "{kind:?} dequantizes to its source");
    }
}

pub(super) fn family_config(model_type: &str, tied: bool, hidden: usize, intermediate: usize) -> LlamaConfig {
    let mut config = LlamaConfig::new(300, hidden, intermediate, 2, 4);
    config.model_type = model_type.to_string();
    config.num_key_value_heads = Some(2);
    config.max_position_embeddings = 64;
    config.tie_word_embeddings = tied;
    if model_type == "qwen3" {
        // Qwen3's heads are not hidden / heads wide.
        config.extra.insert("head_dim".to_string(), serde_json::json!(hidden / 2));
    }
    config
}

/// A model whose norms, biases and weights are all random (norms of exactly one would hide a
/// misplaced norm).
pub(super) fn random_model(config: &LlamaConfig, seed: u64) -> Llama {
    let weights = Weights::init(config, seed, DType::F32, &Device::Cpu).unwrap();
    for (index, (name, var)) in weights.params.iter().enumerate() {
        if name.ends_with("norm.weight") || name.ends_with(".bias") {
            let values: Vec<f32> =
                random(var.elem_count(), seed + index as u64).iter().map(|v| 1.0 + v / 2.0).collect();
            let tensor = Tensor::from_vec(values, var.dims(), &Device::Cpu).unwrap();
            Var::set(var, &tensor).unwrap();
        }
    }
    Llama::new(config.clone(), weights).unwrap()
}

pub(super) fn gguf_bytes(model: &Llama, kind: GgmlDType) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    write_llama(&mut bytes, model, kind, "test", &byte_level_vocabulary(model.config.vocab_size)).unwrap();
    bytes.into_inner()
}

/// Logits after each of `tokens`, fed in two chunks to one cache.
fn decoder_logits(decoder: &Decoder, tokens: &[u32]) -> Vec<f32> {
    let mut cache = KvCache::new(decoder, 32).unwrap();
    let (first, second) = tokens.split_at(tokens.len() / 2);
    let mut logits = decoder
        .forward_step(&mut [StepInput { tokens: first, cache: &mut cache, adapter: None }])
        .unwrap()
        .row(0)
        .to_vec();
    for token in second {
        let step = decoder.forward_step(&mut [StepInput {
            tokens: std::slice::from_ref(token),
            cache: &mut cache,
            adapter: None,
        }]);
        logits.extend_from_slice(step.unwrap().row(0));
    }
    logits
}

const PROMPT: [u32; 8] = [5, 17, 299, 0, 42, 42, 7, 180];

#[test]
fn every_family_served_from_gguf_decodes_like_the_model_it_was_written_from() {
    for (model_type, tied) in [("llama", false), ("llama", true), ("mistral", false), ("qwen2", true), ("qwen3", false)]
    {
        let config = family_config(model_type, tied, 64, 96);
        let model = random_model(&config, 11);
        let bytes = gguf_bytes(&model, GgmlDType::F32);
        let (served, inspected) = load_decoder(&mut Cursor::new(&bytes), 2).unwrap();
        let summary = inspected.summary;
        let expected_architecture = if model_type == "mistral" { "llama" } else { model_type };
        assert_eq!(summary.architecture, expected_architecture);
        assert_eq!(summary.hyper.tied_embeddings, tied);
        let reference = Decoder::with_threads(&model, 2).unwrap();
        let dense = decoder_logits(&reference, &PROMPT);
        let difference = relative_difference(&decoder_logits(&served, &PROMPT), &dense);
        assert!(difference < 1e-4, "{model_type} tied {tied}: relative difference {difference:e}");
        // And the dense decoder is the training model's forward pass, biases and norms included.
        let ids = Tensor::new(&PROMPT[..], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let forward = model.forward(&ids).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let vocab = config.vocab_size;
        let difference = relative_difference(&dense[dense.len() - vocab..], &forward[forward.len() - vocab..]);
        assert!(difference < 1e-4, "{model_type}: decoder against forward {difference:e}");
    }
}

/// The bound of a quantized model's logits against the same blocks widened to `f32`, relative
/// to the largest logit: what rounding the activations (Q8_0 / Q8_K, or f16) adds over two
/// blocks, measured with margin on these random models.
fn logits_bound(kind: GgmlDType) -> f32 {
    match kind {
        GgmlDType::F32 => 1e-4,
        GgmlDType::F16 => 5e-3,
        GgmlDType::BF16 => 3e-2,
        _ => 5e-2,
    }
}

#[test]
fn quantized_models_match_their_blocks_widened_within_a_documented_bound() {
    // K-quant blocks are 256 wide: every matrix's rows are a multiple of that.
    let config = family_config("llama", false, 256, 512);
    let model = random_model(&config, 3);
    for &kind in TENSOR_TYPES {
        let bytes = gguf_bytes(&model, kind);
        let (served, _) = load_decoder(&mut Cursor::new(&bytes), 2).unwrap();
        // Served within its file's size (norms and the decoder's own tables aside).
        assert!(served.weight_bytes() as f64 <= bytes.len() as f64 * 1.05, "{kind:?}: {}", served.weight_bytes());
        // The same model with every matrix replaced by its blocks' values, dense.
        let widened = Weights::init(&config, 3, DType::F32, &Device::Cpu).unwrap();
        for (name, var) in &widened.params {
            let source = model.weights.get(name).unwrap();
            let values = source.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let values = match source.dims() {
                [rows, inner] => {
                    let stored = storage_type(kind, *inner);
                    QuantizedMatrix::quantize(stored, *rows, *inner, &values).unwrap().dequantize()
                }
                _ => values,
            };
            Var::set(var, &Tensor::from_vec(values, source.dims(), &Device::Cpu).unwrap()).unwrap();
        }
        let reference = Decoder::with_threads(&Llama::new(config.clone(), widened).unwrap(), 2).unwrap();
        let difference = relative_difference(&decoder_logits(&served, &PROMPT), &decoder_logits(&reference, &PROMPT));
        assert!(difference < logits_bound(kind), "{kind:?}: relative difference {difference:e}");
    }
}

/// GPT-2's byte-level alphabet: printable bytes stand for themselves, the others for the
/// characters from U+0100 on, in order.
fn byte_tokens() -> Vec<String> {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut shifted = 0;
    (0..256u32)
        .map(|b| {
            let code = if printable(b) {
                b
            } else {
                shifted += 1;
                255 + shifted
            };
            char::from_u32(code).unwrap().to_string()
        })
        .collect()
}

/// A byte-level vocabulary of `size` tokens llama.cpp loads: the 256 bytes, then pairs of
/// lowercase letters with the merges that make them.
fn byte_level_vocabulary(size: usize) -> GgufVocabulary {
    let mut tokens = byte_tokens();
    let mut merges = Vec::new();
    for (first, second) in ('a'..='z').flat_map(|a| ('a'..='z').map(move |b| (a, b))).take(size - tokens.len()) {
        tokens.push(format!("{first}{second}"));
        merges.push(format!("{first} {second}"));
    }
    GgufVocabulary {
        model: "gpt2".to_string(),
        pre: "default".to_string(),
        token_types: vec![1; tokens.len()],
        tokens,
        merges,
        scores: Vec::new(),
        bos: Some(1),
        eos: Some(2),
        chat_template: None,
    }
}

/// A random model whose logits are far apart (embedding and head scaled up): greedy tokens then
/// depend on the weights, not on the last bits of two engines' different sums.
fn decisive_model(config: &LlamaConfig, seed: u64) -> Llama {
    let model = random_model(config, seed);
    for (name, var) in &model.weights.params {
        if var.rank() == 2 {
            let factor = if name.contains("embed_tokens") || name.starts_with("lm_head") { 50.0 } else { 5.0 };
            Var::set(var, &(var.as_tensor() * factor).unwrap()).unwrap();
        }
    }
    model
}

/// The Python that has llama-cpp-python.
fn llama_cpp_python() -> Option<String> {
    let candidates = [std::env::var("LLAMA_CPP_PYTHON").ok(), Some("python3".to_string())];
    candidates.into_iter().flatten().find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import llama_cpp, numpy"])
            .output()
            .is_ok_and(|output| output.status.success())
    })
}

/// How far the factory's logits may be from llama.cpp's on the same file, relative to the
/// largest. With float weights: llama.cpp rounds queries and attention weights to f16 to
/// multiply them with its f16 key/value cache, and sums in another order (measured: up to
/// 7e-4). With quantized (and BF16) weights both engines round the activations to 8 bits (per
/// block of 32 or 256, or bf16's 8 significant bits), and those tiny differences move values
/// across rounding steps, which the following layers carry: the two engines' rounding errors
/// are then about as far from each other as each is from the model with its weights widened
/// to f32 (measured: 0.5-4.7% here, most under 2%, against 1-1.8% from the widened model).
/// Real errors (a misplaced row, a wrong scale) are tens of percent.
fn parity_bound(kind: GgmlDType) -> f32 {
    match kind {
        GgmlDType::F32 | GgmlDType::F16 => 5e-3,
        _ => 6e-2,
    }
}

/// The committed prompts of the parity test (token ids of the test vocabulary).
const PARITY_PROMPTS: [&[u32]; 4] =
    [&[1, 72, 101, 108], &[1, 260, 261, 32, 99, 280], &[5, 5, 5, 5, 5, 5, 5], &[1, 299]];
const PARITY_TOKENS: usize = 8;

fn greedy(decoder: &Decoder, prompt: &[u32], new_tokens: usize) -> Vec<u32> {
    let mut cache = KvCache::new(decoder, prompt.len() + new_tokens).unwrap();
    let mut input = prompt.to_vec();
    let mut generated = Vec::new();
    for _ in 0..new_tokens {
        let logits =
            decoder.forward_step(&mut [StepInput { tokens: &input, cache: &mut cache, adapter: None }]).unwrap();
        let row = logits.row(0);
        let best = (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best }) as u32;
        generated.push(best);
        input = vec![best];
    }
    generated
}

#[test]
fn greedy_decoding_picks_llama_cpps_tokens_on_the_same_gguf_files() {
    let Some(python) = llama_cpp_python() else {
        factory_testkit::missing("llama-cpp-python (pip install llama-cpp-python): parity with llama.cpp untested");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/llama_cpp_greedy.py");
    let prompts: Vec<Vec<u32>> = PARITY_PROMPTS.iter().map(|p| p.to_vec()).collect();
    let mut cases: Vec<(&str, GgmlDType)> = TENSOR_TYPES.iter().map(|&kind| ("llama", kind)).collect();
    cases.extend([("qwen2", GgmlDType::Q8_0), ("qwen3", GgmlDType::Q4K), ("mistral", GgmlDType::Q6K)]);
    for (model_type, kind) in cases {
        let config = family_config(model_type, model_type == "qwen2", 256, 512);
        let model = decisive_model(&config, 21);
        let path = dir.path().join(format!("{model_type}-{kind:?}.gguf"));
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        write_llama(&mut file, &model, kind, "parity", &byte_level_vocabulary(config.vocab_size)).unwrap();
        drop(file);
        let (decoder, _) = load_decoder(&mut std::fs::File::open(&path).unwrap(), 2).unwrap();
        // llama.cpp keeps its key/value cache in f16 unless told otherwise.
        let decoder = decoder.with_kv_precision(crate::KvPrecision::F16);
        let ours: Vec<Vec<u32>> = prompts.iter().map(|prompt| greedy(&decoder, prompt, PARITY_TOKENS)).collect();
        let output = std::process::Command::new(&python)
            .args([
                script,
                path.to_str().unwrap(),
                &serde_json::to_string(&prompts).unwrap(),
                &PARITY_TOKENS.to_string(),
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{model_type} {kind:?}: {}", String::from_utf8_lossy(&output.stderr));
        let theirs_json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let theirs: Vec<Vec<u32>> = serde_json::from_value(theirs_json["tokens"].clone()).unwrap();
        // llama.cpp's continuation fed back to ours: at every step the two engines' logits agree
        // within the type's bound, and llama.cpp's token is our argmax unless the two differ by
        // less than the engines' own difference at that step (a near-tie either may break).
        let bound = parity_bound(kind);
        let their_rows: Vec<Vec<Vec<f32>>> = serde_json::from_value(theirs_json["logits"].clone()).unwrap();
        let mut agreed = 0;
        for ((prompt, their), rows) in prompts.iter().zip(&theirs).zip(&their_rows) {
            let mut cache = KvCache::new(&decoder, prompt.len() + PARITY_TOKENS).unwrap();
            let mut input = prompt.clone();
            for (&token, their_row) in their.iter().zip(rows) {
                let logits = decoder
                    .forward_step(&mut [StepInput { tokens: &input, cache: &mut cache, adapter: None }])
                    .unwrap();
                let row = logits.row(0);
                let largest = their_row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let apart = row.iter().zip(their_row).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    apart <= bound * largest,
                    "{model_type} {kind:?}: logits {apart} apart of {largest} ({prompt:?})"
                );
                let best = (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best });
                let gap = row[best] - row[token as usize];
                assert!(
                    gap <= 2.0 * apart,
                    "{model_type} {kind:?}: llama.cpp picked {token}, {gap} below our {best}; the engines differ by {apart}"
                );
                agreed += usize::from(best == token as usize);
                input = vec![token];
            }
        }
        let total = prompts.len() * PARITY_TOKENS;
        eprintln!("{model_type} {kind:?}: {agreed} of {total} greedy tokens are llama.cpp's; ours {ours:?}");
        // Near-ties are the exception: most of the tokens are the same.
        assert!(agreed * 4 >= total * 3, "{model_type} {kind:?}: only {agreed} of {total} tokens agree");
    }
}

#[test]
fn half_precision_checkpoints_are_served_in_half_precision() {
    for (dtype, bound) in [(DType::BF16, 3e-2), (DType::F16, 5e-3)] {
        let config = family_config("qwen2", false, 64, 96);
        let model = random_model(&config, 5);
        let convert = |to: DType| {
            let params = model
                .weights
                .params
                .iter()
                .map(|(name, var)| (name.clone(), Var::from_tensor(&var.as_tensor().to_dtype(to).unwrap()).unwrap()))
                .collect();
            Weights { params, dtype: to, device: Device::Cpu }
        };
        let half = Llama::new(config.clone(), convert(dtype)).unwrap();
        let served = Decoder::with_threads(&half, 2).unwrap();
        // The same rounded weights, widened: what the half decoder must compute.
        let rounded = Weights {
            params: half
                .weights
                .params
                .iter()
                .map(|(name, var)| {
                    (name.clone(), Var::from_tensor(&var.as_tensor().to_dtype(DType::F32).unwrap()).unwrap())
                })
                .collect(),
            dtype: DType::F32,
            device: Device::Cpu,
        };
        let widened = Decoder::with_threads(&Llama::new(config.clone(), rounded).unwrap(), 2).unwrap();
        let difference = relative_difference(&decoder_logits(&served, &PROMPT), &decoder_logits(&widened, &PROMPT));
        assert!(difference < bound, "{dtype:?}: relative difference {difference:e}");
        // Two bytes a weight, not four.
        assert!(served.weight_bytes() * 10 < widened.weight_bytes() * 6, "{dtype:?}: {}", served.weight_bytes());
    }
}
