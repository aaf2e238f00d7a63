#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use super::*;

fn tiny_config(tied: bool) -> LlamaConfig {
    let mut config = LlamaConfig::new(48, 16, 40, 2, 4);
    config.num_key_value_heads = Some(2);
    config.max_position_embeddings = 32;
    config.tie_word_embeddings = tied;
    config
}

fn tokens(values: &[u32], batch: usize) -> Tensor {
    Tensor::from_vec(values.to_vec(), (batch, values.len() / batch), &Device::Cpu).unwrap()
}

fn gradients(model: &Llama, batch: &Tensor) -> (f64, BTreeMap<String, Tensor>) {
    let loss = model.loss(batch).unwrap();
    let grads = loss.backward().unwrap();
    let by_name = model
        .weights
        .vars()
        .filter_map(|(name, var)| grads.get(var.as_tensor()).map(|g| (name.clone(), g.clone())))
        .collect();
    (loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(), by_name)
}

#[test]
fn every_parameter_gets_a_gradient() {
    for tied in [false, true] {
        let config = tiny_config(tied);
        let weights = Weights::init(&config, 7, DType::F32, &Device::Cpu).unwrap();
        let model = Llama::new(config, weights).unwrap();
        let batch = tokens(&[1, 5, 9, 2, 40, 33, 7, 7, 3, 12, 0, 47, 8, 8, 21, 30], 2);
        let (_, grads) = gradients(&model, &batch);
        for (name, var) in model.weights.vars() {
            let grad = grads.get(name).unwrap_or_else(|| panic!("{name} received no gradient (tied: {tied})"));
            assert_eq!(grad.dims(), var.dims(), "{name}");
            let magnitude = grad.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(magnitude > 0.0 && magnitude.is_finite(), "{name} has gradient magnitude {magnitude}");
        }
        assert_eq!(grads.len(), model.config.num_hidden_layers * 9 + if tied { 2 } else { 3 });
    }
}

fn set_element(var: &Var, index: usize, value: f64) {
    let shape = var.dims().to_vec();
    let mut values = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    values[index] = value;
    var.set(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap()).unwrap();
}

#[test]
fn gradients_match_finite_differences() {
    // f64 throughout, so the central difference is accurate to ~1e-10.
    let config = tiny_config(false);
    let weights = Weights::init(&config, 11, DType::F64, &Device::Cpu).unwrap();
    let model = Llama::new(config, weights).unwrap();
    let batch = tokens(&[3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 3, 23, 8, 46, 2], 2);
    let (_, grads) = gradients(&model, &batch);
    let epsilon = 1e-5;
    let mut checked = 0;
    for (name, var) in model.weights.vars() {
        let analytic = grads[name].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let count = analytic.len();
        for index in [0, count / 3, count - 1] {
            let original = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap()[index];
            set_element(var, index, original + epsilon);
            let above = model.loss(&batch).unwrap().to_scalar::<f64>().unwrap();
            set_element(var, index, original - epsilon);
            let below = model.loss(&batch).unwrap().to_scalar::<f64>().unwrap();
            set_element(var, index, original);
            let numeric = (above - below) / (2.0 * epsilon);
            let tolerance = 1e-8 + 1e-5 * analytic[index].abs().max(numeric.abs());
            assert!(
                (numeric - analytic[index]).abs() <= tolerance,
                "{name}[{index}]: finite difference {numeric:e}, backward {:e}",
                analytic[index]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, model.weights.params.len() * 3);
}

fn byte_windows(text: &[u8], batch: usize, seq: usize, offset: usize) -> Tensor {
    let values: Vec<u32> = (0..batch)
        .flat_map(|b| text[offset + b * seq..offset + b * seq + seq + 1].iter().map(|&c| u32::from(c)))
        .collect();
    Tensor::from_vec(values, (batch, seq + 1), &Device::Cpu).unwrap()
}

fn shakespeare() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/tinyshakespeare.txt");
    match std::fs::read(path) {
        Ok(text) => text,
        // Public-domain lines, so the test still trains on real English where the shared data is absent.
        Err(_) => include_str!("../tests/fixtures/sonnets.txt").as_bytes().to_vec(),
    }
}

fn train_steps(model: &Llama, optimizer: &mut AdamW, text: &[u8], steps: std::ops::Range<u64>, total: u64) -> Vec<f64> {
    let mut losses = Vec::new();
    for step in steps {
        let batch = byte_windows(text, 4, 32, (step as usize * 4 * 33) % (text.len() - 200));
        let (loss, mut grads) = gradients(model, &batch);
        clip_grad_norm(&mut grads, 1.0).unwrap();
        optimizer.step(&model.weights.params, &grads, learning_rate(step, 5, total, 3e-3, 3e-4)).unwrap();
        losses.push(loss);
    }
    losses
}

#[test]
fn loss_falls_on_real_text_and_resumes_exactly() {
    let text = shakespeare();
    let mut config = LlamaConfig::new(256, 32, 64, 2, 4);
    config.max_position_embeddings = 64;
    let model = Llama::new(config.clone(), Weights::init(&config, 1, DType::F32, &Device::Cpu).unwrap()).unwrap();
    let mut optimizer = AdamW::new(AdamWConfig::default());
    let losses = train_steps(&model, &mut optimizer, &text, 0..40, 60);
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[35..].iter().sum::<f64>() / 5.0;
    assert!(first > 5.0, "an untrained byte model starts near ln(256) = 5.55: {first}");
    assert!(last < first - 1.0, "loss falls on Shakespeare: {first:.3} -> {last:.3}");

    // Save weights and optimizer state, restore into a fresh model, continue: the losses equal
    // those of the run that never stopped.
    let saved_weights = model.weights.to_safetensors().unwrap();
    let state: BTreeMap<String, Tensor> = optimizer.state_tensors(&Device::Cpu).unwrap().into_iter().collect();
    let uninterrupted = train_steps(&model, &mut optimizer, &text, 40..50, 60);
    let restored_weights = Weights::from_safetensors(&config, &saved_weights, DType::F32, &Device::Cpu).unwrap();
    let restored = Llama::new(config, restored_weights).unwrap();
    let mut restored_optimizer = AdamW::restore(AdamWConfig::default(), state).unwrap();
    assert_eq!(restored_optimizer.step, 40);
    let resumed = train_steps(&restored, &mut restored_optimizer, &text, 40..50, 60);
    assert_eq!(resumed, uninterrupted);
}

#[test]
fn schedule_warms_up_then_decays_to_the_floor() {
    assert!((learning_rate(0, 10, 100, 1.0, 0.1) - 0.1).abs() < 1e-12);
    assert!((learning_rate(9, 10, 100, 1.0, 0.1) - 1.0).abs() < 1e-12);
    assert!((learning_rate(10, 10, 100, 1.0, 0.1) - 1.0).abs() < 1e-12);
    assert!((learning_rate(55, 10, 100, 1.0, 0.1) - 0.55).abs() < 1e-12);
    assert!((learning_rate(100, 10, 100, 1.0, 0.1) - 0.1).abs() < 1e-12);
    let mut previous = f64::INFINITY;
    for step in 10..100 {
        let lr = learning_rate(step, 10, 100, 1.0, 0.1);
        assert!(lr <= previous);
        previous = lr;
    }
}

#[test]
fn clipping_bounds_the_global_norm() {
    let mut grads = BTreeMap::new();
    grads.insert("a".to_string(), Tensor::new(&[3.0f32, 0.0], &Device::Cpu).unwrap());
    grads.insert("b".to_string(), Tensor::new(&[0.0f32, 4.0], &Device::Cpu).unwrap());
    let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-6);
    let after = clip_grad_norm(&mut grads, 10.0).unwrap();
    assert!((after - 1.0).abs() < 1e-5, "{after}");
}

