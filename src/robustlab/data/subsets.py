"""Deterministic stratified subsets, train/validation splits and mini-batches."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch

from ..errors import RobustlabError
from .dataset import ImageDataset


def stratified_positions(y: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted positions of ``n`` samples drawn per class in proportion to the class counts.

    Each class gets ``floor(n * count / N)``; the remaining samples go to the classes with
    the largest fractional parts (ties: lower class index). Within a class the samples are
    a random draw from ``generator``. Requires ``0 <= n <= N``.
    """
    total = y.numel()
    if total == 0:
        return torch.empty(0, dtype=torch.int64)
    counts = torch.bincount(y)
    quota = counts * n // total
    fraction = counts * n - quota * total
    remainder = n - int(quota.sum())
    # Stable sort on descending fraction keeps lower class indices first among ties.
    order = torch.sort(-fraction, stable=True).indices
    quota[order[:remainder]] += 1
    chosen = []
    for label in range(len(counts)):
        members = torch.nonzero(y == label).flatten()
        picks = torch.randperm(len(members), generator=generator)[: int(quota[label])]
        chosen.append(members[picks])
    return torch.sort(torch.cat(chosen)).values


def class_interleaved_order(labels: np.ndarray) -> np.ndarray:
    """Positions that put ``labels`` in round-robin class order: the first sample of each class
    (in class-index order), then the second of each, and so on; the order within a class is kept.
    Every prefix of the result is then as balanced as the class counts allow."""
    labels = np.asarray(labels)
    by_class = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[by_class], labels[by_class], side="left")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[by_class] = np.arange(len(labels)) - starts
    return np.lexsort((labels, rank))


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def stratified_subset(ds: ImageDataset, n: int, *, seed: int = 0) -> ImageDataset:
    """``n`` samples of ``ds``, class proportions preserved, original order kept.

    Deterministic: the same ``seed`` gives the same subset. ``n >= len(ds)`` returns ``ds``.
    """
    if n < 0:
        raise RobustlabError(f"subset size must be >= 0, got {n}")
    if n >= len(ds):
        return ds
    return ds.subset(stratified_positions(ds.y, n, _generator(seed)))


def train_val_split(ds: ImageDataset, val_fraction: float = 0.1, *, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """Split ``ds`` into disjoint (train, val) parts that together cover it.

    The validation part holds ``round(val_fraction * len(ds))`` samples, stratified by class,
    and has split name ``"val"``; both keep the original order and ``indices``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise RobustlabError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    n_val = round(val_fraction * len(ds))
    val_positions = stratified_positions(ds.y, n_val, _generator(seed))
    in_val = torch.zeros(len(ds), dtype=torch.bool)
    in_val[val_positions] = True
    val = dataclasses.replace(ds.subset(val_positions), split="val")
    return ds.subset(~in_val), val


def batches(
    ds: ImageDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(x [B, C, H, W], y [B], indices [B])`` covering ``ds`` exactly once.

    The last batch may be smaller. With ``shuffle`` the order is ``torch.randperm`` drawn from
    ``generator`` (pass one for reproducible order; None draws from torch's global generator).
    Without shuffling the batches are views, not copies.
    """
    if batch_size < 1:
        raise RobustlabError(f"batch_size must be >= 1, got {batch_size}")
    n = len(ds)
    order = torch.randperm(n, generator=generator) if shuffle else None
    for start in range(0, n, batch_size):
        idx: slice | torch.Tensor
        if order is None:
            idx = slice(start, start + batch_size)
        else:
            idx = order[start : start + batch_size]
        yield ds.x[idx], ds.y[idx], ds.indices[idx]
