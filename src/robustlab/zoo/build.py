"""Publishing a trained zoo model: evaluate it and write its weights and card into the zoo.

``robustlab zoo train NAME`` trains the recipe with ``robustlab train`` in a working folder
(``zoo-runs/NAME``: atomic, resumable checkpoints; :func:`train_recipe`) and then calls :func:`publish`, which
evaluates the trained model and writes ``models/NAME.safetensors`` and ``models/NAME.json``.
Every evaluation is resumable too: the ``standard`` suite keeps its per-sample state in the
working folder, so a killed build restarts where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.data import load_dataset
from robustlab.errors import RobustlabError
from robustlab.evaluation import build_suite, evaluate
from robustlab.evaluation.provenance import provenance
from robustlab.evaluation.suites import SUITES
from robustlab.io import file_sha256
from robustlab.models.checkpoint import ModelCard, checkpoint_paths, load_model, save_model
from robustlab.settings import RunSettings
from robustlab.threat import threat_model
from robustlab.training import checkpoint as training_checkpoint
from robustlab.zoo import MODELS_DIR, entry, recipe, recipe_path

logger = logging.getLogger(__name__)

# The card's exact check: clean accuracy on the first this many test images, which the zoo's test
# recomputes for every model (cheap, and exact up to float differences between machines).
CHECK_IMAGES = 200
# Suites recorded on the cards: `standard` always; `fast` once robustlab has it.
CARD_SUITES = ("standard", "fast")


def train_recipe(name: str, run_dir: str | Path, *, seed: int | None = None, data_dir: str | None = None,
                 device: str | None = None, progress: bool = False) -> Path:
    """Train ``name``'s recipe exactly as ``robustlab train --config recipes/NAME.toml --out
    run_dir`` does (resumable: a killed run continues from its last epoch's checkpoint) and
    return the trained model's checkpoint path, ``run_dir/model``. ``seed``: another seed than the
    recipe's (weights, shuffling, validation split and the method's random draws all follow it),
    for an independently trained copy of a zoo model. ``robustlab train``'s one line of output
    goes to this module's log."""
    from robustlab.cli import build_parser
    from robustlab.cli.train import run as train_command

    argv = ["train", "--config", str(recipe_path(name)), "--out", str(run_dir)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    if data_dir:
        argv += ["--data-dir", str(data_dir)]
    if device:
        argv += ["--device", device]
    if not progress:
        argv.append("--quiet")
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        train_command(build_parser().parse_args(argv))
    logger.info("%s: %s", name, output.getvalue().strip())
    return Path(run_dir) / "model"


def training_seconds(run_dir: Path) -> tuple[float, int]:
    """Total seconds and number of epochs of the training run in ``run_dir`` (summed over the
    epochs in its ``metrics.jsonl``, so a resumed run counts every segment once)."""
    path = Path(run_dir) / "checkpoints" / training_checkpoint.METRICS
    if not path.is_file():
        raise RobustlabError(f"no training metrics at {path}: train the model first")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return round(sum(r["seconds"] for r in records), 1), len(records)


def machine() -> dict[str, Any]:
    """The machine the model was built on: CPU model, core count, torch threads, versions."""
    info = provenance(device="cpu")
    info.pop("seed", None)
    info.pop("date", None)
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cpu_model"] = cpu
    return info


def tensors_digest(model: nn.Module) -> str:
    """sha256 over the model's state dict (names, dtypes, shapes and values, in key order)."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


#: Seed and batch size of the suites a card records (publish and remeasure use the same).
CARD_SETTINGS = RunSettings(seed=0, batch_size=250)


@torch.no_grad()
def correct_predictions(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> Tensor:
    """``bool[N]``: the model's prediction equals the label."""
    model.eval()
    return torch.cat([model(x[i:i + batch_size]).argmax(dim=1) == y[i:i + batch_size]
                      for i in range(0, len(x), batch_size)])


def _suite_metrics(name, model, x, y, threat, num_classes, suite, state_dir, settings: RunSettings) -> dict:
    """A card's entry for ``suite`` on ``x``, resumable: the state file in ``state_dir`` is named
    after the weights, so a retrained model never resumes another model's evaluation."""
    logger.info("%s: %s suite on the first %d test images", name, suite, len(x))
    state_file = Path(state_dir) / f"{suite}-{len(x)}-{tensors_digest(model)[:12]}-state.json"
    start = time.perf_counter()
    ev = evaluate(model, x, y, threat=threat, attacks=build_suite(suite, threat, num_classes), cascade=True,
                  settings=settings, state_file=state_file, resume=True)
    robust = ev.metrics["robust_accuracy"]
    return {"robust_accuracy": robust["value"], "ci_low": robust["ci_low"], "ci_high": robust["ci_high"],
            "clean_accuracy": ev.metrics["clean_accuracy"]["value"], "images": len(x), "first_images": True, "broken_by": ev.metrics.get("broken_by"),
            "seconds_last_run": round(time.perf_counter() - start, 1), "seed": settings.seed, "batch_size": settings.batch_size}


def _certified(model, x, y, threat, methods, batch_size) -> dict:
    from robustlab.certify import CROWN, IBP

    certifiers = {"ibp": lambda: IBP(batch_size=batch_size), "crown": lambda: CROWN(batch_size=batch_size)}
    out = {}
    for method in methods:
        if method not in certifiers:
            raise RobustlabError(f"zoo cards record certified accuracy with {sorted(certifiers)}, not {method!r}")
        result = certifiers[method]()(model, x, y, threat=threat)
        out[method] = {"certified_accuracy": result.certified_accuracy, "images": len(x), "first_images": True,
                       "seconds": round(result.seconds, 1)}
    return out


def publish(name: str, run_dir: str | Path, *, out_dir: str | Path = MODELS_DIR, data_dir: str | None = None,
            images: int | None = None, settings: RunSettings = CARD_SETTINGS) -> ModelCard:
    """Evaluate the model trained from ``name``'s recipe in ``run_dir`` and write its weights and
    card as ``out_dir/NAME.safetensors`` / ``.json``. Returns the card.

    Measured: clean accuracy on the whole test split and on its first ``CHECK_IMAGES`` images;
    robust accuracy under the ``standard`` suite (and ``fast`` where robustlab has it) on the
    first ``images`` test images (default: the catalog's) at the catalog's threat model, as a
    resumable cascade (state in ``run_dir``); certified accuracy with the catalog's methods on
    the same images. The card's ``extra["zoo"]`` holds the sha256 of the weights. ``settings``:
    the suites' seed and batch size (recorded in the card) and progress bar; default
    :data:`CARD_SETTINGS`.
    """
    run_dir = Path(run_dir)
    info = entry(name)
    images = info.images if images is None else images
    model, run_card = load_model(run_dir / "model")
    config, wanted = run_card.training.get("config", {}), recipe(name)
    if (config.get("method"), config.get("seed")) != (wanted.get("method", "natural"), wanted.get("seed", 0)):
        raise RobustlabError(f"{run_dir}/model was not trained with the recipe of {name!r} (method or seed differ)")
    if run_card.dataset is None:
        raise RobustlabError(f"{run_dir}/model: the card records no dataset")
    test = load_dataset(run_card.dataset, split="test", data_dir=data_dir)
    x, y = test.x, test.y
    if images > len(x):
        raise RobustlabError(f"{images} images requested, the test split has {len(x)}")
    threat = threat_model(info.norm, info.eps, run_card.input_bounds)
    correct = correct_predictions(model, x, y)
    metrics: dict[str, Any] = {
        "clean_accuracy": float(correct.float().mean()), "clean_images": len(x),
        "check": {"images": CHECK_IMAGES, "clean_accuracy": float(correct[:CHECK_IMAGES].float().mean())},
        "threat": {"norm": threat.norm, "eps": threat.eps},
        "validation": {k: run_card.metrics.get(k) for k in ("best_val_acc", "best_val_robust_acc")},
    }
    for suite in CARD_SUITES:
        if suite in SUITES:
            metrics[suite] = _suite_metrics(name, model, x[:images], y[:images], threat, test.num_classes, suite,
                                            run_dir, settings)
    if info.certify:
        metrics["certified"] = _certified(model, x[:images], y[:images], threat, info.certify, settings.batch_size)
    seconds, epochs = training_seconds(run_dir)
    training = dict(run_card.training)
    training.update({"recipe": recipe(name), "recipe_file": f"robustlab/zoo/recipes/{name}.toml",
                     "seed": training.get("config", {}).get("seed"), "seconds": seconds, "epochs_run": epochs,
                     "machine": machine()})
    zoo = {"name": name, "description": info.description, "labels": list(info.labels), "sha256": None}
    card = ModelCard(architecture=run_card.architecture, arguments=run_card.arguments, dataset=run_card.dataset,
                     input_bounds=run_card.input_bounds, normalization=run_card.normalization,
                     defenses=run_card.defenses, training=training, metrics=metrics, extra={"zoo": zoo})
    weights = save_model(model, Path(out_dir) / name, card)
    # The card as written (save_model adds weights_sha256), rewritten with the zoo's copy of the hash
    # (not by a second save_model: safetensors' header is not byte-for-byte reproducible).
    card_path = checkpoint_paths(weights)[1]
    card = ModelCard.from_json(card_path.read_text(encoding="utf-8"))
    zoo["sha256"] = file_sha256(weights)
    card.extra = {"zoo": zoo}
    card.save(card_path)
    return card


def remeasure(name: str, suites: tuple[str, ...], *, models_dir: str | Path = MODELS_DIR, data_dir: str | None = None,
              workdir: str | Path, settings: RunSettings = CARD_SETTINGS) -> ModelCard:
    """Measure ``suites`` again on a published model and rewrite those entries of its card (after
    a suite's protocol or the test split's order changed), and its clean-accuracy check on the
    first ``CHECK_IMAGES`` images; the weights, their hash and every other entry stay as they
    are. Same images, seed and batch size as :func:`publish`; resumable (state in ``workdir``)."""
    unknown = [suite for suite in suites if suite not in CARD_SUITES]
    if unknown:
        raise RobustlabError(f"the cards record the suites {list(CARD_SUITES)}, not {unknown}")
    info = entry(name)
    weights = Path(models_dir) / f"{name}.safetensors"
    model, card = load_model(weights)
    if card.dataset is None:
        raise RobustlabError(f"{weights}: the card records no dataset")
    test = load_dataset(card.dataset, split="test", data_dir=data_dir)
    images = int(card.metrics.get("standard", {}).get("images", info.images))
    threat = threat_model(info.norm, info.eps, card.input_bounds)
    state_dir = Path(workdir) / name
    state_dir.mkdir(parents=True, exist_ok=True)
    check = correct_predictions(model, test.x[:CHECK_IMAGES], test.y[:CHECK_IMAGES])
    card.metrics["check"] = {"images": CHECK_IMAGES, "clean_accuracy": float(check.float().mean())}
    for suite in suites:
        card.metrics[suite] = _suite_metrics(name, model, test.x[:images], test.y[:images], threat, test.num_classes,
                                             suite, state_dir, settings)
    card_path = checkpoint_paths(weights)[1]
    card.save(card_path)
    return card


def card_row(card: ModelCard) -> dict[str, Any]:
    """One row of the zoo's table: name, method, clean, standard, fast, certified."""
    zoo = card.extra.get("zoo", {})
    metrics = card.metrics
    certified = metrics.get("certified") or {}
    best_certified = max((c["certified_accuracy"] for c in certified.values()), default=None)
    return {
        "name": zoo.get("name"),
        "architecture": card.architecture,
        "method": card.training.get("method"),
        "eps": metrics.get("threat", {}).get("eps"),
        "clean": metrics.get("clean_accuracy"),
        "standard": (metrics.get("standard") or {}).get("robust_accuracy"),
        "standard_images": (metrics.get("standard") or {}).get("images"),
        "fast": (metrics.get("fast") or {}).get("robust_accuracy"),
        "certified": best_certified,
        "training_seconds": card.training.get("seconds"),
        "labels": zoo.get("labels", []),
    }
