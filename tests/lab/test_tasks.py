"""Lab tasks: worked examples, splits, determinism, and clear errors for bad options or data."""

import json

import pytest
import torch

from wavedistill.errors import DataError, WavedistillError
from wavedistill.lab.tasks import IGNORE, TASKS, build_task


def test_modular_worked_example_and_every_pair_once():
    task = build_task("modular", seed=0, p=5, train_frac=0.4)
    x = torch.cat([task.train_x, task.test_x])
    y = torch.cat([task.train_y, task.test_y])
    assert x.shape == (25, 3) and len(task.train_x) == 10
    assert {(a, b) for a, b, _ in x.tolist()} == {(a, b) for a in range(5) for b in range(5)}
    assert (x[:, 2] == 5).all() and (y[:, :2] == IGNORE).all()
    row = [i for i, (a, b, _) in enumerate(x.tolist()) if (a, b) == (3, 4)][0]
    assert y[row, 2] == 2  # 3 + 4 mod 5
    assert task.vocab_size == 6 and task.full_batch


@pytest.mark.parametrize("op,f", [("-", lambda a, b: (a - b) % 7), ("*", lambda a, b: a * b % 7),
                                  ("/", lambda a, b: next(c for c in range(7) if c * b % 7 == a))])
def test_modular_ops(op, f):
    task = build_task("modular", seed=1, p=7, op=op, train_frac=0.5)
    x, y = torch.cat([task.train_x, task.test_x]), torch.cat([task.train_y, task.test_y])
    assert len(x) == (42 if op == "/" else 49)  # division skips b = 0
    for (a, b, _), c in zip(x.tolist(), y[:, 2].tolist()):
        assert c == f(a, b)


def test_modular_split_depends_on_the_seed_only():
    a, b, c = (build_task("modular", seed=s, p=11, train_frac=0.3) for s in (0, 0, 1))
    assert torch.equal(a.train_x, b.train_x) and not torch.equal(a.train_x, c.train_x)


@pytest.mark.parametrize("kw,needle", [({"p": 12}, "prime"), ({"op": "%"}, "unknown modular op"),
                                       ({"train_frac": 1.0}, "train_frac")])
def test_modular_refuses_bad_options(kw, needle):
    with pytest.raises(WavedistillError, match=needle):
        build_task("modular", seed=0, **kw)


@pytest.mark.parametrize("name,expected", [("copy", [5, 2, 7]), ("reverse", [7, 2, 5]), ("sort", [2, 5, 7])])
def test_sequence_tasks_score_exactly_the_answer(name, expected):
    task = build_task(name, seed=0, length=3, vocab=9, n_train=50, n_test=10)
    seq = torch.tensor([[5, 2, 7, 0]])
    full = torch.cat([seq, task.transform(seq[:, :3])], dim=1)
    assert full[0, 4:].tolist() == expected
    x, y = task.train_x, task.train_y
    assert x.shape == (50, 7) and (x[:, 3] == 0).all() and (x[:, :3] > 0).all()
    assert (y[:, :3] == IGNORE).all() and (y[:, 6] == IGNORE).all()
    assert torch.equal(y[:, 3:6], x[:, 4:7])  # position t predicts token t + 1 of the answer
    assert not torch.equal(task.train_x[:10], task.test_x)


def test_mqar_queries_ask_for_the_value_of_an_earlier_key():
    task = build_task("mqar", seed=0, seq_len=64, n_pairs=4, vocab=40, n_train=200, n_test=20)
    x, y = task.train_x, task.train_y
    assert x.shape == (200, 64)
    scored = y != IGNORE
    assert (scored.sum(1) == 4).all() and not scored[:, :8].any()
    for row in range(20):
        pairs = dict(zip(x[row, 0:8:2].tolist(), x[row, 1:8:2].tolist()))
        assert len(pairs) == 4 and all(1 <= k < 20 for k in pairs) and all(20 <= v < 40 for v in pairs.values())
        where = scored[row].nonzero().flatten().tolist()
        assert all((t - 8) % 2 == 0 for t in where)
        assert sorted(x[row, where].tolist()) == sorted(pairs)  # every key queried once
        assert [y[row, t].item() for t in where] == [pairs[x[row, t].item()] for t in where]


def test_mqar_power_law_puts_most_queries_near_the_pairs():
    task = build_task("mqar", seed=0, seq_len=256, n_pairs=8, vocab=128, n_train=500, n_test=10)
    where = (task.train_y != IGNORE).nonzero()[:, 1].float()
    assert where.median() < 16 + 0.25 * (256 - 16)