#[test]
fn weights_round_trip_and_bad_files_are_named() {
    let config = tiny_config(true);
    let weights = Weights::init(&config, 3, DType::F32, &Device::Cpu).unwrap();
    let bytes = weights.to_safetensors().unwrap();
    let again = Weights::from_safetensors(&config, &bytes, DType::F32, &Device::Cpu).unwrap();
    for (name, var) in weights.vars() {
        let a = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = again.get(name).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b, "{name}");
    }
    let mut wider = config.clone();
    wider.hidden_size = 32;
    let error = Weights::from_safetensors(&wider, &bytes, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(error.contains("model.embed_tokens.weight has shape [48, 16]"), "{error}");
    let mut untied = config;
    untied.tie_word_embeddings = false;
    let error = Weights::from_safetensors(&untied, &bytes, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(error.contains("lm_head.weight"), "{error}");
}

fn fixture_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama")
}

fn max_difference(ours: &Tensor, theirs: &serde_json::Value) -> f64 {
    let ours = ours.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let mut flat = Vec::new();
    fn collect(value: &serde_json::Value, into: &mut Vec<f64>) {
        match value {
            serde_json::Value::Array(items) => items.iter().for_each(|item| collect(item, into)),
            other => into.push(other.as_f64().unwrap()),
        }
    }
    collect(theirs, &mut flat);
    assert_eq!(ours.len(), flat.len(), "logit counts differ");
    ours.iter().zip(&flat).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

fn fixture_ids(expected: &serde_json::Value) -> Tensor {
    let rows: Vec<Vec<u32>> = serde_json::from_value(expected["input_ids"].clone()).unwrap();
    let (batch, seq) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (batch, seq), &Device::Cpu).unwrap()
}

#[test]
fn logits_match_transformers_on_its_own_tiny_llama() {
    // Made by scripts/make_parity_fixture.py with transformers' save_pretrained.
    let dir = fixture_dir();
    let config = LlamaConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config.kv_heads(), 2, "the fixture exercises grouped-query attention");
    let weights = Weights::load(&config, &dir.join("model.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let model = Llama::new(config, weights).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("logits.json")).unwrap()).unwrap();
    let logits = model.forward(&fixture_ids(&expected)).unwrap();
    let difference = max_difference(&logits, &expected["logits"]);
    assert!(difference < 1e-4, "largest logit difference from transformers: {difference:e}");
}

/// The Python that has torch and transformers: `TORCH_PYTHON`, else the bench venv.
fn torch_python() -> Option<String> {
    let candidates = [
        std::env::var("TORCH_PYTHON").ok(),
        std::env::var("HOME").ok().map(|home| format!("{home}/.cache/factory-torch-venv/bin/python")),
        Some("python3".to_string()),
    ];
    candidates.into_iter().flatten().find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import torch, transformers"])
            .output()
            .is_ok_and(|output| output.status.success())
    })
}

