"""Datasets: MNIST, Fashion-MNIST, CIFAR-10, image folders and scikit-learn's digits.

Every loader returns an :class:`ImageDataset` with x float32 ``[N, C, H, W]`` in ``[0, 1]``.
Files are found in ``data_dir``, ``$ROBUSTLAB_DATA``, the user cache, or system locations,
and can be downloaded from the official sources with checksum verification (``fetch``).
"""

from .dataset import ImageDataset
from .download import fetch
from .folders import load_image_folder
from .idx import read_idx
from .loading import load_dataset
from .lookup import locate, search_paths
from .registry import DATASETS, DatasetInfo, RemoteFile
from .subsets import batches, stratified_subset, train_val_split

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "ImageDataset",
    "RemoteFile",
    "batches",
    "fetch",
    "load_dataset",
    "load_image_folder",
    "locate",
    "read_idx",
    "search_paths",
    "stratified_subset",
    "train_val_split",
]
