"""Fixtures for data tests: the real SmolLM2 tokenizer. `data_dir` comes from tests/conftest.py."""

from __future__ import annotations

from typing import Any

import pytest

from tests.data import _smollm2


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    return _smollm2.tokenizer()
