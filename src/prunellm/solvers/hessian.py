"""Second-order statistics of a layer's input, shared by every method.

The layer-wise problem of SparseGPT and GPTQ is min ||WX - ŴX||², whose Hessian is
H = 2 X Xᵀ (here normalised by the token count so that damping is scale-free).
Wanda only needs the diagonal (the squared input norms), so the accumulator can keep
just that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


PANEL_ELEMENTS = 1 << 20  # elements in one panel temporary of the in-place steps below (4 MiB in float32)


class HessianAccumulator:
    """Running H = 2/N · Σ_t x_t x_tᵀ over the N tokens seen so far, in float32.

    `add` takes any (..., cols) activation; the running mean keeps the values O(1)
    whatever the number of calibration tokens. With `diag_only`, keeps diag(H) alone:
    (cols,) instead of (cols, cols).

    H is symmetric, so `add` computes only its upper triangle, in TRIANGLE_PANELS row panels
    (panel i times the columns from i on): 5/8 of the full product's arithmetic with four
    panels (timed by bench/solver_parts.py: see bench/README.md, section "Speed"). Reading `H`
    mirrors it into the lower half.

    held_out_every k > 0: of the calibration windows (the leading dimension of what `add` gets,
    a (batch, tokens, cols) activation; a 2-D one is one window), those numbered 1, 1 + k,
    1 + 2k, ... also go into `held_out`, an accumulator of their own: H over windows a solver did
    not fit, to score a choice on (solvers/shrink_choice.py). They stay in H as well.
    """

    TRIANGLE_PANELS = 4

    def __init__(self, columns: int, *, device: torch.device | str = "cpu", diag_only: bool = False,
                 held_out_every: int = 0) -> None:
        self.columns = columns
        self.diag_only = diag_only
        shape = (columns,) if diag_only else (columns, columns)
        self._H = torch.zeros(shape, dtype=torch.float32, device=device)
        self._mirrored = True
        self.num_tokens = 0
        self.held_out_every = held_out_every
        self.held_out = HessianAccumulator(columns, device=device, diag_only=diag_only) if held_out_every else None
        self._windows = 0  # windows seen so far, for the held-out numbering

    def add(self, x: torch.Tensor) -> None:
        if self.held_out is not None:
            windows = x.reshape(-1, *x.shape[-2:]) if x.dim() >= 3 else x.reshape(1, -1, self.columns)  # (B, T, C)
            k = self.held_out_every
            held = [i for i in range(windows.shape[0]) if (self._windows + i) % k == 1 % k]
            if held:
                self.held_out.add(windows[held])
            self._windows += windows.shape[0]
        x = x.reshape(-1, self.columns)  # (T, C)
        n = x.shape[0]
        if n == 0:
            return
        x = x.to(device=self._H.device)
        total = self.num_tokens + n
        # Rescale the old mean rather than summing raw outer products: no overflow for long runs.
        self._H.mul_(self.num_tokens / total)
        if self.diag_only:
            self._H.add_(x.to(torch.float32).pow(2).sum(0), alpha=2.0 / total)
        elif x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and _half_products_to_float32(x):
            # Tensor cores: 16-bit inputs, float32 products and sums. Each product of two 16-bit
            # values is exact in float32, so this is the float32 product of the same inputs up to
            # summation order, at the 16-bit GEMM's speed.
            for start, stop in self._panels():
                panel = torch.mm(x[:, start:stop].t(), x[:, start:], out_dtype=torch.float32)  # (P, C - start)
                self._H[start:stop, start:].add_(panel, alpha=2.0 / total)
            self._mirrored = False
        else:
            x = x.to(torch.float32)
            for start, stop in self._panels():
                # rows [start, stop), columns from start on: (P, T) @ (T, C - start)
                self._H[start:stop, start:].addmm_(x[:, start:stop].t(), x[:, start:], alpha=2.0 / total)
            self._mirrored = False
        self.num_tokens = total

    @property
    def H(self) -> torch.Tensor:
        """The accumulated H: (C, C), or (C,) with `diag_only`. In-place changes to it are kept."""
        if not self._mirrored:
            for start, stop in self._panels():  # lower half from the upper, panel by panel: no (C, C) temporary
                block = self._H[start:stop, start:stop]
                block.copy_(torch.triu(block) + torch.triu(block, 1).t())
                self._H[stop:, start:stop] = self._H[start:stop, stop:].t()
            self._mirrored = True
        return self._H

    @property
    def diag(self) -> torch.Tensor:
        return self._H if self.diag_only else torch.diagonal(self._H)

    def _panels(self) -> list[tuple[int, int]]:
        size = max(128, -(-self.columns // self.TRIANGLE_PANELS))
        return [(start, min(start + size, self.columns)) for start in range(0, self.columns, size)]


_HALF_TO_FLOAT32: dict[str, bool] = {}  # device -> whether torch.mm(..., out_dtype=float32) runs there


def _half_products_to_float32(x: torch.Tensor) -> bool:
    """Whether this torch multiplies 16-bit matrices into float32 on x's device (CUDA, torch >= 2.8)."""
    key = str(x.device)
    if key not in _HALF_TO_FLOAT32:
        try:
            torch.mm(x[:1, :1].t(), x[:1, :1], out_dtype=torch.float32)
            _HALF_TO_FLOAT32[key] = True
        except (TypeError, RuntimeError, NotImplementedError):  # older torch, or no such kernel
            _HALF_TO_FLOAT32[key] = False
    return _HALF_TO_FLOAT32[key]


