"""Per-image success rates of the reference AutoAttack and of robustlab's `fast` on the images where a run of
``autoattack_reference.py`` found them disagreeing: each such image attacked alone, with several seeds each.

In the benchmark's run an image's fate under a random search (Square) depends on the seed and on the other
images of its batch, and two seeds of the reference are too few to tell a lottery from a weakness. Here each
image the reference broke and a seed of `fast` did not (and each the other way) is attacked alone by both,
with seeds ``0 .. N-1``: the frequencies say whether `fast` breaks it less often than the reference, or both
only sometimes.

    ROBUSTLAB_DATA=/work/shared/data python benchmarks/autoattack_misses.py benchmarks/results/autoattack_reference_zoo2.json \\
        benchmarks/results/autoattack_reference.json --seeds 10 --out benchmarks/results/autoattack_misses.json

Benchmark code: it reseeds global generators (pyautoattack draws from them) and prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import autoattack_reference as benchmark
import common
import zoo_models

from robustlab.data import load_dataset


def rates(result: dict[str, Any], seeds: int, fast_square: dict[str, Any]) -> list[dict[str, Any]]:
    """Each disagreeing image of one row: how many of ``seeds`` seeds of each broke it, attacked alone."""
    row = benchmark.Row(result["model"], result["norm"], result["eps"], result["images"])
    model, _ = zoo_models.get(row.model)
    data = load_dataset(zoo_models.dataset(row.model), split="test", limit=row.images,
                        seed=result["reference_seeds"][0])
    counting = benchmark.CountingModel(model).eval()
    reference = result["runs"]["reference"]["per_sample"]
    disagreeing: dict[int, str] = {}  # image: who broke it in the run (in some seed of `fast`)
    for name, run in result["runs"].items():
        if name == "fast" or name.startswith("fast-seed"):
            for i, v in enumerate(run["per_sample"]):
                if (v is None) != (reference[i] is None) and reference[i] != "clean":
                    disagreeing[i] = "fast" if v is not None else "reference"
    out = []
    for index, broken_by in sorted(disagreeing.items()):
        x, y = data.x[index:index + 1].contiguous(), data.y[index:index + 1]
        ref_broke = fast_broke = 0
        for seed in range(seeds):
            torch.manual_seed(seed)
            ref_broke += int(not benchmark.run_reference(counting, x, y, row, seed, 1)[0].item())
            fast_broke += int(not benchmark.run_robustlab("fast", counting, x, y, row, seed, 1, fast_square)[0].item())
        out.append({"model": row.model, "norm": row.norm, "eps": row.eps, "image": index,
                    "in_the_run_broken_only_by": broken_by, "seeds": seeds,
                    "reference_broke": ref_broke, "fast_broke": fast_broke})
        common.log(f"[{row.model} {row.norm}] image {index} (run: only {broken_by}): reference {ref_broke}/{seeds}, "
                   f"fast {fast_broke}/{seeds}")
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | threat | image | in the run, broken only by | reference broke it | fast broke it |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['norm']} {r['eps']:.4g} | {r['image']} | {r['in_the_run_broken_only_by']} | "
                     f"{r['reference_broke']}/{r['seeds']} | {r['fast_broke']}/{r['seeds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", type=Path, nargs="+", help="result files of autoattack_reference.py")
    p.add_argument("--seeds", type=int, default=10, help="seeds per image and library (0 .. N-1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("auto-attack").setLevel(logging.ERROR)
    rows: list[dict[str, Any]] = []
    for path in args.results:
        report = json.loads(path.read_text())
        fast_square = report["settings"].get("fast_square") or {}
        for result in report["results"]:
            rows += rates(result, args.seeds, fast_square)
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({
                    "benchmark": "autoattack_misses",
                    "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
                    "rows": rows, "provenance": {**common.provenance(args.threads),
                                                 "pyautoattack": common.version_of("pyautoattack")}}, indent=1) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
