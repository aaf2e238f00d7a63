#!/usr/bin/env python3
"""A SentencePiece-style vocabulary (pieces with scores, byte fallback tokens, <unk>, <s>, </s>)
learned from a little text, written into a minimal GGUF with the `gguf` package, and the
tokenization llama.cpp (llama-cpp-python, vocabulary only) gives the texts passed as JSON: what
the factory's conversion of such a vocabulary must reproduce.

  python3 spm_parity.py OUT.gguf '["text", ...]'
Prints one JSON line: {"tokens": [...], "scores": [...], "types": [...], "ids": [[...], ...]}.
"""
import collections
import json
import sys

import gguf
import numpy as np
from llama_cpp import Llama

path, texts = sys.argv[1], json.loads(sys.argv[2])
corpus = ("Now is the winter of our discontent made glorious summer by this sun of York; "
          "and all the clouds that lour'd upon our house in the deep bosom of the ocean buried.") * 3
words = [list("\u2581" + word) for word in corpus.split(" ")]
pieces = sorted(set(ch for word in words for ch in word))
merges = []
for _ in range(60):
    pairs = collections.Counter((a, b) for word in words for a, b in zip(word, word[1:]))
    if not pairs:
        break
    (a, b), _ = pairs.most_common(1)[0]
    merges.append(a + b)
    for word in words:
        i = 0
        while i < len(word) - 1:
            if word[i] == a and word[i + 1] == b:
                word[i:i + 2] = [a + b]
            i += 1
tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces + merges
types = [2, 3, 3] + [6] * 256 + [1] * (len(pieces) + len(merges))
scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-1000.0 - i for i in range(len(pieces))] + [-float(i) for i in range(len(merges))]

writer = gguf.GGUFWriter(path, "llama")
writer.add_block_count(1)
writer.add_context_length(64)
writer.add_embedding_length(32)
writer.add_feed_forward_length(64)
writer.add_head_count(2)
writer.add_head_count_kv(2)
writer.add_layer_norm_rms_eps(1e-5)
writer.add_tokenizer_model("llama")
writer.add_token_list(tokens)
writer.add_token_scores(scores)
writer.add_token_types(types)
writer.add_bos_token_id(1)
writer.add_eos_token_id(2)
writer.add_unk_token_id(0)
rng = np.random.default_rng(1)
def tensor(name, shape):
    writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
tensor("token_embd.weight", (len(tokens), 32))
tensor("output_norm.weight", (32,))
for part, shape in [("attn_norm", (32,)), ("ffn_norm", (32,)), ("attn_q", (32, 32)), ("attn_k", (32, 32)),
                    ("attn_v", (32, 32)), ("attn_output", (32, 32)), ("ffn_gate", (64, 32)), ("ffn_up", (64, 32)),
                    ("ffn_down", (32, 64))]:
    tensor(f"blk.0.{part}.weight", shape)
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()

model = Llama(model_path=path, vocab_only=True, verbose=False)
ids = [model.tokenize(text.encode("utf-8"), add_bos=False, special=False) for text in texts]
print(json.dumps({"tokens": tokens, "scores": scores, "types": types, "ids": ids}))
