"""The benchmark scripts run as `python bench/NAME.py`, which puts bench/ first on Python's path:
a script named like an installed module shadows it for every script there (bench/kernels.py hid
the `kernels` package that transformers imports, and no bench script that loads a model ran)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_no_bench_script_shadows_an_installed_module(monkeypatch) -> None:
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != BENCH])
    scripts = sorted(path.stem for path in BENCH.glob("*.py"))
    assert scripts, "no scripts found under bench/"
    shadowed = {name: spec.origin for name in scripts
                if (spec := importlib.util.find_spec(name)) is not None and Path(spec.origin or "").parent != BENCH}
    assert not shadowed, f"rename these bench scripts, they hide installed modules: {shadowed}"


def test_a_bench_script_that_loads_transformers_starts(tmp_path) -> None:
    """The failure this guards against, end to end: a bench script importing transformers' models."""
    import subprocess

    done = subprocess.run([sys.executable, str(BENCH / "streaming.py"), "--help"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    probe = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                            "from transformers import LlamaConfig; print(LlamaConfig().model_type)", str(BENCH)],
                           capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode == 0 and probe.stdout.strip() == "llama", probe.stderr[-2000:]