#[test]
fn exported_models_load_in_transformers() {
    let Some(python) = torch_python() else {
        factory_testkit::missing(
            "a Python with torch and transformers (set TORCH_PYTHON): our export was not loaded by transformers",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Every family, tied and untied: Qwen2's biases, Qwen3's query/key norms and wider heads.
    for (model_type, tied) in [("llama", false), ("llama", true), ("mistral", false), ("qwen2", true), ("qwen3", false)]
    {
        let mut config = tiny_config(tied);
        config.model_type = model_type.to_string();
        if model_type == "qwen3" {
            config.extra.insert("head_dim".to_string(), serde_json::json!(8));
        }
        config.extra.insert("initializer_range".to_string(), serde_json::json!(0.02));
        let weights = Weights::init(&config, 5, DType::F32, &Device::Cpu).unwrap();
        // Random norms and biases: ones and zeros would hide a misplaced one.
        for (index, (name, var)) in weights.params.iter().enumerate() {
            if name.ends_with("norm.weight") || name.ends_with(".bias") {
                let values: Vec<f32> =
                    (0..var.elem_count()).map(|i| 1.0 + ((i * 7 + index) % 11) as f32 / 20.0).collect();
                var.set(&Tensor::from_vec(values, var.dims(), &Device::Cpu).unwrap()).unwrap();
            }
        }
        std::fs::write(dir.path().join("config.json"), config.to_json()).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), weights.to_safetensors().unwrap()).unwrap();
        let model = Llama::new(config.clone(), weights).unwrap();
        let ids = vec![vec![1u32, 9, 4, 47, 0, 22, 13, 8]];
        let ours = model.forward(&Tensor::from_vec(ids.concat(), (1, 8), &Device::Cpu).unwrap()).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/transformers_logits.py");
        let output = std::process::Command::new(&python)
            .args([script, dir.path().to_str().unwrap(), &serde_json::to_string(&ids).unwrap()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let theirs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(
            theirs["parameters"].as_u64().unwrap() as usize,
            config.parameter_count(),
            "{model_type} tied: {tied}"
        );
        let difference = max_difference(&ours, &theirs["logits"]);
        assert!(difference < 1e-4, "{model_type} tied {tied}: largest logit difference {difference:e}");
    }
}

#[test]
fn greedy_decoding_follows_the_argmax_stops_and_slides_its_window() {
    let config = tiny_config(true);
    let model = Llama::new(config.clone(), Weights::init(&config, 3, DType::F32, &Device::Cpu).unwrap()).unwrap();
    let prompt = [1u32, 2, 3];
    let generated = model.greedy(&prompt, 6, &[]).unwrap();
    assert_eq!(generated.len(), 6);
    let mut context = prompt.to_vec();
    for token in &generated {
        let logits = model.forward(&tokens(&context, 1)).unwrap();
        let last = logits.narrow(1, context.len() - 1, 1).unwrap();
        assert_eq!(argmax_last(&last).unwrap()[0], *token);
        context.push(*token);
    }
    assert_eq!(model.greedy(&prompt, 6, &generated[..1]).unwrap(), generated[..1].to_vec());
    let long: Vec<u32> = (0..40).map(|i| i % 48).collect();
    assert_eq!(model.greedy(&long, 3, &[]).unwrap().len(), 3, "a context past 32 positions keeps its last 32");
    assert!(model.greedy(&[], 3, &[]).is_err());
}

fn max_abs_difference(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn lora_adapters_train_alone_and_merge_into_the_base() {
    let config = tiny_config(false);
    let base = Weights::init(&config, 5, DType::F32, &Device::Cpu).unwrap();
    let base_bytes = base.to_safetensors().unwrap();
    let plain = Llama::new(config.clone(), base).unwrap();
    let lora =
        LoraConfig { rank: 4, alpha: 8.0, target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()] };
    let adapters = LoraAdapters::init(&config, &lora, 1, &Device::Cpu).unwrap();
    assert_eq!(adapters.params.len(), 2 * 3 * config.num_hidden_layers);
    let frozen = Weights::from_safetensors(&config, &base_bytes, DType::F32, &Device::Cpu).unwrap();
    let adapted = Llama::new(config.clone(), frozen).unwrap().with_adapters(adapters);
    let batch = tokens(&[1, 5, 9, 2, 7, 3, 11, 4, 6, 8, 10, 12], 2);
    let inputs = batch.narrow(1, 0, 5).unwrap();
    let untrained = max_abs_difference(&plain.forward(&inputs).unwrap(), &adapted.forward(&inputs).unwrap());
    assert!(untrained < 1e-6, "B starts at zero, so an untrained adapter changes nothing: {untrained}");

    // Gradients reach the adapters and never the frozen base; after one step (B no longer zero)
    // every adapter tensor gets a non-zero gradient.
    let adapter_params = adapted.adapters.as_ref().unwrap().params.clone();
    let mut optimizer = AdamW::new(AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() });
    for round in 0..2 {
        let grads = adapted.loss(&batch).unwrap().backward().unwrap();
        for (name, var) in adapted.weights.vars() {
            assert!(grads.get(var.as_tensor()).is_none(), "base weight {name} got a gradient");
        }
        let mut by_name = BTreeMap::new();
        for (name, var) in &adapter_params {
            let grad = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name} got no gradient")).clone();
            let norm = grad.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            if round == 1 || name.contains("lora_B") {
                assert!(norm > 0.0, "{name} got a zero gradient in round {round}");
            }
            by_name.insert(name.clone(), grad);
        }
        optimizer.step(&adapter_params, &by_name, 1e-2).unwrap();
    }

    // Merged weights compute what base + adapters compute; adapters survive a round trip.
    let adapters = adapted.adapters.as_ref().unwrap();
    let merged = Llama::new(config.clone(), adapters.merge_into(&adapted.weights).unwrap()).unwrap();
    let logits = adapted.forward(&inputs).unwrap();
    assert!(max_abs_difference(&merged.forward(&inputs).unwrap(), &logits) < 1e-5);
    assert!(max_abs_difference(&plain.forward(&inputs).unwrap(), &logits) > 1e-4, "training changed the model");
    let bytes = adapters.to_safetensors().unwrap();
    let reloaded = LoraAdapters::from_safetensors(&config, &lora, &bytes, &Device::Cpu).unwrap();
    let frozen = Weights::from_safetensors(&config, &base_bytes, DType::F32, &Device::Cpu).unwrap();
    let again = Llama::new(config.clone(), frozen).unwrap().with_adapters(reloaded);
    assert!(max_abs_difference(&again.forward(&inputs).unwrap(), &logits) < 1e-6);
    assert_eq!(lora.adapter_config_json("bard@1")["r"], 4);

    let bad = LoraConfig { rank: 0, alpha: 8.0, target_modules: vec!["lm_head".into()] };
    let error = LoraAdapters::init(&config, &bad, 1, &Device::Cpu).err().unwrap().to_string();
    assert!(error.contains("rank") && error.contains("lm_head"), "{error}");
    let other = LoraConfig { rank: 2, ..lora };
    assert!(LoraAdapters::from_safetensors(&config, &other, &bytes, &Device::Cpu).is_err());
}

