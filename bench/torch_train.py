#!/usr/bin/env python3
"""The PyTorch side of bench/train.sh, on exactly the factory side's work: the same initial
weights (the safetensors file train-bench wrote), the same token windows step by step (its
batches file: little-endian u32, steps x batch x (seq + 1)), the same loss (mean next-token
cross-entropy over every position of each window), AdamW with the same betas, epsilon, weight
decay (none on norm weights, as the factory) and constant learning rate, clipping at 1.0.
Prints one JSON line with the per-step losses and the median step time after warm-up.

  torch_train.py --config ref-small.json --weights init.safetensors --batches batches.u32 \
      --batch 8 --seq 256 --steps 20 --warmup 3 --threads 2
"""
import argparse, json, resource, statistics, time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--batches", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    cfg = LlamaConfig(**json.load(open(a.config)))
    model = LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(load_file(a.weights), strict=False)
    assert not unexpected, unexpected
    assert all("rotary" in m for m in missing) and not (missing and not cfg.tie_word_embeddings and "lm_head.weight" in missing), missing
    model.train()
    decayed = [t for n, t in model.named_parameters() if not n.endswith("norm.weight")]
    kept = [t for n, t in model.named_parameters() if n.endswith("norm.weight")]
    opt = torch.optim.AdamW([{"params": decayed, "weight_decay": 0.1}, {"params": kept, "weight_decay": 0.0}],
                            lr=a.learning_rate, betas=(0.9, 0.95), eps=1e-8)
    total = a.warmup + a.steps
    windows = np.fromfile(a.batches, dtype="<u4").reshape(total, a.batch, a.seq + 1)

    times, losses = [], []
    for step in range(total):
        batch = torch.from_numpy(windows[step].astype(np.int64))
        t0 = time.perf_counter()
        logits = model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if step >= a.warmup:
            times.append(dt)

    med = statistics.median(times)
    print(json.dumps({
        "side": "pytorch", "torch": torch.__version__,
        "params": sum(t.numel() for t in model.parameters()),
        "batch": a.batch, "seq": a.seq, "threads": a.threads,
        "step_s_median": round(med, 4), "tokens_per_s": round(a.batch * a.seq / med, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "losses": [round(x, 5) for x in losses],
    }))


if __name__ == "__main__":
    main()
