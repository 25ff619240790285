"""Keep a wave layer's decoding state inside Hugging Face's ``Cache`` object.

A replaced layer never writes keys/values, but HF sizes positions and masks from the cache
layers (``get_seq_length`` / ``get_mask_sizes`` of the first full-attention layer), so a silent
layer breaks left-padded generation and static caches. :class:`WaveCacheLayer` wraps the
native layer HF created, feeds it a width-1 dummy K/V so its bookkeeping stays exact, and keeps
the mixer's decoding state beside it:

* a mixer with a recurrent form (``mixer.has_state``): its **state** (named tensors, batch first).
  The prompt runs through ``mixer.prefill`` (the parallel form), every later token through
  ``mixer.step``, so a token costs the same at any context length. The latest call's inputs and
  the state before it are kept, so HF's ``crop(-n)`` of rejected draft tokens (assisted and
  prompt-lookup decoding) can roll back as far as that call reaches, by re-running its first
  tokens from that state.
* a mixer without one: the mixer *inputs* seen so far, (B, T, D), their padding mask and the
  rotary tables; each call re-runs the mixer over that history.

Either way cached decoding computes what a full forward computes, and beam search, batch
selection and cropping only need to index the batch dimension.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin

from ..errors import MixerStateError


class WaveCacheLayer(CacheLayerMixin):
    def __init__(self, inner: CacheLayerMixin) -> None:  # no super().__init__: keys/values belong to `inner`
        self.inner = inner
        self.x: Tensor | None = None  # (B, T, D)
        self.pad: Tensor | None = None  # (B, T) bool, True = real token
        self.cos: Tensor | None = None  # (B, T, hd)
        self.sin: Tensor | None = None
        self.state: dict[str, Tensor] | None = None  # recurrent state after every token seen
        self.mixer = None
        self.last_call: tuple | None = None  # (state before, x, pad, (cos, sin)) of the latest call, for crop

    is_compileable = property(lambda self: getattr(self.inner, "is_compileable", False))
    is_sliding = property(lambda self: getattr(self.inner, "is_sliding", False))
    is_croppable = property(lambda self: getattr(self.inner, "is_croppable", False))
    supports_early_init = property(lambda self: getattr(self.inner, "supports_early_init", False))
    is_initialized = property(lambda self: self.inner.is_initialized)
    keys = property(lambda self: self.inner.keys)
    values = property(lambda self: self.inner.values)

    def lazy_initialization(self, key_states, value_states) -> None:
        self.inner.lazy_initialization(key_states, value_states)

    def update(self, key_states, value_states, *args, **kwargs):
        return self.inner.update(key_states, value_states, *args, **kwargs)

    def get_mask_sizes(self, query_length: int):
        return self.inner.get_mask_sizes(query_length)

    def get_seq_length(self) -> int:
        return self.inner.get_seq_length()

    def get_max_length(self) -> int:
        return self.inner.get_max_length()

    def mix(self, mixer, x: Tensor, pad: Tensor | None, position_embeddings, write_kv: bool = True) -> Tensor:
        """The mixer's output for new inputs x (B, q, D), given everything this layer has seen.

        write_kv: feed the native layer a dummy K/V for its bookkeeping; False when the original
        attention runs beside the mixer (hand-off) and writes real K/V itself.
        """
        B, q, _ = x.shape
        if write_kv:
            dummy = x.new_zeros(B, 1, q, 1)
            self.inner.update(dummy, dummy)
        if not mixer.has_state:
            history, hpad, pe = self.append(x, pad, position_embeddings)
            return mixer(history, padding_mask=hpad, position_embeddings=pe)[:, -q:]
        self.mixer, self.last_call = mixer, (self.state, x, pad, position_embeddings)
        if self.state is None:
            y, self.state = mixer.prefill(x, pad, position_embeddings)
            return y
        ys = []
        for t in range(q):
            pe_t = None if position_embeddings is None else tuple(p[:, t] for p in position_embeddings)
            y, self.state = mixer.step(x[:, t], self.state, None if pad is None else pad[:, t], pe_t)
            ys.append(y)
        return torch.stack(ys, dim=1)

    def append(self, x: Tensor, pad: Tensor | None, position_embeddings) -> tuple[Tensor, Tensor | None, tuple | None]:
        """Record new mixer inputs x (B, q, D) and return the whole history to mix over."""
        B, q, _ = x.shape
        if pad is None and self.pad is not None:
            pad = torch.ones(B, q, dtype=torch.bool, device=x.device)
        if pad is not None and self.pad is None and self.x is not None:
            self.pad = torch.ones(B, self.x.shape[1], dtype=torch.bool, device=x.device)
        cos = sin = None
        if position_embeddings is not None:
            cos, sin = (p.expand(B, -1, -1) for p in position_embeddings)
        if self.x is None:
            self.x, self.pad, self.cos, self.sin = x, pad, cos, sin
        else:
            self.x = torch.cat([self.x, x], dim=1)
            self.pad = None if pad is None else torch.cat([self.pad, pad], dim=1)
            if cos is not None:
                self.cos, self.sin = torch.cat([self.cos, cos], dim=1), torch.cat([self.sin, sin], dim=1)
        pe = None if self.cos is None else (self.cos, self.sin)
        return self.x, self.pad, pe

    def _apply(self, fn) -> None:
        for name in ("x", "pad", "cos", "sin"):
            if getattr(self, name) is not None:
                setattr(self, name, fn(getattr(self, name)))
        if self.state is not None:
            self.state = {k: fn(v) for k, v in self.state.items()}
        if self.last_call is not None:
            before, x, pad, pe = self.last_call
            self.last_call = (None if before is None else {k: fn(v) for k, v in before.items()}, fn(x),
                              None if pad is None else fn(pad), None if pe is None else tuple(fn(p) for p in pe))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.inner.reorder_cache(beam_idx)
        self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: Tensor) -> None:
        self.inner.batch_select_indices(indices)
        self._apply(lambda t: t[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.inner.batch_repeat_interleave(repeats)
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0))

    def crop(self, tokens_to_remove: int) -> None:
        """HF rolls back speculative tokens with ``crop(-n)``; drop them here too.

        A recurrent state goes back at most to the start of the latest call: the state before it,
        advanced over the call's tokens that are kept.
        """
        n = -tokens_to_remove  # transformers 5.x: <= 0 tokens to remove (the native layer refuses > 0)
        latest = 0 if self.last_call is None else self.last_call[1].shape[1]
        if self.state is not None and n > latest:
            raise MixerStateError(f"cannot roll a recurrent wave state back {n} tokens: only the latest call's "
                                  f"{latest} can be undone; verify each draft in one call")
        self.inner.crop(tokens_to_remove)
        if n <= 0:
            return
        if self.x is not None:
            self._apply(lambda t: t[:, : t.shape[1] - n])
        if self.state is not None:
            before, x, pad, pe = self.last_call
            keep = x.shape[1] - n
            self.state = before
            if keep:
                pe = None if pe is None else tuple(p[:, :keep] for p in pe)
                _, self.state = self.mixer.prefill(x[:, :keep], None if pad is None else pad[:, :keep], pe, before)
            self.last_call = (before, x[:, :keep], None if pad is None else pad[:, :keep], pe)

    def activate_past_recording(self) -> None:
        if hasattr(self.inner, "activate_past_recording"):
            self.inner.activate_past_recording()

    @property
    def record_past(self) -> bool:
        return getattr(self.inner, "record_past", False)

    @record_past.setter
    def record_past(self, value: bool) -> None:
        self.inner.record_past = value

    def reset(self) -> None:
        self.inner.reset()
        self.x = self.pad = self.cos = self.sin = self.state = self.last_call = None

    def offload(self):
        self.inner.offload()

    def prefetch(self):
        self.inner.prefetch()


def wave_cache_layer(cache: Cache, layer_idx: int) -> WaveCacheLayer:
    """The wave layer for ``layer_idx``, wrapping (once) whatever native layer HF put there."""
    if cache.layer_class_to_replicate is not None:
        while len(cache.layers) <= layer_idx:
            cache.layers.append(cache.layer_class_to_replicate())
    layer = cache.layers[layer_idx]
    if not isinstance(layer, WaveCacheLayer):
        layer = cache.layers[layer_idx] = WaveCacheLayer(layer)
    return layer
