"""The prunellm_basics items as a `datasets.DatasetDict`, read from the JSONL beside this file.

lm-eval's `custom_dataset` hook: a path relative to this file rather than to the working
directory, and no `datasets` download or cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ITEMS = Path(__file__).with_name("items.jsonl")


def load_items(**_: Any) -> Any:
    """{"test": Dataset} of {id, question, choices, answer}; lm-eval passes its metadata as keywords."""
    import datasets

    rows = [json.loads(line) for line in ITEMS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
