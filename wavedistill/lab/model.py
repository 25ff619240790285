"""``WaveTransformer``: a small pre-norm transformer whose token mixer is any registered mixer.

Everything but the mixer is identical across models: learned token embeddings and (``positions="learned"``)
absolute position embeddings (N(0, 1/sqrt(D))), ``n_layers`` blocks ``x + mixer(norm(x))`` then ``x + mlp(norm(x))``,
a final norm and an untied linear read-out. ``mixer="attention"`` is the softmax-attention
baseline (PyTorch SDPA) from the same registry. The decoder reads out every position
(:meth:`logits`); the encoder variant for classification pools the final states over real tokens
(:meth:`classify`). Norms act per token over the width, never over the sequence.

``phase_embedding=p`` replaces the embeddings of tokens 0..p-1 (the numbers of Z_p) by fixed waves,
token a -> [cos(2 pi k a / p), sin(2 pi k a / p)] for k = 1 .. (p-1)/2, mapped to the width by a
learned linear map: the Fourier basis that networks trained on modular arithmetic discover (Nanda
et al., 2023), given as an inductive bias. Other tokens keep learned embeddings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import WavedistillError
from ..mixers import build_mixer, mixer_kwargs as accepted_kwargs
from .config import resolve

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "rms":
        return RMSNorm(dim)
    if kind == "none":
        return nn.Identity()
    raise WavedistillError(f"unknown norm {kind!r}; known: rms, none")


class PhaseEmbedding(nn.Module):
    """Numbers 0..p-1 as fixed Fourier features, projected to the width; other tokens learned."""

    def __init__(self, vocab_size: int, d_model: int, p: int) -> None:
        super().__init__()
        if not 1 < p <= vocab_size:
            raise WavedistillError(f"phase_embedding p={p} must be in 2..vocab_size ({vocab_size})")
        self.p = p
        k = torch.arange(1, (p - 1) // 2 + 1, dtype=torch.float64)
        angle = 2 * math.pi * torch.arange(p, dtype=torch.float64)[:, None] * k[None] / p  # (p, K)
        self.register_buffer("waves", torch.cat([angle.cos(), angle.sin()], dim=1).float(), persistent=False)
        self.proj = nn.Linear(self.waves.shape[1], d_model, bias=False)
        self.other = nn.Embedding(vocab_size - p, d_model) if vocab_size > p else None
        # Same start scale as learned embeddings, N(0, 1/D) per entry: each wave row has squared norm K,
        # so proj entries get variance 1/(D K); only the inductive bias differs, not the init.
        nn.init.normal_(self.proj.weight, std=(d_model * len(k)) ** -0.5)
        if self.other is not None:
            nn.init.normal_(self.other.weight, std=d_model**-0.5)

    def table(self) -> Tensor:
        """The effective (vocab, D) embedding matrix."""
        rows = [self.proj(self.waves)]
        if self.other is not None:
            rows.append(self.other.weight)
        return torch.cat(rows, dim=0)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.table())


class Block(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, mixer: nn.Module, norm: str, activation: str) -> None:
        super().__init__()
        self.norm1, self.norm2 = make_norm(norm, d_model), make_norm(norm, d_model)
        self.mixer = mixer
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), ACTIVATIONS[activation](), nn.Linear(d_mlp, d_model))

    def mix(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        return x + self.mixer(self.norm1(x), padding_mask=padding_mask)

    def feed_forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.norm2(x))

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        return self.feed_forward(self.mix(x, padding_mask))


class WaveTransformer(nn.Module):
    """Args:
        vocab_size, max_len: token table and longest sequence (the position table's length when learned).
        mixer: registry name (``wavedistill mixers``); mixer_kwargs: extra constructor arguments.
        d_model, n_layers, n_heads, d_mlp: sizes (head_dim = d_model / n_heads).
        activation: ``relu`` or ``gelu``; norm: ``rms`` (pre-norm RMSNorm) or ``none``.
        positions: ``learned`` (an absolute position table) or ``none`` (the mixer orders tokens: RoPE in
            ``attention``, decays and lags in the recurrences), which decodes past the training length.
        phase_embedding: p > 0 embeds tokens 0..p-1 as fixed Fourier features (off by default).
        n_classes: > 0 adds a classification head over pooled states (the encoder variant).
        in_features: > 0 reads (B, T, in_features) real vectors through a linear map instead of token ids
            (regression tasks); the read-out then predicts ``vocab_size`` real numbers per position.
    """

    def __init__(self, vocab_size: int, max_len: int, *, mixer: str = "attention", mixer_kwargs: dict | None = None,
                 d_model: int = 128, n_layers: int = 1, n_heads: int = 4, d_mlp: int = 512, activation: str = "relu",
                 norm: str = "rms", positions: str = "learned", phase_embedding: int = 0, n_classes: int = 0,
                 in_features: int = 0) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise WavedistillError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        if d_model % n_heads:
            raise WavedistillError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        if phase_embedding and in_features:
            raise WavedistillError("phase_embedding embeds token ids; a model of real inputs (in_features) has none")
        if in_features:
            self.embed = nn.Linear(in_features, d_model)
        elif phase_embedding:
            self.embed = PhaseEmbedding(vocab_size, d_model, phase_embedding)
        else:
            self.embed = nn.Embedding(vocab_size, d_model)
        if positions not in ("learned", "none"):
            raise WavedistillError(f"unknown positions {positions!r}; known: learned, none")
        self.pos = nn.Embedding(max_len, d_model) if positions == "learned" else None
        tables = [*([self.pos.weight] if self.pos is not None else []),
                  *([self.embed.weight] if isinstance(self.embed, nn.Embedding) else [])]
        for table in tables:
            nn.init.normal_(table, std=d_model**-0.5)
        # Geometry every mixer gets if it takes it; the user's mixer_kwargs are passed as given (unknown = error).
        defaults = {"n_heads": n_heads, "head_dim": d_model // n_heads, "kernel_len": max_len}
        accepted = set(accepted_kwargs(mixer))
        kw = {**{k: v for k, v in defaults.items() if k in accepted}, **(mixer_kwargs or {})}
        self.blocks = nn.ModuleList(
            Block(d_model, d_mlp, build_mixer(mixer, d_model, **kw), norm, activation)
            for _ in range(n_layers))
        self.norm = make_norm(norm, d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.classifier = nn.Linear(d_model, n_classes) if n_classes else None
        self.max_len = max_len
        self.d_model = d_model

    def forward(self, ids: Tensor, padding_mask: Tensor | None = None, keep: Tensor | None = None,
                hidden: list | None = None) -> Tensor:
        """(B, T) ids (or (B, T, in_features) inputs) -> (B, T, D) final states, or (N, D) at the N positions
        where ``keep`` (B, T) is True; ``hidden``, a list, receives each block's output (B, T, D), before the
        final norm (for feature distillation; with ``keep`` the last one holds the kept positions only).

        Nothing after the last mixer moves information between positions, so with ``keep`` the last
        MLP runs only where a state is read out (one position of three in modular arithmetic).
        """
        T = ids.shape[1]
        if T > self.max_len:
            raise WavedistillError(f"sequence of {T} tokens is longer than the model's max_len {self.max_len}")
        x = self.embed(ids)
        if self.pos is not None and padding_mask is None:
            x = x + self.pos.weight[:T]
        elif self.pos is not None:  # positions count real tokens only, so left padding shifts nothing
            x = x + self.pos((padding_mask.long().cumsum(1) - 1).clamp_min(0))
        for block in self.blocks[:-1]:
            x = block(x, padding_mask)
            if hidden is not None:
                hidden.append(x)
        x = self.blocks[-1].mix(x, padding_mask)
        if keep is not None:
            x = x[keep]
        x = self.blocks[-1].feed_forward(x)
        if hidden is not None:
            hidden.append(x)
        return self.norm(x)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.head(hidden)

    def classify(self, hidden: Tensor, padding_mask: Tensor | None) -> Tensor:
        """(B, n_classes) from the mean of the final states over real tokens."""
        if self.classifier is None:
            raise WavedistillError("this model has no classification head (n_classes = 0)")
        if padding_mask is None:
            return self.classifier(hidden.mean(1))
        w = padding_mask.to(hidden.dtype)[..., None]
        return self.classifier((hidden * w).sum(1) / w.sum(1).clamp_min(1))

    def embedding_table(self) -> Tensor:
        return self.embed.table() if isinstance(self.embed, PhaseEmbedding) else self.embed.weight


MATCH_TOLERANCE = 0.05  # relative gap a parameter-matched model may keep to its reference


def param_counts(model: WaveTransformer) -> dict[str, int]:
    """Parameters in all, and besides the embeddings (token and position tables) and the untied read-out."""
    total = sum(p.numel() for p in model.parameters())
    tables = [model.embed, model.pos, model.head]
    embedding = sum(p.numel() for m in tables if m is not None for p in m.parameters())
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def _model(r, task, mixer: str, mixer_kwargs: dict, d_mlp: int) -> WaveTransformer:
    regress = task.kind == "regress"
    return WaveTransformer(task.vocab_size, task.max_len or task.seq_len, mixer=mixer, mixer_kwargs=mixer_kwargs,
                           d_model=r.d_model, n_layers=r.n_layers, n_heads=r.n_heads, d_mlp=d_mlp,
                           activation=r.activation, norm=r.norm, positions=r.positions,
                           phase_embedding=task.p if r.phase_embedding else 0, n_classes=task.n_classes,
                           in_features=task.in_features if regress else 0)


def matched_d_mlp(r, task) -> int:
    """The MLP width that gives ``r.mixer``'s model the non-embedding parameters of ``r.match_params``'s model at
    ``r.d_mlp`` (within :data:`MATCH_TOLERANCE`), everything else equal; a one-line error where none does."""
    with torch.device("meta"):  # shapes only: nothing is allocated
        target = param_counts(_model(r, task, r.match_params, {}, r.d_mlp))["non_embedding"]
        base = param_counts(_model(r, task, r.mixer, r.mixer_kwargs, 1))["non_embedding"]
        per_unit = param_counts(_model(r, task, r.mixer, r.mixer_kwargs, 2))["non_embedding"] - base
        d_mlp = max(1, round(1 + (target - base) / per_unit))
        got = param_counts(_model(r, task, r.mixer, r.mixer_kwargs, d_mlp))["non_embedding"]
    if abs(got - target) > MATCH_TOLERANCE * target:
        raise WavedistillError(f"cannot match {r.mixer!r} to {r.match_params!r}'s {target:,} parameters (besides "
                               f"embeddings) by the MLP width: at d_mlp {d_mlp} it has {got:,}, over "
                               f"{MATCH_TOLERANCE:.0%} apart; raise --d-mlp, or drop --match-params")
    return d_mlp


def build_model(cfg, task) -> WaveTransformer:
    """The lab model of a ``LabConfig`` for ``task``; with ``match_params`` its MLP width is :func:`matched_d_mlp`."""
    r = resolve(cfg)
    return _model(r, task, r.mixer, r.mixer_kwargs, matched_d_mlp(r, task) if r.match_params else r.d_mlp)
