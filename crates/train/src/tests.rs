#![allow(clippy::unwrap_used)]

use factory_model::LlamaConfig;
use factory_tokenizer::{BpeSettings, Tokenizer};

use super::*;

fn documents() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/tinyshakespeare.txt");
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|_| include_str!("../../model/tests/fixtures/sonnets.txt").repeat(40));
    text.split("\n\n").take(600).map(str::to_string).collect()
}

fn streams(seq_len: usize) -> (Tokenizer, TokenStreams) {
    let tokenizer = Tokenizer::train(&BpeSettings::new(320), documents().into_iter()).unwrap();
    let tokens = tokenize_documents(&tokenizer, documents()).unwrap();
    (tokenizer, split_tokens(tokens, 0.05, seq_len).unwrap())
}

fn small_config(vocab: usize) -> LlamaConfig {
    let mut config = LlamaConfig::new(vocab, 32, 64, 2, 4);
    config.num_key_value_heads = Some(2);
    config.max_position_embeddings = 64;
    config
}

#[derive(Default)]
struct Recorder {
    steps: Vec<StepMetrics>,
    evals: Vec<EvalMetrics>,
    checkpoints: Vec<Checkpoint>,
    preempt_at: Option<u64>,
    stop_at: Option<u64>,
}

impl TrainObserver for Recorder {
    fn on_step(&mut self, metrics: &StepMetrics) -> Control {
        self.steps.push(metrics.clone());
        if self.preempt_at == Some(metrics.step) {
            Control::Checkpoint
        } else if self.stop_at == Some(metrics.step) {
            Control::Stop
        } else {
            Control::Continue
        }
    }
    fn on_eval(&mut self, metrics: &EvalMetrics) {
        self.evals.push(metrics.clone());
    }
    fn on_checkpoint(&mut self, checkpoint: Checkpoint) -> Result<(), String> {
        self.checkpoints.push(checkpoint);
        Ok(())
    }
}

/// A small model trained for 15 steps from scratch, the base the LoRA tests adapt.
fn trained_base() -> (Tokenizer, LlamaConfig, TokenStreams, Box<factory_model::Llama>) {
    let (tokenizer, data) = streams(32);
    let config = small_config(tokenizer.vocab_size());
    let Outcome::Finished { model: base, .. } =
        train(&config, &settings(15), &data, 2, None, None, &mut Recorder::default()).unwrap()
    else {
        panic!("the base run finishes")
    };
    (tokenizer, config, data, base)
}

fn settings(steps: u64) -> TrainSettings {
    TrainSettings {
        seq_len: 32,
        batch_size: 4,
        steps,
        warmup_steps: 3,
        eval_every: 10,
        eval_windows: 8,
        checkpoint_every: 10,
        ..TrainSettings::default()
    }
}

#[test]
fn loss_falls_and_validation_is_reported() {
    let (tokenizer, data) = streams(32);
    let config = small_config(tokenizer.vocab_size());
    let mut recorder = Recorder::default();
    let outcome = train(&config, &settings(40), &data, 3, None, None, &mut recorder).unwrap();
    let Outcome::Finished { eval, .. } = outcome else { panic!("the run finishes") };
    let first = recorder.steps[..5].iter().map(|m| m.loss).sum::<f64>() / 5.0;
    let last = recorder.steps[35..].iter().map(|m| m.loss).sum::<f64>() / 5.0;
    assert!(last < first - 0.5, "loss falls: {first:.3} -> {last:.3}");
    assert_eq!(recorder.steps.len(), 40);
    assert!(recorder.steps.iter().all(|m| m.tokens_per_second > 0.0 && m.grad_norm.is_finite()));
    assert_eq!(recorder.evals.iter().map(|e| e.step).collect::<Vec<_>>(), vec![10, 20, 30, 40]);
    assert!(eval.perplexity < (tokenizer.vocab_size() as f64), "better than uniform: {}", eval.perplexity);
    assert_eq!(recorder.checkpoints.iter().map(|c| c.step).collect::<Vec<_>>(), vec![10, 20, 30]);
}

#[test]
fn a_resumed_run_repeats_the_uninterrupted_losses_exactly() {
    let (tokenizer, data) = streams(32);
    let config = small_config(tokenizer.vocab_size());
    let mut uninterrupted = Recorder::default();
    train(&config, &settings(20), &data, 9, None, None, &mut uninterrupted).unwrap();

    // Preempted after step 7 (a checkpoint is written then), resumed from it.
    let mut first_half = Recorder { preempt_at: Some(7), ..Recorder::default() };
    let outcome = train(&config, &settings(20), &data, 9, None, None, &mut first_half).unwrap();
    assert!(matches!(outcome, Outcome::Preempted { step: 7 }), "{outcome:?}");
    let saved = first_half.checkpoints.last().unwrap().clone();
    assert_eq!(saved.step, 7);
    let mut second_half = Recorder::default();
    train(&config, &settings(20), &data, 9, None, Some(&saved), &mut second_half).unwrap();

    let resumed: Vec<(u64, f64)> =
        first_half.steps.iter().chain(&second_half.steps).map(|m| (m.step, m.loss)).collect();
    let expected: Vec<(u64, f64)> = uninterrupted.steps.iter().map(|m| (m.step, m.loss)).collect();
    assert_eq!(resumed, expected);

    // A different seed samples different batches.
    let mut other = Recorder { stop_at: Some(3), ..Recorder::default() };
    let outcome = train(&config, &settings(20), &data, 10, None, None, &mut other).unwrap();
    assert!(matches!(outcome, Outcome::Stopped { step: 3 }));
    assert_ne!(other.steps[2].loss, uninterrupted.steps[2].loss);
}

