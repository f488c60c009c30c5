"""Where a result came from: versions, seed, hardware, time."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import torch

import robustlab
from robustlab.formatting import timestamp


def provenance(*, seed: int | None = None, device: str | torch.device = "cpu", wall_time: float | None = None) -> dict[str, Any]:
    """A JSON-friendly record of the library, torch and Python versions, hardware and seed."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "robustlab": robustlab.__version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "seed": seed,
        "date": timestamp(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if wall_time is not None:
        info["wall_time_s"] = round(wall_time, 3)
    return info
