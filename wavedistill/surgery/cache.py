"""Keep a wave layer's decoding state inside Hugging Face's ``Cache`` object.

A replaced layer never writes keys/values, but HF sizes positions and masks from the cache
layers (``get_seq_length`` / ``get_mask_sizes`` of the first full-attention layer), so a silent
layer breaks left-padded generation and static caches. :class:`WaveCacheLayer` wraps the
native layer HF created, feeds it a width-1 dummy K/V so its bookkeeping stays exact, and keeps
the mixer's state beside it: the mixer *inputs* seen so far, (B, T, D), their padding mask and
the rotary tables. Each decoding call re-runs the mixer over that history and returns the new
positions, so cached decoding computes exactly what a full forward computes, and beam search,
batch selection and cropping only need to index the history.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin


class WaveCacheLayer(CacheLayerMixin):
    def __init__(self, inner: CacheLayerMixin) -> None:  # no super().__init__: keys/values belong to `inner`
        self.inner = inner
        self.x: Tensor | None = None  # (B, T, D)
        self.pad: Tensor | None = None  # (B, T) bool, True = real token
        self.cos: Tensor | None = None  # (B, T, hd)
        self.sin: Tensor | None = None

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

    def append(self, x: Tensor, pad: Tensor | None, position_embeddings,
               write_kv: bool = True) -> tuple[Tensor, Tensor | None, tuple | None]:
        """Record new mixer inputs x (B, q, D) and return the whole history to mix over.

        write_kv: feed the native layer a dummy K/V for its bookkeeping; False when the original
        attention runs beside the mixer (hand-off) and writes real K/V itself.
        """
        B, q, _ = x.shape
        if write_kv:
            dummy = x.new_zeros(B, 1, q, 1)
            self.inner.update(dummy, dummy)
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
        """HF rolls back speculative tokens with ``crop(-n)``; drop them from the history too."""
        self.inner.crop(tokens_to_remove)
        if tokens_to_remove < 0 and self.x is not None:
            self._apply(lambda t: t[:, : t.shape[1] + tokens_to_remove])

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
        self.x = self.pad = self.cos = self.sin = None

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
