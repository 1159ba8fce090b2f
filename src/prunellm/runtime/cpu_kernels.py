"""y = x @ Wᵀ on a CPU for a few tokens (decode), reading W in prunellm's compressed layouts.

At decode a layer's product is bound by the bytes of its weight, and a compressed layer has
fewer of them: 50% bitmask + bfloat16 values reads 1.13 bytes a weight against dense
bfloat16's 2, 2:4 + 4-bit 0.41. The native library (runtime/native/csrc, built at install)
streams those bytes and expands them in registers, one pass over the weight for all tokens:

    native = prepare(spec, tensors)   # checks the parts and repacks them once (cpu_layout.py)
    native = prepare_dense(weight)    # or a dense float weight, read in place
    y = matmul(x, native)             # x (T, C) float32 or bfloat16 -> y (T, R), same dtype
    w = expand(native)                # the dense (R, C) weight, bit for bit the format's expansion

Products are summed in float32. The instruction set is chosen by the CPU's features (amx:
avx512bf16 plus AMX-TILE/AMX-BF16 and the OS's leave to use them, whose tile unit multiplies the
decoded weights of bfloat16 layers from a few tokens a call (fewer: as avx512bf16); avx512bf16:
avx512 plus AVX512_BF16, whose vdpbf16ps multiplies bfloat16 activations by bfloat16 values and
4- and 8-bit codes of bfloat16/float32 layers directly, the rest as avx512; avx512:
F/BW/VL/DQ/VBMI2; avx2: AVX2/FMA/F16C; else portable C++), or forced by the environment variable
PRUNELLM_CPU_KERNEL=portable|avx2|avx512|avx512bf16|amx; a forced level this CPU lacks is
refused.
Rows are split over torch.get_num_threads() threads: torch's own OpenMP workers where torch
runs on OpenMP (its runtime's GOMP_parallel is handed to the library at load), else the
library's own pool. A pool beside torch's spinning workers fought them for the cores.

`expand` lets a layer drop the file's parts once prepared: a prefill (more tokens than the
kernels are worth: runtime/linear.py) expands the layer from the repacked buffers.

When the library was not built (no compiler at install), `available()` is False and callers
take the torch path (runtime/load.py warns once, through `warn_unavailable`).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunellm.errors import PrunellmError

from .cpu_layout import FLOAT_DTYPES, KIND, KernelLayout, build, container_bits

log = logging.getLogger(__name__)

LEVELS = {"portable": 0, "avx2": 1, "avx512": 2, "avx512bf16": 3, "amx": 4}
ENV = "PRUNELLM_CPU_KERNEL"
NATIVE_DIR = Path(__file__).resolve().parent / "native"
LIBRARY = "_prunellm_cpu"
ABI_VERSION = 10  # pnl_abi_version() of the sources beside this file
WEIGHT_DTYPES = {kind: FLOAT_DTYPES[name] for name, kind in KIND.items()}
_X_DTYPES = (torch.float32, torch.bfloat16)


class _PnlWeight(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_int64), ("cols", ctypes.c_int64), ("cols_pad", ctypes.c_int64),
                ("value_kind", ctypes.c_int32), ("code_bits", ctypes.c_int32), ("weight_dtype", ctypes.c_int32),
                ("has_mask", ctypes.c_int32), ("group_size", ctypes.c_int64), ("groups", ctypes.c_int64),
                ("mask", ctypes.c_void_p), ("row_start", ctypes.c_void_p), ("values", ctypes.c_void_p),
                ("scales", ctypes.c_void_p), ("zeros", ctypes.c_void_p), ("even_steps", ctypes.c_int32),
                ("x_int8", ctypes.c_int32)]


@dataclass
class NativeWeight:
    """A layer repacked for the kernels; holds its buffers alive for the pointers in `struct`."""

    shape: tuple[int, int]  # (R, C)
    layout: KernelLayout
    struct: _PnlWeight

    def __post_init__(self) -> None:
        self.ref = ctypes.byref(self.struct)  # made once: matmul passes it on every call

    @property
    def nbytes(self) -> int:
        """Bytes one product reads from the weight."""
        return self.layout.nbytes

    @property
    def resident_bytes(self) -> int:
        """Bytes the repacked buffers hold in memory (padding included)."""
        return self.layout.resident_bytes

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the dense weight (what `expand` returns)."""
        return WEIGHT_DTYPES[self.layout.weight_dtype]

    @property
    def int8_activations(self) -> bool:
        """Whether `matmul` rounds the activations to int8 blocks first and runs the int8 kernel
        (runtime/int8_activations.py; only for the 4- and 8-bit codes it reads)."""
        return bool(self.struct.x_int8)

    @int8_activations.setter
    def int8_activations(self, enabled: bool) -> None:
        self.struct.x_int8 = int(enabled)


