//! Accuracy of the language guess and the deduplicator on real text.
//!
//! The public-domain novels in shared/data are the factory's offline corpora. These tests
//! measure, on paragraphs the language table was not derived from, what the unit tests can only
//! spot-check: language accuracy, the near-duplicate false-positive rate over thousands of
//! distinct paragraphs, and recall over synthetic edits. They print their measurements (run
//! with `--nocapture` to see them) and skip, saying so, when the corpora are absent.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::PathBuf;

use factory_profile::{detect_language, normalized_tokens, DedupOptions, DedupVerdict, Deduplicator, Language};

const NOVELS: [(&str, Language); 3] = [
    ("twain-tom-sawyer-en.txt", Language::English),
    ("grimm-de.txt", Language::German),
    ("verne-deux-ans-fr.txt", Language::French),
];

/// `FACTORY_SHARED_DATA`, else shared/data beside the repository (CI's layout), else inside it.
fn data_dir() -> Option<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("FACTORY_SHARED_DATA").map(PathBuf::from),
        Some(manifest.join("../../../shared/data")),
        Some(manifest.join("../../shared/data")),
    ];
    let found = candidates.into_iter().flatten().find(|dir| NOVELS.iter().all(|(name, _)| dir.join(name).is_file()));
    if found.is_none() {
        factory_testkit::missing("the shared/data corpora (set FACTORY_SHARED_DATA)");
    }
    found
}

fn lines(dir: &std::path::Path, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join(name)).unwrap();
    text.split('\n').map(|l| l.trim().to_owned()).collect()
}

fn long(lines: &[String]) -> Vec<String> {
    lines.iter().filter(|l| l.chars().count() >= 200).cloned().collect()
}

/// Paragraphs (lines) of 200+ characters from the last 40 % of a novel: the generator
/// (`scripts/gen_language_table.py`) reads only lines before `len * 3 / 5`.
fn held_out(dir: &std::path::Path, name: &str) -> Vec<String> {
    let all = lines(dir, name);
    let cut = all.len() * 3 / 5;
    long(&all[cut..])
}

#[test]
fn language_guess_on_held_out_paragraphs() {
    let Some(dir) = data_dir() else { return };
    let (mut right, mut total) = (0usize, 0usize);
    for (name, expected) in NOVELS {
        let paragraphs = held_out(&dir, name);
        assert!(paragraphs.len() >= 100, "{name}: {} paragraphs", paragraphs.len());
        let mut wrong = Vec::new();
        for p in &paragraphs {
            let guess = detect_language(p);
            if guess.language != expected {
                wrong.push((guess, p.chars().take(80).collect::<String>()));
            }
        }
        let correct = paragraphs.len() - wrong.len();
        let accuracy = correct as f64 / paragraphs.len() as f64;
        println!(
            "language {}: {correct}/{} held-out paragraphs right ({:.2} %)",
            expected.code(),
            paragraphs.len(),
            accuracy * 100.0
        );
        for (guess, start) in &wrong {
            println!("  wrong: {guess:?} {start}");
        }
        assert!(accuracy >= 0.95, "{name}: accuracy {accuracy}");
        right += correct;
        total += paragraphs.len();
    }
    let accuracy = right as f64 / total as f64;
    println!("language overall: {right}/{total} ({:.2} %)", accuracy * 100.0);
    assert!(accuracy >= 0.95);
}

/// Distinct (after normalisation) 200+ character paragraphs of the three novels, taken in turn
/// from each so that all three languages are represented.
fn distinct_paragraphs(dir: &std::path::Path, limit: usize) -> Vec<String> {
    let sources: Vec<Vec<String>> = NOVELS.iter().map(|(n, _)| long(&lines(dir, n))).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let longest = sources.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..longest {
        for source in &sources {
            if let Some(p) = source.get(i) {
                let key: Vec<String> = normalized_tokens(p).collect();
                if out.len() < limit && seen.insert(key) {
                    out.push(p.clone());
                }
            }
        }
    }
    out
}

