"""The check every chunked KD loss shares with its dense reference."""

import torch


def assert_same_as_dense(chunked: dict, dense: dict, student_logits: torch.Tensor) -> None:
    """Equal loss, KL and CE, equal gradients with respect to the student's logits, and none on the padded positions
    (row 1, positions 0-2, in the tests' cases)."""
    for key in ("loss", "kl", "ce"):
        torch.testing.assert_close(chunked[key], dense[key], rtol=1e-5, atol=1e-6, msg=key)
    (g_dense,) = torch.autograd.grad(dense["loss"], student_logits)
    (g_chunk,) = torch.autograd.grad(chunked["loss"], student_logits)
    torch.testing.assert_close(g_chunk, g_dense, rtol=1e-4, atol=1e-7)
    assert g_chunk[1, :3].abs().max() == 0, "padded positions get no gradient"