_library: ctypes.CDLL | None = None
_load_error: str | None = None
_warned = False
_call_buffers = threading.local()  # expand_for_call's buffers, one per dtype and thread
KEPT_BUFFER_BYTES = 256 * 2**20  # the largest expansion expand_for_call keeps a buffer for


def _load() -> ctypes.CDLL | None:
    global _library, _load_error
    if _library is not None or _load_error is not None:
        return _library
    if sys.byteorder != "little":
        _load_error = "the kernels read 64-bit mask words as little-endian"
        return None
    found = [NATIVE_DIR / f"{LIBRARY}{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    found = [path for path in found if path.exists()]
    if not found:
        _load_error = f"no {LIBRARY} library under {NATIVE_DIR} (not built at install: no C++ compiler?)"
        return None
    try:
        lib = ctypes.CDLL(str(found[0]))
        lib.pnl_matmul.argtypes = [ctypes.POINTER(_PnlWeight), ctypes.c_void_p, ctypes.c_int, ctypes.c_int64,
                                   ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.pnl_expand.argtypes = [ctypes.POINTER(_PnlWeight), ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        # (block, x, batch, dtype, cos, sin, pos, threads, level): runtime/decode_block.py
        lib.pnl_decode_block.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int,
                                         ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int]
        # (batch, heads, kv_heads, head_dim, length, threads): decode_block.cpp's attention split
        lib.pnl_attention_parts.argtypes = [ctypes.c_int64] * 5 + [ctypes.c_int]
        lib.pnl_attention_parts.restype = ctypes.c_int64
        lib.pnl_kernel_nanoseconds.argtypes = [ctypes.c_int]
        lib.pnl_kernel_nanoseconds.restype = ctypes.c_int64
        lib.pnl_level_supported.argtypes = [ctypes.c_int]
        lib.pnl_use_openmp.argtypes = [ctypes.c_void_p]
        lib.pnl_set_min_part_weights.argtypes = [ctypes.c_int64]
        lib.pnl_set_min_part_weights.restype = ctypes.c_int64
        lib.pnl_set_tile_min_tokens.argtypes = [ctypes.c_int]
        lib.pnl_int8_kernel.argtypes = [ctypes.c_int]
        lib.pnl_round_activations.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                              ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        if lib.pnl_abi_version() != ABI_VERSION:
            raise OSError("library built from other sources: reinstall prunellm")
    except (OSError, AttributeError) as error:
        _load_error = f"cannot load {found[0].name}: {error}"
        return None
    _library = lib
    use_torch_threads(True)
    return lib


def _torch_openmp_entry() -> int | None:
    """The address of GOMP_parallel in the OpenMP runtime torch runs on, if already loaded.

    Found among the process's mapped libraries (libgomp, LLVM's libomp, Intel's libiomp5 all
    export the GOMP entry) and opened with RTLD_NOLOAD: never a second runtime."""
    if "OpenMP" not in torch.__config__.parallel_info() or not hasattr(os, "RTLD_NOLOAD"):
        return None
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    names = ("libgomp", "libiomp5", "libomp")
    paths = {line.split(maxsplit=5)[-1] for line in maps.splitlines() if len(line.split()) == 6}
    for path in sorted(p for p in paths if Path(p).name.startswith(names)):
        try:
            runtime = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            return ctypes.cast(runtime.GOMP_parallel, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None


def use_torch_threads(enabled: bool) -> bool:
    """Run the kernels' parts on torch's OpenMP workers (True, the default) or on the library's
    own pool (False); returns whether torch's workers are used (False when torch has none)."""
    entry = _torch_openmp_entry() if enabled else None
    _require().pnl_use_openmp(entry)
    return entry is not None


def set_min_part_weights(weights: int) -> int:
    """Products of fewer weights per thread stay on the calling thread (0: always split over the
    threads; tests use it on small layers). Returns the previous value."""
    return int(_require().pnl_set_min_part_weights(weights))


def set_tile_min_tokens(tokens: int) -> int:
    """On the amx level, calls of this many tokens and more multiply in the AMX tile unit (0:
    by weight, the default: where the tiles were measured faster); tests force 1 to check the
    tile kernel on every call. Returns the previous value (-1: by weight)."""
    return int(_require().pnl_set_tile_min_tokens(tokens))


def available() -> bool:
    """Whether the native library is built and loads (else callers take the torch path)."""
    return _load() is not None


def warn_unavailable() -> None:
    """One warning per process that the kernels are missing, and what the runtime does instead."""
    global _warned
    if not _warned:
        _warned = True
        log.warning("native CPU kernels unavailable (%s): compressed layers are expanded at load "
                    "(with keep_compressed=True, per call through torch)", _load_error or "turned off")


def _require() -> ctypes.CDLL:
    if not available():
        raise RuntimeError(f"native CPU kernels unavailable: {_load_error}")
    return _library


def supported_levels() -> list[str]:
    """The instruction-set levels this CPU runs, lowest first."""
    lib = _require()
    return [name for name, level in LEVELS.items() if lib.pnl_level_supported(level)]


def isa() -> str:
    """The level in use: PRUNELLM_CPU_KERNEL when set, else the best this CPU runs."""
    return _level_for(os.environ.get(ENV, ""))


@functools.cache
def _level_for(setting: str) -> str:
    """isa() for one value of the variable, worked out once (it is on every decode call's path;
    a refused value raises each time: exceptions are not cached)."""
    forced = setting.strip().lower()
    if not forced:
        return _best_level()
    lib = _require()
    if forced not in LEVELS:
        raise PrunellmError(f"{ENV}={forced!r} is not one of {', '.join(LEVELS)}")
    if not lib.pnl_level_supported(LEVELS[forced]):
        raise PrunellmError(f"{ENV}={forced} but this CPU lacks its instructions (runs: "
                            f"{', '.join(supported_levels())})")
    return forced


@functools.cache
def _best_level() -> str:
    """The best level this CPU runs (asked once: isa() is on every decode call's path)."""
    best = _require().pnl_best_level()
    return next(name for name, level in LEVELS.items() if level == best)


INT8_KERNELS = {0: "scalar", 1: "vnni", 2: "avx2"}  # pnl_int8_kernel's answers


def int8_kernel() -> str:
    """Which kernel int8 products run on at the level in use: "vnni" (AVX512_VNNI's vpdpbusd),
    "avx2" (vpmaddubsw), or "scalar" (the portable one: the same sums, slow)."""
    return INT8_KERNELS[_require().pnl_int8_kernel(LEVELS[isa()])]


def supports(spec: Any) -> bool:
    """Whether `prepare` takes a layer of this spec (any layout, float dtype, codes of 1 to 8 bits)."""
    if spec.layout not in ("bitmask", "nm", "quant") or spec.dtype not in ("float32", "float16", "bfloat16"):
        return False
    if spec.bits is not None and not (isinstance(spec.bits, int) and 1 <= spec.bits <= 8):
        return False
    if spec.layout == "quant":
        return spec.bits is not None
    if spec.layout == "nm":
        return isinstance(spec.m, int) and isinstance(spec.n, int) and 0 <= spec.n < spec.m <= 256
    return True


def prepare(spec: Any, tensors: dict[str, torch.Tensor]) -> NativeWeight:
    """Check a compressed layer's parts and repack them for the kernels (cpu_layout.py).

    spec: anything with the attributes of the format's LayerSpec; tensors: its parts by name.
    """
    if not supports(spec):
        raise PrunellmError(f"the native CPU kernels do not read a {spec.layout!r} layer of {spec.dtype} "
                            f"(bits {spec.bits}, n:m {spec.n}:{spec.m})")
    if spec.bits is not None:
        container_bits(spec.bits)
    layout = build(spec, tensors)
    pointer = (lambda t: t.data_ptr() if t is not None else None)
    struct = _PnlWeight(layout.rows, layout.cols, layout.cols_pad, layout.value_kind, layout.code_bits,
                        layout.weight_dtype, int(layout.mask is not None), layout.group_size, layout.groups,
                        pointer(layout.mask), pointer(layout.row_start), pointer(layout.values),
                        pointer(layout.scales), pointer(layout.zeros), int(layout.even_steps))
    return NativeWeight((layout.rows, layout.cols), layout, struct)


def prepare_dense(weight: torch.Tensor) -> NativeWeight | None:
    """A dense float weight (R, C) read in place by the kernels (no copy: the result holds the
    tensor), or None where they cannot read it without one (C not a multiple of 64, not
    contiguous, not float32/float16/bfloat16, not on the CPU)."""
    kind = {dtype: KIND[name] for name, dtype in FLOAT_DTYPES.items()}.get(weight.dtype)
    if kind is None or weight.dim() != 2 or weight.device.type != "cpu" or not weight.is_contiguous():
        return None
    rows, cols = weight.shape
    if cols % 64 or rows == 0:
        return None
    # Every column stored, no mask: rows of exactly cols_pad values, which the vector loads read
    # without running past the tensor (no tail padding needed).
    layout = KernelLayout(rows, cols, cols, kind, 0, kind, cols, 1, None,
                          torch.arange(rows + 1, dtype=torch.int64) * cols, weight.reshape(-1), None, None,
                          value_bytes=weight.numel() * weight.element_size())
    struct = _PnlWeight(rows, cols, cols, kind, 0, kind, 0, cols, 1, None, layout.row_start.data_ptr(),
                        weight.data_ptr(), None, None)
    return NativeWeight((rows, cols), layout, struct)


def matmul(x: torch.Tensor, weight: NativeWeight) -> torch.Tensor:
    """x (T, C) float32 or bfloat16 -> y (T, R) = x @ Wᵀ in x's dtype, summed in float32."""
    # Called per layer per decode step: the checks are the cheapest that say the same (is_cpu
    # rather than a device object, one read of the shape), the level is cached per setting.
    lib = _library if _library is not None else _require()
    rows, cols = weight.shape
    if not isinstance(x, torch.Tensor) or not x.is_cpu or x.dtype not in _X_DTYPES:
        raise PrunellmError("x must be a CPU tensor of float32 or bfloat16")
    shape = x.shape
    if len(shape) != 2 or shape[1] != cols or shape[0] < 1:
        raise PrunellmError(f"x has shape {tuple(shape)}, expected (tokens, {cols})")
    x = x.contiguous()
    bf16 = x.dtype == torch.bfloat16
    y = torch.empty(shape[0], rows, dtype=torch.float32)
    done = lib.pnl_matmul(weight.ref, x.data_ptr(), bf16, shape[0], y.data_ptr(), torch.get_num_threads(),
                          LEVELS[isa()])
    if done != 0:
        raise RuntimeError(f"native CPU kernel failed (code {done})")
    return y.to(torch.bfloat16) if bf16 else y


def int8_rounded(x: torch.Tensor) -> torch.Tensor:
    """x (..., C) of a float dtype -> float32 (..., C) as the int8 kernels read it: bit for bit
    int8_activations.round_activations (the reference), in the kernels' own code, tokens split
    over torch.get_num_threads() threads (the prefill of a layer with int8 activations). Other
    float dtypes than float32 and bfloat16 are widened to float32 first, exactly."""
    lib = _require()
    if not isinstance(x, torch.Tensor) or not x.is_cpu or not x.is_floating_point() or x.dim() < 1 or not x.numel():
        raise PrunellmError("x must be a non-empty CPU tensor of a float dtype")
    flat = x.reshape(-1, x.shape[-1])
    flat = (flat if flat.dtype in _X_DTYPES else flat.float()).contiguous()
    out = torch.empty(flat.shape, dtype=torch.float32)
    done = lib.pnl_round_activations(flat.data_ptr(), flat.dtype == torch.bfloat16, flat.shape[0], flat.shape[1],
                                     out.data_ptr(), torch.get_num_threads(), LEVELS[isa()])
    if done != 0:
        raise RuntimeError(f"native int8 rounding failed (code {done})")
    return out.reshape(x.shape)


def expand(weight: NativeWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    """The dense weight (R, C) in its dtype, bit for bit what the format's decompress_weight
    gives from the file's parts; rows split over torch.get_num_threads() threads. `out`: a
    contiguous CPU tensor of that shape and dtype to write into (a buffer kept across calls
    spares the page faults of a fresh one, most of a vectorized expansion's time)."""
    lib = _require()
    if out is None:
        out = torch.empty(weight.shape, dtype=weight.dtype)
    elif out.shape != weight.shape or out.dtype != weight.dtype or not out.is_contiguous() or not out.is_cpu:
        raise PrunellmError(f"out must be a contiguous CPU {weight.dtype} tensor of shape {tuple(weight.shape)}")
    done = lib.pnl_expand(ctypes.byref(weight.struct), out.data_ptr(), torch.get_num_threads(), LEVELS[isa()])
    if done != 0:
        raise RuntimeError(f"native CPU expansion failed (code {done})")
    return out


def expand_for_call(weight: NativeWeight) -> torch.Tensor:
    """expand() into a buffer this thread keeps for the next call, for a product that uses the
    weight at once and lets it go (a prefill's): valid until this thread's next call. The
    buffer grows to the largest layer expanded (one per weight dtype) and stays: a fresh tensor
    of a 7B layer's size costs more in page faults than the vectorized expansion itself
    (bench/README.md, "A layer's expansion for a prefill"). A layer of more than
    KEPT_BUFFER_BYTES (a quantized vocabulary head, a 70B layer) gets a fresh tensor instead:
    memory held for good would outweigh page faults that small against its product."""
    rows, cols = weight.shape
    if rows * cols * weight.dtype.itemsize > KEPT_BUFFER_BYTES:
        return expand(weight)
    buffers = getattr(_call_buffers, "by_dtype", None)
    if buffers is None:
        buffers = _call_buffers.by_dtype = {}
    buffer = buffers.get(weight.dtype)
    if buffer is None or buffer.numel() < rows * cols:
        buffer = buffers[weight.dtype] = torch.empty(rows * cols, dtype=weight.dtype)
    return expand(weight, buffer[: rows * cols].view(rows, cols))
