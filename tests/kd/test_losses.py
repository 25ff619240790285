"""Distillation losses: the KL direction and temperature, and which positions the masks let through.

Expected values are computed independently here (``math`` on probabilities, explicit loops over
positions), not with the functions under test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wavedistill.kd.features import FeatureProjection, feature_loss, matched_hidden
from wavedistill.kd.losses import entropy_temperature, kd_loss, kl_teacher_student, next_token_ce


def logits_of(probs, shift: float = 0.0) -> torch.Tensor:
    """(1, 1, V) logits whose softmax is ``probs``; ``shift`` checks that only differences matter."""
    return torch.tensor([[[math.log(p) + shift for p in probs]]])


def kl_by_hand(p, q) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


P_TEACHER = [0.5, 0.25, 0.25]
# KL is asymmetric for this pair (0.0923 vs 0.0725 nats), so a swapped teacher / student is caught.
Q_STUDENT = [0.6, 0.3, 0.1]


def test_kl_matches_hand_computation_on_three_tokens():
    kl = kl_teacher_student(logits_of(P_TEACHER, shift=3.0), logits_of(Q_STUDENT, shift=-1.0))
    assert kl.shape == (1, 1)
    expected = kl_by_hand(P_TEACHER, Q_STUDENT)  # KL(teacher || student)
    assert abs(kl.item() - expected) < 1e-6
    assert abs(expected - kl_by_hand(Q_STUDENT, P_TEACHER)) > 1e-2, "the pair must tell the two directions apart"


def test_kl_at_temperature_matches_hand_computation():
    T = 2.0
    # Softmax at temperature T of log p is p^(1/T), renormalised.
    def soften(p):
        w = [x ** (1 / T) for x in p]
        return [x / sum(w) for x in w]
    kl = kl_teacher_student(logits_of(P_TEACHER), logits_of(Q_STUDENT), temperature=T)
    assert abs(kl.item() - kl_by_hand(soften(P_TEACHER), soften(Q_STUDENT))) < 1e-6


def test_kl_of_identical_logits_is_zero():
    torch.manual_seed(0)
    z = 5 * torch.randn(2, 7, 11)
    for T in (0.5, 1.0, 4.0):
        assert kl_teacher_student(z, z.clone(), T).abs().max().item() < 1e-6


def test_temperature_divides_the_logits():
    torch.manual_seed(0)
    zt, zs = 3 * torch.randn(2, 5, 9), 3 * torch.randn(2, 5, 9)
    for T in (0.5, 2.0, 7.0):
        torch.testing.assert_close(kl_teacher_student(zt, zs, T), kl_teacher_student(zt / T, zs / T, 1.0))


def test_t_squared_kl_tends_to_half_the_logit_variance_at_high_temperature():
    # Hinton et al. (2015): for large T, KL ~ Var_uniform(z_s - z_t) / (2 T^2). This is why kd_loss
    # multiplies by T^2: the loss scale then no longer depends on T.
    torch.manual_seed(0)
    zt, zs = 2 * torch.randn(3, 4, 7, dtype=torch.float64), 2 * torch.randn(3, 4, 7, dtype=torch.float64)
    T = 200.0
    scaled = T ** 2 * kl_teacher_student(zt, zs, T).double()
    limit = 0.5 * (zs - zt).var(-1, unbiased=False)
    torch.testing.assert_close(scaled, limit, rtol=2e-2, atol=0)


B, T_LEN, V = 2, 6, 5


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = 2 * torch.randn(B, T_LEN, V, generator=g)
    t = 2 * torch.randn(B, T_LEN, V, generator=g)
    ids = torch.randint(0, V, (B, T_LEN), generator=g)
    return s, t, ids


# Row 0 is all real; row 1 is right-padded (last 2) in one case, left-padded (first 2) in the other.
MASKS = {
    "right_pad": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool),
    "left_pad": torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=torch.bool),
}


def expected_kl_ce(s, t, ids, mask) -> tuple[float, float]:
    """Means over positions, written as loops: KL over real positions, CE over positions whose own
    token and next token are both real."""
    kls, ces = [], []
    for b in range(B):
        for i in range(T_LEN):
            if mask[b, i]:
                p = F.softmax(t[b, i].double(), -1)
                kls.append((p * (p.log() - F.log_softmax(s[b, i].double(), -1))).sum().item())
            if i + 1 < T_LEN and mask[b, i] and mask[b, i + 1]:
                ces.append(-F.log_softmax(s[b, i].double(), -1)[ids[b, i + 1]].item())
    return sum(kls) / len(kls), sum(ces) / len(ces)


@pytest.mark.parametrize("pad", list(MASKS))
def test_kd_loss_averages_kl_and_ce_over_real_positions_only(pad):
    s, t, ids = batch()
    mask = MASKS[pad]
    out = kd_loss(s, t, ids, temperature=1.0, kl_weight=0.5, ce_weight=0.5, mask=mask)
    kl, ce = expected_kl_ce(s, t, ids, mask)
    assert abs(out["kl"].item() - kl) < 1e-5
    assert abs(out["ce"].item() - ce) < 1e-5
    assert abs(out["loss"].item() - (0.5 * kl + 0.5 * ce)) < 1e-5


@pytest.mark.parametrize("pad", list(MASKS))
def test_padded_positions_do_not_change_the_loss_or_get_gradient(pad):
    s, t, ids = batch()
    mask = MASKS[pad]
    ref = kd_loss(s, t, ids, kl_weight=0.5, ce_weight=0.5, mask=mask)["loss"]
    # Garbage logits and different ids at every pad position: neither KL nor CE may see them
    # (a pad id as a CE *target* is excluded too, since CE needs the next token to be real).
    s2, t2, ids2 = s.clone(), t.clone(), ids.clone()
    s2[~mask] = 100 * torch.randn(int((~mask).sum()), V)
    t2[~mask] = 100 * torch.randn(int((~mask).sum()), V)
    ids2[~mask] = (ids2[~mask] + 1) % V
    s2.requires_grad_(True)
    out = kd_loss(s2, t2, ids2, kl_weight=0.5, ce_weight=0.5, mask=mask)["loss"]
    assert abs(out.item() - ref.item()) < 1e-5
    out.backward()
    assert s2.grad[~mask].abs().max().item() == 0.0
    assert s2.grad[mask].abs().max().item() > 0.0


def test_ce_needs_the_next_token_real():
    # Row 1 has a single real token followed by pads: its one position predicts a pad, so CE must
    # come from row 0 alone, while KL still counts row 1's real position.
    s, t, ids = batch()
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    out = kd_loss(s, t, ids, kl_weight=0.5, ce_weight=0.5, mask=mask)
    ce_row0 = F.cross_entropy(s[0, :-1], ids[0, 1:]).item()
    assert abs(out["ce"].item() - ce_row0) < 1e-5
    kl_real = kl_teacher_student(t, s)[mask].mean().item()
    assert abs(out["kl"].item() - kl_real) < 1e-5


def test_no_mask_means_every_position():
    s, t, ids = batch()
    out = kd_loss(s, t, ids, kl_weight=0.5, ce_weight=0.5)
    assert abs(out["kl"].item() - kl_teacher_student(t, s).mean().item()) < 1e-6
    assert abs(out["ce"].item() - next_token_ce(s, ids).mean().item()) < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 2.0, 3.5])
def test_kl_weight_alone_is_pure_t_squared_kl_and_ce_weight_alone_pure_ce(temperature):
    s, t, ids = batch()
    mask = MASKS["right_pad"]
    kl, _ = expected_kl_ce(s / temperature, t / temperature, ids, mask)  # KL at temperature T
    _, ce = expected_kl_ce(s, t, ids, mask)  # CE is always at temperature 1
    pure_kl = kd_loss(s, t, ids, temperature=temperature, kl_weight=1.0, ce_weight=0.0, mask=mask)
    assert abs(pure_kl["loss"].item() - temperature ** 2 * kl) < 1e-4
    pure_ce = kd_loss(s, t, ids, temperature=temperature, kl_weight=0.0, ce_weight=1.0, mask=mask)
    assert abs(pure_ce["loss"].item() - ce) < 1e-5
    # The reported parts are the unweighted means, whatever the weights are.
    assert abs(pure_kl["ce"].item() - ce) < 1e-5 and abs(pure_ce["kl"].item() - kl) < 1e-5


def test_per_position_temperature_scales_each_position_by_its_own_t_squared():
    s, t, ids = batch()
    temps = 1.0 + torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) * 3  # (B, T) in [1, 4)
    out = kd_loss(s, t, ids, temperature=temps, kl_weight=1.0, ce_weight=0.0)
    by_hand = []
    for b in range(ids.shape[0]):
        for i in range(ids.shape[1]):
            tau = temps[b, i].item()
            p = F.softmax(t[b, i].double() / tau, -1)
            kl = (p * (p.log() - F.log_softmax(s[b, i].double() / tau, -1))).sum().item()
            by_hand.append(tau ** 2 * kl)
    assert abs(out["loss"].item() - sum(by_hand) / len(by_hand)) < 1e-4


def test_entropy_temperature_is_t_max_for_a_one_hot_teacher_and_one_for_a_uniform_one():
    V = 7
    confident = torch.full((1, 1, V), -1e4)
    confident[..., 2] = 0.0
    uniform = torch.zeros(1, 1, V)
    assert entropy_temperature(confident, 4.0).item() == pytest.approx(4.0, abs=1e-4)
    assert entropy_temperature(uniform, 4.0).item() == pytest.approx(1.0, abs=1e-5)
    middle = entropy_temperature(torch.tensor([[[2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]]]), 4.0).item()
    assert 1.0 < middle < 4.0


def test_feature_mse_is_the_mean_squared_error_over_layers_and_real_positions():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(2, 5, 4, generator=g) for _ in range(3)]
    t = [torch.randn(2, 5, 4, generator=g) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    per_layer = [((a - b) ** 2)[mask].mean().item() for a, b in zip(s, t)]
    assert feature_loss(s, t, "mse", mask=mask).item() == pytest.approx(sum(per_layer) / 3, rel=1e-6)
    assert feature_loss(t, t).item() == 0.0


def test_feature_cosine_is_one_minus_the_cosine_similarity_per_position():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    naive = torch.tensor([[1 - (a @ b) / (a.norm() * b.norm()) for a, b in zip(sr, tr)] for sr, tr in zip(s, t)])
    assert feature_loss([s], [t], "cosine").item() == pytest.approx(naive.mean().item(), rel=1e-5)
    assert feature_loss([t], [3 * t], "cosine").item() == pytest.approx(0.0, abs=1e-6)


def test_a_narrower_student_is_projected_to_the_teacher_width_starting_from_weight_selection():
    g = torch.Generator().manual_seed(2)
    proj = FeatureProjection(3, 5, n_layers=2)
    s = torch.randn(2, 4, 3, generator=g)
    t = torch.cat([s, torch.zeros(2, 4, 2)], -1)  # the teacher's first 3 units = the student's, the rest 0
    assert feature_loss([s, s], [t, t], "mse", projection=proj).item() == pytest.approx(0.0, abs=1e-12)
    assert len(list(FeatureProjection(4, 4, 2).parameters())) == 0, "equal widths: no projection"
    hs = tuple(torch.full((1, 2, 3), float(i)) for i in range(3))  # embeddings + 2 student layers
    ht = tuple(torch.full((1, 2, 5), float(i)) for i in range(6))  # embeddings + 5 teacher layers
    pairs = matched_hidden(hs, ht, [1, 4])
    assert [x[0, 0, 0].item() for x in pairs[1]] == [2.0, 5.0], "student layer i <-> teacher layer map[i]"
