from pathlib import Path

import pytest

from prunellm.cli import main
from tests.model_dirs import make_workspace, sweep_args


@pytest.fixture(scope="session")
def sweep_dir(tmp_path_factory) -> Path:
    """A finished tiny sweep (3 methods x 40%, 70%, 2:4, with a zero-shot task), shared by the report tests."""
    ws = make_workspace(tmp_path_factory.mktemp("report"))
    out = Path(ws["root"]) / "sweep"
    assert main(sweep_args(ws, out, "--methods", "magnitude,wanda,sparsegpt", "--sparsities", "0.4,0.7",
                           "--nm", "2:4", "--tasks", "prunellm_basics")) == 0
    return out
