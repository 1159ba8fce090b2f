"""Decode and prefill speed of a whole random LLaMA-shaped model, dense against compressed.

Builds a random LLaMA (default LLaMA-2-7B's shape, as bench/pipeline.py), prunes and quantizes
every linear layer of its blocks as bench/sizes.py does (magnitude n:m or unstructured, then
round-to-nearest onto a min-max grid: speed depends on the layout, not on which solver chose the
values), saves it in the compressed format (float16) and runs `prunellm bench-infer`'s
measurement on it: "dense" expands every layer once at load (the float16 model of the same
weights: the baseline), "compressed" keeps them compressed (GPU kernels at decode). On CUDA each
decode step is replayed from a captured CUDA graph in both variants: Hugging Face's eager
forward spends longer launching a 7B model's few hundred kernels than its weights take to stream.

    python bench/infer_model.py                       # LLaMA-2-7B shape, on CUDA (the issue's target)
    python bench/infer_model.py --blocks 4 --hidden 1024 --intermediate 2816 --heads 8 --device cpu
    python bench/infer_model.py --settings "2:4 + 4-bit grouped,2:4" --json bench/results/infer_h100.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from prunellm.devices import resolve_device
from prunellm.formats.compressed.checkpoint import save_compressed
from prunellm.runtime.bench_infer import InferConfig, compare, format_rows
from prunellm.walker import WalkConfig, target_layers
from prunellm.layers import read_weight, write_weight

from pipeline import add_shape_options, build_model  # noqa: E402  (bench/ is first on sys.path)
from sizes import SETTINGS, compress_like  # noqa: E402
from solver import machine  # noqa: E402


def compress_in_place(model: torch.nn.Module, setting: str, group_size: int, device: torch.device) -> tuple[list, dict]:
    """Every block linear layer pruned and rounded as `setting` says (on `device`, for speed)."""
    sparsity, nm, bits, grouped = SETTINGS[setting]
    names = list(target_layers(model, WalkConfig()))
    grids = {}
    for name in names:
        layer = model.get_submodule(name)
        weight, grid = compress_like(read_weight(layer).to(device), sparsity, nm, bits, group_size if grouped else None)
        write_weight(layer, weight.cpu())
        if grid is not None:
            grids[name] = type(grid)(grid.bits, grid.sym, grid.group_size, grid.scale.cpu(), grid.zero.cpu())
    return names, grids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_options(parser)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--settings", default="2:4 + 4-bit grouped,2:4,4-bit grouped",
                        help="comma-separated, of: " + ", ".join(SETTINGS).replace("%", "%%"))
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-cuda-graph", action="store_true",
                        help="time eager decode steps (default on CUDA: replay each from a captured graph)")
    parser.add_argument("--work-dir", default=None, help="where the compressed models are written (default: a temp dir)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {', '.join(unknown)}: choose from {', '.join(SETTINGS)}")
    device = resolve_device(args.device)
    args.seqlen = args.prompt_tokens  # build_model sizes the rotary table from it
    config = InferConfig(args.prompt_tokens, args.new_tokens, args.batch_size, args.repeats, str(device),
                         cuda_graph=device.type == "cuda" and not args.no_cuda_graph)
    results = []
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        for setting in settings:
            model = build_model(args, torch.float16)
            names, grids = compress_in_place(model, setting, args.group_size, device)
            nm = SETTINGS[setting][1]
            path, summary = save_compressed(model, None, Path(work) / "model", names, grids=grids, nm=nm,
                                            dtype="float16", overwrite=True)
            del model
            print(f"{setting}: {summary.describe()}", flush=True)
            rows = compare(path, config)
            print(format_rows(rows), flush=True)
            results.append({"setting": setting, "sizes": summary.to_json(), "rows": rows,
                            "decode_speedup": rows[1]["decode_tokens_per_second"] / rows[0]["decode_tokens_per_second"]})
    if args.json:
        shape = {k: getattr(args, k) for k in ("hidden", "intermediate", "heads", "vocab", "blocks", "group_size")}
        Path(args.json).write_text(json.dumps({"machine": machine(device), "shape": shape, "results": results}, indent=1))
        print(f"saved {args.json}")


if __name__ == "__main__":
    main()