@dataclass
class InverseHessian:
    """Upper Cholesky factor U of the damped H⁻¹ (H⁻¹ = UᵀU), as SparseGPT's sweep wants it.

    Row j of U, scaled by 1/U[j, j], is the OBS update that spreads the error of removing
    column j over the columns after it; U[j, j]² is [H_{F}⁻¹]_jj of the remaining set F.
    """

    upper: torch.Tensor  # (C, C) float32
    dead: torch.Tensor  # (C,) bool: inputs that were always zero
    damp_frac: float  # the damping that was finally used (may exceed the one asked for)
    retries: int  # how many times damping had to be raised


def damped_inverse(H: torch.Tensor, damp_frac: float = 0.01, *, max_retries: int = 6,
                   restore: Callable[[torch.Tensor], None] | None = None) -> InverseHessian:
    """Cholesky factor of (H + λI)⁻¹ with λ = damp_frac · mean(diag H), as the paper's code.

    Dead inputs (zero diagonal) get H_jj = 1 so the matrix stays invertible; their weights
    are set to zero by the caller. If H + λI is still not positive definite (rank-deficient
    calibration data, bad numerics), λ is multiplied by 10 up to `max_retries` times; the
    result says so, so that the caller can warn naming the layer.

    restore: H (float32, contiguous) is the caller's to lose. The factor is then computed in H's
    own storage, with no (C, C) matrix besides it (462 MiB less for a LLaMA-7B down_proj), and
    `restore(H)` refills H with its original values before a retry. Same result either way.
    """
    # U comes from one Cholesky factorization and one triangular inverse, 2/3 C³ flops where the
    # authors' code (factor H, invert from the factor, factor the inverse) spends 4/3 C³: with J
    # the order-reversing permutation and J H J = L Lᵀ, H⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J), and J L⁻¹ J is
    # upper triangular with a positive diagonal, so it is H⁻¹'s upper Cholesky factor. Equal to
    # float32 rounding; its speed against the authors' steps: see bench/README.md, section "Speed"
    # (bench/solver_parts.py).
    # Memory: one (C, C) matrix of its own besides the caller's H (a 70B MLP's 28,672 columns make
    # each 3.3 GB): the reversed damped copy, factored, inverted and reversed back in place; with
    # `restore`, none.
    if restore is not None and (H.dtype != torch.float32 or not H.is_contiguous()):
        restore = None  # H would be converted to a copy first: the caller's storage stays as it is
    H = H.to(torch.float32)
    cols = H.shape[0]
    diag = torch.diagonal(H)
    dead = diag == 0
    mean_diag = torch.where(dead, torch.ones_like(diag), diag).mean()
    frac = damp_frac
    for attempt in range(max_retries + 1):
        if restore is None:
            damped = H.flip(0, 1)  # J H J: a copy, in reversed order
        else:
            if attempt > 0:
                restore(H)  # the failed attempt overwrote it
            damped = _reverse_in_place_(H)  # J H J, in H's storage
        torch.diagonal(damped)[dead.flip(0)] = 1.0  # dead inputs: H_jj = 1
        torch.diagonal(damped).add_(frac * mean_diag)
        if cholesky_in_place_(damped):  # damped now holds L
            U = _reverse_in_place_(_invert_lower_triangular_(damped))  # J L⁻¹ J, still the same storage
            if all_finite(U) and bool((torch.diagonal(U) > 0).all()):
                return InverseHessian(upper=U, dead=dead, damp_frac=frac, retries=attempt)
            del U
        del damped
        frac = frac * 10 if frac > 0 else 1e-4
    raise torch.linalg.LinAlgError(
        f"Hessian of {cols} columns not positive definite even with damp_frac={frac / 10:g}"
    )


def cholesky_in_place_(A: torch.Tensor) -> bool:
    """A (C, C) symmetric, contiguous -> its lower Cholesky factor L, in A's own storage; False
    (A overwritten) when A is not positive definite. LAPACK works on column-major matrices: handed a
    row-major `out`, torch factors a column-major copy, a second (C, C). A's transpose is the same
    symmetric matrix in column-major order, and its upper factor there, Lᵀ, is L in A."""
    info = torch.empty((), dtype=torch.int32, device=A.device)
    torch.linalg.cholesky_ex(A.mT, upper=True, out=(A.mT, info))
    return info.item() == 0


