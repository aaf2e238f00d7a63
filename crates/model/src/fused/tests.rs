//! Each fused kernel against its composed twin (values and gradients), against finite
//! differences, and a whole model trained 50 steps either way.

#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};

use crate::ops;
use crate::{clip_grad_norm, AdamW, AdamWConfig, Kernels, Llama, LlamaConfig, Weights};

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// A scalar of `y` that weighs every element differently, so each gradient element matters.
fn weighed(y: &Tensor, seed: u64) -> Tensor {
    (y * random(y.dims(), seed)).unwrap().sum_all().unwrap()
}

/// `fused(inputs)` and `composed(inputs)` agree, and so do the gradients of a weighed sum of
/// them for every input; then the fused gradient of a few elements of each input matches a
/// central difference.
fn check(
    name: &str,
    inputs: &[Tensor],
    fused: impl Fn(&[Tensor]) -> Tensor,
    composed: impl Fn(&[Tensor]) -> Tensor,
    tolerance: f32,
) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (ours, theirs) = (fused(&tensors), composed(&tensors));
    assert_eq!(ours.dims(), theirs.dims(), "{name}");
    let scale = theirs.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0);
    assert!(
        max_difference(&ours, &theirs) <= tolerance * scale,
        "{name}: values differ by {}",
        max_difference(&ours, &theirs)
    );
    let (our_grads, their_grads) = (weighed(&ours, 99).backward().unwrap(), weighed(&theirs, 99).backward().unwrap());
    for (index, var) in vars.iter().enumerate() {
        let (Some(ours), Some(theirs)) = (our_grads.get(var.as_tensor()), their_grads.get(var.as_tensor())) else {
            assert!(var.dtype() != DType::F32, "{name}: input {index} got no gradient");
            continue;
        };
        let scale = theirs.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-3);
        let difference = max_difference(ours, theirs);
        assert!(
            difference <= tolerance * scale,
            "{name}: gradient of input {index} differs by {difference} (scale {scale})"
        );
        // Finite differences on the fused op itself, in f32: a step of 1e-2 keeps rounding small
        // against the change.
        let flat = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let analytic = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for element in [0, flat.len() / 2, flat.len() - 1] {
            let at = |delta: f32| {
                let mut moved = flat.clone();
                moved[element] += delta;
                let moved = Tensor::from_vec(moved, var.dims(), &Device::Cpu).unwrap();
                let mut inputs = tensors.clone();
                inputs[index] = moved;
                weighed(&fused(&inputs), 99).to_scalar::<f32>().unwrap()
            };
            let epsilon = 1e-2;
            let numeric = (at(epsilon) - at(-epsilon)) / (2.0 * epsilon);
            let bound = 2e-2 * analytic[element].abs().max(numeric.abs()).max(0.05);
            assert!(
                (numeric - analytic[element]).abs() <= bound,
                "{name}: input {index}[{element}]: finite difference {numeric}, backward {}",
                analytic[element]
            );
        }
    }
}

#[test]
fn fused_kernels_match_their_composed_twins_and_finite_differences() {
    let eps = 1e-5;
    check(
        "rms_norm",
        &[random(&[3, 5, 16], 1), random(&[16], 2)],
        |t| super::rms_norm(&t[0], &t[1], eps).unwrap(),
        |t| ops::rms_norm(&t[0], &t[1], eps).unwrap(),
        1e-5,
    );

    let (heads, seq, head_dim) = (3, 7, 8);
    let inverse: Vec<f64> = (0..head_dim / 2).map(|i| 1.0 / 10_000f64.powf(2.0 * i as f64 / head_dim as f64)).collect();
    let tables = super::RotaryTables::new(&inverse, 16);
    let composed = ops::Rotary::new(&inverse, 16, DType::F32, &Device::Cpu).unwrap();
    for start in [0, 5] {
        check(
            "rotary",
            &[random(&[2, heads, seq, head_dim], 3)],
            |t| super::rotary(&t[0], &tables, start).unwrap(),
            |t| composed.apply(&t[0], start).unwrap(),
            1e-5,
        );
    }

    for start in [0, 3] {
        let mask = ops::causal_mask(seq, start, DType::F32, &Device::Cpu).unwrap();
        check(
            "causal_softmax",
            &[random(&[2, heads, seq, start + seq], 4)],
            |t| super::causal_softmax(&t[0], 0.35, start).unwrap(),
            |t| ops::softmax_last_dim(&(&t[0] * 0.35).unwrap().broadcast_add(&mask).unwrap()).unwrap(),
            1e-5,
        );
    }

    check(
        "swiglu",
        &[random(&[4, 3, 10], 5), random(&[4, 3, 10], 6)],
        |t| super::swiglu(&t[0], &t[1]).unwrap(),
        |t| (ops::silu(&t[0]).unwrap() * &t[1]).unwrap(),
        1e-5,
    );

    let targets = Tensor::new(&[3u32, 0, 19, 7, 7, 12], &Device::Cpu).unwrap();
    check(
        "cross_entropy",
        &[(random(&[6, 20], 7) * 3.0).unwrap()],
        |t| super::cross_entropy(&t[0], &targets).unwrap(),
        |t| ops::cross_entropy(&t[0], &targets).unwrap(),
        1e-5,
    );
}

