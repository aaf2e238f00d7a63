//! Training throughput of the factory's own trainer, on the same terms as the PyTorch peer
//! (`shared/bench/peers/torch_train.py`): a Llama config read from JSON, one batch's worth of
//! fixed random tokens (the peer repeats one batch), the same thread count, AdamW (lr 1e-3, betas 0.9/0.95, weight decay 0.1), gradient clipping at 1.0, median step
//! time after warm-up. Prints one JSON line; `bench/train.sh` runs both and the ratio.
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
    // One batch's worth, as the peer trains on one batch repeated: the same tokens per step.
    let train: Vec<u32> = (0..window * args.batch).map(|_| rng.random_range(0..config.vocab_size as u32)).collect();
    let data = TokenStreams { train: train.clone(), validation: train[..window * 2].to_vec() };
    let settings = constant_rate_settings(args.seq, args.batch, args.warmup + args.steps);
    let mut steps = StepLog::default();
    factory_train::train(&config, &settings, &data, 0, None, None, &mut steps)?;
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
            "first_loss": steps.0.first().map(|m| m.loss),
            "last_loss": steps.0.last().map(|m| m.loss),
        })
    );
    Ok(())
}
