#!/usr/bin/env python3
"""Greedy continuations of token-id prompts by llama.cpp (llama-cpp-python from PyPI) on a GGUF
file: the peer the factory's engine is held to, on the same weights.

  python3 llama_cpp_greedy.py MODEL.gguf '[[1, 2, 3], [4, 5]]' NEW_TOKENS
Prints one JSON line: {"tokens": [[...], ...], "logits": [[[...], ...], ...]}: NEW_TOKENS ids
per prompt, each the argmax (lowest id on ties) of llama.cpp's logits after the tokens before
it, and those logits, one row per generated token.
"""
import json
import sys

import numpy as np
from llama_cpp import Llama

path, prompts, new_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
model = Llama(model_path=path, n_ctx=256, n_threads=2, n_batch=64, logits_all=True, verbose=False)
continuations, rows = [], []
for prompt in prompts:
    model.reset()
    model.eval(prompt)
    generated, logits_rows = [], []
    for _ in range(new_tokens):
        logits = np.asarray(model.scores[model.n_tokens - 1])
        token = int(np.argmax(logits))
        generated.append(token)
        logits_rows.append([float(v) for v in logits])
        model.eval([token])
    continuations.append(generated)
    rows.append(logits_rows)
print(json.dumps({"tokens": continuations, "logits": rows}))
