"""Re-solve the kept weights of a pruned layer: least squares restricted to the mask's support.

SparseGPT picks its mask and weights in one greedy sweep; once the mask is fixed, the best
weights on it are the solution of a convex quadratic, row by row:

    min_X tr((W - X) H (W - X)ᵀ)   subject to X_ij = 0 where the mask prunes.

For row r with kept set K and pruned set P that is X_K = W_K + H_KK⁻¹ H_KP W_P. Every row has
its own K, so instead of one factorisation per row this runs preconditioned conjugate
gradients on all rows at once (one (R, C) @ (C, C) product per iteration, as ALPS does),
started from the pruned weights. CG decreases the objective at every step, and the result
is checked against the starting point, so the layer error never goes up.
"""

from __future__ import annotations

import torch

from .hessian import layer_error, row_panel


def refine_on_mask(
    W: torch.Tensor,
    H: torch.Tensor,
    start: torch.Tensor,
    pruned: torch.Tensor,
    *,
    iterations: int = 50,
    tolerance: float = 1e-5,
) -> torch.Tensor:
    """Best weights on the support ~pruned, starting from `start`.

    W: (R, C) dense weights; H: (C, C); start: (R, C) pruned weights (zeros where `pruned`);
    pruned: (R, C) bool. Returns (R, C) with exactly the same zeros forced.
    """
    W = W.to(torch.float32)
    H = H.to(device=W.device, dtype=torch.float32)
    diag = torch.diagonal(H).clone()
    dead = diag <= 0
    free = ~pruned & ~dead.unsqueeze(0)  # (R, C): the weights CG may move
    inverse_diag = torch.where(dead, torch.zeros_like(diag), 1.0 / diag.clamp_min(1e-12))  # Jacobi preconditioner

    # Updates are written into their operands (addcmul_, mul_): five (R, C) float32 live in the
    # loop (X, residual, z, direction, Hp), where whole-expression temporaries made about eight.
    X = start.to(torch.float32).masked_fill(pruned, 0.0)  # a new tensor: start is left as it is
    residual = torch.sub(W, X) @ H  # (R, C): minus half the gradient, on the free weights
    residual.mul_(free)
    initial = residual.norm(dim=1)  # (R,)
    z = residual * inverse_diag
    direction = z.clone()
    rz = _row_dots(residual, z)  # (R,)
    tiny = torch.finfo(torch.float32).tiny
    for _ in range(iterations):
        Hp = direction @ H  # (R, C)
        Hp.mul_(free)
        curvature = _row_dots(direction, Hp)
        alpha = torch.where(curvature > tiny, rz / curvature.clamp_min(tiny), torch.zeros_like(rz))
        X.addcmul_(direction, alpha.unsqueeze(1))
        residual.addcmul_(Hp, alpha.unsqueeze(1), value=-1)
        del Hp
        if bool((residual.norm(dim=1) <= tolerance * initial.clamp_min(tiny)).all()):
            break
        torch.mul(residual, inverse_diag, out=z)
        rz_next = _row_dots(residual, z)
        beta = torch.where(rz > tiny, rz_next / rz.clamp_min(tiny), torch.zeros_like(rz))
        direction.mul_(beta.unsqueeze(1)).add_(z)
        rz = rz_next
    X = X.masked_fill(pruned, 0.0)
    # float32 CG can stall on ill-conditioned rows: never hand back something worse.
    if layer_error(W, X, H) > layer_error(W, start, H):
        return start.clone()
    return X


def _row_dots(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """(R,): the dot product of each row of A with the same row of B (both (R, C)), a row panel at
    a time: the elementwise product is a few MiB, not a whole (R, C)."""
    rows = row_panel(A.shape[1])
    return torch.cat([(a * b).sum(dim=1) for a, b in zip(A.split(rows), B.split(rows))])
