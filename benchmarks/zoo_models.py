"""The robustlab-trained models of ``autoattack_reference.py``: one of each kind the issue names
(natural, PGD, TRADES, fast FGSM with catastrophic overfitting on two architectures, bilateral,
a CIFAR-10 model), trained with short schedules and cached under ``benchmarks/.cache``.

The point is the kind of model, not its quality: each trains in a few minutes on 2 cores, on a
subset of the training set where the full set would take longer. The fast-FGSM models use the
setting of issue 14 (random start, step 1.25 eps, eps 0.3), the catastrophic-overfitting kind:
their gradients are masked, so gradient attacks leave images that Square still breaks.

    ROBUSTLAB_DATA=/work/shared/data python benchmarks/zoo_models.py [NAME ...]

trains (or loads) the named models, all by default. Benchmark code, not library code.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from robustlab.data import load_dataset
from robustlab.models import ModelCard, build_model, load_model, save_model
from robustlab.training import TrainConfig, train


@dataclass(frozen=True)
class Recipe:
    dataset: str
    arch: str
    method: str
    train_images: int
    epochs: int
    lr: float = 0.05
    options: dict[str, Any] = field(default_factory=dict)
    threat: dict[str, Any] | None = None
    eps_warmup_epochs: float = 0
    optimizer: str = "sgd"


_LINF_03 = {"norm": "Linf", "eps": 0.3}
_CIFAR = {"norm": "Linf", "eps": 8 / 255}

RECIPES: dict[str, Recipe] = {
    "mnist-natural-lenet": Recipe("mnist", "lenet", "natural", 30000, 1),
    "mnist-pgd-kwsmall": Recipe("mnist", "kw-small", "pgd", 10000, 3, options={"steps": 5, "step_size": 0.1},
                                threat=_LINF_03, eps_warmup_epochs=1),
    "mnist-trades-kwsmall": Recipe("mnist", "kw-small", "trades", 10000, 3,
                                   options={"beta": 1.0, "steps": 5, "step_size": 0.1},
                                   threat=_LINF_03, eps_warmup_epochs=1),
    "mnist-fastfgsm-madry": Recipe("mnist", "madry-cnn", "fast-fgsm", 10000, 2, lr=0.001, optimizer="adam",
                                   options={"step_size_factor": 1.25}, threat=_LINF_03),
    "mnist-fastfgsm-smallcnn": Recipe("mnist", "small-cnn", "fast-fgsm", 10000, 2, lr=0.001, optimizer="adam",
                                      options={"step_size_factor": 1.25}, threat=_LINF_03),
    "mnist-bilateral-kwsmall": Recipe("mnist", "kw-small", "bilateral", 10000, 3, threat=_LINF_03,
                                      eps_warmup_epochs=1),
    "cifar10-pgd-kwsmall": Recipe("cifar10", "kw-small", "pgd", 20000, 4, lr=0.001, optimizer="adam",
                                  options={"steps": 3, "step_size": 2.5 / 255}, threat=_CIFAR, eps_warmup_epochs=1),
}


def dataset(name: str) -> str:
    """The dataset of the model ``name`` (a recipe here, or ``zoo:NAME``, a model of robustlab's zoo)."""
    if name.startswith("zoo:"):
        from robustlab import zoo

        return str(zoo.recipe(name.removeprefix("zoo:"))["dataset"])
    return RECIPES[name].dataset


def get(name: str, workdir: Path = common.DEFAULT_WORKDIR, data_dir: str | None = None) -> tuple[nn.Module, ModelCard]:
    """The model ``name`` in eval mode: ``zoo:NAME`` from robustlab's zoo as shipped; else read back
    from its safetensors file (trained first if it is not cached)."""
    if name.startswith("zoo:"):
        from robustlab import zoo

        return zoo.load(name.removeprefix("zoo:")), zoo.card(name.removeprefix("zoo:"))
    recipe = RECIPES[name]
    stem = workdir / name
    if not stem.with_name(stem.name + ".safetensors").exists():
        shape = (1, 28, 28) if recipe.dataset == "mnist" else (3, 32, 32)
        config = TrainConfig(epochs=recipe.epochs, batch_size=128, optimizer=recipe.optimizer, lr=recipe.lr,
                             momentum=0.9, weight_decay=5e-4 if recipe.optimizer == "sgd" else 0.0,
                             schedule="cosine", seed=0, method=recipe.method, method_options=dict(recipe.options),
                             threat=recipe.threat, eps_warmup_epochs=recipe.eps_warmup_epochs,
                             robust_eval_samples=0)
        data = load_dataset(recipe.dataset, split="train", data_dir=data_dir, limit=recipe.train_images, seed=0)
        test = load_dataset(recipe.dataset, split="test", data_dir=data_dir, limit=1000, seed=1)
        torch.manual_seed(0)
        model = build_model(recipe.arch, input_shape=shape, num_classes=10)
        common.log(f"[zoo] training {name} ({recipe.method}, {recipe.epochs} epochs on {recipe.train_images} images)")
        start = time.perf_counter()
        train(model, data.x, data.y, config=config)
        seconds = time.perf_counter() - start
        model.eval()
        clean = float((common.predict(model, test.x) == test.y).float().mean())
        common.log(f"[zoo] {name}: {seconds:.0f} s, clean accuracy {clean:.3f} (1000 test images)")
        card = ModelCard(architecture=recipe.arch, arguments={"input_shape": list(shape), "num_classes": 10},
                         dataset=recipe.dataset,
                         training={"method": recipe.method, "config": config.to_dict(), "seconds": round(seconds, 1),
                                   "train_images": recipe.train_images},
                         metrics={"clean_accuracy_1000": clean}, extra={"made_by": "benchmarks/zoo_models.py"})
        workdir.mkdir(parents=True, exist_ok=True)
        save_model(model, stem, card)
    model, card = load_model(stem)
    model.eval()
    return model, card


if __name__ == "__main__":
    torch.set_num_threads(1)
    for model_name in sys.argv[1:] or list(RECIPES):
        get(model_name)
