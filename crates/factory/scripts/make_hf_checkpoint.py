#!/usr/bin/env python3
"""Writes a small random-weight Hugging Face checkpoint of a Llama-family model with
transformers, as an agency would download one: half-precision weights sharded over several
files with their index, a byte-level BPE tokenizer with ChatML turn tokens, a tokenizer_config.json
with its chat template and special tokens, and a generation_config.json listing its end tokens.

    python3 make_hf_checkpoint.py OUT_DIR MODEL_TYPE DTYPE    (qwen2 | qwen3 | mistral | llama; bfloat16 | float16)
"""
import json
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM

out, model_type, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
torch.manual_seed(3)

specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
tokenizer = Tokenizer(models.BPE())
tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tokenizer.decoder = decoders.ByteLevel()
text = ["Now is the winter of our discontent made glorious summer by this sun of York"] * 20
trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tokenizer.train_from_iterator(text, trainer)
vocab = tokenizer.get_vocab_size()

shape = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=model_type == "qwen2")
if model_type == "qwen3":
    shape["head_dim"] = 32
config = AutoConfig.for_model(model_type, **shape)
config.eos_token_id = tokenizer.token_to_id("<|endoftext|>")
model = AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype))
model.save_pretrained(out, max_shard_size="60KB", safe_serialization=True)
tokenizer.save(f"{out}/tokenizer.json")
template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
with open(f"{out}/tokenizer_config.json", "w") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
               "chat_template": template, "model_max_length": 256}, f)
with open(f"{out}/generation_config.json", "w") as f:
    json.dump({"eos_token_id": [tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")]}, f)
print(json.dumps({"vocab": vocab, "im_end": tokenizer.token_to_id("<|im_end|>")}))
