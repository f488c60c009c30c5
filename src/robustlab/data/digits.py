"""scikit-learn's bundled 8x8 digits: no download, a fixed train/test split."""

from __future__ import annotations

import numpy as np
import torch

from .dataset import ImageDataset
from .registry import DatasetInfo
from .subsets import stratified_positions

TEST_FRACTION = 0.25
SPLIT_SEED = 0


def load_digits_split(info: DatasetInfo, split: str) -> ImageDataset:
    """The ``"train"`` (1348) or ``"test"`` (449) part of the 1797 digits.

    x is float32 ``[N, 1, 8, 8]`` (pixel values 0..16 divided by 16), y int64 ``[N]``. The
    split is stratified with a fixed seed, independent of any user seed, so train and test
    never overlap; ``indices`` count within the split.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None]
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    n_test = round(TEST_FRACTION * len(y))
    test_positions = stratified_positions(y, n_test, torch.Generator().manual_seed(SPLIT_SEED))
    in_test = torch.zeros(len(y), dtype=torch.bool)
    in_test[test_positions] = True
    keep = in_test if split == "test" else ~in_test
    x, y = x[keep].contiguous(), y[keep]
    return ImageDataset(info.name, split, x, y, list(info.classes), torch.arange(len(y), dtype=torch.int64))
