"""Write a randomly initialised model with Qwen3-0.6B's exact configuration as a local teacher folder.

usage: python scripts/real_shape.py OUT_DIR [--dtype bfloat16]

Nothing is downloaded: the config is written out here (28 layers, hidden 1,024, 16 query / 8 KV heads of
128, q/k norms, intermediate 3,072, vocabulary 151,936, tied embeddings, RoPE theta 1e6), the weights
are random, and the tokenizer is stories260K's (ids < 512, all inside the 151,936-row embedding), so
`wavedistill distill --teacher OUT_DIR` runs at the real shape: every KD step scores the full vocabulary.
"""

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

QWEN3_0_6B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, attention_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
args = p.parse_args()
torch.manual_seed(0)
model = Qwen3ForCausalLM(Qwen3Config(**QWEN3_0_6B)).to(getattr(torch, args.dtype))
model.save_pretrained(args.out)
tokenizer = AutoTokenizer.from_pretrained(Path(__file__).resolve().parents[2] / "shared" / "teachers" / "stories260K")
tokenizer.save_pretrained(args.out)
n = sum(p.numel() for p in model.parameters())
print(f"{args.out}: Qwen3-0.6B shape, {n:,} parameters, {args.dtype}")
shutil.rmtree(Path(args.out) / "__pycache__", ignore_errors=True)
