//! The engine on GGUF files, on the terms of `bench/llama_cpp_gguf.py` (llama.cpp on the same
//! file): resident memory the load adds, prefill tokens/s (one prompt in one step, as llama.cpp
//! evaluates it in one batch) and decode tokens/s (greedy, one stream, one token a step), each
//! the median of a few runs. With `--make OUT --type T` it writes a random-weight model of
//! `--preset` (125m: 12 blocks of 768, a 32,000-token vocabulary) as a GGUF file of type T
//! instead (and, with `--hf DIR`, the same weights in f32 as a Hugging Face checkpoint). With
//! `--lora FILE` it fine-tunes low-rank adapters on the file's base frozen in its blocks, on the
//! terms of `bench/peft_lora.py` (PyTorch + peft on the f32 checkpoint). Prints one JSON line;
//! `bench/gguf.sh` and `bench/lora.sh` run it beside its peer.
//!
//!   gguf-bench --make model.gguf --type q8_0 [--hf DIR]
//!   gguf-bench --gguf model.gguf --threads 2
//!   gguf-bench --lora model.gguf --rank 8 --batch 4 --seq 128 --steps 10 --threads 2

use std::time::Instant;

use clap::Parser;
use factory_bench::{constant_rate_settings, StepLog};
use factory_model::gguf::{load_decoder, read_frozen, write_llama, GgufVocabulary};
use factory_model::quantized::GgmlDType;
use factory_model::{DType, Decoder, Device, KvCache, KvPrecision, Llama, LlamaConfig, LoraConfig, StepInput, Weights};
use factory_train::{Initial, Outcome, TokenStreams, TrainSettings};
use rand::{Rng, SeedableRng};

#[derive(Debug, Parser)]
struct Args {
    /// A GGUF file to load and run.
    #[arg(long)]
    gguf: Option<std::path::PathBuf>,
    /// Write a random-weight GGUF file here and exit.
    #[arg(long)]
    make: Option<std::path::PathBuf>,
    /// The block type --make writes: f16, q8_0, q4_k, q6_k.
    #[arg(long = "type", default_value = "q8_0")]
    kind: String,
    #[arg(long, default_value = "125m")]
    preset: String,
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// With --make: also write the f32 weights as `config.json` and `model.safetensors` here.
    #[arg(long)]
    hf: Option<std::path::PathBuf>,
    /// A GGUF file whose frozen base LoRA adapters train on.
    #[arg(long)]
    lora: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    #[arg(long, default_value_t = 10)]
    steps: u64,
    #[arg(long, default_value_t = 2)]
    warmup: u64,
}

/// The projections both sides put adapters on.
const LORA_TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// This process's resident memory, in bytes.
fn resident_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    let kib: u64 = line.split_whitespace().nth(1).ok_or_else(|| anyhow::anyhow!("no VmRSS value"))?.parse()?;
    Ok(kib * 1024)
}

fn block_type(name: &str) -> anyhow::Result<GgmlDType> {
    Ok(match name {
        "f16" => GgmlDType::F16,
        "q8_0" => GgmlDType::Q8_0,
        "q4_k" => GgmlDType::Q4K,
        "q6_k" => GgmlDType::Q6K,
        other => anyhow::bail!("--type {other}: f16, q8_0, q4_k or q6_k"),
    })
}

/// A byte-level vocabulary of `size` tokens llama.cpp loads: the 256 byte tokens GPT-2's
/// alphabet spells, then distinct filler tokens (the benchmark feeds token ids, never text).
fn vocabulary(size: usize) -> GgufVocabulary {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut shifted = 0;
    let mut tokens: Vec<String> = (0..256u32)
        .map(|b| {
            let code = if printable(b) {
                b
            } else {
                shifted += 1;
                255 + shifted
            };
            char::from_u32(code).map(String::from).unwrap_or_default()
        })
        .collect();
    tokens.extend((tokens.len()..size).map(|i| format!("tok{i}")));
    GgufVocabulary {
        model: "gpt2".to_string(),
        pre: "gpt-2".to_string(),
        token_types: vec![1; tokens.len()],
        tokens,
        merges: vec!["t o".to_string()],
        scores: Vec::new(),
        bos: Some(1),
        eos: Some(2),
        chat_template: None,
    }
}

