"""Shared fixtures: where the data and the golden file live (outside the repo), layer problems."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Without a GPU, Triton kernels run in Triton's interpreter; it must be chosen before triton is
# first imported (tests/solvers/test_triton_sweep.py). prunellm itself never runs them on a CPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def shared_path(env: str, default: Path) -> Path:
    return Path(os.environ.get(env, default))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_path("PRUNELLM_DATA_DIR", REPO.parent / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"no local data directory at {path} (set PRUNELLM_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def golden_cases() -> dict:
    path = shared_path("PRUNELLM_GOLDEN", REPO.parent / "shared" / "golden" / "sparsegpt_reference.pt")
    if not path.is_file():
        pytest.skip(f"no golden file at {path} (set PRUNELLM_GOLDEN)")
    return torch.load(path)


def layer_problem(rows: int = 32, cols: int = 64, tokens: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and the Hessian of correlated inputs with a few outlier features, like an LLM's."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=gen)
    mixing = torch.randn(cols, cols, generator=gen) / cols**0.5 + torch.eye(cols)
    X = torch.randn(tokens, cols, generator=gen) @ mixing  # (T, C)
    X[:, :3] *= 8.0  # outlier input features
    H = 2.0 / tokens * X.t() @ X
    return W, H


@pytest.fixture(scope="session", autouse=True)
def gguf_cache_dir(tmp_path_factory) -> Iterator[Path]:
    """A cache of converted GGUF models of this run's own (io/gguf_cache.py): the first load of
    the real GGUF converts it, later loads (the command-line tests') read the copy. Fresh per run,
    so that `smollm2` below is a conversion and tests/io/test_gguf_cache.py compares the two."""
    path = tmp_path_factory.mktemp("gguf-cache")
    previous = os.environ.get("PRUNELLM_CACHE_DIR")
    os.environ["PRUNELLM_CACHE_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("PRUNELLM_CACHE_DIR", None)
    else:
        os.environ["PRUNELLM_CACHE_DIR"] = previous
    shutil.rmtree(path, ignore_errors=True)  # 540 MB of float32 SmolLM2


@pytest.fixture(scope="session")
def smollm2_load() -> dict:
    """The real SmolLM2-135M, loaded once per run (~35 s: converted from its GGUF and cached):
    {"model", "tokenizer", "converted": whether this load converted the GGUF}."""
    from prunellm.errors import PrunellmError
    from prunellm.io import default_model_path, load_model
    from prunellm.io.gguf_cache import lookup

    try:
        path = default_model_path()
    except PrunellmError as error:
        pytest.skip(str(error))
    converted = lookup(path) is None
    model, tokenizer = load_model()
    return {"model": model, "tokenizer": tokenizer, "converted": converted}


@pytest.fixture(scope="session")
def smollm2(smollm2_load):
    """The real SmolLM2-135M (model, tokenizer). Do not modify it: tests that prune take a
    copy.deepcopy."""
    return smollm2_load["model"], smollm2_load["tokenizer"]
