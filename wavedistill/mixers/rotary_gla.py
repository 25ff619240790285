"""Rotary gated linear attention: the teacher's RoPE-rotated query-key lookup, softmax-free, with a decaying state.

Softmax attention weighs value s for query t by ``exp(q~_t . k~_s / sqrt(d))``, where q~, k~ are the
teacher's queries and keys rotated by RoPE (each pair of dimensions turns at its own frequency, so
the score depends on content *and* on t - s: a wave over the lag). This mixer keeps exactly those
rotated q~, k~ (teacher init of q/k/v/o, q/k norms, KV heads repeated for GQA) and replaces the
exponential by a learned feature map and a per-head, data-dependent decay:

    S_t = a_t S_(t-1) + phi(k~_t) v_t^T,    z_t = a_t z_(t-1) + phi(k~_t),
    y_t = phi(q~_t)^T S_t / phi(q~_t)^T z_t,        log a_t = logsigmoid(b + W x_t)

so token t weighs token s by ``(prod_(s<r<=t) a_r) phi(q~_t) . phi(k~_s)``, normalised over s <= t
like attention: a content-selective lookup (LoLCATs / Hedgehog feature map, GLA's gated decay)
with an O(1) state (S, z) per head. phi is Hedgehog's ``[softmax(u P), softmax(-u P)]`` over the
*feature* axis (never over tokens), P learned per head and started at ``I / d^(1/4)`` so that
``phi(q) . phi(k)`` starts as a function of ``q . k / sqrt(d)``. The rotation acts on q and k before
phi, as in LoLCATs; the decay starts at time constants log-spaced over ``[min_tau, max_tau]``
tokens across heads, with W = 0.

``window = W > 0`` makes it a hybrid (LoLCATs' sliding window + linear attention): the last W keys
get the teacher's exact ``exp(q~.k~ / sqrt(d))`` weights (no decay), the keys before them the
decayed feature-map weights above, and one normaliser covers both. Switching the linear branch off
(``use_linear = False``) leaves exactly the teacher's W-token window; switching the band off
(``use_band = False``) leaves the softmax-free mixer over every key. Decoding keeps the last W keys
and values beside the state.

``sinks = S > 0`` (with a window) adds a bounded exact cache: the first S real tokens of the sequence
keep exact ``exp(q~.k~ / sqrt(d))`` weights for every later query (StreamingLLM's attention sinks;
softmax heads park much of their mass on the first tokens, which a decayed state forgets), and stay
out of the linear state. A layer then attends exactly to at most W + S tokens, whatever the length.
``use_sinks = False`` returns them to the band / linear branch like any other token.

``feature_map="taylor"`` replaces the learned map by Based's second-order Taylor features, fixed and exact to
second order: ``phi(q) . phi(k) = 1 + s + s^2 / 2`` with ``s = q~.k~ / sqrt(d)`` (always > 0), 1 + d + d^2
features per head, so only for head_dim <= 16.

Training runs the chunked form (:mod:`.scan`), decoding the recurrence. ``feature_map="softmax"``
is a diagnostic, not a softmax-free mixer: the same decay with the exact ``exp(q~.k~ / sqrt(d))``
in place of phi, i.e. softmax attention over all keys with the log-decay added to the scores.
Comparing the two separates the feature map's error from the decay's. It has no recurrent form.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import MixerValueError
from .base import State
from .functional import window_exp_sums
from .qkv import QKVMixer, add_decay_gate, decay_logits
from .registry import register_mixer
from .scan import chunk_for, decayed_linear_attention, decayed_linear_attention_step

FEATURE_MAPS = ("hedgehog", "taylor", "softmax")
TAYLOR_MAX_HEAD_DIM = 16  # the Taylor map has 1 + d + d^2 features
EPS = 1e-6  # floor of the normaliser; only a padded query's (all-zero) row ever reaches it


@register_mixer("rotary_gla")
class RotaryGLA(QKVMixer):
    """Args:
        d_model: model width D.
        feature_map: "hedgehog" (learned, softmax-free, recurrent), "taylor" (fixed 2nd-order Taylor features of
            exp, recurrent) or "softmax" (the exact-exp diagnostic).
        feature_dim: columns of each head's feature projection P (default head_dim); phi has twice as many
            (hedgehog only).
        window: 0 (default) = softmax-free; W > 0 = exact softmax weights on the last W keys (a hybrid).
        sinks: 0 (default); S > 0 (needs a window) = exact weights on the first S real tokens as well.
        min_tau, max_tau: initial decay time constants in tokens, log-spaced across heads (default 8, 512).
        chunk: chunk length of the parallel form (default: by width, :func:`.scan.chunk_for` of the mean of
            phi's width and head_dim + 1: 64 at head_dim 64, 16 at head_dim 8).
        qk_norm: RMS-normalise q and k per head (Qwen3 / Gemma3 style).
        rope: rotate q and k (default True); rope_theta: rotary base used when no teacher tables are passed.
        n_heads, n_kv_heads, head_dim, bias: attention geometry.
    """

    state_form = ("per head an (n_features x head_dim) matrix and its normaliser (+ the last `window` and first "
                  "`sinks` keys: window + sinks exact tokens); O(1)")

    def __init__(self, d_model: int, *, feature_map: str = "hedgehog", feature_dim: int | None = None,
                 window: int = 0, sinks: int = 0, min_tau: float = 8.0, max_tau: float = 512.0,
                 chunk: int | None = None, **geometry) -> None:
        super().__init__(d_model, **geometry)
        self.causal_only("a causal recurrence")
        if feature_map not in FEATURE_MAPS:
            raise MixerValueError(f"rotary_gla feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
        if (chunk is not None and chunk < 1) or (feature_dim is not None and feature_dim < 1):
            raise MixerValueError(f"rotary_gla chunk and feature_dim must be >= 1, got {chunk}, {feature_dim}")
        if window < 0 or (window and feature_map == "softmax"):
            raise MixerValueError(f"rotary_gla window must be >= 0 (and not with the softmax diagnostic), got {window}")
        if sinks < 0 or (sinks and not window):
            raise MixerValueError(f"rotary_gla sinks must be >= 0 and need a window >= 1, got sinks={sinks}, "
                                  f"window={window}")
        self.feature_map, self.window, self.sinks = feature_map, window, sinks
        # branch switches for ablations of a hybrid (window > 0)
        self.use_band = self.use_linear = self.use_sinks = True
        H, hd = self.n_heads, self.head_dim
        if feature_map == "taylor" and (feature_dim is not None or hd > TAYLOR_MAX_HEAD_DIM):
            raise MixerValueError(f"rotary_gla's taylor map has 1 + d + d^2 fixed features: no feature_dim, and "
                                  f"head_dim <= {TAYLOR_MAX_HEAD_DIM} (got feature_dim={feature_dim}, head_dim={hd}); "
                                  "use the hedgehog map for wider heads")
        f = feature_dim or hd
        self.n_features = 1 + hd + hd * hd if feature_map == "taylor" else 2 * f  # phi's width
        self.chunk = chunk or chunk_for((self.n_features + hd + 1) // 2)
        self.feature_proj = None  # the taylor map and the exact-exp diagnostic have no learned map
        if feature_map == "hedgehog":
            # P starts as the identity (extra columns random) scaled by d^(-1/4), split between q and k as
            # the sqrt(d) of attention is.
            P = torch.randn(H, hd, f) / math.sqrt(hd)
            P[:, :, : min(f, hd)] = torch.eye(hd, min(f, hd))
            self.feature_proj = nn.Parameter(P * hd ** -0.25)  # (H, hd, f)
        add_decay_gate(self, min_tau, max_tau)

    @property
    def has_state(self) -> bool:
        return self.feature_map != "softmax"

    def branches(self) -> tuple[int, bool, int]:
        """(band width in use, whether the linear branch is on, sinks in use)."""
        if not (self.use_band or self.use_linear):
            raise MixerValueError("rotary_gla: switching off both the band and the linear branch leaves no mixer")
        return (self.window if self.use_band else 0), (self.use_linear or not self.window), \
            (self.sinks if self.use_sinks else 0)

    def sink_mask(self, padding_mask, B: int, T: int, sinks: int, device) -> Tensor:
        """(B, T) bool: the first ``sinks`` real tokens of each row."""
        real = torch.ones(B, T, dtype=torch.bool, device=device) if padding_mask is None else padding_mask
        return real & (real.long().cumsum(1) <= sinks)

    def _sinks_in_order(self, is_sink: Tensor, k: Tensor, v: Tensor, dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The first min(sinks, T) positions of each row's sinks in arrival order (B, n), whether each is a sink at
        all (a row with fewer real tokens has fewer), and their keys / values (B, H, n, hd) in ``dtype``."""
        B, H, T, hd = k.shape
        idx = torch.argsort((~is_sink).to(torch.int8), dim=1, stable=True)[:, : min(self.sinks, T)]
        ks, vs = (t.gather(2, idx[:, None, :, None].expand(B, H, idx.shape[1], hd)).to(dtype) for t in (k, v))
        return idx, is_sink.gather(1, idx), ks, vs

    def _add_sinks(self, o: Tensor, c: Tensor, q: Tensor, k: Tensor, v: Tensor, is_sink: Tensor,
                   W: int) -> tuple[Tensor, Tensor]:
        """o (B, H, T, hd + 1) on the scale exp(-c) plus the sinks each query sees (lag >= W: the band holds the
        others), and the new scale c (B, H, T)."""
        T = q.shape[2]
        idx, ok, ks, vs = self._sinks_in_order(is_sink, k, v, o.dtype)
        lag = torch.arange(T, device=q.device)[None, :, None] - idx[:, None, :]  # (B, T, n)
        scores = torch.einsum("bhtd,bhnd->bhtn", q.to(o.dtype), ks) * self.scaling.item()
        scores = scores.masked_fill(~(ok[:, None, :] & (lag >= W))[:, None], float("-inf"))
        c_new = torch.maximum(c, scores.amax(-1))
        p = (scores - c_new[..., None]).exp()
        o = o * (c - c_new).exp()[..., None] + torch.cat([p @ vs, p.sum(-1, keepdim=True)], dim=-1)
        return o, c_new

    def features(self, u: Tensor) -> Tensor:
        """phi: (B, H, T, hd) -> (B, H, T, n_features), positive. Hedgehog: softmax over the feature axis, each half
        sums to 1; taylor: [1, x, vec(x x^T) / sqrt 2] with x = u / d^(1/4)."""
        if self.feature_map == "taylor":
            x = u * self.head_dim ** -0.25
            outer = (x[..., :, None] * x[..., None, :]).flatten(-2) * 2 ** -0.5  # (B, H, T, hd^2)
            return torch.cat([torch.ones_like(x[..., :1]), x, outer], dim=-1)
        z = torch.einsum("bhtd,hdf->bhtf", u, self.feature_proj.to(u.dtype))
        return torch.cat([z.softmax(-1), (-z).softmax(-1)], dim=-1)

    def log_decay(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, H, T) log a_t <= 0."""
        return F.logsigmoid(decay_logits(self.decay_proj, x)).transpose(1, 2)

    def _inputs(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, padding_mask):
        """Features, values with a ones column (its output is the normaliser) and log decays, in >= float32."""
        ct = torch.promote_types(x.dtype, torch.float32)
        fq, fk, v = self.features(q.to(ct)), self.features(k.to(ct)), v.to(ct)
        if padding_mask is not None:
            real = padding_mask[:, None, :, None]  # (B, 1, T, 1): pads add nothing to S or z
            fk = torch.where(real, fk, torch.zeros((), dtype=ct, device=x.device))
            v = torch.where(real, v, torch.zeros((), dtype=ct, device=x.device))
        return fq, fk, torch.cat([v, torch.ones_like(v[..., :1])], dim=-1), self.log_decay(x)

    def _read_out(self, o: Tensor, dtype) -> Tensor:
        """o (B, H, T, hd + 1): weighted values and the normaliser -> (B, T, D)."""
        B, H, T, _ = o.shape
        y = o[..., :-1] / o[..., -1:].clamp_min(EPS)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * self.head_dim).to(dtype))

    def _lagged(self, fq: Tensor, fk: Tensor, v1: Tensor, log_a: Tensor, W: int) -> tuple[Tensor, Tensor]:
        """The linear branch over keys s <= t - W: (B, H, T, hd + 1) and its state after the last token.

        Query t against keys up to t - W is the plain recurrence run with queries shifted by W, times
        the decay over the W steps in between, ``prod_(t-W<r<=t) a_r``.
        """
        B, H, T, F2 = fq.shape
        S = fq.new_zeros(B, H, F2, v1.shape[-1])
        if T <= W:
            return fq.new_zeros(v1.shape), S
        o, S = decayed_linear_attention(fq[:, :, W:], fk[:, :, : T - W], v1[:, :, : T - W], log_a[:, :, : T - W],
                                        self.chunk)
        g = log_a.cumsum(-1)  # (B, H, T)
        o = o * (g[..., W:] - g[..., : T - W]).exp()[..., None]
        return F.pad(o, (0, 0, W, 0)), S * (g[..., -1] - g[..., T - W - 1]).exp()[..., None, None]

    def _mix(self, x: Tensor, padding_mask, position_embeddings, naive: bool, with_state: bool = False):
        q, k, v = self.qkv(x, position_embeddings, padding_mask)  # (B, H, T, hd), RoPE applied
        if self.feature_map == "softmax":
            return self._exact(x, q, k, v, padding_mask, naive)
        fq, fk, v1, log_a = self._inputs(x, q, k, v, padding_mask)
        W, linear, sinks = self.branches()
        if naive:
            return self._read_out(self._naive(q, k, v1, fq, fk, log_a, padding_mask, W, linear, sinks), x.dtype)
        B, H, T, _ = q.shape
        is_sink = self.sink_mask(padding_mask, B, T, sinks, x.device)
        if sinks:
            fk = fk.masked_fill(is_sink[:, None, :, None], 0.0)  # sinks stay out of the linear state
        if W == 0 and not sinks:
            o, S = decayed_linear_attention(fq, fk, v1, log_a, self.chunk)
        else:
            if W:
                num, den, c = window_exp_sums(q.to(fq.dtype), k.to(fq.dtype), v1[..., :-1], W, padding_mask,
                                              self.scaling.item())
                o = torch.cat([num, den[..., None]], dim=-1)
            else:  # band off: the linear branch on its own scale, c = 0
                o, c = torch.zeros_like(v1), fq.new_zeros(B, H, T)
            if sinks:
                o, c = self._add_sinks(o, c, q, k, v, is_sink, W)
            if linear:
                o = o + (-c).exp()[..., None] * self._lagged(fq, fk, v1, log_a, W)[0]  # on the band's scale
        y = self._read_out(o, x.dtype)
        if not with_state:
            return y
        if not self.window:
            return y, {"S": S}
        # A hybrid's state has the same layout whichever branches are on: the last `window` keys and the
        # linear state of everything before them.
        g = log_a.cumsum(-1)
        state = {"S": self._lagged(fq, fk, v1, log_a, self.window)[1], **self.kv_final(k, v, padding_mask,
                                                                                        self.window, fq.dtype),
                 "g": F.pad(g[..., -1:] - g, (self.window, 0))[..., -self.window:]}  # decay since each band token
        if self.sinks:
            state.update(self._sink_state(k, v, is_sink, fq.dtype))
        return y, state

    def _sink_state(self, k: Tensor, v: Tensor, is_sink: Tensor, dtype) -> State:
        """After a prefill: the sinks' keys / values (B, H, sinks, hd) in arrival order, how many have left the
        band (those the sink branch sees), and which band slots hold a sink."""
        T = k.shape[2]
        idx, ok, ks, vs = self._sinks_in_order(is_sink, k, v, dtype)
        empty = (0, 0, 0, self.sinks - idx.shape[1])  # slots a sequence shorter than `sinks` has not filled
        ks, vs = (F.pad(torch.where(ok[:, None, :, None], t, 0.0), empty) for t in (ks, vs))
        band_sink = F.pad(is_sink, (self.window, 0), value=False)[:, -self.window:]
        return {"sink_k": ks, "sink_v": vs, "band_sink": band_sink,
                "sinks_out": (is_sink[:, : max(T - self.window, 0)]).long().sum(1)}

    def _naive(self, q, k, v1, fq, fk, log_a, padding_mask, W: int, linear: bool, sinks: int) -> Tensor:
        """Dense reference: the weights of :meth:`_weights` applied to the values and the ones column."""
        w = self._weights(q, k, fq, fk, log_a, padding_mask, W, linear, sinks)
        return torch.einsum("bhts,bhsd->bhtd", w, v1)

    def _weights(self, q, k, fq, fk, log_a, padding_mask, W: int, linear: bool, sinks: int) -> Tensor:
        """Unnormalised (B, H, T, T) weights: exp(score - c) on the band t - W < s <= t and on the sinks before it,
        exp(-c) * decayed phi.phi on the other keys before the band (with W = 0 and no sinks, phi.phi alone)."""
        B, T = q.shape[0], q.shape[2]
        g = log_a.cumsum(-1)
        lag = torch.arange(T)[:, None] - torch.arange(T)[None, :]  # t - s
        is_sink = self.sink_mask(padding_mask, B, T, sinks, q.device)  # (B, T)
        lin_w = (g[..., :, None] - g[..., None, :]).masked_fill(lag < W, float("-inf")).exp()
        lin_w = lin_w * torch.einsum("bhtf,bhsf->bhts", fq, fk) * ~is_sink[:, None, None, :]
        if W == 0 and not sinks:
            return lin_w
        real = torch.ones(B, T, dtype=torch.bool) if padding_mask is None else padding_mask
        band = ((lag >= 0) & (lag < W))[None] & real[:, None, :] | (torch.eye(T, dtype=torch.bool) & (W > 0))
        exact = band | (is_sink[:, None, :] & (lag >= W)[None])  # (B, T, T)
        scores = torch.einsum("bhtd,bhsd->bhts", q.to(fq.dtype), k.to(fq.dtype)) * self.scaling.item()
        scores = scores.masked_fill(~exact[:, None], float("-inf"))
        c = scores.amax(-1, keepdim=True)
        if W == 0:  # band off: the linear branch's own scale unless a sink's score is larger
            c = c.clamp_min(0.0)
        return (scores - c).exp() + ((-c).exp() * lin_w if linear else 0)

    def _exact_bias(self, x: Tensor, padding_mask) -> Tensor:
        """(B, H, T, T): log(prod_(s<r<=t) a_r) over keys s <= t, -inf elsewhere (pad keys too; a pad query
        keeps its diagonal)."""
        T = x.shape[1]
        g = self.log_decay(x).cumsum(-1)  # (B, H, T)
        keep = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, None]
        if padding_mask is not None:
            keep = (keep & padding_mask[:, None, None, :]) | torch.eye(T, dtype=torch.bool, device=x.device)
        return (g[..., :, None] - g[..., None, :]).masked_fill(~keep, float("-inf"))

    def _exact(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, padding_mask, naive: bool) -> Tensor:
        """Softmax over keys s <= t of q~.k~ * scale + log(prod_(s<r<=t) a_r): the decay with exp in place of phi."""
        T = x.shape[1]
        bias = self._exact_bias(x, padding_mask)  # (B, H, T, T)
        ct = bias.dtype
        q, k, v = q.to(ct), k.to(ct), v.to(ct)
        if naive:
            scores = torch.einsum("bhtd,bhsd->bhts", q, k) * self.scaling.to(ct) + bias
            y = torch.einsum("bhts,bhsd->bhtd", scores.softmax(-1), v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scaling.item())
        B, H = y.shape[:2]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * self.head_dim).to(x.dtype))

    def mix(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        return self._mix(x, padding_mask, position_embeddings, naive=False)

    mixing_rows_are_distributions = True

    def mixing_matrix(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        """Per head (B, H, T, T): the weights each query gives the values, normalised as the output is."""
        if padding_mask is not None:
            x = torch.where(padding_mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        q, k, v = self.qkv(x, position_embeddings, padding_mask)
        if self.feature_map == "softmax":
            ct = torch.promote_types(x.dtype, torch.float32)
            scores = torch.einsum("bhtd,bhsd->bhts", q.to(ct), k.to(ct)) * self.scaling.item()
            return (scores + self._exact_bias(x, padding_mask)).softmax(-1)
        fq, fk, _, log_a = self._inputs(x, q, k, v, padding_mask)
        w = self._weights(q, k, fq, fk, log_a, padding_mask, *self.branches())
        return w / w.sum(-1, keepdim=True).clamp_min(EPS)

    def mix_naive(self, x: Tensor, padding_mask=None, position_embeddings=None) -> Tensor:
        return self._mix(x, padding_mask, position_embeddings, naive=True)

    def _init_state(self, batch: int, device, dtype) -> State:
        F2 = self.n_features
        state = {"S": torch.zeros(batch, self.n_heads, F2, self.head_dim + 1, device=device, dtype=dtype)}
        if self.window:
            state.update(self.kv_state(batch, device, dtype, slots=self.window))
            state["g"] = torch.zeros(batch, self.n_heads, self.window, device=device, dtype=dtype)
        if self.sinks:
            zeros = torch.zeros(batch, self.n_heads, self.sinks, self.head_dim, device=device, dtype=dtype)
            state.update(sink_k=zeros, sink_v=zeros.clone(),
                         sinks_out=torch.zeros(batch, dtype=torch.long, device=device),
                         band_sink=torch.zeros(batch, self.window, dtype=torch.bool, device=device))
        return state

    def _step(self, x_t: Tensor, state: State, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        q, k, v = self.step_qkv(x_t, state, position_embeddings)  # (B, H, 1, hd)
        pad = None if padding_mask is None else padding_mask[:, None]
        fq, fk, v1, log_a = (t[:, :, 0] for t in self._inputs(x_t[:, None], q, k, v, pad))
        if not self.window:
            o, S = decayed_linear_attention_step(fq, fk, v1, log_a, state["S"])
            return self._read_out(o[:, :, None], x_t.dtype)[:, 0], {"S": S}
        W, linear, sinks = self.branches()
        # The oldest band token leaves the band for the linear state (a sink for the sink cache), decayed over
        # the W steps it spent there.
        leaving = state["valid"][:, :1] & ~state["band_sink"][:, :1] if self.sinks else state["valid"][:, :1]
        g = state["g"] + log_a[..., None]  # (B, H, W)
        old_v1 = torch.cat([state["v"][:, :, 0], torch.ones_like(v1[..., :1])], dim=-1)
        old_fk = self.features(state["k"][:, :, :1])[:, :, 0] * (leaving[:, None] * g[..., :1].exp())
        S = log_a.exp()[..., None, None] * state["S"] + old_fk[..., :, None] * old_v1[..., None, :]
        memory = self.kv_push(state, k, v, padding_mask, self.window)
        g = torch.cat([g[..., 1:], torch.zeros_like(g[..., :1])], dim=-1)
        band_v1 = torch.cat([memory["v"], torch.ones_like(memory["v"][..., :1])], dim=-1)  # (B, H, W, hd + 1)
        new = {"S": S, **memory, "g": g}
        if self.sinks:
            cache, visible = self._sink_push(state, k, v, padding_mask, sinks, W)
            new.update(cache)
            sink, sink_v1 = self._sink_scores(q, new, visible, fq.dtype)
            sink_v1 = sink_v1.to(band_v1.dtype)
        o = torch.einsum("bhf,bhfd->bhd", fq, S) if linear else 0
        if W:
            see = memory["valid"].clone()
            see[:, -1] = True  # a token always sees itself, as in the parallel form
            scores = torch.einsum("bhd,bhwd->bhw", q[:, :, 0].to(fq.dtype), memory["k"]) * self.scaling.item()
            scores, values = scores.masked_fill(~see[:, None], float("-inf")), band_v1
            if self.sinks:
                scores, values = torch.cat([scores, sink], dim=-1), torch.cat([values, sink_v1], dim=2)
            c = scores.amax(-1, keepdim=True)
            o = torch.einsum("bhw,bhwd->bhd", (scores - c).exp(), values) + (-c).exp() * o
        else:  # band off: the band's tokens (sinks aside) join the linear branch with their decays
            joins = memory["valid"] & ~new["band_sink"] if self.sinks else memory["valid"]
            fk_band = self.features(memory["k"]) * (joins[:, None, :, None] * g.exp()[..., None])
            o = o + torch.einsum("bhf,bhwf,bhwd->bhd", fq, fk_band, band_v1)
            if self.sinks:
                c = sink.amax(-1, keepdim=True).clamp_min(0.0)  # the linear branch's scale unless a sink's is larger
                o = torch.einsum("bhs,bhsd->bhd", (sink - c).exp(), sink_v1) + (-c).exp() * o
        return self._read_out(o[:, :, None], x_t.dtype)[:, 0], new

    def _sink_push(self, state: State, k: Tensor, v: Tensor, padding_mask, sinks: int,
                   W: int) -> tuple[State, Tensor]:
        """The sink cache after one more token (a real token among the first ``sinks`` takes the next slot), and
        which slots the query sees (B, sinks): those that left the band; with the band off, all filled so far."""
        real = torch.ones_like(state["pos"], dtype=torch.bool) if padding_mask is None else padding_mask
        is_sink = real & (state["pos"] < sinks)  # (B,)
        slot = F.one_hot(state["pos"].clamp_max(self.sinks - 1), self.sinks).bool() & is_sink[:, None]  # (B, sinks)
        slot = slot[:, None, :, None]
        out = state["sinks_out"] + state["band_sink"][:, 0].long()
        seen = out if W else torch.clamp_max(state["pos"] + real.long(), sinks)
        cache = {"sink_k": torch.where(slot, k.to(state["sink_k"].dtype), state["sink_k"]),
                 "sink_v": torch.where(slot, v.to(state["sink_v"].dtype), state["sink_v"]), "sinks_out": out,
                 "band_sink": torch.cat([state["band_sink"][:, 1:], is_sink[:, None]], dim=1)}
        return cache, torch.arange(self.sinks, device=out.device)[None] < seen[:, None]

    def _sink_scores(self, q: Tensor, cache: State, visible: Tensor, dtype) -> tuple[Tensor, Tensor]:
        """The query's (B, H, sinks) scores against the cached sinks (-inf where not visible), in ``dtype``, and the
        sinks' values with the ones column (B, H, sinks, hd + 1)."""
        sink = torch.einsum("bhd,bhsd->bhs", q[:, :, 0].to(dtype), cache["sink_k"].to(dtype)) * self.scaling.item()
        sink_v1 = torch.cat([cache["sink_v"], torch.ones_like(cache["sink_v"][..., :1])], dim=-1)
        return sink.masked_fill(~visible[:, None], float("-inf")), sink_v1

    def _prefill(self, x: Tensor, padding_mask, position_embeddings) -> tuple[Tensor, State]:
        return self._mix(x, padding_mask, position_embeddings, naive=False, with_state=True)
