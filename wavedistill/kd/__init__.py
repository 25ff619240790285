"""Logit-distillation losses that never hold (B, T, V) float32 buffers: one chunked autograd engine
(:mod:`.engine`) and the two targets it is used with, the teacher's live logits (:mod:`.chunked`) and an
offline teacher cache's top-k distribution (:mod:`.cached`)."""
