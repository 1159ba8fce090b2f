"""The quantization grids of GGUF's block formats, as the solvers' sweep rounds onto them.

A GGUF tensor stores each row in blocks of 32 (or 256 for K-quants) consecutive inputs, each
block with its own fp16 scale (and min, and sub-block scales for K-quants). A grid here is the
set of values one block can hold: `fit` chooses a block's parameters the way the exporter will
store them (fp16 rounding included), `round` maps weights onto the grid, computing the value
exactly as llama.cpp and the `gguf` package dequantize it (same float32 operations, same
order), so that exporting loses nothing. Parameters are float32 tensors holding exact fp16 or
small-integer values, one row of `n_params` per (row, block).

Exact zeros: q8_0, q4_0, q5_0, q3_k and q6_k are symmetric, zero is always on their grid. q4_1
and q5_1 store value = d·q + m; with `keep_zero` the fit makes m an exact integer multiple of -d
(d is rounded up to few enough mantissa bits for d·z to be an exact fp16), so zero is on the
grid. q4_k and q5_k store d·sc·q - dmin·mn with independent 6-bit scale and min: they cannot
keep zeros, nor can a mixture that gives some layers one of them (q3_k_m, q4_k_m, q5_k_m).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ..errors import PrunellmError


def _fp16(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest fp16 value, kept as float32 (what a GGUF block stores)."""
    return x.to(torch.float16).to(torch.float32)


def _signed_absmax(w: torch.Tensor) -> torch.Tensor:
    """The value of largest magnitude along the last dim, with its sign: (..., K) -> (...)."""
    return torch.gather(w, -1, w.abs().argmax(dim=-1, keepdim=True)).squeeze(-1)


