"""Zero-shot accuracy through the real lm-evaluation-harness: the shipped offline task, a user's
local JSON task checked against our own log-likelihood scoring, the real SmolLM2, and the CLI."""

import copy
import json
from pathlib import Path

import pytest
import torch

from prunellm.cli import main
from prunellm.errors import PrunellmError
from prunellm.eval.zero_shot import BUILTIN_TASK_DIR, TaskSuite, ZeroShotConfig
from prunellm.methods import build_method
from prunellm.pipeline import CalibrationConfig, prune
from prunellm.walker import WalkConfig
from tests.model_dirs import WORDS, model_dir
from tests.tiny_models import tiny_model, word_tokenizer

ITEMS = BUILTIN_TASK_DIR / "prunellm_basics" / "items.jsonl"


def _items() -> list[dict]:
    return [json.loads(line) for line in ITEMS.read_text().splitlines() if line.strip()]


def test_shipped_task_items_are_well_formed():
    items = _items()
    assert len(items) == 40
    assert len({item["question"] for item in items}) == 40
    for item in items:
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4
        assert 0 <= item["answer"] < 4
    # Every position holds the answer equally often: no position bias to exploit.
    assert sorted(sum(item["answer"] == k for item in items) for k in range(4)) == [10, 10, 10, 10]


def test_bad_task_options_are_refused(tmp_path):
    # (An unknown task name is checked through the CLI below: it indexes all of lm-eval's tasks, seconds.)
    with pytest.raises(PrunellmError, match="task directory not found"):
        TaskSuite.load(ZeroShotConfig(tasks=("prunellm_basics",), task_dirs=(str(tmp_path / "missing"),)))
    with pytest.raises(PrunellmError, match="limit must be at least 1"):
        ZeroShotConfig(tasks=("prunellm_basics",), limit=0)


def test_task_whose_data_is_missing_is_refused_when_loaded(tmp_path):
    (tmp_path / "gone.yaml").write_text(
        f"task: gone\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'nowhere.jsonl'}\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: q\ndoc_to_target: 0\ndoc_to_choice: [a, b]\n")
    with pytest.raises(PrunellmError, match="cannot load task gone: FileNotFoundError"):
        TaskSuite.load(ZeroShotConfig(tasks=("gone",), task_dirs=(str(tmp_path),)))


@pytest.mark.parametrize("bug", [AttributeError, TypeError, ImportError])
def test_a_bug_while_loading_tasks_is_not_blamed_on_the_task(bug, monkeypatch):
    from lm_eval.tasks import TaskManager

    def broken(self, *args, **kwargs):
        raise bug("an API that moved")

    monkeypatch.setattr(TaskManager, "load", broken)
    with pytest.raises(bug, match="an API that moved"):  # a traceback (with --debug), not "cannot load task"
        TaskSuite.load(ZeroShotConfig(tasks=("prunellm_basics",)))


