#!/usr/bin/env python3
"""Converts a Hugging Face directory to GGUF with llama.cpp's own converter (convert_hf_to_gguf.py
from llama-cpp-python's source distribution), for the llama.cpp side of the decode benchmark.

The converter names a byte-level BPE's pre-tokenizer by hashing how it splits a test text and
refuses hashes it does not know; the factory's tokenizers are byte-level BPE with GPT-2's
pre-tokenizer, so that is the name given. Only loading depends on it: the benchmark decodes
random weights and reads no text.

  python3 bench/gguf_convert.py LLAMA_CPP_DIR MODEL_DIR OUT.gguf
"""
import runpy
import sys

llama_cpp_dir, model_dir, out = sys.argv[1:4]
sys.path.insert(0, llama_cpp_dir)
from conversion import base  # noqa: E402  (the converter's own package)

base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outtype", "f32", "--outfile", out]
runpy.run_path(f"{llama_cpp_dir}/convert_hf_to_gguf.py", run_name="__main__")
