"""Replaying a run: report.json records the command line and the resolved settings, and
`prunellm prune --recipe` (a report, its directory, or a YAML/JSON file of settings) runs them
again to the same weights; flags beside --recipe override it; bad recipes are one line."""

import dataclasses
import json
import sys

import pytest
import torch

from prunellm import recipe
from prunellm.cli import build_parser, main, prune_settings
from prunellm.methods import method_names, option_specs
from prunellm.pipeline import Settings, prepare, settings_record
from tests.model_dirs import make_workspace, weights


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    return make_workspace(tmp_path_factory.mktemp("recipe"))


def prune_args(ws: dict, out, *extra: str) -> list[str]:
    return ["prune", ws["model"], "--calib", ws["text"], "--num-samples", "4", "--seqlen", "32", "--out", str(out), "--format", "hf",
            "--quiet", *extra]


def assert_same_tensors(first, second) -> None:
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys() and a
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def test_a_run_replays_from_its_report_to_the_same_weights(workspace, tmp_path, capsys):
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    # Quantized after the prune, on a grid with groups: every option group takes part.
    args = prune_args(workspace, first, "--sparsity", "0.6", "--bits", "4", "--group-size", "16", "--seed", "3",
                      "--eval", workspace["text"])
    assert main(args) == 0
    report = json.loads((first / "report.json").read_text())
    assert report["command"] == ["prunellm", *args]
    settings = report["settings"]
    assert settings["method"] == "sparsegpt" and settings["calibration"]["seed"] == 3
    # Every option written out as resolved (not only those given), so that a replay builds this method.
    assert settings["options"] == {k: v for k, v in report["method"].items() if k != "method"}
    assert settings["walk"]["device"] == "cpu" and settings["allocation"] == "uniform"
    capsys.readouterr()

    assert main(["prune", "--recipe", str(first / "report.json"), "--out", str(second), "--quiet"]) == 0
    assert "recommended defaults" not in capsys.readouterr().out  # nothing left to fill in
    assert_same_tensors(first, second)
    replayed = json.loads((second / "report.json").read_text())
    assert replayed["perplexity"]["compressed"] == report["perplexity"]["compressed"]
    assert {**replayed["settings"], "output": None} == {**settings, "output": None}
    # A directory names its report.json; the replay's own report replays too.
    assert main(["prune", "--recipe", str(second), "--out", str(third), "--quiet"]) == 0
    assert_same_tensors(first, third)


def test_a_yaml_recipe_runs_as_the_same_flags(workspace, tmp_path):
    pytest.importorskip("yaml")
    flags, from_yaml = tmp_path / "flags", tmp_path / "yaml"
    assert main(prune_args(workspace, flags, "--method", "gptq", "--bits", "3", "--seed", "1")) == 0
    file = tmp_path / "gptq.yaml"
    file.write_text(f"""# fields left out take the defaults of pipeline.Settings
model: {workspace["model"]}
method: gptq
options:
  bits: 3
calibration:
  source: {workspace["text"]}
  num_samples: 4
  seqlen: 32
  seed: 1
output:
  path: {from_yaml}
  format: hf
""")
    assert main(["prune", "--recipe", str(file), "--quiet"]) == 0
    assert_same_tensors(flags, from_yaml)
    assert json.loads((from_yaml / "report.json").read_text())["method"]["bits"] == 3


def _replay(record: dict, tmp_path, *argv: str) -> Settings:
    file = tmp_path / "recipe.json"
    file.write_text(json.dumps({"settings": record}))
    full = ["prune", "--recipe", str(file), *argv]
    args = build_parser().parse_args(full)
    return recipe.replay_settings(file, prune_settings(args), recipe.given_flags(build_parser(), full))


