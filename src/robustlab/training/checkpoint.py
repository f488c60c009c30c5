"""Training checkpoints: complete, atomically written, and loadable without unpickling code.

A checkpoint is a ``torch.save``-d dict of tensors and plain Python values (dict, list, tuple,
str, int, float, bool, None), so ``torch.load(path, weights_only=True)`` reads it; no class of
ours is ever pickled.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from robustlab.errors import RobustlabError
from robustlab.io import dumps, write_atomic
from robustlab.training.config import TrainConfig

FORMAT = "robustlab-train-checkpoint"
VERSION = 1
LAST = "last.ckpt"
BEST = "best.ckpt"
METRICS = "metrics.jsonl"


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` (tensors and plain Python only) to ``path`` atomically."""
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **state}
    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            torch.save(payload, handle)

    write_atomic(path, write)


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
    different value would silently produce a run that matches neither configuration. A field
    the stored config lacks (a checkpoint written before the field existed, or one that
    :meth:`TrainConfig.to_dict` leaves out at its default) counts as holding its default.
    """
    current = config.to_dict()
    differences = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        old, value = stored.get(f.name, default), current.get(f.name, default)
        if isinstance(old, list):
            old = tuple(old)
        if old != value:
            differences.append(f"{f.name}: checkpoint has {old!r}, now {value!r}")
    differences += [f"{name}: a setting this robustlab does not know (checkpoint has {stored[name]!r})"
                    for name in sorted(set(stored) - set(TrainConfig.field_names()))]
    if differences:
        raise RobustlabError(
            f"cannot resume from {path}: it was written with a different training "
            f"configuration ({'; '.join(differences)}). Use the same configuration, pass "
            "resume=False to start over, or choose another checkpoint_dir."
        )


# Features hashed per example for the inputs' fingerprint: enough to tell datasets apart (MNIST
# from Fashion-MNIST, a different subset or order) at a cost independent of the image size.
_FINGERPRINT_FEATURES = 64


def _sha256(tensor: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(tensor.detach().to("cpu").contiguous().numpy().tobytes()).hexdigest()


def data_fingerprint(dataset: str | None, train_x: torch.Tensor, train_y: torch.Tensor) -> dict:
    """What a checkpoint records of the data it is trained on: the dataset's name (and split,
    as the caller gives it), the number of examples, and the sha256 of the labels (in order) and
    of a fixed sample of the inputs' features. Validation data is not part of it: it does not
    change the trajectory, and a resumed run may add or change it."""
    n = train_x.shape[0]
    features = train_x.reshape(n, -1)
    step = max(1, features.shape[1] // _FINGERPRINT_FEATURES)
    return {
        "dataset": dataset,
        "num_train": n,
        "labels_sha256": _sha256(train_y.to(torch.int64)),
        "inputs_sha256": _sha256(features[:, ::step].to(torch.float32)),
    }


def check_same_data(stored: dict | None, current: dict, path: Path) -> None:
    """Raise unless the data fingerprint ``stored`` in checkpoint ``path`` equals ``current``:
    resuming on other data (another dataset, subset, order or labels) would silently continue
    a run that matches neither. Checkpoints written before fingerprints existed pass."""
    if stored is None:
        return
    names = {"dataset": "dataset", "num_train": "training examples", "labels_sha256": "training labels (sha256)",
             "inputs_sha256": "training inputs (sha256 of a sample)"}
    differences = [f"{label}: checkpoint {_short(stored.get(key))}, now {_short(current.get(key))}"
                   for key, label in names.items() if stored.get(key) != current.get(key)]
    if differences:
        raise RobustlabError(
            f"cannot resume from {path}: it was trained on other data ({'; '.join(differences)}). Resume with the "
            "same data, pass resume=False (CLI: --no-resume) to start over, or choose another checkpoint_dir "
            "(CLI: --out)")


def _short(value) -> str:
    return f"{value[:12]}..." if isinstance(value, str) and len(value) == 64 else repr(value)


def write_metrics(path: Path, history: list[dict]) -> None:
    """Rewrite ``metrics.jsonl`` with one strict-JSON line per epoch of ``history`` (atomically;
    a NaN loss is ``null``)."""
    text = "".join(dumps(record, indent=None) + "\n" for record in history)
    write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def append_metrics(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(dumps(record, indent=None) + "\n")
