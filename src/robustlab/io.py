"""Files robustlab writes and reads: one place for strict JSON, atomic writes and saved documents.

* **Strict JSON** (RFC 8259 has no NaN or Infinity): :func:`dumps` writes non-finite floats as
  ``null``; readers take ``null`` where a number may be missing (an infinite distance, an
  accuracy over zero samples; :func:`inf_from_json` reads a distance back).
* **Atomic writes**: :func:`write_atomic` writes a temporary file in the target's folder and
  moves it into place with ``os.replace``, so a crash or a failed serialization never leaves a
  partial file (the old file, if any, stays). :func:`save_json`, :func:`save_tensors` and :func:`save_safetensors` use it.
* **Documents**: every JSON document robustlab saves for a reader (evaluations, model cards,
  certification results, reproduction records, ...) starts with :func:`header`: its ``kind``
  and that kind's ``version``. :func:`read_document` checks both; :func:`load_document` picks
  the loader by ``kind`` (the table :data:`KINDS`). Documents written before they had a kind
  are read as the ``legacy_kind`` the caller names (from the file's role), or, where the
  content says it, as a model card or reproduction record (the project ships such files).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustlab.errors import RobustlabError
from robustlab.registry import Registry
from robustlab.validate import is_int

__all__ = ["KINDS", "DocumentKind", "check_header", "dumps", "file_sha256", "key_digest", "header", "inf_from_json", "jsonable", "load_document", "read_document",
           "read_json", "save_document", "save_json", "save_safetensors", "save_tensors", "umask_mode", "write_atomic"]


@dataclass(frozen=True)
class DocumentKind:
    """One kind of saved document: its ``name`` (the ``kind`` field), the ``version`` robustlab
    writes (raised when a change would mislead an older reader), and ``loader``, the
    ``"module:attribute"`` that turns the document's dict into its object (``None``: the dict
    itself is the object). Loaders are imported when used, so that this module imports no
    part of robustlab that writes documents."""

    name: str
    version: int
    description: str
    loader: str | None = None

    def load(self, data: dict[str, Any]) -> Any:
        if self.loader is None:
            return data
        module, _, attribute = self.loader.partition(":")
        target: Any = importlib.import_module(module)
        for part in attribute.split("."):
            target = getattr(target, part)
        return target(data)


#: Every kind of document robustlab saves, by its ``kind``.
KINDS: Registry[DocumentKind] = Registry("document kind", [
    DocumentKind("fixed", 1, "fixed-eps evaluation (evaluation.json)", "robustlab.evaluation.evaluate:Evaluation.from_dict"),
    DocumentKind("minimum-norm", 1, "minimum-norm evaluation (minimum-norm.json)",
                 "robustlab.evaluation.minimum_norm:MinimumNormEvaluation.from_dict"),
    DocumentKind("targeted", 1, "targeted evaluation, C&W protocol (targeted.json)",
                 "robustlab.evaluation.targeted:TargetedEvaluation.from_dict"),
    DocumentKind("diagnostics", 1, "gradient-masking diagnosis (diagnostics.json)"),
    DocumentKind("certification", 1, "certified accuracy per method and eps (certify.json)"),
    DocumentKind("bracket", 1, "certified lower / exact / attack upper bound per sample (bracket.json)",
                 "robustlab.certify.cli:bracket_from_dict"),
    DocumentKind("model-card", 1, "model card beside the weights (<name>.json)",
                 "robustlab.models.checkpoint:ModelCard.from_dict"),
    DocumentKind("attack-summary", 1, "summary of one attack run (summary.json)"),
    DocumentKind("curve", 1, "robust accuracy at a few eps (curve.json of robustlab demo)"),
    DocumentKind("reproduction", 1, "record of a paper reproduction (<name>.json)"),
    DocumentKind("evaluation-state", 2, "resumable state of an evaluation run (its state file)"),
])


def header(kind: str) -> dict[str, Any]:
    """``{"kind": kind, "version": ...}``, the first fields of every saved document."""
    return {"kind": kind, "version": KINDS.lookup(kind).version}


def _legacy_kind(data: dict[str, Any]) -> str | None:
    """The kind of a document written before documents had one, where its content says it:
    model cards (the zoo ships them), reproduction records and evaluation state files (then
    marked by a ``format`` field)."""
    if data.get("format") == "robustlab-evaluate-state":
        return "evaluation-state"
    if "architecture" in data and "arguments" in data:
        return "model-card"
    if "reproduction" in data:
        return "reproduction"
    return None


def check_header(data: dict[str, Any], where: str, kind: str | None = None, *, legacy_kind: str | None = None) -> str:
    """The kind of the document ``data`` (read from ``where``): its ``kind`` field, else
    ``legacy_kind``, else what its content says (:func:`_legacy_kind`). Raises RobustlabError
    for an unknown kind, one other than ``kind`` (where given) and a version newer than this
    robustlab writes."""
    found = data.get("kind", legacy_kind or _legacy_kind(data))
    if found is None:
        raise RobustlabError(f"{where} has no 'kind': not a robustlab document "
                             f"(kinds: {', '.join(KINDS.names())})")
    if not isinstance(found, str) or found not in KINDS:
        raise RobustlabError(f"{where} is a document of unknown kind {found!r}; this robustlab reads "
                             f"{', '.join(KINDS.names())}: upgrade robustlab if a newer one wrote it")
    if kind is not None and found != kind:
        raise RobustlabError(f"{where} is not a {KINDS[kind].description} (kind={found!r})")
    version = data.get("version", 1)
    newest = KINDS[found].version
    if not is_int(version) or not 1 <= version <= newest:
        raise RobustlabError(f"{where} is a version {version!r} {found} document; this robustlab reads versions up to "
                             f"{newest}: upgrade robustlab")
    return found


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value in ``path``; RobustlabError naming the file if it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RobustlabError(f"cannot read {path}: {exc}") from None


def read_document(path: str | os.PathLike[str], kind: str | None = None, *, legacy_kind: str | None = None) -> dict[str, Any]:
    """The document at ``path`` as a dict, checked by :func:`check_header` (its kind, ``kind``
    where given, and its version)."""
    data = _read_object(path)
    check_header(data, str(path), kind, legacy_kind=legacy_kind)
    return data


def _read_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise RobustlabError(f"{path} should hold a JSON object, not {type(data).__name__}")
    return data


def load_document(path: str | os.PathLike[str], kind: str | None = None, *, legacy_kind: str | None = None) -> Any:
    """The object the document at ``path`` holds, built by the loader of its kind (an
    :class:`~robustlab.evaluation.Evaluation` for ``"fixed"``, a
    :class:`~robustlab.models.ModelCard` for ``"model-card"``, the dict itself for kinds
    without a class). ``kind`` and ``legacy_kind`` as for :func:`read_document`."""
    data = _read_object(path)
    found = check_header(data, str(path), kind, legacy_kind=legacy_kind)
    try:
        return KINDS[found].load(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RobustlabError(f"{path} is not a valid {found} document: {type(exc).__name__} {exc}") from None


def jsonable(value: Any) -> Any:
    """JSON-ready copy: tuples as lists, tensors and NumPy values as their ``tolist()``, paths
    as strings, sets sorted, and non-finite floats as ``None``, since RFC 8259 has no NaN or
    Infinity. In evaluation files ``null`` is an infinite distance (never broken) or an
    undefined number (an accuracy over zero samples)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(jsonable(v) for v in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return jsonable(value.tolist())
    return value


def dumps(value: Any, *, indent: int | None = 1, sort_keys: bool = False) -> str:
    """``value`` as strict JSON text (:func:`jsonable` first; anything else JSON cannot hold is a
    TypeError)."""
    return json.dumps(jsonable(value), indent=indent, allow_nan=False, sort_keys=sort_keys)


def inf_from_json(value: float | None) -> float:
    """A distance read back from strict JSON: ``null`` is ``inf`` (no adversarial example)."""
    return math.inf if value is None else float(value)


def umask_mode() -> int:
    """The permissions a new file gets from the umask (``0o666 & ~umask``)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call ``write(temporary)`` on a new file in ``path``'s folder (created if needed), then move
    it over ``path`` in one step; on any error the temporary file is removed and ``path`` is
    left as it was. The file gets the permissions the umask gives new files. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    temporary_path = Path(temporary)
    try:
        write(temporary_path)
        os.chmod(temporary_path, umask_mode())  # mkstemp makes it 0600, unlike any other file written
        with open(temporary_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary_path, path)
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise
    return path


def save_json(path: str | os.PathLike[str], data: Any, *, indent: int | None = 1) -> Path:
    """Write ``data`` as strict JSON (:func:`dumps`) atomically. Serialized before anything is
    written, so a value JSON cannot hold leaves no file behind."""
    text = dumps(data, indent=indent) + "\n"
    return write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def save_document(path: str | os.PathLike[str], kind: str, data: dict[str, Any]) -> Path:
    """Write the document ``data`` of ``kind`` (its :func:`header` first) as strict JSON, atomically."""
    return save_json(path, {**header(kind), **data})


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of the file at ``path`` (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def key_digest(key: Any, length: int = 12) -> str:
    """A short name for a configuration: the first ``length`` hex digits of the sha1 of ``key`` as
    JSON with sorted keys (values JSON cannot hold as their ``str``). Caches are named by it, so
    a changed setting never finds a stale entry."""
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:length]


def save_safetensors(path: str | os.PathLike[str], tensors: dict[str, Any], metadata: dict[str, str] | None = None
                     ) -> Path:
    """Write ``tensors`` (contiguous, on the CPU) as a safetensors file, atomically and byte for
    byte the same for the same tensors and ``metadata``: the library writes the metadata in the
    order of a Rust hash map, different at every call, so the header is written again
    with its keys sorted (same length: only the order changes). The weights' sha256 on a model
    card then names the weights, not the process that saved them."""
    import struct

    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    (length,) = struct.unpack("<Q", data[:8])
    entries = json.loads(data[8:8 + length])
    if "__metadata__" in entries:
        entries["__metadata__"] = dict(sorted(entries["__metadata__"].items()))
    text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > length:  # the library's own JSON differs in form from ours: keep its header
        text = data[8:8 + length]
    data = data[:8] + text.ljust(length, b" ") + data[8 + length:]  # padding with spaces is the format's
    return write_atomic(path, lambda temporary: temporary.write_bytes(data))


def save_tensors(path: str | os.PathLike[str], tensors: dict[str, Any]) -> Path:
    """Write tensors atomically with ``torch.save`` (read back with ``weights_only=True``)."""
    import torch

    return write_atomic(path, lambda temporary: torch.save(tensors, temporary))