def row_panel(columns: int, elements: int = PANEL_ELEMENTS) -> int:
    """Rows of a (rows, columns) panel of about `elements` entries (at least one row)."""
    return max(1, elements // max(columns, 1))


def _invert_lower_triangular_(L: torch.Tensor, base: int = 256) -> torch.Tensor:
    """L (n, n) lower triangular -> L⁻¹, in place, by halves: [[A, 0], [B, D]]⁻¹ =
    [[A⁻¹, 0], [-D⁻¹ B A⁻¹, D⁻¹]]. n³/3 flops, nearly all in matrix products."""
    n = L.shape[0]
    if n <= base:
        L.copy_(torch.linalg.solve_triangular(L, torch.eye(n, dtype=L.dtype, device=L.device), upper=False))
        return L
    half = n // 2
    A, B, D = L[:half, :half], L[half:, :half], L[half:, half:]
    _invert_lower_triangular_(A, base)
    _invert_lower_triangular_(D, base)
    # B <- -D⁻¹ B A⁻¹ by row panels, from the bottom up: panel [i, j) of D⁻¹ B needs only rows
    # < j of B (D⁻¹ is lower triangular), which are still the old ones. Temporaries of one panel
    # instead of two (n/2, n/2) matrices (and D⁻¹'s zero upper half is skipped).
    rows = B.shape[0]
    panel = max(base, row_panel(half, 4 * PANEL_ELEMENTS))  # panels of 16 MiB: products of some hundreds of rows
    for stop in range(rows, 0, -panel):
        start = max(0, stop - panel)
        B[start:stop] = torch.mm(D[start:stop, :stop], B[:stop]) @ A
        B[start:stop].neg_()
    return L


def _reverse_in_place_(M: torch.Tensor) -> torch.Tensor:
    """M (n, n), contiguous -> J M J (rows and columns in reverse order), in place: reversing both
    is reversing the flat array, done as swaps of chunks from its two ends."""
    flat = M.view(-1)
    size = flat.numel()
    for start in range(0, size // 2, PANEL_ELEMENTS):
        stop = min(start + PANEL_ELEMENTS, size // 2)
        head = flat[start:stop].clone()
        flat[start:stop] = flat[size - stop:size - start].flip(0)
        flat[size - stop:size - start] = head.flip(0)
    return M


def all_finite(M: torch.Tensor) -> bool:
    """Whether every entry of M ((R, C), or (C,)) is finite, with no temporary of M's size: a
    whole-matrix torch.isfinite builds a float copy (its abs) and boolean masks, more than a
    solve's inverse factor (see bench/README.md, section "One layer's solve: memory")."""
    if bool(torch.isfinite(M.sum(dtype=torch.float32))):
        return True  # a finite sum proves every entry finite: one pass, no temporaries
    M = M.reshape(-1, M.shape[-1]) if M.dim() else M.reshape(1, 1)  # a NaN, an inf, or an overflowing sum
    rows = row_panel(M.shape[1])
    return all(bool(torch.isfinite(M[start:start + rows]).all()) for start in range(0, M.shape[0], rows))


def layer_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W - Ŵ) H (W - Ŵ)ᵀ): the layer's output error on the calibration inputs (times 2/N)."""
    return _energy(W, H, minus=W_hat)


def relative_layer_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """layer_error / tr(W H Wᵀ): the fraction of the layer's output energy that was lost."""
    reference = _energy(W, H)
    return layer_error(W, W_hat, H) / reference if reference > 0 else 0.0


def _energy(W: torch.Tensor, H: torch.Tensor, minus: torch.Tensor | None = None) -> float:
    """tr(D H Dᵀ) for D = W - minus (or W), both (R, C), a row panel at a time: its temporaries
    are a few MiB where whole-matrix ones were two (R, C) (360 MB for a LLaMA-7B down_proj)."""
    H = H.to(torch.float32)
    rows = row_panel(W.shape[1])
    total = 0.0
    for start in range(0, W.shape[0], rows):
        D = W[start:start + rows].to(torch.float32)  # (P, C)
        if minus is not None:
            D = D - minus[start:start + rows].to(torch.float32)
        total += float((D @ H).mul_(D).sum())
    return total


def shrink_to_diagonal(H: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - α)·H + α·diag(H): the calibration Hessian shrunk toward its diagonal.

    H is estimated from a few thousand calibration tokens; its off-diagonal part is the noisy
    one (a layer with 1536 inputs has over a million correlations to estimate). The solvers
    then fit those correlations and do worse on new text. Shrinkage toward the diagonal (as in
    Ledoit-Wolf covariance estimation) keeps each input's own energy and damps the rest;
    α = 1 leaves only the diagonal, which turns GPTQ into importance-weighted rounding.
    """
    if alpha == 0 or H.dim() != 2:
        return H
    shrunk = H * (1.0 - alpha)
    shrunk.diagonal().add_(torch.diagonal(H) * alpha)
    return shrunk