@pytest.fixture(scope="module")
def local_task(tmp_path_factory) -> Path:
    """A user's task the standard lm-eval way: `dataset_path: json` on a local JSONL file."""
    root = tmp_path_factory.mktemp("tasks")
    items = [{"q": f"w{i} w{i + 1} w{i + 2}", "options": [f"w{i + 3}", f"w{i + 7}", f"w{i + 11}"], "label": i % 3}
             for i in range(12)]
    (root / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    (root / "tiny_words.yaml").write_text(
        "task: tiny_words\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {root / 'items.jsonl'}\noutput_type: multiple_choice\ntest_split: test\n"
        'doc_to_text: "{{q}}"\ndoc_to_target: label\ndoc_to_choice: "{{options}}"\nmetric_list:\n  - metric: acc\n')
    return root


def test_a_task_file_added_to_a_directory_since_its_last_index_is_found(local_task, tmp_path):
    """lm-eval's index is kept per process, keyed by each directory's modification time."""
    import shutil

    tasks = shutil.copytree(local_task, tmp_path / "tasks")
    assert TaskSuite.load(ZeroShotConfig(tasks=("tiny_words",), task_dirs=(str(tasks),)))
    yaml = (tasks / "tiny_words.yaml").read_text().replace("task: tiny_words", "task: tiny_words_again")
    (tasks / "tiny_words_again.yaml").write_text(yaml)
    suite = TaskSuite.load(ZeroShotConfig(tasks=("tiny_words_again",), task_dirs=(str(tasks),)))
    assert "tiny_words_again" in suite.manager.all_tasks
    assert len(suite.manager.all_tasks) < 100  # found by indexing the directory again, not lm-eval's 15k


def _our_accuracy(model, tokenizer, items) -> float:
    """Log-likelihood multiple choice computed here, independently of lm-eval: the choice whose
    tokens after the question are most likely wins."""
    correct = 0
    for item in items:
        context = tokenizer(item["q"])["input_ids"]
        scores = []
        for option in item["options"]:
            ids = tokenizer(item["q"] + " " + option)["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)  # (T, V)
            scores.append(sum(float(logits[t - 1, ids[t]]) for t in range(len(context), len(ids))))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == item["label"])
    return correct / len(items)


def test_local_json_task_matches_our_own_scoring(local_task):
    model, tokenizer = tiny_model("llama"), word_tokenizer(WORDS)
    suite = TaskSuite.load(ZeroShotConfig(tasks=("tiny_words",), task_dirs=(str(local_task),)))
    scores = suite.evaluate(model, tokenizer)
    items = [json.loads(line) for line in (local_task / "items.jsonl").read_text().splitlines()]
    assert scores["tiny_words"].samples == 12
    assert scores["tiny_words"].metrics["acc"] == pytest.approx(_our_accuracy(model, tokenizer, items))
    # The model in memory is what is scored: change it, the accuracy follows our own scoring of it.
    with torch.no_grad():
        model.lm_head.weight.mul_(-3.0)
    again = suite.evaluate(model, tokenizer)["tiny_words"].metrics["acc"]
    assert again == pytest.approx(_our_accuracy(model, tokenizer, items))


def test_smollm2_knows_basics_and_heavy_magnitude_pruning_forgets_them(smollm2, data_dir):
    model, tokenizer = smollm2
    pad_before = tokenizer.pad_token_id
    suite = TaskSuite.load(ZeroShotConfig(tasks=("prunellm_basics",)))
    dense = suite.evaluate(model, tokenizer)["prunellm_basics"]
    pruned = copy.deepcopy(model)
    prune(pruned, tokenizer, build_method("magnitude", sparsity=0.8),
          CalibrationConfig(str(data_dir / "wikitext-2-tokenized" / "valid.txt"), num_samples=1, seqlen=16),
          WalkConfig(progress=False, layer_errors=False))
    heavy = suite.evaluate(pruned, tokenizer)["prunellm_basics"]
    print(f"prunellm_basics acc: dense {dense.metrics['acc']:.3f}, magnitude 80% {heavy.metrics['acc']:.3f}")
    assert dense.samples == heavy.samples == len(_items())  # every item scored, none dropped
    for score in (dense, heavy):
        assert 0.0 <= score.metrics["acc"] <= 1.0 and 0.0 <= score.metrics["acc_norm"] <= 1.0
        assert score.stderr["acc"] > 0
    # Four choices: chance is 0.25. SmolLM2 gets these (measured 0.75); 80% magnitude loses them (0.275).
    assert dense.metrics["acc"] >= 0.6
    assert heavy.metrics["acc"] <= dense.metrics["acc"] - 0.25
    assert tokenizer.pad_token_id == pad_before  # lm-eval worked on a copy of the tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return model_dir(tmp_path_factory.mktemp("tiny"), "llama")


def test_cli_eval_tasks_prints_and_writes_the_table(tiny_dir, local_task, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["eval", str(tiny_dir), "--tasks", "prunellm_basics,tiny_words", "--task-dir", str(local_task),
                 "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "perplexity" not in printed  # --tasks alone: no default perplexity run
    lines = [line.split() for line in printed.splitlines()]
    assert ["task", "metric", "value", "stderr", "items"] in lines
    assert any(line[:2] == ["prunellm_basics", "acc"] and line[-1] == "40" for line in lines)
    assert any(line[:2] == ["tiny_words", "acc"] and line[-1] == "12" for line in lines)
    record = json.loads(out.read_text())
    scores = record["zero_shot"]["scores"]
    assert scores["prunellm_basics"]["samples"] == 40 and 0 <= scores["prunellm_basics"]["metrics"]["acc"] <= 1
    assert record["versions"]["lm_eval"]


def test_cli_eval_unknown_task_is_one_line_before_loading(tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["eval", str(tmp_path / "no-model-here"), "--tasks", "nope_task", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: unknown lm-eval task 'nope_task'") and len(err.splitlines()) == 1
    assert not out.exists()
