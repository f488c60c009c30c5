"""How small can the L2 perturbations of ``minimum_norm.py`` get? An expensive reference.

On the same model and images as ``minimum_norm.py``, runs robustlab's minimum-norm L2 attacks at
far more than the benchmark's budget (DDN-100, DDN-1000, FMN-1000, and DDN-100 targeted at each
of the 9 other classes, about 60x the gradients of one 100-step attack) and reports, per image,
the smallest perturbation any of them found (judged by a fresh forward pass). The median of
that per-image minimum is the best known; an attack cannot beat a peer by more than the peer
is above it.

    ROBUSTLAB_DATA=/work/shared/data python benchmarks/minimum_norm_floor.py [--model PATH] \\
        [--reference 1.3648] [--out benchmarks/results/minimum_norm_floor.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import minimum_norm

from robustlab.attacks import DDN, FMN
from robustlab.models import load_model
from robustlab.threat import L2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="saved robustlab model (default: the cached natural LeNet)")
    p.add_argument("--reference", type=float, help="a peer's median to compare the floor with")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=common.BENCH_DIR / "results" / "minimum_norm_floor.json")
    args, rest = p.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    bench_args = minimum_norm.parse_args(rest)
    if args.model is None:
        model = common.get_model(bench_args.arch, bench_args.workdir, bench_args.data_dir)[0]
    else:
        model = load_model(args.model)[0].eval()
    x, y, _ = minimum_norm.select_images(model, bench_args)
    threat = L2(eps=math.inf)

    def verified(x_adv: torch.Tensor) -> torch.Tensor:
        broken = common.predict(model, x_adv) != y
        return torch.where(broken, (x_adv - x).flatten(1).norm(dim=1), math.inf)

    runs: dict[str, dict] = {}
    best = torch.full((len(y),), math.inf)

    def record(name: str, x_adv: torch.Tensor, seconds: float) -> None:
        nonlocal best
        d = verified(x_adv)
        best = torch.minimum(best, d)
        runs[name] = {"median": float(d.median()), "success": float(torch.isfinite(d).float().mean()),
                      "seconds": round(seconds, 1), "running_floor_median": float(best.median())}
        common.log(f"[floor] {name}: median {d.median():.4f}, floor so far {best.median():.4f} ({seconds:.0f} s)")

    g = torch.Generator().manual_seed(0)
    for name, attack in (("ddn-100", DDN(steps=100)), ("ddn-1000", DDN(steps=1000)), ("fmn-1000", FMN(steps=1000))):
        start = time.perf_counter()
        record(name, attack(model, x, y, threat=threat, generator=g).x_adv, time.perf_counter() - start)
    with torch.no_grad():
        ranked = model(x).scatter(1, y[:, None], -math.inf).argsort(dim=1, descending=True)
    for k in range(ranked.shape[1] - 1):
        start = time.perf_counter()
        result = DDN(steps=100)(model, x, y, threat=threat, targets=ranked[:, k], generator=g)
        record(f"ddn-100-targeted-rank{k + 1}", result.x_adv, time.perf_counter() - start)
    report = {"images": len(y), "runs": runs, "floor_median": float(best.median()),
              "ddn100_median_over_floor_median": runs["ddn-100"]["median"] / float(best.median()),
              "model": str(args.model) if args.model else f"natural {bench_args.arch}",
              "provenance": common.provenance(args.threads)}
    if args.reference:
        report["reference_median"] = args.reference
        report["floor_over_reference"] = float(best.median()) / args.reference
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"floor median {best.median():.4f}; DDN-100 / floor {report['ddn100_median_over_floor_median']:.4f}"
          + (f"; floor / reference {report['floor_over_reference']:.4f}" if args.reference else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
