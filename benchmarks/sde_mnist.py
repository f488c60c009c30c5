"""The random self-ensemble as a neural SDE on MNIST at CPU scale (docs/defenses/stochastic.md):
ODENet without and with an additive diffusion term (Euler-Maruyama), both trained naturally
with robustlab's loop on the same subset, then attacked at L∞ ``--eps`` with PGD following
single draws and with EOT-PGD. Accuracy: one deployed forward (a fresh draw) decides.

Benchmark code: it prints; it reseeds nothing but its own generators. JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from robustlab.attacks import EOT, PGD
from robustlab.data import load_dataset
from robustlab.evaluation import diagnose
from robustlab.models import build_model
from robustlab.threat import Linf
from robustlab.training import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--diffusion", type=float, default=0.5)
    parser.add_argument("--train-samples", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", split="train", limit=args.train_samples, seed=0)
    test = load_dataset("mnist", split="test", limit=args.images, seed=0)
    threat = Linf(args.eps)
    record: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "rows": []}
    for diffusion in (0.0, args.diffusion):
        model = build_model("odenet", input_shape=(1, 28, 28), num_classes=10, channels=args.channels,
                            diffusion=diffusion, diffusion_seed=1 if diffusion else None, seed=0)
        config = TrainConfig(epochs=args.epochs, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=0.0,
                             schedule="constant", seed=0, robust_eval_samples=0)
        start = time.perf_counter()
        train(model, data.x, data.y, config=config)
        seconds = time.perf_counter() - start
        model.eval()
        pgd = PGD(steps=args.steps, step_size=2.5 * args.eps / args.steps)
        with torch.no_grad():
            clean = float((model(test.x).argmax(1) == test.y).float().mean())
        row = {"diffusion": diffusion, "train_seconds": round(seconds, 1), "clean": clean}
        row["pgd_single_draw"] = 1 - float(pgd(model, test.x, test.y, threat=threat,
                                              generator=torch.Generator().manual_seed(0)).success.float().mean())
        if diffusion:
            eot = EOT(pgd, draws=args.draws)
            row["eot_pgd"] = 1 - float(eot(model, test.x, test.y, threat=threat,
                                           generator=torch.Generator().manual_seed(0)).success.float().mean())
            row["stochastic_check"] = diagnose(model, test.x[:20], test.y[:20], threat=threat,
                                               checks=("stochastic",))["stochastic"].verdict
        print(json.dumps(row), flush=True)
        record["rows"].append(row)
    if args.out is not None:
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
