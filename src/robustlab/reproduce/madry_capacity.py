"""Madry et al.'s capacity study (ICLR 2018, Sec. 5 and Figure 4; MNIST, L∞ eps = 0.3).

Their CNN (``madry-cnn``) at several capacities (``width`` w: 2w and 4w filters, 64w hidden
units; w = 16 is the network of the rest of the paper), each trained three ways: on natural
examples, on FGSM examples and on PGD examples (only on the adversarial examples, as their
training code does). Per model: accuracy on the first test images clean, under FGSM and under
PGD-40 (step 0.01, random start; an image counts only if it is also classified correctly clean),
and the value of the saddle-point problem: the cross-entropy on the training adversary's
examples (clean ones for natural training) over the first training images, beside the
cross-entropy at PGD points for every model.

The seed lists the study's findings (capacity alone helps; FGSM training does not bring
robustness at large eps; weak models may fail to learn anything non-trivial under PGD; the
saddle-point value falls as capacity grows; more capacity and stronger adversaries reduce
transferability); the page sets each beside what our models show. The figure's numbers are not
in the seed, so no cell has a paper value. Transferability is not measured here.

Models are trained once and cached (``ReproOptions.trained_or_cached``): a killed run resumes
model by model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.data import load_dataset
from robustlab.formatting import percent
from robustlab.reproduce.madry import PAPER, clean_accuracy, robust_correct
from robustlab.reproduce.registry import ReproOptions, register
from robustlab.threat import Linf

logger = logging.getLogger(__name__)

#: The study's findings as the seed lists them (../shared/seed, "Network Capacity and Adversarial Robustness").
FINDINGS = {
    "capacity": "Capacity alone helps.",
    "fgsm": "FGSM adversaries don't increase robustness (for large eps).",
    "weak": "Weak models may fail to learn non-trivial classifiers.",
    "saddle": "The value of the saddle point problem decreases as we increase the capacity.",
    "transfer": "More capacity and stronger adversaries decrease transferability.",
}
METHODS = ("natural", "fgsm", "pgd")


@dataclass(frozen=True)
class Scale:
    """Every size knob. Training: ``epochs`` on ``train_samples`` images (``None``: all), batch
    ``batch_size``, ``optimizer`` with ``lr`` (constant); PGD training with ``train_steps`` steps of
    ``train_step_size`` from a random start; FGSM training one step of eps; the adversarial
    trainings ramp eps up over ``eps_warmup_epochs``. Evaluation: the first
    ``images`` test images, PGD with ``attack_steps`` steps of ``attack_step_size``; the saddle-point
    value on the first ``loss_images`` training images; attacks on ``chunk`` images at a time."""

    dataset: str = "mnist"
    model: str = "madry-cnn"
    widths: tuple[int, ...] = (1, 2, 4, 8)
    eps: float = 0.3
    train_samples: int | None = 10000
    epochs: int = 6
    batch_size: int = 50
    optimizer: str = "adam"
    lr: float = 1e-3
    eps_warmup_epochs: float = 2.0
    train_steps: int = 10
    train_step_size: float = 0.04
    images: int = 1000
    attack_steps: int = 40
    attack_step_size: float = 0.01
    loss_images: int = 1000
    chunk: int = 500


#: Default: widths 1-8 (w = 16, the paper's full network, costs as much as the four others
#: together), 6 epochs on 10,000 training images, PGD training with 10 steps of 0.04 (the zoo's
#: mnist-pgd setting) instead of 40 of 0.01: about 20 minutes of one idle core for the twelve models.
#: eps is ramped up over the first 2 epochs, which the paper does not do: without it, 1,200
#: iterations at full eps left PGD training of w = 8 (and of w = 1, 2) at a constant classifier
#: (12.6% clean), a stall the paper's 100,000 iterations outlast.
CPU_SCALE = Scale()
#: The paper's settings (``MadryLab/mnist_challenge:config.json``): widths 1-16, Adam 1e-4, batch
#: 50, 100,000 iterations (84 epochs of 60,000 images), PGD-40 of 0.01; 10,000 test images. GPU.
FULL_SCALE = Scale(widths=(1, 2, 4, 8, 16), train_samples=None, epochs=84, lr=1e-4, eps_warmup_epochs=0.0, train_steps=40,
                   train_step_size=0.01, images=10000, loss_images=10000)
OVERRIDABLE = tuple(Scale.__dataclass_fields__)


def _train_config(method: str, scale: Scale, seed: int):
    from robustlab.training import TrainConfig

    options: dict[str, Any] = {"natural": {}, "fgsm": {"clean_weight": 0.0},
                               "pgd": {"steps": scale.train_steps, "step_size": scale.train_step_size}}[method]
    return TrainConfig(epochs=scale.epochs, batch_size=scale.batch_size, optimizer=scale.optimizer, lr=scale.lr,
                       weight_decay=0.0, schedule="constant", seed=seed, method=method, method_options=options,
                       threat=None if method == "natural" else {"norm": "Linf", "eps": scale.eps},
                       eps_warmup_epochs=0.0 if method == "natural" else scale.eps_warmup_epochs, robust_eval_samples=0)


def _model(method: str, width: int, scale: Scale, options: ReproOptions, train_x: Tensor, train_y: Tensor,
           ) -> tuple[nn.Module, dict[str, Any]]:
    """The model trained with ``method`` at capacity ``width``: from the cache, else trained."""
    from robustlab.models import ModelCard, build_model
    from robustlab.training import train

    config = _train_config(method, scale, options.seed)
    shape = tuple(train_x.shape[1:])
    arguments = {"input_shape": list(shape), "num_classes": 10, "width": width}
    key = {"dataset": scale.dataset, "model": scale.model, "arguments": arguments,
           "train_samples": scale.train_samples, "config": config.to_dict()}

    def train_model() -> tuple[nn.Module, ModelCard]:
        model = build_model(scale.model, input_shape=shape, num_classes=10, width=width, seed=options.seed)
        logger.info("training %s width %d (%s, %d epochs)", scale.model, width, method, config.epochs)
        start = time.perf_counter()
        train(model, train_x, train_y, config=config, progress=options.progress, device=options.device)
        seconds = round(time.perf_counter() - start, 1)
        return model, ModelCard(architecture=scale.model, arguments=arguments, dataset=scale.dataset,
                                training={"method": method, "config": config.to_dict(), "samples": len(train_y)},
                                metrics={"train_seconds": seconds})

    model, card, path, cached = options.trained_or_cached(f"capacity-{method}-w{width}", key, train_model)
    return model, {"source": str(path), "cached": cached, "train_seconds": card.metrics.get("train_seconds"),
                   "parameters": sum(p.numel() for p in model.parameters())}


def _saddle_loss(model: nn.Module, attack, x: Tensor, y: Tensor, threat: Linf, seed: int, chunk: int) -> float:
    """Mean cross-entropy at ``attack``'s points (clean points when ``attack`` is None)."""
    losses = []
    generator = torch.Generator(device=x.device).manual_seed(seed)
    for i in range(0, len(y), chunk):
        xs, ys = x[i:i + chunk], y[i:i + chunk]
        if attack is not None:
            xs = attack(model, xs, ys, threat=threat, generator=generator).x_adv
        with torch.no_grad():
            losses.append(nn.functional.cross_entropy(model(xs), ys, reduction="none"))
    return float(torch.cat(losses).mean())


