"""JSON for evaluation results and state files: atomic writes, strict JSON (``inf`` and NaN as ``null``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from robustlab.errors import RobustlabError
from robustlab.validate import is_int

__all__ = ["DOCUMENT_VERSION", "jsonable", "read_document", "save_json", "save_tensors"]

#: The version of the evaluation documents robustlab writes, saved beside their ``kind``
#: ("fixed", "minimum-norm", "targeted"); raised when a change would mislead an older reader.
DOCUMENT_VERSION = 1


def read_document(path: str | Path, kind: str) -> dict[str, Any]:
    """The evaluation document at ``path``, checked to be of ``kind`` (a document without a kind
    is a fixed-eps evaluation, written before documents had one) and of a version this robustlab reads."""
    data: dict[str, Any] = json.loads(Path(path).read_text())
    found = data.get("kind", "fixed")
    if found != kind:
        raise RobustlabError(f"{path} is not a {kind} evaluation (kind={found!r})")
    version = data.get("version", 1)
    if not is_int(version) or version > DOCUMENT_VERSION:
        raise RobustlabError(f"{path} is a version {version!r} document; this robustlab reads versions up to "
                             f"{DOCUMENT_VERSION}: upgrade robustlab")
    return data


def save_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write strict JSON atomically (a killed write leaves the old file); ``inf`` and NaN become ``null``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(data), indent=1, allow_nan=False))
    tmp.replace(path)
    return path


def save_tensors(path: str | Path, tensors: dict[str, Any]) -> Path:
    """Write tensors atomically with ``torch.save`` (read back with ``weights_only=True``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(tensors, tmp)
    tmp.replace(path)
    return path


def jsonable(value: Any) -> Any:
    """JSON-ready copy: tuples as lists, and non-finite floats as ``None``, since RFC 8259 has no
    NaN or Infinity. In evaluation files ``null`` is an infinite distance (never broken) or an
    undefined number (an accuracy over zero samples)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
