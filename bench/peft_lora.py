#!/usr/bin/env python3
"""Peer for the LoRA benchmark: PyTorch + peft on the f32 Hugging Face checkpoint of the same
weights the factory's side reads from a quantized GGUF file (`gguf-bench --make ... --hf DIR`).

Same adapters (rank, alpha = 2 x rank, every projection), optimizer (AdamW, lr 1e-3, betas
0.9/0.95, weight decay 0.1, clipping at 1.0), batch of one shared window repeated (the tokens of
the factory side's 32-bit linear congruential generator, bit for bit), thread count and median
step time after warm-up. Prints one JSON line with the loss curve and the resident peak.

  python3 bench/peft_lora.py --hf DIR --rank 8 --batch 4 --seq 128 --steps 10 --threads 2
"""
import argparse, json, resource, statistics, time


def shared_tokens(count, vocab):
    state, tokens = 12345, []
    for _ in range(count):
        state = (state * 1664525 + 1013904223) & 0xFFFFFFFF
        tokens.append(1 + (state >> 8) % (vocab - 1))
    return tokens


def resident_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hf", required=True)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    at_start = resident_bytes()
    model = LlamaForCausalLM.from_pretrained(a.hf, torch_dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0,
                                             target_modules=targets, bias="none"))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    vocab = model.config.vocab_size
    window = torch.tensor(shared_tokens(a.seq + 1, vocab))
    inputs = window[:-1].repeat(a.batch, 1)
    targets_ = window[1:].repeat(a.batch, 1)

    times, losses = [], []
    for step in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets_.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        losses.append(round(loss.item(), 4))
        if step >= a.warmup:
            times.append(dt)

    med = statistics.median(times)
    print(json.dumps({
        "side": "pytorch-peft", "torch": torch.__version__, "threads": a.threads,
        "params": sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in trainable),
        "trainable_params": sum(p.numel() for p in trainable),
        "rank": a.rank, "batch": a.batch, "seq": a.seq,
        "step_s_median": round(med, 4),
        "tokens_per_s": round(a.batch * a.seq / med, 1),
        "resident_at_start_bytes": at_start,
        "peak_resident_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "losses": losses,
    }))


if __name__ == "__main__":
    main()