#[test]
fn cached_steps_match_the_full_forward_for_chunks_decodes_and_mixed_batches() {
    let mut config = tiny_config(false);
    config.num_key_value_heads = Some(2);
    let model = Llama::new(config.clone(), Weights::init(&config, 9, DType::F32, &Device::Cpu).unwrap()).unwrap();
    let first: Vec<u32> = vec![3, 17, 4, 40, 8, 15, 23, 42, 16, 4, 2];
    let second: Vec<u32> = vec![9, 1, 30, 12, 5];
    // Alone, and with its products and attention spread over two and three threads.
    for threads in [1, 2, 3] {
        cached_steps_match_the_full_forward(
            &model,
            &config,
            &Decoder::with_threads(&model, threads).unwrap(),
            &first,
            &second,
        );
    }
}

fn cached_steps_match_the_full_forward(
    model: &Llama,
    config: &LlamaConfig,
    decoder: &Decoder,
    first: &[u32],
    second: &[u32],
) {
    let full = |ids: &[u32]| model.forward(&tokens(ids, 1)).unwrap().squeeze(0).unwrap();
    let row = |logits: &Logits, i: usize| Tensor::new(logits.row(i), &Device::Cpu).unwrap();
    let at = |logits: &Tensor, i: usize| logits.get(i).unwrap();

    // A prompt in two chunks, then one token at a time, in one cache.
    let mut cache = KvCache::new(decoder, 16).unwrap();
    let logits =
        decoder.forward_step(&mut [StepInput { tokens: &first[..4], cache: &mut cache, adapter: None }]).unwrap();
    assert!(max_abs_difference(&row(&logits, 0), &at(&full(&first[..4]), 3)) < 1e-4);
    let logits =
        decoder.forward_step(&mut [StepInput { tokens: &first[4..8], cache: &mut cache, adapter: None }]).unwrap();
    assert!(max_abs_difference(&row(&logits, 0), &at(&full(&first[..8]), 7)) < 1e-4);
    for end in 9..=first.len() {
        let logits = decoder
            .forward_step(&mut [StepInput { tokens: &first[end - 1..end], cache: &mut cache, adapter: None }])
            .unwrap();
        assert!(max_abs_difference(&row(&logits, 0), &at(&full(&first[..end]), end - 1)) < 1e-4, "at {end}");
    }
    assert_eq!(cache.len(), first.len());

    // Two sequences of different lengths in one step: one decoding, one prefilling.
    let mut other = KvCache::new(decoder, 16).unwrap();
    let mut again = KvCache::new(decoder, 16).unwrap();
    decoder.forward_step(&mut [StepInput { tokens: &first[..10], cache: &mut again, adapter: None }]).unwrap();
    let logits = decoder
        .forward_step(&mut [
            StepInput { tokens: &first[10..11], cache: &mut again, adapter: None },
            StepInput { tokens: second, cache: &mut other, adapter: None },
        ])
        .unwrap();
    assert_eq!((logits.rows(), logits.row(1).len()), (2, config.vocab_size));
    assert!(max_abs_difference(&row(&logits, 0), &at(&full(first), first.len() - 1)) < 1e-4);
    assert!(max_abs_difference(&row(&logits, 1), &at(&full(second), second.len() - 1)) < 1e-4);

    // Past capacity is refused, and nothing is written.
    let error =
        decoder.forward_step(&mut [StepInput { tokens: &[1; 12], cache: &mut other, adapter: None }]).err().unwrap();
    assert!(error.to_string().contains("exceed"), "{error}");
    assert_eq!(other.len(), second.len());
    assert!(KvCache::new(decoder, 33).is_err(), "longer than max_position_embeddings");
}

