"""Search for a better mask with ADMM, then solve the weights on it (ALPS, Meng et al., 2024).

SparseGPT picks mask and weights in one greedy column sweep. ALPS treats the layer problem

    min_X tr((W - X) H (W - X)ᵀ)   subject to X having at most k nonzeros (or n:m)

with ADMM on the split X = D, D sparse:

    X ← argmin tr((W - X) H (W - X)ᵀ) + ρ‖X - D + V‖²  = (W H + ρ (D - V)) (H + ρ I)⁻¹
    D ← the k largest entries of X + V (the projection onto the sparsity constraint)
    V ← V + X - D

with ρ growing, so that X and D meet on a support the quadratic chose, not the magnitudes
alone. The problem is first scaled so that H has a unit diagonal (inputs of unit energy), which
makes ρ and the projection's magnitudes comparable across layers. Since H (H + ρ I)⁻¹ =
I - ρ (H + ρ I)⁻¹, the X step is

    X = W + (D - V - W) M,   M = ρ (H + ρ I)⁻¹

one (R, C) @ (C, C) product per iteration; M is refactored (Cholesky) only when ρ changes,
every third iteration. (The eigendecomposition H = Q Λ Qᵀ serves every ρ but costs two
products per iteration, and eigh itself is slow at wide layers.) ADMM stops once fewer than
0.3% of the kept entries leave or join the support in three iterations (`settled`). That saves
iterations but is a trade: the stop on a fixed support alone (`settled=0`) gave a lower
perplexity at more time (see bench/README.md, section "High sparsity: OWL, LSQ, ALPS"); the
threshold is to be revisited. The final support is then handed to the exact least-squares
step (refine.py), started from ADMM's own weights on it. The result is kept when its layer
error is below the starting method's; otherwise the start's own mask is re-solved instead
(the least-squares refinement), so it is never worse than the starting method.

Cost: ADMM is most of it, a few dozen iterations of a product and a projection. The
projection must cost far less than the products: a layer's threshold is found on a strided
sample and settled exactly within the sample's bracket (a full selection could cost as much as
the products: see bench/README.md, section "ALPS's projection step"), and 2:4's groups are
ranked by a sorting network rather than topk; both give exactly the masks the plain selections
give. The exact solve starts from ADMM's iterate (half the conjugate-gradient iterations), and
the least-squares solve of the start's own mask is only run as the fallback: at high sparsity
the searched support wins by a wide margin, and solving both costs more time.
"""

from __future__ import annotations

import torch

from .hessian import cholesky_in_place_, layer_error
from .refine import refine_on_mask


def admm_search(
    W: torch.Tensor,
    H: torch.Tensor,
    start: torch.Tensor,
    pruned: torch.Tensor,
    *,
    nm: tuple[int, int] | None = None,
    per_row: bool = False,
    iterations: int = 60,
    rho: float = 0.1,
    damp: float = 0.01,
    settled: float = 3e-3,
) -> torch.Tensor:
    """ADMM's sparse iterate D (R, C), in W's coordinates: its zeros are the searched mask
    (same budget as `pruned`), its other entries a warm start for the exact solve on that support.

    W: (R, C) dense weights; H: (C, C); start: (R, C) the method's pruned weights, the
    starting point of D. The budget keeps the start's structure: n zeros in every m inputs
    with `nm`, the start's count in every row with `per_row`, else the start's count in the
    whole layer. `settled`: stop once fewer than this fraction of the kept entries changed in
    three iterations (0: only once the support is fixed).
    """
    W = W.to(torch.float32)
    H = H.to(device=W.device, dtype=torch.float32)
    diag = torch.diagonal(H)
    scale = torch.sqrt(torch.clamp(diag, min=1e-8 * float(diag.mean().clamp_min(1e-30))))  # (C,)
    Wn = W * scale  # (R, C): the same problem in scaled coordinates
    kept = _kept_counts(pruned, nm, per_row)

    D = start.to(torch.float32) * scale
    V = torch.zeros_like(D)
    support = D != 0
    M, M_rho = None, None
    for step in range(iterations):
        if M_rho != rho:
            M = None  # freed first: with H, one (C, C) at any time (a LLaMA-7B down_proj's is 462 MiB)
            M = _scaled_inverse(H, scale, damp, rho)
            M_rho = rho
        # The steps below reuse their operands' memory: four (R, C) live at most, besides the
        # projection's own, where whole-expression temporaries held eight.
        X = torch.sub(D, V).sub_(Wn)  # (R, C): D - V - Wn
        X = X @ M
        X.add_(Wn).add_(V)  # X + V, all the projection and the V update need of X
        D = V = None
        D = _project(X, kept, nm, per_row)
        V = X.sub_(D)  # V + X - D
        if step % 3 == 2:
            new_support = D != 0
            changed = int((new_support != support).sum())
            support = new_support
            nonzeros = int(support.sum())
            if changed <= settled * nonzeros and step >= 8:
                break  # the support settled: the weights on it are solved exactly afterwards
            # ρ grows faster while the support still moves a lot (ALPS's schedule).
            rho *= 1.3 if changed >= 0.1 * nonzeros else 1.2 if changed >= 0.005 * nonzeros else 1.1
    return D / scale


