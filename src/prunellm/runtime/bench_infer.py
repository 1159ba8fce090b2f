"""Prefill and decode speed and peak memory of a saved model, dense against compressed.

Each variant runs in a fresh child process so that its peak memory is its own: "dense" loads
every compressed layer expanded once, "compressed" keeps every one compressed
(keep_compressed=True): calls of a few tokens (decode; runtime/linear.py's thresholds) through the kernels
that read the layout (the native library on a CPU, Triton on a GPU), larger calls (prefill)
and layouts no kernel reads expanded per call. Each row says which path each kind of layer
took. `head_bits` and `embed_bits` quantize the compressed variant's output head and input
embeddings too, `int8_activations` runs its 4- and 8-bit layers on the int8 kernel. Prompts are random token
ids (seeded): speed does not depend on what the tokens say.
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prunellm.errors import PrunellmError

# variant: (keep_compressed, dense_kernels). "dense" is prunellm's dense model (on a CPU, its dense
# layers' decode calls on the native kernels); "dense-torch" the same with torch's products.
VARIANTS = {"dense": (False, None), "dense-torch": (False, False), "compressed": (True, None)}


@dataclass
class InferConfig:
    prompt_tokens: int = 128
    new_tokens: int = 32
    batch_size: int = 1
    repeats: int = 3
    device: str | None = None
    seed: int = 0
    dense_budget: int | None = None  # bytes of layers the compressed variant may expand at load
    cuda_graph: bool = False  # decode steps replayed from a captured CUDA graph (CUDA only)
    head_bits: int | None = None  # the compressed variant's output head quantized (CPU: 8 or 4)
    embed_bits: int | None = None  # and its input embeddings' table (CPU: 8 or 4)
    int8_activations: bool = False  # the compressed variant's 4- and 8-bit layers on the int8 kernel (CPU)
    own_loop: bool = True  # CPU decode steps on runtime/decode_loop.py where it runs the model


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer, a tied tensor once, and of the layers repacked for
    the native CPU kernels (held outside parameters and buffers)."""
    from .linear import CompressedLinear

    seen: set[int] = set()
    total = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    native = [m.native for m in model.modules() if isinstance(m, CompressedLinear) and m.native is not None]
    return total + sum(weight.resident_bytes for weight in native)


def layer_paths(model: torch.nn.Module) -> dict[str, int]:
    """How the linear layers run at decode, by kind: {"nm 2:4 4-bit g128: cpu kernel": 154,
    "dense bfloat16: cpu kernel": 1, ...} (plain torch layers not counted)."""
    from .dense_decode import DecodeLinear
    from .linear import CompressedLinear

    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, CompressedLinear):
            key = f"{module.kind()}: {module.path()}"
        elif isinstance(module, DecodeLinear):
            key = f"dense {str(module.weight.dtype).removeprefix('torch.')}: cpu kernel"
        else:
            continue
        counts[key] = counts.get(key, 0) + 1
    return counts


def cache_argument(model: torch.nn.Module) -> str:
    """The forward's name for the key/value cache: `cache` in recent transformers 5 releases,
    `past_key_values` before (still accepted, deprecated)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _status(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in bytes; 0 where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def import_model_code(path: str | Path) -> None:
    """Import the code of the model class saved at `path` (transformers' modeling module and
    what it pulls in: torch._dynamo and, where installed, triton, some 140 MiB of resident pages
    on Linux), so that the baseline a peak is counted from holds the libraries as it means to,
    and the peak is the model's own memory. Where no class can be told from the path (a .gguf
    file, an architecture transformers does not know), the load imports it, counted."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        config = AutoConfig.from_pretrained(path)
        MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # imports the modeling module
    except (OSError, ValueError, KeyError):
        pass