/// Wide enough that the decoder's threaded paths run: products over the cores for a prefill of
/// many rows, attention spread over the new tokens of many sequences.
#[test]
fn a_step_splits_between_cores_only_into_groups_of_about_equal_work() {
    let config = tiny_config(false);
    let model = Llama::new(config.clone(), Weights::init(&config, 9, DType::F32, &Device::Cpu).unwrap()).unwrap();
    let decoder = Decoder::new(&model).unwrap();
    let groups = |lengths: &[usize], threads: usize| {
        let tokens: Vec<Vec<u32>> = lengths.iter().map(|&n| vec![1; n]).collect();
        let mut caches: Vec<KvCache> = lengths.iter().map(|_| KvCache::new(&decoder, 32).unwrap()).collect();
        let inputs: Vec<StepInput> = tokens
            .iter()
            .zip(caches.iter_mut())
            .map(|(tokens, cache)| StepInput { tokens, cache, adapter: None })
            .collect();
        crate::infer::balanced_groups(&inputs, threads)
    };
    assert_eq!(groups(&[1; 32], 2), Some(vec![16, 16]));
    assert_eq!(groups(&[1; 7], 3), Some(vec![3, 3, 1]));
    assert_eq!(groups(&[5, 1, 1, 1, 1, 1], 2), Some(vec![1, 5]));
    // One core, one sequence, or one long prompt chunk among single tokens: one group.
    assert_eq!(groups(&[1; 32], 1), None);
    assert_eq!(groups(&[20], 2), None);
    assert_eq!(groups(&[24, 1, 1, 1], 2), None);
}

/// Every tile shape the kernel picks (12, 4 and single rows; 6 on AVX2), a last panel
/// only partly filled, accumulation, and panels multiplied by separate calls.
#[test]
#[allow(unsafe_code)]
fn packed_products_match_plain_sums_for_any_rows_columns_and_panels() {
    use crate::panels::{PackedMatrix, PANEL};
    let (inner, columns) = (37, 2 * PANEL + 11);
    let weights: Vec<f32> = (0..inner * columns).map(|i| (i * 7919 % 1009) as f32 / 1009.0 - 0.5).collect();
    let packed = PackedMatrix::pack(&weights, inner, columns);
    assert_eq!((packed.panels(), packed.columns(), packed.inner()), (3, columns, inner));
    let largest_gap = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
    for rows in [1, 2, 4, 5, 6, 11, 12, 13, 17, 30] {
        let x: Vec<f32> = (0..rows * inner).map(|i| (i * 31 % 97) as f32 / 97.0 - 0.3).collect();
        let expected: Vec<f32> = (0..rows * columns)
            .map(|at| {
                let (row, column) = (at / columns, at % columns);
                (0..inner).map(|k| x[row * inner + k] as f64 * weights[k * columns + column] as f64).sum::<f64>() as f32
            })
            .collect();
        let mut out = vec![f32::NAN; rows * columns];
        // SAFETY: `out` holds `rows * columns` values and nothing else touches it.
        unsafe { packed.multiply(&x, rows, out.as_mut_ptr() as usize, false, 0..3) };
        assert!(largest_gap(&out, &expected) < 1e-5, "{rows} rows");
        // Each kernel width this CPU can run, not only the widest that dispatch picks.
        let mut widths = vec![product_on(pulp::Scalar::new(), &packed, &x, rows)];
        #[cfg(target_arch = "x86_64")]
        {
            widths.extend(pulp::x86::V3::try_new().map(|simd| product_on(simd, &packed, &x, rows)));
            widths.extend(pulp::x86::V4::try_new().map(|simd| product_on(simd, &packed, &x, rows)));
        }
        for (width, out) in widths.iter().enumerate() {
            assert!(largest_gap(out, &expected) < 1e-5, "{rows} rows, kernel {width}");
        }

        let mut out = vec![1.0; rows * columns];
        // SAFETY: as above; the two calls cover disjoint panels.
        unsafe {
            packed.multiply(&x, rows, out.as_mut_ptr() as usize, true, 2..3);
            packed.multiply(&x, rows, out.as_mut_ptr() as usize, true, 0..2);
        }
        let plus_one: Vec<f32> = expected.iter().map(|v| v + 1.0).collect();
        assert!(largest_gap(&out, &plus_one) < 1e-5, "{rows} rows, accumulated");
    }
}

#[allow(unsafe_code)]
fn product_on<S: pulp::Simd>(simd: S, packed: &crate::panels::PackedMatrix, x: &[f32], rows: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; rows * packed.columns()];
    // SAFETY: `out` holds `rows * columns` values and nothing else touches it.
    unsafe { packed.multiply_on(simd, x, rows, out.as_mut_ptr() as usize, false, 0..packed.panels()) };
    out
}

