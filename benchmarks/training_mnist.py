"""Adversarial training on MNIST (issue 5): the loop's overhead, peak memory, time to robustness.

Four sub-benchmarks, chosen with ``--parts`` (default: the first three):

``overhead``  robustlab's ``train()`` against a minimal hand-written PyTorch loop doing the same
              work: same initial weights, same data order (the permutation robustlab draws from
              its seed), same optimizer and per-iteration schedule, same PGD random starts (the
              method's generator) and steps; no validation and no checkpoints in either. Natural
              and PGD training. Reported: seconds per epoch of each, their ratio (target <= 1.05),
              and the largest weight difference after training (0 proves the work is identical).
``memory``    peak resident memory of PGD training against natural training at the same batch
              size (target <= 1.5x). Each configuration runs in a fresh subprocess (so the high-water
              marks of ``getrusage`` do not mix); reported: the peak and its growth over the
              process's peak after loading the data and building the model.
``robustness`` time to robustness at eps 0.3, one architecture for every method: wall time of the
              training (per-epoch evaluation excluded), epochs, clean accuracy, PGD-40 accuracy
              (step 0.01, random start) on a test subset and the ``standard`` suite (AutoAttack's
              attacks, ``evaluate(cascade=True)``) on a smaller one. Targets: the best method
              >= 90% under PGD-40 in <= 20 minutes on 2 cores; YOPO-5-10 reaches PGD-40 training's
              final PGD-40 accuracy in <= 0.25x the time PGD-40 training took to get there.
``cost``      seconds per epoch of each method's training as configured in the race, timed on a
              few batches, and its ratio to PGD-40 training's (the per-epoch side of YOPO's claim).

Usage (full runs, about 1.5 hours on an idle 2-core machine; see benchmarks/README.md):

    ROBUSTLAB_DATA=/work/shared/data python benchmarks/training_mnist.py --parts overhead,memory
    python benchmarks/training_mnist.py --parts robustness --methods pgd,trades,fast-fgsm,free,mma,yopo \\
        --train-images 60000 --epochs 10 --time-limit 1200 --test-images 1000 --suite-images 100

Prints Markdown on stdout (progress on stderr) and writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from robustlab.attacks import PGD
from robustlab.data import load_dataset
from robustlab.models import ModelCard, build_model, load_model, save_model
from robustlab.settings import RunSettings
from robustlab.threat import Linf
from robustlab.training import METHODS, TrainConfig, train
from robustlab.training.methods import method_generator
from robustlab.training.optim import lr_factor

EPS = 0.3
TARGET_OVERHEAD = 1.05
TARGET_MEMORY = 1.5
TARGET_ROBUST_ACCURACY = 0.90
TARGET_SECONDS = 20 * 60
TARGET_YOPO_TIME_RATIO = 0.25

#: Per-method settings for the time-to-robustness race at MNIST eps 0.3 (each from its paper's MNIST
#: configuration through the method's preset, where it has one). Every method gets the same
#: optimizer (``--optimizer``/``--lr``) and schedule; Adam is invariant to the gradient's scale, so
#: YOPO's division of the learning rate by m (which compensates its summed gradient under SGD) is
#: applied only with SGD. A name that is not a training method names a variant of the method given
#: by ``"method"``.
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "natural": {},
    "pgd": {"method_options": {"preset": "mnist"}},  # Madry et al.: 40 steps of 0.01
    # PGD training with a quarter of the steps, four times as long (the same path length, 0.4):
    # four times the epochs in the same time.
    "pgd-10": {"method": "pgd", "method_options": {"steps": 10, "step_size": 0.04}},
    "trades": {"method_options": {"preset": "mnist"}},  # Zhang et al.: 40 steps of 0.01, beta 6
    "fast-fgsm": {"method_options": {}, "bn_mode": "train"},  # Wong et al.: alpha = 1.25 eps
    "free": {"method_options": {"replays": 8}},  # Shafahi et al.: m = 8
    "mma": {"method_options": {"preset": "mnist"}},  # Ding et al.: d_max 0.45, 40 steps
    "yopo": {"method_options": {"preset": "mnist"}},  # Zhang et al.: YOPO-5-10, sigma 0.01
}


def _threads(n: int) -> None:
    torch.set_num_threads(n)


def _mnist(split: str, limit: int | None, data_dir: str | None, seed: int) -> tuple[Tensor, Tensor]:
    data = load_dataset("mnist", split=split, data_dir=data_dir, limit=limit, seed=seed)
    return data.x, data.y


# -- (a) loop overhead --------------------------------------------------------------------------------
def _seeds(seed: int) -> tuple[int, int, int]:
    """The (shuffle, global RNG, method) seeds robustlab's loop derives from ``seed``."""
    return tuple(torch.randint(0, 2**62, (3,), generator=torch.Generator().manual_seed(seed)).tolist())


