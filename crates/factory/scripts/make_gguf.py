"""Writes a tiny random-weight GGUF with the `gguf` package (llama.cpp's own writer, from PyPI),
for the import tests: two blocks, Q8_0 projections, an F16 value projection, F32 norms, a
byte-level BPE vocabulary with merges, BOS/EOS ids and a chat template.

    python3 make_gguf.py OUT.gguf ARCHITECTURE [CHAT_TEMPLATE [PRE_TOKENIZER [ends-at-once]]]

With `ends-at-once` the final norm is all zeros, so every logit is 0 and greedy decoding picks
token 0, which the file declares as its end-of-turn token: an answer that ends at its first
token.
"""
import sys

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

path, architecture = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(7)
writer = gguf.GGUFWriter(path, architecture)
writer.add_name("tiny-" + architecture)
writer.add_block_count(2)
writer.add_context_length(256)
writer.add_embedding_length(64)
writer.add_feed_forward_length(128)
writer.add_head_count(4)
writer.add_head_count_kv(2)
writer.add_layer_norm_rms_eps(1e-6)
writer.add_rope_freq_base(10000.0)
writer.add_tokenizer_model("gpt2")
writer.add_token_list([bytes([i]).decode("latin-1") for i in range(256)] + ["ab", "cd"])
writer.add_token_merges(["a b", "c d"])
if len(sys.argv) > 4:
    writer.add_tokenizer_pre(sys.argv[4])
writer.add_bos_token_id(1)
writer.add_eos_token_id(2)
ends_at_once = len(sys.argv) > 5 and sys.argv[5] == "ends-at-once"
if ends_at_once:
    writer.add_eot_token_id(0)
default_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"
writer.add_chat_template(sys.argv[3] if len(sys.argv) > 3 else default_template)


def tensor(name, shape, kind):
    data = rng.standard_normal(shape).astype(np.float32)
    if kind == Q.F32:
        writer.add_tensor(name, data)
    elif kind == Q.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)


tensor("token_embd.weight", (258, 64), Q.Q8_0)
if ends_at_once:
    writer.add_tensor("output_norm.weight", np.zeros(64, dtype=np.float32))
else:
    tensor("output_norm.weight", (64,), Q.F32)
for block in range(2):
    prefix = f"blk.{block}."
    tensor(prefix + "attn_norm.weight", (64,), Q.F32)
    tensor(prefix + "ffn_norm.weight", (64,), Q.F32)
    tensor(prefix + "attn_q.weight", (64, 64), Q.Q8_0)
    tensor(prefix + "attn_k.weight", (32, 64), Q.Q8_0)
    tensor(prefix + "attn_v.weight", (32, 64), Q.F16)
    tensor(prefix + "attn_output.weight", (64, 64), Q.Q8_0)
    tensor(prefix + "ffn_gate.weight", (128, 64), Q.Q8_0)
    tensor(prefix + "ffn_up.weight", (128, 64), Q.Q8_0)
    tensor(prefix + "ffn_down.weight", (64, 128), Q.Q8_0)
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
