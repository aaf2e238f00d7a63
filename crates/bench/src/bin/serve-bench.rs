//! Decode throughput of the serving engine, on the terms of the transformers peer
//! (`shared/bench/peers/torch_generate.py`): greedy, batch 1, a random prompt of
//! `--prompt-tokens`, decode speed = (N - 1) new tokens over time(N) - time(1). Then aggregate
//! tokens/s with 1, 8 and 32 streams submitted together. With `--export DIR` it writes a
//! random-weight Hugging Face directory (config, weights) for the peers to load, so both sides
//! run the same weights. Prints one JSON line; `bench/serve.sh` runs it beside the peers.
//!
//!   cargo run --release -p factory-bench --bin serve-bench -- --model DIR

use std::time::Instant;

use clap::Parser;
use factory_engine::{Engine, EngineSettings, GenerationEvent, GenerationRequest, SamplingParams};
use factory_model::{DType, Decoder, Device, Llama, LlamaConfig, Weights};
use factory_tokenizer::{BpeSettings, Tokenizer};
use rand::{Rng, SeedableRng};

#[derive(Debug, Parser)]
struct Args {
    /// A Hugging Face directory (config.json, model.safetensors).
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// Write a random-weight directory from this config to --model and exit.
    #[arg(long)]
    export: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, default_value = "1,8,32")]
    streams: String,
    /// Threads the decoder runs on (default: every core).
    #[arg(long)]
    threads: Option<usize>,
}

fn tokenizer(vocab: usize) -> anyhow::Result<Tokenizer> {
    // Decoding needs a tokenizer covering every id the model can emit.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/tinyshakespeare.txt");
    let text = std::fs::read_to_string(path)?;
    let tokenizer = Tokenizer::train(&BpeSettings::new(vocab), text.split("\n\n").map(str::to_string))?;
    anyhow::ensure!(
        tokenizer.vocab_size() == vocab,
        "the tokenizer has {} tokens, not {vocab}",
        tokenizer.vocab_size()
    );
    Ok(tokenizer)
}

async fn generate(engine: &Engine, prompt: &[u32], tokens: usize) -> anyhow::Result<usize> {
    let params = SamplingParams { temperature: 0.0, max_tokens: tokens, ignore_eos: true, ..SamplingParams::default() };
    let mut events = engine.submit(GenerationRequest { prompt: prompt.to_vec(), params })?;
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Delta { .. } => {}
            GenerationEvent::Done { usage, .. } => return Ok(usage.completion_tokens),
            GenerationEvent::Failed(message) => anyhow::bail!(message),
        }
    }
    anyhow::bail!("the engine stopped")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(config_path) = &args.export {
        let dir = args.model.clone().ok_or_else(|| anyhow::anyhow!("--export needs --model DIR to write"))?;
        let config = LlamaConfig::from_json(&std::fs::read_to_string(config_path)?)?;
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("config.json"), config.to_json())?;
        let weights = Weights::init(&config, 0, DType::F32, &Device::Cpu)?;
        std::fs::write(dir.join("model.safetensors"), weights.to_safetensors()?)?;
        // The tokenizer too, so converters that need one (llama.cpp's GGUF) can read the directory.
        let tokenizer = tokenizer(config.vocab_size)?;
        std::fs::write(dir.join("tokenizer.json"), tokenizer.to_json()?)?;
        let tokenizer_config = tokenizer.hf_tokenizer_config(config.max_position_embeddings);
        std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_vec_pretty(&tokenizer_config)?)?;
        return Ok(());
    }
    let dir = args.model.clone().ok_or_else(|| anyhow::anyhow!("--model DIR is required"))?;
    let config = LlamaConfig::from_json(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let weights = Weights::load(&config, &dir.join("model.safetensors"), DType::F32, &Device::Cpu)?;
    let model = Llama::new(config.clone(), weights)?;
    let decoder = match args.threads {
        Some(threads) => Decoder::with_threads(&model, threads)?,
        None => Decoder::new(&model)?,
    };
    let engine = Engine::start(decoder, tokenizer(config.vocab_size)?, EngineSettings::default());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let prompt: Vec<u32> = (0..args.prompt_tokens).map(|_| rng.random_range(3..config.vocab_size as u32)).collect();

    generate(&engine, &prompt, 4).await?;
    let mut full = Vec::new();
    let mut one = Vec::new();
    for _ in 0..args.repeats {
        let started = Instant::now();
        generate(&engine, &prompt, args.new_tokens).await?;
        full.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        generate(&engine, &prompt, 1).await?;
        one.push(started.elapsed().as_secs_f64());
    }
    // `--repeats 0` measures only the aggregate (for profiling it alone).
    let decode = if args.repeats == 0 {
        serde_json::Value::Null
    } else {
        let (full, one) = (median(full), median(one));
        serde_json::json!({
            "decode_tokens_per_s": ((args.new_tokens - 1) as f64 / (full - one) * 10.0).round() / 10.0,
            "prefill_plus_first_s": (one * 10_000.0).round() / 10_000.0,
        })
    };
    let mut aggregate = serde_json::Map::new();
    for streams in args.streams.split(',').filter_map(|s| s.trim().parse::<usize>().ok()) {
        let started = Instant::now();
        let runs = (0..streams).map(|_| generate(&engine, &prompt, args.new_tokens));
        let generated: usize = futures::future::try_join_all(runs).await?.into_iter().sum();
        let seconds = started.elapsed().as_secs_f64();
        aggregate.insert(
            format!("streams_{streams}_tokens_per_s"),
            ((generated as f64 / seconds * 10.0).round() / 10.0).into(),
        );
    }
    let mut report = serde_json::json!({
        "peer": "factory-engine", "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "parameters": config.parameter_count(), "aggregate": aggregate,
    });
    if let (Some(report), Some(decode)) = (report.as_object_mut(), decode.as_object()) {
        report.extend(decode.clone());
    }
    println!("{report}");
    Ok(())
}
