"""PixelDefend (Song, Kim, Nowozin, Ermon & Kushman, "PixelDefend: Leveraging Generative Models to
Understand and Defend against Adversarial Examples", ICLR 2018), for grayscale images.

* :class:`PixelCNN` (:func:`build_pixelcnn`, saved by :func:`save_pixelcnn`): a small PixelCNN (van den Oord et al., 2016)
  over ``levels`` intensity levels, a 7x7 mask-A convolution then ``layers`` 3x3 mask-B
  convolutions with ReLU, and a 1x1 convolution to ``levels`` logits per pixel: ``[N, 1, H, W]``
  in ``[0, 1]`` -> ``[N, levels, H, W]``, the logits of ``p(x_i | x_<i)`` in raster order.
  ``defenses-2.md`` §3(f): 32 channels, 4 mask-B layers. Train it with :func:`train_pixelcnn`.
* :class:`PixelDefend` (defense ``"pixeldefend"``): purify, then classify. For each pixel in
  raster order, ``x'_i = argmax p(v | x'_<i)`` over the levels ``v`` within ``eps`` of the
  *input's* level, conditioned on the already purified prefix (one PixelCNN pass per pixel,
  batched over images; ``obfuscated-gradients:pixeldefend/defense.py``). Inputs are quantized to
  the PixelCNN's levels first. The purification is a chain of argmaxes, so its gradient is zero
  (shattered gradients); BPDA with the identity breaks it (Athalye et al., ICML 2018: 9% on
  CIFAR-10 at 8/255). Deterministic: no EOT needed.

The card entry of a PixelDefend holds ``purifier``, the path of the PixelCNN's weights (written
by :func:`save_pixelcnn`; a relative path is resolved from the working directory),
so ``load_model`` rebuilds classifier and purifier. Color images need PixelCNN++'s channel
ordering and are refused.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robustlab.errors import RobustlabError
from robustlab.models.checkpoint import load_network, save_network
from robustlab.models.preprocessing import DEFENSES, InputTransformDefense
from robustlab.validate import is_int, is_number

__all__ = ["MaskedConv2d", "PixelCNN", "PixelDefend", "build_pixelcnn", "load_pixelcnn", "purify", "quantize",
           "save_pixelcnn", "train_pixelcnn"]


def quantize(x: Tensor, levels: int) -> Tensor:
    """Integer levels ``round(x * (levels - 1))`` of ``x`` in ``[0, 1]`` (int64)."""
    return torch.round(x.clamp(0, 1) * (levels - 1)).long()


class MaskedConv2d(nn.Conv2d):
    """A convolution that sees only the pixels before the centre in raster order (mask ``"A"``)
    or those and the centre (``"B"``); one input channel group, as for grayscale images."""

    mask: Tensor

    def __init__(self, mask: str, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        if mask not in ("A", "B"):
            raise RobustlabError(f"mask must be 'A' or 'B', got {mask!r}")
        centre = kernel_size // 2
        grid = torch.ones(kernel_size, kernel_size)
        grid[centre, centre + (mask == "B"):] = 0
        grid[centre + 1:] = 0
        self.register_buffer("mask", grid.expand_as(self.weight).clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)


class PixelCNN(nn.Module):
    """See the module docstring. Input ``[N, 1, H, W]`` in ``[0, 1]`` (quantized to ``levels``
    inside), output ``[N, levels, H, W]`` logits."""

    def __init__(self, levels: int, channels: int, layers: int):
        super().__init__()
        self.levels, self.channels, self.layers = levels, channels, layers
        blocks: list[nn.Module] = [MaskedConv2d("A", 1, channels, 7), nn.ReLU()]
        for _ in range(layers):
            blocks += [MaskedConv2d("B", channels, channels, 3), nn.ReLU()]
        blocks.append(nn.Conv2d(channels, levels, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise RobustlabError(f"PixelCNN takes grayscale images [N, 1, H, W], got {tuple(x.shape)}")
        return self.net(quantize(x, self.levels).to(x.dtype) / (self.levels - 1))


def build_pixelcnn(*, levels: int = 256, channels: int = 32, layers: int = 4, seed: int | None = None) -> PixelCNN:
    """PixelCNN over ``levels`` intensity levels (256 for 8-bit images; 16 for the cheap test
    size of ``defenses-2.md`` §3(f)); ``channels`` 32 and ``layers`` 4 mask-B convolutions.
    Not in the model registry, whose architectures are classifiers ``[N, C, H, W] -> [N, K]``.
    ``seed``: initialise from this seed on a forked global RNG (left as it was)."""
    for name, value in (("levels", levels), ("channels", channels), ("layers", layers)):
        if not is_int(value, 2 if name == "levels" else 1):
            raise RobustlabError(f"pixelcnn: {name} must be a positive integer (levels >= 2), got {value!r}")
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            return PixelCNN(levels, channels, layers)
    return PixelCNN(levels, channels, layers)


def save_pixelcnn(net: PixelCNN, path: str | os.PathLike[str]) -> Path:
    """Write the weights and settings to ``path`` (a ``.safetensors`` file, settings in its
    metadata), atomically. Loading it never unpickles."""
    return save_network(net, path, "pixelcnn", {"levels": str(net.levels), "channels": str(net.channels),
                                                "layers": str(net.layers)})


def load_pixelcnn(path: str | os.PathLike[str]) -> PixelCNN:
    """The PixelCNN :func:`save_pixelcnn` wrote to ``path``, in eval mode."""
    net = load_network(path, "pixelcnn",
                       lambda settings: build_pixelcnn(**{k: int(settings[k]) for k in ("levels", "channels", "layers")}),
                       what="pixelcnn")
    assert isinstance(net, PixelCNN)
    return net


def train_pixelcnn(net: PixelCNN, x: Tensor, *, epochs: int = 2, batch_size: int = 64, lr: float = 1e-3,
                   seed: int = 0) -> list[float]:
    """Maximum likelihood (per-pixel cross-entropy over the levels) with Adam on ``x [N, 1, H, W]``
    in ``[0, 1]``; batches from a generator seeded with ``seed``. Returns the mean negative
    log-likelihood per pixel (nats) of each epoch. Cost per batch: 1 forward and 1 backward."""
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    net.train()
    history = []
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=order)
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            batch = x[perm[start:start + batch_size]]
            loss = F.cross_entropy(net(batch), quantize(batch, net.levels)[:, 0])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * batch.shape[0]
        history.append(total / x.shape[0])
    net.eval()
    return history


def purify(net: PixelCNN, x: Tensor, eps: float) -> Tensor:
    """PixelDefend's purification of ``x [N, 1, H, W]`` within ``eps`` (box units) of each input
    pixel: ``H * W`` sequential PixelCNN passes over the batch. Returns images on the levels."""
    levels = net.levels
    radius = math.floor(eps * (levels - 1) + 1e-9)
    original = quantize(x, levels)
    current = original.clone()
    values = torch.arange(levels, device=x.device).view(1, levels)
    with torch.no_grad():
        for row in range(x.shape[2]):
            for col in range(x.shape[3]):
                logits = net(current.to(x.dtype) / (levels - 1))[:, :, row, col]
                centre = original[:, 0, row, col].view(-1, 1)
                window = (values - centre).abs() <= radius
                current[:, 0, row, col] = logits.masked_fill(~window, -math.inf).argmax(dim=1)
    return current.to(x.dtype) / (levels - 1)


class PixelDefend(InputTransformDefense):
    """``model(purify(x))``; see the module docstring. ``purifier``: the path
    :func:`save_pixelcnn` wrote (or a :class:`PixelCNN`, which a card cannot record). ``eps``: the purification window
    in box units (Song et al. use 16/255 against 8/255 attacks; it should exceed the attack's).
    Gradient: zero; BPDA uses the identity. Cost: ``H * W`` PixelCNN passes plus one of ``model``."""

    name = "pixeldefend"

    def __init__(self, model: nn.Module, *, purifier: str | PixelCNN | None = None, eps: float = 16 / 255):
        super().__init__(model)
        if not is_number(eps, finite=False) or not 0 <= eps <= 1:
            raise RobustlabError(f"pixeldefend: eps must be a number in [0, 1], got {eps!r}")
        if isinstance(purifier, PixelCNN):
            self.path = None
            net = purifier
        elif isinstance(purifier, (str, os.PathLike)):
            self.path = os.fspath(purifier)
            net = load_pixelcnn(self.path)
        else:
            raise RobustlabError("pixeldefend: purifier must be the path of a pixelcnn saved by save_pixelcnn (or a "
                                 "PixelCNN)")
        self.purifier = net.eval()
        for p in self.purifier.parameters():
            p.requires_grad_(False)
        self.eps = float(eps)

    def transform(self, x: Tensor) -> Tensor:
        return purify(self.purifier, x, self.eps)

    def arguments(self) -> dict[str, Any]:
        if self.path is None:
            raise RobustlabError("pixeldefend: a purifier given as a module has no path for the card; save it with "
                                 "save_pixelcnn and pass the path")
        return {"purifier": self.path, "eps": self.eps}

    def extra_repr(self) -> str:
        return f"purifier={self.path!r}, eps={self.eps:.4g}"


DEFENSES.add(PixelDefend)
