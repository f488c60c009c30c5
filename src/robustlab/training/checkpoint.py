"""Training checkpoints: complete, atomically written, and loadable without unpickling code.

A checkpoint is a ``torch.save``-d dict of tensors and plain Python values (dict, list, tuple,
str, int, float, bool, None), so ``torch.load(path, weights_only=True)`` reads it; no class of
ours is ever pickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from robustlab.errors import RobustlabError
from robustlab.training.config import TrainConfig

FORMAT = "robustlab-train-checkpoint"
VERSION = 1
LAST = "last.ckpt"
BEST = "best.ckpt"
METRICS = "metrics.jsonl"


def _atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temp file in ``path``'s directory, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` (tensors and plain Python only) to ``path`` atomically."""
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **state}
    _atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, on CPU, without unpickling code."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RobustlabError(f"cannot read training checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RobustlabError(f"{path} is not a robustlab training checkpoint")
    if state.get("version") != VERSION:
        raise RobustlabError(
            f"{path} has checkpoint version {state.get('version')}, this robustlab reads "
            f"version {VERSION}"
        )
    return state


def check_resumable(stored: dict, config: TrainConfig, path: Path) -> None:
    """Raise unless ``config`` equals the config ``stored`` in checkpoint ``path``.

    Every field counts: each one changes the trajectory of training, so resuming under a
    different value would silently produce a run that matches neither configuration.
    """
    current = config.to_dict()
    differences = []
    for name, value in current.items():
        old = stored.get(name, "<missing>")
        if isinstance(old, list):
            old = tuple(old)
        if old != value:
            differences.append(f"{name}: checkpoint has {old!r}, now {value!r}")
    if differences:
        raise RobustlabError(
            f"cannot resume from {path}: it was written with a different training "
            f"configuration ({'; '.join(differences)}). Use the same configuration, pass "
            "resume=False to start over, or choose another checkpoint_dir."
        )


def write_metrics(path: Path, history: list[dict]) -> None:
    """Rewrite ``metrics.jsonl`` with one JSON line per epoch of ``history`` (atomically)."""
    text = "".join(json.dumps(record) + "\n" for record in history)
    _atomic_write(path, lambda handle: handle.write(text.encode()))


def append_metrics(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