def alps_refine(
    W: torch.Tensor,
    H: torch.Tensor,
    start: torch.Tensor,
    pruned: torch.Tensor,
    *,
    nm: tuple[int, int] | None = None,
    per_row: bool = False,
    admm_iterations: int = 60,
    cg_iterations: int = 50,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (R, C), mask (R, C) bool): ADMM's support with its weights re-solved exactly,
    or, where that is not below the start's layer error, the start's own mask re-solved; never
    a higher layer error than `start`."""
    D = admm_search(W, H, start, pruned, nm=nm, per_row=per_row, iterations=admm_iterations)  # (R, C)
    mask = D == 0
    # Started from ADMM's iterate, already close to the optimum on its support, half the
    # iterations reach the same error (equal to three digits on SmolLM2's layers at 70%).
    searched = refine_on_mask(W, H, D, mask, iterations=max(1, cg_iterations // 2))
    if layer_error(W, searched, H) < layer_error(W, start, H):
        return searched, mask
    return refine_on_mask(W, H, start, pruned, iterations=cg_iterations), pruned


def _scaled_inverse(H: torch.Tensor, scale: torch.Tensor, damp: float, rho: float) -> torch.Tensor:
    """M = ρ (Hn + ρ I)⁻¹ with Hn = S⁻¹ H S⁻¹ + damp·I (unit diagonal), S = diag(scale): (C, C),
    built in one matrix. Hn is not kept between the few ρ it serves: rescaling H costs far less
    than a factorization. The inverse is taken, like the factor, on the column-major transposed
    view (the factor's upper form there), so that torch needs no copy of the matrix."""
    M = H / scale.unsqueeze(0)
    M.div_(scale.unsqueeze(1))
    M.diagonal().add_(damp).add_(rho)
    if not cholesky_in_place_(M):
        raise torch.linalg.LinAlgError(f"ALPS: Hn + rho I not positive definite (rho={rho:g})")
    torch.cholesky_inverse(M.mT, upper=True, out=M.mT)
    return M.mul_(rho)


def _kept_counts(pruned: torch.Tensor, nm: tuple[int, int] | None, per_row: bool) -> torch.Tensor | int:
    if nm is not None:
        return nm[1] - nm[0]
    if per_row:
        return (~pruned).sum(dim=1)  # (R,)
    return int((~pruned).sum())


def _project(Z: torch.Tensor, kept: torch.Tensor | int, nm: tuple[int, int] | None, per_row: bool) -> torch.Tensor:
    """Z (R, C) with all but its largest-magnitude entries zeroed, within the budget."""
    rows, cols = Z.shape
    if nm is not None:
        groups = Z.reshape(rows, cols // nm[1], nm[1])  # (R, C/m, m)
        return (groups * _keep_largest_in_groups(groups.abs(), int(kept))).reshape(rows, cols)
    if per_row:
        order = Z.abs().argsort(dim=1, descending=True, stable=True)  # (R, C)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(cols, device=Z.device).expand(rows, cols))
        return Z * (rank < kept.unsqueeze(1))
    if kept <= 0:
        return torch.zeros_like(Z)
    magnitude = Z.abs().flatten()  # (R*C,)
    keep = magnitude >= _kth_largest(magnitude, kept)
    if int(torch.count_nonzero(keep)) != kept:  # ties at the threshold (rare in floats) would break the budget
        keep = torch.zeros_like(keep)
        keep[magnitude.topk(kept).indices] = True
    return Z * keep.reshape(rows, cols)  # a product with the mask: cheaper than torch.where here


def _keep_largest_in_groups(magnitude: torch.Tensor, kept: int) -> torch.Tensor:
    """(R, G, m) bool: the `kept` largest of every group of m, as topk picks them.

    topk along a dimension of 4 costs up to as much as an ADMM iteration's product; for
    groups of 4 (2:4, the pattern hardware runs) a sorting network of five min/max pairs gives
    every group's kept-th largest, and the entries at or above it are the same set, unless a
    tie at the threshold lets a group keep more: topk decides those groups.
    """
    if magnitude.shape[-1] == 4 and 1 <= kept <= 4:
        # Row chunks of about 2^18 groups keep the network's strided reads in cache.
        rows = max(1, (1 << 18) // max(1, magnitude.shape[1]))
        keep = torch.cat([chunk >= _kth_largest_of_4(chunk, kept).unsqueeze(-1) for chunk in magnitude.split(rows)])
        # Every group has at least `kept` entries at or above its threshold: exactly, unless tied.
        # Ties do occur in a large layer (a few groups in millions): topk re-decides only those.
        if int(torch.count_nonzero(keep)) != kept * magnitude.shape[0] * magnitude.shape[1]:
            tied = (keep.sum(dim=-1) != kept).nonzero(as_tuple=True)  # indices of the (R, G) groups
            top = magnitude[tied].topk(kept, dim=-1).indices  # (T, kept)
            keep[tied] = torch.zeros(top.shape[0], 4, dtype=torch.bool, device=top.device).scatter_(-1, top, True)
        return keep
    top = magnitude.topk(kept, dim=-1).indices
    return torch.zeros_like(magnitude, dtype=torch.bool).scatter_(-1, top, True)


def _kth_largest_of_4(magnitude: torch.Tensor, kept: int) -> torch.Tensor:
    """(R, G): the kept-th largest of every group of 4 in `magnitude` (R, G, 4)."""
    a, b, c, d = magnitude.unbind(-1)  # (R, G) each
    a, b = torch.maximum(a, b), torch.minimum(a, b)
    c, d = torch.maximum(c, d), torch.minimum(c, d)
    a, c = torch.maximum(a, c), torch.minimum(a, c)
    b, d = torch.maximum(b, d), torch.minimum(b, d)
    b, c = torch.maximum(b, c), torch.minimum(b, c)  # a >= b >= c >= d
    return (a, b, c, d)[kept - 1]


def _kth_largest(values: torch.Tensor, k: int, sample_size: int = 16384) -> torch.Tensor:
    """The k-th largest of `values` (1-D), exactly what a selection over all of them returns.

    A full selection (kthvalue) copies and partitions every entry, and cost up to as much as
    an ADMM iteration's two matrix products together. A strided sample brackets the answer
    instead: with `above` entries over the bracket and the k-th largest inside it, it is the
    (k - above)-th largest of the few entries in the bracket. Where the sample misleads, the
    full selection answers; the value is the same either way.
    """
    n = values.numel()
    stride = max(1, n // sample_size)
    if stride > 1:
        sample = values[::stride]  # (S,)
        s = sample.numel()
        rank = k / n * s  # the answer's expected rank from the top, within the sample
        margin = 4.0 * (rank * (1.0 - rank / s)) ** 0.5 + 8.0  # ~4 standard deviations, and some
        top, bottom = max(1, int(rank - margin)), min(s, int(rank + margin) + 1)
        if top < bottom:
            high = sample.kthvalue(s - top + 1).values  # sample rank `top` from the top
            low = sample.kthvalue(s - bottom + 1).values
            above = int(torch.count_nonzero(values > high))
            if above < k:
                band = values[(values >= low) & (values <= high)]  # (B,), B << n
                if above + band.numel() >= k:
                    return band.kthvalue(band.numel() - (k - above) + 1).values
    return values.kthvalue(n - k + 1).values
