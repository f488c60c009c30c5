"""The in-memory image dataset every loader returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import RobustlabError


@dataclass
class ImageDataset:
    """A labelled image split held in memory.

    Attributes:
        name: dataset name, e.g. ``"mnist"``.
        split: ``"train"``, ``"test"``, ``"val"``, ...
        x: float32 ``[N, C, H, W]`` with values in ``[0, 1]``.
        y: int64 ``[N]``, class indices into ``classes``.
        classes: class names, ``classes[k]`` is the name of label ``k``.
        indices: int64 ``[N]``, position of each sample in the original split; subsets keep
            it, so results can always be traced back to the source sample.
    """

    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    indices: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dim() != 4 or self.x.dtype != torch.float32:
            raise RobustlabError(
                f"ImageDataset.x must be float32 [N, C, H, W]; got {self.x.dtype} {tuple(self.x.shape)}"
            )
        n = self.x.shape[0]
        for field_name in ("y", "indices"):
            t = getattr(self, field_name)
            if t.dim() != 1 or t.dtype != torch.int64 or t.shape[0] != n:
                raise RobustlabError(
                    f"ImageDataset.{field_name} must be int64 [{n}]; got {t.dtype} {tuple(t.shape)}"
                )

    def __len__(self) -> int:
        return self.x.shape[0]

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"shape={self.shape}, num_classes={self.num_classes})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one sample, ``(C, H, W)``."""
        c, h, w = self.x.shape[1:]
        return (c, h, w)

    def subset(self, idx: torch.Tensor | Sequence[int]) -> ImageDataset:
        """The samples at positions ``idx`` (int positions or a bool mask of length N).

        ``indices`` of the result still refer to the original split.
        """
        idx = torch.as_tensor(np.asarray(idx) if not isinstance(idx, torch.Tensor) else idx)
        if idx.dtype != torch.bool:
            idx = idx.to(torch.int64)
        return ImageDataset(
            name=self.name,
            split=self.split,
            x=self.x[idx],
            y=self.y[idx],
            classes=list(self.classes),
            indices=self.indices[idx],
        )


def from_uint8(
    name: str, split: str, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> ImageDataset:
    """Build a dataset from uint8 ``[N, C, H, W]`` images and integer labels ``[N]``."""
    # np.require copies only read-only or non-contiguous input (e.g. np.frombuffer views).
    x = torch.from_numpy(np.require(images, np.uint8, ["C", "W"])).to(torch.float32).div_(255.0)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())
    return ImageDataset(name, split, x, y, list(classes), torch.arange(len(y), dtype=torch.int64))
