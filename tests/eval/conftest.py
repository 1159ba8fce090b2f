"""Fixtures for eval tests: the real SmolLM2 (tokenizer and model), shared with tests/data."""

from __future__ import annotations

from typing import Any

import pytest

from tests.data import _smollm2


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    return _smollm2.tokenizer()


@pytest.fixture(scope="session")
def smollm2_model() -> Any:
    return _smollm2.model()
