"""Per-channel mean/std normalization as a layer inside the model.

Models take inputs in their declared box (normally ``[0, 1]``); the normalization a network was
trained with belongs to the network, so attacks, certifiers and reports never see mean or std.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from robustlab.errors import RobustlabError


def _as_floats(values: Sequence[float], name: str) -> tuple[float, ...]:
    if isinstance(values, torch.Tensor):
        values = values.detach().flatten().tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise RobustlabError(f"Normalize: {name} must be a sequence of numbers, got {values!r}")
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise RobustlabError(f"Normalize: {name} must contain only numbers, got {values!r}") from None
    if not floats:
        raise RobustlabError(f"Normalize: {name} is empty")
    if not all(math.isfinite(v) for v in floats):
        raise RobustlabError(f"Normalize: {name} must be finite, got {floats}")
    return floats


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for inputs of shape ``[..., C, H, W]``.

    ``mean`` and ``std`` are stored as (persistent) buffers, so they are saved with the weights
    and follow ``.to(device)``. A single value applies to every channel; otherwise the number of
    values must equal the input's channel count (checked on every call, since broadcasting would
    otherwise silently expand a 1-channel input to 3 channels).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_values = _as_floats(mean, "mean")
        std_values = _as_floats(std, "std")
        if len(mean_values) != len(std_values):
            raise RobustlabError(
                f"Normalize: mean has {len(mean_values)} values but std has {len(std_values)}"
            )
        if not all(s > 0 for s in std_values):
            raise RobustlabError(f"Normalize: every std must be > 0, got {std_values}")
        self.register_buffer("mean", torch.tensor(mean_values, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std_values, dtype=torch.float32))

    @property
    def num_channels(self) -> int:
        return self.mean.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise RobustlabError(
                f"Normalize expects inputs of shape [..., C, H, W], got shape {tuple(x.shape)}"
            )
        channels = self.mean.shape[0]
        if channels != 1 and x.shape[-3] != channels:
            raise RobustlabError(
                f"Normalize has {channels} channel statistics but the input has "
                f"{x.shape[-3]} channels (shape {tuple(x.shape)})"
            )
        mean = self.mean.to(dtype=x.dtype).view(-1, 1, 1)
        std = self.std.to(dtype=x.dtype).view(-1, 1, 1)
        return (x - mean) / std

    def extra_repr(self) -> str:
        return f"mean={_format(self.mean)}, std={_format(self.std)}"


def _format(values: torch.Tensor) -> str:
    if values.device.type == "meta":
        return f"<{values.shape[0]} values on meta>"
    return "(" + ", ".join(f"{v:.6g}" for v in values.tolist()) + ")"
