"""Decoding a lab model token by token through its mixers' states reproduces its parallel forward."""

import pytest
import torch

from wavedistill.errors import WavedistillError
from wavedistill.lab.decode import decode_ms_per_token, forward_logits, greedy, prefill, step
from wavedistill.lab.lm_report import routing
from wavedistill.lab.model import WaveTransformer

MIXERS = ["attention", "wda", "rotary_gla", "gated_delta_net", "s4d", "learned_gate"]


@pytest.mark.parametrize("positions", ["none", "learned"])
@pytest.mark.parametrize("mixer", MIXERS)
def test_prefill_then_steps_equal_the_parallel_forward(mixer, positions):
    torch.manual_seed(0)
    net = WaveTransformer(50, 64, mixer=mixer, d_model=32, n_layers=2, n_heads=4, d_mlp=64,
                          positions=positions).double().eval()
    ids = torch.randint(0, 50, (2, 20))
    logits, states = prefill(net, ids[:, :12])
    got = [logits]
    for t in range(12, 20):
        logits, states = step(net, ids[:, t], states)
        got.append(logits)
    torch.testing.assert_close(torch.stack(got, 1), forward_logits(net, ids)[:, 11:], atol=1e-10, rtol=0)


def test_greedy_continues_with_the_arg_max_of_the_forward():
    torch.manual_seed(0)
    net = WaveTransformer(30, 64, mixer="rotary_gla", d_model=16, n_layers=1, n_heads=2, d_mlp=32,
                          positions="none").double().eval()
    prompt = torch.randint(0, 30, (1, 5))
    out = greedy(net, prompt, 6)
    full = torch.cat([prompt, out], 1)
    torch.testing.assert_close(forward_logits(net, full)[:, 4:-1].argmax(-1), out)
    assert decode_ms_per_token(net.float(), context=8, n_tokens=2) > 0


def test_a_position_table_cannot_decode_past_its_length():
    net = WaveTransformer(30, 8, mixer="s4d", d_model=16, n_layers=1, n_heads=2, d_mlp=32).eval()
    logits, states = prefill(net, torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(WavedistillError, match="positions: none"):
        step(net, logits.argmax(-1), states)


def test_routing_reports_each_wda_layer_and_nothing_for_attention():
    torch.manual_seed(0)
    x = torch.randint(0, 30, (2, 10))
    wda = WaveTransformer(30, 16, mixer="wda", d_model=16, n_layers=2, n_heads=2, d_mlp=32).eval()
    rows = routing(wda, x)
    assert [r["layer"] for r in rows] == [0, 1] and all(len(r["mean_weight_per_mask"]) == 4 for r in rows)
    assert all(abs(sum(r["mean_weight_per_mask"]) - 1) < 0.01 and r["std_over_tokens"] > 0 for r in rows)
    torch.testing.assert_close(wda(x), wda(x))  # the hooks are gone and left the forward alone
    assert routing(WaveTransformer(30, 16, mixer="attention", d_model=16, n_heads=2, d_mlp=32), x) is None
