"""Gated events: hold the last loud sample of a complex signal, turning it at a fixed rate (a regression task).

The input is a complex signal z_t, given as 2 channels (Re z, Im z). Most samples are background
noise, complex Gaussian with std ``noise`` per channel; at each step an *event* occurs with
probability ``event_prob``: a sample of amplitude U[1.2, 2.0] x ``threshold`` and uniform phase. An
event is defined by content, ``|z_t| > threshold`` (so a rare loud background sample counts as one).
The target is the value of the most recent event tau <= t, turned by ``omega`` radians per step since:

    y_t = z_tau e^(i omega (t - tau)),        y_t = 0 before the first event.

Every position is scored (mean squared error over both channels); "accuracy" is the fraction of
positions predicted within ``tolerance`` (Euclidean) of the target. The task needs selective
processing: which samples are kept depends on their amplitude, and a fixed (time-invariant) filter
such as S4D can only average the past with weights set by the lag, whatever the content. A selective
state space model solves it exactly: step Delta large at an event (forget, write), ~0 otherwise
(hold), modes turning at omega. Train and test sequences come from disjoint seeded generators;
nothing is downloaded.
Worked example, threshold 1, omega 0: z = [0.1, 1.5i, -0.2, 1.3, 0.1] -> y = [0, 1.5i, 1.5i, 1.3, 1.3].
"""

from __future__ import annotations

import math

import torch

from ...errors import WavedistillError
from .base import Task


class EventHold(Task):
    name = "event_hold"
    kind = "regress"
    in_features = out_features = 2
    defaults = dict(d_model=64, n_layers=4, n_heads=4, d_mlp=256, activation="gelu", norm="rms", lr=3e-3,
                    weight_decay=0.0, beta2=0.98, batch_size=32, steps=2000, warmup_steps=100, eval_every=200)

    def __init__(self, seed: int, seq_len: int = 64, event_prob: float = 0.08, threshold: float = 1.0,
                 noise: float = 0.3, omega: float = 0.2, tolerance: float = 0.1, n_train: int = 10000,
                 n_test: int = 1000) -> None:
        super().__init__(seed)
        if seq_len < 2 or not 0 < event_prob < 1 or threshold <= 0 or noise < 0 or tolerance <= 0:
            raise WavedistillError(f"event_hold needs seq_len >= 2, 0 < event_prob < 1, threshold > 0, noise >= 0 "
                                   f"and tolerance > 0; got {seq_len}, {event_prob}, {threshold}, {noise}, {tolerance}")
        if n_train < 1 or n_test < 1:
            raise WavedistillError(f"event_hold needs n_train, n_test >= 1, got {n_train}, {n_test}")
        self.event_prob, self.threshold, self.noise, self.omega = event_prob, threshold, noise, omega
        self.tolerance = tolerance
        self.vocab_size, self.seq_len = self.out_features, seq_len
        self.train_x, self.train_y = self.make(n_train, seed * 2 + 1)
        self.test_x, self.test_y = self.make(n_test, seed * 2 + 2)

    def make(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (n, seq_len, 2) float32: (Re, Im) of z and of y."""
        g = torch.Generator().manual_seed(seed)
        T = self.seq_len
        z = torch.complex(torch.randn(n, T, generator=g, dtype=torch.float64),
                          torch.randn(n, T, generator=g, dtype=torch.float64)) * self.noise
        events = torch.rand(n, T, generator=g, dtype=torch.float64) < self.event_prob
        amplitude = self.threshold * (1.2 + 0.8 * torch.rand(n, T, generator=g, dtype=torch.float64))
        phase = 2 * math.pi * torch.rand(n, T, generator=g, dtype=torch.float64)
        z = torch.where(events, torch.polar(amplitude, phase), z)
        y = hold_last_event(z, self.threshold, self.omega)
        return (torch.stack([z.real, z.imag], -1).float(), torch.stack([y.real, y.imag], -1).float())

    def describe(self) -> dict:
        return {**super().describe(), "event_prob": self.event_prob, "threshold": self.threshold,
                "noise": self.noise, "omega": self.omega, "tolerance": self.tolerance}


def hold_last_event(z: torch.Tensor, threshold: float, omega: float) -> torch.Tensor:
    """y_t = z_tau e^(i omega (t - tau)) for the last tau <= t with |z_tau| > threshold, else 0; z (n, T) complex."""
    T = z.shape[1]
    t = torch.arange(T, device=z.device)
    loud = z.abs() > threshold
    tau = torch.where(loud, t, -1).cummax(dim=1).values  # (n, T): last event at or before t, -1 = none yet
    held = torch.gather(z, 1, tau.clamp_min(0))
    turned = held * torch.polar(torch.ones_like(held.real), omega * (t - tau).to(held.real.dtype))
    return torch.where(tau >= 0, turned, torch.zeros((), dtype=z.dtype))
