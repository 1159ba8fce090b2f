"""Calibration from any source: files, dataset directories, hub ids, chat records and data given
from Python all become one token stream, cut by the same seeded windows."""

import json
import random

import pytest
import torch

from prunellm.compression import CalibrationConfig
from prunellm.data import load_calibration
from prunellm.data.corpora import ptb_parquet_url
from prunellm.data.text import read_text_file
from prunellm.data.tokenize import encode
from prunellm.errors import PrunellmError
from tests.tiny_models import word_tokenizer

datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

WORDS = [f"w{i}" for i in range(60)] + ["user", "assistant", ":", "hello", "there"]
# A chat template that marks each turn with the tokenizer's special tokens, as real ones do.
TEMPLATE = "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s>\n{% endfor %}"


def _texts(n=40, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS[:60]) for _ in range(12)) for _ in range(n)]


def _chats(n=30, seed=1):
    rng = random.Random(seed)
    return [[{"role": "user", "content": " ".join(rng.choice(WORDS[:60]) for _ in range(5))},
             {"role": "assistant", "content": " ".join(rng.choice(WORDS[:60]) for _ in range(7))}] for _ in range(n)]


def _reference_windows(ids, num_samples, length, seed):
    random.seed(seed)
    starts = [random.randint(0, len(ids) - length - 1) for _ in range(num_samples)]
    return torch.stack([ids[i : i + length] for i in starts])


@pytest.fixture(scope="module")
def tokenizer():
    tok = word_tokenizer(WORDS)
    tok.chat_template = TEMPLATE
    return tok


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# Every way to hold the same rows of a "text" column (plus an id column that is never read).
def _jsonl(tmp_path, rows):
    return str(_write_jsonl(tmp_path / "rows.jsonl", rows))


def _json_array(tmp_path, rows):
    (tmp_path / "rows.json").write_text(json.dumps(rows), encoding="utf-8")
    return str(tmp_path / "rows.json")


def _csv(tmp_path, rows):
    datasets.Dataset.from_list(rows).to_csv(tmp_path / "rows.csv", index=False)
    return str(tmp_path / "rows.csv")


def _parquet(tmp_path, rows):
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    return str(tmp_path / "rows.parquet")


def _saved_dataset(tmp_path, rows):
    datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "saved")
    return str(tmp_path / "saved")


def _saved_dataset_dict(tmp_path, rows):
    other = [{"id": 0, "text": "w1 w2 w3"}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(other)}).save_to_disk(tmp_path / "saved-dict")
    return str(tmp_path / "saved-dict")


def _dataset(tmp_path, rows):
    return datasets.Dataset.from_list(rows)


def _strings(tmp_path, rows):
    return [row["text"] for row in rows]


SOURCES = {"jsonl": _jsonl, "json array": _json_array, "csv": _csv, "parquet": _parquet,
           "save_to_disk": _saved_dataset, "DatasetDict.save_to_disk": _saved_dataset_dict,
           "Dataset": _dataset, "list of strings": _strings}


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_every_source_of_the_same_rows_gives_the_jsonl_windows(kind, tmp_path, tokenizer):
    rows = [{"id": i, "text": text} for i, text in enumerate(_texts())]
    source = SOURCES[kind](tmp_path, rows)
    windows = load_calibration(source, tokenizer, num_samples=6, seqlen=24, seed=2)
    # The rule JSON-lines files always had: "text" fields joined with a blank line, tokenized once.
    ids = encode("\n\n".join(row["text"] for row in rows), tokenizer)
    assert torch.equal(windows, _reference_windows(ids, 6, 24, seed=2))


