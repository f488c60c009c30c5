"""Image folders ``root/<class>/<image>``, as a directory or inside a ``.tar.gz``.

Classes are the sorted sub-folder names; samples are ordered by class, then file name.
Decoded pixels are cached as uint8 ``.npz`` under ``<cache>/decoded``, keyed by the source's
path, size and modification time, so the second load skips decoding.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..io import write_atomic
from .archive import iter_tar_files
from .cache import cache_dir
from .dataset import ImageDataset, from_uint8

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_CACHE_VERSION = 1


@dataclass
class DecodedFolder:
    """uint8 images ``[N, C, H, W]``, int64 labels ``[N]`` and the sorted class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _size_hw(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    height, width = image_size
    return (int(height), int(width))


def _decode(data: bytes | Path, source: str, grayscale: bool, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one image to uint8 ``[H, W, C]`` (C = 1 for grayscale, else 3)."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as opened:
            image = opened.convert("L" if grayscale else "RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{source}: cannot decode image ({e})") from e
    return array[:, :, None] if array.ndim == 2 else array


def _stack(items: list[tuple[str, str, str, np.ndarray]], classes: list[str]) -> DecodedFolder:
    """``items`` are (class, file name, source label, HWC array); sorted by class then name."""
    items.sort(key=lambda item: (item[0], item[1]))
    first_shape = items[0][3].shape
    for _, _, source, array in items:
        if array.shape != first_shape:
            raise DataError(
                f"{source}: image is {array.shape[1]}x{array.shape[0]}, the first image of the folder "
                f"{items[0][2]} is {first_shape[1]}x{first_shape[0]}; pass image_size= to resize"
            )
    index = {name: k for k, name in enumerate(classes)}
    images = np.stack([item[3] for item in items]).transpose(0, 3, 1, 2)
    labels = np.array([index[item[0]] for item in items], dtype=np.int64)
    return DecodedFolder(np.ascontiguousarray(images), labels, classes)


def _decode_directory(root: Path, grayscale: bool, size: tuple[int, int] | None) -> DecodedFolder:
    items = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(class_dir.iterdir()):
            if path.is_file() and _is_image(path.name):
                items.append((class_dir.name, path.name, str(path), _decode(path, str(path), grayscale, size)))
    if not items:
        raise DataError(f"{root}: no images found (expected {root}/<class>/*{'|'.join(IMAGE_EXTENSIONS)})")
    return _stack(items, sorted({item[0] for item in items}))


def _decode_archive(
    path: Path, split: str | None, grayscale: bool, size: tuple[int, int] | None
) -> DecodedFolder:
    """Decode ``[<top>/]<class>/<image>`` members, or ``[<top>/]<split>/<class>/<image>``
    when ``split`` is given (only that split's images are decoded)."""

    def want(parts: tuple[str, ...]) -> bool:
        if not _is_image(parts[-1]):
            return False
        if split is None:
            return len(parts) in (2, 3)
        return len(parts) in (3, 4) and parts[-3] == split

    items = []
    tops = set()
    for parts, content in iter_tar_files(path, want):
        source = f"{path}:{'/'.join(parts)}"
        tops.add(parts[:-2])
        items.append((parts[-2], parts[-1], source, _decode(content, source, grayscale, size)))
    inside = f"{split}/<class>/<image>" if split else "<class>/<image>"
    if not items:
        raise DataError(f"{path}: no images found in the archive (expected members {inside})")
    if len(tops) > 1:
        raise DataError(f"{path}: images at different depths; expected members {inside} under one folder")
    return _stack(items, sorted({item[0] for item in items}))


def _fingerprint(path: Path) -> str:
    """Identifies the content of a file (path, size, mtime) or of a folder tree."""
    path = path.resolve()
    stat = path.stat()
    parts = [str(path), str(stat.st_size), str(stat.st_mtime_ns)]
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                file_stat = os.stat(os.path.join(dirpath, name))
                parts.append(f"{dirpath}/{name}:{file_stat.st_size}:{file_stat.st_mtime_ns}")
    return "\n".join(parts)


def _cache_path(path: Path, key: str) -> Path:
    digest = hashlib.sha256(f"v{_CACHE_VERSION}\n{key}\n{_fingerprint(path)}".encode()).hexdigest()[:24]
    stem = path.name.split(".")[0] or "folder"
    return cache_dir() / "decoded" / f"{stem}-{digest}.npz"


def _read_cache(cache_file: Path) -> DecodedFolder | None:
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as npz:
            return DecodedFolder(npz["images"], npz["labels"], [str(c) for c in npz["classes"]])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        logger.warning("ignoring unreadable cache file %s (%s); decoding again", cache_file, e)
        return None


def _write_cache(cache_file: Path, decoded: DecodedFolder) -> None:
    try:
        write_atomic(cache_file, lambda temporary: _savez(temporary, decoded))
    except OSError as e:
        logger.warning("could not write the decoded-image cache %s (%s)", cache_file, e)


def _savez(path: Path, decoded: DecodedFolder) -> None:
    with open(path, "wb") as handle:  # a handle: given a path, np.savez would append ".npz" to the temporary name
        np.savez(handle, images=decoded.images, labels=decoded.labels, classes=np.array(decoded.classes))


def decode_folder(
    path: Path,
    *,
    split: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    grayscale: bool = False,
    cache: bool = True,
) -> DecodedFolder:
    """Decode an image folder (directory or archive), through the ``.npz`` cache.

    ``split`` selects the ``<split>/`` sub-folder (of a directory or inside an archive).
    """
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    size = _size_hw(image_size)
    key = f"split={split}\nsize={size}\ngray={grayscale}"
    cache_file = _cache_path(path, key) if cache else None
    if cache_file is not None and (hit := _read_cache(cache_file)) is not None:
        logger.debug("decoded images of %s read from cache %s", path, cache_file)
        return hit
    if path.is_dir():
        root = path / split if split else path
        if not root.is_dir():
            raise DataError(f"{root}: no such directory")
        decoded = _decode_directory(root, grayscale, size)
    elif is_archive(path):
        decoded = _decode_archive(path, split, grayscale, size)
    else:
        raise DataError(f"{path}: not a directory or a .tar/.tar.gz archive of images")
    logger.info("decoded %d images from %s", len(decoded.labels), path)
    if cache_file is not None:
        _write_cache(cache_file, decoded)
    return decoded


def load_image_folder(
    path: str | Path,
    *,
    split_name: str = "custom",
    image_size: int | tuple[int, int] | None = None,
    grayscale: bool = False,
    cache: bool = True,
) -> ImageDataset:
    """Load ``path/<class>/*.png|jpg|jpeg|bmp`` (a directory, or a ``.tar.gz`` holding it).

    Classes are the sorted sub-folder names. Every image must have the same size unless
    ``image_size`` (an int or ``(H, W)``) is given, which resizes bilinearly. Returns x float32
    ``[N, C, H, W]`` in ``[0, 1]``, C = 1 with ``grayscale`` else 3; ``indices`` follow the
    class-then-file-name order.
    """
    path = Path(path).expanduser()
    decoded = decode_folder(path, image_size=image_size, grayscale=grayscale, cache=cache)
    name = path.name.split(".")[0] if path.is_file() else path.name
    return from_uint8(name, split_name, decoded.images, decoded.labels, decoded.classes)