#[test]
fn accumulation_and_bad_settings() {
    let (tokenizer, data) = streams(16);
    let config = small_config(tokenizer.vocab_size());
    let accumulate = TrainSettings { seq_len: 16, grad_accum: 3, ..settings(2) };
    assert_eq!(accumulate.tokens_per_step(), 16 * 4 * 3);
    let mut recorder = Recorder::default();
    train(&config, &accumulate, &data, 1, None, None, &mut recorder).unwrap();
    assert_eq!(recorder.steps.len(), 2);

    let bad = TrainSettings { batch_size: 0, learning_rate: 2.0, ..TrainSettings::default() };
    let error = train(&config, &bad, &data, 1, None, None, &mut Recorder::default()).err().unwrap().to_string();
    assert!(error.contains("batch_size must be positive") && error.contains("learning_rate"), "{error}");
    assert!(split_tokens(vec![1, 2, 3], 0.1, 16).unwrap_err().contains("training needs at least"));
}

#[test]
fn a_time_limit_finishes_the_run_early_with_a_final_evaluation() {
    let (tokenizer, data) = streams(32);
    let config = small_config(tokenizer.vocab_size());
    let mut recorder = Recorder::default();
    let limited = TrainSettings { max_seconds: 1e-9, ..settings(40) };
    let Outcome::Finished { eval, .. } = train(&config, &limited, &data, 3, None, None, &mut recorder).unwrap() else {
        panic!("a time limit finishes the run")
    };
    assert_eq!((recorder.steps.len(), eval.step), (1, 1));
    let bad = TrainSettings { max_seconds: -1.0, ..settings(4) };
    assert!(bad.validate().unwrap_err().contains("max_seconds"));
}

#[test]
fn eval_sets_score_greedy_completions_by_exact_match_and_containment() {
    assert_eq!(judge(" the mat.\nand more", "the mat."), (true, true));
    assert_eq!(judge(" the mat and the hat", "the mat"), (false, true));
    assert_eq!(judge(" a dog", "the mat"), (false, false));

    // A model that has memorised one sentence completes it; a wrong answer scores zero.
    let documents: Vec<String> = vec!["the cat sat on the mat.".to_string(); 300];
    let tokenizer = Tokenizer::train(&BpeSettings::new(300), documents.iter().cloned()).unwrap();
    let tokens = tokenize_documents(&tokenizer, documents).unwrap();
    let data = split_tokens(tokens, 0.05, 16).unwrap();
    let config = small_config(tokenizer.vocab_size());
    let quick = TrainSettings { seq_len: 16, learning_rate: 1e-2, eval_every: 0, checkpoint_every: 0, ..settings(60) };
    let Outcome::Finished { model, .. } =
        train(&config, &quick, &data, 5, None, None, &mut Recorder::default()).unwrap()
    else {
        panic!("the run finishes")
    };
    let item = |prompt: &str, expected: &str| EvalItem { prompt: prompt.to_string(), expected: expected.to_string() };
    let set = EvalSet {
        name: "recall".to_string(),
        items: vec![item("the cat sat on", "the mat."), item("the cat sat on", "a throne")],
        max_new_tokens: 8,
    };
    validate_eval_sets(std::slice::from_ref(&set)).unwrap();
    let score = score_eval_set(&model, &tokenizer, &set).unwrap();
    assert_eq!((score.items, score.exact_match, score.contains), (2, 0.5, 0.5), "{score:?}");
    assert!(score.samples[0].completion.contains("the mat."), "{score:?}");

    let bad = [EvalSet { name: String::new(), items: vec![item("", " ")], max_new_tokens: 0 }];
    let error = validate_eval_sets(&bad).unwrap_err();
    for expected in ["eval_sets[0].name", "max_new_tokens", "items[0].prompt", "items[0].expected"] {
        assert!(error.contains(expected), "{expected} in {error}");
    }
}

