"""Time a whole SparseGPT prune of a LLaMA-2-7B-shaped random model, phase by phase.

Builds a LLaMA model from a config (default LLaMA-2-7B: hidden 4096, MLP 11008, 32 heads,
vocabulary 32000; any depth and width by option) with random weights, kept in CPU memory in
the compute dtype (fp16 on a GPU, float32 on a CPU, as `prunellm prune` chooses). The walker
moves one block at a time to the device, so peak device memory is one block plus the
calibration activations whatever the depth. Calibration: N x T random token ids (default
128 x 2048, the paper's). Prints the total time, its phases (calibration forwards with their
Hessian hooks, and the layer solves), and peak device and host memory.

    python bench/pipeline.py                                  # LLaMA-2-7B shape, on CUDA if present
    python bench/pipeline.py --blocks 2 --hidden 1024 --intermediate 2816 --heads 8 \\
        --num-samples 16 --seqlen 512                         # a CPU-sized run
    python bench/pipeline.py --json bench/results/pipeline_h100.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from prunellm.methods import build_method
from prunellm.walker import WalkConfig, compress_model

from solver import machine  # noqa: E402  (bench/ is this script's directory, first on sys.path)


def build_model(args: argparse.Namespace, dtype: torch.dtype) -> torch.nn.Module:
    """A random LLaMA of the requested shape on the CPU, without running its initializers: every
    matrix is a slice of one shared Gaussian pool (random enough to time; fast at 7B size)."""
    from accelerate import init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, num_hidden_layers=args.blocks, vocab_size=args.vocab,
                         max_position_embeddings=max(4096, args.seqlen), tie_word_embeddings=False)
    with init_empty_weights():
        model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(0)
    pool = torch.randn(1 << 24, generator=gen).to(dtype)  # 16M values
    for name, param in list(model.named_parameters()):
        data = torch.empty(param.shape, dtype=dtype)
        if param.dim() == 1:  # norms
            data.fill_(1.0)
        else:
            flat = data.view(-1)
            for start in range(0, flat.numel(), pool.numel()):
                n = min(pool.numel(), flat.numel() - start)
                offset = int(torch.randint(0, pool.numel() - n + 1, (1,), generator=gen))
                flat[start : start + n] = pool[offset : offset + n]
            data.mul_(param.shape[-1] ** -0.5)  # unit-variance outputs, as a trained model roughly has
        module_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(module_name), leaf, torch.nn.Parameter(data, requires_grad=False))
    for name, buffer in list(model.named_buffers()):  # rotary tables: recomputed for real
        if buffer.device.type == "meta":
            raise SystemExit(f"buffer {name} was not materialized")
    return model.eval()


def peak_host_bytes() -> int:
    """The kernel's high-water mark of this process's resident memory (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def add_shape_options(parser: argparse.ArgumentParser, blocks: int = 32) -> None:
    """The model's shape (default LLaMA-2-7B's): what `build_model` reads."""
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--blocks", type=int, default=blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_options(parser)
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=1, help="calibration samples per block forward")
    parser.add_argument("--method", default="sparsegpt")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--nm", default=None, help="n:m instead of --sparsity, e.g. 2:4")
    parser.add_argument("--forward-dtype", choices=("auto", "float32", "bfloat16", "float16"), default=None,
                        help="the walker's forward dtype (default: the walker's, auto in today's code)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    started = time.perf_counter()
    model = build_model(args, dtype)
    build_seconds = time.perf_counter() - started
    gen = torch.Generator().manual_seed(1)
    calibration = torch.randint(0, args.vocab, (args.num_samples, args.seqlen), generator=gen)  # (N, T)
    options = {"nm": args.nm} if args.nm else {"sparsity": args.sparsity}
    method = build_method(args.method, **options)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    # forward_dtype only when asked: the script then also runs against older code (PYTHONPATH) that lacks it
    extra = {"forward_dtype": args.forward_dtype} if args.forward_dtype else {}
    result = compress_model(model, method, calibration,
                            WalkConfig(device=args.device, batch_size=args.batch_size, layer_errors=False,
                                       progress=False, **extra))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total = time.perf_counter() - started
    figures = {
        "machine": machine(device),
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "build_seconds": build_seconds,
        "total_seconds": total,
        "solve_seconds": result.seconds["solve"],
        "calibration_forwards_seconds": result.seconds["calibration_forwards"],
        "peak_device_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "peak_host_bytes": peak_host_bytes(),
        "sparsity": result.sparsity(),
    }
    gib = 1 << 30
    print(f"machine: {figures['machine']}")
    print(f"model: {args.blocks} blocks, hidden {args.hidden}, MLP {args.intermediate}, {dtype}; "
          f"calibration {args.num_samples} x {args.seqlen} tokens; {args.method} {options}")
    print(f"total {total:.1f} s = calibration forwards and Hessians {figures['calibration_forwards_seconds']:.1f} s "
          f"+ solves {figures['solve_seconds']:.1f} s   (model built in {build_seconds:.1f} s, not counted)")
    device_peak = figures["peak_device_bytes"]
    print(f"peak memory: device {device_peak / gib:.2f} GiB, " if device_peak is not None else "peak memory: ", end="")
    print(f"host {figures['peak_host_bytes'] / gib:.2f} GiB; sparsity {figures['sparsity']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