def test_flags_given_beside_a_recipe_override_it_and_only_they_do(tmp_path):
    record = {"model": "m", "method": "sparsegpt", "options": {"sparsity": 0.6, "refine": "alps"},
              "calibration": {"source": "c.txt", "seed": 5, "num_samples": 16},
              "walk": {"device": "cpu", "progress": True}, "output": {"path": "old", "overwrite": True}}
    settings = _replay(record, tmp_path, "--sparsity", "0.7", "--seed", "0", "--out", "new", "--quiet")
    assert settings.options == {"sparsity": 0.7, "refine": "alps"}
    # --seed 0 is the flag's default, but given: it wins over the recipe's 5.
    assert settings.calibration.seed == 0 and settings.calibration.num_samples == 16
    assert settings.calibration.source == "c.txt" and settings.model == "m"
    assert settings.output.path == "new" and settings.walk.device == "cpu"
    # How the run behaves comes from the command line: a replay never overwrites unless asked there.
    assert settings.output.overwrite is False and settings.walk.progress is False
    # Another method drops the recipe's method options; the same one keeps them.
    assert _replay(record, tmp_path, "--method", "gptq").options == {}
    assert _replay(record, tmp_path, "--method", "sparsegpt").options == record["options"]
    assert _replay({**record, "method": "gptq", "options": {"gguf": "q4_0"}}, tmp_path, "--gguf-type",
                   "q8_0").options == {"gguf": "q8_0"}


def test_every_prune_flag_has_its_place_in_a_replay():
    # A new prune flag must say which setting it overrides (recipe.FLAG_SETTINGS), or it is
    # refused beside --recipe rather than silently ignored.
    prune = build_parser()._subparsers._group_actions[0].choices["prune"]
    dests = {action.dest for action in prune._actions if action.dest != "help"}
    placed = set(recipe.FLAG_SETTINGS) | set(recipe.FROM_COMMAND_LINE) | recipe.NOT_SETTINGS | set(option_specs())
    assert dests <= placed, dests - placed
    for path in [*recipe.FLAG_SETTINGS.values(), *recipe.FROM_COMMAND_LINE.values()]:
        assert path in recipe._flatten(Settings()), path


@pytest.mark.parametrize("method", method_names())
def test_the_recorded_settings_rebuild_the_same_job(workspace, tmp_path, method):
    options = {"gptq": {"bits": 4, "group_size": 16}, "sparsegpt": {"nm": "2:4"}}.get(method, {})
    job = prepare(Settings(model=workspace["model"], method=method, options=options))
    record = json.loads(json.dumps(settings_record(job)))  # through JSON, as report.json holds it
    again = prepare(recipe.settings_from_record(record))
    assert again.method.describe() == job.method.describe() and again.allocation == job.allocation
    assert dataclasses.asdict(again.settings.calibration) == dataclasses.asdict(job.settings.calibration)


BAD = {
    "unknown key": ({"settings": {"method": "sparsegpt", "sparsity": 0.5}}, "unknown recipe setting sparsity"),
    "unknown nested key": ({"calibration": {"samples": 4}}, "unknown recipe setting calibration.samples"),
    "wrong type": ({"calibration": {"num_samples": "many"}}, "calibration.num_samples: expected int"),
    "not a mapping": ([1, 2], "expected a mapping"),
    "old report": ({"method": {"method": "sparsegpt"}, "layers": []}, "recorded no settings"),
    "unknown option": ({"method": "gptq", "options": {"sparsity": 0.5}}, "does not take sparsity"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_recipe_is_one_clear_line(workspace, tmp_path, capsys, case):
    content, message = BAD[case]
    file = tmp_path / "recipe.json"
    file.write_text(json.dumps(content))
    out = tmp_path / "out"
    assert main(["prune", "--recipe", str(file), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("case", ["missing", "bad json", "bad yaml", "no pyyaml"])
def test_unreadable_recipes_are_one_clear_line(tmp_path, capsys, monkeypatch, case):
    file = tmp_path / ("recipe.yaml" if "yaml" in case else "recipe.json")
    if case == "bad json":
        file.write_text("{method: gptq")
    elif case != "missing":
        file.write_text("method: [gptq\n")
    if case == "no pyyaml":
        monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` raises ImportError
    elif case == "bad yaml":
        pytest.importorskip("yaml")
    assert main(["prune", "--recipe", str(file), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    expected = {"missing": "no such recipe", "bad json": "is not valid JSON", "bad yaml": "is not valid YAML",
                "no pyyaml": "needs PyYAML"}[case]
    assert expected in err and len(err.splitlines()) == 1, err