def test_charlm_splits_a_text_file_and_scores_every_val_window(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij" * 100)
    task = build_task("charlm", seed=0, data=str(path), seq_len=16, val_frac=0.2)
    assert task.vocab_size == 10 and len(task.train_stream) == 800 and len(task.val_stream) == 200
    assert task.test_x.shape == (12, 16) and torch.equal(task.test_y[:, :-1], task.test_x[:, 1:])
    x, y, pad = task.train_batch(3, 4)
    assert x.shape == (4, 16) and pad is None and torch.equal(y[:, :-1], x[:, 1:])


def test_charlm_without_data_says_what_to_pass():
    with pytest.raises(DataError, match="--data"):
        build_task("charlm", seed=0)


def write_labelled(path, n=40):
    rows = [{"text": ("good " if i % 2 else "bad ") * (1 + i % 3), "label": "pos" if i % 2 else "neg"}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_classify_reads_jsonl_and_csv_and_pads(tmp_path):
    task = build_task("classify", seed=0, data=str(write_labelled(tmp_path / "d.jsonl")), max_len=12)
    assert task.n_classes == 2 and task.labels == ["neg", "pos"]
    assert task.train_x.shape == (32, 12) and task.test_x.shape == (8, 12)
    assert task.train_pad.dtype == torch.bool and not task.train_pad.all() and task.train_pad[:, 0].all()
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\nhello,a\nworld,b\nhi,a\nyo,b\n")
    assert build_task("classify", seed=0, data=str(csv)).n_classes == 2


@pytest.mark.parametrize("content,needle", [('{"text": "a", "cls": "x"}\n{"text": "b", "cls": "y"}',
                                             "has no \\['label'\\]"),
                                            ('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n' * 2,
                                             "single label"),
                                            ('{"text": ', "not valid JSON")])
def test_classify_refuses_unusable_files(tmp_path, content, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=needle):
        build_task("classify", seed=0, data=str(path))


def test_unknown_tasks_and_options_are_refused_with_the_known_ones():
    with pytest.raises(WavedistillError, match="known tasks: modular, copy"):
        build_task("grok", seed=0)
    with pytest.raises(WavedistillError, match=r"unknown options \['n_pairs'\]"):
        build_task("modular", seed=0, n_pairs=3)
    assert set(TASKS) == {"modular", "copy", "reverse", "sort", "mqar", "charlm", "stories", "classify",
                          "event_hold"}


def test_event_hold_worked_example_holds_the_last_loud_sample_and_turns_it():
    from wavedistill.lab.tasks.event_hold import hold_last_event

    z = torch.tensor([[0.1, 1.5j, -0.2, 1.3, 0.1]])
    assert torch.allclose(hold_last_event(z, 1.0, 0.0), torch.tensor([[0, 1.5j, 1.5j, 1.3, 1.3]]))
    turned = hold_last_event(z, 1.0, 0.5)  # two steps after the event at t = 1: turned by 2 x 0.5 rad
    assert torch.allclose(turned[0, 2], 1.5j * torch.exp(torch.tensor(0.5j)))
    assert torch.allclose(turned[0, 4], 1.3 * torch.exp(torch.tensor(0.5j)))


def test_event_hold_targets_follow_from_the_inputs_by_the_stated_rule():
    task = build_task("event_hold", seed=3, seq_len=40, n_train=50, n_test=20)
    assert task.kind == "regress" and task.train_x.shape == (50, 40, 2) and task.train_y.shape == (50, 40, 2)
    z = torch.complex(task.test_x[..., 0].double(), task.test_x[..., 1].double())
    y = torch.complex(task.test_y[..., 0].double(), task.test_y[..., 1].double())
    loud = z.abs() > task.threshold
    assert 0.04 < loud.float().mean() < 0.15  # events at about event_prob, plus rare loud noise
    for r in range(5):  # brute force: the last loud sample, turned by omega per step since
        for t in range(40):
            past = [s for s in range(t + 1) if loud[r, s]]
            want = 0 if not past else z[r, past[-1]] * torch.exp(torch.tensor(1j * task.omega * (t - past[-1])))
            assert abs(y[r, t] - want) < 1e-5
    other = build_task("event_hold", seed=4, seq_len=40, n_train=50, n_test=20)
    assert not torch.equal(task.train_x, other.train_x) and not torch.equal(task.train_x, task.test_x[:20])


@pytest.mark.parametrize("kw", [dict(seq_len=1), dict(event_prob=0.0), dict(threshold=0.0), dict(tolerance=0.0),
                                dict(n_test=0)])
def test_event_hold_refuses_bad_options(kw):
    with pytest.raises(WavedistillError, match="event_hold needs"):
        build_task("event_hold", seed=0, **kw)