#[test]
fn work_spread_over_threads_is_cut_into_disjoint_whole_parts() {
    use crate::infer::{even_ranges, rows_and_heads};
    assert_eq!(even_ranges(768, 2), vec![0..384, 384..768]);
    // The 8 panels of a 256-column product over 3 threads: the last part is the short one.
    assert_eq!(even_ranges(8, 3), vec![0..3, 3..6, 6..8]);
    assert_eq!(even_ranges(4, 3), vec![0..2, 2..4]);
    assert!(even_ranges(0, 2).is_empty());
    // (row, head) pairs 5..14 of rows of 4 heads: the end of row 1, row 2, the start of row 3.
    let pieces: Vec<_> = rows_and_heads(5..14, 4).collect();
    assert_eq!(pieces, vec![(1, 1..4), (2, 0..4), (3, 0..2)]);
    assert_eq!(rows_and_heads(8..12, 4).collect::<Vec<_>>(), vec![(2, 0..4)]);
}

#[test]
fn a_team_runs_every_part_once_and_raises_a_parts_panic() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let team = crate::team::Team::new(3);
    assert_eq!(team.size(), 3);
    let sums: Vec<AtomicUsize> = (0..7).map(|_| AtomicUsize::new(0)).collect();
    let threads = std::sync::Mutex::new(std::collections::HashSet::new());
    for round in 0..300 {
        // The first job right after the team starts, before its helpers may have run at all.
        team.for_each((0..7).collect(), |part: usize| {
            sums[part].fetch_add(part + 1, Ordering::SeqCst);
            threads.lock().unwrap().insert(std::thread::current().id());
            // Long enough that the caller, which takes over parts not yet started, does not
            // finish every part before a helper joins in.
            std::thread::sleep(std::time::Duration::from_micros(100));
        });
        // Now and then long enough for the helpers to fall asleep and be woken again.
        if round % 100 == 50 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    let expected: Vec<usize> = (1..=7).map(|part| 300 * part).collect();
    assert_eq!(sums.iter().map(|s| s.load(Ordering::SeqCst)).collect::<Vec<_>>(), expected);
    assert!(threads.lock().unwrap().len() > 1, "the helpers never took a part");
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        team.for_each((0..3).collect(), |part: usize| assert_ne!(part, 2, "part 2 fails"));
    }));
    assert!(panicked.is_err());
    // Still a working team afterwards.
    let after = AtomicUsize::new(0);
    team.for_each((0..5).collect(), |part: usize| {
        after.fetch_add(part, Ordering::SeqCst);
    });
    assert_eq!(after.load(Ordering::SeqCst), 10);
}

#[test]
fn many_sequences_decoded_together_match_each_alone_on_a_wider_tied_model() {
    // Heads of 32 (the vectorized attention), prompts of up to 65 tokens (whole blocks of 64
    // positions and the rest).
    let mut config = LlamaConfig::new(1024, 128, 160, 2, 4);
    config.num_key_value_heads = Some(2);
    config.max_position_embeddings = 96;
    config.tie_word_embeddings = true;
    let model = Llama::new(config.clone(), Weights::init(&config, 4, DType::F32, &Device::Cpu).unwrap()).unwrap();
    // Alone; in two groups or spread over two threads; in three groups of two.
    for threads in [1, 2, 3] {
        many_sequences_match_each_alone(&model, &Decoder::with_threads(&model, threads).unwrap(), 1e-4);
    }
    // Keys and values stored in half precision: half the bytes, logits within rounding.
    let half = Decoder::with_threads(&model, 2).unwrap().with_kv_precision(KvPrecision::F16);
    let full = Decoder::with_threads(&model, 2).unwrap();
    assert_eq!(KvCache::new(&half, 90).unwrap().bytes() * 2, KvCache::new(&full, 90).unwrap().bytes());
    many_sequences_match_each_alone(&model, &half, HALF_PRECISION_BOUND);
    // Heads of 128 (keys narrowed in more than one piece) and two query heads per key/value
    // head (their entries widened once for both).
    let mut config = LlamaConfig::new(1024, 256, 160, 1, 2);
    config.num_key_value_heads = Some(1);
    config.max_position_embeddings = 96;
    let model = Llama::new(config.clone(), Weights::init(&config, 5, DType::F32, &Device::Cpu).unwrap()).unwrap();
    let half = Decoder::with_threads(&model, 2).unwrap().with_kv_precision(KvPrecision::F16);
    many_sequences_match_each_alone(&model, &half, HALF_PRECISION_BOUND);
}