fn make(path: &std::path::Path, preset: &str, kind: GgmlDType, hf: Option<&std::path::Path>) -> anyhow::Result<()> {
    let config = LlamaConfig::preset(preset, 32_000)?;
    let model = Llama::new(config.clone(), Weights::init(&config, 7, DType::F32, &Device::Cpu)?)?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    write_llama(&mut out, &model, kind, preset, &vocabulary(config.vocab_size)).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(dir) = hf {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("config.json"), config.to_json())?;
        std::fs::write(dir.join("model.safetensors"), model.weights.to_safetensors()?)?;
    }
    println!("{}", serde_json::json!({ "made": path, "parameters": config.parameter_count() }));
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn run(path: &std::path::Path, args: &Args) -> anyhow::Result<()> {
    let before = resident_bytes()?;
    let started = Instant::now();
    let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
    let (decoder, _) = load_decoder(&mut file, args.threads).map_err(|e| anyhow::anyhow!("{e}"))?;
    // llama.cpp caches keys and values in f16; so do we here.
    let decoder: Decoder = decoder.with_kv_precision(KvPrecision::F16);
    let load_s = started.elapsed().as_secs_f64();
    let loaded = resident_bytes()?;
    let vocab = decoder.config().vocab_size;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let prompt: Vec<u32> = (0..args.prompt_tokens).map(|_| rng.random_range(3..vocab as u32)).collect();
    let capacity = args.prompt_tokens + args.new_tokens + 1;
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..args.repeats {
        let mut cache = KvCache::new(&decoder, capacity)?;
        let started = Instant::now();
        let logits = decoder.forward_step(&mut [StepInput { tokens: &prompt, cache: &mut cache, adapter: None }])?;
        prefill.push(args.prompt_tokens as f64 / started.elapsed().as_secs_f64());
        let mut next = factory_engine::argmax(logits.row(0));
        let started = Instant::now();
        for _ in 0..args.new_tokens {
            let logits =
                decoder.forward_step(&mut [StepInput { tokens: &[next], cache: &mut cache, adapter: None }])?;
            next = factory_engine::argmax(logits.row(0));
        }
        decode.push(args.new_tokens as f64 / started.elapsed().as_secs_f64());
    }
    println!(
        "{}",
        serde_json::json!({
            "engine": "factory", "file": path, "file_bytes": std::fs::metadata(path)?.len(),
            "threads": args.threads, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
            "load_s": (load_s * 1000.0).round() / 1000.0,
            "resident_added_bytes": loaded.saturating_sub(before),
            "weight_bytes": decoder.weight_bytes(),
            "prefill_tokens_per_s": (median(prefill) * 10.0).round() / 10.0,
            "decode_tokens_per_s": (median(decode) * 10.0).round() / 10.0,
        })
    );
    Ok(())
}

/// One training window of tokens in `1..vocab` from a 32-bit linear congruential generator,
/// which `bench/peft_lora.py` repeats bit for bit, so both sides train on the same tokens.
fn shared_tokens(count: usize, vocab: usize) -> Vec<u32> {
    let mut state: u32 = 12_345;
    (0..count)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            1 + (state >> 8) % (vocab as u32 - 1)
        })
        .collect()
}

/// The process's resident peak so far (`VmHWM`), in bytes.
fn resident_peak() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).ok_or_else(|| anyhow::anyhow!("no VmHWM"))?;
    let kib: u64 = line.split_whitespace().nth(1).unwrap_or("0").parse()?;
    Ok(kib * 1024)
}

/// LoRA on the file's base frozen in its blocks: every row of every batch is the one shared
/// window (the training stream is exactly one window long), as the peer trains on it.
fn lora(path: &std::path::Path, args: &Args) -> anyhow::Result<()> {
    // candle's products size their thread pool from this, read at first use.
    std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
    let (model, _) = read_frozen(&mut file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = model.config.clone();
    let frozen_bytes = model.frozen_bytes();
    let window = shared_tokens(args.seq + 1, config.vocab_size);
    let data = TokenStreams { train: window.clone(), validation: window };
    let settings = TrainSettings {
        lora: Some(LoraConfig {
            rank: args.rank,
            alpha: 2.0 * args.rank as f64,
            target_modules: LORA_TARGETS.iter().map(|name| name.to_string()).collect(),
        }),
        ..constant_rate_settings(args.seq, args.batch, args.warmup + args.steps)
    };
    let mut steps = StepLog::default();
    let outcome =
        factory_train::train(&config, &settings, &data, 0, Some(Initial::Frozen(Box::new(model))), None, &mut steps)?;
    let Outcome::Finished { model, .. } = outcome else { anyhow::bail!("the run stopped before its last step") };
    let trainable = model.adapters.as_ref().map_or(0, |adapters| adapters.parameter_count());
    let tokens = (args.batch * args.seq) as f64;
    let step_s = steps.median_step_seconds(args.warmup as usize, args.batch * args.seq);
    println!(
        "{}",
        serde_json::json!({
            "side": "factory", "file": path, "threads": args.threads,
            "params": config.parameter_count(), "trainable_params": trainable,
            "frozen_base_bytes": frozen_bytes,
            "rank": args.rank, "batch": args.batch, "seq": args.seq,
            "step_s_median": (step_s * 1e4).round() / 1e4,
            "tokens_per_s": (tokens / step_s * 10.0).round() / 10.0,
            "peak_resident_bytes": resident_peak()?,
            "losses": steps.0.iter().map(|m| (m.loss * 1e4).round() / 1e4).collect::<Vec<_>>(),
        })
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match (&args.make, &args.gguf, &args.lora) {
        (Some(path), _, _) => make(path, &args.preset, block_type(&args.kind)?, args.hf.as_deref()),
        (None, Some(path), _) => run(path, &args),
        (None, None, Some(path)) => lora(path, &args),
        (None, None, None) => {
            anyhow::bail!("give --gguf FILE to run, --lora FILE to fine-tune, or --make FILE to write one")
        }
    }
}
