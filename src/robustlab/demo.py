"""``robustlab demo``: the whole pipeline on scikit-learn's bundled digits, in well under two
minutes on two CPU cores and with no download: train a small MLP, attack it with FGSM and
PGD, and write a report folder (Markdown and a self-contained HTML page)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from robustlab.attacks import FGSM, PGD, GaussianNoise
from robustlab.data import load_dataset, train_val_split
from robustlab.evaluation import evaluate
from robustlab.io import save_document
from robustlab.models import ModelCard, build_model, save_model
from robustlab.report import evaluation_markdown, write_report
from robustlab.report.grid import save_examples
from robustlab.settings import RunSettings
from robustlab.threat import Linf
from robustlab.training import TrainConfig, train

EPS = 0.1
CURVE_EPS = (0.02, 0.05, 0.1, 0.2)


def run_demo(out: Path, *, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Train, attack and report; returns ``{"model", "evaluation", "curve"}``."""
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    train_set, val_set = train_val_split(data, 0.1, seed=seed)
    hidden = [256, 256]
    model = build_model("mlp", input_shape=tuple(data.shape), num_classes=data.num_classes, hidden=hidden, seed=seed)
    config = TrainConfig(epochs=30, batch_size=64, optimizer="sgd", lr=0.05, weight_decay=5e-4, schedule="cosine", seed=seed)
    result = train(model, train_set.x, train_set.y, config=config, val_x=val_set.x, val_y=val_set.y,
                   checkpoint_dir=out / "checkpoints", resume=False, progress=progress)
    card = ModelCard(architecture="mlp", arguments={"input_shape": list(data.shape), "num_classes": data.num_classes, "hidden": hidden},
                     dataset="digits", training={"method": config.method, "config": vars(config)},
                     metrics={"best_val_acc": result.best_val_acc})
    save_model(model, out / "model", card)

    threat = Linf(eps=EPS)
    attacks = {"noise(sigma=25)": GaussianNoise(sigma=25.0), "fgsm": FGSM(), "pgd-20x2": PGD(steps=20, restarts=2)}
    ev = evaluate(model, test.x, test.y, threat=threat, attacks=attacks, settings=RunSettings(seed=seed, progress=progress),
                  indices=test.indices, model_card=card.to_dict())
    ev.save(out / "evaluation.json")

    curve = {}
    for eps in CURVE_EPS:
        r = PGD(steps=20)(model, test.x, test.y, threat=Linf(eps=eps), generator=torch.Generator().manual_seed(seed))
        correct = (model(test.x).argmax(1) == test.y) & ~r.success
        curve[eps] = float(correct.float().mean())
    save_document(out / "curve.json", "curve", {"attack": "pgd-20", "norm": "Linf", "robust_accuracy": curve})

    pgd = PGD(steps=20)
    adv = pgd(model, test.x[:8], test.y[:8], threat=threat, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        clean = model(test.x[:8]).argmax(1)
    save_examples(out, x=test.x[:8], y=test.y[:8], x_adv=adv.x_adv, clean=clean, adversarial=adv.predictions,
                  success=adv.success, distance=adv.distance, indices=test.indices[:8], classes=test.classes,
                  norm=threat.norm, summary={"attack": pgd.config(), "threat": str(threat), "samples": 8,
                                             "success_rate": float(adv.success.float().mean())})
    lines = [evaluation_markdown(ev, title="robustlab demo: MLP on scikit-learn digits"), "## PGD-20 robust accuracy against eps", "",
             "| eps | robust accuracy |", "|---|---|"]
    lines += [f"| {eps:g} | {100 * acc:.1f}% |" for eps, acc in curve.items()]
    lines += ["", "![clean / adversarial / perturbation](grid.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    write_report([out], out / "report.html", title="robustlab demo: MLP on scikit-learn digits")
    return {"model": "MLP 64-256-256-10", "evaluation": ev, "curve": curve}
