"""Downloading the official dataset files, with checksum verification.

Every file goes to a temporary name next to its destination, is verified, and only then
renamed into place, so an interrupted or corrupt download never leaves a file behind.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from ..io import write_atomic
from .cache import data_cache_dir
from .lookup import locate
from .registry import RemoteFile, dataset_info

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def _digests(path: Path) -> dict[str, str]:
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def _mismatches(expected: RemoteFile, actual: dict[str, str]) -> list[str]:
    wanted = {"md5": expected.md5, "sha256": expected.sha256}
    return [
        f"{algo} expected {digest}, got {actual[algo]}"
        for algo, digest in wanted.items()
        if digest is not None and digest.lower() != actual[algo]
    ]


def download_file(url: str, target: Path, expected: RemoteFile, *, progress: bool = False, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``target`` and verify it against ``expected``'s checksums.

    Raises DataError naming the file (and both digests on a mismatch); nothing is left at
    ``target`` or in a temporary file when it fails.
    """

    def fetch_and_verify(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            try:
                _copy_response(url, out, target.name, progress, timeout)
            except (urllib.error.URLError, OSError) as e:
                raise DataError(f"{target}: download from {url} failed ({e})") from e
        problems = _mismatches(expected, _digests(tmp))
        if problems:
            raise DataError(f"{target}: checksum mismatch for the file downloaded from {url}: {'; '.join(problems)}")

    write_atomic(target, fetch_and_verify)
    logger.info("downloaded %s to %s", url, target)
    return target


def _copy_response(url: str, out, label: str, progress: bool, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        bar = None
        if progress:
            from robustlab._progress import progress_bar

            bar = progress_bar(total=total, unit="B", unit_scale=True, desc=label, leave=False)
        received = 0
        try:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and received != total:
        raise OSError(f"connection closed after {received} of {total} bytes")


def download_files(
    files: Sequence[RemoteFile], dest: Path, *, base_url: str | None = None, progress: bool = False
) -> list[Path]:
    """Download ``files`` into ``dest``; ``base_url`` replaces each file's official location
    (``base_url/filename``). A file already present with the right checksums is kept."""
    paths = []
    for remote in files:
        target = dest / remote.filename
        if target.is_file() and not _mismatches(remote, _digests(target)):
            logger.info("%s already present and verified", target)
        else:
            url = f"{base_url.rstrip('/')}/{remote.filename}" if base_url else remote.url
            download_file(url, target, remote, progress=progress)
        paths.append(target)
    return paths


def fetch(name: str, *, dest: Path | None = None, base_url: str | None = None, progress: bool = False) -> Path:
    """Download the official files of ``name`` into ``dest`` (default ``<cache>/data/<name>``),
    verifying their MD5s, and return that folder. ``digits`` needs no download: its bundled
    scikit-learn file is returned."""
    info = dataset_info(name)
    if not info.needs_download:
        logger.info("%s is bundled with scikit-learn; nothing to download", info.name)
        bundled = locate(info.name)
        assert bundled is not None
        return bundled
    dest = Path(dest).expanduser() if dest is not None else data_cache_dir() / info.name
    download_files(info.files, dest, base_url=base_url, progress=progress)
    return dest
