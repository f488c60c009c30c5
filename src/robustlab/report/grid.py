"""The example grid: clean / adversarial / perturbation per sample, captioned (Pillow only).

One row per sample: the clean image, the adversarial image, the perturbation and a caption
(true label, clean prediction, adversarial prediction, distance). Images are enlarged by an
integer factor with nearest-neighbour sampling, so pixels stay square and the aspect ratio is
the image's own. The perturbation ``x_adv - x`` is drawn with a diverging colour map (blue
below zero, white at zero, red above; for colour images the channel that changed most at each
pixel, with its sign), symmetric around zero at the largest change in the grid, which a colour
bar under the column states.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from robustlab.errors import RobustlabError
from robustlab.io import save_safetensors

__all__ = ["diverging", "grid_image", "save_examples", "save_grid"]

_GAP = 6
_FONT_SIZE = 13
# Diverging colour map (ColorBrewer RdBu, 7 classes, blue for negative): -1 ... 0 ... +1.
_DIVERGING = torch.tensor([[33, 102, 172], [103, 169, 207], [209, 229, 240], [247, 247, 247],
                           [253, 219, 199], [239, 138, 98], [178, 24, 43]], dtype=torch.float32)


def _font() -> Any:
    try:
        return ImageFont.load_default(size=_FONT_SIZE)
    except TypeError:  # Pillow < 10.1: the bitmap font, one size
        return ImageFont.load_default()


def _to_rgb(images: Tensor) -> np.ndarray:
    """``[N, C, H, W]`` in [0, 1] -> ``[N, H, W, 3]`` uint8 (grayscale repeated to RGB)."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if arr.shape[1] == 1:
        arr = arr.repeat(1, 3, 1, 1)
    return arr.permute(0, 2, 3, 1).numpy()


def diverging(values: Tensor) -> np.ndarray:
    """``[...]`` in [-1, 1] -> ``[..., 3]`` uint8 through the diverging map (0 is white)."""
    position = (values.detach().float().clamp(-1, 1) + 1) / 2 * (len(_DIVERGING) - 1)
    low = position.floor().long().clamp(max=len(_DIVERGING) - 2)
    frac = (position - low).unsqueeze(-1)
    colours = _DIVERGING[low] * (1 - frac) + _DIVERGING[low + 1] * frac
    return colours.round().to(torch.uint8).cpu().numpy()


def _signed_largest(delta: Tensor) -> Tensor:
    """``[N, C, H, W] -> [N, H, W]``: per pixel, the change of the channel that changed most."""
    index = delta.abs().argmax(dim=1, keepdim=True)
    return delta.gather(1, index).squeeze(1)


def _name(value: Any, classes: Sequence[str] | None) -> str:
    if value is None:
        return "?"
    k = int(value)
    if classes is not None and 0 <= k < len(classes) and str(classes[k]) != str(k):
        return f"{k} ({classes[k]})"
    return str(k)


