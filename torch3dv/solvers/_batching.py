"""Batch plumbing for the solvers: flatten the leading dims and run large batches in cache-sized chunks.

Element-wise work on tensors of 100k small problems is memory bound on a CPU; running it on a few thousand
problems at a time keeps the intermediates in cache and costs nothing on small batches (one chunk). Chunks are
independent problems, so results do not depend on the chunk size (beyond rounding).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

CHUNK = 8192


def chunked(fn: Callable[..., tuple[Tensor, ...]], *tensors: Tensor, chunk: int = CHUNK) -> tuple[Tensor, ...]:
    """``fn(*tensors)`` evaluated on slices of the first dimension and concatenated.

    Args:
        fn: maps tensors sharing a leading batch dimension to a tuple of tensors with that leading dimension.
        tensors: inputs with the same size in dim 0.
        chunk: problems per call.
    """
    b = tensors[0].shape[0]
    if b <= chunk:
        return fn(*tensors)
    parts = [fn(*(t[i:i + chunk] for t in tensors)) for i in range(0, b, chunk)]
    return tuple(torch.cat(p) for p in zip(*parts))