def hand_written_loop(model: nn.Module, x_all: Tensor, y_all: Tensor, config: TrainConfig) -> None:
    """The minimal PyTorch loop: what a user would write for ``config`` (natural or PGD, L∞)."""
    steps_per_epoch = math.ceil(len(x_all) / config.batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, config.epochs * steps_per_epoch))
    shuffle = torch.Generator().manual_seed(_seeds(config.seed)[0])
    starts = method_generator(config)
    adversarial = config.method == "pgd"
    if adversarial:
        steps, step_size = config.method_options["steps"], config.method_options["step_size"]
    for _ in range(config.epochs):
        order = torch.randperm(len(x_all), generator=shuffle)
        for first in range(0, len(x_all), config.batch_size):
            index = order[first:first + config.batch_size]
            x, y = x_all[index], y_all[index]
            if adversarial:
                model.eval()
                noise = torch.rand(x.shape, generator=starts)
                x_adv = torch.minimum(torch.maximum(x + (2 * noise - 1) * EPS, x - EPS), x + EPS).clamp(0, 1)
                for _ in range(steps):
                    x_adv.requires_grad_(True)
                    loss = F.cross_entropy(model(x_adv), y, reduction="sum")
                    (grad,) = torch.autograd.grad(loss, x_adv)
                    x_adv = x_adv.detach() + step_size * grad.sign()
                    x_adv = torch.minimum(torch.maximum(x_adv, x - EPS), x + EPS).clamp(0, 1)
                x = x_adv
            model.train()
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            scheduler.step()
    model.eval()


def _overhead_config(method: str, args) -> TrainConfig:
    adversarial = method == "pgd"
    return TrainConfig(epochs=args.overhead_epochs, batch_size=args.batch_size, optimizer="sgd", lr=0.05,
                       momentum=0.9, weight_decay=5e-4, schedule="cosine", seed=args.seed, method=method,
                       method_options={"steps": args.pgd_train_steps, "step_size": 0.01} if adversarial else {},
                       threat={"norm": "Linf", "eps": EPS} if adversarial else None, robust_eval_samples=0)


def run_overhead(args) -> dict[str, Any]:
    x, y = _mnist("train", args.overhead_images, args.data_dir, args.seed)
    initial = build_model(args.arch, input_shape=(1, 28, 28), num_classes=10, seed=args.seed)
    results = {}
    for method in ("natural", "pgd"):
        config = _overhead_config(method, args)
        times: dict[str, list[float]] = {"robustlab": [], "hand": []}
        loads: dict[str, list[float | None]] = {"robustlab": [], "hand": []}
        models: dict[str, nn.Module] = {}
        # Untimed warm-up of both sides (first-call costs: allocator, kernels, imports).
        warm = replace(config, epochs=1)
        hand_written_loop(copy.deepcopy(initial), x[:2 * args.batch_size], y[:2 * args.batch_size], warm)
        train(copy.deepcopy(initial), x[:2 * args.batch_size], y[:2 * args.batch_size], config=warm)
        for repeat in range(args.repeats):
            # Alternate the order so that drift in machine load hits both sides alike.
            for side in (("hand", "robustlab") if repeat % 2 == 0 else ("robustlab", "hand")):
                model = copy.deepcopy(initial)
                run = (functools.partial(hand_written_loop, model, x, y, config) if side == "hand"
                       else functools.partial(train, model, x, y, config=config))
                seconds, load, _ = common.quiet_timing(run, wait=args.wait_idle, retries=args.retries)
                times[side].append(seconds / config.epochs)
                loads[side].append(load)
                models[side] = model
                common.log(f"[overhead] {method} {side}: {seconds / config.epochs:.2f} s/epoch (other load {load})")
        difference = max(float((a - b).abs().max()) for a, b in zip(models["robustlab"].state_dict().values(),
                                                                    models["hand"].state_dict().values()))
        median = {side: statistics.median(t) for side, t in times.items()}
        results[method] = {"seconds_per_epoch": times, "median_seconds_per_epoch": median,
                           "ratio": median["robustlab"] / median["hand"], "other_load": loads,
                           "max_weight_difference": difference, "config": config.to_dict()}
    return {"images": len(y), "epochs": args.overhead_epochs, "repeats": args.repeats, "methods": results}


