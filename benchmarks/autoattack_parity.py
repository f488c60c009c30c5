"""Per-attack, per-sample parity of robustlab's `standard` suite with the reference AutoAttack
(``pyautoattack`` 0.2.0, the authors' code) over several seeds.

Each attack of the standard version (APGD-CE, APGD-T, FAB-T, Square) runs alone on the same
images in both libraries (pyautoattack's ``run_standard_evaluation_individual``; robustlab's
``evaluate`` without cascade), for each seed. Reported per attack: robust counts per seed, and
the samples one library broke and the other did not, set against the same count between two
seeds of the reference itself (the seed-to-seed variation).

    ROBUSTLAB_DATA=/work/shared/data python benchmarks/autoattack_parity.py \\
        --model mnist-fastfgsm-madry --images 100 --seeds 0 1 2   # or --model zoo:NAME (a zoo model)

Benchmark code: it reseeds global generators (pyautoattack draws from them).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import zoo_models

from robustlab.data import load_dataset
from robustlab.evaluation import build_suite, evaluate
from robustlab.settings import RunSettings
from robustlab.threat import threat_model

ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


def reference_robust(model, x, y, norm, eps, seed, attacks, batch_size):
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, norm=norm, eps=eps, seed=seed, version="standard")
    adversary.attacks_to_run = list(attacks)
    out = {}
    for name in attacks:
        start = time.perf_counter()
        adversary.attacks_to_run = [name]
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
        out[name] = (common.predict(model, x_adv) == y, time.perf_counter() - start)
    return out


def robustlab_robust(model, x, y, norm, eps, seed, attacks, batch_size):
    threat = threat_model(norm, eps)
    suite = build_suite("standard", threat, 10)
    out = {}
    for name in attacks:
        start = time.perf_counter()
        ev = evaluate(model, x, y, threat=threat, attacks={name: suite[name]}, settings=RunSettings(seed=seed, batch_size=batch_size))
        out[name] = (torch.tensor([s["broken_by"] is None for s in ev.samples]), time.perf_counter() - start)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mnist-fastfgsm-madry")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--norm", default="Linf")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("auto-attack").setLevel(logging.ERROR)
    model, card = zoo_models.get(args.model)
    dataset = zoo_models.dataset(args.model)
    data = load_dataset(dataset, split="test", limit=args.images)
    x, y = data.x.contiguous(), data.y
    clean = common.predict(model, x) == y
    runs = {"reference": {}, "robustlab": {}}
    for seed in args.seeds:
        torch.manual_seed(seed)
        runs["reference"][seed] = reference_robust(model, x, y, args.norm, args.eps, seed, args.attacks, args.batch_size)
        runs["robustlab"][seed] = robustlab_robust(model, x, y, args.norm, args.eps, seed, args.attacks, args.batch_size)
    report = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              "model": args.model, "images": len(x), "clean": int(clean.sum()), "norm": args.norm, "eps": args.eps,
              "seeds": args.seeds, "attacks": {},
              "provenance": {**common.provenance(args.threads), "pyautoattack": common.version_of("pyautoattack")}}
    for name in args.attacks:
        ref = {s: runs["reference"][s][name][0] for s in args.seeds}
        ours = {s: runs["robustlab"][s][name][0] for s in args.seeds}
        ref_any_broken = torch.stack([~r for r in ref.values()]).any(0)
        ours_any_broken = torch.stack([~r for r in ours.values()]).any(0)
        ref_all_broken = torch.stack([~r for r in ref.values()]).all(0)
        row = {
            "reference_robust": [int(ref[s].sum()) for s in args.seeds],
            "robustlab_robust": [int(ours[s].sum()) for s in args.seeds],
            "reference_seconds": [round(runs["reference"][s][name][1], 1) for s in args.seeds],
            "robustlab_seconds": [round(runs["robustlab"][s][name][1], 1) for s in args.seeds],
            # same seed index: broken by the reference and not by robustlab, and the other way
            "ref_not_ours": [int((~ref[s] & ours[s]).sum()) for s in args.seeds],
            "ours_not_ref": [int((ref[s] & ~ours[s]).sum()) for s in args.seeds],
            # seed-to-seed variation of the reference itself (consecutive seeds)
            "ref_seed_vs_seed": [int((ref[a] != ref[b]).sum()) for a, b in zip(args.seeds, args.seeds[1:])],
            "ours_seed_vs_seed": [int((ours[a] != ours[b]).sum()) for a, b in zip(args.seeds, args.seeds[1:])],
            # broken by the reference under every seed, robust under some robustlab seed
            "ref_always_ours_sometimes_not": int((ref_all_broken & torch.stack(list(ours.values())).any(0)).sum()),
            "ref_any_ours_never": int((ref_any_broken & ~ours_any_broken).sum()),
            "ours_any_ref_never": int((ours_any_broken & ~ref_any_broken).sum()),
        }
        report["attacks"][name] = row
        common.log(f"[{args.model}] {name}: {row}")
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