fn shingles(text: &str, k: usize) -> HashSet<Vec<String>> {
    let tokens: Vec<String> = normalized_tokens(text).collect();
    let k = k.min(tokens.len()).max(1);
    tokens.windows(k).map(<[String]>::to_vec).collect()
}

/// The exact Jaccard similarity of two texts' shingle sets.
fn jaccard(a: &str, b: &str, k: usize) -> f64 {
    let (a, b) = (shingles(a, k), shingles(b, k));
    let union = a.union(&b).count();
    if union == 0 {
        1.0
    } else {
        a.intersection(&b).count() as f64 / union as f64
    }
}

/// Runs distinct paragraphs through a deduplicator; returns (flagged, false positives), where a
/// flag is false when the exact Jaccard similarity of the pair is more than 0.1 below the
/// threshold (the estimate's standard error at 128 permutations is about 0.035).
fn false_positives(paragraphs: &[String], options: DedupOptions) -> (usize, usize) {
    let (threshold, k) = (options.threshold, options.shingle);
    let mut dedup = Deduplicator::new(options).unwrap();
    let (mut flagged, mut false_positive) = (0, 0);
    for p in paragraphs {
        match dedup.check(p) {
            DedupVerdict::Unique => {}
            DedupVerdict::ExactDuplicate { of } => panic!("distinct paragraph equal to {of}"),
            DedupVerdict::NearDuplicate { of, similarity_estimate } => {
                flagged += 1;
                let truth = jaccard(p, &paragraphs[of as usize], k);
                println!("  flagged: estimate {similarity_estimate:.3}, exact {truth:.3}");
                if truth < threshold - 0.1 {
                    false_positive += 1;
                }
            }
        }
    }
    (flagged, false_positive)
}

#[test]
fn near_duplicate_false_positives_over_distinct_paragraphs() {
    let Some(dir) = data_dir() else { return };
    let paragraphs = distinct_paragraphs(&dir, 2000);
    assert_eq!(paragraphs.len(), 2000);
    for (label, options) in [
        ("defaults (threshold 0.8, 5-word shingles)", DedupOptions::default()),
        ("threshold 0.5, 3-word shingles", loose()),
    ] {
        let (flagged, fp) = false_positives(&paragraphs, options);
        println!(
            "dedup {label}: {flagged} of {} distinct paragraphs flagged, {fp} false positives \
             (rate {:.4} %)",
            paragraphs.len(),
            fp as f64 * 100.0 / paragraphs.len() as f64
        );
        assert_eq!(fp, 0, "{label}");
    }
}

/// Options matched to a 5 % edit rate (see the recall test).
fn loose() -> DedupOptions {
    DedupOptions { threshold: 0.5, shingle: 3, ..DedupOptions::default() }
}

/// SplitMix64, so the perturbations are the same on every run.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How a copy differs from its original.
#[derive(Clone, Copy)]
enum Edit {
    /// Drop about half this share of the words and replace about half with random words of the
    /// corpus; at least one word always changes.
    Rate(f64),
    /// Replace exactly this many words (at distinct random positions).
    Replace(usize),
}

fn perturb(text: &str, edit: Edit, vocabulary: &[&str], random: &mut Random) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let pick = |random: &mut Random| vocabulary[(random.next() % vocabulary.len() as u64) as usize];
    match edit {
        Edit::Rate(rate) => {
            let forced = (random.next() % words.len() as u64) as usize;
            let mut out = Vec::with_capacity(words.len());
            for (i, word) in words.iter().enumerate() {
                let r = random.unit();
                if r < rate / 2.0 || (i == forced && r < 0.5) {
                    continue;
                }
                if r < rate || i == forced {
                    out.push(pick(random));
                } else {
                    out.push(word);
                }
            }
            out.join(" ")
        }
        Edit::Replace(count) => {
            let mut out = words.clone();
            let mut done = HashSet::new();
            while done.len() < count.min(words.len()) {
                let i = (random.next() % words.len() as u64) as usize;
                if done.insert(i) {
                    out[i] = pick(random);
                }
            }
            out.join(" ")
        }
    }
}