#[test]
fn fused_kernels_refuse_what_they_cannot_compute() {
    let logits = random(&[2, 4], 1);
    let out_of_range = Tensor::new(&[1u32, 4], &Device::Cpu).unwrap();
    assert!(super::cross_entropy(&logits, &out_of_range).is_err());
    let tables = super::RotaryTables::new(&[1.0, 0.1], 4);
    assert!(super::rotary(&random(&[1, 1, 5, 4], 2), &tables, 0).is_err(), "past the tables' positions");
    assert!(super::rotary(&random(&[1, 1, 2, 6], 2), &tables, 0).is_err(), "another head dimension");
    assert!(!super::enabled(&logits.to_dtype(DType::F64).unwrap()));
}

fn train(kernels: Kernels, config: &LlamaConfig, steps: usize) -> Vec<f64> {
    let weights = Weights::init(config, 3, DType::F32, &Device::Cpu).unwrap();
    let model = Llama::new(config.clone(), weights).unwrap().with_kernels(kernels);
    let mut optimizer = AdamW::new(AdamWConfig::default());
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    // A small repeated vocabulary pattern with noise, so the loss has somewhere to fall.
    let stream: Vec<u32> =
        (0..4096).map(|i| if rng.random_bool(0.8) { (i * 7 % 13) as u32 } else { rng.random_range(0..48) }).collect();
    let mut losses = Vec::new();
    for step in 0..steps {
        let values: Vec<u32> = (0..4).flat_map(|b| stream[(step * 4 + b) * 17..][..17].to_vec()).collect();
        let batch = Tensor::from_vec(values, (4, 17), &Device::Cpu).unwrap();
        let loss = model.loss(&batch).unwrap();
        let grads = loss.backward().unwrap();
        let mut by_name = std::collections::BTreeMap::new();
        for (name, var) in model.weights.vars() {
            by_name.insert(name.clone(), grads.get(var.as_tensor()).unwrap().clone());
        }
        clip_grad_norm(&mut by_name, 1.0).unwrap();
        optimizer.step(&model.weights.params, &by_name, 3e-3).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap() as f64);
    }
    losses
}

#[test]
fn a_model_trains_to_the_same_losses_with_fused_and_composed_kernels() {
    for tied in [false, true] {
        let mut config = LlamaConfig::new(48, 32, 64, 2, 4);
        config.num_key_value_heads = Some(2);
        config.max_position_embeddings = 32;
        config.tie_word_embeddings = tied;
        let (fused, composed) = (train(Kernels::Fused, &config, 50), train(Kernels::Composed, &config, 50));
        for (step, (f, c)) in fused.iter().zip(&composed).enumerate() {
            assert!((f - c).abs() <= 1e-3 * c.abs(), "step {step}: fused {f}, composed {c} (tied {tied})");
        }
        assert!(fused[45..].iter().sum::<f64>() < fused[..5].iter().sum::<f64>() - 1.0, "the loss falls: {fused:?}");
    }
}

#[test]
fn the_fused_softmax_leaves_the_future_at_zero() {
    let probabilities = super::causal_softmax(&random(&[1, 1, 4, 4], 9), 1.0, 0).unwrap();
    let rows = probabilities.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    for (i, row) in rows.iter().enumerate() {
        assert!(row[i + 1..].iter().all(|&p| p == 0.0), "{rows:?}");
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
    let summed = probabilities.sum_keepdim(D::Minus1).unwrap();
    assert!(max_difference(&summed, &summed.ones_like().unwrap()) < 1e-6);
}

#[test]
fn the_in_place_adamw_update_matches_the_composed_one() {
    let start = random(&[300], 11);
    let (in_place, composed) =
        (Var::from_tensor(&start).unwrap(), Var::from_tensor(&start.to_dtype(DType::F64).unwrap()).unwrap());
    let mut optimizers = [AdamW::new(AdamWConfig::default()), AdamW::new(AdamWConfig::default())];
    for step in 0..5 {
        let grad = random(&[300], 20 + step);
        for (optimizer, var) in optimizers.iter_mut().zip([&in_place, &composed]) {
            let params = std::collections::BTreeMap::from([("layer.weight".to_string(), var.clone())]);
            let grads =
                std::collections::BTreeMap::from([("layer.weight".to_string(), grad.to_dtype(var.dtype()).unwrap())]);
            optimizer.step(&params, &grads, 1e-2).unwrap();
        }
    }
    let composed = composed.as_tensor().to_dtype(DType::F32).unwrap();
    assert!(max_difference(in_place.as_tensor(), &composed) < 1e-5);
    assert!(max_difference(in_place.as_tensor(), &start) > 1e-2, "the parameter moved");
    // The state round-trips through a checkpoint either way.
    let state = optimizers[0].state_tensors(&Device::Cpu).unwrap().into_iter().collect();
    let restored = AdamW::restore(AdamWConfig::default(), state).unwrap();
    assert_eq!(restored.step, 5);
}
