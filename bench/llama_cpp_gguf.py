#!/usr/bin/env python3
"""llama.cpp beside `gguf-bench` on the same GGUF file: resident memory the load adds, prefill
tokens/s (the prompt evaluated in one batch) and decode tokens/s (greedy, one token per eval),
each the median of a few runs, with the same random prompt (seeded ids, not text). Prints one
JSON line.

  python3 bench/llama_cpp_gguf.py --model MODEL.gguf --threads 2
"""
import argparse
import json
import random
import statistics
import time

import numpy as np
from llama_cpp import Llama, __version__


def resident_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    before = resident_bytes()
    started = time.perf_counter()
    llm = Llama(model_path=a.model, n_ctx=a.prompt_tokens + a.new_tokens + 8, n_threads=a.threads,
                n_threads_batch=a.threads, n_batch=512, use_mmap=False, verbose=False)
    load_s = time.perf_counter() - started
    loaded = resident_bytes()
    rng = random.Random(0)
    prompt = [rng.randrange(3, llm.n_vocab()) for _ in range(a.prompt_tokens)]
    prefill, decode = [], []
    for _ in range(a.repeats):
        llm.reset()
        started = time.perf_counter()
        llm.eval(prompt)
        prefill.append(a.prompt_tokens / (time.perf_counter() - started))
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        started = time.perf_counter()
        for _ in range(a.new_tokens):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        decode.append(a.new_tokens / (time.perf_counter() - started))
    print(json.dumps({
        "engine": "llama.cpp", "llama_cpp_python": __version__, "threads": a.threads,
        "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens, "load_s": round(load_s, 3),
        "resident_added_bytes": loaded - before,
        "prefill_tokens_per_s": round(statistics.median(prefill), 1),
        "decode_tokens_per_s": round(statistics.median(decode), 1),
    }))


if __name__ == "__main__":
    main()
