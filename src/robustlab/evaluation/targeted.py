"""The Carlini–Wagner targeted protocol (C&W, S&P 2017, Sec. VI and Tables IV–VI).

Every clean-correct sample is attacked, unbounded, towards each of the ``K - 1`` other classes.
Per sample, from the ``K - 1`` verified minimal distances:

- **best case**: the smallest distance over targets (the easiest target);
- **average case**: the distance to one target drawn uniformly from the ``K - 1`` (paper:
  "the average case: a random target"), from a generator seeded from ``seed``;
- **worst case**: the largest distance over targets (the hardest), ``inf`` if some target failed.

For each case the paper's tables give the success rate and the mean distance over the
successful samples; :attr:`TargetedEvaluation.metrics` gives both (and the median).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.attacks.base import Attack
from robustlab.errors import RobustlabError
from robustlab.evaluation.metrics import accuracy
from robustlab.evaluation.minimum_norm import (
    check_minimum_norm,
    median_of,
    verified,
    warn_mismatch,
)
from robustlab.evaluation.provenance import provenance
from robustlab.evaluation.runner import Step, block_seed, run_blocks
from robustlab.io import header, inf_from_json, read_document, save_json
from robustlab.settings import RunSettings
from robustlab.threat import ThreatModel, require_unbounded

__all__ = ["CASES", "TargetedEvaluation", "evaluate_targeted"]

CASES = ("best", "average", "worst")


@dataclass
class TargetedEvaluation:
    """Per-sample results of the C&W targeted protocol.

    ``samples`` holds one dict per sample: ``index``, ``label``, ``clean_prediction``,
    ``attacked`` (clean-correct; misclassified samples are not attacked and are left out of
    every statistic), ``targets`` (``{str(class): verified distance}`` for the ``K - 1`` other
    classes, ``inf`` = failed; empty when not attacked), ``random_target`` (the average-case
    target, drawn for every sample), ``best``/``average``/``worst`` distances with
    ``best_target``/``worst_target``, and ``forwards``/``backwards``: the model passes spent on
    the sample. In JSON, ``inf`` is written as ``null``.

    ``passes`` holds the total model passes (``{"forwards", "backwards", "clean": {...},
    "steps": {"ATTACK/target+j": {...}}}``, see :mod:`robustlab.evaluation.runner`); ``cost``
    the attack runs and their passes (``{"runs", "forwards", "backwards"}``, as before ``passes``).
    ``num_classes`` is ``None`` only for an evaluation of no samples.
    """

    threat: ThreatModel
    attack: dict[str, Any]
    num_classes: int | None
    samples: list[dict[str, Any]]
    cost: dict[str, int] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    model_card: dict[str, Any] | None = None
    passes: dict[str, Any] = field(default_factory=dict)

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
                "median_distance": median_of(found),
            }
        runs = sum(len(s["targets"]) for s in self.samples)
        mismatches = sum(int(s.get("mismatches", 0)) for s in self.samples)
        return {"samples": n, "norm": self.norm, "num_classes": self.num_classes,
                "clean_accuracy": accuracy(attacked, n), "runs": runs, "cases": cases,
                "reported_distance_mismatches": mismatches}

    def to_dict(self) -> dict[str, Any]:
        return {**header("targeted"), "threat": self.threat.to_dict(), "attack": self.attack,
                "num_classes": self.num_classes, "metrics": self.metrics, "cost": self.cost, "passes": self.passes,
                "provenance": self.provenance, "model_card": self.model_card, "samples": self.samples}

    def save(self, path: str | Path) -> Path:
        """Write as JSON (atomically); ``inf`` distances become ``null``."""
        return save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TargetedEvaluation:
        return cls.from_dict(read_document(path, "targeted"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetedEvaluation:
        """The evaluation :meth:`to_dict` gave, as read from strict JSON (``null`` distances are ``inf``)."""
        samples = data["samples"]
        for s in samples:
            s["targets"] = {t: inf_from_json(d) for t, d in s["targets"].items()}
            if s["attacked"]:
                for case in CASES:
                    s[case] = inf_from_json(s[case])
        return cls(threat=ThreatModel.from_dict(data["threat"]), attack=data["attack"],
                   num_classes=data["num_classes"], samples=samples, cost=data.get("cost", {}),
                   provenance=data.get("provenance", {}), model_card=data.get("model_card"), passes=data.get("passes", {}))


def evaluate_targeted(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    attack: Attack,
    threat: ThreatModel,
    settings: RunSettings = RunSettings(),
    indices: Tensor | None = None,
    num_classes: int | None = None,
    model_card: dict[str, Any] | None = None,
    state_file: str | Path | None = None,
    resume: bool = True,
    distributed: bool = False,
) -> TargetedEvaluation:
    """The C&W targeted protocol: every clean-correct sample against all ``K - 1`` other classes.

    Runs on the block runner shared by the three evaluation modes (:mod:`robustlab.evaluation.runner`):
    input and logit checks, blocks, seeds, state file, resume, sharding and cost as in
    :func:`~robustlab.evaluation.evaluate`.

    Args:
        x, y: ``[N, ...]`` inputs inside ``threat.bounds`` and ``[N]`` integer labels, on the model's device.
        attack: a minimum-norm attack supporting ``threat.norm`` (e.g. ``CarliniWagnerL2``, ``DDN``,
            ``FMN``, ``DeepFool``, ``JSMA``), run under ``threat`` with explicit target tensors.
        threat: the unbounded threat model (``eps = math.inf``, e.g. ``L2(math.inf)``;
            :func:`~robustlab.threat.require_unbounded`).
        settings: seed, batch size, progress bar and device (:class:`~robustlab.settings.RunSettings`).
            ``batch_size``: samples per block. Each block is attacked in ``K - 1`` steps, step ``j``
            towards the classes ``(y + j) % K``: at most ``batch_size`` rows per attack call.
            ``seed``: the call of step ``j`` on a block draws from a generator seeded from ``seed``, the
            step's name (``"ATTACK/target+j"``) and the block's first position, as in
            :func:`evaluate`; the average-case targets are drawn for all ``N`` samples (attacked or
            not, so the draw for a sample does not depend on the others, nor on ``batch_size``)
            from a CPU generator seeded with ``block_seed(seed, "random-target", 0)``.
        num_classes: if given, the model must have that many outputs (``K``).
        state_file, resume, distributed: as in :func:`~robustlab.evaluation.evaluate`.

    Samples misclassified clean are not attacked and are excluded from every case statistic.

    Cost: one clean forward per sample plus ``K - 1`` attack runs per clean-correct sample
    (``cost["runs"]``; the attack's forwards and backwards are summed in ``cost``), and a
    forward per run whose success the attack's bookkeeping contradicts; recorded per sample and
    in ``passes``.
    """
    require_unbounded(threat, "evaluate_targeted")
    name = attack.name if isinstance(attack, Attack) and attack.name else "attack"
    check_minimum_norm(attack, name, threat)

    def steps(k: int | None) -> list[Step]:
        if k is None:
            return []
        if k < 2:
            raise RobustlabError(f"the targeted protocol needs a model with at least 2 classes, got {k}")
        return [Step(f"{name}/target+{j}", attack, target_offset=j) for j in range(1, k)]

    run = run_blocks(model, x, y, threat=threat, attacks={name: attack}, steps=steps, mode="targeted",
                     indices=indices, num_classes=num_classes, settings=settings, verify=True,
                     state_file=state_file, resume=resume, distributed=distributed)
    table, k = run.table, run.table.num_classes
    n = len(run.labels)
    random_targets = [None] * n
    if k is not None:
        draw = torch.randint(1, k, (n,), generator=torch.Generator().manual_seed(block_seed(settings.seed, "random-target", 0)))
        random_targets = ((torch.tensor(run.labels, dtype=torch.int64) + draw) % k).tolist()
    samples = []
    mismatches = 0
    for i, (label, index) in enumerate(zip(run.labels, run.indices)):
        row: dict[str, Any] = {"index": index, "label": label, "clean_prediction": table.clean_prediction[i],
                               "random_target": random_targets[i], "attacked": run.correct(i)}
        if run.correct(i):
            assert k is not None
            found = {str((label + j) % k): verified(run, f"{name}/target+{j}", i) for j in range(1, k)}
            dist = {t: d for t, (d, _, _) in found.items()}
            best_target = min(dist, key=lambda t: dist[t])
            worst_target = max(dist, key=lambda t: dist[t])
            flagged = sum(1 for _, _, bad in found.values() if bad)
            mismatches += flagged
            row.update(targets=dist, best=dist[best_target], best_target=int(best_target),
                       average=dist[str(random_targets[i])], worst=dist[worst_target],
                       worst_target=int(worst_target), mismatches=flagged)
        else:
            row.update(targets={}, best=None, best_target=None, average=None, worst=None, worst_target=None)
        row.update(forwards=table.forwards[i], backwards=table.backwards[i])
        samples.append(row)
    runs = sum(c["samples"] for c in table.step_cost.values())
    if mismatches:
        warn_mismatch(attack.name or type(attack).__name__, mismatches, runs)
    record = provenance(seed=settings.seed, device=x.device, wall_time=table.wall_time)
    record["processes"] = run.processes
    return TargetedEvaluation(
        threat=threat,
        attack=attack.config(),
        num_classes=k,
        samples=samples,
        cost={"runs": runs, "forwards": sum(c["forwards"] for c in table.step_cost.values()),
              "backwards": sum(c["backwards"] for c in table.step_cost.values())},
        provenance=record,
        model_card=model_card,
        passes=table.passes,
    )
