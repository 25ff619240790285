"""The mixer contract shared by every registered token mixer."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..errors import MixerStateError, MixerValueError

#: A recurrent decoding state: named tensors whose dim 0 is the batch, so a cache can reorder,
#: select and repeat it without knowing the mixer.
State = dict[str, Tensor]


def default_head_dim(d_model: int) -> int:
    return 64 if d_model % 64 == 0 else 8


class WaveMixer(nn.Module):
    """Causal token mixer: (B, T, D) -> (B, T, D); in causal mode y[:, t] depends only on x[:, : t + 1].

    Subclasses implement :meth:`mix` (the fast path) and :meth:`mix_naive` (a slow, obviously
    correct reference that tests compare against). :meth:`forward` zeroes padded positions first
    (with ``where``, so a NaN or a non-zero pad embedding cannot spread through an FFT).

    Mixers that work on "values" own ``v_proj`` (D -> H*hd) and ``o_proj`` (H*hd -> D) shaped like
    a teacher's attention, so :meth:`init_from_attention` can copy them (KV heads repeated for GQA).

    Decoding contract. A mixer with a recurrent form sets ``state_form`` (what its state holds and
    what a token costs) and implements :meth:`init_state` and :meth:`_step`; :meth:`step` then maps
    one token ``x_t`` (B, D) and a state to ``y_t`` (B, D) and the next state, exactly as
    :meth:`forward` would at that position. :meth:`prefill` runs a whole prompt and returns the
    state after it; the default steps token by token, mixers override it with their parallel form.
    A mixer without a recurrent form leaves ``state_form = None`` and is decoded by re-running
    :meth:`forward` over the input history (the cache keeps that history instead).
    """

    name: ClassVar[str]
    #: What the decoding state holds and its cost per token, e.g. "EMA states + 32-tap ring, O(1)";
    #: None = no recurrent form.
    state_form: ClassVar[str | None] = None

    def __init__(self, d_model: int, *, n_heads: int | None = None, n_kv_heads: int | None = None,
                 head_dim: int | None = None, causal: bool = True, bias: bool = False) -> None:
        super().__init__()
        if d_model <= 0:
            raise MixerValueError(f"d_model must be positive, got {d_model}")
        for arg, value in (("n_heads", n_heads), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim)):
            if value is not None and value < 1:
                raise MixerValueError(f"{arg} must be >= 1, got {value}")
        self.d_model = d_model
        self.head_dim = head_dim or default_head_dim(d_model)
        self.n_heads = n_heads or max(1, d_model // self.head_dim)
        self.n_kv_heads = n_kv_heads or self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise MixerValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        self.inner_dim = self.n_heads * self.head_dim
        self.causal = causal
        self.bias = bias

    def register_fixed_buffer(self, name: str, tensor: Tensor, persistent: bool = False) -> None:
        """A buffer derived from constants (decay rates, frequencies, scales) that casts never round.

        ``model.to(torch.bfloat16)`` would round it like a weight: a 741-token EMA's decay
        1 - 1/741 becomes exactly 1.0 in bf16 and its filter vanishes. Fixed buffers follow device
        moves and up-casts (float64 tests) but never go below float32 (see :meth:`_apply`).
        """
        self.register_buffer(name, tensor, persistent=persistent)
        self._fixed_buffers = getattr(self, "_fixed_buffers", set()) | {name}

    def causal_only(self, form: str) -> None:
        """Refuse ``causal=False`` for a mixer whose only form is ``form`` (e.g. "a causal recurrence")."""
        if not self.causal:
            raise MixerValueError(f"{self.name} is {form}; it has no bidirectional form")

    def keep_float32(self, *names: str) -> None:
        """Parameters (dotted names, e.g. ``"dt_proj.bias"``) that a cast to bf16 / fp16 leaves in float32.

        The selection of a selective SSM (its step Delta, decay and frequencies) sums over the sequence:
        an omega of 15 pi rounded to bf16 is off by 0.1 rad per unit of warped time, and a rounded Delta
        bias shifts every phase after it. Like Mamba's A_log / dt_bias (and ``_keep_in_fp32_modules``
        in transformers) they stay float32 while the projections go to the model's dtype.
        """
        for name in names:
            self.get_parameter(name)  # raises on an unknown name
        self._float32_params = getattr(self, "_float32_params", set()) | set(names)

    def _apply(self, fn, recurse=True):
        fixed = {n: self._buffers[n] for n in getattr(self, "_fixed_buffers", ()) if self._buffers.get(n) is not None}
        kept = {n: self.get_parameter(n).data for n in getattr(self, "_float32_params", ())}
        super()._apply(fn, recurse)
        for n, old in fixed.items():
            moved = self._buffers[n]
            # Re-derive from the unrounded original: same device as the cast result, dtype >= float32.
            self._buffers[n] = old.to(device=moved.device, dtype=torch.promote_types(moved.dtype, torch.float32))
        for n, old in kept.items():
            p = self.get_parameter(n)
            p.data = old.to(device=p.device, dtype=torch.promote_types(p.dtype, torch.float32))
            if p.grad is not None:
                p.grad = p.grad.to(p.dtype)
        return self

    def forward(self, x: Tensor, padding_mask: Tensor | None = None,
                position_embeddings: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x: (B, T, D); padding_mask: (B, T) bool, True = real token; position_embeddings: (cos, sin)."""
        if padding_mask is not None:
            x = torch.where(padding_mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        return self.mix(x, padding_mask=padding_mask, position_embeddings=position_embeddings)

    def forward_naive(self, x: Tensor, padding_mask: Tensor | None = None,
                      position_embeddings: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if padding_mask is not None:
            x = torch.where(padding_mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        return self.mix_naive(x, padding_mask=padding_mask, position_embeddings=position_embeddings)

    def mix(self, x: Tensor, padding_mask: Tensor | None, position_embeddings) -> Tensor:
        raise NotImplementedError

    def mix_naive(self, x: Tensor, padding_mask: Tensor | None, position_embeddings) -> Tensor:
        raise NotImplementedError

    #: Whether the rows of :meth:`mixing_matrix` are distributions over keys (non-negative, summing to 1),
    #: so that a KL to attention rows is defined.
    mixing_rows_are_distributions: ClassVar[bool] = False

    def mixing_matrix(self, x: Tensor, padding_mask: Tensor | None = None,
                      position_embeddings: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The causal matrix this mixer applies to its values on ``x`` (B, T, D): (B, G, T, T), zero above the diagonal.

        G groups of value channels share one matrix: G = n_heads (a matrix per head) or inner_dim (per
        channel). Row t weighs value s <= t; the mixer's output is ``o_proj`` of that weighted sum, plus
        a per-channel skip where the mixer has one. MOHAWK's stage 1 matches it to the teacher's attention
        maps (:mod:`wavedistill.kd.attention_maps`). Mixers without a matrix form raise.
        """
        raise MixerValueError(f"mixer {self.name!r} has no materialised mixing matrix; mixers that have one: "
                              f"{', '.join(mixers_with_matrix())}")

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype its weights were cast to (parameters kept float32 by :meth:`keep_float32` aside): the
        dtype it takes inputs in."""
        kept = {id(self.get_parameter(n)) for n in getattr(self, "_float32_params", ())}
        ref = next((p for p in self.parameters() if id(p) not in kept), None)
        return ref.dtype if ref is not None else torch.float32

    @property
    def has_state(self) -> bool:
        """Whether this instance decodes through :meth:`step` (settings may rule it out, e.g. ``causal=False``)."""
        return self.state_form is not None and self.causal

    def _require_state_form(self) -> None:
        if not self.has_state:
            raise MixerStateError(f"mixer {self.name!r} has no recurrent state form (see `wavedistill mixers`); decode "
                                  "it through its forward over the input history, which the wave cache does by itself")

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        """The state before any token, for ``batch`` sequences."""
        self._require_state_form()
        ref = next(self.parameters(), next(self.buffers(), None))
        device = device if device is not None else (ref.device if ref is not None else None)
        dtype = dtype if dtype is not None else (ref.dtype if ref is not None else torch.float32)
        state = self._init_state(batch, device, torch.promote_types(dtype, torch.float32))
        state["pos"] = torch.zeros(batch, dtype=torch.long, device=device)  # real tokens seen: the next position
        return state

    def _init_state(self, batch: int, device, dtype) -> State:
        raise NotImplementedError

    def step(self, x_t: Tensor, state: State, padding_mask: Tensor | None = None,
             position_embeddings: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, State]:
        """One token: x_t (B, D) -> y_t (B, D) and the next state.

        padding_mask: (B,) bool, True = real token (a pad is a zero input, as in :meth:`forward`);
        position_embeddings: (cos, sin), each (B or 1, head_dim), the rotary tables at this position.
        """
        self._require_state_form()
        B = x_t.shape[0]
        bad = sorted({k: v.shape[0] for k, v in state.items() if v.shape[0] != B}.items())
        if bad:
            raise MixerStateError(f"{self.name} state was built for batch {bad[0][1]} but the token batch is {B}; "
                                  "build the state with init_state(batch) or prefill() for this batch")
        if padding_mask is not None:
            x_t = torch.where(padding_mask[:, None], x_t, torch.zeros((), dtype=x_t.dtype, device=x_t.device))
        y, new = self._step(x_t, state, padding_mask, position_embeddings)
        new["pos"] = state["pos"] + (1 if padding_mask is None else padding_mask.long())
        return y, new

    def _step(self, x_t: Tensor, state: State, padding_mask: Tensor | None,
              position_embeddings) -> tuple[Tensor, State]:
        raise NotImplementedError

    def _prefill(self, x: Tensor, padding_mask: Tensor | None, position_embeddings) -> tuple[Tensor, State]:
        raise NotImplementedError

    def prefill(self, x: Tensor, padding_mask: Tensor | None = None,
                position_embeddings: tuple[Tensor, Tensor] | None = None,
                state: State | None = None) -> tuple[Tensor, State]:
        """Run x (B, T, D) from ``state`` (default: the initial one): (y (B, T, D), the state after x).

        From the initial state, mixers that implement ``_prefill`` (their parallel form plus a
        closed-form final state) use it; otherwise, and from a given state, this steps token by
        token. Either way it equals :meth:`forward` on the same tokens.
        """
        if state is None and type(self)._prefill is not WaveMixer._prefill:
            self._require_state_form()
            if padding_mask is not None:
                x = torch.where(padding_mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
            y, new = self._prefill(x, padding_mask, position_embeddings)
            new["pos"] = (torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
                          if padding_mask is None else padding_mask.long().sum(1))
            return y, new
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        ys = []
        for t in range(x.shape[1]):
            pe_t = None if position_embeddings is None else tuple(p[:, t] for p in position_embeddings)
            y, state = self.step(x[:, t], state, None if padding_mask is None else padding_mask[:, t], pe_t)
            ys.append(y)
        return torch.stack(ys, dim=1), state

    @staticmethod
    def zero_pads(u: Tensor, padding_mask: Tensor | None) -> Tensor:
        """Zero (B, T, C) features at padded positions; needed after a biased projection of a zeroed input."""
        if padding_mask is None:
            return u
        return torch.where(padding_mask[..., None], u, torch.zeros((), dtype=u.dtype, device=u.device))

    def add_value_projections(self) -> None:
        self.v_proj = nn.Linear(self.d_model, self.inner_dim, bias=self.bias)
        self.o_proj = nn.Linear(self.inner_dim, self.d_model, bias=False)

    @torch.no_grad()
    def init_from_attention(self, attn: nn.Module) -> None:
        """Copy the teacher's projections that this mixer shares (v/o by default)."""
        if hasattr(self, "v_proj"):
            self.v_proj.weight.copy_(repeat_kv_rows(attn.v_proj.weight, self.n_heads, self.n_kv_heads))
            if self.v_proj.bias is not None and attn.v_proj.bias is not None:
                self.v_proj.bias.copy_(repeat_kv_rows(attn.v_proj.bias, self.n_heads, self.n_kv_heads))
        if hasattr(self, "o_proj"):
            self.o_proj.weight.copy_(attn.o_proj.weight)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, heads={self.n_heads}x{self.head_dim}, causal={self.causal}"


def repeat_kv_rows(w: Tensor, n_heads: int, n_kv_heads: int) -> Tensor:
    """(n_kv*hd, ...) -> (n_heads*hd, ...) with KV head j serving query heads j*r .. j*r+r-1 (HF ``repeat_kv``)."""
    rep = n_heads // n_kv_heads
    head_dim = w.shape[0] // n_kv_heads
    return w.reshape(n_kv_heads, head_dim, *w.shape[1:]).repeat_interleave(rep, dim=0).reshape(
        n_heads * head_dim, *w.shape[1:])


def mixers_with_matrix() -> list[str]:
    """Registered mixers that implement :meth:`WaveMixer.mixing_matrix`."""
    from .registry import MIXERS  # here, not at the top: the registry imports this module

    return [n for n, cls in MIXERS.items() if cls.mixing_matrix is not WaveMixer.mixing_matrix]