def _reset_host_peak() -> int:
    """Start the resident-memory high-water mark afresh (Linux: clear_refs 5); returns the
    resident bytes now, the baseline the peak is counted from."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: the peak then includes what came before
    return _status("VmRSS")


def _host_peak() -> int:
    if _status("VmHWM"):
        return _status("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux units: KiB


def _peak(device: torch.device, baseline: int) -> int:
    """The peak since the last reset: GPU memory allocated, or host resident memory above `baseline`
    (0 when below it: the load trims the heap, which can return memory held before it)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return max(_host_peak() - baseline, 0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def _one_run(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, cuda_graph: bool = False,
             own_loop: bool = True) -> tuple[float, float]:
    """Seconds of the prefill (prompt -> first token) and of `new_tokens` - 1 greedy decode steps,
    on a static key/value cache. cuda_graph: each decode step replays one captured CUDA graph,
    so that what is timed is the GPU's work, not Python launching a few hundred kernels.
    own_loop: on a CPU, a model runtime/decode_loop.py runs decodes on it (the prefill is still
    the model's own call), what `prunellm generate` does."""
    from transformers import StaticCache

    from .decode_loop import supports

    device = prompt.device
    if own_loop and not cuda_graph and supports(model):
        return _loop_run(model, prompt, new_tokens)
    warmup = 2 if cuda_graph else 0  # eager steps before a capture (they fill cache slots too)
    cache = StaticCache(config=model.config, max_cache_len=prompt.shape[1] + new_tokens + warmup + 1)
    _sync(device)
    started = time.perf_counter()
    out = model(prompt, use_cache=True, **{cache_argument(model): cache})
    token = out.logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
    _sync(device)
    prefill = time.perf_counter() - started
    step = _graph_step(model, cache, token, warmup) if cuda_graph else None
    started = time.perf_counter()
    for _ in range(new_tokens - 1):
        if step is not None:
            step()
        else:
            token = model(token, use_cache=True, **{cache_argument(model): cache}).logits[:, -1].argmax(
                dim=-1, keepdim=True)
    _sync(device)
    return prefill, time.perf_counter() - started


def _own_loop(model: torch.nn.Module, config: InferConfig) -> bool:
    """Whether _one_run decodes `model` on runtime/decode_loop.py under `config`."""
    from .decode_loop import supports

    return config.own_loop and not config.cuda_graph and supports(model)


def _decode_path(model: torch.nn.Module, config: InferConfig) -> str:
    """How _one_run decodes `model`: "transformers", or prunellm's loop with each block as one
    native call ("prunellm, native blocks", runtime/decode_block.py) or as torch operations."""
    if not _own_loop(model, config):
        return "transformers"
    from .decode_block import qualifies
    from .embedding import embedding_dtype

    blocks = qualifies(model.model.layers, embedding_dtype(model.model.embed_tokens), config.batch_size)
    return "prunellm, native blocks" if blocks else "prunellm, torch ops"


def _loop_run(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """_one_run on runtime/decode_loop.py (CPU)."""
    from .decode_loop import DecodeLoop

    loop = DecodeLoop(model, prompt.shape[1] + new_tokens, prompt.shape[0])
    started = time.perf_counter()
    token = loop.prefill(prompt).argmax(dim=-1)  # (B,)
    prefill = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(new_tokens - 1):
        token = loop.step(token).argmax(dim=-1)
    return prefill, time.perf_counter() - started


def _graph_step(model: torch.nn.Module, cache: object, token: torch.Tensor, warmup: int):
    """A function that runs one greedy decode step by replaying a captured CUDA graph; `token`
    (B, 1) is the step's input and receives its output."""
    kwargs = {"use_cache": True, cache_argument(model): cache}
    stream = torch.cuda.Stream(token.device)
    stream.wait_stream(torch.cuda.current_stream(token.device))
    with torch.cuda.stream(stream):  # warm-up off the default stream: kernel tuning, allocator
        for _ in range(warmup):
            token.copy_(model(token, **kwargs).logits[:, -1].argmax(dim=-1, keepdim=True))
    torch.cuda.current_stream(token.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            following = model(token, **kwargs).logits[:, -1].argmax(dim=-1, keepdim=True)
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        raise PrunellmError(f"CUDA graph capture of a decode step failed (run without --cuda-graph): "
                            f"{lines[0] if lines else error!r}") from None

    def step() -> None:
        graph.replay()
        token.copy_(following)

    return step


def measure_variant(path: str | Path, variant: str, config: InferConfig) -> dict:
    """Load `path` as `variant` and time prefill and decode (best of `repeats`)."""
    from prunellm.devices import resolve_device

    from .load import load

    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    import_model_code(path)
    baseline = _reset_host_peak()
    started = time.perf_counter()
    keep, dense_kernels = VARIANTS[variant]
    model = load(path, device, keep_compressed=keep, dense_budget=config.dense_budget if keep else None,
                 head_bits=config.head_bits if keep else None, embed_bits=config.embed_bits if keep else None,
                 dense_kernels=dense_kernels, int8_activations=config.int8_activations and bool(keep))
    load_seconds = time.perf_counter() - started
    load_peak = _peak(device, baseline)
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(config.seed)
    prompt = torch.randint(vocab, (config.batch_size, config.prompt_tokens), generator=generator).to(device)
    if config.cuda_graph and device.type != "cuda":
        raise PrunellmError("--cuda-graph needs a CUDA device")
    # warm-up: kernel compilation and tuning, allocator
    _one_run(model, prompt[:, :8], 2, own_loop=config.own_loop)
    # The runs' own peak (prefill and decode, what the model holds while running), still counted
    # from before the load: on a CPU the load's transient copies are not in it.
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_host_peak()
    runs = [_one_run(model, prompt, config.new_tokens, config.cuda_graph, config.own_loop)
            for _ in range(config.repeats)]
    prefill = min(r[0] for r in runs)
    decode = min(r[1] for r in runs)
    steps = max(config.new_tokens - 1, 1)
    run_peak = _peak(device, baseline)
    return {"variant": variant, "device": str(device), "load_seconds": load_seconds,
            "weight_bytes": weight_bytes(model), "peak_memory_bytes": max(load_peak, run_peak),
            "run_peak_memory_bytes": run_peak, "layer_paths": layer_paths(model),
            "decode_loop": _decode_path(model, config),
            "prefill_tokens_per_second": config.batch_size * config.prompt_tokens / prefill,
            "decode_tokens_per_second": config.batch_size * steps / decode,
            "decode_ms_per_step": 1000 * decode / steps, "prefill_ms": 1000 * prefill, **asdict(config)}


def compare(path: str | Path, config: InferConfig, variants: tuple[str, ...] = ("dense", "compressed")) -> list[dict]:
    """Each variant measured in its own child process (so peak memory is its own)."""
    rows = []
    for variant in variants:
        command = [sys.executable, "-m", "prunellm.runtime.bench_infer", str(path), "--variant", variant,
                   "--config", json.dumps(asdict(config))]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise PrunellmError(f"{variant} run failed: {lines[-1] if lines else done.returncode}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def machine_description(device: str | None = None) -> str:
    """What the figures were measured on: the processor or GPU, cores, and library versions."""
    import os
    import platform

    import transformers

    from prunellm.devices import resolve_device

    target = resolve_device(device)
    if target.type == "cuda":
        where = torch.cuda.get_device_name(target)
    else:
        features = cpu_features()
        where = f"{_cpu_name() or platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
                f"{torch.get_num_threads()} threads" + (f" ({features})" if features else "")
    return f"{where}; torch {torch.__version__}, transformers {transformers.__version__}"


# The CPU features a kernel figure depends on (vector widths, bfloat16 and matrix units).
FEATURE_PREFIXES = ("avx2", "fma", "f16c", "avx512", "amx", "asimd", "sve", "bf16")


def cpu_features() -> str:
    """This CPU's features among FEATURE_PREFIXES (/proc/cpuinfo's flags), sorted; "" unknown."""
    from prunellm.devices import cpu_flags

    return " ".join(sorted(flag for flag in cpu_flags() if flag.startswith(FEATURE_PREFIXES)))


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def format_rows(rows: list[dict]) -> str:
    # peak: on a GPU, allocated device memory; on a CPU, resident memory above what the process
    # held before loading (the interpreter and libraries); "run peak" while prefilling and
    # decoding, "peak" with the load's too
    header = f"{'variant':<11} {'weights MiB':>11} {'run peak MiB':>12} {'peak MiB':>9} {'prefill tok/s':>13} " \
             f"{'decode tok/s':>12} {'ms/step':>8}"
    lines = [header]
    for row in rows:
        run_peak = row.get("run_peak_memory_bytes", row["peak_memory_bytes"])
        lines.append(f"{row['variant']:<11} {row['weight_bytes'] / 2**20:>11.1f} {run_peak / 2**20:>12.1f} "
                     f"{row['peak_memory_bytes'] / 2**20:>9.1f} {row['prefill_tokens_per_second']:>13.1f} "
                     f"{row['decode_tokens_per_second']:>12.2f} {row['decode_ms_per_step']:>8.2f}")
    if len(rows) == 2:
        dense, compressed = rows
        lines.append(f"compressed/dense: weights {compressed['weight_bytes'] / dense['weight_bytes']:.2f}x, decode "
                     f"{compressed['decode_tokens_per_second'] / dense['decode_tokens_per_second']:.2f}x, prefill "
                     f"{compressed['prefill_tokens_per_second'] / dense['prefill_tokens_per_second']:.2f}x")
    for row in rows:
        if row.get("layer_paths"):
            paths = "; ".join(f"{count} {key}" for key, count in sorted(row["layer_paths"].items()))
            lines.append(f"{row['variant']} layers (decode; prefill expands per call): {paths}")
    return "\n".join(lines)


def _child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--variant", choices=tuple(VARIANTS), required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    try:
        row = measure_variant(args.path, args.variant, InferConfig(**json.loads(args.config)))
    except PrunellmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
