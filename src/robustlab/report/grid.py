"""PNG grid of clean / adversarial / perturbation images (Pillow only, no matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from robustlab.errors import RobustlabError


def _to_uint8(images: Tensor) -> np.ndarray:
    """``[N, C, H, W]`` in [0, 1] -> ``[N, H, W, C]`` uint8 (grayscale repeated to RGB)."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if arr.shape[1] == 1:
        arr = arr.repeat(1, 3, 1, 1)
    return arr.permute(0, 2, 3, 1).numpy()


def save_grid(path: str | Path, x: Tensor, x_adv: Tensor, *, bounds: tuple[float, float] = (0.0, 1.0),
              max_rows: int = 8, cell: int = 96) -> Path:
    """Write a grid with one row per sample: clean, adversarial, and the perturbation.

    The perturbation is shown on a gray background, scaled so that the largest change in the
    grid uses the full range. Images are upscaled with nearest-neighbour to about ``cell`` pixels.
    """
    if x.shape != x_adv.shape or x.dim() != 4:
        raise RobustlabError(f"x and x_adv must both be [N, C, H, W] of the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
    lo, hi = bounds
    x, x_adv = x[:max_rows], x_adv[:max_rows]
    clean = (x - lo) / (hi - lo)
    adv = (x_adv - lo) / (hi - lo)
    delta = adv - clean
    scale = float(delta.abs().max()) or 1.0
    pert = 0.5 + delta / (2 * scale)
    factor = max(1, cell // max(x.shape[2], x.shape[3]))
    columns = []
    for images in (clean, adv, pert):
        stacked = np.concatenate(list(_to_uint8(images)), axis=0)  # one column, samples top to bottom
        img = Image.fromarray(stacked).resize((stacked.shape[1] * factor, stacked.shape[0] * factor), Image.NEAREST)
        columns.append(np.asarray(img))
    gap = np.full((columns[0].shape[0], 4, 3), 255, np.uint8)
    canvas = np.concatenate([part for c in columns for part in (gap, c)] + [gap], axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path
