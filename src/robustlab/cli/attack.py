"""``robustlab attack``: run one attack; save the adversarial inputs, a PNG grid and a summary."""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch

from robustlab.cli.loading import ModelRequest, load_defended_model, threat, wrap_attacks
from robustlab.cli.options import add_attack_options, check_out_folder, parse_attack


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from robustlab.attacks.base import TARGET_MODES

    p: argparse.ArgumentParser = sub.add_parser("attack", help="run one attack; save adversarial inputs and a PNG grid")
    add_attack_options(p, eps_required=True)
    p.add_argument("--attack", required=True, help="NAME[:key=value,...], e.g. pgd:steps=40,step_size=0.01")
    p.add_argument("--targets", choices=TARGET_MODES, help="targeted attack")
    p.add_argument("--out", required=True)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from robustlab._progress import progress_bar
    from robustlab.report.grid import save_examples

    out = check_out_folder(args.out)
    requested = threat(args.norm, args.eps)  # a bad --norm or --eps fails before the model and data are loaded
    request = ModelRequest.from_args(args)
    model, card, data, device = load_defended_model(request)
    (attack,) = wrap_attacks({"attack": parse_attack(args.attack)}, bpda=request.bpda, eot=request.eot).values()
    threat_model = requested.with_bounds(tuple(card.input_bounds))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    outputs: dict[str, list[torch.Tensor]] = {k: [] for k in ("x_adv", "success", "distance", "predictions", "clean")}
    start = time.perf_counter()
    for i in progress_bar(range(0, len(data), args.batch_size), desc=attack.name, disable=args.quiet):
        x, y = data.x[i:i + args.batch_size].to(device), data.y[i:i + args.batch_size].to(device)
        result = attack(model, x, y, threat=threat_model, targets=args.targets, generator=generator)
        with torch.no_grad():
            outputs["clean"].append(model(x).argmax(1).cpu())
        for key in ("x_adv", "success", "distance", "predictions"):
            outputs[key].append(getattr(result, key).cpu())
    merged = {k: torch.cat(v) for k, v in outputs.items()}
    summary = {"attack": attack.config(), "defenses": card.defenses, "threat": str(threat_model), "samples": len(data),
               "success_rate": float(merged["success"].float().mean()) if len(data) else math.nan,
               "median_distance": float(merged["distance"].median()) if len(data) else math.nan,
               "wall_time_s": round(time.perf_counter() - start, 3)}
    save_examples(out, x=data.x, y=data.y, x_adv=merged["x_adv"], clean=merged["clean"],
                  adversarial=merged["predictions"], success=merged["success"], distance=merged["distance"],
                  indices=data.indices, summary=summary, classes=data.classes, norm=threat_model.norm,
                  bounds=tuple(card.input_bounds))
    print((out / "summary.json").read_text(encoding="utf-8").rstrip())  # strict JSON: NaN is null
    print(f"wrote {out}/adversarial.safetensors, {out}/grid.png, {out}/summary.json")
    return 0
