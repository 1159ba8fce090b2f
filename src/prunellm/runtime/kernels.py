"""y = x @ Wᵀ for a few tokens (decode), reading W in its compressed layout (formats/compressed/layer.py).

At decode a linear layer is bound by the bytes of its weight: each weight serves 1 to 16 tokens
and is never reused. These Triton kernels stream the packed bytes and decompress them in
registers, so a 4-bit layer (groups of 128) moves 27% of the bytes of its fp16 form and a 2:4
layer 56%:

- "quant"   dense codes in 4-bit or 8-bit containers (3 to 8 bits), scales per group or per row;
- "nm"      2:4, the kept values in fp16/bf16 ("values") or as 4/8-bit codes ("qvalues").

One kernel serves them all. A program owns BLOCK_N rows and walks their columns in tiles of
BLOCK_K. For a tile it loads the rows' packed bytes as int32 words, consecutive along a row
(coalesced), unpacks the codes with shifts, dequantizes them exactly as `decompress_weight` does
(float32 scale * (code - zero), rounded to the layer's dtype) and, for 2:4, puts each group's two
kept values at their 2-bit positions to rebuild the dense tile in registers. The tile then meets
the tokens: one token as products summed into a (BLOCK_N, BLOCK_K) float32 accumulator that is
reduced once at the end (a GEMV on CUDA cores); 2 to 16 tokens through tensor cores, `tl.dot` of
the weight tile (as M, the large side) with the tokens padded to 16 (tl.dot's smallest size).
Products are summed in float32. BLOCK_K divides the group size, so a tile needs one scale and
zero point per row.

Split-K: 4096 rows in tiles of 32 make 128 programs for an H100's 132 SMs, too few to keep enough
bytes in flight. With SPLIT_K > 1, that many programs share a row tile, each walking a contiguous
range of the tiles and writing its float32 partial sums, which torch adds (deterministic, no
atomics). A handful of configurations (CONFIGS: row tile, K tile, split) are timed on the first
call for each layer and batch kind (1 token, or more) and the fastest is kept.

Not covered: unstructured "bitmask" layers. A row's values sit at data-dependent offsets (the
count of its mask bits before them), so each tile needs a prefix scan of its mask and gathered
nibble loads, and at 50% sparsity + 4-bit the layout saves only a quarter of the bytes of dense
4-bit (1 mask bit + 2 bits of codes per weight, against 4). Dense 4-bit is already close to the
ALU budget at decode (an H100 streams ~6.7e12 4-bit weights/s from HBM and issues ~3.3e13 lane
instructions/s: about 5 per weight), so a kernel adding a scan and gathers to save 25% of the
bytes would be slower, not faster. A bitmask + 4-bit layer converts losslessly to "quant" (a
pruned weight is the code of its zero point) and runs there.

Triton compiles for CUDA; with TRITON_INTERPRET=1 (set before triton is imported) the same kernel
runs on CPU tensors, slowly, which is how the tests check it. `available` ignores the interpreter:
the runtime never runs inference through it.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass

import torch

from prunellm.formats.compressed.layer import DTYPES, CompressedWeight, LayerSpec
from prunellm.formats.compressed.packing import container_bits

MAX_TOKENS = 16  # the dot path pads the tokens to 16, tl.dot's smallest M


@dataclass(frozen=True)
class KernelConfig:
    block_n: int  # rows per program
    block_k: int  # columns per tile (at most: the layer's groups may need fewer)
    split_k: int  # programs sharing a row tile
    num_warps: int = 4
    num_stages: int = 3


# Timed on the first call for each layer shape (a few, so tuning stays short). At 4096 rows they
# launch 64 to 1024 programs (at 11008 rows, 172 to 2752) for 132 SMs: the tiles trade bytes in
# flight per program against the number of programs and the split-K partial sums.
CONFIGS = (
    KernelConfig(16, 256, 1),
    KernelConfig(16, 256, 4),
    KernelConfig(32, 128, 1),
    KernelConfig(32, 128, 4),
    KernelConfig(64, 128, 1),
    KernelConfig(64, 128, 4),
)
DEFAULT_CONFIG = CONFIGS[2]  # untimed: under the interpreter


def available() -> bool:
    """A CUDA device is present and Triton is installed. The interpreter does not count: it runs the
    kernels on the CPU only for tests, thousands of times slower than torch."""
    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None


def supports(spec: LayerSpec, tokens: int) -> bool:
    """Whether a kernel computes this layer's product for `tokens` rows of input."""
    return _unsupported(spec, tokens) is None


