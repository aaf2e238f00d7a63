#!/usr/bin/env python3
"""llama.cpp peer for the decode benchmark, on the terms of shared/bench/peers/torch_generate.py:
greedy, batch 1, a random prompt, decode speed = (N - 1) new tokens over time(N) - time(1).
Tokens are counted here from `Llama.generate()` (create_completion can overrun max_tokens on
random weights). Prints one JSON line.

  python3 bench/llama_cpp_generate.py --model MODEL.gguf --prompt-tokens 32 --new-tokens 128
"""
import argparse
import json
import random
import statistics
import time

from llama_cpp import Llama, __version__


def timed(llm, prompt, n):
    llm.reset()
    started = time.perf_counter()
    for count, _ in enumerate(llm.generate(prompt, top_k=1, temp=0.0, reset=True), start=1):
        if count == n:
            break
    return time.perf_counter() - started


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    llm = Llama(model_path=a.model, n_ctx=512, n_threads=a.threads, n_batch=512, verbose=False)
    rng = random.Random(0)
    prompt = [rng.randrange(3, llm.n_vocab()) for _ in range(a.prompt_tokens)]
    timed(llm, prompt, 4)  # warm-up
    full = statistics.median(timed(llm, prompt, a.new_tokens) for _ in range(a.repeats))
    one = statistics.median(timed(llm, prompt, 1) for _ in range(a.repeats))
    print(json.dumps({
        "peer": "llama.cpp", "llama_cpp_python": __version__, "prompt_tokens": a.prompt_tokens,
        "new_tokens": a.new_tokens, "threads": a.threads,
        "decode_tokens_per_s": round((a.new_tokens - 1) / (full - one), 1),
        "prefill_plus_first_s": round(one, 4),
    }))


if __name__ == "__main__":
    main()