def test_a_directory_of_data_files_goes_through_load_dataset(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # not the user's cache
    texts = _texts()
    _write_jsonl((tmp_path / "data").mkdir() or tmp_path / "data" / "train.jsonl", [{"text": t} for t in texts])
    windows = load_calibration(str(tmp_path / "data"), tokenizer, num_samples=3, seqlen=20, seed=4)
    assert torch.equal(windows, _reference_windows(encode("\n\n".join(texts), tokenizer), 3, 20, seed=4))


def test_a_jsonl_file_still_gives_exactly_what_it_gave(tmp_path, smollm2_tokenizer):
    # Real tokenizer (the blank lines between records are tokens): the old reader's string, same windows.
    path = _write_jsonl(tmp_path / "old.jsonl", [{"text": t, "meta": 1} for t in _texts(30)])
    windows = load_calibration(str(path), smollm2_tokenizer, num_samples=4, seqlen=64, seed=1)
    ids = encode(read_text_file(path), smollm2_tokenizer)
    assert torch.equal(windows, _reference_windows(ids, 4, 64, seed=1))


def test_chat_records_go_through_the_chat_template(tmp_path, tokenizer):
    chats = _chats()
    path = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in chats])
    windows = load_calibration(str(path), tokenizer, num_samples=5, seqlen=32, seed=0)  # "messages" found alone
    rendered = [tokenizer.apply_chat_template(c, tokenize=False) for c in chats]
    ids = encode("\n\n".join(rendered), tokenizer)
    assert torch.equal(windows, _reference_windows(ids, 5, 32, seed=0))
    # The template's special-token strings come back as the special ids, turn after turn.
    assert (ids == tokenizer.eos_token_id).sum() == 2 * len(chats)
    assert (ids == tokenizer.bos_token_id).sum() == 2 * len(chats)
    # A Dataset of the same records, and the records as a Python list, give the same windows.
    dataset = datasets.Dataset.from_list([{"prompt": "x", "messages": c} for c in chats])
    assert torch.equal(load_calibration(dataset, tokenizer, num_samples=5, seqlen=32, seed=0), windows)
    assert torch.equal(load_calibration(chats, tokenizer, num_samples=5, seqlen=32, seed=0), windows)


def test_real_instruct_tokenizer_renders_its_own_turn_tokens(tmp_path, smollm2_tokenizer):
    if smollm2_tokenizer.chat_template is None:
        pytest.skip("this SmolLM2 tokenizer has no chat template")
    path = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in _chats(20)])
    windows = load_calibration(str(path), smollm2_tokenizer, num_samples=4, seqlen=48, seed=0)
    start = smollm2_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert (windows == start).any()  # one special id, not the string's pieces


def test_a_text_column_wins_and_another_can_be_named(tmp_path, tokenizer):
    chats, texts = _chats(20), _texts(20)
    path = _write_jsonl(tmp_path / "both.jsonl", [{"text": t, "messages": c, "q": t.upper()}
                                                  for t, c in zip(texts, chats)])
    expected = _reference_windows(encode("\n\n".join(texts), tokenizer), 3, 16, seed=0)
    assert torch.equal(load_calibration(str(path), tokenizer, num_samples=3, seqlen=16), expected)
    rendered = "\n\n".join(tokenizer.apply_chat_template(c, tokenize=False) for c in chats)
    named = load_calibration(str(path), tokenizer, num_samples=3, seqlen=16, column="messages")
    assert torch.equal(named, _reference_windows(encode(rendered, tokenizer), 3, 16, seed=0))


def test_split_of_a_saved_dataset_dict(tmp_path, tokenizer):
    rows = [{"text": t} for t in _texts()]
    source = _saved_dataset_dict(tmp_path, rows)
    train = load_calibration(source, tokenizer, num_samples=2, seqlen=8)
    assert torch.equal(train, load_calibration(source, tokenizer, num_samples=2, seqlen=8, split="train"))
    test = load_calibration(source, tokenizer, num_samples=2, seqlen=2, split="test")  # "w1 w2 w3": 3 tokens
    assert set(test.flatten().tolist()) <= set(encode("w1 w2 w3", tokenizer).tolist())