def compressed_matmul(x: torch.Tensor, packed: CompressedWeight) -> torch.Tensor:
    """x (B, C) @ Wᵀ -> (B, R) in the layer's dtype, W read in its compressed layout, products summed
    in float32. Raises ValueError when no kernel covers the layer or x does not fit it.

    The first call for a layer shape times CONFIGS (a fraction of a second, plus compiling): call
    once before capturing a CUDA graph."""
    problem = _check(x, packed)
    if problem is not None:
        raise ValueError(problem)
    x = x.contiguous()
    key = (packed.spec, x.shape[0] > 1, x.device)
    config = _TUNED.get(key)
    if config is None:
        config = _tune(x, packed) if x.is_cuda else DEFAULT_CONFIG
        _TUNED[key] = config
    return launch(x, packed, config)


def tuned_config(spec: LayerSpec, tokens: int, device: torch.device) -> KernelConfig | None:
    """The configuration `compressed_matmul` chose for this layer and batch, once it has run."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _TUNED.get((spec, tokens > 1, device))


def launch(x: torch.Tensor, packed: CompressedWeight, config: KernelConfig) -> torch.Tensor:
    """The product with one given configuration (no checks: `compressed_matmul` makes them)."""
    import triton

    spec = packed.spec
    rows, cols = spec.shape
    tokens = x.shape[0]
    block_k = min(config.block_k, _max_block_k(spec))
    # A partial sum per split, added in float32 after; one split writes the result directly.
    if config.split_k == 1:
        out = torch.empty(tokens, rows, dtype=x.dtype, device=x.device)
    else:
        out = torch.empty(config.split_k, tokens, rows, dtype=torch.float32, device=x.device)
    layout, payload, positions, scales, zeros, groups, code_bits = _operands(packed, x)
    kernel = _kernel()[0]
    kernel[(triton.cdiv(rows, config.block_n), config.split_k)](
        x, out, payload, positions, scales, zeros,
        tokens, rows, cols, spec.group_size or cols, groups,
        LAYOUT=layout, CODE_BITS=code_bits, DOT=tokens > 1,
        INTERPRETED=_interpreted(), BLOCK_N=config.block_n, BLOCK_K=block_k, SPLIT_K=config.split_k,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out if config.split_k == 1 else out.sum(dim=0).to(x.dtype)


def _operands(packed: CompressedWeight, filler: torch.Tensor) -> tuple:
    """What both kernels take for a layer: (LAYOUT, packed values, positions, scales, zeros, groups
    per row, CODE_BITS); `filler` stands in for the tensors a layout does not read."""
    spec, parts = packed.spec, packed.tensors
    if spec.layout == "quant":
        layout, payload, positions = "quant", _words(parts["qweight"]), filler
    elif spec.quantized:
        layout, payload, positions = "nm_quant", _words(parts["qvalues"]), _words(parts["indices"])
    else:
        layout, payload, positions = "nm", parts["values"], _words(parts["indices"])
    if not spec.quantized:
        return layout, payload, positions, filler, filler, 1, 0
    return layout, payload, positions, parts["scales"], parts["zeros"], parts["scales"].shape[1], container_bits(spec.bits)


def can_expand(spec: LayerSpec) -> bool:
    """Whether `expand` covers this layer (the layouts and grids the decode kernels read)."""
    return _unsupported(spec, 1) is None


def expand(packed: CompressedWeight, block_n: int = 32) -> torch.Tensor:
    """The dense (R, C) weight in the layer's dtype, bit for bit `decompress_weight`'s, written by
    one kernel reading the packed bytes once: a prefill's matrix product then runs on tensor
    cores over it. Raises ValueError for a layer `can_expand` refuses."""
    import triton

    spec, parts = packed.spec, packed.tensors
    problem = _unsupported(spec, 1)
    if problem is not None:
        raise ValueError(problem)
    rows, cols = spec.shape
    device = next(iter(parts.values())).device
    if device.type != "cuda" and not _interpreted():
        raise ValueError("the kernels run on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1, for tests)")
    out = torch.empty(rows, cols, dtype=DTYPES[spec.dtype], device=device)
    block_k = min(128, _max_block_k(spec))
    layout, payload, positions, scales, zeros, groups, code_bits = _operands(packed, out)
    _kernel()[1][(triton.cdiv(rows, block_n), cols // block_k)](
        out, payload, positions, scales, zeros, rows, cols, spec.group_size or cols, groups,
        LAYOUT=layout, CODE_BITS=code_bits, INTERPRETED=_interpreted(),
        BLOCK_N=block_n, BLOCK_K=block_k,
    )
    return out


_TUNED: dict[tuple, KernelConfig] = {}  # (spec, tokens > 1, device) -> the fastest of CONFIGS


def _tune(x: torch.Tensor, packed: CompressedWeight) -> KernelConfig:
    """The fastest of CONFIGS for this layer and batch (do_bench clears the L2 cache between
    calls, so the weight streams from memory as at decode). Configs whose K tile the layer's
    groups clip to the same tile are timed once."""
    from triton.testing import do_bench

    candidates = {}
    for config in CONFIGS:
        clipped = KernelConfig(config.block_n, min(config.block_k, _max_block_k(packed.spec)), config.split_k,
                               config.num_warps, config.num_stages)
        candidates.setdefault(clipped, config)
    times = {config: do_bench(lambda: launch(x, packed, config), warmup=5, rep=20) for config in candidates.values()}
    return min(times, key=times.get)


def _unsupported(spec: LayerSpec, tokens: int) -> str | None:
    """Why no kernel covers this layer and batch, or None when one does."""
    rows, cols = spec.shape
    if not 1 <= tokens <= MAX_TOKENS:
        return f"{tokens} tokens: the kernels take 1 to {MAX_TOKENS} (decode)"
    if spec.dtype not in ("float16", "bfloat16"):
        return f"{spec.dtype} layers have no kernel (float16 and bfloat16 do)"
    if spec.layout == "quant":
        if container_bits(spec.bits) not in (4, 8):
            return f"{spec.bits}-bit codes have no kernel (3 to 8 bits do)"
    elif spec.layout == "nm":
        if (spec.n, spec.m) != (2, 4):
            return f"{spec.n}:{spec.m} has no kernel (2:4 does)"
        if spec.quantized and container_bits(spec.bits) not in (4, 8):
            return f"{spec.bits}-bit 2:4 values have no kernel (3 to 8 bits do)"
    else:
        return f"layout {spec.layout!r} has no kernel (quant and 2:4 do; see this module's docstring)"
    if spec.quantized and spec.group_size is not None and cols % spec.group_size:
        return f"group size {spec.group_size} does not divide {cols} columns"
    smallest = 32 if spec.layout == "nm" else 16  # a word of 2:4 positions covers 32 columns; tl.dot's K
    if _max_block_k(spec) < smallest:
        return (f"{cols} columns (group size {spec.group_size}) split into no tile of a power of two >= "
                f"{smallest} columns")
    return None


def _max_block_k(spec: LayerSpec) -> int:
    """The largest K tile (a power of two, 256 at most) dividing the columns and the group size, so
    that tiles never straddle a group (one scale per row and tile) nor end past the row."""
    _, cols = spec.shape
    span = math.gcd(cols, spec.group_size) if spec.quantized and spec.group_size else cols
    return min(span & -span, 256)  # the lowest set bit: the largest power of two dividing span


def _check(x: torch.Tensor, packed: CompressedWeight) -> str | None:
    spec = packed.spec
    if x.dim() != 2:
        return f"x must be (tokens, in_features), got shape {tuple(x.shape)}"
    problem = _unsupported(spec, x.shape[0])
    if problem is not None:
        return problem
    if x.shape[1] != spec.shape[1] or x.dtype != DTYPES[spec.dtype]:
        return f"x {tuple(x.shape)} {x.dtype} does not fit a {spec.shape} {spec.dtype} layer"
    needed = {"quant": ["qweight"], "nm": ["indices", "qvalues" if spec.quantized else "values"]}[spec.layout]
    needed += ["scales", "zeros"] if spec.quantized else []
    missing = [name for name in needed if name not in packed.tensors]
    if missing:
        return f"the packed layer lacks {missing}"
    expected = {"values": x.dtype, "scales": torch.float32}
    wrong = [name for name in needed if packed.tensors[name].dtype != expected.get(name, torch.uint8)]
    if wrong:
        return f"the packed layer's {wrong} have the wrong dtype"
    rows, cols = spec.shape
    groups = cols // spec.group_size if spec.group_size else 1
    if spec.quantized and any(packed.tensors[name].shape != (rows, groups) for name in ("scales", "zeros")):
        return f"scales and zeros must be ({rows}, {groups})"
    if any(packed.tensors[name].device != x.device for name in needed):
        return "x and the packed layer are on different devices"
    if not x.is_cuda and not _interpreted():
        return "the kernels run on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1, for tests)"
    return None


def _words(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (R, bytes) viewed as int32 (R, bytes / 4): four bytes a load, the first in the lowest
    bits (little-endian, as CUDA devices and x86 are), so code j of a word sits at bit j * bits."""
    packed = packed.contiguous()
    if packed.data_ptr() % 4 or packed.storage_offset() % 4:
        packed = packed.clone()  # a view into a file's bytes may start mid-word: better copied once, at load
    return packed.view(torch.int32)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


