"""Calibration data from anywhere, end to end: a dataset directory, a parquet file, chat records
and data given from Python calibrate the tiny model exactly as the same text in a file does."""

import json
from pathlib import Path

import pytest
import torch

from prunellm.cli import main
from prunellm.compression import CalibrationConfig
from prunellm.data.tokenize import encode
from prunellm.formats import OutputSpec
from prunellm.io import load_tokenizer
from prunellm.pipeline import Settings, prepare, run
from tests.model_dirs import make_workspace, weights

datasets = pytest.importorskip("datasets")

# The paper's SparseGPT (no refinement): quick, and its weights follow the calibration windows.
METHOD = ["--nm", "2:4", "--defaults", "paper", "--num-samples", "4", "--seqlen", "32", "--quiet"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    ws = make_workspace(tmp_path_factory.mktemp("calib-sources"))
    root = Path(ws["root"])
    lines = Path(ws["text"]).read_text().split("\n")
    # The calibration text's lines as dataset rows. The tiny models' word tokenizer drops
    # whitespace, so rows joined with "\n\n" tokenize exactly as the lines joined with "\n".
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"body": line, "n": i} for i, line in enumerate(lines)]),
                          "test": datasets.Dataset.from_list([{"body": "w1 w2", "n": 0}])}).save_to_disk(root / "saved")
    datasets.Dataset.from_list([{"text": line} for line in lines]).to_parquet(root / "rows.parquet")
    chats = [[{"role": "user", "content": line}] for line in lines[:5]]
    (root / "chat.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    out = root / "from-text"
    assert main(["prune", ws["model"], "--calib", ws["text"], *METHOD, "--out", str(out)]) == 0
    other_seed = root / "other-seed"
    assert main(["prune", ws["model"], "--calib", ws["text"], *METHOD, "--seed", "1", "--out", str(other_seed)]) == 0
    assert not _same_weights(weights(out), weights(other_seed))  # the weights do follow the windows
    return {**ws, "lines": lines, "from_text": weights(out)}


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("calib", [["--calib", "{root}/saved", "--calib-split", "train", "--calib-column", "body"],
                                   ["--calib", "{root}/rows.parquet"],
                                   ["--stream", "--calib", "{root}/rows.parquet"]])
def test_datasets_calibrate_as_the_same_text_does(workspace, tmp_path, calib):
    out = tmp_path / "out"
    calib = [arg.format(root=workspace["root"]) for arg in calib]
    assert main(["prune", workspace["model"], *calib, *METHOD, "--out", str(out)]) == 0
    assert _same_weights(weights(out), workspace["from_text"])
    recorded = json.loads((out / "report.json").read_text())["calibration"]
    assert recorded["source"] == calib[calib.index("--calib") + 1]
    assert recorded.get("column") == ("body" if "--calib-column" in calib else None)


def test_python_strings_and_token_ids_calibrate_as_the_text_does(workspace, tmp_path):
    tokenizer = load_tokenizer(workspace["model"])
    ids = encode("\n".join(workspace["lines"]), tokenizer)
    for name, source in {"strings": workspace["lines"], "tokens": ids.reshape(1, -1),
                         "dataset": datasets.Dataset.from_list([{"text": line} for line in workspace["lines"]])}.items():
        settings = Settings(model=workspace["model"], method="sparsegpt", options={"nm": "2:4"}, defaults="paper",
                            calibration=CalibrationConfig(source, num_samples=4, seqlen=32),
                            output=OutputSpec(path=str(tmp_path / name)))
        outcome = run(prepare(settings))
        assert _same_weights(weights(outcome.path), workspace["from_text"]), name
        recorded = json.loads((outcome.path / "report.json").read_text())["calibration"]["source"]
        assert isinstance(recorded, dict) and recorded["type"] in ("records", "tokens", "Dataset")


BAD = {
    "chat without a template": (["--calib", "{root}/chat.jsonl"], "the tokenizer has no chat template"),
    "missing column": (["--calib", "{root}/rows.parquet", "--calib-column", "prompt"],
                       "column 'prompt' not found"),
    "split not found": (["--calib", "{root}/saved", "--calib-split", "validation"],
                        "split 'validation' not found"),
    "split of a file": (["--calib", "{root}/rows.parquet", "--calib-split", "train"], "split do not apply"),
    "missing file": (["--calib", "{root}/nope.jsonl"], "unknown dataset"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_calibration_data_is_one_line_and_writes_nothing(workspace, tmp_path, capsys, case):
    extra, message = BAD[case]
    out = tmp_path / "out"
    code = main(["prune", workspace["model"], *[a.format(root=workspace["root"]) for a in extra], *METHOD,
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("error:") and message in err
    assert len(err.splitlines()) == 1 and not out.exists()
