"""The seed's adversarial-training methods side by side on MNIST (L∞ eps = 0.3) at CPU scale.

One architecture, one data subset, one optimizer and the same number of epochs for every method,
each trained with :func:`robustlab.training.train`:

- natural training;
- Madry et al.'s PGD training with 5, 10 and 40 steps, and YOPO-5-10 (Zhang et al., NeurIPS
  2019): YOPO's Table 1 (MNIST; clean, PGD-40 and CW accuracy) is the one MNIST table of these
  papers in the seed, so these four rows print the paper's numbers beside ours;
- TRADES (Zhang et al., ICML 2019, beta 6) and MMA (Ding et al., ICLR 2020, d_max 0.45): MMA's
  Table 1 compares them, with PGD training, by clean accuracy, AvgAcc and AvgRobAcc over an eps
  grid, on CIFAR-10 only;
- bilateral adversarial training (Wang and Zhang, ICCV 2019): R-MC-LA (one step from a random
  start towards the most confusing class, adversarial label smoothing) against plain R-FGSM, on
  CIFAR-10 only in the paper.

Every model is evaluated on the same test images: clean accuracy; PGD-40 (40 steps of 0.01, random
start) and CW (the same on the C&W margin loss), as in YOPO's Table 1; PGD-40 at each eps of a
grid (step ``2.5 eps / 40``) for MMA's AvgRobAcc (mean over the grid) and AvgAcc (mean of clean
and the grid); and the ``standard`` suite (APGD-CE, APGD-T, FAB-T, Square; worst case) on the
first images, to tell real robustness from gradient masking. An image counts as robust only if it
is also classified correctly clean. Training time is recorded for each method (the YOPO paper's
claim is about time to robustness).

The CIFAR-10 numbers of the TRADES, MMA and bilateral papers are quoted in the notes, never set
beside MNIST numbers.

``training-mnist-zoo`` evaluates the zoo's MNIST models the same way (:data:`ZOO_MODELS`: each
trained to convergence with its own recipe, so their budgets differ and the table states each
one's training time): the shipped weights by default, rebuilt from the recipes with
``--retrain``. A zoo model not trained yet is listed as such, not evaluated.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.formatting import percent
from robustlab.reproduce.madry import clean_accuracy, robust_correct
from robustlab.reproduce.registry import ReproOptions, register
from robustlab.threat import Linf

logger = logging.getLogger(__name__)


class Method(NamedTuple):
    """A row: the registered training method, its options, and the paper's (clean, PGD-40, CW)
    accuracy where the seed has an MNIST number for it."""

    method: str
    options: dict[str, Any]
    paper: tuple[float, float, float] | None
    source: str


#: The rows, in order. PGD-5 and PGD-10 take a step of 2.5 eps / steps (our choice; the YOPO paper's
#: step for them is not in the seed); PGD-40 takes Madry et al.'s 0.01.
METHODS: dict[str, Method] = {
    "natural": Method("natural", {}, None, "-"),
    "PGD-5": Method("pgd", {"steps": 5, "step_size": 0.15}, (0.9943, 0.4239, 0.7704), "YOPO Table 1"),
    "PGD-10": Method("pgd", {"steps": 10, "step_size": 0.075}, (0.9953, 0.7700, 0.8200), "YOPO Table 1"),
    "PGD-40": Method("pgd", {"preset": "mnist"}, (0.9949, 0.9656, 0.9352), "YOPO Table 1"),
    "YOPO-5-10": Method("yopo", {"preset": "mnist"}, (0.9946, 0.9627, 0.9356), "YOPO Table 1"),
    "TRADES": Method("trades", {"preset": "mnist", "beta": 6.0}, None, "CIFAR-10 only (MMA Table 1)"),
    "MMA": Method("mma", {"preset": "mnist"}, None, "CIFAR-10 only (MMA Table 1)"),
    "R-FGSM": Method("bilateral", {"attack": "r-fgsm", "labels": "none"}, None, "CIFAR-10 only"),
    "R-MC-LA": Method("bilateral", {"attack": "r-mc", "labels": "la"}, None, "CIFAR-10 only (Table 6)"),
}

#: CIFAR-10 numbers from the seed, quoted in the notes (percent). MMA Table 1 (eps in /255):
#: clean, AvgAcc, AvgRobAcc, robust accuracy at 8/255; bilateral Table 6 (eps_x = 8): clean, CE20, CW20.
PAPER_CIFAR = {
    "PGD-8": (85.14, 27.27, 20.03, 46.47),
    "TRADES": (84.92, 30.46, 23.65, 52.92),
    "MMA-32": (84.36, 29.39, 22.51, 47.18),
    "R-MC-LA": (90.8, 54.6, 53.7),
    "Madry*": (88.0, 47.6, 48.6),
}


@dataclass(frozen=True)
class Scale:
    """Every size knob. Training: ``epochs`` over ``train_samples`` images for every method (eps
    ramped over ``eps_warmup_epochs``, except for MMA, which picks each example's eps itself),
    ``optimizer`` / ``lr`` / ``batch_size``. Evaluation:
    ``images`` test images, ``attack_steps`` steps of ``step_size`` for PGD-40 and CW, the grid
    ``eps_grid`` for AvgRobAcc, the ``standard`` suite on the first ``suite_images`` (0: skip),
    attacks on ``chunk`` images at a time. ``methods``: the rows to run (tests run a subset)."""

    dataset: str = "mnist"
    model: str = "lenet"
    model_args: dict = field(default_factory=dict)
    eps: float = 0.3
    train_samples: int | None = 20000
    epochs: int = 3
    eps_warmup_epochs: float = 1.0
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    images: int = 500
    attack_steps: int = 40
    step_size: float = 0.01
    eps_grid: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    suite_images: int = 100
    chunk: int = 500
    methods: tuple[str, ...] = tuple(METHODS)


#: LeNet-5, 3 epochs on 20,000 images (as Madry's CPU scale), Adam 1e-3, 500 test images, the suite
#: on 100. About 40 minutes on 2 cores, most of it PGD-40, TRADES and MMA training.
CPU_SCALE = Scale()

#: The papers' MNIST setting as far as one run can share it: Madry et al.'s CNN, all 60,000 images,
#: 84 epochs (100,000 iterations of batch 50), Adam 1e-4, no warm-up, the 10,000 test images. GPU.
FULL_SCALE = Scale(model="madry-cnn", train_samples=None, epochs=84, eps_warmup_epochs=0.0, batch_size=50, lr=1e-4,
                   images=10000, suite_images=1000, chunk=1000)

OVERRIDABLE = tuple(Scale.__dataclass_fields__)


def _scale(options: ReproOptions) -> Scale:
    scale = options.scale(CPU_SCALE, FULL_SCALE, OVERRIDABLE, "training-mnist")
    unknown = [m for m in scale.methods if m not in METHODS]
    if unknown:
        raise RobustlabError(f"unknown training-mnist rows {unknown}; available: {list(METHODS)}")
    return scale


def _train_config(label: str, scale: Scale, seed: int):
    from robustlab.training import TrainConfig

    row = METHODS[label]
    adversarial = row.method != "natural"
    # MMA picks each example's eps itself (up to d_max), so it takes no eps warm-up.
    warmup = scale.eps_warmup_epochs if adversarial and row.method != "mma" else 0.0
    return TrainConfig(epochs=scale.epochs, batch_size=scale.batch_size, optimizer=scale.optimizer, lr=scale.lr,
                       weight_decay=0.0, schedule="constant", seed=seed, method=row.method,
                       method_options=dict(row.options), threat={"norm": "Linf", "eps": scale.eps} if adversarial else None,
                       eps_warmup_epochs=warmup, robust_eval_samples=0)


def _get_model(label: str, scale: Scale, options: ReproOptions, train_data) -> tuple[nn.Module, dict[str, Any]]:
    """Model ``label`` trained once (all methods from the same initial weights) and cached."""
    from robustlab.models import ModelCard, build_model
    from robustlab.training import train

    config = _train_config(label, scale, options.seed)
    shape = tuple(train_data.x.shape[1:])
    key = {"dataset": scale.dataset, "model": scale.model, "model_args": scale.model_args,
           "train_samples": len(train_data.y), "config": config.to_dict()}

    def train_model() -> tuple[nn.Module, ModelCard]:
        model = build_model(scale.model, input_shape=shape, num_classes=10, seed=options.seed, **scale.model_args)
        logger.info("training %s (%s, %d epochs)", label, config.method, config.epochs)
        start = time.perf_counter()
        history = train(model, train_data.x, train_data.y, config=config, progress=options.progress,
                        device=options.device).history
        metrics = {"train_seconds": round(time.perf_counter() - start, 1),
                   "final_train_loss": history[-1]["train_loss"]}
        return model, ModelCard(architecture=scale.model, arguments={"input_shape": list(shape), "num_classes": 10,
                                                                     **scale.model_args},
                                dataset=scale.dataset, metrics=metrics,
                                training={"method": config.method, "config": config.to_dict(),
                                          "samples": len(train_data.y)})

    model, card, path, cached = options.trained_or_cached(f"training-{label.lower()}", key, train_model)
    return model, {"cache": str(path), "cached": cached, **card.metrics}


def _evaluate(model: nn.Module, x: Tensor, y: Tensor, scale: Scale, seed: int) -> dict[str, Any]:
    from robustlab.attacks import PGD
    from robustlab.evaluation import build_suite, evaluate
    from robustlab.settings import RunSettings

    def flags(attack, eps: float, row_seed: int) -> Tensor:
        return robust_correct(model, attack, x, y, threat=Linf(eps), targets=None, seed=row_seed, chunk=scale.chunk)

    def accuracy(attack, eps: float, row_seed: int) -> float:
        return float(flags(attack, eps, row_seed).float().mean())

    steps = scale.attack_steps
    pgd40 = flags(PGD(steps=steps, step_size=scale.step_size), scale.eps, seed)
    result: dict[str, Any] = {
        "pgd40": float(pgd40.float().mean()),
        "cw": accuracy(PGD(steps=steps, step_size=scale.step_size, loss="margin"), scale.eps, seed + 1),
        "grid": {str(eps): accuracy(PGD(steps=steps, step_size=2.5 * eps / steps), eps, seed + 2 + i)
                 for i, eps in enumerate(scale.eps_grid)},
        "suite": None,
    }
    if scale.suite_images:
        n = min(scale.suite_images, len(y))
        threat = Linf(scale.eps)
        evaluation = evaluate(model, x[:n], y[:n], threat=threat, attacks=build_suite("standard", threat, 10),
                              cascade=True, settings=RunSettings(seed=seed, batch_size=scale.chunk))
        metrics = evaluation.metrics
        result["suite"] = {"images": n, "robust": metrics["robust_accuracy"]["value"],
                           "pgd40_same_images": float(pgd40[:n].float().mean()), "broken_by": metrics["broken_by"]}
    return result


@register("training-mnist", "The seed's adversarial-training methods on MNIST at eps 0.3: natural, PGD-5/10/40 and "
          "YOPO-5-10 (YOPO Table 1 beside the paper), TRADES and MMA (AvgAcc / AvgRobAcc over an eps grid), "
          "bilateral R-MC-LA vs R-FGSM; clean, PGD-40, CW, the standard suite and training time",
          "CPU: LeNet, 9 methods x 3 epochs on 20k images, 500 test images, the suite on 100; ~40 min on 2 "
          "cores (less with cached models); --full: Madry's CNN, 84 epochs on 60k images, GPU, hours")
def training_table(options: ReproOptions) -> tuple[dict, str]:
    from robustlab.data import load_dataset

    scale = _scale(options)
    train_data = load_dataset(scale.dataset, split="train", data_dir=options.data_dir, limit=scale.train_samples,
                              seed=options.seed)
    test = load_dataset(scale.dataset, split="test", data_dir=options.data_dir, limit=scale.images,
                        seed=options.seed)
    x, y = test.x.to(options.device), test.y.to(options.device)
    rows = []
    for position, label in enumerate(scale.methods):
        model, info = _get_model(label, scale, options, train_data)
        start = time.perf_counter()
        clean = clean_accuracy(model, x, y, scale.chunk)
        ours = {"clean": clean, **_evaluate(model, x, y, scale, options.seed * 1000 + 10 * position)}
        grid = list(ours["grid"].values())
        ours["avg_rob_acc"] = sum(grid) / len(grid)
        ours["avg_acc"] = (clean + sum(grid)) / (1 + len(grid))
        row = METHODS[label]
        rows.append({"label": label, "method": row.method, "options": row.options, "model": info, "ours": ours,
                     "paper": None if row.paper is None else dict(zip(("clean", "pgd40", "cw"), row.paper)),
                     "paper_source": row.source, "eval_seconds": round(time.perf_counter() - start, 1)})
        logger.info("%s: %s", label, {k: v for k, v in ours.items() if k != "grid"})
    notes = _notes(rows, scale, options)
    md = (f"## Adversarial-training methods on {scale.dataset} (L∞ eps = {scale.eps:g}): ours, with YOPO's Table 1 "
          "where the seed has MNIST numbers\n\n"
          "Each cell: accuracy on the attack's adversarial examples (an image counts only if also classified "
          "correctly clean). Paper numbers in parentheses.\n\n" + _table(rows, scale) + "\n\n"
          + _settings_line(scale, options, len(y)) + "\n" + "\n".join(f"- {n}" for n in notes))
    record = {"scale": asdict(scale), "full": options.full, "overrides": options.overrides, "images": len(y),
              "rows": rows, "paper_cifar10": PAPER_CIFAR, "notes": notes}
    return record, md


def _pct(value: float | None) -> str:
    return percent(value, missing="—")


def _table(rows: list[dict], scale: Scale) -> str:
    grid = " / ".join(f"{e:g}" for e in scale.eps_grid)
    head = (f"| Method | training (s) | clean | PGD-40 | CW | PGD-40 at eps {grid} | AvgRobAcc | AvgAcc | "
            f"`standard` suite |\n|---|---:|---:|---:|---:|---|---:|---:|---:|\n")
    lines = []
    for r in rows:
        o, p = r["ours"], r["paper"] or {}

        def cell(key: str) -> str:
            return _pct(o[key]) + (f" ({_pct(p[key])})" if key in p else "")

        suite = "—" if o["suite"] is None else f"{_pct(o['suite']['robust'])} ({o['suite']['images']} images)"
        lines.append(f"| {r['label']} | {r['model'].get('train_seconds', '?')} | {cell('clean')} | {cell('pgd40')} | "
                     f"{cell('cw')} | {' / '.join(_pct(v) for v in o['grid'].values())} | {_pct(o['avg_rob_acc'])} | "
                     f"{_pct(o['avg_acc'])} | {suite} |")
    return head + "\n".join(lines)


def _settings_line(scale: Scale, options: ReproOptions, n_images: int) -> str:
    where = "paper scale (--full)" if options.full else "CPU scale"
    samples = "all training" if scale.train_samples is None else f"{scale.train_samples}"
    return (f"- Scale: {where}. {scale.dataset} {scale.model}, every method {scale.epochs} epoch(s) on {samples} "
            f"images, {scale.optimizer} lr {scale.lr}, batch {scale.batch_size}, eps warm-up "
            f"{scale.eps_warmup_epochs:g} epoch(s) (not for MMA), same initial weights; {n_images} test images; PGD-40 and CW: "
            f"{scale.attack_steps} steps of {scale.step_size} from a random start; training time includes the "
            f"inner maximization (one process, the machine's threads)."
            + (f"\n- Test-only overrides: {options.overrides}" if options.overrides else ""))


def _notes(rows: list[dict], scale: Scale, options: ReproOptions) -> list[str]:
    by = {r["label"]: r for r in rows}
    notes = []

    def acc(label: str, key: str) -> float | None:
        return by[label]["ours"][key] if label in by else None

    if "YOPO-5-10" in by and "PGD-40" in by:
        y, p = by["YOPO-5-10"], by["PGD-40"]
        ty, tp = y["model"].get("train_seconds"), p["model"].get("train_seconds")
        ratio = f"{ty / tp:.2f}x" if ty and tp else "n/a (cached models without times)"
        notes.append(f"YOPO-5-10 vs PGD-40 at equal epochs: PGD-40 accuracy {_pct(acc('YOPO-5-10', 'pgd40'))} vs "
                     f"{_pct(acc('PGD-40', 'pgd40'))}, training time {ratio} (the paper: same robustness, "
                     "about 1/5 of the time; see benchmarks/README.md for accuracy against wall time).")
    if "TRADES" in by and "PGD-40" in by:
        notes.append(f"TRADES vs PGD-40 training: AvgRobAcc {_pct(acc('TRADES', 'avg_rob_acc'))} vs "
                     f"{_pct(acc('PGD-40', 'avg_rob_acc'))}, clean {_pct(acc('TRADES', 'clean'))} vs "
                     f"{_pct(acc('PGD-40', 'clean'))}. CIFAR-10 (MMA Table 1): TRADES AvgRobAcc 23.65% vs PGD-8 "
                     "20.03%, clean 84.92% vs 85.14%.")
    if "MMA" in by:
        notes.append(f"MMA (d_max 0.45): AvgRobAcc {_pct(acc('MMA', 'avg_rob_acc'))}, AvgAcc {_pct(acc('MMA', 'avg_acc'))}."
                     " CIFAR-10 (MMA Table 1): MMA-32 AvgAcc 29.39% / AvgRobAcc 22.51% vs PGD-8 27.27% / 20.03%: "
                     "MMA's claim is a better average over eps, not a better accuracy at the training eps.")
    if "R-MC-LA" in by and "R-FGSM" in by:
        notes.append(f"Bilateral R-MC-LA vs R-FGSM (both one step): PGD-40 {_pct(acc('R-MC-LA', 'pgd40'))} vs "
                     f"{_pct(acc('R-FGSM', 'pgd40'))}, CW {_pct(acc('R-MC-LA', 'cw'))} vs {_pct(acc('R-FGSM', 'cw'))}. "
                     "CIFAR-10 (Table 6, eps 8): R-MC-LA CE20 54.6% / CW20 53.7% vs Madry's 47.6% / 48.6%.")
    gaps = {r["label"]: r["ours"]["suite"]["pgd40_same_images"] - r["ours"]["suite"]["robust"] for r in rows
            if r["ours"]["suite"] is not None}
    overstated = [f"{label} {100 * gap:.0f}" for label, gap in gaps.items() if gap > 0.10]
    if overstated:
        notes.append("On the suite's images, PGD-40 overstates robust accuracy by more than 10 points for these "
                     f"models (gap in points): {', '.join(overstated)}. Trust the suite column for them, and run "
                     "`robustlab evaluate --diagnose` on them.")
    if not options.full:
        notes.append(f"Why our numbers differ from YOPO's Table 1: CPU scale ({scale.model}, {scale.epochs} epochs on "
                     f"{scale.train_samples or 'all'} images against the papers' tens of epochs on 60,000; "
                     f"{scale.images} test images, about ±{100 * (0.25 / max(1, scale.images)) ** 0.5:.1f} points of "
                     "sampling error at 50%). The papers' CW attack settings are not in the seed; ours is PGD on "
                     "the margin loss with the PGD-40 budget.")
    return notes


# -- the same evaluation on the zoo's models -----------------------------------------------------------
#: The zoo's MNIST models, each with the row of :data:`METHODS` whose method it was trained with
#: (its paper numbers are shown beside it; the zoo's PGD model takes 10 steps of 0.04, the PGD-10
#: row's step count). Order: the table's.
ZOO_MODELS: dict[str, str | None] = {
    "mnist-natural": "natural", "mnist-pgd": "PGD-10", "mnist-yopo": "YOPO-5-10", "mnist-trades": "TRADES",
    "mnist-mma": "MMA", "mnist-bilateral": "R-MC-LA", "mnist-fast-fgsm": None, "mnist-fast-fgsm-overfit": None,
}


@dataclass(frozen=True)
class ZooScale:
    """``zoo``: the zoo models to evaluate (default :data:`ZOO_MODELS`); the attacks as in
    :class:`Scale`, on the first ``images`` test images. The `standard` column is the model card's
    (measured by ``robustlab zoo train`` on the first ``card images``) where the card has it on
    the same first images, else computed here on the first ``suite_images`` (0: skip). The
    ``fast`` suite runs at every eps of the grid on the first ``grid_suite_images`` (0: skip):
    PGD-40 alone overstates some models by tens of points, so AvgRobAcc is also given under it."""

    zoo: tuple[str, ...] = tuple(ZOO_MODELS)
    eps: float = 0.3
    images: int = 1000
    attack_steps: int = 40
    step_size: float = 0.01
    eps_grid: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    suite_images: int = 1000
    grid_suite_images: int = 1000
    chunk: int = 500


ZOO_OVERRIDABLE = tuple(ZooScale.__dataclass_fields__)


def _zoo_row(name: str, scale: ZooScale, options: ReproOptions, x: Tensor, y: Tensor, seed: int) -> dict[str, Any]:
    from robustlab import zoo

    label = ZOO_MODELS.get(name)
    paper = METHODS[label].paper if label else None
    row: dict[str, Any] = {"zoo": name, "label": label, "description": zoo.entry(name).description,
                           "paper": None if paper is None else dict(zip(("clean", "pgd40", "cw"), paper)),
                           "paper_source": METHODS[label].source if label else "-"}
    if name not in zoo.names() and not options.retrain:
        return {**row, "trained": False}
    model, info = options.zoo_model(name)
    card_standard = None if info["trained_here"] else info["metrics"].get("standard")
    from_card = card_standard is not None and card_standard["images"] <= len(y) and card_standard.get("first_images")
    evaluation_scale = Scale(eps=scale.eps, images=scale.images, attack_steps=scale.attack_steps,
                             step_size=scale.step_size, eps_grid=scale.eps_grid,
                             suite_images=0 if from_card else scale.suite_images, chunk=scale.chunk)
    start = time.perf_counter()
    clean = clean_accuracy(model, x, y, scale.chunk)
    ours = {"clean": clean, **_evaluate(model, x, y, evaluation_scale, seed)}
    if from_card and card_standard is not None:
        n = card_standard["images"]
        ours["suite"] = {"images": n, "robust": card_standard["robust_accuracy"], "from_card": True,
                         "pgd40_same_images": None, "broken_by": card_standard.get("broken_by")}
    grid = list(ours["grid"].values())
    ours["avg_rob_acc"] = sum(grid) / len(grid)
    ours["avg_acc"] = (clean + sum(grid)) / (1 + len(grid))
    ours["grid_fast"] = _fast_grid(model, x, y, scale, seed) if scale.grid_suite_images else None
    config = info["training"].get("config", {})
    model_info = {k: info[k] for k in ("source", "architecture", "seed", "trained_here", "cached", "sha256",
                                       "train_seconds")}
    model_info.update({"method": config.get("method"), "method_options": config.get("method_options"),
                       "epochs": config.get("epochs")})
    return {**row, "trained": True, "model": model_info, "ours": ours,
            "eval_seconds": round(time.perf_counter() - start, 1)}


def _fast_grid(model: nn.Module, x: Tensor, y: Tensor, scale: ZooScale, seed: int) -> dict[str, Any]:
    """The ``fast`` suite (worst case, cascade) at each eps of the grid on the first
    ``grid_suite_images`` images: robust accuracy per eps and their mean (AvgRobAcc)."""
    from robustlab.evaluation import build_suite, evaluate
    from robustlab.settings import RunSettings

    n = min(scale.grid_suite_images, len(y))
    robust = {}
    for i, eps in enumerate(scale.eps_grid):
        threat = Linf(eps)
        evaluation = evaluate(model, x[:n], y[:n], threat=threat, attacks=build_suite("fast", threat, 10), cascade=True,
                              settings=RunSettings(seed=seed + 100 + i, batch_size=scale.chunk))
        robust[str(eps)] = evaluation.metrics["robust_accuracy"]["value"]
    return {"images": n, "robust": robust, "avg_rob_acc": sum(robust.values()) / len(robust)}


@register("training-mnist-zoo", "The zoo's MNIST models (natural, PGD, YOPO, TRADES, MMA, bilateral, fast FGSM; each "
          "with its own recipe's budget) under YOPO Table 1's attacks (PGD-40, CW), PGD-40 and the fast suite over an "
          "eps grid (AvgRobAcc / AvgAcc) and the standard suite (from each card)",
          "CPU: the shipped zoo models, the first 1000 test images, about 2-3 min per model on one core; --retrain: "
          "rebuilt from their recipes (about 30-70 min each on one core)")
def zoo_training_table(options: ReproOptions) -> tuple[dict, str]:

    scale = options.scale(ZooScale(), ZooScale(images=10000), ZOO_OVERRIDABLE, "training-mnist-zoo",
                          image_fields=("images",))
    x, y = options.first_test_images("mnist", scale.images)
    rows = []
    for position, name in enumerate(scale.zoo):
        row = _zoo_row(name, scale, options, x, y, options.seed * 1000 + 10 * position)
        rows.append(row)
        if row["trained"]:
            logger.info("%s: %s", name, {k: v for k, v in row["ours"].items() if k != "grid"})
    notes = _zoo_notes(rows, scale)
    md = (f"## The zoo's MNIST models under YOPO Table 1's attacks (L∞ eps = {scale.eps:g})\n\n"
          "Each model trained to convergence by `robustlab zoo train` from its recipe (budgets differ: see the "
          "training column). Each cell: accuracy on the attack's adversarial examples (an image counts only if "
          "also classified correctly clean). Paper numbers (YOPO Table 1, MNIST) in parentheses where the row's "
          "method has one.\n\n" + _zoo_table(rows, scale) + "\n\n"
          + f"- Test images: the first {len(y)}; PGD-40 and CW: {scale.attack_steps} steps of {scale.step_size} from a "
          f"random start; the grid: PGD-{scale.attack_steps} with step 2.5 eps / {scale.attack_steps}, and the `fast` "
          f"suite on the first {min(scale.grid_suite_images, len(y))} images (worst case; AvgRobAcc (`fast`) is their "
          "mean); `standard`: AutoAttack's suite on the first images (from each card where it has them)."
          + ("\n- --retrain: the models were rebuilt from their recipes." if options.retrain else "")
          + (f"\n- Test-only overrides: {options.overrides}" if options.overrides else "") + "\n"
          + "\n".join(f"- {n}" for n in notes))
    record = {"scale": asdict(scale), "full": options.full, "retrain": options.retrain, "overrides": options.overrides,
              "images": len(y), "first_images": True, "rows": rows, "notes": notes}
    return record, md


def _zoo_table(rows: list[dict], scale: ZooScale) -> str:
    grid = " / ".join(f"{e:g}" for e in scale.eps_grid)
    head = (f"| zoo model | method (row) | training | clean | PGD-40 | CW | PGD-40 at eps {grid} | AvgRobAcc | AvgAcc | "
            f"`fast` at eps {grid} | AvgRobAcc (`fast`) | `standard` |\n|---|---|---|---:|---:|---:|---|---:|---:|---|---:|---:|\n")
    lines = []
    for r in rows:
        if not r["trained"]:
            lines.append(f"| {r['zoo']} | {r['label'] or '-'} | not in the zoo yet | — | — | — | — | — | — | — | — | — |")
            continue
        o, p, m = r["ours"], r["paper"] or {}, r["model"]

        def cell(key: str, o=o, p=p) -> str:
            return _pct(o[key]) + (f" ({_pct(p[key])})" if key in p else "")

        options = ", ".join(f"{k} {v}" for k, v in (m["method_options"] or {}).items())
        suite = "—" if o["suite"] is None else f"{_pct(o['suite']['robust'])} ({o['suite']['images']})"
        fast = o.get("grid_fast")
        fast_cells = ("— | —" if fast is None else
                      f"{' / '.join(_pct(v) for v in fast['robust'].values())} | {_pct(fast['avg_rob_acc'])}")
        lines.append(f"| {r['zoo']} | {m['method']}{f' ({options})' if options else ''} ({r['label'] or '-'}) | "
                     f"{m['architecture']}, {m['epochs']} epochs, {m['train_seconds']:.0f} s | {cell('clean')} | "
                     f"{cell('pgd40')} | "
                     f"{cell('cw')} | {' / '.join(_pct(v) for v in o['grid'].values())} | {_pct(o['avg_rob_acc'])} | "
                     f"{_pct(o['avg_acc'])} | {fast_cells} | {suite} |")
    return head + "\n".join(lines)


def _zoo_notes(rows: list[dict], scale: ZooScale) -> list[str]:
    trained = [r for r in rows if r["trained"]]
    missing = [r["zoo"] for r in rows if not r["trained"]]
    notes = []
    if missing:
        notes.append(f"Not in the zoo yet: {', '.join(missing)} (`robustlab zoo train NAME`, or run this with "
                     "--retrain to train them here).")
    by = {r["label"]: r for r in trained if r["label"]}
    if "YOPO-5-10" in by and "PGD-10" in by:
        yopo, pgd = by["YOPO-5-10"], by["PGD-10"]
        notes.append(f"YOPO-5-10 ({yopo['model']['epochs']} epochs, {yopo['model']['train_seconds']:.0f} s) vs PGD "
                     f"({pgd['model']['epochs']} epochs, {pgd['model']['train_seconds']:.0f} s): PGD-40 "
                     f"{_pct(yopo['ours']['pgd40'])} vs {_pct(pgd['ours']['pgd40'])}, `standard` "
                     f"{_pct(yopo['ours']['suite']['robust'] if yopo['ours']['suite'] else None)} vs "
                     f"{_pct(pgd['ours']['suite']['robust'] if pgd['ours']['suite'] else None)} (the paper: the same "
                     "robustness in about 1/5 of PGD-40's time).")
    gaps = [f"{r['zoo']} {100 * (r['ours']['pgd40'] - r['ours']['suite']['robust']):.1f}" for r in trained
            if r["ours"]["suite"] and r["ours"]["suite"]["images"] == scale.images]
    if gaps:
        notes.append("PGD-40 minus `standard` on the same images (points): " + ", ".join(gaps) + ". A large gap "
                     "means PGD-40 overstates the robustness (gradient masking, or too weak an attack).")
    fast = [r for r in trained if r["ours"].get("grid_fast")]
    if fast:
        notes.append("AvgRobAcc under PGD-40 minus under `fast` (points): " + ", ".join(
            f"{r['zoo']} {100 * (r['ours']['avg_rob_acc'] - r['ours']['grid_fast']['avg_rob_acc']):.1f}" for r in fast)
            + ". PGD-40 over the grid is MMA Table 1's protocol; the `fast` columns say how much of it survives a "
            "strong evaluation.")
    if "MMA" in by and "PGD-10" in by and by["MMA"]["ours"].get("grid_fast") and by["PGD-10"]["ours"].get("grid_fast"):
        mma, pgd = by["MMA"]["ours"]["grid_fast"], by["PGD-10"]["ours"]["grid_fast"]
        top = str(scale.eps_grid[-1])
        notes.append(f"MMA against PGD training under `fast`: at eps {top} {_pct(mma['robust'][top])} against "
                     f"{_pct(pgd['robust'][top])}, AvgRobAcc {_pct(mma['avg_rob_acc'])} against {_pct(pgd['avg_rob_acc'])} "
                     "(MMA Table 1's claim, on CIFAR-10: MMA better at large eps and on average).")
    notes.append("The paper numbers are YOPO's (Table 1; MNIST, its small CNN, tens of epochs on 60,000 images, "
                 "10,000 test images); ours: the zoo's models, each with its recipe's architecture and budget, the first "
                 f"{scale.images} test images (about ±{100 * (0.1 * 0.9 / max(1, scale.images)) ** 0.5:.1f} points of "
                 "sampling error at 90%). The papers' CW settings are not in the seed: ours is PGD on the margin loss "
                 "with the PGD-40 budget.")
    return notes

