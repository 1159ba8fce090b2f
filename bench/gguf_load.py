"""Loading a GGUF model: the first load (transformers converts the file; prunellm caches the result)
against a later one (prunellm reads its cached copy), each in a fresh child process.

    python bench/gguf_load.py                       # the bundled SmolLM2-135M GGUF
    python bench/gguf_load.py --model path/to/model.gguf

The cache goes to a temporary directory (PRUNELLM_CACHE_DIR), removed at the end: the user's own
cache is neither read nor written.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys, time
from prunellm.io.load import load_model
started = time.perf_counter()
load_model(sys.argv[1] if len(sys.argv) > 1 else None)
print(f"{time.perf_counter() - started:.2f}")
"""


def timed_load(model: str | None, cache: Path) -> float:
    env = {**os.environ, "PRUNELLM_CACHE_DIR": str(cache)}
    args = [sys.executable, "-c", CHILD, *([model] if model else [])]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a .gguf file (default: the bundled SmolLM2-135M)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        first = timed_load(args.model, cache)
        later = timed_load(args.model, cache)
        size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    print(f"first load (convert and cache): {first:.1f} s")
    print(f"later load (cached copy):       {later:.1f} s  ({first / later:.1f}x faster)")
    print(f"cached copy: {size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
