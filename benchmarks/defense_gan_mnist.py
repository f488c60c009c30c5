"""Defense-GAN on MNIST at CPU scale (docs/defenses/defense-gan.md): train the generator with
WGAN-GP, wrap the zoo's naturally trained classifier (``mnist-natural``, "Defense-GAN-Orig"),
and attack it with plain PGD (zero gradients), BPDA (identity) and reparameterization, at L2
budgets given on the command line (Athalye et al.'s 0.005 per-pixel MSE is L2 ≈ 1.98).

Judged three ways: on the deployed defense (one fresh projection draw: the attack's own
success check), on three more draws (correct in all / any), and, for reparameterization, "in
principle" by the classifier on the attack's point itself (an exact projection would return it).
Also reported: the projection error of the clean images and of the reparameterization's points
(which lie on the range of G up to the budget's clipping, so an exact projection has error 0
there).

Benchmark code: it prints; it reseeds nothing but its own generators. JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from robustlab import zoo
from robustlab.attacks import BPDA, PGD, Reparameterization
from robustlab.data import load_dataset
from robustlab.models import load_model
from robustlab.models.defensegan import DefenseGAN, build_generator, load_generator, project, save_generator, train_wgan_gp
from robustlab.threat import L2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", type=Path, default=Path(__file__).resolve().parent / ".cache" / "defense-gan-mlp.safetensors")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--eps", type=float, nargs="+", default=[2.0, 5.0])
    parser.add_argument("--steps", type=int, default=100, help="projection steps L")
    parser.add_argument("--restarts", type=int, default=10, help="projection restarts R")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record: dict = {"settings": vars(args) | {"generator": str(args.generator), "out": str(args.out)}}
    if args.generator.exists():
        g = load_generator(args.generator)
    else:
        train = load_dataset("mnist", split="train", limit=20000, seed=0)
        g = build_generator((1, 28, 28), layout="mlp", width=256, latent=32, seed=0)
        start = time.perf_counter()
        history = train_wgan_gp(g, train.x, iterations=args.iterations, seed=0)
        record["training"] = {"seconds": round(time.perf_counter() - start, 1), "wasserstein": history}
        save_generator(g, args.generator)
    test = load_dataset("mnist", split="test", limit=args.images, seed=0)
    x, y = test.x, test.y
    f, _ = load_model(zoo.checkpoint("mnist-natural"))
    f.eval()
    defended = DefenseGAN(f, gan=g, steps=args.steps, restarts=args.restarts,
                          generator=torch.Generator().manual_seed(1)).eval()
    with torch.no_grad():
        z, error = project(g, x, steps=args.steps, restarts=args.restarts, rng=torch.Generator().manual_seed(2))
        record["clean"] = {"classifier": _acc(f(x), y), "defended": _acc(f(g(z)), y),
                           "projection_mse": float(error.mean()), "projection_l2": float((error * x[0].numel()).sqrt().mean())}
    print(json.dumps(record["clean"]), flush=True)
    rows = []
    for eps in args.eps:
        threat = L2(eps=eps)
        attacks = {
            "pgd (undefended classifier)": (PGD(steps=20), f),
            "pgd (naive)": (PGD(steps=20), defended),
            "bpda-pgd": (BPDA(PGD(steps=20)), defended),
            "reparameterization": (Reparameterization(decoder=g, encoder=defended.encode, classifier=f, steps=50,
                                                      step_size=0.05), defended),
        }
        for name, (attack, model) in attacks.items():
            start = time.perf_counter()
            result = attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                draws = torch.stack([defended(result.x_adv).argmax(1) == y for _ in range(3)])
                _, adv_error = project(g, result.x_adv, steps=args.steps, restarts=args.restarts,
                                       rng=torch.Generator().manual_seed(3))
                row = {"eps": eps, "attack": name, "accuracy": 1 - float(result.success.float().mean()),
                       "in_principle": _acc(f(result.x_adv), y), "all_3_draws": float(draws.all(0).float().mean()),
                       "any_3_draws": float(draws.any(0).float().mean()),
                       "l2": float((result.x_adv - x).flatten(1).norm(dim=1).mean()),
                       "projection_mse_of_x_adv": float(adv_error.mean()),
                       "seconds": round(time.perf_counter() - start, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    record["rows"] = rows
    if args.out is not None:
        args.out.write_text(json.dumps(record, indent=1) + "\n")


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


if __name__ == "__main__":
    sys.exit(main())
