"""IDX files (MNIST, Fashion-MNIST), plain or gzipped, parsed and validated with numpy.

IDX layout: 2 zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64), the number of dimensions D, then D big-endian uint32 sizes,
then the big-endian data in C order.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import ImageDataset, from_uint8
from .registry import DatasetInfo

logger = logging.getLogger(__name__)

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: Path) -> bytes:
    """The content of ``path``, decompressed if it is gzip data (detected by its magic bytes)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e})") from e
    if raw[:2] != _GZIP_MAGIC:
        if path.suffix == ".gz":
            raise DataError(f"{path}: named .gz but is not gzip data (starts with {raw[:4].hex() or 'nothing'})")
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from e


def parse_idx(raw: bytes, source: Path | str) -> np.ndarray:
    """Parse IDX bytes into an array (native byte order); ``source`` names the file in errors."""
    if len(raw) < 4:
        raise DataError(f"{source}: not an IDX file: {len(raw)} bytes, shorter than the 4-byte magic number")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(
            f"{source}: bad IDX magic number 0x{raw[:4].hex()} "
            f"(expected 0x0000 then a dtype code in {{08, 09, 0b, 0c, 0d, 0e}} and the rank)"
        )
    dtype, ndim = np.dtype(_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{source}: IDX header declares {ndim} dimensions but the file has {len(raw)} bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(
            f"{source}: IDX file {what}: header declares {dtype.name}{list(dims)}, i.e. {expected} data bytes, "
            f"but {actual} bytes follow the {header}-byte header"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or not) into a numpy array of its declared dtype and shape."""
    path = Path(path)
    return parse_idx(read_bytes(path), path)


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` or ``directory/stem.gz``, whichever exists (uncompressed first)."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def has_idx_split(directory: Path, info: DatasetInfo, split: str) -> bool:
    return all(find_idx_file(directory, stem) for stem in info.split_files[split])


def load_idx_split(directory: Path, info: DatasetInfo, split: str, *, verify: bool = False) -> ImageDataset:
    """Load one split of an IDX dataset from ``directory``.

    Returns x float32 ``[N, 1, H, W]`` in ``[0, 1]`` and y int64 ``[N]``. With ``verify``,
    the decompressed content is checked against the official MD5 from the registry.
    """
    paths = []
    for stem in info.split_files[split]:
        path = find_idx_file(directory, stem)
        if path is None:
            raise DataError(f"{directory / stem}: file not found (also tried {stem}.gz)")
        paths.append(path)
    image_path, label_path = paths
    image_raw, label_raw = read_bytes(image_path), read_bytes(label_path)
    if verify:
        _verify_content(info, image_path, image_raw)
        _verify_content(info, label_path, label_raw)
    images, labels = parse_idx(image_raw, image_path), parse_idx(label_raw, label_path)

    _, height, width = info.input_shape
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (height, width):
        raise DataError(
            f"{image_path}: expected uint8 images [N, {height}, {width}], found {images.dtype}{list(images.shape)}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{label_path}: expected uint8 labels [N], found {labels.dtype}{list(labels.shape)}")
    if len(images) != len(labels):
        raise DataError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels"
        )
    if len(labels) and int(labels.max()) >= info.num_classes:
        raise DataError(
            f"{label_path}: label {int(labels.max())} out of range for {info.num_classes} classes"
        )
    logger.debug("loaded %s %s: %d samples from %s", info.name, split, len(labels), directory)
    return from_uint8(info.name, split, images[:, None], labels, info.classes)


def _verify_content(info: DatasetInfo, path: Path, content: bytes) -> None:
    stem = path.name.removesuffix(".gz")
    expected = next((f.content_md5 for f in info.files if f.filename.removesuffix(".gz") == stem), None)
    if expected is None:
        return
    actual = hashlib.md5(content, usedforsecurity=False).hexdigest()
    if actual != expected:
        raise DataError(f"{path}: content MD5 {actual} differs from the official {expected}")
