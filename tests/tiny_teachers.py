"""Tiny teacher *folders* (what ``--teacher`` and ``--base`` take), built offline in a few hundred ms.

tests/conftest.py builds tiny models in memory; the CLI, ``load_teacher`` and ``load_student`` need
a folder on disk with a tokenizer next to the weights. The tokenizer is the demo's word-level one,
fitted to a corpus from ``wavedistill.cli.demo.write_corpus``, so every word of that corpus is in the
vocabulary and nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Qwen3Config, Qwen3ForCausalLM

from wavedistill.cli.demo import build_tokenizer, write_corpus

N_STORIES = 300


def write_tiny_corpus(path: Path, n_stories: int = N_STORIES, seed: int = 0) -> Path:
    write_corpus(str(path), n_stories=n_stories, seed=seed)
    return path


def tiny_qwen3_config(vocab_size: int) -> Qwen3Config:
    # Special ids match build_tokenizer: <pad>=0, <s>=1, </s>=2. initializer_range is larger than
    # HF's 0.02 so that a random model's logits are spread out (otherwise every distribution is near
    # uniform and wrong weights could change logits by less than the tolerances used here).
    return Qwen3Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                       tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       initializer_range=0.1)


def write_tiny_teacher(folder: Path, corpus: Path, seed: int = 0) -> Path:
    """A random tiny Qwen3 + the demo tokenizer, saved like any HF model. Different seeds give
    different bases of the same architecture (what the adapter fingerprint must tell apart)."""
    tokenizer = build_tokenizer(str(corpus))
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_qwen3_config(len(tokenizer)))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_gpt2(folder: Path, corpus: Path) -> Path:
    """An architecture surgery does not support (no ``layers[i].self_attn``), with a tokenizer."""
    tokenizer = build_tokenizer(str(corpus))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=128,
                                       bos_token_id=1, eos_token_id=2))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
