"""Where dataset files are looked for, and what is found there.

Roots, in order: the explicit ``data_dir``, ``$ROBUSTLAB_DATA`` (``os.pathsep``-separated),
the user cache ``<cache>/data``, then system locations (``/usr/share/datasets``, where
Debian's ``dataset-fashion-mnist`` installs). Under each root the dataset's folder names are
tried (``root/mnist``, ``root/cifar10-jpeg``, ...) and then the root itself. For CIFAR-10
the canonical python batches are preferred over JPEG folders found under the same root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .cache import data_cache_dir
from .cifar import has_cifar_batches
from .idx import has_idx_split
from .registry import (
    CIFAR10_ARCHIVE,
    CIFAR10_BATCH_DIR,
    CIFAR10_JPEG_ARCHIVE,
    DatasetInfo,
    dataset_info,
)

SYSTEM_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)


@dataclass(frozen=True)
class Source:
    """A place a split can be read from. ``kind`` is ``"idx"`` (folder of IDX files),
    ``"cifar-batches"`` (folder or ``.tar.gz`` of python batches) or ``"image-folder"``
    (folder or ``.tar.gz`` with ``<split>/<class>/<image>``)."""

    kind: str
    path: Path


def data_roots(data_dir: str | Path | None = None) -> list[Path]:
    """The data roots in lookup order, without duplicates."""
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir))
    env = os.environ.get("ROBUSTLAB_DATA", "")
    roots.extend(Path(p) for p in env.split(os.pathsep) if p)
    roots.append(data_cache_dir())
    roots.extend(SYSTEM_DATA_DIRS)
    unique: list[Path] = []
    for root in roots:
        root = root.expanduser()
        if root not in unique:
            unique.append(root)
    return unique


def _candidates(info: DatasetInfo, root: Path) -> list[Path]:
    return [root / name for name in info.dir_names] + [root]


def search_paths(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """Candidate folders for ``name`` in lookup order (they need not exist)."""
    info = dataset_info(name)
    if not info.needs_download:
        return []
    return [c for root in data_roots(data_dir) for c in _candidates(info, root)]


def _probe_cifar_batches(info: DatasetInfo, directory: Path, split: str | None) -> Source | None:
    for batches in (directory, directory / CIFAR10_BATCH_DIR):
        if has_cifar_batches(batches, info, split):
            return Source("cifar-batches", batches)
    if (directory / CIFAR10_ARCHIVE).is_file():
        return Source("cifar-batches", directory / CIFAR10_ARCHIVE)
    return None


def _probe_cifar_folder(info: DatasetInfo, directory: Path, split: str | None) -> Source | None:
    splits = [split] if split else list(info.splits)
    # A split folder counts only if it holds a CIFAR-10 class folder, so an unrelated
    # ``train/`` under a shared root is not mistaken for CIFAR-10.
    if any((directory / s / c).is_dir() for s in splits for c in info.classes):
        return Source("image-folder", directory)
    if (directory / CIFAR10_JPEG_ARCHIVE).is_file():
        return Source("image-folder", directory / CIFAR10_JPEG_ARCHIVE)
    return None


def _probe_idx(info: DatasetInfo, directory: Path, split: str | None) -> Source | None:
    splits = [split] if split else list(info.splits)
    if any(has_idx_split(directory, info, s) for s in splits):
        return Source("idx", directory)
    return None


def find_source(info: DatasetInfo, split: str | None = None, data_dir: str | Path | None = None) -> Source | None:
    """The first place, in lookup order, holding ``split`` (any split if None) of ``info``."""
    probes = [_probe_cifar_batches, _probe_cifar_folder] if info.name == "cifar10" else [_probe_idx]
    for root in data_roots(data_dir):
        candidates = [c for c in _candidates(info, root) if c.is_dir()]
        for probe in probes:
            for directory in candidates:
                if (found := probe(info, directory, split)) is not None:
                    return found
    return None


def locate(name: str, data_dir: str | Path | None = None, *, split: str | None = None) -> Path | None:
    """Where ``name`` would be loaded from (a folder or an archive), or None if not found.

    For ``digits`` this is scikit-learn's bundled data file.
    """
    info = dataset_info(name)
    if not info.needs_download:
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    source = find_source(info, split, data_dir)
    return None if source is None else source.path


def not_found_message(info: DatasetInfo, split: str, data_dir: str | Path | None) -> str:
    searched = "\n".join(f"  {p}" for p in search_paths(info.name, data_dir))
    return (
        f"dataset {info.name!r} (split {split!r}) not found; searched:\n{searched}\n"
        f"Fix: pass --data-dir DIR (data_dir=) pointing at a folder that holds it, set ROBUSTLAB_DATA, "
        f"or download it with `robustlab datasets fetch {info.name}` (download=True)."
    )
