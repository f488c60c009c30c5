"""Small batch-shape helpers shared across robustlab: every per-sample quantity is ``[N]``."""

from __future__ import annotations

import math

from torch import Tensor


def flat(t: Tensor) -> Tensor:
    """``[N, ...]`` -> ``[N, D]`` (a view where possible; works for ``N = 0``)."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def per_sample(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a ``[N]`` tensor so that it broadcasts against ``like`` (``[N, ...]``)."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))