#[test]
fn lora_fine_tunes_adapters_only_and_resumes_exactly() {
    let (tokenizer, config, data, base) = trained_base();
    let base_bytes = base.weights.to_safetensors().unwrap();
    let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    let lora = factory_model::LoraConfig { rank: 8, alpha: 16.0, target_modules: targets.map(String::from).to_vec() };
    let tune = TrainSettings { lora: Some(lora), learning_rate: 2e-2, checkpoint_every: 0, ..settings(40) };

    let error = train(&config, &tune, &data, 3, None, None, &mut Recorder::default()).err().unwrap().to_string();
    assert!(error.contains("base model"), "{error}");

    // Fine-tuning data of another kind: one sentence, over and over.
    let sentences = vec!["the cat sat on the mat.".to_string(); 400];
    let data = split_tokens(tokenize_documents(&tokenizer, sentences).unwrap(), 0.05, 32).unwrap();
    let mut uninterrupted = Recorder::default();
    let Outcome::Finished { model, .. } =
        train(&config, &tune, &data, 3, Some(Initial::Safetensors(&base_bytes)), None, &mut uninterrupted).unwrap()
    else {
        panic!("the fine-tune finishes")
    };
    let before = evaluate(&base, &data.train, 32, 16, 0).unwrap().validation_loss;
    let after = evaluate(&model, &data.train, 32, 16, 0).unwrap().validation_loss;
    assert!(after < before - 0.1, "adapters learn: {before:.3} -> {after:.3}");
    assert_eq!(model.weights.to_safetensors().unwrap(), base_bytes, "the base stays frozen");
    assert!(model.adapters.is_some());

    let mut first_half = Recorder { preempt_at: Some(8), ..Recorder::default() };
    train(&config, &tune, &data, 3, Some(Initial::Safetensors(&base_bytes)), None, &mut first_half).unwrap();
    let saved = first_half.checkpoints.last().unwrap().clone();
    let mut second_half = Recorder::default();
    train(&config, &tune, &data, 3, Some(Initial::Safetensors(&base_bytes)), Some(&saved), &mut second_half).unwrap();
    let resumed: Vec<f64> = first_half.steps.iter().chain(&second_half.steps).map(|m| m.loss).collect();
    assert_eq!(resumed, uninterrupted.steps.iter().map(|m| m.loss).collect::<Vec<_>>());
}

/// A base frozen in its GGUF blocks (Q8_0 here) fine-tunes with adapters like a dense one:
/// the loss falls, the base's blocks never change, a run resumes exactly from its adapters'
/// checkpoint, and a full fine-tune of it is refused.
#[test]
fn lora_on_a_frozen_quantized_base_learns_and_resumes_exactly() {
    let (tokenizer, config, data, base) = trained_base();
    let bpe = tokenizer.to_gguf_bpe().unwrap();
    let vocabulary = factory_model::gguf::GgufVocabulary {
        model: "gpt2".into(),
        pre: bpe.pre,
        tokens: bpe.tokens,
        merges: bpe.merges,
        token_types: bpe.token_types,
        ..Default::default()
    };
    let mut file = std::io::Cursor::new(Vec::new());
    factory_model::gguf::write_llama(&mut file, &base, factory_model::quantized::GgmlDType::Q8_0, "base", &vocabulary)
        .unwrap();
    let file = file.into_inner();
    let frozen =
        || Initial::Frozen(Box::new(factory_model::gguf::read_frozen(&mut std::io::Cursor::new(&file)).unwrap().0));

    let error = train(&config, &settings(3), &data, 3, Some(frozen()), None, &mut Recorder::default()).err().unwrap();
    assert!(error.to_string().contains("train.lora"), "{error}");

    let lora = factory_model::LoraConfig {
        rank: 8,
        alpha: 16.0,
        target_modules: ["q_proj", "v_proj", "o_proj", "down_proj"].map(String::from).to_vec(),
    };
    let tune = TrainSettings { lora: Some(lora), learning_rate: 2e-2, checkpoint_every: 0, ..settings(30) };
    let sentences = vec!["the cat sat on the mat.".to_string(); 400];
    let data = split_tokens(tokenize_documents(&tokenizer, sentences).unwrap(), 0.05, 32).unwrap();
    let mut uninterrupted = Recorder::default();
    let Outcome::Finished { model, .. } =
        train(&config, &tune, &data, 3, Some(frozen()), None, &mut uninterrupted).unwrap()
    else {
        panic!("the fine-tune finishes")
    };
    let Initial::Frozen(untouched) = frozen() else { unreachable!() };
    let before = evaluate(&untouched, &data.train, 32, 16, 0).unwrap().validation_loss;
    let after = evaluate(&model, &data.train, 32, 16, 0).unwrap().validation_loss;
    assert!(after < before - 0.1, "adapters learn on a frozen base: {before:.3} -> {after:.3}");
    for (name, matrix) in &model.frozen {
        assert_eq!(matrix.as_bytes(), untouched.frozen[name].as_bytes(), "{name} stays as its blocks were");
    }

    let mut first_half = Recorder { preempt_at: Some(8), ..Recorder::default() };
    train(&config, &tune, &data, 3, Some(frozen()), None, &mut first_half).unwrap();
    let saved = first_half.checkpoints.last().unwrap().clone();
    let mut second_half = Recorder::default();
    train(&config, &tune, &data, 3, Some(frozen()), Some(&saved), &mut second_half).unwrap();
    let resumed: Vec<f64> = first_half.steps.iter().chain(&second_half.steps).map(|m| m.loss).collect();
    assert_eq!(resumed, uninterrupted.steps.iter().map(|m| m.loss).collect::<Vec<_>>());
}