fn many_sequences_match_each_alone(model: &Llama, decoder: &Decoder, bound: f64) {
    let prompts: Vec<Vec<u32>> =
        (0..6u32).map(|s| (0..(20 + 9 * s)).map(|i| (s * 131 + i * 37 + 5) % 1024).collect()).collect();
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| KvCache::new(decoder, 90).unwrap()).collect();
    // Every prompt prefilled in one step, then three decoding steps of all six together.
    let mut inputs: Vec<StepInput> = prompts
        .iter()
        .zip(caches.iter_mut())
        .map(|(p, cache)| StepInput { tokens: &p[..p.len() - 3], cache, adapter: None })
        .collect();
    decoder.forward_step(&mut inputs).unwrap();
    for back in (1..=3).rev() {
        let mut inputs: Vec<StepInput> = prompts
            .iter()
            .zip(caches.iter_mut())
            .map(|(p, cache)| StepInput { tokens: &p[p.len() - back..p.len() - back + 1], cache, adapter: None })
            .collect();
        let logits = decoder.forward_step(&mut inputs).unwrap();
        for (i, prompt) in prompts.iter().enumerate() {
            let end = prompt.len() - back + 1;
            let full = model.forward(&tokens(&prompt[..end], 1)).unwrap().squeeze(0).unwrap().get(end - 1).unwrap();
            let ours = Tensor::new(logits.row(i), &Device::Cpu).unwrap();
            let difference = max_abs_difference(&ours, &full);
            assert!(difference < bound, "sequence {i}, {back} from the end: {difference}");
        }
    }
    // The longest sequence alone, after decoding with others: its context is long enough for
    // its attention's heads to be spread over the threads too.
    let logits = decoder.forward_step(&mut [StepInput { tokens: &[7], cache: &mut caches[5], adapter: None }]).unwrap();
    let context: Vec<u32> = prompts[5].iter().copied().chain([7]).collect();
    let full = model.forward(&tokens(&context, 1)).unwrap().squeeze(0).unwrap().get(context.len() - 1).unwrap();
    assert!(max_abs_difference(&Tensor::new(logits.row(0), &Device::Cpu).unwrap(), &full) < bound);
    let bad = decoder.forward_step(&mut [StepInput { tokens: &[1024], cache: &mut caches[0], adapter: None }]);
    assert!(bad.err().unwrap().to_string().contains("vocabulary"));
}

/// How far logits may move when keys and values are stored in half precision (each stored
/// value within 2^-11 of itself, relative): about ten times the largest seen on this test's
/// model (2.3e-4), against 5e-7 in full precision.
const HALF_PRECISION_BOUND: f64 = 2e-3;

/// Half-precision cache entries round as the `half` crate does (to nearest, ties to even) and
/// widen back exactly, on every kernel width this CPU runs, whole vectors and a tail.
#[test]
fn cache_entries_round_to_half_precision_like_the_half_crate_on_every_kernel() {
    use half::f16;
    let mut values: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.377).collect();
    // Ties to even (down, then up), the largest half and past it (infinity), a subnormal, one
    // that rounds to zero, a negative.
    values.extend([1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11), 65504.0, 65520.0, 6e-8, 1e-8, -2.5e-3]);
    let expected: Vec<u16> = values.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
    assert_eq!(f16::from_bits(expected[37]), f16::ONE, "the tie below rounds to even");
    assert!(f16::from_bits(expected[40]).is_infinite());
    let on = |narrowed: Vec<f16>, widened: Vec<f32>, kernel: &str| {
        assert_eq!(narrowed.iter().map(|h| h.to_bits()).collect::<Vec<_>>(), expected, "{kernel}");
        let exact: Vec<f32> = narrowed.iter().map(|h| h.to_f32()).collect();
        assert_eq!(widened, exact, "{kernel}");
    };
    let (narrowed, widened) = round_trip_on(pulp::Scalar::new(), &values);
    on(narrowed, widened, "scalar");
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(simd) = pulp::x86::V3::try_new() {
            let (narrowed, widened) = round_trip_on(simd, &values);
            on(narrowed, widened, "AVX2");
        }
        if let Some(simd) = pulp::x86::V4::try_new() {
            let (narrowed, widened) = round_trip_on(simd, &values);
            on(narrowed, widened, "AVX-512");
        }
    }
}

fn round_trip_on<S: pulp::Simd>(simd: S, values: &[f32]) -> (Vec<half::f16>, Vec<f32>) {
    struct Widen<'a> {
        src: &'a [half::f16],
        dst: &'a mut [f32],
    }
    impl pulp::WithSimd for Widen<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, simd: S) {
            crate::infer::widen(simd, self.src, self.dst)
        }
    }
    let mut narrowed = vec![half::f16::NAN; values.len()];
    crate::infer::narrow_on(simd, values, &mut narrowed);
    let mut widened = vec![f32::NAN; values.len()];
    simd.vectorize(Widen { src: &narrowed, dst: &mut widened });
    (narrowed, widened)
}

