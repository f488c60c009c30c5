"""Why BPDA falls short on PixelDefend in ``robustlab reproduce athalye-table1`` (issue 20;
numbers in docs/defenses/pixeldefend.md). Uses the reproduction's own Fashion-MNIST classifier
and PixelCNN (16 levels) from ``--cache-dir`` (trained and cached there if absent) and its first
``--images`` test images, window 2 levels, and measures:

* clean accuracy of the bare classifier and of the defended model;
* the bare classifier under PGD-40 at each ``--eps``, and transfer (that point, purified);
* the bare classifier under PGD-40 perturbing only the pixels whose clean level is not 0
  (what is left to an attack whose perturbation the purifier erases on the background);
* how much of the bare attack's perturbation (at ``--probe-eps``), in levels, survives
  purification, on background pixels (clean level 0) and on the others;
* optionally BPDA (identity) PGD-``--bpda-steps`` at each ``--bpda-eps`` (costly: one
  purification, 784 PixelCNN passes, per step).

Benchmark code: it prints; it reseeds nothing but its own generators. JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from robustlab.attacks import BPDA, PGD
from robustlab.models.pixeldefend import PixelDefend, quantize
from robustlab.reproduce import athalye
from robustlab.reproduce.registry import ReproOptions
from robustlab.threat import Linf


class _ObjectOnly(nn.Module):
    """The classifier seeing a perturbation only where ``mask`` is set (``x`` elsewhere)."""

    def __init__(self, classifier: nn.Module, x: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        self.classifier, self.x, self.mask = classifier, x, mask

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.where(self.mask, z, self.x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, required=True, help="the reproduction's --cache-dir")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--eps", default="0.05,0.1,0.15,0.2")
    parser.add_argument("--probe-eps", type=float, default=0.1)
    parser.add_argument("--bpda-eps", default="", help="comma-separated; empty: no BPDA")
    parser.add_argument("--bpda-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    options = ReproOptions(cache_dir=args.cache_dir)
    scale = athalye._scale(options)
    path, _ = athalye._pixelcnn(scale, options)
    classifier, _ = athalye._trained("pixel-classifier", scale, options, dataset=scale.pixel_dataset)
    test = athalye._load(scale, options, "test", args.images, dataset=scale.pixel_dataset)
    x, y = test.x, test.y
    levels = scale.pixel_levels
    model = PixelDefend(classifier, purifier=path, eps=scale.pixel_window / (levels - 1)).eval()

    def accuracy(net: nn.Module, z: torch.Tensor) -> float:
        with torch.no_grad():
            return float((net(z).argmax(1) == y).float().mean())

    def pgd40(net: nn.Module, eps: float):
        return PGD(steps=40, step_size=2.5 * eps / 40)(net, x, y, threat=Linf(eps),
                                                       generator=torch.Generator().manual_seed(13))

    with torch.no_grad():
        purified = model.transform(x)
    result: dict = {"images": len(y), "levels": levels, "window_levels": scale.pixel_window,
                    "clean_bare": accuracy(classifier, x), "clean_defended": accuracy(classifier, purified)}
    print(result, flush=True)
    background = quantize(x, levels) == 0
    result["background_fraction"] = float(background.float().mean())
    result["bare"], result["object_only"] = {}, {}
    for eps in [float(e) for e in args.eps.split(",")]:
        attacked = pgd40(classifier, eps)
        result["bare"][str(eps)] = 1 - float(attacked.success.float().mean())
        result["object_only"][str(eps)] = 1 - float(pgd40(_ObjectOnly(classifier, x, ~background).eval(),
                                                         eps).success.float().mean())
        print(eps, result["bare"][str(eps)], result["object_only"][str(eps)], flush=True)
        if eps == args.probe_eps:
            with torch.no_grad():
                purified_adv = model.transform(attacked.x_adv)
            result["transfer"] = accuracy(classifier, purified_adv)
            moved_in = quantize(attacked.x_adv, levels) - quantize(x, levels)
            moved_out = quantize(purified_adv, levels) - quantize(purified, levels)
            for name, region in (("background", background), ("other", ~background)):
                result[f"survives_{name}"] = {
                    "perturbed": float(((moved_in != 0) & region).sum() / region.sum()),
                    "perturbed_after_purification": float(((moved_out != 0) & region).sum() / region.sum()),
                    "pass_through": float((moved_out * moved_in * region).sum()
                                          / (moved_in * moved_in * region).sum().clamp(min=1)),
                }
            print({k: v for k, v in result.items() if k.startswith(("transfer", "survives"))}, flush=True)
    result["bpda"] = {}
    for eps in [float(e) for e in args.bpda_eps.split(",") if e]:
        start = time.perf_counter()
        attack = BPDA(PGD(steps=args.bpda_steps, step_size=2.5 * eps / args.bpda_steps))
        attacked = attack(model, x, y, threat=Linf(eps), generator=torch.Generator().manual_seed(9))
        result["bpda"][str(eps)] = {"accuracy": 1 - float(attacked.success.float().mean()),
                                    "bare_at_its_point": accuracy(classifier, attacked.x_adv),
                                    "seconds": round(time.perf_counter() - start, 1)}
        print(eps, result["bpda"][str(eps)], flush=True)
    print(json.dumps(result, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
