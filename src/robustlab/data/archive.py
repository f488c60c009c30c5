"""Reading regular files out of a .tar.gz in one sequential pass."""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from ..errors import DataError


def member_parts(name: str) -> tuple[str, ...]:
    """Path components of a tar member name, without ``.`` components."""
    return tuple(p for p in PurePosixPath(name).parts if p not in (".", "/"))


def iter_tar_files(path: Path, want: Callable[[tuple[str, ...]], bool]) -> Iterator[tuple[tuple[str, ...], bytes]]:
    """Yield ``(parts, content)`` for each regular file of the archive whose path parts
    satisfy ``want``, streaming the archive once (no seeks, nothing extracted to disk)."""
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                parts = member_parts(member.name)
                if not want(parts):
                    continue
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                yield parts, handle.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{path}: corrupt or truncated archive ({e})") from e