struct Recall {
    caught: usize,
    total: usize,
    mean_jaccard: f64,
    above_threshold: usize,
    caught_above_threshold: usize,
}

/// Indexes `originals`, then checks one perturbed copy of each; a copy is caught when it is
/// reported as a duplicate of its own original.
fn recall(originals: &[String], edit: Edit, options: DedupOptions, seed: u64) -> Recall {
    let (threshold, k) = (options.threshold, options.shingle);
    let vocabulary: Vec<&str> = originals.iter().flat_map(|p| p.split_whitespace()).collect();
    let mut random = Random(seed);
    let mut dedup = Deduplicator::new(options).unwrap();
    for p in originals {
        assert_eq!(dedup.check(p), DedupVerdict::Unique);
    }
    let mut result =
        Recall { caught: 0, total: originals.len(), mean_jaccard: 0.0, above_threshold: 0, caught_above_threshold: 0 };
    for (id, p) in originals.iter().enumerate() {
        let copy = perturb(p, edit, &vocabulary, &mut random);
        let truth = jaccard(p, &copy, k);
        result.mean_jaccard += truth / originals.len() as f64;
        let caught = match dedup.check(&copy) {
            DedupVerdict::NearDuplicate { of, .. } | DedupVerdict::ExactDuplicate { of } => of == id as u64,
            DedupVerdict::Unique => false,
        };
        result.caught += usize::from(caught);
        if truth >= threshold + 0.05 {
            result.above_threshold += 1;
            result.caught_above_threshold += usize::from(caught);
        }
    }
    result
}

/// 200 distinct paragraphs of at least `min_words` words, spread over the corpora.
fn originals(dir: &std::path::Path, min_words: usize) -> Vec<String> {
    let candidates: Vec<String> = distinct_paragraphs(dir, usize::MAX)
        .into_iter()
        .filter(|p| p.split_whitespace().count() >= min_words)
        .collect();
    let step = (candidates.len() / 200).max(1);
    candidates.into_iter().step_by(step).take(200).collect()
}

#[test]
fn near_duplicate_recall_over_synthetic_edits() {
    let Some(dir) = data_dir() else { return };
    let paragraphs = originals(&dir, 40);
    let long_paragraphs = originals(&dir, 120);
    assert_eq!((paragraphs.len(), long_paragraphs.len()), (200, 200));
    // (what, originals, edit, options, recall required of the whole run)
    let runs = [
        ("5 % edits, threshold 0.5, 3-word shingles", &paragraphs, Edit::Rate(0.05), loose(), Some(0.9)),
        (
            "2 words replaced in 120+ words, defaults",
            &long_paragraphs,
            Edit::Replace(2),
            DedupOptions::default(),
            Some(0.9),
        ),
        ("5 % edits, defaults", &paragraphs, Edit::Rate(0.05), DedupOptions::default(), None),
        ("1 % edits, defaults", &paragraphs, Edit::Rate(0.01), DedupOptions::default(), None),
        ("1 % edits of 120+ words, defaults", &long_paragraphs, Edit::Rate(0.01), DedupOptions::default(), None),
    ];
    for (label, originals, edit, options, required) in runs {
        let r = recall(originals, edit, options, 42);
        let value = r.caught as f64 / r.total as f64;
        let conditional = r.caught_above_threshold as f64 / r.above_threshold.max(1) as f64;
        println!(
            "dedup recall, {label}: {}/{} = {value:.3}; mean exact Jaccard {:.3}; \
             recall among the {} pairs at least 0.05 above the threshold: {conditional:.3}",
            r.caught, r.total, r.mean_jaccard, r.above_threshold
        );
        if let Some(required) = required {
            assert!(value >= required, "{label}: recall {value}");
        }
        // Whatever the edit rate, the pairs that are near duplicates by the threshold's own
        // definition must be found; the rest are not near duplicates at that threshold.
        if r.above_threshold >= 20 {
            assert!(conditional >= 0.9, "{label}: conditional recall {conditional}");
        }
    }
}
