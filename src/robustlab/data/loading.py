"""``load_dataset``: find a built-in dataset, read the requested split, optionally subsample."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import DataError
from .cifar import load_cifar_batches
from .dataset import ImageDataset, from_uint8
from .digits import load_digits_split
from .download import fetch
from .folders import decode_folder
from .idx import load_idx_split
from .lookup import Source, find_source, not_found_message
from .registry import DatasetInfo, check_split, dataset_info
from .subsets import class_interleaved_order, stratified_subset

logger = logging.getLogger(__name__)


def load_dataset(
    name: str,
    *,
    split: str = "test",
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    download: bool = False,
    verify: bool = False,
) -> ImageDataset:
    """Load split ``split`` of the built-in dataset ``name`` (see ``DATASETS``).

    Files are looked up as described in :mod:`robustlab.data.lookup`; if none are found and
    ``download`` is set, the official files are fetched into the user cache first. ``limit``
    keeps a class-stratified subset of that many samples (``stratified_subset`` with
    ``seed``). ``verify`` checks decompressed IDX files against the official MD5s.
    Returns x float32 ``[N, C, H, W]`` in ``[0, 1]`` and y int64 ``[N]``.
    """
    info = dataset_info(name)
    check_split(info, split)
    if not info.needs_download:
        ds = load_digits_split(info, split)
    else:
        source = find_source(info, split, data_dir)
        if source is None and download:
            fetch(info.name)
            source = find_source(info, split, data_dir)
        if source is None:
            raise DataError(not_found_message(info, split, data_dir))
        if data_dir is not None and not source.path.is_relative_to(Path(data_dir).expanduser()):
            logger.warning("%s %s not found under data_dir=%s; using %s", info.name, split, data_dir, source.path)
        logger.info("loading %s %s from %s", info.name, split, source.path)
        ds = _load_source(info, source, split, verify)
    if limit is not None:
        ds = stratified_subset(ds, limit, seed=seed)
    return ds


def _load_source(info: DatasetInfo, source: Source, split: str, verify: bool) -> ImageDataset:
    if source.kind == "idx":
        return load_idx_split(source.path, info, split, verify=verify)
    if source.kind == "cifar-batches":
        return load_cifar_batches(source.path, info, split)
    return _load_cifar_folder(info, source.path, split)


def _load_cifar_folder(info: DatasetInfo, path: Path, split: str) -> ImageDataset:
    """CIFAR-10 JPEG/PNG folders ``<split>/<class>/<image>``: labels follow the registry's
    class order. The folders lose the canonical order of the binary batches; the samples are put
    in round-robin class order (file-name order within a class), so that the first N images of a
    split, as protocols take them, are balanced over the classes as in the canonical order."""
    decoded = decode_folder(path, split=split)
    unknown = sorted(set(decoded.classes) - set(info.classes))
    if unknown:
        raise DataError(f"{path}: unknown CIFAR-10 class folder(s) {unknown} in {split}/")
    if decoded.images.shape[1:] != info.input_shape:
        raise DataError(
            f"{path}: CIFAR-10 images must be {info.input_shape}, found {decoded.images.shape[1:]}"
        )
    remap = np.array([info.classes.index(c) for c in decoded.classes], dtype=np.int64)
    labels = remap[decoded.labels]
    order = class_interleaved_order(labels)
    return from_uint8(info.name, split, decoded.images[order], labels[order], info.classes)
