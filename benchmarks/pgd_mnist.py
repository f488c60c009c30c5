"""PGD-40 L∞ on MNIST, side by side: robustlab, torchattacks, Foolbox and ART.

Same model (a small CNN trained here with robustlab and cached), same 1000 test images
(stratified, seed 0), same settings for every library: eps 0.3, step 0.01, 40 steps, random
start, cross-entropy, untargeted, one batch size, one device (CPU), fixed torch threads.
Every library's adversarial examples are judged by the same code: a fresh forward pass of the
model in eval mode gives robust accuracy, and threat-set membership is checked independently.

Usage (see benchmarks/README.md for installing the peers):

    ROBUSTLAB_DATA=/work/shared/data python benchmarks/pgd_mnist.py
    python benchmarks/pgd_mnist.py --images 1000 --repeats 5 --batch-size 250 \
        --libraries robustlab,torchattacks,foolbox,art --out benchmarks/results/pgd_mnist.json

Prints a Markdown table on stdout (progress on stderr) and writes a JSON file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from robustlab.attacks import PGD
from robustlab.data import load_dataset
from robustlab.threat import Linf

# The issue's configuration (Madry et al.'s MNIST evaluation); --eps / --step-size / --steps
# override them for side experiments.
EPS = 0.3
STEP_SIZE = 0.01
STEPS = 40
LIBRARIES = ("robustlab", "torchattacks", "foolbox", "art")
TARGET_SPEEDUP = 1.25
TARGET_ACCURACY_POINTS = 0.5


@dataclass(frozen=True)
class Settings:
    """What every library is given: the same PGD configuration and batch size."""

    eps: float
    step_size: float
    steps: int
    batch_size: int


AttackFn = Callable[[Tensor, Tensor, int], tuple[Tensor, "Tensor | None"]]


@dataclass
class Row:
    """One line of the table: a library in one configuration."""

    key: str
    library: str
    version: str | None
    config: str
    make: Callable[[], AttackFn]
    notes: list[str] = field(default_factory=list)
    attack: AttackFn | None = None
    times: list[float] = field(default_factory=list)
    robust: list[float] = field(default_factory=list)
    reported_robust: list[float] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    other_load: list[float | None] = field(default_factory=list)
    discarded: list[dict[str, Any]] = field(default_factory=list)
    mutated_model: bool = False
    mutated_inputs: bool = False


def seed_everything(seed: int) -> None:
    # Peers draw random starts from torch's (torchattacks, Foolbox) or NumPy's (ART) global
    # generator; reseeding them per run makes every library's run reproducible.
    torch.manual_seed(seed)
    np.random.seed(seed)


def batched(fn: Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor | None]], batch_size: int) -> AttackFn:
    """Run ``fn`` over ``batch_size`` chunks and concatenate (for the libraries that take a batch)."""

    def run(x: Tensor, y: Tensor, seed: int) -> tuple[Tensor, Tensor | None]:
        advs, flags = [], []
        for start in range(0, len(x), batch_size):
            adv, flag = fn(x[start:start + batch_size], y[start:start + batch_size], seed + start)
            advs.append(adv)
            flags.append(flag)
        reported = None if any(f is None for f in flags) else torch.cat(flags)
        return torch.cat(advs), reported

    return run


# -- the libraries ---------------------------------------------------------------------------

def robustlab_row(model: nn.Module, cfg: Settings, *, early_stop: bool) -> Row:
    threat = Linf(eps=cfg.eps)
    attack = PGD(steps=cfg.steps, step_size=cfg.step_size, random_start=True, early_stop=early_stop)

    def make() -> AttackFn:
        def one(x: Tensor, y: Tensor, seed: int) -> tuple[Tensor, Tensor]:
            result = attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(seed))
            return result.x_adv, ~result.success  # robust = not successful

        return batched(one, cfg.batch_size)

    key = "robustlab-early-stop" if early_stop else "robustlab"
    config = (f"PGD(steps={cfg.steps}, step_size={cfg.step_size}, random_start=True"
              f"{', early_stop=True' if early_stop else ''}), Linf(eps={cfg.eps})")
    row = Row(key, "robustlab" + (" (early_stop=True)" if early_stop else ""), common.robustlab.__version__,
              config, make)
    row.notes.append("returns the best iterate per sample (successful first, then highest loss)")
    if early_stop:
        row.notes.append("samples stop being updated once misclassified")
    return row


def torchattacks_row(model: nn.Module, cfg: Settings) -> Row:
    import torchattacks

    def make() -> AttackFn:
        atk = torchattacks.PGD(model, eps=cfg.eps, alpha=cfg.step_size, steps=cfg.steps, random_start=True)

        def one(x: Tensor, y: Tensor, seed: int) -> tuple[Tensor, None]:
            return atk(x, y), None

        return batched(one, cfg.batch_size)

    row = Row("torchattacks", "torchattacks", common.version_of("torchattacks"),
              f"PGD(model, eps={cfg.eps}, alpha={cfg.step_size}, steps={cfg.steps}, random_start=True)", make)
    row.notes.append("returns the last iterate; mean-reduced CE")
    return row


def foolbox_row(model: nn.Module, cfg: Settings) -> Row:
    import foolbox as fb

    def make() -> AttackFn:
        fmodel = fb.PyTorchModel(model, bounds=(0, 1), device="cpu")
        atk = fb.attacks.LinfPGD(abs_stepsize=cfg.step_size, steps=cfg.steps, random_start=True)

        def one(x: Tensor, y: Tensor, seed: int) -> tuple[Tensor, Tensor]:
            _raw, clipped, success = atk(fmodel, x, y, epsilons=cfg.eps)
            return clipped, ~success

        return batched(one, cfg.batch_size)

    row = Row("foolbox", "Foolbox", common.version_of("foolbox"),
              f"LinfPGD(abs_stepsize={cfg.step_size}, steps={cfg.steps}, random_start=True), epsilons={cfg.eps}; "
              "PyTorchModel(bounds=(0, 1))", make)
    row.notes.append("returns the last iterate (clipped); sum-reduced CE; loss.backward()")
    return row


def art_row(model: nn.Module, cfg: Settings) -> Row:
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    logging.getLogger("art").setLevel(logging.WARNING)

    def make() -> AttackFn:
        classifier = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                                       nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
        atk = ProjectedGradientDescentPyTorch(classifier, norm=np.inf, eps=cfg.eps, eps_step=cfg.step_size,
                                              max_iter=cfg.steps, targeted=False, num_random_init=1,
                                              batch_size=cfg.batch_size, verbose=False)

        def run(x: Tensor, y: Tensor, seed: int) -> tuple[Tensor, None]:
            # ART's API is NumPy in, NumPy out; it batches internally (batch_size above).
            x_adv = atk.generate(x=x.numpy(), y=y.numpy())
            return torch.from_numpy(x_adv), None

        return run

    row = Row("art", "ART", common.version_of("adversarial-robustness-toolbox"),
              f"ProjectedGradientDescentPyTorch(norm=inf, eps={cfg.eps}, eps_step={cfg.step_size}, max_iter={cfg.steps}, "
              f"num_random_init=1, batch_size={cfg.batch_size}); PyTorchClassifier(clip_values=(0, 1))", make)
    row.notes.append("returns the last iterate; mean-reduced CE; loss.backward(); NumPy in/out; "
                     "two extra forward passes over all images (clean, adversarial) for its logged success rate")
    return row


def build_rows(names: list[str], model: nn.Module, cfg: Settings) -> tuple[list[Row], dict[str, str]]:
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name == "robustlab":
            rows.append(robustlab_row(model, cfg, early_stop=False))
            rows.append(robustlab_row(model, cfg, early_stop=True))
            continue
        ok, why = common.peer_available(name)
        if not ok:
            skipped[name] = why
            common.log(f"[skip] {name} is not installed or does not import ({why}); "
                       "see benchmarks/README.md for the install commands")
            continue
        rows.append({"torchattacks": torchattacks_row, "foolbox": foolbox_row, "art": art_row}[name](model, cfg))
    return rows, skipped


# -- running ---------------------------------------------------------------------------------

def run_once(row: Row, model: nn.Module, x: Tensor, y: Tensor, seed: int,
             digest: str) -> tuple[float, Tensor, Tensor | None, float | None]:
    x_before = x.clone()
    seed_everything(seed)
    with common.OtherLoad() as load:
        start = time.perf_counter()
        x_adv, reported = row.attack(x, y, seed)  # type: ignore[misc]
        seconds = time.perf_counter() - start
    x_adv = x_adv.detach().to("cpu", torch.float32)
    if not torch.equal(x, x_before):
        row.mutated_inputs = True
    # Leave the model exactly as every library is meant to receive it: eval mode, no .grad.
    model.eval()
    model.zero_grad(set_to_none=True)
    if common.state_digest(model) != digest:
        row.mutated_model = True
    return seconds, x_adv, reported, load.cores


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000, help="test images (stratified subset; default 1000)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed runs per library (default 5); the median is reported")
    p.add_argument("--batch-size", type=int, default=250, help="attack batch size, the same for every library")
    p.add_argument("--eps", type=float, default=EPS, help=f"Linf radius (default {EPS}, the issue's setting)")
    p.add_argument("--step-size", type=float, default=STEP_SIZE, help=f"absolute step (default {STEP_SIZE})")
    p.add_argument("--steps", type=int, default=STEPS, help=f"PGD iterations (default {STEPS})")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: os.cpu_count())")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of the random starts")
    p.add_argument("--warmup-images", type=int, default=32, help="images in each library's untimed warm-up run")
    p.add_argument("--data-dir", default=None, help="MNIST location (default: robustlab's search, e.g. $ROBUSTLAB_DATA)")
    p.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR, help="where the trained model is cached")
    p.add_argument("--arch", default="lenet", choices=sorted(common.TRAIN_CONFIGS), help="model architecture")
    p.add_argument("--libraries", default=",".join(LIBRARIES), help="comma-separated subset of " + ",".join(LIBRARIES))
    p.add_argument("--freeze-params", action="store_true",
                   help="give every library a model whose parameters have requires_grad=False (by default "
                        "they require grad, as a freshly loaded model does; Foolbox and ART then also "
                        "compute parameter gradients on every step)")
    p.add_argument("--wait-idle", type=float, default=120.0,
                   help="before each timed run, wait up to this many seconds for other processes "
                        "to leave the CPUs idle (0: don't wait); the load during every run is recorded")
    p.add_argument("--busy-threshold", type=float, default=0.2,
                   help="a timed run during which other processes used this many cores or more on average "
                        "is discarded and run again (default 0.2)")
    p.add_argument("--retries", type=int, default=3, help="re-runs of a disturbed timed run (default 3)")
    p.add_argument("--out", type=Path, default=common.BENCH_DIR / "results" / "pgd_mnist.json", help="JSON output")
    args = p.parse_args(argv)
    args.libraries = [s.strip().lower() for s in args.libraries.split(",") if s.strip()]
    unknown = sorted(set(args.libraries) - set(LIBRARIES))
    if unknown:
        p.error(f"unknown libraries {unknown}; choose from {', '.join(LIBRARIES)}")
    if args.images < 1 or args.repeats < 1 or args.batch_size < 1:
        p.error("--images, --repeats and --batch-size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", category=UserWarning, module="foolbox")
    load_before = common.load_average()
    started = time.perf_counter()

    model, card, trained_now = common.get_model(args.arch, args.workdir, args.data_dir)
    if args.freeze_params:
        model.requires_grad_(False)
    digest = common.state_digest(model)
    data = load_dataset("mnist", split="test", data_dir=args.data_dir, limit=args.images, seed=args.seed)
    x, y = data.x.contiguous(), data.y
    clean_correct = common.predict(model, x) == y
    common.log(f"[data] {len(x)} MNIST test images (stratified, seed {args.seed}); "
               f"clean accuracy {float(clean_correct.float().mean()):.4f}")

    cfg = Settings(eps=args.eps, step_size=args.step_size, steps=args.steps, batch_size=args.batch_size)
    rows, skipped = build_rows(args.libraries, model, cfg)
    if not rows:
        common.log("nothing to run")
        return 1

    n_warm = min(args.warmup_images, len(x))
    for row in rows:
        row.attack = row.make()
        seconds, _, _, _ = run_once(row, model, x[:n_warm], y[:n_warm], args.seed, digest)
        common.log(f"[warm-up] {row.library}: {n_warm} images in {seconds:.2f} s")

    # Round robin over the libraries for each repeat, so that a change of machine load during
    # the run affects every library alike rather than whichever happened to run then.
    for repeat in range(args.repeats):
        for row in rows:
            for attempt in range(args.retries + 1):
                if args.wait_idle > 0:
                    common.wait_until_idle(args.wait_idle, threshold=args.busy_threshold, probe=0.5)
                seconds, x_adv, reported, other = run_once(row, model, x, y, args.seed + repeat, digest)
                if other is None or other < args.busy_threshold or attempt == args.retries:
                    break
                row.discarded.append({"repeat": repeat + 1, "seconds": round(seconds, 4), "other_cores": round(other, 2)})
                common.log(f"[run {repeat + 1}/{args.repeats}] {row.library}: {seconds:.2f} s with other processes "
                           f"using {other:.2f} cores; discarded, running it again")
            row.other_load.append(other)
            robust = float((common.predict(model, x_adv) == y).float().mean())
            row.times.append(seconds)
            row.robust.append(robust)
            if reported is not None:
                row.reported_robust.append(float(reported.float().mean()))
            row.checks.append(common.check_threat_set(x, x_adv, cfg.eps).as_dict())
            common.log(f"[run {repeat + 1}/{args.repeats}] {row.library}: {seconds:.2f} s, "
                       f"robust accuracy {100 * robust:.1f}%"
                       + ("" if other is None else f", other processes {other:.2f} cores"))

    load_after = common.load_average()
    report = build_report(args, threads, rows, skipped, card, trained_now, clean_correct, load_before, load_after,
                          time.perf_counter() - started, sum(p.numel() for p in model.parameters()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown(report))
    common.log(f"[done] JSON written to {args.out}")
    return 0


# -- reporting -------------------------------------------------------------------------------

def build_report(args, threads, rows, skipped, card, trained_now, clean_correct, load_before, load_after,
                 wall, parameters) -> dict[str, Any]:
    n = len(clean_correct)
    base = next((r for r in rows if r.key == "robustlab"), None)
    base_time = statistics.median(base.times) if base else None
    base_robust = base.robust[0] if base else None
    results = []
    for row in rows:
        median = statistics.median(row.times)
        worst = {
            "max_linf": max(c["max_linf"] for c in row.checks),
            "linf_violations": max(c["linf_violations"] for c in row.checks),
            "box_violations": max(c["box_violations"] for c in row.checks),
            "max_box_excess": max(c["max_box_excess"] for c in row.checks),
            "nonfinite": max(c["nonfinite"] for c in row.checks),
        }
        results.append({
            "key": row.key,
            "library": row.library,
            "version": row.version,
            "configuration": row.config,
            "seconds_median": round(median, 4),
            "seconds_all": [round(t, 4) for t in row.times],
            "other_processes_cores_during_runs": [None if v is None else round(v, 2) for v in row.other_load],
            "discarded_disturbed_runs": row.discarded,
            "images_per_second": round(n / median, 2),
            "time_ratio_vs_robustlab": round(median / base_time, 3) if base_time else None,
            "robust_accuracy": row.robust[0],
            "robust_accuracy_all_repeats": row.robust,
            "robust_accuracy_diff_points_vs_robustlab":
                round(100 * (row.robust[0] - base_robust), 2) + 0.0 if base_robust is not None else None,
            "library_reported_robust_accuracy": row.reported_robust[0] if row.reported_robust else None,
            "threat_set_check": worst,
            "changed_model_weights": row.mutated_model,
            "changed_inputs": row.mutated_inputs,
            "notes": row.notes,
        })
    targets = {}
    ta = next((r for r in results if r["key"] == "torchattacks"), None)
    if base and ta:
        speedup = ta["seconds_median"] / results[0]["seconds_median"]
        diff = -ta["robust_accuracy_diff_points_vs_robustlab"] + 0.0
        targets = {
            "robustlab_throughput_over_torchattacks": round(speedup, 3),
            "throughput_target": TARGET_SPEEDUP,
            "throughput_target_met": speedup >= TARGET_SPEEDUP,
            "robust_accuracy_diff_points": round(diff, 2),
            "accuracy_target_points": TARGET_ACCURACY_POINTS,
            "accuracy_target_met": abs(diff) <= TARGET_ACCURACY_POINTS,
        }
    return {
        "benchmark": "pgd_mnist",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "settings": {
            "attack": "PGD", "norm": "Linf", "eps": args.eps, "step_size": args.step_size, "steps": args.steps,
            "random_start": True, "loss": "cross-entropy", "targeted": False,
            "images": n, "subset": f"stratified MNIST test subset, seed {args.seed}",
            "batch_size": args.batch_size, "repeats": args.repeats, "warmup_images": args.warmup_images,
            "wait_idle_seconds": args.wait_idle, "busy_threshold_cores": args.busy_threshold,
            "retries_of_disturbed_runs": args.retries,
            "statistic": "median wall time over repeats; robust accuracy of repeat 1 (seed "
                         f"{args.seed}); repeat r uses seed {args.seed}+r",
            "params_require_grad": not args.freeze_params,
            "evaluation": "robust accuracy = fraction of images whose x_adv a fresh eval-mode forward pass "
                          "of the same model classifies correctly (same code for every library)",
        },
        "model": {
            "architecture": card.architecture,
            "parameters": parameters,
            "clean_test_accuracy_10k": card.metrics.get("clean_test_accuracy"),
            "clean_accuracy_subset": float(clean_correct.float().mean()),
            "trained_this_run": trained_now,
            "training": {k: card.training.get(k) for k in ("method", "config", "seconds")},
            "checkpoint": _display_path(args.workdir / f"mnist-{card.architecture}-natural.safetensors"),
        },
        "results": results,
        "targets": targets,
        "skipped": skipped,
        "other_processes_cores_max": _max_load(rows),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "total_wall_seconds": round(wall, 1),
        "provenance": common.provenance(threads),
    }


def _max_load(rows: list[Row]) -> float | None:
    values = [v for row in rows for v in row.other_load if v is not None]
    return round(max(values), 2) if values else None


def _display_path(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it (results get committed)."""
    try:
        return path.resolve().relative_to(common.BENCH_DIR.parent).as_posix()
    except ValueError:
        return str(path)


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        (f"PGD-{s['steps']} Linf eps={s['eps']} step={s['step_size']} random start, {s['images']} MNIST test images, "
        f"batch {s['batch_size']}, {report['provenance']['torch_threads']} torch threads, "
        f"median of {s['repeats']} runs; model {report['model']['architecture']} "
        f"(clean acc. on subset {100 * report['model']['clean_accuracy_subset']:.1f}%)"),
        "",
        ("| Library | Version | Time (s) | Images/s | Time / robustlab | Robust acc. (%) | Δ vs robustlab (pt) "
        "| max Linf | Out-of-set samples |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        chk = r["threat_set_check"]
        ratio = r["time_ratio_vs_robustlab"]
        diff = r["robust_accuracy_diff_points_vs_robustlab"]
        lines.append(
            f"| {r['library']} | {r['version']} | {r['seconds_median']:.2f} | {r['images_per_second']:.0f} | "
            f"{'' if ratio is None else f'{ratio:.2f}×'} | {100 * r['robust_accuracy']:.1f} | "
            f"{'' if diff is None else f'{diff:+.1f}'} | {chk['max_linf']:.4f} | "
            f"{chk['linf_violations']} eps / {chk['box_violations']} box |"
        )
    t = report["targets"]
    if t:
        lines += [
            "",
            (f"robustlab throughput / torchattacks throughput: {t['robustlab_throughput_over_torchattacks']:.2f}× "
            f"(target ≥ {t['throughput_target']}×: {'met' if t['throughput_target_met'] else 'NOT met'}); "
            f"robust accuracy difference {t['robust_accuracy_diff_points']:+.1f} pt "
            f"(target ±{t['accuracy_target_points']} pt: {'met' if t['accuracy_target_met'] else 'NOT met'})"),
        ]
    if report["other_processes_cores_max"] is not None:
        discarded = sum(len(r["discarded_disturbed_runs"]) for r in report["results"])
        lines.append(f"\nOther processes used at most {report['other_processes_cores_max']:.2f} cores on average "
                     f"during any kept timed run; {discarded} run(s) disturbed by other processes were discarded "
                     "and repeated (per-run values in the JSON).")
    for name, why in report["skipped"].items():
        lines.append(f"\nskipped {name}: {why}")
    bad = [r["library"] for r in report["results"] if r["changed_model_weights"] or r["changed_inputs"]]
    if bad:
        lines.append(f"\nWARNING: changed the model weights or the inputs: {', '.join(bad)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
