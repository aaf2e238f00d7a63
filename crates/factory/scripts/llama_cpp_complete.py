#!/usr/bin/env python3
"""Greedy completion of a text prompt by llama.cpp (llama-cpp-python from PyPI) on a GGUF file the
factory exported: proof that llama.cpp loads it and answers as the factory does.

  python3 llama_cpp_complete.py MODEL.gguf PROMPT MAX_TOKENS
Prints one JSON line: {"text": "...", "prompt_tokens": [...]} (the prompt as llama.cpp tokenized it,
without a beginning-of-sequence token).
"""
import json
import sys

from llama_cpp import Llama

path, prompt, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = Llama(model_path=path, n_ctx=128, n_threads=2, verbose=False)
tokens = model.tokenize(prompt.encode("utf-8"), add_bos=False)
completion = model.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, top_k=1)
print(json.dumps({"text": completion["choices"][0]["text"], "prompt_tokens": tokens}))
