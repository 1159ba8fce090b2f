from typing import Any

import pytest


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2) -> Any:
    return smollm2[1]


@pytest.fixture(scope="session")
def smollm2_model(smollm2) -> Any:
    return smollm2[0]
