//! What agents' requests cost the serving engine, each against the same engine without the
//! feature, in one run (`bench/agent.sh`):
//!
//! - time to first token for a prompt that starts with a long shared system prompt
//!   (`--system-tokens`, default 1,000), the first time (cold: the whole prompt is prefilled)
//!   and again with another question after it (warm: the system prompt comes from the prefix
//!   cache); the goal is warm <= 0.2x cold;
//! - decode tokens/s under a JSON schema (every token masked by the grammar) against
//!   unconstrained decoding of the same model; the goal is >= 0.9x.
//!
//! Random weights from a Hugging Face config (`--config`), with `max_position_embeddings`
//! raised to hold the system prompt, and a tokenizer trained on tinyshakespeare. Prints one
//! JSON line.
//!
//!   cargo run --release -p factory-bench --bin agent-bench -- --config shared/bench/configs/ref-small.json

use std::time::Instant;

use clap::Parser;
use factory_engine::{Engine, EngineSettings, GenerationEvent, GenerationRequest, Grammar, SamplingParams};
use factory_model::{DType, Decoder, Device, Llama, LlamaConfig, Weights};
use factory_tokenizer::{BpeSettings, Tokenizer};
use rand::{Rng, SeedableRng};

#[derive(Debug, Parser)]
struct Args {
    /// A Hugging Face `config.json` for the random-weight model.
    #[arg(long)]
    config: std::path::PathBuf,
    #[arg(long, default_value_t = 1000)]
    system_tokens: usize,
    /// Distinct system prompts, each measured cold then warm (medians are reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
}

/// What one request took: seconds to its first token, tokens decoded, and seconds from the
/// first token to the last.
struct Timed {
    first_token_s: f64,
    tokens: usize,
    decode_s: f64,
    cached: usize,
}

async fn run(
    engine: &Engine,
    prompt: &[u32],
    params: SamplingParams,
    grammar: Option<&Grammar>,
) -> anyhow::Result<Timed> {
    let constraint = grammar.map(|grammar| engine.constrain(grammar)).transpose()?;
    let started = Instant::now();
    let mut events =
        engine.submit(GenerationRequest { constraint, ..GenerationRequest::new(prompt.to_vec(), params) })?;
    let mut first = None;
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Delta { .. } => {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
            }
            GenerationEvent::Done { usage, timings, .. } => {
                return Ok(Timed {
                    first_token_s: first.unwrap_or(timings.first_token_ms / 1000.0),
                    tokens: usage.completion_tokens,
                    decode_s: timings.decode_ms / 1000.0,
                    cached: usage.cached_tokens,
                })
            }
            GenerationEvent::Failed(message) => anyhow::bail!(message),
        }
    }
    anyhow::bail!("the engine stopped")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn rounded(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = LlamaConfig::from_json(&std::fs::read_to_string(&args.config)?)?;
    config.max_position_embeddings = config.max_position_embeddings.max(args.system_tokens + 64 + args.new_tokens);
    let weights = Weights::init(&config, 0, DType::F32, &Device::Cpu)?;
    let model = Llama::new(config.clone(), weights)?;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/tinyshakespeare.txt");
    let text = std::fs::read_to_string(path)?;
    let tokenizer = Tokenizer::train(&BpeSettings::new(config.vocab_size), text.split("\n\n").map(str::to_string))?;
    let engine = Engine::start(Decoder::new(&model)?, tokenizer, &[], EngineSettings::default());
    drop(model);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut random = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(3..config.vocab_size as u32)).collect() };

    // Time to first token: each system prompt new (cold), then again with another question.
    let first_token = SamplingParams { temperature: 0.0, max_tokens: 1, ..SamplingParams::default() };
    run(&engine, &random(32), first_token.clone(), None).await?;
    let (mut cold, mut warm, mut cached) = (Vec::new(), Vec::new(), 0);
    for _ in 0..args.repeats {
        let system = random(args.system_tokens);
        let ask = |question: Vec<u32>| [system.clone(), question].concat();
        cold.push(run(&engine, &ask(random(24)), first_token.clone(), None).await?.first_token_s);
        let again = run(&engine, &ask(random(24)), first_token.clone(), None).await?;
        warm.push(again.first_token_s);
        cached = again.cached;
    }
    let (cold, warm) = (median(cold), median(warm));

    // Decode speed with and without a schema, alternating so drift in the machine hits both.
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "title": { "type": "string" },
            "scores": { "type": "array", "items": { "type": "number" } },
            "notes": { "type": "array", "items": { "type": "string" } },
        },
        "required": ["title", "scores", "notes"],
        "additionalProperties": false,
    });
    let grammar = Grammar::JsonSchema(schema);
    let sampled = |seed| SamplingParams {
        temperature: 1.0,
        seed: Some(seed),
        max_tokens: args.new_tokens,
        ..SamplingParams::default()
    };
    let (mut free, mut constrained) = ((0usize, 0.0f64), (0usize, 0.0f64));
    for seed in 0..args.repeats as u64 {
        let prompt = random(32);
        let plain = SamplingParams { ignore_eos: true, ..sampled(seed) };
        let unconstrained = run(&engine, &prompt, plain, None).await?;
        free = (free.0 + unconstrained.tokens.saturating_sub(1), free.1 + unconstrained.decode_s);
        let shaped = run(&engine, &prompt, sampled(seed), Some(&grammar)).await?;
        constrained = (constrained.0 + shaped.tokens.saturating_sub(1), constrained.1 + shaped.decode_s);
    }
    let free_rate = free.0 as f64 / free.1;
    let constrained_rate = constrained.0 as f64 / constrained.1;
    println!(
        "{}",
        serde_json::json!({
            "model": { "hidden_size": config.hidden_size, "layers": config.num_hidden_layers, "vocab": config.vocab_size },
            "prefix_cache": {
                "system_tokens": args.system_tokens,
                "cold_first_token_s": rounded(cold, 4),
                "warm_first_token_s": rounded(warm, 4),
                "cached_tokens": cached,
                "warm_over_cold": rounded(warm / cold, 3),
            },
            "json_schema": {
                "unconstrained_tokens_per_s": rounded(free_rate, 1),
                "constrained_tokens_per_s": rounded(constrained_rate, 1),
                "constrained_tokens": constrained.0,
                "constrained_over_unconstrained": rounded(constrained_rate / free_rate, 3),
            },
        })
    );
    Ok(())
}