_KERNEL: tuple[bool, tuple] | None = None  # (interpreted?, (the product kernel, the expansion kernel))


def _kernel():
    """The kernel, defined on first use (importing this module needs no triton). Triton decides when
    a function is defined whether it compiles or interprets it, and the interpreter finds a kernel's
    helpers only among the module's globals: the helpers are bound there, for one kind at a time
    (defined again should TRITON_INTERPRET change)."""
    global _KERNEL
    interpret = _interpreted()
    if _KERNEL is None or _KERNEL[0] != interpret:
        _KERNEL = (interpret, _define_kernel())
    return _KERNEL[1]


def _define_kernel():
    global _unpack, _to_dtype, _dequantize, _weight_tile
    import triton
    import triton.language as tl

    @triton.jit
    def _unpack(words, BITS: tl.constexpr, ROWS: tl.constexpr, WORDS: tl.constexpr):
        """(ROWS, WORDS) int32 -> (ROWS, WORDS * 32 / BITS) codes, in order (the first in the lowest bits)."""
        shifts = tl.arange(0, 32 // BITS) * BITS  # (32 / BITS,)
        codes = (words[:, :, None] >> shifts[None, None, :]) & ((1 << BITS) - 1)  # (ROWS, WORDS, 32 / BITS)
        return tl.reshape(codes, (ROWS, WORDS * (32 // BITS)))

    @triton.jit
    def _to_dtype(v, DTYPE: tl.constexpr, INTERPRETED: tl.constexpr):
        """float32 -> DTYPE, rounding to nearest even as torch does."""
        if INTERPRETED and DTYPE == tl.bfloat16:
            # Triton's interpreter truncates float32 -> bfloat16; round the float32 bits first (to
            # nearest, ties to even) so the cast that follows drops only zeros. Compiled casts round.
            bits = v.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            v = bits.to(tl.float32, bitcast=True)
        return v.to(DTYPE)

    @triton.jit
    def _dequantize(codes, S, Z, rows, group, G, DTYPE: tl.constexpr, INTERPRETED: tl.constexpr):
        """codes (N, K) int32 of rows (N, 1), all in one group -> weights in DTYPE, as decompress_weight."""
        scale = tl.load(S + rows * G + group)  # (N, 1) float32
        zero = tl.load(Z + rows * G + group).to(tl.float32)  # (N, 1)
        # code - zero without an int -> float conversion per weight (a slow instruction on NVIDIA
        # GPUs): the float whose bits are 0x4B000000 | code is 2^23 + code, and 2^23 + zero is
        # exact, so their difference is code - zero exactly, as decompress_weight computes it.
        shifted = (codes | 0x4B000000).to(tl.float32, bitcast=True)
        return _to_dtype(scale * (shifted - (8388608.0 + zero)), DTYPE, INTERPRETED)

    @triton.jit
    def _weight_tile(A, P, S, Z, rows, t, C, GROUP, G,
                    LAYOUT: tl.constexpr, CODE_BITS: tl.constexpr, DTYPE: tl.constexpr, INTERPRETED: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """The dense (BLOCK_N, BLOCK_K) tile t of rows (BLOCK_N, 1), in DTYPE, from its packed form."""
        group = t * BLOCK_K // GROUP  # the tile lies in one group (BLOCK_K divides GROUP)
        if LAYOUT == "quant":
            TILE_WORDS: tl.constexpr = BLOCK_K * CODE_BITS // 32
            words = tl.load(A + rows * (C * CODE_BITS // 32) + t * TILE_WORDS + tl.arange(0, TILE_WORDS)[None, :])
            w = _dequantize(_unpack(words, CODE_BITS, BLOCK_N, TILE_WORDS), S, Z, rows, group, G, DTYPE, INTERPRETED)
        else:
            # 2:4: BLOCK_K / 4 groups, each with two kept values (in order) and their positions 0..3.
            KEPT: tl.constexpr = BLOCK_K // 2
            if LAYOUT == "nm_quant":
                TILE_WORDS: tl.constexpr = KEPT * CODE_BITS // 32
                words = tl.load(A + rows * (C // 2 * CODE_BITS // 32) + t * TILE_WORDS
                                + tl.arange(0, TILE_WORDS)[None, :])
                kept = _dequantize(_unpack(words, CODE_BITS, BLOCK_N, TILE_WORDS), S, Z, rows, group, G,
                                  DTYPE, INTERPRETED)  # (BLOCK_N, KEPT)
            else:
                kept = tl.load(A + rows * (C // 2) + t * KEPT + tl.arange(0, KEPT)[None, :])  # (BLOCK_N, KEPT)
            first, second = tl.split(tl.reshape(kept, (BLOCK_N, BLOCK_K // 4, 2)))  # (BLOCK_N, BLOCK_K / 4)
            # 2-bit positions, 16 to a word: a group's two in one nibble, the first in its low bits.
            POSITION_WORDS: tl.constexpr = BLOCK_K // 32
            words = tl.load(P + rows * (C // 32) + t * POSITION_WORDS + tl.arange(0, POSITION_WORDS)[None, :])
            nibbles = _unpack(words, 4, BLOCK_N, POSITION_WORDS)  # (BLOCK_N, BLOCK_K / 4)
            at = tl.arange(0, 4)[None, None, :]
            dense = tl.where((nibbles & 3)[:, :, None] == at, first[:, :, None],
                             tl.where((nibbles >> 2)[:, :, None] == at, second[:, :, None], 0.0))  # (N, K / 4, 4)
            w = tl.reshape(dense, (BLOCK_N, BLOCK_K))
        return w

    @triton.jit
    def compressed_matmul_kernel(
        X, Out, A, P, S, Z,  # x (B, C); out (B, R) or split-K partials (SPLIT_K, B, R) float32; packed parts
        B, R, C, GROUP, G,  # tokens, rows, columns, columns per group (C per row), groups per row
        LAYOUT: tl.constexpr, CODE_BITS: tl.constexpr, DOT: tl.constexpr, INTERPRETED: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    ):
        DTYPE: tl.constexpr = X.dtype.element_ty
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        # Rows past R read row R - 1 (no masks on the weight loads) and are not stored.
        safe_rows = tl.minimum(rows, R - 1).to(tl.int64)[:, None]  # (BLOCK_N, 1)
        tiles = C // BLOCK_K
        per_split = tl.cdiv(tiles, SPLIT_K)
        first_tile = tl.program_id(1) * per_split
        last_tile = tl.minimum(first_tile + per_split, tiles)
        cols = tl.arange(0, BLOCK_K)
        tokens = tl.arange(0, 16)
        if DOT:
            acc = tl.zeros((BLOCK_N, 16), dtype=tl.float32)  # weights as M, tokens (padded to 16) as N
        else:
            acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)  # summed over K once, at the end
        for t in range(first_tile, last_tile):
            w = _weight_tile(A, P, S, Z, safe_rows, t, C, GROUP, G, LAYOUT, CODE_BITS, DTYPE, INTERPRETED,
                            BLOCK_N, BLOCK_K)  # (BLOCK_N, BLOCK_K)
            if DOT:
                x = tl.load(X + tokens[None, :] * C + t * BLOCK_K + cols[:, None], mask=tokens[None, :] < B,
                            other=0.0)  # (BLOCK_K, 16)
                if INTERPRETED and DTYPE == tl.bfloat16:
                    # The interpreter multiplies bfloat16 as its raw 16-bit integers; in float32 the
                    # products are the same (exact) and so is the float32 sum.
                    acc += tl.dot(w.to(tl.float32), x.to(tl.float32), input_precision="ieee")
                else:
                    acc = tl.dot(w, x, acc)
            else:
                x = tl.load(X + t * BLOCK_K + cols)  # (BLOCK_K,) the one token
                acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        out = Out + tl.program_id(1) * B * R  # this split's partial sums (the result if SPLIT_K == 1)
        if DOT:
            y = _to_dtype(acc, Out.dtype.element_ty, INTERPRETED)  # (BLOCK_N, 16)
            tl.store(out + tokens[None, :] * R + rows[:, None], y, mask=(rows[:, None] < R) & (tokens[None, :] < B))
        else:
            y = _to_dtype(tl.sum(acc, axis=1), Out.dtype.element_ty, INTERPRETED)  # (BLOCK_N,)
            tl.store(out + rows, y, mask=rows < R)

    @triton.jit
    def expand_kernel(Out, A, P, S, Z, R, C, GROUP, G,
                      LAYOUT: tl.constexpr, CODE_BITS: tl.constexpr, INTERPRETED: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """The dense (R, C) weight, one (BLOCK_N, BLOCK_K) tile a program: what prefill multiplies."""
        DTYPE: tl.constexpr = Out.dtype.element_ty
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        safe_rows = tl.minimum(rows, R - 1).to(tl.int64)[:, None]  # (BLOCK_N, 1)
        t = tl.program_id(1)
        w = _weight_tile(A, P, S, Z, safe_rows, t, C, GROUP, G, LAYOUT, CODE_BITS, DTYPE, INTERPRETED,
                         BLOCK_N, BLOCK_K)  # (BLOCK_N, BLOCK_K)
        cols = t * BLOCK_K + tl.arange(0, BLOCK_K)
        tl.store(Out + safe_rows * C + cols[None, :], w, mask=rows[:, None] < R)

    return compressed_matmul_kernel, expand_kernel