def test_token_ids_are_cut_like_tokenized_text(tokenizer):
    ids = torch.randint(0, len(tokenizer), (5, 40), generator=torch.Generator().manual_seed(0))
    windows = load_calibration(ids, tokenizer, num_samples=4, seqlen=30, seed=3)
    stream = ids.reshape(-1)  # rows one after another
    assert torch.equal(windows, _reference_windows(stream, 4, 30, seed=3))
    as_list = load_calibration(list(ids), tokenizer, num_samples=4, seqlen=30, seed=3)
    assert torch.equal(as_list, windows)
    bos = tokenizer.bos_token_id
    with_bos = load_calibration(ids, tokenizer, num_samples=4, seqlen=30, seed=3, bos_token_id=bos)
    assert (with_bos[:, 0] == bos).all() and torch.equal(with_bos[:, 1:], _reference_windows(stream, 4, 29, seed=3))


def test_hub_id_goes_through_load_dataset(monkeypatch, tokenizer):
    texts = _texts()
    calls = []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{"sentence": t} for t in texts])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    windows = load_calibration("someone/some-data", tokenizer, num_samples=3, seqlen=20, config_name="en",
                               split="train[:100]", column="sentence")
    assert calls == [("someone/some-data", "en", "train[:100]")]
    assert torch.equal(windows, _reference_windows(encode("\n\n".join(texts), tokenizer), 3, 20, seed=0))
    load_calibration("someone/some-data", tokenizer, num_samples=3, seqlen=20, column="sentence")
    assert calls[-1] == ("someone/some-data", None, "train")  # the default split

    def unreachable(path, name=None, split=None, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/some-data' on the Hub\nmore lines")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(PrunellmError, match=r"someone/some-data \[train\] could not be loaded: ConnectionError: Couldn't reach") as err:
        load_calibration("someone/some-data", tokenizer, num_samples=1, seqlen=8)
    assert "\n" not in str(err.value)


def test_ptb_online_reads_the_parquet_conversion(tmp_path, monkeypatch, tokenizer):
    base = "hf://datasets/ptb-text-only/ptb_text_only@refs%2Fconvert%2Fparquet/penn_treebank"
    assert ptb_parquet_url("train") == f"{base}/train/0000.parquet"
    assert ptb_parquet_url("valid") == f"{base}/validation/0000.parquet"
    assert ptb_parquet_url("test") == f"{base}/test/0000.parquet"
    with pytest.raises(PrunellmError, match="unknown split"):
        ptb_parquet_url("dev")
    sentences = [" ".join(s.split()[:8]) for s in _texts()]
    calls = []

    def load_dataset(path, name=None, split=None, data_files=None, **kwargs):
        calls.append((path, name, split, data_files))
        return datasets.Dataset.from_list([{"sentence": s} for s in sentences])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    windows = load_calibration("ptb", tokenizer, num_samples=2, seqlen=16, data_dir=tmp_path)  # no local PTB train
    assert calls == [("parquet", None, "train", f"{base}/train/0000.parquet")]
    assert torch.equal(windows, _reference_windows(encode(" ".join(sentences), tokenizer), 2, 16, seed=0))


def test_config_records_in_memory_data_as_its_size_and_hash(tokenizer):
    texts = _texts()
    described = CalibrationConfig(texts, 4, 32).describe()
    json.dumps(described)  # plain JSON for report.json
    assert described["source"]["rows"] == len(texts)
    assert described == CalibrationConfig(list(texts), 4, 32).describe()
    assert described != CalibrationConfig(texts[:-1], 4, 32).describe()
    tokens = CalibrationConfig(torch.arange(100).reshape(2, 50)).describe()["source"]
    assert tokens["tokens"] == 100 and len(tokens["sha256"]) == 64
    dataset = CalibrationConfig(datasets.Dataset.from_list([{"text": t} for t in texts])).describe()["source"]
    assert dataset["rows"] == len(texts) and dataset["fingerprint"]
    # A named source records what it always recorded: no new keys for options left unset.
    assert CalibrationConfig("wikitext2").describe() == {"source": "wikitext2", "num_samples": 128, "seqlen": 2048,
                                                         "seed": 0, "data_dir": None}
    assert CalibrationConfig("a/b", column="q").describe()["column"] == "q"


def _file(name, content):
    """A maker of a file under the test's directory with this content (str or bytes)."""
    def make(tmp_path):
        path = tmp_path / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        return str(path)
    return make


def _empty_parquet(tmp_path):
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    return str(tmp_path / "empty.parquet")


BAD = {
    "missing column": (lambda p: _jsonl(p, [{"text": "w1"}]), {"column": "prompt"},
                       "column 'prompt' not found in .*rows.jsonl; its columns: text"),
    "no text or messages column": (lambda p: _parquet(p, [{"q": "w1", "a": "w2"}]), {},
                                   'no "text" or "messages" column.*--calib-column.*q, a'),
    "empty dataset": (_empty_parquet, {}, r"empty\.parquet is empty \(0 rows\)"),
    "empty list": (lambda p: [], {}, "calibration data given is empty"),
    "split not found": (lambda p: _saved_dataset_dict(p, [{"text": "w1"}]), {"split": "validation"},
                        "split 'validation' not found in .*saved-dict; its splits: (train, test|test, train)"),
    "split of a file": (lambda p: _jsonl(p, [{"text": "w1"}]), {"split": "train"}, "split do not apply"),
    "column of a text file": (_file("a.txt", "w1 w2"),
                              {"column": "text"}, "column do not apply"),
    "column of a corpus": (lambda p: "wikitext2", {"column": "text"}, "column do not apply"),
    "unknown file type": (_file("x.bin", b"\xff\xfe\x00\x81"), {},
                          "not UTF-8 text, and not a known data file"),
    "missing file": (lambda p: str(p / "nope.parquet"), {}, "unknown dataset .*nope.parquet.*wikitext2, ptb, c4"),
    "bare name is no hub id": (lambda p: "wikitext9", {}, "unknown dataset 'wikitext9'"),
    "a record that is no object": (lambda p: str(_write_jsonl(p / "l.jsonl", [{"text": "w1"}, ["w2"]])), {},
                                   "line 2: expected a JSON object"),
    "a row with a number": (lambda p: _jsonl(p, [{"text": "w1"}, {"text": 3}]), {},
                            "column 'text': row 1 is int, expected text"),
    "bad JSON": (_file("b.jsonl", '{"text": "w1"}\n{oops\n'), {},
                 r"b\.jsonl:2: not valid JSON"),
    "float token ids": (lambda p: torch.rand(2, 10), {}, "integer tensors"),
    "token ids past the vocabulary": (lambda p: torch.full((2, 10), 10_000), {}, "outside the tokenizer's vocabulary"),
    "streamed dataset": (lambda p: datasets.Dataset.from_list([{"text": "w1"}]).to_iterable_dataset(), {},
                         "streamed .*cannot be sampled"),
    "some other object": (lambda p: {"text": "w1"}, {}, "calibration source of type dict"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sources_are_one_clear_line(case, tmp_path, tokenizer):
    make, options, message = BAD[case]
    with pytest.raises(PrunellmError, match=message) as err:
        load_calibration(make(tmp_path), tokenizer, num_samples=1, seqlen=4, **options)
    assert "\n" not in str(err.value)


def test_chat_records_need_a_chat_template(tmp_path):
    plain = word_tokenizer(WORDS)
    assert plain.chat_template is None
    path = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in _chats(3)])
    with pytest.raises(PrunellmError, match="holds chat messages but the tokenizer has no chat template"):
        load_calibration(str(path), plain, num_samples=1, seqlen=4)
    bad = _write_jsonl(tmp_path / "half.jsonl", [{"messages": _chats(1)[0]}, {"messages": [{"role": "user"}]}])
    plain.chat_template = TEMPLATE
    with pytest.raises(PrunellmError, match=r"row 1 is not a list of \{role, content\} messages"):
        load_calibration(str(bad), plain, num_samples=1, seqlen=4)
