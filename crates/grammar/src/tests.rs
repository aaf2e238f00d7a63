//! Constraints against a real byte-level BPE vocabulary, with a "model" that picks any allowed
//! token at random: whatever it picks, a finished answer parses and keeps the schema.

use factory_tokenizer::{BpeSettings, Tokenizer};
use serde_json::json;

use super::*;

fn tokenizer() -> Tokenizer {
    let text =
        "{\"name\": \"Ada\", \"age\": 36, \"tags\": [\"x\", \"y\"]} The quick brown fox jumps over the lazy dog. \
                Numbers 0 1 2 3 4 5 6 7 8 9 10 42 3.14 -7 true false null, and \"quotes\" {} [] :;";
    let texts = (0..50).map(|_| text.to_string()).collect::<Vec<_>>();
    Tokenizer::train(&BpeSettings::new(400), texts.into_iter()).unwrap_or_else(|e| panic!("{e}"))
}

fn vocabulary(tokenizer: &Tokenizer) -> (Vocabulary, u32) {
    let end = tokenizer.token_id(factory_tokenizer::END_OF_TEXT).unwrap_or_else(|| panic!("no end token"));
    let json = tokenizer.to_json().unwrap_or_else(|e| panic!("{e}"));
    // Padded past the tokenizer, as a model's embedding often is.
    let vocabulary = Vocabulary::new(&json, tokenizer.vocab_size() + 7, end).unwrap_or_else(|e| panic!("{e}"));
    (vocabulary, end)
}

/// Draws tokens uniformly from what the constraint allows (a small generator, seeded), up to
/// `limit`; the text and whether it ended at the end token.
fn generate(
    vocabulary: &Vocabulary,
    grammar: &Grammar,
    tokenizer: &Tokenizer,
    seed: u64,
    limit: usize,
) -> (String, bool) {
    let end = tokenizer.token_id(factory_tokenizer::END_OF_TEXT).unwrap_or_default();
    let mut constraint = vocabulary.constrain(grammar).unwrap_or_else(|e| panic!("{e}"));
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut tokens = Vec::new();
    let mut logits = vec![0.0f32; tokenizer.vocab_size() + 7];
    for _ in 0..limit {
        logits.iter_mut().for_each(|l| *l = 0.0);
        constraint.mask_logits(&mut logits, false).unwrap_or_else(|e| panic!("{e}"));
        let allowed: Vec<u32> = (0..logits.len() as u32).filter(|&t| logits[t as usize].is_finite()).collect();
        assert!(!allowed.is_empty());
        assert!(allowed.iter().all(|&t| (t as usize) < tokenizer.vocab_size()), "padding is never allowed");
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        // Prefer the end and closing tokens a little, as a trained model would, so answers end.
        let token = if allowed.contains(&end) { end } else { allowed[((state >> 33) as usize) % allowed.len()] };
        constraint.commit(token).unwrap_or_else(|e| panic!("{e}"));
        if token == end {
            return (tokenizer.decode(&tokens).unwrap_or_default(), true);
        }
        tokens.push(token);
    }
    (tokenizer.decode(&tokens).unwrap_or_default(), false)
}

