"""Is bfloat16 autocast worth it, and safe, for adversarial training on this CPU?

Two measurements on the zoo's CIFAR-10 network (WRN-16-2, channels-last, batch 128, one thread):

1. Speed: CPU seconds of one forward and backward pass (gradient with respect to the input, as
   an attack step takes it) in float32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
2. Direction: the fraction of pixels where the sign of the attack's input gradient under
   bfloat16 equals float32's, at the inner attacks' starting points: PGD's (uniform in the eps
   ball; cross-entropy) and TRADES' (``x + 0.001 * N(0, I)``; the KL to the clean prediction,
   nearly 0 there), and for TRADES after one sign step of 0.007. On ``zoo:cifar10-natural`` and
   on the untrained network.

3. TRADES' inner maximization (10 steps of 0.007 from its start, eval mode): the KL it reaches
   (measured in float32) and the share of pixels where it ends where the float32 loop ends, in
   float32, all in bfloat16, and as robustlab runs it under mixed precision (clean logits and
   first step in float32, the other steps in bfloat16).

Sign agreement near 1 means autocast changes the attack's steps little (PGD moves by the sign);
near 0.5 means the step is noise. Recipes turn ``mixed_precision`` on from these numbers.

    PYTHONPATH=src ROBUSTLAB_DATA=../shared/data python benchmarks/mixed_precision_cpu.py
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab import zoo
from robustlab.data import load_dataset
from robustlab.models import build_model
from robustlab.threat import threat_model
from robustlab.training.adversarial import ascend
from robustlab.training.trades import START_STD, _kl

EPS = 8 / 255


def autocast(bf16: bool) -> AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def input_gradient(model: nn.Module, x: Tensor, loss, bf16: bool) -> Tensor:
    with autocast(bf16):
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(model(x)).sum(), x)
    return grad


def seconds_per_pass(model: nn.Module, x: Tensor, y: Tensor, bf16: bool, repeats: int) -> float:
    x = x.contiguous(memory_format=torch.channels_last)
    loss = lambda logits: F.cross_entropy(logits, y, reduction="none")  # noqa: E731
    for _ in range(2):
        input_gradient(model, x, loss, bf16)
    start = time.process_time()
    for _ in range(repeats):
        input_gradient(model, x, loss, bf16)
    return (time.process_time() - start) / repeats


def sign_agreement(model: nn.Module, x: Tensor, loss) -> float:
    g32, g16 = input_gradient(model, x, loss, False), input_gradient(model, x, loss, True)
    return float((g32.sign() == g16.sign()).float().mean())


def directions(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    pgd_start = (x + (torch.rand(x.shape, generator=generator) * 2 - 1) * EPS).clamp(0, 1)
    with torch.no_grad():
        clean = model(x)
    kl = lambda logits: _kl(clean, logits)  # noqa: E731
    trades_start = (x + START_STD * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    after_step = (trades_start + 0.007 * input_gradient(model, trades_start, kl, False).sign()).clamp(0, 1)
    return {
        "pgd_start": sign_agreement(model, pgd_start, lambda logits: F.cross_entropy(logits, y, reduction="none")),
        "trades_start": sign_agreement(model, trades_start, kl),
        "trades_after_one_step": sign_agreement(model, after_step, kl),
    }


def trades_inner(model: nn.Module, x: Tensor, start: Tensor, precision: str) -> Tensor:
    """TRADES' 10 inner steps of 0.007 at 8/255 from ``start``; ``precision``: "float32",
    "bfloat16" (everything under autocast) or "mixed" (clean logits and first step in float32)."""
    threat = threat_model("Linf", EPS)
    with autocast(precision == "bfloat16"), torch.no_grad():
        clean = model(x)
    kl = lambda logits: _kl(clean, logits)  # noqa: E731
    first_steps = 1 if precision == "mixed" else 0
    x_adv = ascend(model, x, start, kl, threat=threat, steps=first_steps, step_size=0.007)
    with autocast(precision != "float32"):
        return ascend(model, x, x_adv, kl, threat=threat, steps=10 - first_steps, step_size=0.007)


def trades_strength(model: nn.Module, x: Tensor) -> dict[str, dict[str, float]]:
    start = (x + START_STD * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    ends = {precision: trades_inner(model, x, start, precision) for precision in ("float32", "bfloat16", "mixed")}
    with torch.no_grad():
        clean = model(x)
        return {precision: {"kl": float(_kl(clean, model(end)).mean()),
                            "same_end_as_float32": float((end == ends["float32"]).float().mean())}
                for precision, end in ends.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6, help="timed passes per precision")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    test = load_dataset("cifar10", split="test", limit=128, seed=3)
    untrained = build_model("wide-resnet", input_shape=(3, 32, 32), num_classes=10, depth=16, width=2).eval()
    models = {"zoo:cifar10-natural": zoo.load("cifar10-natural"), "untrained": untrained}
    trained = models["zoo:cifar10-natural"].to(memory_format=torch.channels_last).train()
    result = {
        "seconds_per_pass": {precision: seconds_per_pass(trained, test.x, test.y, precision == "bfloat16", args.repeats)
                             for precision in ("float32", "bfloat16")},
        "sign_agreement": {name: directions(model.eval(), test.x, test.y) for name, model in models.items()},
        "trades_inner": {name: trades_strength(model.eval(), test.x) for name, model in models.items()},
    }
    speed = result["seconds_per_pass"]
    result["speedup"] = speed["float32"] / speed["bfloat16"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
