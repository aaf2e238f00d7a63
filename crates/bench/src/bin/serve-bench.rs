//! Decode throughput of the serving engine, on the terms of the transformers peer
//! (`shared/bench/peers/torch_generate.py`): greedy, batch 1, a random prompt of
//! `--prompt-tokens`, decode speed = (N - 1) new tokens over time(N) - time(1). Then aggregate
//! tokens/s with 1, 8 and 32 streams submitted together. With `--export DIR` it writes a
//! random-weight Hugging Face directory (config, weights) for the peers to load, so both sides
//! run the same weights. Prints one JSON line; `bench/serve.sh` runs it beside the peers.
//!
//! It also measures this machine's arithmetic ceiling: the multiply-adds per second its vector
//! units reach on every core with nothing but independent chains of fused multiply-adds in
//! registers. Decode in f32 cannot exceed it, so it bounds how far batching can lift one
//! stream's throughput (`ceiling_streams_over_1`): when one stream already runs the
//! arithmetic at a good share of that peak, no batch size multiplies it by much.
//!
//!   cargo run --release -p factory-bench --bin serve-bench -- --model DIR

use std::sync::Barrier;
use std::time::Instant;

use clap::Parser;
use factory_engine::{Engine, EngineSettings, GenerationEvent, GenerationRequest, SamplingParams};
use factory_model::{DType, Decoder, Device, KvPrecision, Llama, LlamaConfig, Weights};
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
    /// How the caches store keys and values: f32 or f16.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    kv_cache: String,
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
    let mut events = engine.submit(GenerationRequest::new(prompt.to_vec(), params))?;
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Delta { .. } => {}
            GenerationEvent::Done { usage, .. } => return Ok(usage.completion_tokens),
            GenerationEvent::Failed(message) => anyhow::bail!(message),
        }
    }
    anyhow::bail!("the engine stopped")
}

/// The multiply-adds of decoding one token: every projection and the output head, and attention
/// over `positions` cached positions (scores and the weighted sum of values).
fn decode_macs_per_token(config: &LlamaConfig, positions: f64) -> f64 {
    let (hidden, intermediate) = (config.hidden_size, config.intermediate_size);
    let (q_width, kv_width) = (config.num_attention_heads * config.head_dim(), config.kv_heads() * config.head_dim());
    let projections = hidden * (q_width + 2 * kv_width) + q_width * hidden + 3 * hidden * intermediate;
    let per_layer = projections as f64 + 2.0 * q_width as f64 * positions;
    config.num_hidden_layers as f64 * per_layer + (hidden * config.vocab_size) as f64
}

/// Multiply-adds per second on `threads` threads at once, each running [`PeakChains`].
fn fma_peak(threads: usize) -> f64 {
    let start = Barrier::new(threads + 1);
    let (macs, seconds) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let start = &start;
                scope.spawn(move || {
                    start.wait();
                    pulp::Arch::new().dispatch(PeakChains { seed: thread as f32 })
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let macs: f64 = workers.into_iter().map(|worker| worker.join().unwrap_or(0.0)).sum();
        (macs, began.elapsed().as_secs_f64())
    });
    macs / seconds
}

/// Twelve independent chains of vector multiply-adds, enough to cover the latency of the
/// fused multiply-add on every x86 core (4 cycles, up to 2 per cycle), for about a tenth of a
/// second (shorter runs gave figures that swung by half); returns the multiply-adds done.
struct PeakChains {
    seed: f32,
}

impl pulp::WithSimd for PeakChains {
    type Output = f64;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> f64 {
        // The same number of vector instructions whatever the width, so a CPU without vector
        // multiply-adds (pulp's scalar fallback) is not kept for minutes.
        const ROUNDS: usize = 31_250_000;
        const CHAINS: usize = 12;
        // Distinct starting values the compiler cannot see, so it cannot merge the chains.
        let seed = std::hint::black_box(self.seed);
        let mut chains: [S::f32s; CHAINS] = std::array::from_fn(|i| simd.splat_f32s(seed + i as f32));
        let (factor, term) = (simd.splat_f32s(0.999_999), simd.splat_f32s(1e-7));
        for _ in 0..ROUNDS {
            for chain in &mut chains {
                *chain = simd.mul_add_f32s(*chain, factor, term);
            }
        }
        std::hint::black_box(chains);
        (ROUNDS * S::F32_LANES * CHAINS) as f64
    }
}

/// This process's resident memory in MiB (`VmRSS` of `/proc/self/status`), where Linux provides it.
fn resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kib / 1024.0 * 10.0).round() / 10.0)
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
    let decoder = decoder.with_kv_precision(if args.kv_cache == "f16" { KvPrecision::F16 } else { KvPrecision::F32 });
    // As the server does: once the decoder holds its copy, the loaded weights go.
    drop(model);
    let engine = Engine::start(decoder, tokenizer(config.vocab_size)?, &[], EngineSettings::default());
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
    let rss_idle = resident_mib();
    let mut aggregate = serde_json::Map::new();
    let mut rss_loaded: Option<f64> = None;
    for streams in args.streams.split(',').filter_map(|s| s.trim().parse::<usize>().ok()) {
        let started = Instant::now();
        let runs = (0..streams).map(|_| generate(&engine, &prompt, args.new_tokens));
        // Resident memory sampled while the streams run: the decoder and every stream's cache.
        let sampling = async {
            loop {
                if let Some(now) = resident_mib() {
                    rss_loaded = Some(rss_loaded.map_or(now, |most| most.max(now)));
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        let generated: usize = tokio::select! {
            generated = futures::future::try_join_all(runs) => generated?.into_iter().sum(),
            () = sampling => unreachable!("the sampler runs until the streams are done"),
        };
        let seconds = started.elapsed().as_secs_f64();
        aggregate.insert(
            format!("streams_{streams}_tokens_per_s"),
            ((generated as f64 / seconds * 10.0).round() / 10.0).into(),
        );
    }
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let peak = fma_peak(threads);
    // Decode attends on average to the prompt and half the new tokens.
    let macs = decode_macs_per_token(&config, args.prompt_tokens as f64 + (args.new_tokens as f64 + 1.0) / 2.0);
    let one_stream = aggregate.get("streams_1_tokens_per_s").and_then(serde_json::Value::as_f64);
    let mut report = serde_json::json!({
        "peer": "factory-engine", "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "parameters": config.parameter_count(), "kv_cache": args.kv_cache, "aggregate": aggregate,
        "rss_idle_mib": rss_idle, "rss_under_load_mib": rss_loaded,
        "fma_peak_gmac_per_s": (peak / 1e8).round() / 10.0,
        "decode_macs_per_token": macs.round(),
        "ceiling_tokens_per_s": (peak / macs).round(),
        // At most this many times one stream's throughput, however many streams are batched.
        "ceiling_streams_over_1": one_stream.map(|one| (peak / macs / one * 100.0).round() / 100.0),
    });
    if let (Some(report), Some(decode)) = (report.as_object_mut(), decode.as_object()) {
        report.extend(decode.clone());
    }
    println!("{report}");
    Ok(())
}