def grid_image(x: Tensor, x_adv: Tensor, *, labels: Tensor | None = None, clean: Tensor | None = None,
               adversarial: Tensor | None = None, distance: Tensor | None = None, norm: str | None = None,
               classes: Sequence[str] | None = None, bounds: tuple[float, float] = (0.0, 1.0), max_rows: int = 8,
               cell: int = 96) -> Image.Image:
    """The grid as a PIL image (see the module docstring). ``x``/``x_adv`` ``[N, 1 or 3, H, W]``;
    ``labels``, ``clean`` (predictions at ``x``), ``adversarial`` (at ``x_adv``) and ``distance``
    ``[N]`` fill the captions where given; ``classes`` names the labels; ``norm`` names the
    distance. The first ``max_rows`` samples are shown, each image about ``cell`` pixels on its
    longer side."""
    if x.shape != x_adv.shape or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise RobustlabError(f"x and x_adv must both be [N, 1 or 3, H, W] of the same shape, got {tuple(x.shape)} "
                             f"and {tuple(x_adv.shape)}")
    lo, hi = bounds
    clean_x = ((x[:max_rows] - lo) / (hi - lo)).detach().float().cpu()
    adv_x = ((x_adv[:max_rows] - lo) / (hi - lo)).detach().float().cpu()
    delta = _signed_largest(adv_x - clean_x) * (hi - lo)
    largest = float(delta.abs().max()) if delta.numel() else 0.0
    scale = largest if largest > 0 else 1.0
    columns = [("clean", _to_rgb(clean_x)), ("adversarial", _to_rgb(adv_x)), ("perturbation", diverging(delta / scale))]

    n, h, w = clean_x.shape[0], clean_x.shape[2], clean_x.shape[3]
    factor = max(1, round(cell / max(h, w)))
    ch, cw = h * factor, w * factor
    font = _font()
    line = _FONT_SIZE + 4
    captions = [_caption(i, labels, clean, adversarial, distance, norm, classes) for i in range(n)]
    caption_width = max([_text_width(font, text) for lines in captions for text in lines] + [120]) + 2 * _GAP
    header = line + _GAP
    row_height = max(ch, line * max((len(c) for c in captions), default=1))
    footer = 3 * line + 2 * _GAP
    width = max(3 * cw + 4 * _GAP + caption_width, 2 * (cw + _GAP) + 150 + 2 * _GAP,
                2 * _GAP + _text_width(font, "perturbation = adversarial - clean, channel changed most"))
    height = header + n * (row_height + _GAP) + footer
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, (title, images) in enumerate(columns):
        left = _GAP + j * (cw + _GAP)
        draw.text((left, _GAP // 2), title, fill="black", font=font)
        for i in range(n):
            tile = Image.fromarray(images[i]).resize((cw, ch), Image.Resampling.NEAREST)
            top = header + i * (row_height + _GAP)
            canvas.paste(tile, (left, top))
            if j == 2:
                draw.rectangle((left - 1, top - 1, left + cw, top + ch), outline=(190, 190, 190))
    text_left = _GAP + 3 * (cw + _GAP)
    reference = clean if clean is not None else labels  # what a changed prediction is measured against
    for i, lines in enumerate(captions):
        top = header + i * (row_height + _GAP)
        for text in lines:
            changed = (text.startswith("adversarial:") and reference is not None and adversarial is not None
                       and int(adversarial[i]) != int(reference[i]))
            draw.text((text_left, top), text, fill=(178, 24, 43) if changed else "black", font=font)
            top += line
    note = "perturbation = adversarial - clean" + (", channel changed most" if x.shape[1] == 3 else "")
    _colour_bar(draw, canvas, _GAP + 2 * (cw + _GAP), header + n * (row_height + _GAP), max(cw, 150), largest, font,
                line, note)
    return canvas


def _caption(i: int, labels, clean, adversarial, distance, norm, classes) -> list[str]:
    lines = []
    if labels is not None:
        lines.append(f"true: {_name(labels[i], classes)}")
    if clean is not None:
        lines.append(f"clean: {_name(clean[i], classes)}")
    if adversarial is not None:
        lines.append(f"adversarial: {_name(adversarial[i], classes)}")
    if distance is not None:
        value = float(distance[i])
        lines.append(f"{norm or 'distance'}: {value:.4g}" if norm else f"distance: {value:.4g}")
    return lines


def _text_width(font: Any, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def _colour_bar(draw: ImageDraw.ImageDraw, canvas: Image.Image, left: int, top: int, width: int, largest: float,
                font: Any, line: int, note: str) -> None:
    """A horizontal bar from -largest (blue) through 0 (white) to +largest (red), labelled."""
    bar_height = line - 4
    ramp = torch.linspace(-1, 1, width).unsqueeze(0).expand(bar_height, width)
    canvas.paste(Image.fromarray(diverging(ramp)), (left, top))
    draw.rectangle((left - 1, top - 1, left + width, top + bar_height), outline=(120, 120, 120))
    labels = (f"-{largest:.3g}", "0", f"+{largest:.3g}")
    y = top + bar_height + 2
    draw.text((left, y), labels[0], fill="black", font=font)
    draw.text((left + (width - _text_width(font, "0")) // 2, y), "0", fill="black", font=font)
    draw.text((left + width - _text_width(font, labels[2]), y), labels[2], fill="black", font=font)
    draw.text((_GAP, top + 2 * line), note, fill=(90, 90, 90), font=font)


def save_grid(path: str | Path, x: Tensor, x_adv: Tensor, **options: Any) -> Path:
    """Write :func:`grid_image` (same arguments) as a PNG; returns the path."""
    image = grid_image(x, x_adv, **options)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def save_examples(folder: str | Path, *, x: Tensor, y: Tensor, x_adv: Tensor, clean: Tensor, adversarial: Tensor,
                  success: Tensor, distance: Tensor, summary: dict[str, Any], indices: Tensor | None = None,
                  classes: Sequence[str] | None = None, norm: str | None = None,
                  bounds: tuple[float, float] = (0.0, 1.0)) -> Path:
    """Write an attack's examples into ``folder``: ``adversarial.safetensors`` (``x``, ``y``,
    ``x_adv``, ``clean_predictions``, ``predictions`` (at ``x_adv``), ``success``, ``distance``,
    ``indices``), ``summary.json`` (``summary`` with ``classes`` and ``norm``, which the report's
    captions use) and the captioned ``grid.png``. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"x": x, "y": y, "x_adv": x_adv, "clean_predictions": clean, "predictions": adversarial,
               "success": success.to(torch.uint8), "distance": distance}
    if indices is not None:
        tensors["indices"] = indices
    save_safetensors(folder / "adversarial.safetensors", {k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    from robustlab.io import save_document

    save_document(folder / "summary.json", "attack-summary",
                  {**summary, "norm": norm, "classes": list(classes) if classes is not None else None})
    save_grid(folder / "grid.png", x, x_adv, labels=y, clean=clean, adversarial=adversarial, distance=distance,
              norm=norm, classes=classes, bounds=bounds)
    return folder
