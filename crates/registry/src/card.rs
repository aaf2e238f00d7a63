//! The model card (`README.md`), generated from the manifest so it can never disagree with
//! what the registry enforces.

use std::fmt::Write as _;

use crate::manifest::{ModelManifest, Origin};

const DEFAULT_INTENDED_USE: &str = "Text generation inside the owning organisation, through the factory's governed \
     gateway, for the tasks its training data represents.";

/// Markdown with a YAML front matter block (the Hugging Face card convention).
pub fn model_card(manifest: &ModelManifest, intended_use: Option<&str>) -> String {
    let mut card = String::new();
    let residency = &manifest.residency;
    let _ = writeln!(card, "---");
    let _ = writeln!(card, "model_name: {}", manifest.reference());
    let _ = writeln!(card, "architecture: {}", manifest.architecture);
    let _ = writeln!(card, "jurisdiction: {}", residency.jurisdiction);
    let _ = writeln!(card, "classification: {}", residency.classification);
    let _ = writeln!(card, "---\n");
    let _ = writeln!(card, "# {}\n", manifest.reference());
    let origin = match manifest.lineage.origin {
        Origin::Trained => "trained from scratch by the factory",
        Origin::FineTuned => "fine-tuned by the factory",
        Origin::Imported => "imported from outside the factory",
        Origin::Quantized => "quantized by the factory from the version its lineage names",
    };
    let _ = writeln!(
        card,
        "A {}-architecture language model with {} parameters, {origin}, owned by tenant `{}`.\n",
        manifest.architecture,
        group_thousands(manifest.parameters),
        manifest.tenant
    );

    let _ = writeln!(card, "## Training data\n");
    if manifest.lineage.datasets.is_empty() {
        let _ = writeln!(card, "Not recorded: the model was trained outside this factory.\n");
    }
    for dataset in &manifest.lineage.datasets {
        let _ = writeln!(
            card,
            "- `{}@{}` ({}, {})",
            dataset.name, dataset.version, dataset.jurisdiction, dataset.classification
        );
    }
    if let Some(base) = &manifest.lineage.base_model {
        let _ = writeln!(card, "- base model `{base}`");
    }

    let _ = writeln!(card, "\n## Parameters\n");
    let _ = writeln!(card, "- seed: {}", manifest.lineage.seed.map(|s| s.to_string()).unwrap_or("-".into()));
    let _ = writeln!(card, "- produced by: {}", manifest.lineage.code_version);
    if let Some(run) = &manifest.lineage.run {
        let _ = writeln!(card, "- training run: `{run}`");
    }
    let _ = writeln!(
        card,
        "\n```json\n{}\n```",
        serde_json::to_string_pretty(&manifest.lineage.config).unwrap_or_default()
    );

    let _ = writeln!(card, "\n## Evaluation\n");
    match manifest.evals.as_object().filter(|evals| !evals.is_empty()) {
        Some(evals) => {
            for (name, value) in evals {
                let _ = writeln!(card, "- {name}: {value}");
            }
        }
        None => {
            let _ = writeln!(card, "No evaluation was recorded.");
        }
    }

    let _ = writeln!(card, "\n## Intended use\n\n{}", intended_use.unwrap_or(DEFAULT_INTENDED_USE));
    let _ = writeln!(card, "\n## Limits\n");
    let _ = writeln!(
        card,
        "- It knows only what its training data holds; it has no safety tuning beyond the gateway's guardrails."
    );
    let _ = writeln!(
        card,
        "- Residency: it may be stored and served only in `{}` (derived from {}); data classified `{}` \
         sets who may export it.",
        residency.jurisdiction, residency.derived_from, residency.classification
    );
    let _ = writeln!(card, "- Verify before use: `factory model verify {}`.", manifest.reference());
    card
}

fn group_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}
