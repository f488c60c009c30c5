"""The Carlini–Wagner targeted protocol (C&W, S&P 2017, Sec. VI and Tables IV–VI).

Every clean-correct sample is attacked, unbounded, towards each of the ``K - 1`` other classes.
Per sample, from the ``K - 1`` verified minimal distances:

- **best case**: the smallest distance over targets (the easiest target);
- **average case**: the distance to one target drawn uniformly from the ``K - 1`` (paper:
  "the average case: a random target"), from a generator seeded with ``seed``;
- **worst case**: the largest distance over targets (the hardest), ``inf`` if some target failed.

For each case the paper's tables give the success rate and the mean distance over the
successful samples; :attr:`TargetedEvaluation.metrics` gives both (and the median).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.attacks.base import Attack
from robustlab.errors import RobustlabError
from robustlab.evaluation.evaluate import save_json, threat_dict
from robustlab.evaluation.metrics import accuracy
from robustlab.evaluation.minimum_norm import (
    _median,
    check_batch,
    check_minimum_norm,
    clean_logits,
    cross_check,
    inf_from_json,
    unbounded_threat,
    verified_distances,
    warn_mismatch,
)
from robustlab.evaluation.provenance import provenance
from robustlab.threat import ThreatModel, threat_model

__all__ = ["CASES", "TargetedEvaluation", "evaluate_targeted"]

CASES = ("best", "average", "worst")


@dataclass
class TargetedEvaluation:
    """Per-sample results of the C&W targeted protocol.

    ``samples`` holds one dict per sample: ``index``, ``label``, ``clean_prediction``,
    ``attacked`` (clean-correct; misclassified samples are not attacked and are left out of
    every statistic), ``targets`` (``{str(class): verified distance}`` for the ``K - 1`` other
    classes, ``inf`` = failed; empty when not attacked), ``random_target`` (the average-case
    target, drawn for every sample), and ``best``/``average``/``worst`` distances with
    ``best_target``/``worst_target``. In JSON, ``inf`` is written as ``null``.
    """

    threat: ThreatModel
    attack: dict[str, Any]
    num_classes: int
    samples: list[dict[str, Any]]
    cost: dict[str, int] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    model_card: dict[str, Any] | None = None

    @property
    def norm(self) -> str:
        return self.threat.norm

    def case_distances(self, case: str) -> list[float]:
        """Per attacked sample, the ``"best"``, ``"average"`` or ``"worst"`` case distance."""
        if case not in CASES:
            raise RobustlabError(f"unknown case {case!r}; choose one of {CASES}")
        return [s[case] for s in self.samples if s["attacked"]]

    @property
    def metrics(self) -> dict[str, Any]:
        """Per case: ``success_rate`` (over the attacked samples), ``mean_distance`` and
        ``median_distance`` over the successful ones (the paper's Table IV/VI columns), and the
        number of successes."""
        n = len(self.samples)
        attacked = sum(1 for s in self.samples if s["attacked"])
        cases = {}
        for case in CASES:
            found = sorted(d for d in self.case_distances(case) if math.isfinite(d))
            cases[case] = {
                "attacked": attacked,
                "successes": len(found),
                "success_rate": len(found) / attacked if attacked else math.nan,
                "mean_distance": sum(found) / len(found) if found else math.nan,
                "median_distance": _median(found),
            }
        runs = sum(len(s["targets"]) for s in self.samples)
        mismatches = sum(int(s.get("mismatches", 0)) for s in self.samples)
        return {"samples": n, "norm": self.norm, "num_classes": self.num_classes,
                "clean_accuracy": accuracy(attacked, n), "runs": runs, "cases": cases,
                "reported_distance_mismatches": mismatches}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "targeted", "threat": threat_dict(self.threat), "attack": self.attack,
                "num_classes": self.num_classes, "metrics": self.metrics, "cost": self.cost,
                "provenance": self.provenance, "model_card": self.model_card, "samples": self.samples}

    def save(self, path: str | Path) -> Path:
        """Write as JSON (atomically); ``inf`` distances become ``null``."""
        return save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "TargetedEvaluation":
        data = json.loads(Path(path).read_text())
        if data.get("kind") != "targeted":
            raise RobustlabError(f"{path} is not a targeted evaluation (kind={data.get('kind')!r})")
        samples = data["samples"]
        for s in samples:
            s["targets"] = {t: inf_from_json(d) for t, d in s["targets"].items()}
            if s["attacked"]:
                for case in CASES:
                    s[case] = inf_from_json(s[case])
        t = data["threat"]
        return cls(threat=threat_model(t["norm"], inf_from_json(t["eps"]), tuple(t["bounds"])), attack=data["attack"],
                   num_classes=data["num_classes"], samples=samples, cost=data.get("cost", {}),
                   provenance=data.get("provenance", {}), model_card=data.get("model_card"))


def evaluate_targeted(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    attack: Attack,
    norm: str,
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 256,
    seed: int = 0,
    indices: Tensor | None = None,
    model_card: dict[str, Any] | None = None,
    progress: bool = False,
) -> TargetedEvaluation:
    """The C&W targeted protocol: every clean-correct sample against all ``K - 1`` other classes.

    Args:
        x, y: ``[N, ...]`` inputs inside ``bounds`` and ``[N]`` labels, on the model's device.
        attack: a minimum-norm attack supporting ``norm`` (e.g. ``CarliniWagnerL2``, ``DDN``,
            ``FMN``, ``DeepFool``, ``JSMA``), run under ``threat_model(norm, math.inf, bounds)``
            with explicit target tensors.
        batch_size: rows per attack call; each sample is repeated ``K - 1`` times (one row per
            target), so a call covers about ``batch_size / (K - 1)`` samples.
        seed: the attack's generator is seeded with ``seed * 1000``; the average-case targets
            are drawn for all ``N`` samples (attacked or not, so the draw for a sample does not
            depend on the others) from a CPU generator seeded with ``seed * 1000 + 1``.

    Samples misclassified clean are not attacked and are excluded from every case statistic.

    Cost: one clean forward per sample plus ``K - 1`` attack runs per clean-correct sample
    (``cost["runs"]``; the attack's forwards and backwards are summed in ``cost``).
    """
    threat = unbounded_threat(norm, bounds)
    check_minimum_norm(attack, attack.name if isinstance(attack, Attack) and attack.name else "attack", threat)
    indices = check_batch(x, y, batch_size, indices)
    n = x.shape[0]
    start = time.perf_counter()
    device = x.device

    clean_pred = clean_logits(model, x, batch_size)
    k = clean_pred.shape[1]
    clean_pred = clean_pred.argmax(dim=1)
    if k < 2:
        raise RobustlabError(f"the targeted protocol needs a model with at least 2 classes, got {k}")
    if n and (int(y.min()) < 0 or int(y.max()) >= k):
        raise RobustlabError(f"labels must lie in [0, {k}) for a model with {k} outputs")
    target_gen = torch.Generator().manual_seed(seed * 1000 + 1)
    random_targets = ((y.cpu() + torch.randint(1, k, (n,), generator=target_gen)) % k).tolist()

    correct = torch.nonzero(clean_pred == y).flatten()
    # Row r attacks sample correct[r // (k - 1)] towards (y + 1 + r % (k - 1)) % k.
    rows = correct.repeat_interleave(k - 1)
    offsets = torch.arange(1, k, device=device).repeat(correct.numel())
    row_targets = (y[rows] + offsets) % k
    distances = torch.full((rows.numel(),), math.inf, dtype=torch.float64)
    generator = torch.Generator(device=device).manual_seed(seed * 1000)
    cost = {"runs": int(rows.numel()), "forwards": 0, "backwards": 0}
    mismatches = torch.zeros(rows.numel(), dtype=torch.int64)

    bar = tqdm(total=int(rows.numel()), desc="targeted", unit="run", disable=not progress, leave=False)
    for b in range(0, rows.numel(), batch_size):
        idx, targets = rows[b:b + batch_size], row_targets[b:b + batch_size]
        result = attack(model, x[idx], y[idx], threat=threat, targets=targets, generator=generator)
        cost["forwards"] += result.forwards
        cost["backwards"] += result.backwards
        verified, reported = verified_distances(result)
        distances[b:b + len(verified)] = torch.tensor(verified, dtype=torch.float64)
        mismatches[b:b + len(verified)] = torch.tensor(cross_check(model, result, verified, reported), dtype=torch.int64)
        bar.update(len(verified))
    bar.close()
    if int(mismatches.sum()):
        warn_mismatch(attack.name or type(attack).__name__, int(mismatches.sum()), int(rows.numel()))

    per_sample = distances.reshape(correct.numel(), k - 1).tolist()
    per_mismatch = mismatches.reshape(correct.numel(), k - 1).sum(dim=1).tolist()
    position = {i: p for p, i in enumerate(correct.tolist())}
    samples = []
    for i in range(n):
        row: dict[str, Any] = {"index": int(indices[i]), "label": int(y[i]), "clean_prediction": int(clean_pred[i]),
                               "random_target": random_targets[i], "attacked": i in position}
        if i in position:
            label = int(y[i])
            dist = {str((label + j) % k): per_sample[position[i]][j - 1] for j in range(1, k)}
            best_target = min(dist, key=lambda t: dist[t])
            worst_target = max(dist, key=lambda t: dist[t])
            row.update(targets=dist, best=dist[best_target], best_target=int(best_target),
                       average=dist[str(random_targets[i])], worst=dist[worst_target],
                       worst_target=int(worst_target), mismatches=per_mismatch[position[i]])
        else:
            row.update(targets={}, best=None, best_target=None, average=None, worst=None, worst_target=None)
        samples.append(row)
    return TargetedEvaluation(
        threat=threat,
        attack=attack.config(),
        num_classes=k,
        samples=samples,
        cost=cost,
        provenance=provenance(seed=seed, device=device, wall_time=time.perf_counter() - start),
        model_card=model_card,
    )
