"""Data augmentation of the training batches (``TrainConfig.augment``).

An augmentation is a function ``(x, generator) -> x_augmented`` on a batch ``[N, C, H, W]`` in the
model's input box, drawing its randomness from ``generator`` (on ``x``'s device) alone, so that a run
is reproducible from its seed and a resumed run draws what an uninterrupted one draws. The loop
applies it to each training batch on the training device before the method's ``make_inputs``, so
adversarial examples are made from the augmented images, as in the references (Madry et al.'s
``cifar10_challenge``, Rice et al.'s ``robust_overfitting``, TRADES' ``train_trades_cifar10.py``).

- ``"crop-flip"``: the standard CIFAR-10 augmentation, per example: pad 4 pixels of zeros on each
  side, take a random ``H x W`` crop (offsets uniform in ``-4..4`` in each direction, as
  ``torchvision.transforms.RandomCrop(32, padding=4)``), then flip horizontally with probability
  1/2 (``RandomHorizontalFlip()``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab.errors import RobustlabError
from robustlab.registry import Registry

__all__ = ["AUGMENTATIONS", "CROP_PADDING", "check_augmentable", "crop_flip"]

#: Zero padding, in pixels on each side, of ``"crop-flip"``'s random crops.
CROP_PADDING = 4


def crop_flip(x: Tensor, generator: torch.Generator, padding: int = CROP_PADDING) -> Tensor:
    """Each image of ``x`` ``[N, C, H, W]`` shifted by a random offset in ``-padding..padding``
    along each spatial axis (the pixels shifted in are 0: a crop of the zero-padded image), then
    mirrored left-right with probability 1/2. Draws ``2 N`` offsets, then ``N`` flips, from
    ``generator``."""
    n, _, height, width = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=x.device)
    flips = torch.randint(0, 2, (n,), generator=generator, device=x.device).bool()
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(height, device=x.device)  # [N, H] rows of the padded image
    cols = offsets[:, 1:] + torch.arange(width, device=x.device)  # [N, W]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channels, rows[:, None, :, None], cols[:, None, None, :]]


#: ``TrainConfig.augment``'s choices: name -> ``augmentation(x, generator)``.
AUGMENTATIONS: Registry[Callable[[Tensor, torch.Generator], Tensor]] = Registry("augmentation")
AUGMENTATIONS.add(crop_flip, "crop-flip")


def check_augmentable(name: str, x: Tensor, bounds: tuple[float, float] | None) -> None:
    """Raise unless the augmentation ``name`` applies to training inputs like ``x`` (images
    ``[N, C, H, W]``) in the box ``bounds`` (its zero padding must lie in the box)."""
    if x.dim() != 4:
        raise RobustlabError(f"TrainConfig.augment={name!r} augments images [N, C, H, W]; the training inputs have "
                             f"shape {tuple(x.shape)}")
    if bounds is not None and not bounds[0] <= 0 <= bounds[1]:
        raise RobustlabError(f"TrainConfig.augment={name!r} pads with zeros, which lie outside the threat model's "
                             f"box {bounds}")
