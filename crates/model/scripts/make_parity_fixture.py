#!/usr/bin/env python3
"""Writes the parity fixture: a tiny random Llama (grouped-query attention, untied head) saved by
transformers' own save_pretrained, plus its logits for a fixed batch of token ids.

  python3 make_parity_fixture.py [OUT_DIR]     (default: ../tests/fixtures/tiny-llama)

tests/parity.rs loads the directory with our loader and compares our logits with these.
"""
import json
import os
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "tests", "fixtures", "tiny-llama")

torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=64, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
    initializer_range=0.2,
)
model = LlamaForCausalLM(config).eval()
with torch.no_grad():
    # Norm weights start at one; move them so the test sees that they are applied.
    for name, parameter in model.named_parameters():
        if "norm" in name:
            parameter.add_(torch.randn_like(parameter) * 0.1)
model.save_pretrained(out, safe_serialization=True)

ids = [[1, 7, 42, 3, 3, 19, 63, 0, 25, 11, 8, 50], [5, 5, 5, 60, 2, 9, 31, 44, 17, 6, 1, 0]]
with torch.no_grad():
    logits = model(torch.tensor(ids)).logits
with open(os.path.join(out, "logits.json"), "w") as f:
    json.dump({"input_ids": ids, "logits": logits.tolist(), "transformers": __import__("transformers").__version__}, f)
print(f"wrote {out}")
