//! Adapters on a base frozen in its GGUF blocks (issue 18, point 7): the loss and every
//! adapter's gradient equal those on the same blocks widened to `f32`, and the merged file
//! holds the base with the adapters folded in.
#![allow(clippy::unwrap_used)]

use std::io::Cursor;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};

use super::serving_tests::{family_config, gguf_bytes, random, random_model};
use super::{read_frozen, read_llama, write_merged};
use crate::{Llama, LoraAdapters, LoraConfig};

const TARGETS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "down_proj"];

/// Adapters with `B` random too, so that they change what the model computes.
fn adapters(model: &Llama) -> LoraAdapters {
    let lora = LoraConfig { rank: 4, alpha: 8.0, target_modules: TARGETS.iter().map(|s| s.to_string()).collect() };
    let adapters = LoraAdapters::init(&model.config, &lora, 5, &Device::Cpu).unwrap();
    for (index, (name, var)) in adapters.params.iter().enumerate() {
        if name.contains("lora_B") {
            let values: Vec<f32> = random(var.elem_count(), 40 + index as u64).iter().map(|v| v / 4.0).collect();
            var.set(&Tensor::from_vec(values, var.dims(), &Device::Cpu).unwrap()).unwrap();
        }
    }
    adapters
}

fn batch() -> Tensor {
    let tokens: Vec<u32> = (0..2 * 12).map(|i| (i * 37 % 300) as u32).collect();
    Tensor::from_vec(tokens, (2, 12), &Device::Cpu).unwrap()
}

fn relative(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let difference = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    difference / scale
}

#[test]
fn adapters_on_a_frozen_base_learn_what_they_learn_on_its_blocks_widened() {
    for (model_type, tied) in [("llama", false), ("qwen2", true), ("qwen3", false)] {
        let config = family_config(model_type, tied, 64, 96);
        let file = gguf_bytes(&random_model(&config, 3), GgmlDType::Q8_0);
        let (frozen, _) = read_frozen(&mut Cursor::new(&file)).unwrap();
        let (widened, _) = read_llama(&mut Cursor::new(&file)).unwrap();
        assert!(frozen.weights.params.values().all(|var| var.rank() == 1), "only vectors are widened");
        let whole: usize = widened.weights.params.values().map(|var| var.elem_count() * 4).sum();
        assert!(frozen.frozen_bytes() * 3 < whole, "{model_type}: the base stays in its 8-bit blocks");

        let (for_frozen, for_widened) = (adapters(&widened), adapters(&widened));
        let (frozen, widened) = (frozen.with_adapters(for_frozen), widened.with_adapters(for_widened));
        let (frozen_loss, widened_loss) = (frozen.loss(&batch()).unwrap(), widened.loss(&batch()).unwrap());
        assert!(relative(&frozen_loss, &widened_loss) < 1e-5, "{model_type}: the same loss");
        let (frozen_grads, widened_grads) = (frozen_loss.backward().unwrap(), widened_loss.backward().unwrap());
        let pairs = frozen.adapters.as_ref().unwrap().params.iter().zip(&widened.adapters.as_ref().unwrap().params);
        let mut adapted = 0;
        for ((name, ours), (_, theirs)) in pairs {
            let ours =
                frozen_grads.get(ours.as_tensor()).unwrap_or_else(|| panic!("{model_type}: no gradient for {name}"));
            let theirs = widened_grads.get(theirs.as_tensor()).unwrap();
            let size = ours.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(size > 0.0, "{model_type}: {name} gets a gradient");
            assert!(relative(ours, theirs) < 1e-3, "{model_type}: {name}'s gradient is the widened one's");
            adapted += 1;
        }
        assert_eq!(adapted, 2 * TARGETS.len() * config.num_hidden_layers);
        // The frozen base's vectors get no gradient: nothing but the adapters moves.
        for (name, var) in &frozen.weights.params {
            assert!(frozen_grads.get(var.as_tensor()).is_none(), "{model_type}: {name} is frozen");
        }
    }
}

#[test]
fn a_merged_file_holds_the_base_with_the_adapters_folded_in_and_requantized() {
    let config = family_config("llama", false, 64, 96);
    let file = gguf_bytes(&random_model(&config, 8), GgmlDType::Q8_0);
    let (base, _) = read_frozen(&mut Cursor::new(&file)).unwrap();
    let (widened, inspected) = read_llama(&mut Cursor::new(&file)).unwrap();
    let model = base.with_adapters(adapters(&widened));
    let mut merged = Cursor::new(Vec::new());
    write_merged(&mut merged, &model, "tuned", &super::GgufVocabulary::of(inspected)).unwrap();
    let (merged, _) = read_llama(&mut Cursor::new(merged.into_inner())).unwrap();
    let expected = model.adapters.as_ref().unwrap().merge_into(&widened.weights).unwrap();
    for (name, var) in &merged.weights.params {
        let (ours, theirs) = (var.as_tensor(), expected.get(name).unwrap());
        if TARGETS.iter().any(|target| name.contains(target)) {
            // Quantized again to Q8_0: within the type's rounding of the merged values.
            assert!(relative(ours, theirs) < 1e-2, "{name} is merged");
            assert!(relative(ours, widened.weights.get(name).unwrap()) > 1e-2, "{name} changed");
        } else {
            let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(values(ours), values(theirs), "{name} is copied block for block");
        }
    }
    // The merged model computes what the adapted one does.
    let loss = |model: &Llama| model.loss(&batch()).unwrap().to_scalar::<f32>().unwrap();
    let merged = Llama::new(config, merged.weights).unwrap();
    assert!((loss(&merged) - loss(&model)).abs() < 1e-2, "{} vs {}", loss(&merged), loss(&model));
}
