#!/usr/bin/env python3
"""Loads a model directory with transformers' LlamaForCausalLM and prints its logits for the
token ids given as JSON: proof that a model the factory exported loads unchanged.

  python3 transformers_logits.py MODEL_DIR '[[1, 2, 3]]'
Prints one JSON line: {"logits": [...], "parameters": N}.
"""
import json
import sys

import torch
from transformers import LlamaForCausalLM

model = LlamaForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    logits = model(ids).logits
print(json.dumps({"logits": logits.tolist(), "parameters": sum(p.numel() for p in model.parameters())}))
