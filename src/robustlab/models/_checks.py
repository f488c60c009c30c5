"""Argument checks and dry shape arithmetic shared by the builders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from robustlab.errors import RobustlabError
from robustlab.validate import is_int, is_number

# A stage of a plain conv net, for shape arithmetic: ("conv", kernel, padding), optionally with a
# stride as a fourth value ("conv", kernel, padding, stride), or ("pool", 2, 0).
Stage = tuple[str, int, int] | tuple[str, int, int, int]  # (kind, kernel, padding[, stride])


def positive_int(value: Any, name: str, model: str) -> int:
    if not is_int(value, 1):
        raise RobustlabError(f"{model}: {name} must be a positive int, got {value!r}")
    return value


def int_tuple(values: Any, name: str, model: str, *, length: int | None = None) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise RobustlabError(f"{model}: {name} must be a sequence of positive ints, got {values!r}")
    result = tuple(positive_int(v, name, model) for v in values)
    if length is not None and len(result) != length:
        raise RobustlabError(f"{model}: {name} must have {length} values, got {values!r}")
    return result


def probability(value: Any, name: str, model: str) -> float:
    if not is_number(value, finite=False) or not 0.0 <= value < 1.0:
        raise RobustlabError(f"{model}: {name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _side_after(size: int, stages: Sequence[Stage]) -> int:
    for kind, kernel, padding, *stride in stages:
        if kind == "conv":
            size = (size + 2 * padding - kernel) // (stride[0] if stride else 1) + 1
        else:
            size = size // kernel
        if size < 1:
            return 0
    return size


def feature_size(model: str, input_shape: tuple[int, int, int], stages: Sequence[Stage]) -> tuple[int, int]:
    """Spatial size ``(H', W')`` after ``stages`` (convs and non-overlapping pools).

    Raises a ``RobustlabError`` naming the smallest square input that works if the feature map
    vanishes.
    """
    _, height, width = input_shape
    out_h, out_w = _side_after(height, stages), _side_after(width, stages)
    if out_h < 1 or out_w < 1:
        smallest = next(s for s in range(1, 10_000) if _side_after(s, stages) >= 1)
        raise RobustlabError(
            f"{model}: input of {height}x{width} pixels is too small for this architecture; "
            f"it needs at least {smallest}x{smallest}"
        )
    return out_h, out_w
