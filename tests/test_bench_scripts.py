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


def test_cpu_model_refuses_paths_it_cannot_read_in_one_line(tmp_path, monkeypatch) -> None:
    """bench/cpu_model.py checks its paths before loading anything: a directory that is not a
    prune's output, a --llama file that is not GGUF, a missing --ppl-from or --from-json file.
    Each stops with one line (SystemExit's message, what Python prints to stderr)."""
    import pytest

    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("cpu_model_under_test", BENCH / "cpu_model.py")
    cpu_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cpu_model)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").write_text("{}")
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04")
    cases = {
        (str(tmp_path / "missing"), "--score-only", "--out", str(tmp_path / "s.json")): "no report.json",
        (str(tmp_path / "run"), "--llama", str(tmp_path / "not.gguf"), "--score-only", "--out", "x"): "not a GGUF",
        (str(tmp_path / "run"), "--ppl-from", str(tmp_path / "none.json")): "no such file",
        (str(tmp_path / "none.json"), "--from-json"): "is not a file",
        (str(tmp_path / "run"), "--rounds", "0"): "at least 1",
    }
    for args, message in cases.items():
        with pytest.raises(SystemExit) as stopped:
            cpu_model.main(list(args))
        assert isinstance(stopped.value.code, str) and message in stopped.value.code, args
        assert len(stopped.value.code.splitlines()) == 1
    assert not (tmp_path / "s.json").exists()


def test_cpu_model_rounds_keep_each_rows_fastest_round(monkeypatch) -> None:
    """--rounds: rows matched by setting keep their fastest round's figures, list every round's
    tokens/s, and a llama.cpp row keeps the perplexity its first round scored; rounds whose rows
    differ are refused; the table shows the rounds."""
    import pytest

    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("cpu_model_rounds", BENCH / "cpu_model.py")
    cpu_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cpu_model)

    def row(setting: str, speed: float, peak: int, ppl: dict) -> dict:
        return {"setting": setting, "decode_tokens_per_second": speed, "run_peak_memory_bytes": peak,
                "weight_bytes": 2**20, "file_bytes": None, "perplexity": ppl}

    first = [row("dense bf16 (kernels)", 10.0, 1 << 30, {"wikitext2": 17.0}),
             row("llama.cpp F16", 12.0, 0, {"wikitext2": 17.5})]
    second = [row("dense bf16 (kernels)", 14.0, 2 << 30, {"wikitext2": 17.0}), row("llama.cpp F16", 11.0, 0, {})]
    third = [row("dense bf16 (kernels)", 13.0, 3 << 30, {"wikitext2": 17.0}), row("llama.cpp F16", 15.0, 0, {})]
    merged = cpu_model.best_of_rounds([first, second, third])
    assert [r["decode_tokens_per_second"] for r in merged] == [14.0, 15.0]
    assert merged[0]["run_peak_memory_bytes"] == 2 << 30  # the fastest round's own figures
    assert merged[0]["decode_rounds"] == [10.0, 14.0, 13.0] and merged[1]["decode_rounds"] == [12.0, 11.0, 15.0]
    assert merged[1]["perplexity"] == {"wikitext2": 17.5}
    text = cpu_model.table({"rows": merged})
    assert "rounds tok/s" in text and "12.0 / 11.0 / 15.0" in text
    with pytest.raises(ValueError, match="rows differ"):
        cpu_model.best_of_rounds([first, list(reversed(second))])


def test_layer_kernels_pairs_each_layout_with_the_dense_kernel_timed_before_it(monkeypatch) -> None:
    """bench/layer_kernels.py's 1-token table of each layout against the dense kernel timed just
    before it: the ratio and the byte limit per shape, a dash where a shape lacks the layout, and
    no table for results of runs before the pairs were timed."""
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("layer_kernels_under_test", BENCH / "layer_kernels.py")
    layer_kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layer_kernels)

    def result(shape: str, layout: str, ms: float, nbytes: int, paired: float | None, tokens: int = 1) -> dict:
        row = {"shape": shape, "rows": 64, "cols": 128, "tokens": tokens, "layout": layout, "ms": ms,
               "speedup": 1.0, "bytes": nbytes, "gb_s": 1.0, "of_bandwidth": 0.5}
        if paired is not None:
            row["paired_dense_kernel_ms"] = paired
        return row

    dense_bytes = 64 * 128 * 2
    results = [result("a 64x128", "dense bf16 (kernel)", 1.0, dense_bytes, None),
               result("a 64x128", "50% bitmask bf16", 0.5, dense_bytes // 2, 0.8),
               result("a 64x128", "50% bitmask bf16", 0.9, dense_bytes // 2, 1.8, tokens=16),
               result("b 64x128", "dense bf16 (kernel)", 1.0, dense_bytes, None)]
    lines = layer_kernels.paired_table(results, ["a 64x128", "b 64x128"])
    assert lines[1].startswith("| layout (1 token) | 64x128 × dense kernel (limit)")
    assert lines[3] == "| 50% bitmask bf16 | 1.60× (2.00) | – |"
    assert len(lines) == 4  # the dense rows have no pair of their own
    assert "× dense kernel (limit)" in layer_kernels.markdown(results)
    for row in results:
        row.pop("paired_dense_kernel_ms", None)
    assert layer_kernels.paired_table(results, ["a 64x128", "b 64x128"]) == []
