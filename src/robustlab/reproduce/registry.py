"""The registry of reproductions and the options/result types they share."""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from robustlab.errors import RobustlabError
from robustlab.io import header, key_digest, save_json, write_atomic
from robustlab.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor, nn

    from robustlab.models import ModelCard

logger = logging.getLogger(__name__)


class NotTrained(RobustlabError):
    """A reproduction needs a model that is neither shipped nor cached, and ``ReproOptions.train``
    is off."""


class StoredResult(NamedTuple):
    """What :meth:`ReproOptions.stored_result` returns."""

    result: Any
    stored: bool
    seconds: float | None


def images_digest(x: Tensor, y: Tensor) -> str:
    """sha1 of a set of images and their labels: part of the key of a stored result
    (:meth:`ReproOptions.stored_result`)."""
    import hashlib

    return hashlib.sha1(x.detach().cpu().numpy().tobytes() + y.cpu().numpy().tobytes()).hexdigest()


@dataclass
class ReproOptions:
    """What a reproduction run may vary.

    ``images``: number of test images (``None``: the reproduction's default for the scale).
    ``full``: the paper's settings (training epochs, iterations, images); needs a GPU and hours.
    ``out``: folder for ``<name>.json`` / ``<name>.md``. ``cache_dir``: where trained models are
    cached (``None``: ``<user cache>/reproduce``). ``overrides``: test-only size overrides a
    reproduction documents (e.g. ``{"dataset": "digits", "epochs": 1}``); they are recorded in
    the JSON so a result can never pass for a real-scale one. ``retrain``: rebuild the zoo
    models a reproduction attacks from their recipes instead of loading the shipped weights
    (:meth:`zoo_model`). ``train``: ``False`` trains nothing: a model neither shipped nor cached
    raises :class:`NotTrained`, and a reproduction reports the rows that need it as not run.
    """

    images: int | None = None
    data_dir: str | None = None
    out: Path = Path("reproduce")
    full: bool = False
    seed: int = 0
    device: str = "cpu"
    progress: bool = False
    cache_dir: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    retrain: bool = False
    train: bool = True

    def model_cache(self) -> Path:
        """Where trained models are cached: ``cache_dir`` or ``<user cache>/reproduce``."""
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        from robustlab.data.cache import cache_dir

        return cache_dir() / "reproduce"

    def trained_or_cached(self, stem: str, key: dict[str, Any], train: Callable[[], tuple[nn.Module, ModelCard]],
                          *, seed: int | None = None) -> tuple[nn.Module, ModelCard, Path, bool]:
        """``(model in eval mode, card, path, cached)``: the model stored under
        ``<model_cache>/<stem>-<hash of key>`` (safetensors + card) when it is there, else
        ``train()``'s, saved there. ``key`` holds everything the weights depend on (data,
        architecture, training configuration, seed), so a changed setting never reads a stale
        model. ``seed``: for the stochastic defenses a card lists (see :func:`load_model`)."""
        from robustlab.models import load_model, save_model

        digest = key_digest(key)
        path = self.model_cache() / f"{stem}-{digest}"
        if path.with_suffix(".json").exists() and path.with_suffix(".safetensors").exists():
            model, card = load_model(path, map_location=self.device, seed=seed)
            logger.info("loaded cached model %s", path)
            return model.eval(), card, path, True
        if not self.train:
            raise NotTrained(f"the model {stem} is not cached in {self.model_cache()} and this run trains nothing")
        model, card = train()
        save_model(copy.deepcopy(model).cpu(), path, card)
        return model.eval(), card, path, False

    def zoo_model(self, name: str, *, seed: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
        """``(model in eval mode, info)``: the zoo model ``name`` as shipped (:func:`robustlab.zoo.load`,
        its weights checked against its card), or, with ``retrain`` or a ``seed`` other than the
        recipe's, the model trained from ``name``'s recipe with that seed, exactly as ``robustlab
        train --config`` trains it, in ``<model_cache>/zoo-runs/NAME-seedS-<hash of the recipe>``
        (resumable, and reused by later runs while the recipe is unchanged). ``info`` says which:
        ``source`` (``zoo:NAME`` or the run folder's model), ``architecture``, ``seed``,
        ``trained_here``, ``cached``, ``train_seconds`` and the card's ``training``/``metrics``."""
        from robustlab import zoo
        from robustlab.io import file_sha256
        from robustlab.models import checkpoint_paths, load_model
        from robustlab.zoo.build import train_recipe, training_seconds

        recipe = zoo.recipe(name)
        recipe_seed = recipe.get("seed", 0)
        seed = recipe_seed if seed is None else seed
        if self.retrain and not self.train:
            raise RobustlabError("--retrain and --no-train contradict each other")
        if not self.retrain and seed == recipe_seed:
            if name not in zoo.names():
                raise RobustlabError(f"the zoo model {name!r} is not trained yet: train it with `robustlab zoo train "
                                     f"{name}`, or rebuild it for this run with --retrain")
            model, card = zoo.load(name, map_location=self.device), zoo.card(name)
            return model.eval(), {"source": f"zoo:{name}", "zoo": name, "architecture": card.architecture,
                                  "seed": seed, "trained_here": False,
                                  "cached": True, "sha256": card.extra["zoo"]["sha256"],
                                  "train_seconds": card.training.get("seconds"), "training": card.training,
                                  "metrics": card.metrics}
        digest = key_digest({"recipe": recipe, "seed": seed})
        run_dir = self.model_cache() / "zoo-runs" / f"{name}-seed{seed}-{digest}"
        path = run_dir / "model"
        cached = path.with_suffix(".json").is_file() and path.with_suffix(".safetensors").is_file()
        if not cached and not self.train:
            raise NotTrained(f"{name} with seed {seed} is not trained in {run_dir} and this run trains nothing "
                             f"(without --no-train it is trained from the recipe)")
        if not cached:
            logger.info("training %s from its recipe with seed %d in %s", name, seed, run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            lock = run_dir / "training.lock"
            try:
                os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                raise RobustlabError(f"{run_dir} is being trained by another run (if none is, remove {lock})") from None
            try:
                train_recipe(name, run_dir, seed=seed, data_dir=self.data_dir, device=self.device,
                             progress=self.progress)
            finally:
                lock.unlink(missing_ok=True)
        model, card = load_model(path, map_location=self.device)
        return model.eval(), {"source": str(path), "zoo": name, "architecture": card.architecture, "seed": seed,
                              "trained_here": True, "cached": cached, "sha256": file_sha256(checkpoint_paths(path)[0]),
                              "train_seconds": training_seconds(run_dir)[0], "training": card.training,
                              "metrics": card.metrics}

    def stored_result(self, folder: str, key: dict[str, Any], compute: Callable[[], Any]) -> StoredResult:
        """``(result, stored, seconds)``: the JSON result a run with the same ``key`` stored in
        ``<model_cache>/<folder>/`` (``stored`` True), else ``compute()``'s, stored there, so that
        a killed reproduction resumes where it stopped. ``seconds``: the wall time ``compute()``
        took, in this run or in the one that stored it (None for results stored before it was
        recorded). ``key`` must hold everything the result depends on (the models' sha256, the
        images, the settings, the seed)."""
        from robustlab.io import dumps, key_digest, read_json

        key = json.loads(json.dumps(key, default=str))
        path = self.model_cache() / folder / f"{key_digest(key, 16)}.json"
        if path.is_file():
            stored = read_json(path)
            if stored.get("key") == key:
                return StoredResult(stored["result"], True, stored.get("seconds"))
        start = time.perf_counter()
        result = compute()
        seconds = round(time.perf_counter() - start, 3)
        text = dumps({"key": key, "result": result, "seconds": seconds}, indent=None)
        write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
        return StoredResult(result, False, seconds)

    def first_test_images(self, dataset: str, count: int) -> tuple[Tensor, Tensor]:
        """``(x, y)`` on ``device``: the first ``count`` images of ``dataset``'s test split, the
        images the zoo's cards are measured on."""
        from robustlab.data import load_dataset

        test = load_dataset(dataset, split="test", data_dir=self.data_dir)
        if count > len(test.y):
            raise RobustlabError(f"{count} test images requested, {dataset} has {len(test.y)}")
        return test.x[:count].to(self.device), test.y[:count].to(self.device)

    def scale(self, cpu: Any, full: Any, allowed: Sequence[str], reproduction: str,
              image_fields: Sequence[str] = ("images",)) -> Any:
        """This run's settings dataclass: ``full`` or ``cpu``, with the test-only ``overrides``
        (names in ``allowed`` only) applied, and ``images`` (when given) written to
        ``image_fields``."""
        unknown = sorted(set(self.overrides) - set(allowed))
        if unknown:
            raise RobustlabError(f"unknown {reproduction} reproduction overrides {unknown}; allowed: {list(allowed)}")
        scale = replace(full if self.full else cpu, **self.overrides)
        if self.images is not None:
            scale = replace(scale, **dict.fromkeys(image_fields, self.images))
        return scale


@dataclass
class ReproResult:
    """``record``: everything written to the JSON; ``markdown``: the table as written;
    ``json_path`` / ``markdown_path``: where they went."""

    record: dict[str, Any]
    markdown: str
    json_path: Path
    markdown_path: Path


class Reproduction(NamedTuple):
    """``(description, budget, function)``: ``budget`` states the default CPU-scale cost."""

    description: str
    budget: str
    function: Callable[[ReproOptions], tuple[dict[str, Any], str]]


#: name -> Reproduction(description, budget, function). The function returns ``(record,
#: markdown)``; :func:`run_reproduction` times it and writes both files.
REPRODUCTIONS: Registry[Reproduction] = Registry("reproduction")

ReproFunction = Callable[[ReproOptions], tuple[dict[str, Any], str]]


def register(name: str, description: str, budget: str) -> Callable[[ReproFunction], ReproFunction]:
    """Decorator: register ``function(options) -> (record, markdown)`` under ``name``."""

    def decorate(function: ReproFunction) -> ReproFunction:
        REPRODUCTIONS.add(Reproduction(description, budget, function), name)
        return function

    return decorate


def run_reproduction(name: str, options: ReproOptions) -> ReproResult:
    """Run the reproduction ``name``; write ``<out>/<name>.json`` and ``<out>/<name>.md``."""
    REPRODUCTIONS.lookup(name)
    if options.images is not None and options.images < 1:
        raise RobustlabError(f"--images must be >= 1, got {options.images}")
    start = time.perf_counter()
    record, markdown = REPRODUCTIONS[name].function(options)
    wall = time.perf_counter() - start
    record = {**header("reproduction"), "reproduction": name, "description": REPRODUCTIONS[name].description, **record,
              "wall_time_s": round(wall, 1)}
    markdown = markdown.rstrip() + f"\n\nWall time: {wall:.1f} s.\n"
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = save_json(out / f"{name}.json", record)
    markdown_path = write_atomic(out / f"{name}.md", lambda temporary: temporary.write_text(markdown, encoding="utf-8"))
    return ReproResult(record, markdown, json_path, markdown_path)
