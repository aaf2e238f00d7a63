#!/usr/bin/env python3
"""Loads a model directory with transformers' AutoModelForCausalLM (Llama, Mistral, Qwen2, Qwen3
by its config's model_type) and prints its logits for the token ids given as JSON: proof that a
model the factory exported loads unchanged and computes what the factory computes.

  python3 transformers_logits.py MODEL_DIR '[[1, 2, 3]]'
Prints one JSON line: {"logits": [...], "parameters": N}.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    logits = model(ids).logits
print(json.dumps({"logits": logits.tolist(), "parameters": sum(p.numel() for p in model.parameters())}))
