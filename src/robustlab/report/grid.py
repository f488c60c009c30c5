"""PNG grid of clean / adversarial / perturbation images (Pillow only, no matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from robustlab.errors import RobustlabError

_GAP = 4
_HEADER = 14


def _to_rgb(images: Tensor) -> np.ndarray:
    """``[N, C, H, W]`` in [0, 1] -> ``[N, H, W, 3]`` uint8 (grayscale repeated to RGB)."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if arr.shape[1] == 1:
        arr = arr.repeat(1, 3, 1, 1)
    return arr.permute(0, 2, 3, 1).numpy()


def save_grid(path: str | Path, x: Tensor, x_adv: Tensor, *, bounds: tuple[float, float] = (0.0, 1.0),
              max_rows: int = 8, cell: int = 96) -> Path:
    """Write a grid with one row per sample: clean, adversarial, and the perturbation.

    The perturbation is drawn on a gray background (gray = no change), amplified so that the
    largest change in the grid uses the full range; the header states the amplification.
    Images are upscaled with nearest-neighbour to about ``cell`` pixels.
    """
    if x.shape != x_adv.shape or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise RobustlabError(f"x and x_adv must both be [N, 1 or 3, H, W] of the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
    lo, hi = bounds
    clean = (x[:max_rows] - lo) / (hi - lo)
    adv = (x_adv[:max_rows] - lo) / (hi - lo)
    delta = adv - clean
    largest = float(delta.abs().max()) if delta.numel() else 0.0
    gain = 0.5 / largest if largest > 0 else 1.0
    columns = [("clean", _to_rgb(clean)), ("adversarial", _to_rgb(adv)), (f"delta x{gain:.3g}", _to_rgb(0.5 + gain * delta))]

    n, h, w = clean.shape[0], clean.shape[2], clean.shape[3]
    factor = max(1, cell // max(h, w))
    ch, cw = h * factor, w * factor
    canvas = Image.new("RGB", (3 * cw + 4 * _GAP, _HEADER + n * ch + (n + 1) * _GAP), "white")
    draw = ImageDraw.Draw(canvas)
    for j, (title, images) in enumerate(columns):
        left = _GAP + j * (cw + _GAP)
        draw.text((left, 1), title, fill="black")
        for i in range(n):
            tile = Image.fromarray(images[i]).resize((cw, ch), Image.NEAREST)
            canvas.paste(tile, (left, _HEADER + _GAP + i * (ch + _GAP)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