def _row(method: str, width: int, model: nn.Module, info: dict[str, Any], scale: Scale, test: tuple[Tensor, Tensor],
         train_points: tuple[Tensor, Tensor], seed: int) -> dict[str, Any]:
    from robustlab.attacks import FGSM, PGD

    threat = Linf(scale.eps)
    x, y = test
    fgsm, pgd = FGSM(), PGD(steps=scale.attack_steps, step_size=scale.attack_step_size)
    accuracy = {
        "clean": clean_accuracy(model, x, y, scale.chunk),
        "fgsm": float(robust_correct(model, fgsm, x, y, threat=threat, targets=None, seed=seed,
                                     chunk=scale.chunk).float().mean()),
        "pgd": float(robust_correct(model, pgd, x, y, threat=threat, targets=None, seed=seed + 1,
                                    chunk=scale.chunk).float().mean()),
    }
    training_attack = {"natural": None, "fgsm": fgsm,
                       "pgd": PGD(steps=scale.train_steps, step_size=scale.train_step_size)}[method]
    tx, ty = train_points
    loss = {"training_adversary": _saddle_loss(model, training_attack, tx, ty, threat, seed + 2, scale.chunk),
            "pgd": _saddle_loss(model, pgd, tx, ty, threat, seed + 3, scale.chunk)}
    return {"method": method, "width": width, **info, "accuracy": accuracy, "loss": loss}


def _trend(values: list[float]) -> str:
    if all(b > a for a, b in pairwise(values)):
        return "rises with every doubling"
    if all(b < a for a, b in pairwise(values)):
        return "falls with every doubling"
    return "is not monotone in the width"


def _series(rows: list[dict], method: str, pick) -> list[float]:
    return [pick(r) for r in rows if r["method"] == method]


