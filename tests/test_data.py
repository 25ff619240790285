"""Reading documents, the by-document train / val / test split, and how token windows are cut.

The tokenizer is the demo's word-level one (offline, real ``PreTrainedTokenizerFast``), fitted to
a small synthetic corpus.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from tests.tiny_teachers import write_tiny_corpus
from wavedistill.data import (Splits, check_lengths, eval_windows, read_documents, split_documents,
                              tokenize_documents, train_batch)
from wavedistill.cli.demo import build_tokenizer
from wavedistill.errors import DataError


def test_local_jsonl_and_parquet_leave_no_copy_in_the_datasets_cache(tmp_path, monkeypatch):
    # read in this process, not through `datasets` (which would keep an Arrow copy under ~/.cache)
    import datasets

    cache = tmp_path / "hf_datasets_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in DOCS) + "\n")
    pd.DataFrame({"text": DOCS}).to_parquet(tmp_path / "d.parquet")
    assert read_documents(str(tmp_path / "d.jsonl")) == read_documents(str(tmp_path / "d.parquet")) == DOCS
    assert not cache.exists()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("data") / "stories.txt", n_stories=40)


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return build_tokenizer(str(corpus))


@pytest.fixture(scope="module")
def stories(corpus):
    return read_documents(str(corpus))


DOCS = ["the first story\nhas two lines", "the second story", "the third story"]


def test_txt_documents_are_separated_by_blank_lines(tmp_path):
    path = tmp_path / "d.txt"
    # A single newline stays inside a document; several blank lines in a row are one separator;
    # surrounding whitespace is stripped.
    path.write_text("the first story\nhas two lines\n\nthe second story\n\n\n\n  the third story  \n")
    assert read_documents(str(path)) == DOCS
    assert read_documents(str(path), n_samples=2) == DOCS[:2]


def test_jsonl_documents_come_from_the_text_field(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": DOCS[0], "id": 0}, {"text": "", "id": 1}, {"text": DOCS[1], "id": 2}, {"text": DOCS[2], "id": 3}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert read_documents(str(path)) == DOCS  # the empty document is dropped
    other = tmp_path / "body.jsonl"
    other.write_text("\n".join(json.dumps({"body": d}) for d in DOCS) + "\n")
    assert read_documents(str(other), text_field="body") == DOCS


def test_parquet_documents_come_from_the_text_field(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": DOCS, "n": [1, 2, 3]}).to_parquet(path)
    assert read_documents(str(path)) == DOCS
    assert read_documents(str(path), n_samples=1) == DOCS[:1]


def test_missing_text_column_is_a_data_error_naming_the_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"body": "a story"}) + "\n")
    with pytest.raises(DataError, match="body"):
        read_documents(str(path))


@pytest.mark.parametrize("ext", [".txt", ".jsonl", ".parquet"])
def test_missing_file_is_a_data_error(tmp_path, ext):
    with pytest.raises(DataError, match="does not exist"):
        read_documents(str(tmp_path / f"nothing_here{ext}"))


def write_empty(path):
    if path.name == "no_rows.parquet":
        pd.DataFrame({"text": pd.Series([], dtype=str)}).to_parquet(path)  # a valid file with zero rows
    else:
        path.write_bytes(b"")  # zero bytes


@pytest.mark.parametrize("name", ["empty.txt", "empty.jsonl", "empty.parquet", "no_rows.parquet"])
def test_empty_file_is_a_data_error(tmp_path, name):
    # Anything other than DataError escapes the CLI's error handling and ends in a traceback
    # instead of a one-line message.
    path = tmp_path / name
    write_empty(path)
    with pytest.raises(DataError):
        read_documents(str(path))


def test_whitespace_only_txt_is_a_data_error(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\n\t\n\n")
    with pytest.raises(DataError, match="no text found"):
        read_documents(str(blank))


@pytest.mark.parametrize("ext,content", [(".jsonl", b'{"text": "a story"}\n{"text": \n'),
                                         (".parquet", b"this is not a parquet file")],
                         ids=["jsonl", "parquet"])
def test_malformed_file_is_a_data_error(tmp_path, ext, content):
    # Same reason as for empty files: a user's broken data file must give a one-line error.
    path = tmp_path / f"broken{ext}"
    path.write_bytes(content)
    with pytest.raises(DataError):
        read_documents(str(path))


def test_unsupported_extension_is_a_data_error(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text\na story\n")
    with pytest.raises(DataError, match="unsupported"):
        read_documents(str(path))


def test_split_is_contiguous_ordered_and_disjoint_by_document(stories, tokenizer):
    docs = stories[:20]
    splits = split_documents(docs, tokenizer, val_frac=0.1, test_frac=0.2)
    assert splits.n_docs == (14, 2, 4)
    # Train is the head of the file, val the next block, test the tail: each stream is exactly the
    # tokenization of its own contiguous run of documents, so no document is in two splits.
    torch.testing.assert_close(splits.train, tokenize_documents(docs[:14], tokenizer), rtol=0, atol=0)
    torch.testing.assert_close(splits.val, tokenize_documents(docs[14:16], tokenizer), rtol=0, atol=0)
    torch.testing.assert_close(splits.test, tokenize_documents(docs[16:], tokenizer), rtol=0, atol=0)
    # ... and together they are the whole text: nothing dropped, nothing repeated.
    whole = torch.cat([splits.train, splits.val, splits.test])
    torch.testing.assert_close(whole, tokenize_documents(docs, tokenizer), rtol=0, atol=0)
    assert splits.summary() == {"documents": {"train": 14, "val": 2, "test": 4},
                                "tokens": {"train": len(splits.train), "val": len(splits.val),
                                           "test": len(splits.test)}}


def test_every_document_is_marked_once(stories, tokenizer):
    # The demo tokenizer adds BOS, so each document starts with BOS and no EOS is appended.
    docs = stories[:5]
    stream = tokenize_documents(docs, tokenizer)
    assert (stream == tokenizer.bos_token_id).sum().item() == len(docs)
    assert stream[0].item() == tokenizer.bos_token_id
    assert (stream == tokenizer.eos_token_id).sum().item() == 0


def test_too_few_documents_for_three_splits_is_a_data_error(stories, tokenizer):
    with pytest.raises(DataError, match="too few"):
        split_documents(stories[:2], tokenizer, 0.05, 0.1)


def splits_of(train: int, val: int, test: int) -> Splits:
    return Splits(torch.arange(train), torch.arange(val), torch.arange(test), (1, 1, 1))


@pytest.mark.parametrize("short", ["train", "val", "test"])
def test_check_lengths_names_the_split_shorter_than_one_window(short):
    sizes = {"train": 100, "val": 100, "test": 100, short: 10}
    with pytest.raises(DataError, match=f"the {short} split has 10 tokens"):
        check_lengths(splits_of(**sizes), seq_len=32)


def test_held_out_splits_need_exactly_one_window():
    check_lengths(splits_of(100, 32, 32), seq_len=32)  # one full window each: enough
    with pytest.raises(DataError, match="val"):
        check_lengths(splits_of(100, 31, 32), seq_len=32)


def test_train_batch_is_a_pure_function_of_seed_and_step():
    stream = torch.arange(1000)
    a = train_batch(stream, 4, 16, seed=3, step=7)
    torch.rand(5)  # whatever else draws from the global RNG in between must not matter
    b = train_batch(stream, 4, 16, seed=3, step=7)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, train_batch(stream, 4, 16, seed=3, step=8))
    assert not torch.equal(a, train_batch(stream, 4, 16, seed=4, step=7))
    # It must not consume the global RNG either, or a resumed run would drift from an unbroken one.
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    train_batch(stream, 4, 16, seed=3, step=7)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_train_batch_rows_are_windows_of_the_stream():
    stream = torch.arange(100)
    x = train_batch(stream, 8, 10, seed=0, step=0)
    assert x.shape == (8, 10) and x.dtype == torch.long
    # With stream = arange, a window is a run of consecutive ids that stays inside the stream.
    torch.testing.assert_close(x - x[:, :1], torch.arange(10).expand(8, 10), rtol=0, atol=0)
    assert x.min() >= 0 and x.max() <= 99
    # A stream of exactly one window has one possible batch row.
    torch.testing.assert_close(train_batch(torch.arange(10), 3, 10, 0, 0), torch.arange(10).expand(3, 10),
                               rtol=0, atol=0)


def test_eval_windows_are_consecutive_and_non_overlapping():
    stream = torch.arange(11)
    w = eval_windows(stream, 3)
    torch.testing.assert_close(w, torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]]), rtol=0, atol=0)
    # Every token up to the dropped tail is scored exactly once, in order.
    torch.testing.assert_close(w.flatten(), stream[:9], rtol=0, atol=0)
    torch.testing.assert_close(eval_windows(stream, 3, max_windows=2), w[:2], rtol=0, atol=0)
    assert eval_windows(stream, 3, max_windows=10).shape == (3, 3)
    assert eval_windows(stream, 12).shape == (0, 12)  # shorter than one window: none
