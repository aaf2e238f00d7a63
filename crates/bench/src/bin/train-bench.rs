//! Training throughput of the factory's own trainer, on the same terms as the PyTorch peer
//! (`shared/bench/peers/torch_train.py`): a Llama config read from JSON, one batch's worth of
//! fixed random tokens (the peer repeats one batch), the same thread count, AdamW (lr 1e-3, betas 0.9/0.95, weight decay 0.1), gradient clipping at 1.0, median step
//! time after warm-up. Prints one JSON line; `bench/train.sh` runs both and the ratio.
//!
//!   cargo run --release -p factory-bench --bin train-bench -- --config ref-small.json --batch 8 --seq 256

use clap::Parser;
use factory_model::LlamaConfig;
use factory_train::{Checkpoint, Control, EvalMetrics, StepMetrics, TokenStreams, TrainObserver, TrainSettings};
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

#[derive(Default)]
struct Timer {
    steps: Vec<StepMetrics>,
}

impl TrainObserver for Timer {
    fn on_step(&mut self, metrics: &StepMetrics) -> Control {
        self.steps.push(metrics.clone());
        Control::Continue
    }
    fn on_eval(&mut self, _: &EvalMetrics) {}
    fn on_checkpoint(&mut self, _: Checkpoint) -> Result<(), String> {
        Ok(())
    }
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
    let settings = TrainSettings {
        seq_len: args.seq,
        batch_size: args.batch,
        steps: args.warmup + args.steps,
        learning_rate: 1e-3,
        min_learning_rate: 1e-3,
        warmup_steps: 0,
        eval_every: 0,
        eval_windows: 1,
        checkpoint_every: 0,
        validation_fraction: 0.0,
        ..TrainSettings::default()
    };
    let mut timer = Timer::default();
    factory_train::train(&config, &settings, &data, 0, None, None, &mut timer)?;
    let mut seconds: Vec<f64> = timer.steps[args.warmup as usize..]
        .iter()
        .map(|m| (args.batch * args.seq) as f64 / m.tokens_per_second)
        .collect();
    seconds.sort_by(f64::total_cmp);
    let median = seconds[seconds.len() / 2];
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    println!(
        "{}",
        serde_json::json!({
            "side": "factory",
            "params": config.parameter_count(),
            "batch": args.batch, "seq": args.seq, "threads": threads,
            "step_s_median": (median * 1e4).round() / 1e4,
            "tokens_per_s": ((args.batch * args.seq) as f64 / median * 10.0).round() / 10.0,
            "first_loss": timer.steps.first().map(|m| m.loss),
            "last_loss": timer.steps.last().map(|m| m.loss),
        })
    );
    Ok(())
}
