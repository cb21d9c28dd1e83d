"""Batched null vectors of design matrices.

Gradients: the null vector is taken from ``torch.linalg.eigh`` of the (k x k) normal matrix ``A^T W A``,
which is much cheaper than an SVD of the (N x k) design matrix for large N. The backward pass of ``eigh``
contains 1 / (lambda_i - lambda_j) terms; they are finite whenever the smallest eigenvalue is simple, i.e.
for every non-degenerate problem. Degenerate problems (a repeated smallest eigenvalue) are reported as
failures by the solvers, and we never back-propagate through them in tests.
"""

from __future__ import annotations

import torch
from torch import Tensor


def smallest_right_singular_vectors(A: Tensor, count: int = 1) -> tuple[Tensor, Tensor]:
    """Eigenvectors of ``A^T A`` for the ``count`` smallest eigenvalues.

    Args:
        A: design matrices (..., M, k).
        count: how many vectors to return.

    Returns:
        ``(V, evals)``: V (..., k, count) with columns sorted by ascending eigenvalue, and all k eigenvalues
        of ``A^T A`` (..., k) in ascending order (squared singular values of A).
    """
    return weighted_design_nullspace(A, None, count)


def weighted_design_nullspace(A: Tensor, weights: Tensor | None, count: int = 1) -> tuple[Tensor, Tensor]:
    """Like :func:`smallest_right_singular_vectors` for the weighted normal matrix ``A^T diag(w) A``.

    Args:
        A: design matrices (..., M, k).
        weights: optional row weights (..., M), non-negative. Rows are weighted by ``w`` (not sqrt(w)), so a
            weight acts like a row multiplicity in the least-squares cost.
        count: number of vectors.

    Returns:
        ``(V, evals)`` as in :func:`smallest_right_singular_vectors`.
    """
    Aw = A if weights is None else A * weights[..., None]
    M = Aw.transpose(-1, -2) @ A
    M = 0.5 * (M + M.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(M)
    return evecs[..., :count], evals
