"""EOT-APGD-CE against a randomized model with and without the wrapped attack's early stop.

EOT turns the wrapped attack's early stop off (``robustlab.attacks.EOT``): this measures why.
The early-stopping variant is built as EOT ran it before, by putting the attack back unchanged.
Reported per variant: accuracy under the single fresh draw the template checks, the mean accuracy
over 20 more draws of the returned points (the expectation a single draw estimates), the share of
points classified correctly by at least one of those draws, and the backward passes.

    ROBUSTLAB_DATA=../shared/data python benchmarks/eot_full_budget.py [--model mnist-ode-cnn-ird] [--images 200]
"""

from __future__ import annotations

import argparse
import time

import torch

from robustlab import zoo
from robustlab.attacks import APGD, EOT
from robustlab.data.loading import load_dataset
from robustlab.threat import Linf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-ode-cnn-ird", help="a randomized zoo model")
    parser.add_argument("--images", type=int, default=200, help="the first N test images")
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--draws", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)  # the model's randomization draws from torch's global generator
    model = zoo.load(args.model)
    data = load_dataset(zoo.card(args.model).dataset, split="test")
    x, y = data.x[:args.images], data.y[:args.images]
    whole = EOT(APGD(loss="ce", steps=100), draws=args.draws)
    early = EOT(APGD(loss="ce", steps=100), draws=args.draws)
    object.__setattr__(early, "attack", APGD(loss="ce", steps=100, early_stop=True))
    for label, attack in (("early stop (before)", early), ("whole budget (EOT now)", whole)):
        start = time.perf_counter()
        result = attack(model, x, y, threat=Linf(eps=args.eps), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            correct = torch.stack([model(result.x_adv).argmax(1) == y for _ in range(20)]).float().mean(0)
        print(f"{label}: one draw {100 * (~result.success).float().mean():.1f}%, mean over 20 draws "
              f"{100 * correct.mean():.1f}%, correct in >= 1 of 20 draws {100 * (correct > 0).float().mean():.1f}%, "
              f"{result.backwards} backward passes, {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
