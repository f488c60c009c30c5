"""Models that only look robust, and whether robustlab notices (issue 4's demonstrations).

Part 1, catastrophic overfitting: a LeNet trained on MNIST with one-step FGSM adversarial
training at eps 0.3 (random start, step ``--fgsm-step`` x eps) against one trained with PGD.
For each: clean accuracy, FGSM, PGD-40 and the ``standard`` suite, and the diagnostics' verdict.

Part 2, Athalye et al.'s table at MNIST scale: the naturally trained LeNet of
benchmarks/common.py behind JPEG, bit-depth reduction and random resize-and-pad, and a LeNet
trained on thermometer-encoded inputs: plain PGD against BPDA (or EOT for the randomized one),
and the diagnostics' verdict on each.

    ROBUSTLAB_DATA=/work/shared/data python benchmarks/masking_mnist.py

Writes benchmarks/results/masking_mnist.json and prints a Markdown summary. Trained models are
cached in benchmarks/.cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from robustlab.attacks import BPDA, EOT, FGSM, PGD, Attack
from robustlab.data import load_dataset
from robustlab.evaluation import build_suite, diagnose, evaluate
from robustlab.models import (
    BitDepthReduction,
    JPEGDefense,
    ModelCard,
    RandomResizePad,
    ThermometerEncoding,
    build_model,
    load_model,
    save_model,
)
from robustlab.settings import RunSettings
from robustlab.threat import Linf
from robustlab.training import TrainConfig, train

EPS = 0.3


def trained(name: str, args: argparse.Namespace, config: TrainConfig, *, input_channels: int = 1,
            wrap=lambda m: m) -> nn.Module:
    """A LeNet trained on the first ``--train-images`` MNIST training images (cached)."""
    stem = args.workdir / f"masking-{name}-{config.epochs}ep-{args.train_images}"
    if not stem.with_name(stem.name + ".safetensors").exists():
        data = load_dataset("mnist", split="train", data_dir=args.data_dir, limit=args.train_images, seed=0)
        model = build_model("lenet", input_shape=(input_channels, 28, 28), num_classes=10, seed=0)
        start = time.perf_counter()
        common.log(f"[train] {name}: {config.method}, {config.epochs} epochs on {len(data)} images")
        train(wrap(model), data.x, data.y, config=config, progress=True)
        card = ModelCard(architecture="lenet", arguments={"input_shape": [input_channels, 28, 28], "num_classes": 10},
                         dataset="mnist", training={"method": config.method, "config": config.to_dict(),
                                                    "seconds": round(time.perf_counter() - start, 1)})
        args.workdir.mkdir(parents=True, exist_ok=True)
        save_model(model, stem, card)
    model, _ = load_model(stem)
    return wrap(model).eval()


def robust_accuracy(model: nn.Module, attack: Attack, x: Tensor, y: Tensor, seed: int = 0) -> float:
    ev = evaluate(model, x, y, threat=Linf(eps=EPS), attacks={attack.name: attack}, settings=RunSettings(seed=seed, batch_size=250))
    return round(100 * ev.metrics["robust_accuracy"]["value"], 1)


def suite_accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    threat = Linf(eps=EPS)
    ev = evaluate(model, x, y, threat=threat, attacks=build_suite("standard", threat, 10), cascade=True, settings=RunSettings(batch_size=250))
    return round(100 * ev.metrics["robust_accuracy"]["value"], 1)


def verdicts(model: nn.Module, x: Tensor, y: Tensor, surrogate: nn.Module | None) -> dict[str, Any]:
    diagnosis = diagnose(model, x, y, threat=Linf(eps=EPS), surrogate=surrogate)
    return {"verdict": diagnosis.verdict,
            "flagged": {f.check: f.verdict for f in diagnosis.findings if f.verdict in ("warn", "fail")},
            "findings": diagnosis.to_dict()["findings"]}


def clean_accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return round(100 * float((common.predict(model, x) == y).float().mean()), 1)


def part1(args, x, y, natural: nn.Module) -> list[dict[str, Any]]:
    threat = {"norm": "Linf", "eps": EPS}
    base = dict(epochs=args.epochs, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=0.0,
                schedule="constant", seed=0, threat=threat)
    models = {
        "fast-fgsm": trained(f"fast-fgsm-{args.fgsm_step}", args, TrainConfig(
            method="fast-fgsm", method_options={"step_size_factor": args.fgsm_step}, **base)),
        # PGD training at eps 0.3 from scratch often stalls at chance; ramp eps up over the first
        # epochs (as Gowal et al. and Wong et al. do).
        "pgd": trained("pgd", args, TrainConfig(
            method="pgd", method_options={"steps": args.pgd_train_steps, "step_size": 2.5 * EPS / args.pgd_train_steps},
            eps_warmup_epochs=min(2, args.epochs), **base)),
    }
    rows = []
    for name, model in models.items():
        common.log(f"[part 1] {name}")
        row = {"model": name, "clean": clean_accuracy(model, x, y),
               "fgsm": robust_accuracy(model, FGSM(), x, y),
               "pgd-40": robust_accuracy(model, PGD(steps=40, step_size=0.01), x, y),
               "apgd-ce": robust_accuracy(model, build_suite("standard", Linf(eps=EPS), 10)["apgd-ce"], x, y),
               "standard": suite_accuracy(model, x, y)}
        row["diagnostics"] = verdicts(model, x[:args.diagnose_images], y[:args.diagnose_images], natural)
        rows.append(row)
    return rows


def part2(args, x, y, natural: nn.Module) -> list[dict[str, Any]]:
    levels = 16
    thermometer_config = TrainConfig(epochs=2, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=0.0,
                                     schedule="constant", seed=0)
    defenses: dict[str, tuple[nn.Module, Attack]] = {
        "jpeg (quality 75)": (JPEGDefense(natural, quality=75), BPDA(PGD(steps=40, step_size=0.01))),
        "bit depth (2 bits)": (BitDepthReduction(natural, bits=2), BPDA(PGD(steps=40, step_size=0.01))),
        "thermometer (16 levels)": (
            trained("thermometer", args, thermometer_config, input_channels=levels,
                    wrap=lambda m: ThermometerEncoding(m, levels=levels)),
            BPDA(PGD(steps=40, step_size=0.01))),
        "random resize-and-pad": (RandomResizePad(natural, generator=torch.Generator().manual_seed(0)),
                                  EOT(PGD(steps=40, step_size=0.01), draws=10)),
    }
    rows = []
    for name, (model, adaptive) in defenses.items():
        common.log(f"[part 2] {name}")
        rows.append({"defense": name, "clean": clean_accuracy(model, x, y),
                     "pgd-40": robust_accuracy(model, PGD(steps=40, step_size=0.01), x, y),
                     "adaptive": type(adaptive).__name__ + "+PGD-40",
                     "adaptive_accuracy": robust_accuracy(model, adaptive, x, y),
                     "diagnostics": verdicts(model, x[:args.diagnose_images], y[:args.diagnose_images], natural)})
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Part 1 (L∞ eps {EPS}, {report['settings']['images']} MNIST test images)", "",
             "| training | clean | FGSM | PGD-40 | APGD-CE | standard suite | diagnostics |", "|---|---|---|---|---|---|---|"]
    for r in report["part1"]:
        flagged = ", ".join(f"{k}: {v}" for k, v in r["diagnostics"]["flagged"].items()) or "none"
        lines.append(f"| {r['model']} | {r['clean']} | {r['fgsm']} | {r['pgd-40']} | {r['apgd-ce']} | {r['standard']} "
                     f"| **{r['diagnostics']['verdict']}** ({flagged}) |")
    lines += ["", "Part 2 (Athalye et al.'s table at MNIST scale, L∞ eps 0.3)", "",
              "| defense | clean | PGD-40 | adaptive attack | accuracy | diagnostics |", "|---|---|---|---|---|---|"]
    for r in report["part2"]:
        flagged = ", ".join(f"{k}: {v}" for k, v in r["diagnostics"]["flagged"].items()) or "none"
        lines.append(f"| {r['defense']} | {r['clean']} | {r['pgd-40']} | {r['adaptive']} | {r['adaptive_accuracy']} "
                     f"| **{r['diagnostics']['verdict']}** ({flagged}) |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=500, help="test images for the accuracies")
    p.add_argument("--diagnose-images", type=int, default=500, help="of those, how many the diagnostics use")
    p.add_argument("--train-images", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--fgsm-step", type=float, default=2.0, help="fast-FGSM step as a multiple of eps")
    p.add_argument("--pgd-train-steps", type=int, default=10)
    p.add_argument("--parts", default="1,2")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--data-dir")
    p.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    p.add_argument("--out", type=Path, default=common.BENCH_DIR / "results" / "masking_mnist.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    started = time.perf_counter()
    natural, _, _ = common.get_model("lenet", args.workdir, args.data_dir)
    test = load_dataset("mnist", split="test", data_dir=args.data_dir, limit=args.images, seed=0)
    x, y = test.x.contiguous(), test.y
    parts = args.parts.split(",")
    report = {
        "benchmark": "masking_mnist",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "settings": {"eps": EPS, "images": len(x), "diagnose_images": min(args.diagnose_images, len(x)),
                     "train_images": args.train_images, "epochs": args.epochs, "fgsm_step": args.fgsm_step,
                     "pgd_train_steps": args.pgd_train_steps},
        "part1": part1(args, x, y, natural) if "1" in parts else [],
        "part2": part2(args, x, y, natural) if "2" in parts else [],
    }
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    report["provenance"] = common.provenance(threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