#[test]
fn any_pick_of_allowed_tokens_is_a_json_object() {
    let tokenizer = tokenizer();
    let (vocabulary, _) = vocabulary(&tokenizer);
    let mut finished = 0;
    for seed in 0..20 {
        let (text, ended) = generate(&vocabulary, &Grammar::JsonObject, &tokenizer, seed, 3000);
        if ended {
            finished += 1;
            // Syntax only: a valid JSON number may be past f64 (`1E999`), which Value refuses.
            serde_json::from_str::<serde::de::IgnoredAny>(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert!(text.starts_with('{') && text.ends_with('}'), "{text}");
            assert!(!text.contains('\n'), "one line: {text}");
        }
    }
    assert!(finished >= 10, "only {finished} of 20 answers ended");
}

#[test]
fn a_schema_with_enums_bounds_arrays_and_any_of_holds_for_every_answer() {
    let schema = json!({
        "type": "object",
        "properties": {
            "colour": { "enum": ["red", "green", "blue"] },
            "count": { "type": "integer", "minimum": 1, "maximum": 9 },
            "flags": { "type": "array", "items": { "type": "boolean" }, "maxItems": 3 },
            "either": { "anyOf": [{ "type": "null" }, { "type": "integer", "minimum": 0, "maximum": 5 }] },
            "inner": {
                "type": "object",
                "properties": { "ok": { "type": "boolean" } },
                "required": ["ok"],
                "additionalProperties": false,
            },
        },
        "required": ["colour", "count", "flags", "either", "inner"],
        "additionalProperties": false,
    });
    let tokenizer = tokenizer();
    let (vocabulary, _) = vocabulary(&tokenizer);
    let grammar = Grammar::JsonSchema(schema);
    for seed in 0..20 {
        let (text, ended) = generate(&vocabulary, &grammar, &tokenizer, seed, 3000);
        assert!(ended, "a schema without free text ends: {text}");
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(["red", "green", "blue"].contains(&value["colour"].as_str().unwrap_or_default()), "{text}");
        let count = value["count"].as_i64().unwrap_or_else(|| panic!("{text}"));
        assert!((1..=9).contains(&count), "{text}");
        let flags = value["flags"].as_array().unwrap_or_else(|| panic!("{text}"));
        assert!(flags.len() <= 3 && flags.iter().all(Value::is_boolean), "{text}");
        let either = &value["either"];
        assert!(either.is_null() || either.as_i64().is_some_and(|n| (0..=5).contains(&n)), "{text}");
        assert!(value["inner"]["ok"].is_boolean(), "{text}");
        assert_eq!(value.as_object().map(|o| o.len()), Some(5), "no other properties: {text}");
    }
}

#[test]
fn unsupported_schema_features_and_bad_grammars_are_refused_by_name() {
    let tokenizer = tokenizer();
    let (vocabulary, _) = vocabulary(&tokenizer);
    let schema = json!({ "type": "array", "items": { "type": "integer" }, "uniqueItems": true });
    let error = vocabulary.constrain(&Grammar::JsonSchema(schema)).err().unwrap_or_else(|| panic!("compiled"));
    assert!(error.0.contains("uniqueItems"), "{error}");
    let error = vocabulary.constrain(&Grammar::Lark("start: ( ".to_string())).err();
    assert!(error.is_some(), "a broken grammar is refused");
    let impossible = json!({ "type": "integer", "minimum": 5, "maximum": 1 });
    assert!(vocabulary.constrain(&Grammar::JsonSchema(impossible)).is_err(), "an unsatisfiable schema is refused");
}

#[test]
fn a_lark_grammar_with_an_embedded_schema_constrains_a_tagged_call() {
    let tokenizer = tokenizer();
    let (vocabulary, _) = vocabulary(&tokenizer);
    let lark = r#"start: "<call>" %json { "type": "object", "properties": { "n": { "type": "integer", "minimum": 0, "maximum": 3 } }, "required": ["n"], "additionalProperties": false } "</call>""#;
    for seed in 0..5 {
        let (text, ended) = generate(&vocabulary, &Grammar::Lark(lark.to_string()), &tokenizer, seed, 500);
        assert!(ended, "{text}");
        let inner =
            text.strip_prefix("<call>").and_then(|t| t.strip_suffix("</call>")).unwrap_or_else(|| panic!("{text}"));
        let value: Value = serde_json::from_str(inner).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(value["n"].as_i64().is_some_and(|n| (0..=3).contains(&n)), "{text}");
    }
}

#[test]
fn near_its_budget_an_answer_is_steered_to_close_and_still_parses() {
    let tokenizer = tokenizer();
    let (vocabulary, end) = vocabulary(&tokenizer);
    let schema = json!({ "type": "object", "properties": { "a": { "type": "array", "items": { "type": "string" } } }, "required": ["a"] });
    for seed in 0..10u64 {
        let mut constraint =
            vocabulary.constrain(&Grammar::JsonSchema(schema.clone())).unwrap_or_else(|e| panic!("{e}"));
        let mut tokens = Vec::new();
        let mut state = seed + 1;
        let mut ended = false;
        for step in 0..60 {
            let mut logits = vec![0.0f32; tokenizer.vocab_size() + 7];
            // A "model" that never wants to end: the end token is always least likely.
            logits[end as usize] = -50.0;
            constraint.mask_logits(&mut logits, step >= 40).unwrap_or_else(|e| panic!("{e}"));
            let allowed: Vec<u32> = (0..logits.len() as u32).filter(|&t| logits[t as usize].is_finite()).collect();
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let token = allowed[((state >> 33) as usize) % allowed.len()];
            constraint.commit(token).unwrap_or_else(|e| panic!("{e}"));
            if token == end || constraint.finished() {
                ended = true;
                if token != end {
                    tokens.push(token);
                }
                break;
            }
            tokens.push(token);
        }
        let text = tokenizer.decode(&tokens).unwrap_or_default();
        assert!(ended, "steered answers end within the budget: {text}");
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(value["a"].is_array(), "{text}");
    }
}
