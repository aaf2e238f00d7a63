//! The engine on GGUF files, on the terms of `bench/llama_cpp_gguf.py` (llama.cpp on the same
//! file): resident memory the load adds, prefill tokens/s (one prompt in one step, as llama.cpp
//! evaluates it in one batch) and decode tokens/s (greedy, one stream, one token a step), each
//! the median of a few runs. With `--make OUT --type T` it writes a random-weight model of
//! `--preset` (125m: 12 blocks of 768, a 32,000-token vocabulary) as a GGUF file of type T
//! instead. Prints one JSON line; `bench/gguf.sh` runs it beside llama.cpp.
//!
//!   gguf-bench --make model.gguf --type q8_0
//!   gguf-bench --gguf model.gguf --threads 2

use std::time::Instant;

use clap::Parser;
use factory_model::gguf::{load_decoder, write_llama, GgufVocabulary};
use factory_model::quantized::GgmlDType;
use factory_model::{DType, Decoder, Device, KvCache, KvPrecision, Llama, LlamaConfig, StepInput, Weights};
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
}

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

fn make(path: &std::path::Path, preset: &str, kind: GgmlDType) -> anyhow::Result<()> {
    let config = LlamaConfig::preset(preset, 32_000)?;
    let model = Llama::new(config.clone(), Weights::init(&config, 7, DType::F32, &Device::Cpu)?)?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    write_llama(&mut out, &model, kind, preset, &vocabulary(config.vocab_size)).map_err(|e| anyhow::anyhow!("{e}"))?;
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
        let logits = decoder.forward_step(&mut [StepInput { tokens: &prompt, cache: &mut cache }])?;
        prefill.push(args.prompt_tokens as f64 / started.elapsed().as_secs_f64());
        let mut next = factory_engine::argmax(logits.row(0));
        let started = Instant::now();
        for _ in 0..args.new_tokens {
            let logits = decoder.forward_step(&mut [StepInput { tokens: &[next], cache: &mut cache }])?;
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match (&args.make, &args.gguf) {
        (Some(path), _) => make(path, &args.preset, block_type(&args.kind)?),
        (None, Some(path)) => run(path, &args),
        (None, None) => anyhow::bail!("give --gguf FILE to run, or --make FILE to write one"),
    }
}
