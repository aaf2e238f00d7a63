//! Training throughput of the factory's own trainer on work a peer can repeat exactly: a Llama
//! config read from JSON, fresh weights (normal 0.02, as `transformers` initialises), a stream
//! of random tokens the trainer samples its windows from, AdamW (lr 1e-3 constant, betas
//! 0.9/0.95, weight decay 0.1 except on norms), clipping at 1.0. With `--share DIR` it first
//! writes the initial weights (`init.safetensors`) and every step's windows (`batches.u32`,
//! little-endian, steps x batch x (seq + 1)) there, for `bench/torch_train.py` to train the
//! same model on the same batches. Prints one JSON line with every step's loss, the median step
//! time after warm-up and the peak RSS; `bench/train.sh` runs both sides and compares.
//!
//!   cargo run --release -p factory-bench --bin train-bench -- --config ref-small.json --batch 8 --seq 256

use clap::Parser;
use factory_bench::{constant_rate_settings, StepLog};
use factory_model::LlamaConfig;
use factory_train::TokenStreams;
use rand::{Rng, SeedableRng};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    config: std::path::PathBuf,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    #[arg(long, default_value_t = 20)]
    steps: u64,
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Threads for the products (the peer's `torch.set_num_threads`); default: every core.
    #[arg(long)]
    threads: Option<usize>,
    /// Where to write the initial weights and the batches for the peer.
    #[arg(long)]
    share: Option<std::path::PathBuf>,
    /// Windows' worth of random tokens in the stream the batches are sampled from.
    #[arg(long, default_value_t = 64)]
    stream_windows: usize,
}

/// The most memory this process has held (`VmHWM`), in MiB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kib / 1024.0 * 10.0).round() / 10.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(threads) = args.threads {
        // candle's products size their thread pool from this, read at first use.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let config = LlamaConfig::from_json(&std::fs::read_to_string(&args.config)?)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let window = args.seq + 1;
    let stream: Vec<u32> =
        (0..window * args.stream_windows).map(|_| rng.random_range(0..config.vocab_size as u32)).collect();
    let data = TokenStreams { train: stream.clone(), validation: stream[..window * 2].to_vec() };
    let total = args.warmup + args.steps;
    let settings = constant_rate_settings(args.seq, args.batch, total);
    let (seed, device) = (0, factory_model::Device::Cpu);
    let initial = factory_model::Weights::init(&config, seed, factory_model::DType::F32, &device)?.to_safetensors()?;
    if let Some(dir) = &args.share {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("init.safetensors"), &initial)?;
        let mut batches = Vec::with_capacity(total as usize * args.batch * window * 4);
        for step in 0..total {
            for start in factory_train::batch_starts(seed, step, 0, args.batch, stream.len(), window) {
                batches.extend(stream[start..start + window].iter().flat_map(|token| token.to_le_bytes()));
            }
        }
        std::fs::write(dir.join("batches.u32"), batches)?;
    }
    let mut steps = StepLog::default();
    let from = Some(factory_train::Initial::Safetensors(&initial));
    factory_train::train(&config, &settings, &data, seed, from, None, &mut steps)?;
    let median = steps.median_step_seconds(args.warmup as usize, args.batch * args.seq);
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    println!(
        "{}",
        serde_json::json!({
            "side": "factory",
            "params": config.parameter_count(),
            "batch": args.batch, "seq": args.seq, "threads": threads,
            "step_s_median": (median * 1e4).round() / 1e4,
            "tokens_per_s": ((args.batch * args.seq) as f64 / median * 10.0).round() / 10.0,
            "peak_rss_mb": peak_rss_mb(),
            "losses": steps.0.iter().map(|m| (m.loss * 1e5).round() / 1e5).collect::<Vec<_>>(),
        })
    );
    Ok(())
}