def overhead_markdown(result: dict[str, Any]) -> str:
    lines = [(f"### Loop overhead ({result['images']} images, {result['epochs']} epoch(s) per run, "
              f"{result['repeats']} runs each, medians)\n"),
             "| Training | robustlab s/epoch | hand-written s/epoch | ratio | target | max weight difference |",
             "|---|---:|---:|---:|---:|---:|"]
    for method, r in result["methods"].items():
        m = r["median_seconds_per_epoch"]
        lines.append(f"| {method} | {m['robustlab']:.2f} | {m['hand']:.2f} | {r['ratio']:.3f} | "
                     f"<= {TARGET_OVERHEAD} | {r['max_weight_difference']:.2g} |")
    return "\n".join(lines)


# -- (b) peak memory ------------------------------------------------------------------------------------
def _vm_status(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (None where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_child(args) -> None:
    """Runs in its own process: train one epoch on the batches saved by the parent, print the peaks.

    The data come from a small file (not the MNIST loader, whose decoding peak would hide the
    training's). ``ru_maxrss`` is the process's high-water mark; where Linux allows, the peak mark
    is also reset after loading, so ``VmHWM`` afterwards is the peak *during training*."""
    x, y = torch.load(args.memory_child_data, weights_only=True)
    model = build_model(args.arch, input_shape=(1, 28, 28), num_classes=10, seed=args.seed)
    config = replace(_overhead_config(args.memory_child, args), epochs=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_before = _vm_status("VmRSS")
    reset = _reset_peak_rss()
    train(model, x, y, config=config)
    print(json.dumps({"method": args.memory_child, "maxrss_kib_before": before,
                      "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "rss_kib_before_training": rss_before,
                      "training_peak_kib": _vm_status("VmHWM") if reset else None,
                      "batches": math.ceil(len(y) / args.batch_size)}))


def run_memory(args) -> dict[str, Any]:
    x, y = _mnist("train", args.batch_size * args.memory_batches, args.data_dir, args.seed)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "batches.pt"
        torch.save((x, y), data)
        for method in ("natural", "pgd"):
            command = [sys.executable, __file__, "--memory-child", method, "--memory-child-data", str(data),
                       "--arch", args.arch, "--batch-size", str(args.batch_size), "--pgd-train-steps",
                       str(args.pgd_train_steps), "--threads", str(args.threads), "--seed", str(args.seed)]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["growth_kib"] = (None if r["training_peak_kib"] is None or r["rss_kib_before_training"] is None
                               else r["training_peak_kib"] - r["rss_kib_before_training"])
            results[method] = r
            growth = "n/a" if r["growth_kib"] is None else f"{r['growth_kib'] / 1024:.1f} MiB"
            common.log(f"[memory] {method}: peak {r['maxrss_kib'] / 1024:.1f} MiB, growth while training {growth}")
    growth = [results[m]["growth_kib"] for m in ("pgd", "natural")]
    return {"batch_size": args.batch_size, "batches": args.memory_batches, "methods": results,
            "ratio_peak": results["pgd"]["maxrss_kib"] / results["natural"]["maxrss_kib"],
            "ratio_growth": None if None in growth else growth[0] / max(1, growth[1])}


def memory_markdown(result: dict[str, Any]) -> str:
    lines = [f"### Peak memory (batch {result['batch_size']}, {result['batches']} batches, fresh process each)\n",
             "| Training | process peak RSS (MiB) | RSS before training (MiB) | peak growth while training (MiB) |",
             "|---|---:|---:|---:|"]
    for method, r in result["methods"].items():
        before = "n/a" if r["rss_kib_before_training"] is None else f"{r['rss_kib_before_training'] / 1024:.1f}"
        growth = "n/a" if r["growth_kib"] is None else f"{r['growth_kib'] / 1024:.1f}"
        lines.append(f"| {method} | {r['maxrss_kib'] / 1024:.1f} | {before} | {growth} |")
    growth = "n/a" if result["ratio_growth"] is None else f"{result['ratio_growth']:.2f}x"
    lines.append(f"\nPGD / natural: process peak {result['ratio_peak']:.2f}x, growth while training {growth} "
                 f"(target <= {TARGET_MEMORY}x).")
    return "\n".join(lines)


# -- (c) time to robustness ------------------------------------------------------------------------------
class _TimeUp(Exception):
    pass


def _pgd40_accuracy(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> tuple[float, float]:
    """(clean accuracy, PGD-40 accuracy: correct clean and under PGD-40 of 0.01, random start)."""
    model.eval()
    result = PGD(steps=40, step_size=0.01)(model, x, y, threat=Linf(EPS),
                                           generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        clean = model(x).argmax(dim=1) == y
    return float(clean.float().mean()), float((clean & (result.predictions == y)).float().mean())


def _race_config(method: str, args) -> TrainConfig:
    settings = METHOD_SETTINGS[method]
    options = dict(settings.get("method_options", {}))
    base = settings.get("method", method)
    epochs = args.method_epochs.get(method, args.epochs)
    lr = args.lr
    if base == "free":
        epochs *= options["replays"]  # free training's epochs count optimizer steps; args.epochs = passes
    if base == "yopo" and args.optimizer == "sgd":
        lr /= 5
    adversarial = base != "natural"
    return TrainConfig(epochs=epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=lr,
                       weight_decay=0.0 if args.optimizer == "adam" else 5e-4, schedule=args.schedule,
                       seed=args.seed, method=base, method_options=options, bn_mode=settings.get("bn_mode", "eval"),
                       threat={"norm": "Linf", "eps": EPS} if adversarial else None,
                       eps_warmup_epochs=min(args.eps_warmup, epochs) if adversarial else 0.0, robust_eval_samples=0)


def race_one(method: str, args, train_xy, val_xy, test_xy, suite_xy) -> dict[str, Any]:
    config = _race_config(method, args)
    if args.evaluate_saved:
        return _race_result(method, config, *_saved_race_model(method, config, args), args, test_xy, suite_xy)
    model = build_model(args.arch, input_shape=(1, 28, 28), num_classes=10, seed=args.seed)
    curve: list[dict[str, Any]] = []
    clock = {"train": 0.0, "mark": time.perf_counter()}

    def on_epoch_end(record: dict) -> None:
        clock["train"] += time.perf_counter() - clock["mark"]
        clean, robust = _pgd40_accuracy(model, *val_xy, seed=args.seed)
        model.train()
        curve.append({"epoch": record["epoch"], "train_seconds": round(clock["train"], 1), "val_clean": clean,
                      "val_pgd40": robust, "train_loss": record["train_loss"]})
        common.log(f"[robustness] {method} epoch {record['epoch']}: {clock['train']:.0f} s, val clean {clean:.3f}, "
                   f"PGD-40 {robust:.3f}")
        clock["mark"] = time.perf_counter()
        if clock["train"] >= args.time_limit:
            raise _TimeUp

    stopped = False
    try:
        train(model, *train_xy, config=config, on_epoch_end=on_epoch_end)
    except _TimeUp:
        stopped = True
    model.eval()
    if args.save_models:
        card = ModelCard(architecture=args.arch, arguments={"input_shape": [1, 28, 28], "num_classes": 10},
                         dataset="mnist", training={"method": method, "config": config.to_dict(), "curve": curve},
                         extra={"made_by": "benchmarks/training_mnist.py --parts robustness"})
        save_model(model, Path(args.save_models) / f"mnist-{args.arch}-{method}", card)
    return _race_result(method, config, model, curve, stopped, args, test_xy, suite_xy)


def _saved_race_model(method: str, config: TrainConfig, args) -> tuple[nn.Module, list[dict[str, Any]], bool]:
    """``(model, curve, stopped)`` of a race run saved with ``--save-models``, whose card must
    record the same training configuration (so that its final evaluation can be redone)."""
    model, card = load_model(Path(args.evaluate_saved) / f"mnist-{args.arch}-{method}")
    if card.training.get("config") != json.loads(json.dumps(config.to_dict())):
        raise SystemExit(f"the saved {method} model was trained with {card.training.get('config')}, "
                         f"not with this run's settings {config.to_dict()}")
    curve = card.training["curve"]
    return model, curve, bool(curve) and curve[-1]["train_seconds"] >= args.time_limit


def _race_result(method: str, config: TrainConfig, model: nn.Module, curve: list[dict[str, Any]], stopped: bool,
                 args, test_xy, suite_xy) -> dict[str, Any]:
    model.eval()
    clean, robust = _pgd40_accuracy(model, *test_xy, seed=args.seed + 1)
    suite = None
    if args.suite != "none":
        from robustlab.evaluation import evaluate
        from robustlab.evaluation.suites import build_suite

        evaluation = evaluate(model, *suite_xy, threat=Linf(EPS), attacks=build_suite(args.suite, Linf(EPS), 10),
                              cascade=True, settings=RunSettings(seed=args.seed, batch_size=len(suite_xy[1])))
        metrics = evaluation.metrics
        suite = {"name": args.suite, "images": metrics["samples"], "clean": metrics["clean_accuracy"]["value"],
                 "robust": metrics["robust_accuracy"]["value"], "broken_by": metrics["broken_by"]}
    train_seconds = curve[-1]["train_seconds"] if curve else 0.0
    return {"method": method, "config": config.to_dict(), "curve": curve, "train_seconds": train_seconds,
            "epochs_run": len(curve), "stopped_by_time_limit": stopped, "test_clean": clean, "test_pgd40": robust,
            "suite": suite}


def _time_to(curve: list[dict[str, Any]], level: float) -> float | None:
    """Training seconds at the first epoch whose validation PGD-40 accuracy reaches ``level``."""
    return next((p["train_seconds"] for p in curve if p["val_pgd40"] >= level), None)


def run_robustness(args) -> dict[str, Any]:
    known = sorted(m for m, settings in METHOD_SETTINGS.items() if settings.get("method", m) in METHODS)
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        raise SystemExit(f"unknown or unregistered methods {unknown}; available: {known}")
    train_xy = _mnist("train", args.train_images, args.data_dir, args.seed)
    test_x, test_y = _mnist("test", args.test_images + args.val_images, args.data_dir, args.seed)
    # Validation images (for the per-epoch curve) and test images are disjoint parts of one subset.
    val_xy = (test_x[:args.val_images], test_y[:args.val_images])
    test_xy = (test_x[args.val_images:], test_y[args.val_images:])
    suite_xy = (test_xy[0][:args.suite_images], test_xy[1][:args.suite_images])
    runs = [race_one(m, args, train_xy, val_xy, test_xy, suite_xy) for m in args.methods]
    best = max(runs, key=lambda r: r["test_pgd40"])
    summary = {"best_method": best["method"], "best_test_pgd40": best["test_pgd40"],
               "best_train_seconds": best["train_seconds"],
               "target_best_met": best["test_pgd40"] >= TARGET_ROBUST_ACCURACY and best["train_seconds"] <= TARGET_SECONDS}
    by_method = {r["method"]: r for r in runs}
    if "pgd" in by_method and "yopo" in by_method:
        level = by_method["pgd"]["curve"][-1]["val_pgd40"] if by_method["pgd"]["curve"] else None
        pgd_time = None if level is None else _time_to(by_method["pgd"]["curve"], level)
        yopo_time = None if level is None else _time_to(by_method["yopo"]["curve"], level)
        ratio = None if pgd_time in (None, 0) or yopo_time is None else yopo_time / pgd_time
        summary["yopo_vs_pgd"] = {"level": level, "pgd_seconds": pgd_time, "yopo_seconds": yopo_time,
                                  "ratio": ratio, "target_met": ratio is not None and ratio <= TARGET_YOPO_TIME_RATIO}
    return {"train_images": len(train_xy[1]), "val_images": args.val_images, "test_images": len(test_xy[1]),
            "suite_images": len(suite_xy[1]), "epochs": {m: args.method_epochs.get(m, args.epochs) for m in args.methods},
            "time_limit": args.time_limit,
            "runs": runs, "summary": summary}


def _epochs_text(epochs: int | dict[str, int]) -> str:
    """"at most N epoch(s)" text of a result's ``epochs`` (one number, or one per method)."""
    if isinstance(epochs, int):  # results written before --method-epochs
        return f"{epochs} epoch(s)"
    if len(set(epochs.values())) == 1:
        return f"{next(iter(epochs.values()))} epoch(s)"
    return " / ".join(f"{m} {n}" for m, n in epochs.items()) + " epochs"


def robustness_markdown(result: dict[str, Any]) -> str:
    lines = [(f"### Time to robustness (MNIST eps {EPS}, {result['train_images']} training images, at most "
              f"{_epochs_text(result['epochs'])} or {result['time_limit']:.0f} s of training per method)\n"),
             "| Method | train time (s) | epochs | clean | PGD-40 | suite robust (images) | stopped by limit |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in result["runs"]:
        suite = "—" if r["suite"] is None else f"{100 * r['suite']['robust']:.1f}% ({r['suite']['images']})"
        lines.append(f"| {r['method']} | {r['train_seconds']:.0f} | {r['epochs_run']} | {100 * r['test_clean']:.1f}% | "
                     f"{100 * r['test_pgd40']:.1f}% | {suite} | {'yes' if r['stopped_by_time_limit'] else 'no'} |")
    s = result["summary"]
    lines.append(f"\nBest: {s['best_method']} with {100 * s['best_test_pgd40']:.1f}% under PGD-40 after "
                 f"{s['best_train_seconds']:.0f} s (target >= {100 * TARGET_ROBUST_ACCURACY:.0f}% within "
                 f"{TARGET_SECONDS} s: {'met' if s['target_best_met'] else 'not met'}). PGD-40 on "
                 f"{result['test_images']} test images; per-epoch curve on {result['val_images']} other test images.")
    if "yopo_vs_pgd" in s:
        y = s["yopo_vs_pgd"]
        ratio = "n/a (YOPO never reached it)" if y["ratio"] is None else f"{y['ratio']:.2f}x"
        level = "n/a" if y["level"] is None else f"{100 * y['level']:.1f}%"
        lines.append(f"YOPO-5-10 vs PGD-40 training, time to PGD-40 training's final validation PGD-40 accuracy "
                     f"({level}): PGD {y['pgd_seconds']} s, YOPO {y['yopo_seconds']} s, ratio {ratio} "
                     f"(target <= {TARGET_YOPO_TIME_RATIO}x).")
    return "\n".join(lines)


# -- (d) cost per epoch ---------------------------------------------------------------------------------
def run_cost(args) -> dict[str, Any]:
    """Seconds per 60,000-image epoch of each race method's training (configured as in the race),
    timed on ``--cost-images`` images after a one-batch warm-up, and each method's ratio to PGD-40
    training: the per-epoch side of the YOPO claim, measured without a 20-minute race."""
    x, y = _mnist("train", args.cost_images, args.data_dir, args.seed)
    results = {}
    for method in args.methods:
        race = _race_config(method, args)
        passes = race.epochs // args.method_epochs.get(method, args.epochs)  # free training: replays per pass
        config = replace(race, epochs=passes, eps_warmup_epochs=0.0, schedule="constant")
        model = build_model(args.arch, input_shape=(1, 28, 28), num_classes=10, seed=args.seed)
        train(copy.deepcopy(model), x[:args.batch_size], y[:args.batch_size], config=config)
        seconds, load, _ = common.quiet_timing(functools.partial(train, model, x, y, config=config),
                                               wait=args.wait_idle, retries=args.retries)
        results[method] = {"seconds_per_epoch": seconds * 60000 / len(y), "other_load": load}
        common.log(f"[cost] {method}: {results[method]['seconds_per_epoch']:.0f} s per 60,000 images (other load {load})")
    if "pgd" in results:
        for r in results.values():
            r["ratio_to_pgd"] = r["seconds_per_epoch"] / results["pgd"]["seconds_per_epoch"]
    return {"images": len(y), "methods": results}


def cost_markdown(result: dict[str, Any]) -> str:
    lines = [f"### Cost per epoch (timed on {result['images']} images, scaled to 60,000)\n",
             "| Method | s / epoch | / PGD-40 training |", "|---|---:|---:|"]
    for method, r in result["methods"].items():
        ratio = f"{r['ratio_to_pgd']:.2f}" if "ratio_to_pgd" in r else "—"
        lines.append(f"| {method} | {r['seconds_per_epoch']:.0f} | {ratio} |")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="overhead,memory,robustness",
                   help="comma-separated: overhead,memory,robustness,cost")
    p.add_argument("--data-dir")
    p.add_argument("--arch", default="lenet", help="architecture for every part (a registered model: lenet, kw-small, madry-cnn, ...)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--pgd-train-steps", type=int, default=40, help="PGD steps (of 0.01) in overhead and memory")
    p.add_argument("--overhead-images", type=int, default=10000)
    p.add_argument("--overhead-epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--wait-idle", type=float, default=60.0, help="seconds to wait for an idle machine before a run")
    p.add_argument("--retries", type=int, default=2, help="reruns of a timing disturbed by other processes")
    p.add_argument("--memory-batches", type=int, default=20)
    p.add_argument("--cost-images", type=int, default=2560, help="images timed per method in the cost part")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    p.add_argument("--memory-child-data", help=argparse.SUPPRESS)
    p.add_argument("--methods", default="pgd,trades,fast-fgsm,free,mma,yopo")
    p.add_argument("--train-images", type=int, default=60000)
    p.add_argument("--epochs", type=int, default=10, help="passes over the data per method")
    p.add_argument("--method-epochs", default="",
                   help="per-method passes overriding --epochs, e.g. pgd=5,yopo=12 (so that each method's "
                        "schedule ends within the time limit)")
    p.add_argument("--time-limit", type=float, default=TARGET_SECONDS, help="training seconds per method")
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", default="constant")
    p.add_argument("--eps-warmup", type=float, default=1.0, help="epochs over which eps ramps up")
    p.add_argument("--val-images", type=int, default=200)
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--suite", default="standard", help="attack suite for the final evaluation, or 'none'")
    p.add_argument("--suite-images", type=int, default=100)
    p.add_argument("--save-models", help="folder to save each method's trained model in (robustness part)")
    p.add_argument("--evaluate-saved", help="robustness part: skip training, redo the final evaluation of the "
                                            "models (and report the curves) saved by --save-models in this folder")
    p.add_argument("--out", default=str(common.BENCH_DIR / "results" / "training_mnist"),
                   help="writes OUT.json and OUT.md")
    args = p.parse_args(argv)
    args.parts = [s for s in args.parts.split(",") if s]
    args.methods = [s for s in args.methods.split(",") if s]
    try:
        args.method_epochs = {m: int(n) for m, n in (e.split("=") for e in args.method_epochs.split(",") if e)}
    except ValueError:
        p.error(f"--method-epochs must look like pgd=5,yopo=12, got {args.method_epochs!r}")
    if sorted(set(args.method_epochs) - set(args.methods)):
        p.error(f"--method-epochs names methods not in --methods: {sorted(set(args.method_epochs) - set(args.methods))}")
    bad = sorted(set(args.parts) - {"overhead", "memory", "robustness", "cost"})
    if bad:
        p.error(f"unknown parts {bad}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return 0
    start = time.perf_counter()
    record: dict[str, Any] = {"provenance": common.provenance(args.threads), "arch": args.arch,
                              "arguments": {k: v for k, v in vars(args).items() if not k.startswith("memory_child")}}
    sections = []
    runners = {"overhead": (run_overhead, overhead_markdown), "memory": (run_memory, memory_markdown),
               "robustness": (run_robustness, robustness_markdown), "cost": (run_cost, cost_markdown)}
    with common.OtherLoad() as meter:
        for part in args.parts:
            run, markdown = runners[part]
            record[part] = run(args)
            sections.append(markdown(record[part]))
    record["wall_seconds"] = round(time.perf_counter() - start, 1)
    record["other_load_cores"] = meter.cores
    load = "n/a" if meter.cores is None else f"{meter.cores:.2f}"
    md = (f"## Training benchmarks on MNIST ({args.arch}, {args.threads} torch thread(s))\n\n" + "\n\n".join(sections)
          + f"\n\nWall time {record['wall_seconds']:.0f} s; other processes used {load} cores on average; "
          f"{record['provenance']['cpu']}, torch {record['provenance']['torch']}, robustlab "
          f"{record['provenance']['robustlab']} ({record['provenance']['robustlab_git']}).\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
