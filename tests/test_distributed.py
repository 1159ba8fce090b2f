"""Several processes (torchrun, Gloo on CPU) give the single-process result within float rounding."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from prunellm.distributed import Group
from prunellm.io import load_model
from prunellm.methods import build_method
from prunellm.pipeline import CalibrationConfig, prune
from prunellm.walker import WalkConfig
from tests.conftest import REPO
from tests.model_dirs import calibration_text, model_dir, weights


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("distributed")
    source, calib = model_dir(root, "llama"), calibration_text(root)
    model, tokenizer = load_model(source)
    prune(model, tokenizer, build_method("sparsegpt", sparsity=0.5), CalibrationConfig(str(calib), 4, 32),
          WalkConfig(progress=False))
    return {"model": str(source), "calib": str(calib), "single": dict(model.state_dict())}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "in-memory"])
def test_two_gloo_processes_match_one_process(workspace, tmp_path, stream):
    out = tmp_path / "out"
    args = ["prune", workspace["model"], "--calib", workspace["calib"], "--num-samples", "4", "--seqlen", "32",
            "--method", "sparsegpt", "--sparsity", "0.5", "--device", "cpu", "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "prunellm.cli", *args, *(["--stream"] if stream else [])],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("saved to") == 1  # the first process saves and reports, the other stays quiet

    single, several = workspace["single"], weights(out)
    assert several.keys() <= single.keys() and len(several) >= len(single) - 1  # a tied head is saved once
    for name, tensor in several.items():
        # The Hessians are sums in another order: equal up to float rounding, the same weights pruned.
        assert torch.equal(tensor == 0, single[name] == 0), name
        torch.testing.assert_close(tensor, single[name], rtol=1e-4, atol=1e-5, msg=name)


def test_layers_are_shared_out_by_cost_the_same_way_on_every_rank():
    costs = [9.0, 1.0, 1.0, 4.0, 4.0, 1.0]
    owners = [Group(rank, 2, torch.device("cpu")).owners(costs) for rank in range(2)]
    assert owners[0] == owners[1]  # every rank agrees without talking
    load = [sum(c for c, o in zip(costs, owners[0]) if o == r) for r in range(2)]
    assert sorted(load) == [10.0, 10.0]
    assert Group(0, 3, torch.device("cpu")).owners([1.0]) == [0]
