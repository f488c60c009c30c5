"""What a zoo recipe costs on this CPU: time a few hundred optimizer steps of it and extrapolate.

Runs the recipe exactly as ``robustlab zoo train`` does (``robustlab train --config
recipes/NAME.toml``) on a stratified subset of ``steps * batch_size`` training images for one
epoch, with one torch thread and no validation, measures the CPU seconds of the training loop
(process time, steadier than wall time on a shared machine), then extrapolates to the recipe's epochs on its
full training split. Cost per step does not depend on the eps warm-up or the schedule, which are
set to what one epoch allows; ``--option KEY=VALUE`` overrides a method option (e.g.
``steady_from_epoch=0`` to time TisODE with its steady-state term on, as in all but its first
epochs). Not counted: the per-epoch validation (clean accuracy on the validation split and PGD on
``robust_eval_samples`` of it) and the card's evaluation (``standard`` and ``fast`` suites).

    PYTHONPATH=src ROBUSTLAB_DATA=../shared/data nice -n 10 python benchmarks/zoo_recipe_cost.py mnist-odenet --steps 100

Wall seconds are reported beside: on a shared machine they include waiting for the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch


def measure(name: str, steps: int, options: list[str], data_dir: str | None) -> dict:
    import robustlab.training

    from robustlab import zoo
    from robustlab.cli import build_parser
    from robustlab.cli.train import run as train_command
    from robustlab.data import load_dataset

    recipe = zoo.recipe(name)
    batch = int(recipe.get("batch_size", 128))
    with tempfile.TemporaryDirectory() as out:
        argv = ["train", "--config", str(zoo.recipe_path(name)), "--out", out, "--epochs", "1",
                "--limit", str(steps * batch), "--val-fraction", "0", "--quiet"]
        if recipe.get("eps_warmup_epochs"):
            argv += ["--eps-warmup-epochs", "0"]
        for option in options:
            argv += ["--option", option]
        if data_dir:
            argv += ["--data-dir", data_dir]
        # CPU seconds of the training loop alone (not the data loading): on a shared machine they
        # are a steadier measure than the wall time, which other processes' load inflates.
        cpu: list[float] = []
        loop = robustlab.training.train

        def timed(*args, **kwargs):
            start = time.process_time()
            try:
                return loop(*args, **kwargs)
            finally:
                cpu.append(time.process_time() - start)

        robustlab.training.train = timed
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                train_command(build_parser().parse_args(argv))
        finally:
            robustlab.training.train = loop
        record = json.loads((Path(out) / "checkpoints" / "metrics.jsonl").read_text().splitlines()[0])
    train_images = recipe.get("limit") or len(load_dataset(recipe["dataset"], split="train", data_dir=data_dir).y)
    train_images = math.floor(train_images * (1 - float(recipe.get("val_fraction", 0.1))))
    steps_per_epoch = math.ceil(train_images / batch)
    per_step = cpu[0] / steps
    epochs = int(recipe.get("epochs", 10))
    return {"name": name, "steps_timed": steps, "wall_seconds_timed": record["seconds"], "cpu_seconds_timed": cpu[0],
            "cpu_seconds_per_step": round(per_step, 4), "steps_per_epoch": steps_per_epoch,
            "cpu_seconds_per_epoch": round(per_step * steps_per_epoch, 1), "epochs": epochs,
            "training_cpu_hours": round(per_step * steps_per_epoch * epochs / 3600, 2),
            "train_acc_timed": record["train_acc"], "options": options}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", help="zoo recipes")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps to time (default 200)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a method option override")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.names:
        print(json.dumps(measure(name, args.steps, args.option, args.data_dir)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
