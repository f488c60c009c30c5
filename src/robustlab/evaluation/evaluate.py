"""``evaluate()``: run attacks over a dataset and keep a per-sample table.

Every metric is derived from the per-sample table, never accumulated separately, so what a
report shows can always be traced back to individual samples.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.attacks.base import Attack
from robustlab.errors import RobustlabError
from robustlab.evaluation.metrics import accuracy
from robustlab.evaluation.provenance import provenance
from robustlab.threat import ThreatModel, threat_model

__all__ = ["Evaluation", "evaluate"]

CLEAN = "clean"  # broken_by value of samples the model already misclassifies


@dataclass
class Evaluation:
    """Per-sample results of an evaluation and the metrics derived from them.

    ``samples`` holds one dict per sample: ``index`` (in the original split), ``label``,
    ``clean_prediction``, ``broken_by`` (``"clean"`` if misclassified without attack, the name of
    the first attack in order that broke it, or ``None`` if robust), ``distance`` (of the
    breaking example; 0 for ``"clean"``), and per attack ``{"success", "distance"}`` (``None``
    where the attack did not run on that sample).
    """

    threat: ThreatModel
    attacks: dict[str, dict[str, Any]]
    samples: list[dict[str, Any]]
    provenance: dict[str, Any] = field(default_factory=dict)
    model_card: dict[str, Any] | None = None

    @property
    def metrics(self) -> dict[str, Any]:
        n = len(self.samples)
        correct = [s for s in self.samples if s["broken_by"] != CLEAN]
        robust = [s for s in correct if s["broken_by"] is None]
        per_attack = {}
        for name in self.attacks:
            ran = [s for s in correct if s["attacks"].get(name, {}).get("success") is not None]
            if len(ran) == len(correct):
                survived = sum(1 for s in ran if not s["attacks"][name]["success"])
                per_attack[name] = accuracy(survived, n)
        broken_by = {name: sum(1 for s in correct if s["broken_by"] == name) for name in self.attacks}
        return {
            "samples": n,
            "clean_accuracy": accuracy(len(correct), n),
            "robust_accuracy": accuracy(len(robust), n),
            "robust_accuracy_per_attack": per_attack,
            "broken_by": broken_by,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "threat": threat_dict(self.threat),
            "attacks": self.attacks,
            "metrics": self.metrics,
            "provenance": self.provenance,
            "model_card": self.model_card,
            "samples": self.samples,
        }

    def save(self, path: str | Path) -> Path:
        """Write the evaluation as JSON (atomically: a killed write leaves the old file)."""
        return save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Evaluation":
        data = json.loads(Path(path).read_text())
        t = data["threat"]
        eps = t["eps"] if t["eps"] is not None else math.inf
        return cls(threat=threat_model(t["norm"], eps, tuple(t["bounds"])), attacks=data["attacks"],
                   samples=data["samples"], provenance=data.get("provenance", {}), model_card=data.get("model_card"))


def threat_dict(threat: ThreatModel) -> dict[str, Any]:
    return {"norm": threat.norm, "eps": threat.eps, "bounds": list(threat.bounds)}


def save_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write JSON atomically (a killed write leaves the old file); ``inf`` becomes ``null``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=1, allow_nan=True))
    tmp.replace(path)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return None if value > 0 else value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _named(attacks: Sequence[Attack] | Mapping[str, Attack]) -> dict[str, Attack]:
    if isinstance(attacks, Mapping):
        named = dict(attacks)
    else:
        named = {}
        for attack in attacks:
            base, i = getattr(attack, "name", "") or type(attack).__name__, 1
            key = base
            while key in named:
                i += 1
                key = f"{base}-{i}"
            named[key] = attack
    if not named:
        raise RobustlabError("evaluate needs at least one attack")
    for key, attack in named.items():
        if not isinstance(attack, Attack):
            raise RobustlabError(f"{key!r} is not a robustlab Attack (got {type(attack).__name__})")
    return named


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    threat: ThreatModel,
    attacks: Sequence[Attack] | Mapping[str, Attack],
    batch_size: int = 256,
    seed: int = 0,
    cascade: bool = False,
    indices: Tensor | None = None,
    model_card: dict[str, Any] | None = None,
    progress: bool = False,
) -> Evaluation:
    """Attack every correctly classified sample with each attack and tabulate the results.

    Args:
        x, y: ``[N, ...]`` inputs inside ``threat.bounds`` and ``[N]`` labels, on the model's device.
        attacks: attacks in order (a mapping gives them names; a sequence is named by each
            attack's ``name``). The first attack in order that breaks a sample is credited.
        cascade: run each attack only on samples no earlier attack broke (faster; per-attack
            robust accuracies are then omitted, only the worst case is exact).
        indices: ``[N]`` indices of the samples in their original split (default ``arange``).
        seed: each attack gets its own generator seeded from ``seed`` and its position, so
            results do not depend on which other attacks ran.

    Cost: one clean forward per sample plus each attack's own cost on the samples it runs on.
    """
    named = _named(attacks)
    if batch_size < 1:
        raise RobustlabError(f"batch_size must be positive, got {batch_size}")
    if x.shape[0] != y.shape[0]:
        raise RobustlabError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels")
    n = x.shape[0]
    indices = torch.arange(n) if indices is None else indices
    start = time.perf_counter()
    device = x.device

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean_pred = torch.cat([model(x[i:i + batch_size]).argmax(dim=1) for i in range(0, n, batch_size)]) \
                if n else torch.empty(0, dtype=torch.int64, device=device)
    finally:
        model.train(was_training)
    correct = clean_pred == y
    broken_by: list[str | None] = [None if bool(c) else CLEAN for c in correct.tolist()]
    distance = [math.inf if bool(c) else 0.0 for c in correct.tolist()]
    per_attack: dict[str, list[dict[str, Any]]] = {name: [{"success": None, "distance": None} for _ in range(n)] for name in named}

    bar = tqdm(total=len(named) * n, desc="evaluate", unit="sample", disable=not progress, leave=False)
    for position, (name, attack) in enumerate(named.items()):
        generator = torch.Generator(device=device).manual_seed(seed * 1000 + position)
        alive = [i for i in range(n) if broken_by[i] is None or (not cascade and broken_by[i] != CLEAN)]
        bar.update(n - len(alive))
        bar.set_postfix(attack=name)
        for b in range(0, len(alive), batch_size):
            chunk = alive[b:b + batch_size]
            idx = torch.tensor(chunk, device=device)
            result = attack(model, x[idx], y[idx], threat=threat, generator=generator)
            for i, ok, d in zip(chunk, result.success.tolist(), result.distance.tolist()):
                per_attack[name][i] = {"success": ok, "distance": d}
                if ok and broken_by[i] is None:
                    broken_by[i], distance[i] = name, d
            bar.update(len(chunk))
    bar.close()

    samples = [
        {
            "index": int(indices[i]),
            "label": int(y[i]),
            "clean_prediction": int(clean_pred[i]),
            "broken_by": broken_by[i],
            "distance": distance[i],
            "attacks": {name: per_attack[name][i] for name in named},
        }
        for i in range(n)
    ]
    return Evaluation(
        threat=threat,
        attacks={name: attack.config() for name, attack in named.items()},
        samples=samples,
        provenance=provenance(seed=seed, device=device, wall_time=time.perf_counter() - start),
        model_card=model_card,
    )
