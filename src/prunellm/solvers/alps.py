"""Search for a better mask with ADMM, then solve the weights on it (ALPS, Meng et al., 2024).

SparseGPT picks mask and weights in one greedy column sweep. ALPS treats the layer problem

    min_X tr((W - X) H (W - X)ᵀ)   subject to X having at most k nonzeros (or n:m)

with ADMM on the split X = D, D sparse:

    X ← argmin tr((W - X) H (W - X)ᵀ) + ρ‖X - D + V‖²  = (W H + ρ (D - V)) (H + ρ I)⁻¹
    D ← the k largest entries of X + V (the projection onto the sparsity constraint)
    V ← V + X - D

with ρ growing, so that X and D meet on a support the quadratic chose, not the magnitudes
alone. The problem is first scaled so that H has a unit diagonal (inputs of unit energy), which
makes ρ and the projection's magnitudes comparable across layers; H = Q Λ Qᵀ is factored once,
so every ρ costs two (R, C) @ (C, C) products. The final support is then handed to the exact
least-squares step (refine.py), and the caller keeps whichever of this and the least-squares
refinement of its own mask has the lower layer error: never worse than the starting method.
"""

from __future__ import annotations

import torch

from .hessian import layer_error
from .refine import refine_on_mask


def admm_mask(
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
) -> torch.Tensor:
    """A mask (R, C) bool (True = pruned) with the same budget as `pruned`, chosen by ADMM.

    W: (R, C) dense weights; H: (C, C); start: (R, C) the method's pruned weights, the
    starting point of D. The budget keeps the start's structure: n zeros in every m inputs
    with `nm`, the start's count in every row with `per_row`, else the start's count in the
    whole layer.
    """
    W = W.to(torch.float32)
    H = H.to(device=W.device, dtype=torch.float32)
    diag = torch.diagonal(H)
    scale = torch.sqrt(torch.clamp(diag, min=1e-8 * float(diag.mean().clamp_min(1e-30))))  # (C,)
    Hn = H / scale.unsqueeze(0) / scale.unsqueeze(1)  # (C, C), unit diagonal
    Hn.diagonal().add_(damp)
    eigenvalues, Q = torch.linalg.eigh(Hn)  # (C,), (C, C)
    eigenvalues = eigenvalues.clamp_min(0.0)
    Wn = W * scale  # (R, C): the same problem in scaled coordinates
    target = (Wn @ Hn) @ Q  # (R, C): W H, in the eigenbasis
    kept = _kept_counts(pruned, nm, per_row)

    D = start.to(torch.float32) * scale
    V = torch.zeros_like(D)
    support = D != 0
    for step in range(iterations):
        X = ((target + rho * ((D - V) @ Q)) / (eigenvalues + rho)) @ Q.T  # (R, C)
        D = _project(X + V, kept, nm, per_row)
        V += X - D
        if step % 3 == 2:
            new_support = D != 0
            changed = int((new_support != support).sum())
            support = new_support
            if changed == 0 and step >= 8:
                break  # the support settled: the weights on it are solved exactly afterwards
            # ρ grows faster while the support still moves a lot (ALPS's schedule).
            nonzeros = int(support.sum())
            rho *= 1.3 if changed >= 0.1 * nonzeros else 1.2 if changed >= 0.005 * nonzeros else 1.1
    return D == 0


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
    """(weights (R, C), mask (R, C) bool): the better of ADMM's support and the start's own
    mask, each with its weights re-solved exactly; never a higher layer error than `start`."""
    own = refine_on_mask(W, H, start, pruned, iterations=cg_iterations)
    mask = admm_mask(W, H, start, pruned, nm=nm, per_row=per_row, iterations=admm_iterations)
    searched = refine_on_mask(W, H, W.to(torch.float32).masked_fill(mask, 0.0), mask, iterations=cg_iterations)
    if layer_error(W, searched, H) < layer_error(W, own, H):
        return searched, mask
    return own, pruned


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
        top = groups.abs().topk(int(kept), dim=-1).indices
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
        return (groups * keep).reshape(rows, cols)
    if per_row:
        order = Z.abs().argsort(dim=1, descending=True, stable=True)  # (R, C)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(cols, device=Z.device).expand(rows, cols))
        return Z * (rank < kept.unsqueeze(1))
    keep = torch.zeros(Z.numel(), dtype=torch.bool, device=Z.device)
    if kept > 0:
        keep[Z.abs().flatten().topk(kept).indices] = True
    return Z * keep.reshape(rows, cols)