def _searched_scale(w: torch.Tensor, importance: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor:
    """Scale d (...,) for values d·c, c in [lo, hi], lowering Σ h (w - d·c)² over the last dim.

    As llama.cpp's make_qx_quants: 19 candidate scales around signed-absmax / |lo| each fix the
    codes, least squares then gives the best scale for those codes, and the best pair wins.
    h (importance, broadcastable to w) is diag(H) in the solvers: llama.cpp's imatrix is the
    same statistic. Without it every weight counts the same.
    """
    h = torch.ones_like(w) if importance is None else importance.expand_as(w)
    top = _signed_absmax(w)  # (...,)
    best_err = torch.full_like(top, float("inf"))
    best = torch.zeros_like(top)
    for step in range(-9, 10):
        d = top / (lo - 0.1 * step)
        c = torch.clamp(torch.round(_safe_div(w, d.unsqueeze(-1))), lo, hi)
        hc = h * c
        num, den = (hc * w).sum(dim=-1), (hc * c).sum(dim=-1)
        scale = _safe_div(num, den)
        err = -num * scale  # Σ h w² - (Σ h w c)² / Σ h c², less the constant Σ h w²
        better = err < best_err
        best_err, best = torch.where(better, err, best_err), torch.where(better, scale, best)
    return best


def _searched_scale_offset(w: torch.Tensor, importance: torch.Tensor | None,
                           maxq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale s and offset m >= 0 (...,) for values s·q - m, q in [0, maxq], lowering
    Σ h (w - s·q + m)² over the last dim.

    As llama.cpp's make_qkx2_quants (q4_k): 21 candidate scales from the min-max one, each fixes
    the codes, a weighted 2×2 least squares then gives the best scale and min for those codes
    (the min kept at or below zero, as the format stores it), and the best pair wins.
    """
    h = torch.ones_like(w) if importance is None else importance.expand_as(w)
    low = torch.clamp(w.amin(dim=-1), max=0.0)  # (...,)
    span = w.amax(dim=-1) - low
    best_scale, best_low = span / maxq, low  # min-max: the starting point and the fallback
    q = torch.clamp(torch.round(_safe_div(w - low.unsqueeze(-1), best_scale.unsqueeze(-1))), 0, maxq)
    best_err = (h * (best_scale.unsqueeze(-1) * q + low.unsqueeze(-1) - w) ** 2).sum(dim=-1)
    sum_h, sum_hw = h.sum(dim=-1), (h * w).sum(dim=-1)
    for step in range(21):
        inverse = _safe_div(torch.full_like(span, maxq - 1.0 + 0.1 * step), span)  # (...,)
        q = torch.clamp(torch.round(inverse.unsqueeze(-1) * (w - low.unsqueeze(-1))), 0, maxq)
        hq = h * q
        sum_q, sum_qq, sum_qw = hq.sum(dim=-1), (hq * q).sum(dim=-1), (hq * w).sum(dim=-1)
        det = sum_h * sum_qq - sum_q * sum_q
        scale = _safe_div(sum_h * sum_qw - sum_q * sum_hw, det)
        mn = _safe_div(sum_qq * sum_hw - sum_q * sum_qw, det)
        positive = mn > 0  # the format's min is never above zero: refit the scale alone
        scale = torch.where(positive, _safe_div(sum_qw, sum_qq), scale)
        mn = torch.where(positive, torch.zeros_like(mn), mn)
        err = (h * (scale.unsqueeze(-1) * q + mn.unsqueeze(-1) - w) ** 2).sum(dim=-1)
        better = (err < best_err) & (scale > 0)
        best_err = torch.where(better, err, best_err)
        best_scale, best_low = torch.where(better, scale, best_scale), torch.where(better, mn, best_low)
    return best_scale, -best_low


def _safe_div(w: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """w / d with 0 where d == 0 (an all-zero block: every code reproduces zero)."""
    return torch.where(d == 0, torch.zeros_like(w), w / torch.where(d == 0, torch.ones_like(d), d))


class GGUFGrid(ABC):
    """One GGUF block format. Shapes: w (N, K) rows of weights, params (N, n_params) per block,
    pos (K,) the position of each column inside its block (0..block-1)."""

    name: str
    block: int  # inputs per block
    n_params: int
    holds_zero: bool  # pruned weights stay exactly zero on this grid

    @abstractmethod
    def fit(self, w: torch.Tensor, keep_zero: bool, importance: torch.Tensor | None = None) -> torch.Tensor:
        """Block parameters (N, n_params) for whole blocks w (N, block); importance: per-weight
        weights of the squared rounding error, broadcastable to w (the grids that search use it)."""

    @abstractmethod
    def codes(self, w: torch.Tensor, params: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Nearest stored integers (N, K), as float32, for weights w at block positions pos."""

    @abstractmethod
    def values(self, codes: torch.Tensor, params: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The dequantized values (N, K), computed as the gguf package does."""

    def round(self, w: torch.Tensor, params: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """w (N, K) moved onto the grid: the values the stored block will give back."""
        return self.values(self.codes(w, params, pos), params, pos)

    sub: int = 32  # inputs per sub-block with its own integer scale (K-quants); = block otherwise

    def refit_sub(self, w: torch.Tensor, params: torch.Tensor, j: int,
                  importance: torch.Tensor | None = None) -> torch.Tensor:
        """params (N, P) with sub-block j's integer scale (and min) refitted to w (N, sub), the
        block-wide fp16 scales kept. Lets a sweep fit each sub-block when it reaches it."""
        return params


class SymmetricGrid(GGUFGrid):
    """q8_0, q4_0, q5_0: value = d · c, c an integer in [lo, hi], one fp16 d per 32 inputs.

    d is fitted as llama.cpp does: the largest-magnitude value maps to the end of the range
    (for the 4- and 5-bit types to -2^(b-1), which gains the one extra negative level)."""

    block = 32
    sub = 32
    n_params = 1
    holds_zero = True

    def __init__(self, name: str, lo: int, hi: int, divisor: float) -> None:
        self.name, self.lo, self.hi, self.divisor = name, lo, hi, divisor

    def fit(self, w: torch.Tensor, keep_zero: bool, importance: torch.Tensor | None = None) -> torch.Tensor:
        return _fp16(_searched_scale(w, importance, self.lo, self.hi)).unsqueeze(-1)  # (N, 1)

    def codes(self, w: torch.Tensor, params: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(_safe_div(w, params[:, :1])), self.lo, self.hi)

    def values(self, codes: torch.Tensor, params: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return params[:, :1] * codes


class OffsetGrid(GGUFGrid):
    """q4_1, q5_1: value = d · q + m, q in [0, 2^bits - 1], fp16 d and m per 32 inputs."""

    block = 32
    sub = 32
    n_params = 2
    holds_zero = True  # with keep_zero

    def __init__(self, name: str, bits: int) -> None:
        self.name, self.maxq, self.bits = name, 2**bits - 1, bits

    def fit(self, w: torch.Tensor, keep_zero: bool, importance: torch.Tensor | None = None) -> torch.Tensor:
        low, high = w.amin(dim=-1), w.amax(dim=-1)
        if not keep_zero:
            return torch.stack([_fp16((high - low) / self.maxq), _fp16(low)], dim=-1)
        low, high = torch.clamp(low, max=0.0), torch.clamp(high, min=0.0)
        # d with at most 11 - bits significant bits, rounded up so the range still fits:
        # then d·z (z < 2^bits) is an exact fp16, and d·z + m with m = -d·z is exactly 0.
        d = _round_up_to_bits((high - low) / self.maxq, 11 - self.bits)
        d = _fp16(d)
        z = torch.clamp(torch.round(_safe_div(-low, d)), 0, self.maxq)
        m = _fp16(-d * z)
        exact = m == -d * z
        # Only for d in fp16's subnormal range can m be inexact; such blocks lose exact zeros.
        m = torch.where(exact, m, _fp16(low))
        return torch.stack([d, m], dim=-1)

    def codes(self, w: torch.Tensor, params: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        d, m = params[:, :1], params[:, 1:2]
        return torch.clamp(torch.round(_safe_div(w - m, d)), 0, self.maxq)

    def values(self, codes: torch.Tensor, params: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return params[:, :1] * codes + params[:, 1:2]


class Q4KGrid(GGUFGrid):
    """q4_k (and q5_k): 256 inputs = 8 sub-blocks of 32; value = (d·sc_j)·q - dmin·mn_j, q in
    [0, 15] ([0, 31] for q5_k), sc_j and mn_j 6-bit integers, d and dmin fp16.
    params: [d, dmin, sc_0..7, mn_0..7]."""

    block = 256
    sub = 32
    n_params = 18
    holds_zero = False

    def __init__(self, name: str = "q4_k", bits: int = 4) -> None:
        self.name, self.maxq = name, 2**bits - 1

    def fit(self, w: torch.Tensor, keep_zero: bool, importance: torch.Tensor | None = None) -> torch.Tensor:
        subs = w.reshape(w.shape[0], 8, self.sub)  # (N, 8, 32)
        h = None if importance is None else importance.expand_as(w).reshape(subs.shape)
        scale, offset = _searched_scale_offset(subs, h, self.maxq)  # (N, 8) each
        d = _fp16(scale.amax(dim=-1) / 63)
        dmin = _fp16(offset.amax(dim=-1) / 63)
        sc = torch.clamp(torch.round(_safe_div(scale, d[:, None])), 0, 63)
        mn = torch.clamp(torch.round(_safe_div(offset, dmin[:, None])), 0, 63)
        return torch.cat([d[:, None], dmin[:, None], sc, mn], dim=-1)

    def refit_sub(self, w: torch.Tensor, params: torch.Tensor, j: int,
                  importance: torch.Tensor | None = None) -> torch.Tensor:
        scale, offset = _searched_scale_offset(w, importance, self.maxq)  # (N,)
        params = params.clone()
        params[:, 2 + j] = torch.clamp(torch.round(_safe_div(scale, params[:, 0])), 0, 63)
        params[:, 10 + j] = torch.clamp(torch.round(_safe_div(offset, params[:, 1])), 0, 63)
        return params

    def _scale_offset(self, params: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        j = pos // self.sub  # (K,) sub-block of each column
        scale = params[:, :1] * params[:, 2:10]  # (N, 8) exact: 11-bit d times 6-bit sc
        offset = params[:, 1:2] * params[:, 10:18]
        return scale[:, j], offset[:, j]

    def codes(self, w: torch.Tensor, params: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        scale, offset = self._scale_offset(params, pos)
        return torch.clamp(torch.round(_safe_div(w + offset, scale)), 0, self.maxq)

    def values(self, codes: torch.Tensor, params: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        scale, offset = self._scale_offset(params, pos)
        return scale * codes - offset


class _SignedSubBlockGrid(GGUFGrid):
    """256 inputs = 16 sub-blocks of 16; value = (d·sc_j)·c with a signed code c in
    [code_lo, code_hi] and a signed integer sub-block scale sc_j in [scale_lo, scale_hi], d fp16.
    params: [d, sc_0..15]. Symmetric: zero is on the grid. Subclasses set the ranges and how d
    is taken from the sub-block scales (`_block_scale`)."""

    block = 256
    sub = 16
    n_params = 17
    holds_zero = True
    code_lo: int
    code_hi: int
    scale_lo: int
    scale_hi: int

    def _block_scale(self, scale: torch.Tensor) -> torch.Tensor:
        """d (N,) from the sub-blocks' float scales (N, 16)."""
        raise NotImplementedError

    def fit(self, w: torch.Tensor, keep_zero: bool, importance: torch.Tensor | None = None) -> torch.Tensor:
        subs = w.reshape(w.shape[0], 16, self.sub)  # (N, 16, 16)
        h = None if importance is None else importance.expand_as(w).reshape(subs.shape)
        scale = _searched_scale(subs, h, self.code_lo, self.code_hi)  # (N, 16)
        d = self._block_scale(scale)
        sc = torch.clamp(torch.round(_safe_div(scale, d[:, None])), self.scale_lo, self.scale_hi)
        return torch.cat([d[:, None], sc], dim=-1)

    def refit_sub(self, w: torch.Tensor, params: torch.Tensor, j: int,
                  importance: torch.Tensor | None = None) -> torch.Tensor:
        params = params.clone()
        scale = _searched_scale(w, importance, self.code_lo, self.code_hi)
        params[:, 1 + j] = torch.clamp(torch.round(_safe_div(scale, params[:, 0])), self.scale_lo, self.scale_hi)
        return params

    def _scale(self, params: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return (params[:, :1] * params[:, 1:17])[:, pos // self.sub]  # exact: 11 bits times 8 at most

    def codes(self, w: torch.Tensor, params: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(_safe_div(w, self._scale(params, pos))), self.code_lo, self.code_hi)

    def values(self, codes: torch.Tensor, params: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self._scale(params, pos) * codes


class Q6KGrid(_SignedSubBlockGrid):
    """q6_k: c in [-32, 31], sc_j an 8-bit signed integer ([-127, 127]), d = max |scale| / 127."""

    name = "q6_k"
    code_lo, code_hi, scale_lo, scale_hi = -32, 31, -127, 127

    def _block_scale(self, scale: torch.Tensor) -> torch.Tensor:
        return _fp16(scale.abs().amax(dim=-1) / 127)


class Q3KGrid(_SignedSubBlockGrid):
    """q3_k: c in [-4, 3], sc_j a 6-bit signed integer in [-32, 31], d fp16 (negative when the
    largest sub-block scale is: as llama.cpp, that scale maps to -32)."""

    name = "q3_k"
    code_lo, code_hi, scale_lo, scale_hi = -4, 3, -32, 31

    def _block_scale(self, scale: torch.Tensor) -> torch.Tensor:
        return _fp16(_signed_absmax(scale) / -32)


def _round_up_to_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    """The smallest value >= x (x >= 0) with at most `bits` significant binary digits."""
    mantissa, exponent = torch.frexp(x)  # x = mantissa · 2^exponent, mantissa in [0.5, 1)
    return torch.ldexp(torch.ceil(mantissa * 2**bits) / 2**bits, exponent)


GGUF_GRIDS: dict[str, GGUFGrid] = {
    grid.name: grid
    for grid in (
        SymmetricGrid("q8_0", -127, 127, 127.0),
        SymmetricGrid("q4_0", -8, 7, -8.0),
        SymmetricGrid("q5_0", -16, 15, -16.0),
        OffsetGrid("q4_1", 4),
        OffsetGrid("q5_1", 5),
        Q3KGrid(),
        Q4KGrid(),
        Q4KGrid("q5_k", 5),
        Q6KGrid(),
    )
}


# llama.cpp's mixtures (llama-quantize's _M types), by their base type and the types some roles
# get (llama_tensor_get_type, for models without experts):
# - q4_k_m, q5_k_m: q6_k for attn_v and ffn_down in the first and last eighth of the blocks and
#   every third block between (`use_more_bits`);
# - q3_k_m: q5_k for attn_v in the first two blocks and q4_k after; q5_k for ffn_down in the
#   first sixteenth of the blocks and q4_k after; q4_k for attn_output.
GGUF_MIXES: dict[str, tuple[str, tuple[str, ...]]] = {
    "q4_k_m": ("q4_k", ("q6_k",)),
    "q5_k_m": ("q5_k", ("q6_k",)),
    "q3_k_m": ("q3_k", ("q4_k", "q5_k")),
}
MIX_ROLES = ("attn_v", "ffn_down", "attn_output")


def gguf_grid(name: str) -> GGUFGrid:
    """The grid of a GGUF type by its name ('q4_0', 'Q4_K', ...); a mixture gives its base."""
    key = name.lower()
    key = GGUF_MIXES[key][0] if key in GGUF_MIXES else key
    if key not in GGUF_GRIDS:
        raise PrunellmError(f"unknown GGUF type '{name}': choose {', '.join([*GGUF_GRIDS, *GGUF_MIXES])}")
    return GGUF_GRIDS[key]


def _use_more_bits(block: int, n_blocks: int) -> bool:
    eighth = n_blocks // 8
    return block < eighth or block >= 7 * n_blocks // 8 or (block - eighth) % 3 == 2


def mixed_layer_type(name: str, role: str | None, block: int, n_blocks: int) -> str:
    """The type a mixture gives one layer (role 'attn_v', 'ffn_down', 'attn_output' or other),
    as llama.cpp's quantizer does; a plain type is returned unchanged."""
    key = name.lower()
    if key not in GGUF_MIXES:
        return key
    base = GGUF_MIXES[key][0]
    if key == "q3_k_m":
        if role == "attn_v":
            return "q5_k" if block < 2 else "q4_k"
        if role == "ffn_down":
            return "q5_k" if block < n_blocks // 16 else "q4_k"
        return "q4_k" if role == "attn_output" else base
    return "q6_k" if role in ("attn_v", "ffn_down") and _use_more_bits(block, n_blocks) else base


def mix_types(name: str) -> tuple[str, ...]:
    """Every type a GGUF type or mixture can give a layer (the plain type alone for a plain one)."""
    key = name.lower()
    return (GGUF_MIXES[key][0], *GGUF_MIXES[key][1]) if key in GGUF_MIXES else (gguf_grid(key).name,)


# What llama.cpp's quantizer uses for a tensor whose rows a K-quant's 256-blocks cannot tile.
K_FALLBACK = {"q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


def layer_gguf_type(name: str, in_features: int) -> str:
    """The type a layer of this width gets: `name`, or llama.cpp's fallback for K-quants when
    in_features is not a multiple of 256 (Gemma-3-270M's 640 inputs, for one)."""
    grid = gguf_grid(name)
    if in_features % grid.block and grid.name in K_FALLBACK:
        return K_FALLBACK[grid.name]
    return grid.name


def check_gguf_problem(name: str, in_features: int | None, sparse: bool) -> GGUFGrid:
    """The grid for a layer problem (in_features None: any width; otherwise with llama.cpp's
    fallback for K-quants), or a one-line error if the type cannot hold it."""
    grid = gguf_grid(name)
    if sparse:
        # A mixture keeps zeros only if every type it gives a layer does (q3_k_m's q4_k/q5_k do not).
        for member in mix_types(name):
            if not GGUF_GRIDS[member].holds_zero:
                mixed = f" (which {name.lower()} gives some layers)" if member != name.lower() else ""
                raise PrunellmError(f"{member}{mixed} cannot keep pruned weights at exactly zero (its blocks store "
                                    f"d·sc·q - dmin·m); use q4_0, q5_0, q8_0, q3_k, q6_k or q4_1/q5_1 with sparsity")
    if in_features is not None:
        grid = gguf_grid(layer_gguf_type(name, in_features))
    if in_features is not None and in_features % grid.block:
        raise PrunellmError(f"{grid.name} stores blocks of {grid.block} inputs; in_features {in_features} "
                            f"is not a multiple of {grid.block}")
    return grid


@dataclass
class GGUFBlocks:
    """Where a layer ended on a GGUF grid: params (R, C / block, n_params) per row and block.
    The exporter packs codes(weight) and params into the type's bytes."""

    type: str
    params: torch.Tensor

    @property
    def grid(self) -> GGUFGrid:
        return gguf_grid(self.type)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """Stored integers (R, C) of a weight on this grid (float32 holding integers)."""
        return self._blockwise(weight, self.grid.codes)

    def round(self, weight: torch.Tensor) -> torch.Tensor:
        """weight (R, C) moved onto this grid (the identity for the solver's own result)."""
        return self._blockwise(weight, self.grid.round)

    def _blockwise(self, weight: torch.Tensor, fn) -> torch.Tensor:
        grid = self.grid
        rows, cols = weight.shape
        blocks = weight.to(torch.float32).reshape(rows * cols // grid.block, grid.block)
        params = self.params.reshape(-1, grid.n_params).to(weight.device)
        pos = torch.arange(grid.block, device=weight.device)
        return fn(blocks, params, pos).reshape(rows, cols)


def fit_gguf_blocks(name: str, weight: torch.Tensor, keep_zero: bool,
                    importance: torch.Tensor | None = None) -> GGUFBlocks:
    """Fit every block of weight (R, C) to a GGUF type. importance: (C,) weights of each input's
    squared rounding error (diag(H)), or None."""
    grid = gguf_grid(name)
    rows, cols = weight.shape
    h = None
    if importance is not None:
        h = importance.to(torch.float32).reshape(1, cols).expand(rows, cols).reshape(-1, grid.block)
    params = grid.fit(weight.to(torch.float32).reshape(-1, grid.block), keep_zero, h)
    return GGUFBlocks(grid.name, params.reshape(rows, cols // grid.block, grid.n_params))