#[test]
fn bert_embeddings_are_unit_vectors_unchanged_by_padding() {
    let config = BertConfig::from_json(
        r#"{"model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 32, "max_position_embeddings": 32}"#,
    )
    .unwrap();
    let tensors: Vec<(String, Tensor)> = config
        .shapes()
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let values: Vec<f32> =
                (0..shape.iter().product::<usize>()).map(|j| ((i * 31 + j * 17) % 23) as f32 / 23.0 - 0.5).collect();
            (name, Tensor::from_vec(values, shape, &Device::Cpu).unwrap())
        })
        .collect();
    let bytes = to_safetensors(tensors).unwrap();
    let encoder = BertEncoder::from_safetensors(config.clone(), &bytes, &Device::Cpu).unwrap();
    let short = vec![2u32, 7, 9, 3];
    let long = vec![2u32, 11, 12, 13, 14, 15, 16, 3];
    let alone = encoder.embed(std::slice::from_ref(&short)).unwrap();
    let together = encoder.embed(&[short, long]).unwrap();
    let difference: f32 = alone[0].iter().zip(&together[0]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(difference < 1e-5, "padding changed the vector by {difference}");
    for vector in &together {
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
    assert_ne!(together[0], together[1]);
    assert!(encoder.embed(&[vec![1; 40]]).is_err(), "longer than the positions");
    assert!(BertConfig::from_json(r#"{"model_type": "llama"}"#).is_err());
}

/// Adapters with `B` random (trained adapters are not zero), for every projection.
fn trained_adapters(config: &LlamaConfig, seed: u64) -> LoraAdapters {
    let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    let lora = LoraConfig { rank: 4, alpha: 8.0, target_modules: targets.map(String::from).to_vec() };
    let adapters = LoraAdapters::init(config, &lora, seed, &Device::Cpu).unwrap();
    for var in adapters.params.values() {
        let values = Tensor::randn(0.0f32, 0.2, var.dims(), &Device::Cpu).unwrap();
        var.set(&values).unwrap();
    }
    adapters
}

/// Point 8 of the real-models issue: one decoder holds the base; sequences with different
/// adapters and none step together, each computing what the base with its adapter merged
/// computes, in one group or split over threads, while prefilling and decoding.
#[test]
fn sequences_with_different_adapters_step_together_as_their_merged_models_alone() {
    let mut config = LlamaConfig::new(300, 64, 96, 2, 4);
    config.num_key_value_heads = Some(2);
    config.max_position_embeddings = 64;
    let base = Llama::new(config.clone(), Weights::init(&config, 9, DType::F32, &Device::Cpu).unwrap()).unwrap();
    let adapters = [trained_adapters(&config, 1), trained_adapters(&config, 2)];
    let serving: Vec<ServingAdapter> = adapters.iter().map(|a| ServingAdapter::new(&config, a).unwrap()).collect();
    let merged_decoder = |adapters: &LoraAdapters| {
        Decoder::new(&Llama::new(config.clone(), adapters.merge_into(&base.weights).unwrap()).unwrap()).unwrap()
    };
    let alone = [Decoder::new(&base).unwrap(), merged_decoder(&adapters[0]), merged_decoder(&adapters[1])];
    let choice = [None, Some(&serving[0]), Some(&serving[1])];
    let prompts: Vec<Vec<u32>> =
        (0..3u32).map(|s| (0..12 + s).map(|i| (s * 71 + i * 13 + 1) % 300).collect()).collect();
    for threads in [1, 2] {
        let decoder = Decoder::with_threads(&base, threads).unwrap();
        let mut caches: Vec<KvCache> = prompts.iter().map(|_| KvCache::new(&decoder, 40).unwrap()).collect();
        let mut inputs: Vec<StepInput> = prompts
            .iter()
            .zip(caches.iter_mut())
            .zip(choice)
            .map(|((p, cache), adapter)| StepInput { tokens: p, cache, adapter })
            .collect();
        let together = decoder.forward_step(&mut inputs).unwrap();
        drop(inputs);
        let mut inputs: Vec<StepInput> =
            caches.iter_mut().zip(choice).map(|(cache, adapter)| StepInput { tokens: &[7], cache, adapter }).collect();
        let decoded = decoder.forward_step(&mut inputs).unwrap();
        for (index, (prompt, reference)) in prompts.iter().zip(&alone).enumerate() {
            let mut cache = KvCache::new(reference, 40).unwrap();
            let prefill = reference.forward_step(&mut [StepInput { tokens: prompt, cache: &mut cache, adapter: None }]);
            let step = reference.forward_step(&mut [StepInput { tokens: &[7], cache: &mut cache, adapter: None }]);
            for (ours, theirs) in
                [(together.row(index), prefill.unwrap().row(0)), (decoded.row(index), step.unwrap().row(0))]
            {
                let difference = ours.iter().zip(theirs).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(difference < 1e-4, "sequence {index} on {threads} threads differs by {difference}");
            }
        }
    }
    // The adapters change what the base computes, and one made for another shape is refused.
    let mut cache = KvCache::new(&alone[0], 40).unwrap();
    let base_logits = alone[0].forward_step(&mut [StepInput { tokens: &prompts[1], cache: &mut cache, adapter: None }]);
    let mut cache = KvCache::new(&alone[1], 40).unwrap();
    let adapted = alone[1].forward_step(&mut [StepInput { tokens: &prompts[1], cache: &mut cache, adapter: None }]);
    let change =
        base_logits.unwrap().row(0).iter().zip(adapted.unwrap().row(0)).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(change > 1e-2, "the adapter changes the answer: {change}");
    let mut other = config.clone();
    other.hidden_size = 32;
    let misfit = ServingAdapter::new(&other, &trained_adapters(&other, 3)).unwrap();
    let decoder = Decoder::new(&base).unwrap();
    let mut cache = KvCache::new(&decoder, 8).unwrap();
    let refused = decoder.forward_step(&mut [StepInput { tokens: &[1], cache: &mut cache, adapter: Some(&misfit) }]);
    assert!(refused.err().unwrap().to_string().contains("another shape"));
    assert!(serving[0].bytes() > 0);
}
