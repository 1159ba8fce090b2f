"""Evaluation texts must be the exact strings the papers tokenize."""

import gzip
import json
import sys

import pytest

from prunellm.data import load_eval_text
from prunellm.errors import PrunellmError


def _raw_lines(path):
    # Independent of the loader: split the decoded bytes on "\n" by hand.
    lines = path.read_bytes().decode("utf-8").split("\n")
    assert lines[-1] == ""  # the file ends with a newline
    return lines[:-1]


def test_wikitext2_test_matches_the_datasets_rows(data_dir):
    lines = _raw_lines(data_dir / "wikitext-2-raw" / "wiki.test.raw")
    # The `wikitext` dataset: a row per line, "\n" kept; whitespace-only lines become "".
    rows = [line + "\n" if line.strip() else "" for line in lines]
    assert len(rows) == 4358  # rows of wikitext-2-raw-v1 "test" on the hub

    text = load_eval_text("wikitext2", data_dir=data_dir)

    assert text == "\n\n".join(rows)
    assert len(text) == sum(map(len, rows)) + 2 * (len(rows) - 1) == 1_294_336
    assert text.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is an English film")
    # The raw file's " " lines must not survive as rows (a naive line join keeps them).
    assert "\n \n" not in text


def test_wikitext2_reads_the_env_data_dir(data_dir, monkeypatch):
    monkeypatch.setenv("PRUNELLM_DATA_DIR", str(data_dir))
    assert load_eval_text("wikitext2") == load_eval_text("wikitext2", data_dir=data_dir)


def test_ptb_sentences_joined_with_spaces(data_dir):
    for split, name in (("test", "ptb.test.txt"), ("valid", "ptb.valid.txt"), ("validation", "ptb.valid.txt")):
        lines = _raw_lines(data_dir / "ptb" / name)
        text = load_eval_text("ptb", data_dir=data_dir, split=split)
        assert text == " ".join(line.strip() for line in lines)
        assert "\n" not in text and "  " not in text
    assert load_eval_text("ptb", data_dir=data_dir).startswith("no it was n't black monday but while the new york")


def test_local_txt_is_used_as_is(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("line one\n\n  line two\n", encoding="utf-8")
    assert load_eval_text(str(path)) == "line one\n\n  line two\n"


def test_local_jsonl_joins_text_fields(tmp_path):
    docs = ["first doc", "second\ndoc"]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)) + "\n\n")
    assert load_eval_text(str(path)) == "first doc\n\nsecond\ndoc"
    gz = tmp_path / "docs.json.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert load_eval_text(str(gz)) == "first doc\n\nsecond\ndoc"


def test_bad_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(PrunellmError, match=r"bad\.jsonl:2: .*\"text\""):
        load_eval_text(str(path))
    path.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(PrunellmError, match=r"bad\.jsonl:2: not valid JSON"):
        load_eval_text(str(path))


def test_c4_from_local_validation_shard(tmp_path):
    shard = tmp_path / "c4" / "c4-validation.00000-of-00008.json"
    shard.parent.mkdir()
    shard.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("a b", "c", "d e")))
    # C4 has no test split: the papers evaluate on validation documents joined by spaces.
    assert load_eval_text("c4", data_dir=tmp_path) == "a b c d e"


def test_unknown_name_lists_known_ones(tmp_path):
    with pytest.raises(PrunellmError, match="wikitext2, ptb, c4") as err:
        load_eval_text(str(tmp_path / "nope"))
    assert "\n" not in str(err.value)
    with pytest.raises(PrunellmError, match="not a file"):
        load_eval_text(str(tmp_path))
    with pytest.raises(PrunellmError, match="unknown split"):
        load_eval_text("ptb", data_dir=tmp_path, split="dev")


def test_missing_local_and_no_datasets_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails
    with pytest.raises(PrunellmError) as err:
        load_eval_text("c4", data_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "c4") in message and "`datasets`" in message and "\n" not in message

    monkeypatch.delenv("PRUNELLM_DATA_DIR", raising=False)
    with pytest.raises(PrunellmError, match="PRUNELLM_DATA_DIR unset"):
        load_eval_text("wikitext2")


def test_hub_fallback_when_no_local_file(tmp_path, monkeypatch):
    calls = []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return {"text": ["", " = A = \n", "", " body \n"]}

    monkeypatch.setitem(sys.modules, "datasets", type(sys)("datasets"))
    monkeypatch.setattr(sys.modules["datasets"], "load_dataset", load_dataset, raising=False)
    text = load_eval_text("wikitext2", data_dir=tmp_path, split="valid")
    assert calls == [("wikitext", "wikitext-2-raw-v1", "validation")]
    assert text == "\n\n = A = \n\n\n\n\n body \n"


def test_hub_failure_reason_in_error(tmp_path, monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub\nmore detail")

    monkeypatch.setitem(sys.modules, "datasets", type(sys)("datasets"))
    monkeypatch.setattr(sys.modules["datasets"], "load_dataset", load_dataset, raising=False)
    with pytest.raises(PrunellmError, match=r"hub failed \(ConnectionError: Couldn't reach") as err:
        load_eval_text("wikitext2", data_dir=tmp_path)
    assert "\n" not in str(err.value)