def _findings(rows: list[dict], scale: Scale) -> dict[str, str]:
    widths = ", ".join(f"w = {w}" for w in scale.widths)

    def listing(values: list[float], fmt=percent) -> str:
        return " / ".join(fmt(v) for v in values)

    natural_pgd = _series(rows, "natural", lambda r: r["accuracy"]["pgd"])
    natural_fgsm = _series(rows, "natural", lambda r: r["accuracy"]["fgsm"])
    fgsm_fgsm = _series(rows, "fgsm", lambda r: r["accuracy"]["fgsm"])
    fgsm_pgd = _series(rows, "fgsm", lambda r: r["accuracy"]["pgd"])
    pgd_clean = _series(rows, "pgd", lambda r: r["accuracy"]["clean"])
    pgd_pgd = _series(rows, "pgd", lambda r: r["accuracy"]["pgd"])
    saddle = _series(rows, "pgd", lambda r: r["loss"]["training_adversary"])
    loss = lambda v: f"{v:.3f}"  # noqa: E731
    return {
        "capacity": (f"Natural training ({widths}): FGSM accuracy {listing(natural_fgsm)}, PGD-{scale.attack_steps} "
                     f"{listing(natural_pgd)} (FGSM accuracy {_trend(natural_fgsm)})."),
        "fgsm": (f"FGSM training: FGSM accuracy {listing(fgsm_fgsm)}, PGD-{scale.attack_steps} {listing(fgsm_pgd)}: "
                 f"the gap between the attack it was trained on and PGD is "
                 f"{listing([a - b for a, b in zip(fgsm_fgsm, fgsm_pgd)], lambda v: f'{100 * v:.1f}')} points."),
        "weak": (f"PGD training: clean accuracy {listing(pgd_clean)}, PGD-{scale.attack_steps} {listing(pgd_pgd)} "
                 f"(clean accuracy {_trend(pgd_clean)})."),
        "saddle": (f"PGD training: cross-entropy at the training adversary's points {listing(saddle, loss)} "
                   f"({_trend(saddle)})."),
        "transfer": "Not measured here.",
    }


def _table(rows: list[dict], scale: Scale) -> str:
    head = ("| training | width w | parameters | clean | FGSM | PGD-" f"{scale.attack_steps}"
            " | CE at the training adversary | CE at PGD points | training time |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
    lines = [f"| {r['method']} | {r['width']} | {r['parameters']:,} | {percent(r['accuracy']['clean'])} | "
             f"{percent(r['accuracy']['fgsm'])} | {percent(r['accuracy']['pgd'])} | "
             f"{r['loss']['training_adversary']:.3f} | {r['loss']['pgd']:.3f} | "
             f"{r['train_seconds']} s{' (cached)' if r['cached'] else ''} |" for r in rows]
    return head + "\n".join(lines)


@register("madry-capacity", "Madry et al. Figure 4 (MNIST): natural, FGSM and PGD training of their CNN at "
          "growing capacity; clean, FGSM and PGD accuracy and the saddle-point value per width, beside the "
          "study's findings",
          "CPU: widths 1-8, 6 epochs on 10,000 images, PGD training 10 steps of 0.04: twelve models, about 20 "
          "minutes of one idle core (cached), then minutes of attacks on the first 1000 test images; --full: "
          "widths 1-16, the paper's schedule, GPU, hours")
def capacity(options: ReproOptions) -> tuple[dict, str]:
    scale: Scale = options.scale(CPU_SCALE, FULL_SCALE, OVERRIDABLE, "madry-capacity")
    train_data = load_dataset(scale.dataset, split="train", data_dir=options.data_dir, limit=scale.train_samples,
                              seed=options.seed)
    train_x, train_y = train_data.x.to(options.device), train_data.y.to(options.device)
    test = options.first_test_images(scale.dataset, scale.images)
    train_points = (train_x[:scale.loss_images], train_y[:scale.loss_images])
    rows = []
    for position, (method, width) in enumerate((m, w) for m in METHODS for w in scale.widths):
        model, info = _model(method, width, scale, options, train_x, train_y)
        rows.append(_row(method, width, model, info, scale, test, train_points, options.seed * 1000 + 10 * position))
        logger.info("%s w=%d: %s", method, width, rows[-1]["accuracy"])
    findings = _findings(rows, scale)
    where = "paper scale (--full)" if options.full else "CPU scale"
    samples = "all" if scale.train_samples is None else f"{scale.train_samples:,}"
    md = (f"## Madry et al. Figure 4 (MNIST, L∞ eps = {scale.eps:g}): network capacity and adversarial robustness\n\n"
          f"{scale.model} at widths {', '.join(map(str, scale.widths))} (2w and 4w filters, 64w hidden units), trained "
          "on natural, FGSM and PGD examples. Accuracies on the first "
          f"{len(test[1])} test images (an image counts only if it is also classified correctly clean); "
          f"cross-entropies on the first {len(train_points[1])} training images.\n\n"
          + _table(rows, scale) + "\n\n### The study's findings (the seed) and what these models show\n\n"
          + "\n".join(f"- *{FINDINGS[k]}* {findings[k]}" for k in FINDINGS)
          + f"\n\n- Scale: {where}. {scale.epochs} epochs on {samples} training images, batch {scale.batch_size}, "
          f"{scale.optimizer} lr {scale.lr:g} (constant); eps ramped up over the first {scale.eps_warmup_epochs:g} "
          f"epoch(s) of the adversarial trainings; FGSM training: one step of eps on the adversarial examples "
          f"only; PGD training: {scale.train_steps} steps of {scale.train_step_size:g} from a random start; "
          f"attacks: FGSM and PGD-{scale.attack_steps} of {scale.attack_step_size:g} from a random start."
          + (f"\n- Test-only overrides: {options.overrides}" if options.overrides else ""))
    record = {"paper": PAPER, "figure": 4, "scale": asdict(scale), "full": options.full, "overrides": options.overrides,
              "images": len(test[1]), "first_images": True, "findings": FINDINGS, "ours": findings, "rows": rows}
    return record, md
