"""A streamed run killed with SIGKILL, started again with the same command, ends exactly as an
uninterrupted run; a different command is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from prunellm.cli import main
from prunellm.streaming.resume import KILL_AT
from tests.conftest import REPO
from tests.model_dirs import calibration_text, model_dir, report_without_timings


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("resume")
    return {"model": str(model_dir(root, "llama")), "calib": str(calibration_text(root))}


def command(ws: dict, out, *extra: str) -> list[str]:
    return ["prune", ws["model"], "--stream", "--calib", ws["calib"], "--num-samples", "4", "--seqlen", "32",
            "--method", "sparsegpt", "--sparsity", "0.5", "--out", str(out), "--quiet", *extra]


def killed_run(args: list[str], point: str) -> str:
    """The CLI in a child process, killed with SIGKILL at `point` (no cleanup of any kind runs);
    returns what it wrote to stderr."""
    env = {**os.environ, KILL_AT: point, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-m", "prunellm.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    return done.stderr


def test_killed_runs_resume_to_the_same_bytes_and_other_commands_are_refused(workspace, tmp_path, capsys):
    reference = tmp_path / "reference"
    assert main(command(workspace, reference)) == 0

    out = tmp_path / "out"
    state_dir = tmp_path / ".out.resume"
    killed_run(command(workspace, out), "shard:1")  # block 1 written, its progress not yet committed
    state = json.loads((state_dir / "state.json").read_text())
    assert state["next_block"] == 1 and not out.exists()
    assert (state_dir / "out" / "model-00003-of-00005.safetensors").is_file()  # block 1's shard, to be redone

    saved = (state_dir / "state.json").read_bytes()
    capsys.readouterr()
    assert main(command(workspace, out, "--sparsity", "0.6")) == 2  # another command: refused, nothing touched
    error = capsys.readouterr().err.strip()
    assert "method.sparsity: 0.5 there, 0.6 here" in error and len(error.splitlines()) == 1
    assert (state_dir / "state.json").read_bytes() == saved and not out.exists()

    # Writes cut short by a kill leave their temporaries: the next attempt clears them.
    (state_dir / "out" / ".model-00003-of-00005.safetensors.tmp-0badf00d").write_bytes(b"half a shard")
    (state_dir / ".state.json.tmp-0badf00d").write_text("{")
    log = killed_run(command(workspace, out), "block:2")  # killed once the last block is committed
    assert "at block 1" in log  # resumed where the first run stopped, not from the start
    assert not list(state_dir.glob(".*")) and not list((state_dir / "out").glob(".*"))
    assert json.loads((state_dir / "state.json").read_text())["next_block"] == 3
    killed_run(command(workspace, out), "finish")  # killed with the output complete, not yet in place
    assert not out.exists()
    assert main(command(workspace, out)) == 0

    files = sorted(p.name for p in reference.iterdir())
    assert files == sorted(p.name for p in out.iterdir())
    for name in files:
        if name not in ("report.json", "README.md", "prune.log"):  # these name their command and times
            assert (reference / name).read_bytes() == (out / name).read_bytes(), name
    reports = [report_without_timings(directory) for directory in (reference, out)]
    for report in reports:  # the two commands differ in --out only
        assert report.pop("command")[-2] == str(report["settings"]["output"].pop("path"))
    assert reports[0] == reports[1]
    # One log tells the whole story: the killed attempts' lines, then the resumed run's.
    log = (out / "prune.log").read_text()
    assert log.count(f"--out {out} --quiet") >= 3 and "resuming the interrupted run" in log
    assert not state_dir.exists()
