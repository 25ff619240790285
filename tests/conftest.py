"""Shared fixtures and helpers: tiny offline HF models, the real stories260K teacher, a causality check.

Everything here is built from config classes, so no test downloads anything. The one real
checkpoint (``../shared/teachers/stories260K``) is optional: tests that need it skip with a reason.
"""

from __future__ import annotations

import os
from pathlib import Path

# Nothing in the suite may touch the network; set before transformers / huggingface_hub read it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
from transformers import (AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config,
                          Qwen3Config)

# Every tensor in this suite is tiny, so intra-op threads only add overhead, and on a busy 2-core
# machine oversubscription made single forwards ~100x slower. One thread keeps the suite fast.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
STORIES260K = SHARED_DIR / "teachers" / "stories260K"

#: Real (non-padding_idx) token used as the pad token. Its embedding is re-randomised after building
#: the model, because a zero pad embedding hides pad-zeroing bugs (hf-surgery.md section 5).
PAD_ID = 7
VOCAB = 101

TINY_FAMILIES = ("qwen3", "llama", "mistral", "qwen2", "gemma3_text")

_CONFIG_CLASSES = {
    "qwen3": Qwen3Config,  # has q_norm / k_norm natively
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,  # q/k/v projections carry a bias, whatever the config says
    "gemma3_text": Gemma3TextConfig,  # sandwich norms, (1 + w) q/k norms, sliding + full layers
}


def tiny_config(family: str, **overrides):
    """A 3-layer, hidden-64 config of ``family`` (4 heads, 2 KV heads, head_dim 16, vocab 101)."""
    kw = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=VOCAB,
              num_hidden_layers=3, intermediate_size=128, max_position_embeddings=128, pad_token_id=PAD_ID,
              # No EOS/BOS: greedy runs then always produce exactly max_new_tokens, so batched and
              # per-row generations have the same length and can be compared token for token.
              eos_token_id=None, bos_token_id=None,
              # Larger than HF's 0.02 so that logits are spread out: greedy decoding of a random
              # model then has no near-ties and produces varied tokens.
              initializer_range=0.1, tie_word_embeddings=False)
    if family == "gemma3_text":
        # A sliding window shorter than the test sequences, and both layer types, with wave layer 0 the
        # first sliding layer and wave layer 2 the first full-attention layer: replacing those is what
        # breaks HF's cache bookkeeping if the wave cache layer gets it wrong (hf-surgery.md 2.3).
        kw.update(sliding_window=8, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                  query_pre_attn_scalar=16)
    kw.update(overrides)
    return _CONFIG_CLASSES[family](**kw)


def tiny_model(family: str, attn_implementation: str = "sdpa", **overrides):
    """A random tiny ``family`` model in eval mode, float32, with a non-zero pad-token embedding."""
    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides),
                                             attn_implementation=attn_implementation)
    emb = model.get_input_embeddings()
    with torch.no_grad():
        emb.weight[PAD_ID].normal_(0.0, model.config.initializer_range)  # HF zeroes the padding_idx row
        # HF also zero-initialises biases (Qwen2's q/k/v); a trained teacher's are not zero, and a
        # mixer that drops or mishandles them must not pass for correct.
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, model.config.initializer_range)
            # Norm weights start at exactly 1 (Llama style) or 0 (Gemma's 1 + w): a mixer that copies
            # them with the wrong convention could still pass at that init.
            elif "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    assert emb.weight[PAD_ID].abs().min() > 0, "pad embedding must be non-zero for the padding tests to mean anything"
    return model.eval()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``<repo root>/../shared``: large read-only material every developer and CI machine has."""
    return SHARED_DIR


@pytest.fixture
def stories260k(shared_dir):
    """A fresh copy of the real stories260K teacher (each test may convert it in place)."""
    path = shared_dir / "teachers" / "stories260K"
    if not (path / "config.json").exists():
        pytest.skip("../shared/teachers/stories260K not found: tests that need the real teacher run in CI "
                    "where ../shared exists")
    return AutoModelForCausalLM.from_pretrained(path).eval()


@torch.no_grad()
def assert_causal(fn, x: torch.Tensor, *, atol: float = 1e-10, vocab: int | None = None, trials: int = 2,
                  seed: int = 0) -> float:
    """Perturb ``x[:, t+1:]`` and require ``fn(x)[:, :t+1]`` unchanged, for t in {0, 1, T//3, T//2, T-2}.

    ``x`` is (B, T, D) floats (perturbed by ``10 * randn``, far outside the training range, so that a
    leak cannot hide in round-off) or (B, T) token ids (perturbed by random ids from ``vocab``).
    Returns the worst change seen.
    """
    g = torch.Generator().manual_seed(seed)
    T = x.shape[1]
    base = fn(x)
    worst = 0.0
    for t in sorted({0, 1, T // 3, T // 2, T - 2}):
        for _ in range(trials):
            x2 = x.clone()
            tail = x2[:, t + 1:]
            if x.is_floating_point():
                x2[:, t + 1:] = 10 * torch.randn(tail.shape, generator=g, dtype=x.dtype)
            else:
                x2[:, t + 1:] = torch.randint(0, vocab, tail.shape, generator=g)
            assert not torch.equal(x2, x), "the perturbation must change the future"
            worst = max(worst, (fn(x2)[:, : t + 1] - base[:, : t + 1]).abs().max().item())
    assert worst <= atol, f"causality violated: past outputs moved by {worst:.3e} when the future changed"
    return worst


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> dict[str, Path]:
    """A tiny random Qwen3 teacher *folder* (2 layers) with the demo tokenizer, and a corpus for it."""
    from tests.tiny_teachers import write_tiny_corpus, write_tiny_teacher

    root = tmp_path_factory.mktemp("tiny_teacher")
    corpus = write_tiny_corpus(root / "stories.txt")
    return {"root": root, "corpus": corpus, "teacher": write_tiny_teacher(root / "teacher", corpus, seed=0)}


def tiny_run_config(tiny_teacher, output_dir, **changes):
    """A DistillConfig on the tiny teacher: 4 x 32-token batches, val every 3 steps, checkpoints every 3."""
    from wavedistill.training.config import make_config

    base = dict(teacher=str(tiny_teacher["teacher"]), data=str(tiny_teacher["corpus"]), seq_len=32, batch_size=4,
                eval_every=3, save_every=3, n_generations=1, output_dir=str(output_dir))
    return make_config({**base, **changes})
