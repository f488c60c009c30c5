"""``evaluate()``: run attacks over a dataset and keep a per-sample table.

Every metric is derived from the per-sample table, never accumulated separately, so what a
report shows can always be traced back to individual samples.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from robustlab.attacks.base import Attack
from robustlab.errors import RobustlabError
from robustlab.evaluation.cascade import CLEAN, CascadeState, fingerprint, run_cascade
from robustlab.evaluation.distributed import all_gather, rank_and_world, shard_range
from robustlab.evaluation.metrics import accuracy
from robustlab.evaluation.provenance import provenance
from robustlab.threat import ThreatModel, threat_model

__all__ = ["CLEAN", "Evaluation", "evaluate"]


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
    state_file: str | Path | None = None,
    resume: bool = True,
    distributed: bool = False,
) -> Evaluation:
    """Attack every correctly classified sample with each attack and tabulate the results.

    Args:
        x, y: ``[N, ...]`` inputs inside ``threat.bounds`` and ``[N]`` labels, on the model's device.
        attacks: attacks in order (a mapping gives them names; a sequence is named by each
            attack's ``name``). The first attack in order that breaks a sample is credited.
        cascade: run each attack only on samples no earlier attack broke (faster; per-attack
            robust accuracies are then omitted, only the worst case is exact).
        indices: ``[N]`` indices of the samples in their original split (default ``arange``).
        seed: each attack gets one generator per block of ``batch_size`` samples, seeded from
            ``seed``, the attack's name and the block's position (see
            :mod:`robustlab.evaluation.cascade`): results do not depend on which other attacks ran
            (without cascade), on resuming, or on sharding; they do depend on ``batch_size``.
        state_file: write the per-sample state there after every block and attack, and resume
            from it if it exists (and ``resume``). A state file of another model, data, threat
            model, attack list, seed, batch size or cascade setting is refused. Under
            ``distributed`` each rank uses its own file, ``NAME.rankR-of-W.SUFFIX``.
        distributed: split the samples over the ranks of the initialized ``torch.distributed``
            process group (:mod:`robustlab.evaluation.distributed`); every rank returns the
            merged evaluation, identical to a single-process run.

    Cost: one clean forward per sample plus each attack's own cost on the samples it runs on;
    one hash of the data and weights (the fingerprint that recognises a state file); with
    ``state_file``, one JSON write of the table per block and step.
    """
    named = _named(attacks)
    if batch_size < 1:
        raise RobustlabError(f"batch_size must be positive, got {batch_size}")
    if x.shape[0] != y.shape[0]:
        raise RobustlabError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels")
    n = x.shape[0]
    indices = torch.arange(n) if indices is None else indices
    rank, world = rank_and_world() if distributed else (0, 1)
    start, stop = shard_range(n, batch_size, rank, world)
    fp = fingerprint(model, x, y, indices, threat=threat, attacks=named, seed=seed, batch_size=batch_size,
                     cascade=cascade)
    if world > 1:
        if len({(f["data"], f["model"]) for f in all_gather(fp)}) > 1:
            raise RobustlabError("the ranks of the process group hold different data or model weights; "
                                 "every rank must load the same ones")
        if state_file is not None:
            state_file = Path(state_file)
            state_file = state_file.with_name(f"{state_file.stem}.rank{rank}-of-{world}{state_file.suffix}")
    state = run_cascade(model, x, y, threat=threat, attacks=named, fingerprint=fp, batch_size=batch_size, seed=seed,
                        cascade=cascade, start=start, stop=stop, state_file=state_file, resume=resume,
                        progress=progress and rank == 0)
    samples = _samples(state, y[start:stop].tolist(), indices[start:stop].tolist())
    wall_time = state.wall_time
    if world > 1:
        parts = all_gather((samples, wall_time))
        samples = [s for part, _ in parts for s in part]
        wall_time = max(t for _, t in parts)
    record = provenance(seed=seed, device=x.device, wall_time=wall_time)
    record["processes"] = world
    return Evaluation(
        threat=threat,
        attacks={name: attack.config() for name, attack in named.items()},
        samples=samples,
        provenance=record,
        model_card=model_card,
    )


def _samples(state: CascadeState, labels: list[int], indices: list[int]) -> list[dict[str, Any]]:
    return [
        {
            "index": indices[i],
            "label": labels[i],
            "clean_prediction": state.clean_prediction[i],
            "broken_by": state.broken_by[i],
            "distance": state.distance[i],
            "attacks": {name: {"success": state.success[name][i], "distance": state.attack_distance[name][i]}
                        for name in state.attacks},
        }
        for i in range(len(labels))
    ]
