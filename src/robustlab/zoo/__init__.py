"""The model zoo: models trained by robustlab itself, shipped with the package.

Each model has a recipe, ``recipes/<name>.toml``, which is the exact ``robustlab train --config``
run file it was trained with, and once trained, ``models/<name>.safetensors`` (weights) with
``models/<name>.json`` (its :class:`~robustlab.models.ModelCard`). The card records the recipe,
seed, training time and machine, clean accuracy on the test set, robust accuracy under the
``standard`` suite on the first test images at the model's eps, certified accuracy where it
means something, and the sha256 of the weights.

``names()`` lists the trained models, ``recipes()`` every model with a recipe, ``card(name)`` a
model's card and ``load(name)`` the model (an ``nn.Module`` in eval mode taking inputs in
``[0, 1]``; any normalization is inside it). On the command line, ``--model zoo:NAME`` works
wherever a model path does, ``robustlab zoo list`` prints the table and ``robustlab zoo train
NAME`` trains, evaluates and publishes a model from its recipe (resumable; see
:mod:`robustlab.zoo.build`).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from torch import nn

from robustlab.errors import RobustlabError
from robustlab.io import file_sha256
from robustlab.models.checkpoint import ModelCard, checkpoint_paths, load_model
from robustlab.zoo.catalog import CATALOG, LABELS, Entry

__all__ = ["CATALOG", "LABELS", "Entry", "card", "checkpoint", "entry", "load", "names", "recipe", "recipe_path",
           "recipes", "resolve"]

ZOO_DIR = Path(__file__).resolve().parent
RECIPES_DIR = ZOO_DIR / "recipes"
MODELS_DIR = ZOO_DIR / "models"
PREFIX = "zoo:"


def recipes() -> list[str]:
    """Every model the zoo has a recipe for, trained or not, sorted."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.toml"))


def names() -> list[str]:
    """The trained models (those with weights and a card in the package), sorted."""
    return sorted(path.stem for path in MODELS_DIR.glob("*.json") if path.with_suffix(".safetensors").is_file())


def _known(name: str) -> str:
    if not isinstance(name, str) or name not in recipes():
        raise RobustlabError(f"no zoo model {name!r}; the zoo has recipes for: {', '.join(recipes())}")
    return name


def entry(name: str) -> Entry:
    """The catalog entry of ``name`` (description, threat model, labels)."""
    _known(name)
    if name not in CATALOG:
        raise RobustlabError(f"the zoo recipe {name!r} has no entry in robustlab.zoo.catalog.CATALOG")
    return CATALOG[name]


def recipe_path(name: str) -> Path:
    return RECIPES_DIR / f"{_known(name)}.toml"


def recipe(name: str) -> dict[str, Any]:
    """The recipe of ``name``: the settings of its ``robustlab train --config`` run file."""
    try:
        return tomllib.loads(recipe_path(name).read_text(encoding="utf-8"))
    except ValueError as error:
        raise RobustlabError(f"cannot parse the zoo recipe {recipe_path(name)}: {error}") from None


def checkpoint(name: str) -> Path:
    """The checkpoint path of a trained zoo model (for :func:`robustlab.models.load_model`)."""
    _known(name)
    if name not in names():
        raise RobustlabError(f"the zoo model {name!r} is not trained yet (its recipe is {recipe_path(name)}); "
                             f"train it with `robustlab zoo train {name}`")
    return MODELS_DIR / name


def card(name: str) -> ModelCard:
    """The model card of a trained zoo model."""
    path = checkpoint_paths(checkpoint(name))[1]
    try:
        return ModelCard.from_json(path.read_text(encoding="utf-8"))
    except RobustlabError as error:
        raise RobustlabError(f"{path}: {error}") from None


def load(name: str, *, map_location: str = "cpu") -> nn.Module:
    """The trained zoo model ``name`` in eval mode, after checking its weights against the sha256
    its card records (a mismatch raises: the files do not belong together)."""
    weights = checkpoint_paths(checkpoint(name))[0]
    expected = card(name).extra.get("zoo", {}).get("sha256")
    actual = file_sha256(weights)
    if actual != expected:
        raise RobustlabError(f"{weights} has sha256 {actual}, its card records {expected}: weights and card "
                             f"do not belong together (rebuild with `robustlab zoo train {name}`)")
    model, _ = load_model(checkpoint(name), map_location=map_location)
    return model


def resolve(spec: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """A model argument of the command line: ``zoo:NAME`` becomes that zoo model's checkpoint
    path; anything else is returned unchanged."""
    if isinstance(spec, str) and spec.startswith(PREFIX):
        return checkpoint(spec[len(PREFIX):])
    return spec
