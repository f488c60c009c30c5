"""PGD and APGD against a bare loop at equal steps (issue 14, item 4: at most 1.03x).

The bare loop is the textbook PGD loop (:func:`bare_loop`, which ``profile_pgd.py`` times too): one forward and
one backward per step and nothing else, the floor for any library. robustlab's PGD and APGD run
the same number of steps with ``early_stop=False`` (every sample every step), on the same model
and images; repeats are interleaved so that a load change on the shared machine hits all
runners alike, and the median is kept. torchattacks' PGD and APGD are timed alongside when
installed.

    ROBUSTLAB_DATA=/work/shared/data python benchmarks/attack_floor.py [--images 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import zoo_models

from robustlab.attacks import APGD, PGD
from robustlab.data import load_dataset
from robustlab.threat import Linf

EPS = 0.3


def bare_loop(model: nn.Module, x: Tensor, y: Tensor, steps: int, step: float,
              generator: torch.Generator | None = None) -> Tensor:
    """The textbook L∞ PGD loop at eps ``EPS``: a random start, then per step one forward, one
    backward, a signed step and the projection; nothing else (the floor for any library)."""
    delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * EPS
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = (x + (x_adv - x).clamp(-EPS, EPS)).clamp(0, 1)
    return x_adv


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mnist-natural-lenet")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where the model and images live: cpu (default) or cuda[:N]")
    p.add_argument("--out", type=Path, default=common.BENCH_DIR / "results" / "attack_floor.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, _ = zoo_models.get(args.model)
    model.to(device)
    data = load_dataset("mnist", split="test", limit=args.images)
    x, y = data.x.contiguous().to(device), data.y.to(device)
    threat = Linf(eps=EPS)
    gen = lambda: torch.Generator(device=device).manual_seed(0)  # noqa: E731
    runners = {
        "bare loop, 40 steps": lambda: bare_loop(model, x, y, 40, 0.01),
        "robustlab PGD-40": lambda: PGD(steps=40, step_size=0.01)(model, x, y, threat=threat, generator=gen()),
        "bare loop, 100 steps": lambda: bare_loop(model, x, y, 100, 0.01),
        "robustlab APGD-100": lambda: APGD(steps=100, early_stop=False)(model, x, y, threat=threat, generator=gen()),
    }
    ok, _ = common.peer_available("torchattacks")
    if ok:
        import torchattacks

        runners["torchattacks PGD-40"] = lambda: torchattacks.PGD(model, eps=EPS, alpha=0.01, steps=40)(x, y)
        runners["torchattacks APGD-100"] = lambda: torchattacks.APGD(model, eps=EPS, steps=100, n_restarts=1)(x, y)
    times: dict[str, list[float]] = {name: [] for name in runners}
    loads: list[float] = []
    for repeat in range(args.repeats):
        for name, fn in runners.items():
            with common.OtherLoad() as load:
                common.synchronize(device)
                start = time.perf_counter()
                fn()
                common.synchronize(device)
                times[name].append(time.perf_counter() - start)
            if load.cores is not None:
                loads.append(load.cores)
            common.log(f"[{repeat}] {name}: {times[name][-1]:.2f} s")
    median = {name: statistics.median(t) for name, t in times.items()}
    ratios = {
        "PGD-40 / bare": median["robustlab PGD-40"] / median["bare loop, 40 steps"],
        "APGD-100 / bare": median["robustlab APGD-100"] / median["bare loop, 100 steps"],
    }
    if ok:
        ratios["torchattacks PGD-40 / bare"] = median["torchattacks PGD-40"] / median["bare loop, 40 steps"]
        ratios["torchattacks APGD-100 / bare"] = median["torchattacks APGD-100"] / median["bare loop, 100 steps"]
    report = {"benchmark": "attack_floor", "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              "model": args.model, "images": len(x), "eps": EPS, "repeats": args.repeats,
              "median_seconds": {k: round(v, 3) for k, v in median.items()},
              "ratios": {k: round(v, 3) for k, v in ratios.items()},
              "other_load_cores_mean": round(statistics.mean(loads), 2) if loads else None,
              "provenance": common.provenance(args.threads, device)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"median_seconds": report["median_seconds"], "ratios": report["ratios"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
