"""Calibration windows: SparseGPT's random windows, reproducibly, with clear errors."""

import json
import random
import sys

import pytest
import torch

from prunellm.data import load_calibration
from prunellm.errors import PrunellmError


@pytest.fixture(scope="module")
def small_text(data_dir, tmp_path_factory):
    # The first ~40 kB of WikiText-2 *validation* (tokenized): real text, quick to tokenize.
    text = (data_dir / "wikitext-2-tokenized" / "valid.txt").read_text(encoding="utf-8")[:40_000]
    path = tmp_path_factory.mktemp("calib") / "valid_head.txt"
    path.write_text(text, encoding="utf-8")
    return path


def _reference_windows(ids, num_samples, length, seed):
    # The reference's own stream: the global generator seeded with random.seed.
    random.seed(seed)
    starts = [random.randint(0, len(ids) - length - 1) for _ in range(num_samples)]
    return torch.stack([ids[i : i + length] for i in starts])


def _ids(path, tokenizer):
    ids = tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    return torch.tensor(ids)


def test_windows_are_the_reference_slices(small_text, smollm2_tokenizer):
    windows = load_calibration(str(small_text), smollm2_tokenizer, num_samples=8, seqlen=128, seed=3)
    assert windows.shape == (8, 128) and windows.dtype == torch.long
    ids = _ids(small_text, smollm2_tokenizer)
    # Each window is a contiguous slice of the tokenized text, at the reference's starts.
    assert torch.equal(windows, _reference_windows(ids, 8, 128, seed=3))


def test_seed_determines_windows(small_text, smollm2_tokenizer):
    kwargs = dict(num_samples=4, seqlen=64)
    a = load_calibration(str(small_text), smollm2_tokenizer, seed=0, **kwargs)
    b = load_calibration(str(small_text), smollm2_tokenizer, seed=0, **kwargs)
    c = load_calibration(str(small_text), smollm2_tokenizer, seed=1, **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    state = random.getstate()
    load_calibration(str(small_text), smollm2_tokenizer, seed=5, **kwargs)
    assert random.getstate() == state  # the global generator is left alone


def test_bos_starts_every_window(small_text, smollm2_tokenizer):
    bos = smollm2_tokenizer.bos_token_id
    windows = load_calibration(str(small_text), smollm2_tokenizer, num_samples=6, seqlen=64, seed=0, bos_token_id=bos)
    assert windows.shape == (6, 64)
    assert (windows[:, 0] == bos).all()
    ids = _ids(small_text, smollm2_tokenizer)
    assert torch.equal(windows[:, 1:], _reference_windows(ids, 6, 63, seed=0))


def test_real_local_calibration_file(data_dir, smollm2_tokenizer):
    path = data_dir / "wikitext-2-tokenized" / "valid.txt"
    windows = load_calibration(str(path), smollm2_tokenizer, num_samples=4, seqlen=256, seed=0)
    assert windows.shape == (4, 256)
    assert len({tuple(w.tolist()) for w in windows}) == 4


def test_wikitext2_train_is_joined_with_spaces_via_hub(tmp_path, monkeypatch, smollm2_tokenizer):
    rows = ["", " = Title = \n", ""] + [f" sentence number {i} of the article .\n" for i in range(60)]

    def load_dataset(path, name=None, split=None, **kwargs):
        assert (path, name, split) == ("wikitext", "wikitext-2-raw-v1", "train")
        return {"text": rows}

    monkeypatch.setitem(sys.modules, "datasets", type(sys)("datasets"))
    monkeypatch.setattr(sys.modules["datasets"], "load_dataset", load_dataset, raising=False)
    windows = load_calibration("wikitext2", smollm2_tokenizer, num_samples=3, seqlen=32, data_dir=tmp_path)
    ids = torch.tensor(smollm2_tokenizer(" ".join(rows), add_special_tokens=False)["input_ids"])
    assert torch.equal(windows, _reference_windows(ids, 3, 32, seed=0))


def test_missing_wikitext2_train_names_the_path(data_dir, monkeypatch, smollm2_tokenizer):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails
    with pytest.raises(PrunellmError) as err:
        load_calibration("wikitext2", smollm2_tokenizer, num_samples=2, seqlen=16, data_dir=data_dir)
    message = str(err.value)
    assert str(data_dir / "wikitext-2-raw" / "wiki.train.raw") in message
    assert "datasets" in message and "\n" not in message


def test_c4_windows_come_from_one_long_document(tmp_path, monkeypatch, smollm2_tokenizer):
    docs = ["tiny", "short one", "alpha " * 100, "beta gamma " * 80]
    shard = tmp_path / "c4" / "c4-train.00000-of-01024.json"
    shard.parent.mkdir()
    shard.write_text("".join(json.dumps({"text": d, "url": "x"}) + "\n" for d in docs))
    windows = load_calibration("c4", smollm2_tokenizer, num_samples=6, seqlen=48, seed=0, data_dir=tmp_path)
    assert windows.shape == (6, 48)
    doc_ids = [smollm2_tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]

    def inside_one_document(window):
        w = window.tolist()
        return any(ids[i : i + len(w)] == w for ids in doc_ids for i in range(len(ids) - len(w) + 1))

    assert all(inside_one_document(w) for w in windows)
    monkeypatch.setattr("prunellm.data.calibration._MAX_DOCUMENT_DRAWS", 50)
    with pytest.raises(PrunellmError, match="no document longer than 200 tokens in 50 random draws"):
        load_calibration("c4", smollm2_tokenizer, num_samples=1, seqlen=200, data_dir=tmp_path)


def test_text_shorter_than_a_window(tmp_path, smollm2_tokenizer):
    path = tmp_path / "short.txt"
    path.write_text("hello world")
    with pytest.raises(PrunellmError, match=r"short\.txt' has 2 tokens.*seqlen 64"):
        load_calibration(str(path), smollm2_tokenizer, num_samples=1, seqlen=64)


def test_bad_arguments(tmp_path, smollm2_tokenizer):
    with pytest.raises(PrunellmError, match="num_samples"):
        load_calibration("ptb", smollm2_tokenizer, num_samples=0, data_dir=tmp_path)
    with pytest.raises(PrunellmError, match="seqlen"):
        load_calibration("ptb", smollm2_tokenizer, seqlen=1, data_dir=tmp_path)
    with pytest.raises(PrunellmError, match="wikitext2, ptb, c4"):
        load_calibration(str(tmp_path / "no_such_corpus"), smollm2_tokenizer)
