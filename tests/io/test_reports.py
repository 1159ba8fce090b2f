from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prunellm.io import library_versions, write_json_atomic


def test_write_json_atomic_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_json_atomic(path, {"ppl": np.float64(20.5), "n": torch.tensor(3), "dtype": torch.float32})
    write_json_atomic(path, {"ppl": np.float64(21.5), "n": torch.tensor(4), "dtype": torch.bfloat16})
    assert json.loads(path.read_text()) == {"ppl": 21.5, "n": 4, "dtype": "torch.bfloat16"}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_write_json_atomic_unserializable_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_json_atomic(path, {"run": 1})
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json_atomic(path, {"weights": torch.zeros(3)})
    assert json.loads(path.read_text()) == {"run": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_library_versions() -> None:
    versions = library_versions()
    assert {"python", "torch", "transformers", "prunellm", "numpy", "gguf"} <= versions.keys()
    assert versions["torch"] == torch.__version__
    assert ("cuda_device" in versions) == torch.cuda.is_available()
    assert versions["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # e.g. AVX2, AVX512
    assert all(isinstance(value, str) and value for value in versions.values())
    json.dumps(versions)
