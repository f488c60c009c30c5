"""Why `reproduce madry-cifar10` differs from Madry et al.'s Table 2: the follow-up measurements.

On the reproduction's own models and images (A = zoo:cifar10-pgd; A' = cifar10-pgd's recipe with
seed 1, read from the reproduction's cache, never trained here; the first 1000 test images;
L∞ eps 8/255, steps of 2/255), with the reproduction's own ``robust_correct``:

- CW-30 against PGD-20 on A: is it the margin loss or the 30 steps? PGD-30 on the cross-entropy,
  and CW-30 with kappa 0 beside the table's kappa 50.
- Transfer from A': A' white-box under its own PGD-7 and CW-30; of the images whose adversarial
  example fools A' (and that A classifies correctly clean), the share that also fools A; the
  share of those examples whose margin on A' reached -kappa (kappa 50 active at all).
- The logit scale of A on clean images (median top-1 minus top-2, median max minus min).

    ROBUSTLAB_DATA=../shared/data python benchmarks/madry_cifar10_followups.py --cache-dir zoo-runs/reproduce

Writes benchmarks/results/madry_cifar10_followups.json. About 15 minutes on one core.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from robustlab.attacks import PGD
from robustlab.reproduce.madry import TABLES, _Models, _scale, robust_correct
from robustlab.reproduce.registry import ReproOptions
from robustlab.threat import Linf


def percent(flags: torch.Tensor) -> float:
    return round(100 * float(flags.float().mean()), 1)


def predict(model: torch.nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + chunk]) for i in range(0, len(x), chunk)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="the reproduction's --cache-dir (holds A')")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "madry_cifar10_followups.json")
    args = parser.parse_args()
    options = ReproOptions(cache_dir=args.cache_dir, train=False)
    scale = _scale(TABLES["madry-cifar10"], options)
    models = _Models(scale, options)
    a, a_copy = models["A"], models["A'"]
    x, y = options.first_test_images(scale.dataset, scale.images)
    threat, step, chunk = Linf(scale.eps), scale.step_size, scale.chunk
    out: dict[str, object] = {"images": len(y), "A": models.info["A"]["sha256"], "A'": models.info["A'"]["sha256"]}

    logits = predict(a, x, chunk)
    top2 = logits.topk(2, dim=1).values
    out["A clean: median top-1 minus top-2 logit"] = round(float((top2[:, 0] - top2[:, 1]).median()), 2)
    out["A clean: median max minus min logit"] = round(float((logits.max(1).values - logits.min(1).values).median()), 2)
    clean_a = logits.argmax(1) == y
    clean_copy = predict(a_copy, x, chunk).argmax(1) == y
    out["A and A' both right or both wrong clean"] = percent(clean_a == clean_copy)

    for name, attack in (("PGD-30 (cross-entropy)", PGD(steps=30, step_size=step)),
                         ("CW-30 kappa 0", PGD(steps=30, step_size=step, loss="margin", kappa=0.0))):
        out[f"A white-box {name}"] = percent(robust_correct(a, attack, x, y, threat=threat, targets=None, seed=4,
                                                             chunk=chunk))
        print(name, out[f"A white-box {name}"], flush=True)

    generator = torch.Generator().manual_seed(6)
    for name, attack in (("PGD-7", PGD(steps=7, step_size=step)),
                         ("CW-30 kappa 50", PGD(steps=30, step_size=step, loss="margin", kappa=50.0))):
        results = [attack(a_copy, x[i:i + chunk], y[i:i + chunk], threat=threat, generator=generator)
                   for i in range(0, len(y), chunk)]
        x_adv = torch.cat([r.x_adv for r in results])
        margin = torch.cat([r.margin for r in results])
        fools_copy = clean_copy & (predict(a_copy, x_adv, chunk).argmax(1) != y)
        fools_a = clean_a & (predict(a, x_adv, chunk).argmax(1) != y)
        out[f"A' white-box {name}"] = percent(clean_copy & ~fools_copy)
        out[f"{name} from A': share of examples fooling A' that fool A too"] = round(
            100 * float((fools_copy & fools_a).sum()) / max(1, int((fools_copy & clean_a).sum())), 1)
        out[f"{name} from A': margin on A' at or below -50"] = percent(margin <= -50)
        out[f"{name} from A': median margin on A'"] = round(float(margin.median()), 2)
        print(name, "from A':", out[f"A' white-box {name}"], flush=True)

    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
