"""Peak memory of a streamed prune against an in-memory one, on a random model saved as shards.

Builds a LLaMA-shaped model from a config (default: LLaMA-7B width, 4096 / 11008, 32 heads,
vocabulary 32000) with a few decoder blocks, random fp16 weights written one shard at a time
under --workdir (never whole in memory), plus a word-level tokenizer and a calibration text.
Then prunes it twice, each in a fresh child process so that nothing of the parent counts:
`prunellm prune DIR --stream` and `prunellm prune DIR` (whole model in memory). Each child
reports its peak resident memory (VmHWM, the kernel's own high-water mark, and peaks of
anonymous / file-backed memory sampled every 20 ms). Prints the figures and the target: a
streamed peak below the model files plus the calibration activations.

    python bench/streaming.py                               # 7B width, 4 blocks, SparseGPT 50%
    python bench/streaming.py --blocks 8 --json bench/results/streaming_7b_8blocks.json
    python bench/streaming.py --hidden 256 --intermediate 688 --heads 4 --vocab 1000 --blocks 2 \\
        --num-samples 4 --seqlen 64                         # smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--method", default="sparsegpt")
    parser.add_argument("--sparsity", default="0.5")
    parser.add_argument("--refine", default=None, help="prunellm prune's --refine (default: the CLI's, ALPS)")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--dtype", default="auto", help="compute dtype (auto: float32 on CPU, as prunellm prune)")
    parser.add_argument("--save-dtype", default="auto",
                        help="dtype written (auto: the source's float16 for a sparse result, as prunellm prune)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default="/tmp/prunellm-bench-streaming")
    parser.add_argument("--skip-memory", action="store_true", help="skip the in-memory run (models above RAM)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--child", choices=("stream", "memory"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    workdir = Path(args.workdir)
    model_dir = build_model(args, workdir)
    files = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    compute_bytes = 2 if args.dtype in ("float16", "bfloat16") else 4
    activations = args.num_samples * args.seqlen * args.hidden * compute_bytes  # one block's inputs, (N, T, C)
    runs = {"stream": run_child(args, "stream")}
    if not args.skip_memory:
        runs["memory"] = run_child(args, "memory")
    figures = {"config": {k: v for k, v in vars(args).items() if k not in ("child", "json")},
               "model_files_bytes": files, "activations_bytes": activations, "runs": runs}
    print_figures(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


def build_model(args: argparse.Namespace, workdir: Path) -> Path:
    """A random LLaMA of this shape as fp16 safetensors shards, written one unit at a time."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, LlamaConfig

    from prunellm.streaming.shards import ShardPlan, write_index, write_shard

    shape = (args.hidden, args.intermediate, args.heads, args.vocab, args.blocks)
    model_dir = workdir / ("model-" + "-".join(map(str, shape)))
    if (model_dir / "model.safetensors.index.json").is_file():
        return model_dir  # built by an earlier run with the same shape
    shutil.rmtree(model_dir, ignore_errors=True)
    model_dir.mkdir(parents=True)
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, num_hidden_layers=args.blocks, vocab_size=args.vocab,
                         max_position_embeddings=max(2048, args.seqlen), dtype="float16")
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    shapes = {name: tuple(p.shape) for name, p in skeleton.named_parameters()}
    units: dict[str, list[str]] = {"embeddings": []}
    for name in shapes:
        parts = name.split(".")
        unit = f"block.{parts[2]}" if parts[:2] == ["model", "layers"] else "head" if name.startswith("lm_head") \
            else "embeddings"
        units.setdefault(unit, []).append(name)
    plan = ShardPlan(list(units), units)
    generator = torch.Generator().manual_seed(0)
    total = 0
    for unit in plan.units:
        tensors = {}
        for name in plan.keys[unit]:
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shapes[name], dtype=torch.float16)
            else:  # the initializer's scale, so that activations stay finite through the blocks
                tensors[name] = (torch.randn(shapes[name], generator=generator) * 0.02).to(torch.float16)
        total += write_shard(model_dir, plan.file(unit), tensors)
        del tensors
    write_index(model_dir, plan, total, sum(int(torch.Size(s).numel()) for s in shapes.values()))
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(model_dir)
    words = [f"w{i}" for i in range(min(2000, args.vocab - 3))]  # every token id inside the vocabulary
    word_tokenizer(words).save_pretrained(model_dir)
    rng = random.Random(0)
    (workdir / "calib.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(50))
                                                 for _ in range(max(200, args.num_samples * args.seqlen // 25))))
    return model_dir


def word_tokenizer(words: list[str]):
    """A word-level tokenizer over `words` (the model is random: any tokenizer serves)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=len(words) + 3, special_tokens=["<unk>", "<s>", "</s>"])
    backend.train_from_iterator([" ".join(words)], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def run_child(args: argparse.Namespace, kind: str) -> dict:
    command = [sys.executable, __file__, "--child", kind, *sys.argv[1:]]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    print(f"{kind}: running", flush=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    shutil.rmtree(Path(args.workdir) / f"pruned-{kind}", ignore_errors=True)  # the model is kept for reruns
    if done.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(args: argparse.Namespace) -> None:
    """One prune in this process, with its memory watched; prints one JSON line."""
    from prunellm.cli import main as prunellm

    sampler = Sampler()
    sampler.start()
    baseline = status()["VmRSS"]  # the interpreter with torch and transformers imported
    workdir = Path(args.workdir)
    shape = (args.hidden, args.intermediate, args.heads, args.vocab, args.blocks)
    model_dir = workdir / ("model-" + "-".join(map(str, shape)))
    out = workdir / f"pruned-{args.child}"
    argv = ["prune", str(model_dir), "--calib", str(workdir / "calib.txt"), "--num-samples", str(args.num_samples),
            "--seqlen", str(args.seqlen), "--method", args.method, "--sparsity", args.sparsity,
            "--dtype", args.dtype, "--save-dtype", args.save_dtype, "--device", args.device, "--out", str(out),
            "--overwrite", "--quiet", "--format", "hf"]  # both children write dense safetensors
    if args.refine is not None:
        argv += ["--refine", args.refine]
    if args.child == "stream":
        argv.append("--stream")
    started = time.perf_counter()
    code = prunellm(argv)
    seconds = time.perf_counter() - started
    sampler.stop()
    if code != 0:
        raise SystemExit(code)
    final = status()
    print(json.dumps({"peak_rss_bytes": final["VmHWM"], "baseline_rss_bytes": baseline,
                      "peak_anon_bytes": sampler.peaks["RssAnon"], "peak_file_bytes": sampler.peaks["RssFile"],
                      "seconds": seconds}))


class Sampler(threading.Thread):
    """Peaks of anonymous and file-backed resident memory, read from /proc every 20 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks = {"RssAnon": 0, "RssFile": 0}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.02):
            now = status()
            for key in self.peaks:
                self.peaks[key] = max(self.peaks[key], now[key])

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def status() -> dict[str, int]:
    """Memory lines of /proc/self/status, in bytes."""
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def print_figures(figures: dict) -> None:
    files, activations = figures["model_files_bytes"], figures["activations_bytes"]
    target = files + activations
    print(f"model files: {size(files)}; calibration activations (N x T x C): {size(activations)}; "
          f"target: streamed peak below {size(target)}")
    for kind, run in figures["runs"].items():
        print(f"{kind:>6}: peak RSS {size(run['peak_rss_bytes'])} (anonymous {size(run['peak_anon_bytes'])}, "
              f"file-backed {size(run['peak_file_bytes'])}; interpreter and libraries before the prune "
              f"{size(run['baseline_rss_bytes'])}), {run['seconds']:.1f} s")
    stream = figures["runs"]["stream"]["peak_rss_bytes"]
    if "memory" in figures["runs"]:
        memory = figures["runs"]["memory"]["peak_rss_bytes"]
        print(f"streamed / in-memory peak: {stream / memory:.2f}")
    print(f"streamed peak / (files + activations): {stream / target:.2f} "
          f"({'below' if stream < target else 'NOT below'} the target)")


def size(count: int) -> str:
    return f"{count / 1024 ** 3:.2f} GiB" if count >= 1024 ** 3 else f"{count / 1024 ** 2:.0f} MiB"


if __name__ == "__main__":
    main()
