"""CIFAR-10 python batches (``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``).

The batches are pickles of ``{b"data": uint8 [10000, 3072], b"labels": [int] * 10000, ...}``
where each row is the 32x32 red plane, then green, then blue. They are read with a
restricted unpickler that resolves only the few numpy names an array needs, so a crafted
file cannot run code.
"""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .archive import iter_tar_files
from .dataset import ImageDataset, from_uint8
from .registry import CIFAR10_BATCH_DIR, DatasetInfo

logger = logging.getLogger(__name__)


def _allowed_globals() -> dict[tuple[str, str], object]:
    try:  # numpy >= 2 (numpy.core is a deprecated alias there)
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    # Pickles written by numpy 1 name numpy.core, by numpy 2 numpy._core; _frombuffer is
    # what protocol 5 uses for arrays.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except numpy's array reconstructors."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def safe_unpickle(data: bytes, source: str) -> object:
    """Unpickle ``data`` (encoding='bytes') with :class:`RestrictedUnpickler`."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{source}: unsafe or corrupt pickle ({e})") from e
    # A corrupt pickle can fail in many ways (EOFError, KeyError, struct.error, ...).
    except Exception as e:
        raise DataError(f"{source}: corrupt pickle ({type(e).__name__}: {e})") from e


def _field(batch: dict[Any, Any], key: str, source: str) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataError(f"{source}: CIFAR batch has no {key!r} entry (keys: {list(batch)[:8]})")


def parse_batch(obj: object, source: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate one unpickled batch; returns uint8 images ``[n, 3, 32, 32]`` and int64 labels ``[n]``."""
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a dict, the pickle holds {type(obj).__name__}")
    data = _field(obj, "data", source)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype}{list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{source}: 'data' must be uint8 [n, 3072], found {desc}")
    try:
        labels = np.asarray(_field(obj, "labels", source), dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{source}: 'labels' is not a list of integers ({e})") from e
    if labels.shape != (len(data),):
        raise DataError(f"{source}: {len(data)} images but labels of shape {list(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{source}: labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def _class_names(meta: object, source: str, default: tuple[str, ...]) -> list[str]:
    if not isinstance(meta, dict):
        raise DataError(f"{source}: expected a dict, the pickle holds {type(meta).__name__}")
    names = _field(meta, "label_names", source)
    decoded = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(decoded) != len(default):
        raise DataError(f"{source}: {len(decoded)} label names, expected {len(default)}")
    return decoded


def has_cifar_batches(directory: Path, info: DatasetInfo, split: str | None = None) -> bool:
    splits = [split] if split else list(info.split_files)
    return any(all((directory / f).is_file() for f in info.split_files[s]) for s in splits)


def load_cifar_batches(source: Path, info: DatasetInfo, split: str) -> ImageDataset:
    """Load a split from a ``cifar-10-batches-py`` directory or the ``.tar.gz`` holding it.

    Returns x float32 ``[N, 3, 32, 32]`` in ``[0, 1]`` in the canonical order.
    """
    wanted = list(info.split_files[split])
    raw: dict[str, tuple[str, bytes]] = {}
    if source.is_dir():
        for name in [*wanted, "batches.meta"]:
            path = source / name
            if path.is_file():
                raw[name] = (str(path), path.read_bytes())
    else:
        def want(parts: tuple[str, ...]) -> bool:
            return parts[-1] in (*wanted, "batches.meta") and parts[-1] not in raw

        for parts, content in iter_tar_files(source, want):
            raw[parts[-1]] = (f"{source}:{'/'.join(parts)}", content)
    missing = [name for name in wanted if name not in raw]
    if missing:
        where = source if source.is_dir() else f"{source} (looked for {CIFAR10_BATCH_DIR}/<batch>)"
        raise DataError(f"{where}: missing CIFAR-10 batch file(s) {', '.join(missing)}")

    classes = list(info.classes)
    if "batches.meta" in raw:
        label, content = raw["batches.meta"]
        classes = _class_names(safe_unpickle(content, label), label, info.classes)
    images, labels = [], []
    for name in wanted:
        label, content = raw[name]
        x, y = parse_batch(safe_unpickle(content, label), label, len(classes))
        images.append(x)
        labels.append(y)
    logger.debug("loaded cifar10 %s from %s", split, source)
    return from_uint8(info.name, split, np.concatenate(images), np.concatenate(labels), classes)
