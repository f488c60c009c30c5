"""``evaluate()``: run attacks over a dataset and keep a per-sample table.

Every metric is derived from the per-sample table, never accumulated separately, so what a
report shows can always be traced back to individual samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from robustlab.attacks.base import Attack
from robustlab.errors import RobustlabError
from robustlab.evaluation.metrics import accuracy
from robustlab.evaluation.provenance import provenance
from robustlab.evaluation.runner import Run, Step, run_blocks
from robustlab.io import header, read_document, save_json
from robustlab.settings import RunSettings
from robustlab.threat import ThreatModel

__all__ = ["CLEAN", "Evaluation", "evaluate"]

CLEAN = "clean"  # broken_by value of samples the model already misclassifies


@dataclass
class Evaluation:
    """Per-sample results of an evaluation and the metrics derived from them.

    ``samples`` holds one dict per sample: ``index`` (in the original split), ``label``,
    ``clean_prediction``, ``broken_by`` (``"clean"`` if misclassified without attack, the name of
    the first attack in order that broke it, or ``None`` if robust), ``distance`` (of the
    breaking example; 0 for ``"clean"``), and per attack ``{"success", "distance"}`` (``None``
    where the attack did not run on that sample), and ``forwards``/``backwards``: the model
    passes spent on the sample (see :mod:`robustlab.evaluation.runner`). ``passes`` holds the
    totals: ``{"forwards", "backwards", "clean": {...}, "steps": {attack: {...}}}``.
    """

    threat: ThreatModel
    attacks: dict[str, dict[str, Any]]
    samples: list[dict[str, Any]]
    provenance: dict[str, Any] = field(default_factory=dict)
    model_card: dict[str, Any] | None = None
    passes: dict[str, Any] = field(default_factory=dict)

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
            **header("fixed"),
            "threat": self.threat.to_dict(),
            "attacks": self.attacks,
            "metrics": self.metrics,
            "provenance": self.provenance,
            "model_card": self.model_card,
            "passes": self.passes,
            "samples": self.samples,
        }

    def save(self, path: str | Path) -> Path:
        """Write the evaluation as JSON (atomically: a killed write leaves the old file)."""
        return save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Evaluation:
        """The evaluation :meth:`save` wrote (a document without a kind, written before
        documents had one, is read as a fixed-eps evaluation)."""
        return cls.from_dict(read_document(path, "fixed", legacy_kind="fixed"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        """The evaluation :meth:`to_dict` gave (as read from its JSON file)."""
        return cls(threat=ThreatModel.from_dict(data["threat"]), attacks=data["attacks"],
                   samples=data["samples"], provenance=data.get("provenance", {}), model_card=data.get("model_card"),
                   passes=data.get("passes", {}))


def named_attacks(attacks: Sequence[Attack] | Mapping[str, Attack]) -> dict[str, Attack]:
    """``attacks`` by name: a mapping as given, a sequence under each attack's registry name
    (``pgd``, then ``pgd-2`` for a second one); at least one, each a robustlab Attack."""
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
    settings: RunSettings = RunSettings(),
    cascade: bool = False,
    indices: Tensor | None = None,
    num_classes: int | None = None,
    model_card: dict[str, Any] | None = None,
    state_file: str | Path | None = None,
    resume: bool = True,
    distributed: bool = False,
) -> Evaluation:
    """Attack every correctly classified sample with each attack and tabulate the results.

    Runs on the block runner shared by the three evaluation modes (:mod:`robustlab.evaluation.runner`:
    input checks, blocks, seeds, state file, sharding, cost).

    Args:
        x, y: ``[N, ...]`` inputs inside ``threat.bounds`` and ``[N]`` integer labels, on the
            model's device. Checked before the clean pass, the model's logits after it (shape,
            label range, NaN); bad input raises :class:`RobustlabError` and writes nothing.
        threat: a :class:`~robustlab.threat.ThreatModel` with its budget, e.g. ``Linf(eps=0.3)``
            (a norm name alone such as ``"Linf"`` has no budget and is refused).
        attacks: attacks in order (a mapping gives them names; a sequence is named by each
            attack's ``name``). The first attack in order that breaks a sample is credited.
        cascade: run each attack only on samples no earlier attack broke (faster; per-attack
            robust accuracies are then omitted, only the worst case is exact).
        indices: ``[N]`` integer indices of the samples in their original split (default ``arange``).
        num_classes: the number of classes the labels and attacks were set up for (e.g. the
            suite's); the model must have that many outputs. Default: whatever the model has.
        settings: seed, batch size, progress bar and the device the inputs must be on
            (:class:`~robustlab.settings.RunSettings`; default: seed 0, blocks of 256, no
            progress bar, any device). Each attack gets one generator per block of
            ``batch_size`` samples, seeded from ``seed``, the attack's name and the block's first position
            (:func:`~robustlab.evaluation.runner.block_seed`): results do not depend on which other
            attacks ran (without cascade), on resuming, or on sharding; they do depend on ``batch_size``.
        state_file: write the per-sample state there after every block and attack, and resume
            from it if it exists (and ``resume``). A state file of another model, data, threat
            model, attack list, seed, batch size or cascade setting is refused. Under
            ``distributed`` each rank uses its own file, ``NAME.rankR-of-W.SUFFIX``.
        distributed: split the samples over the ranks of the initialized ``torch.distributed``
            process group (:mod:`robustlab.evaluation.distributed`); every rank returns the
            merged evaluation, identical to a single-process run.

    Cost: one clean forward per sample plus each attack's own cost on the samples it runs on,
    recorded per sample and in total (``passes``); with ``state_file`` or ``distributed`` one
    hash of the data and weights, and with ``state_file`` one JSON write of the table per step.
    """
    named = named_attacks(attacks)
    run = run_blocks(model, x, y, threat=threat, attacks=named, steps=lambda k: [Step(n, a) for n, a in named.items()],
                     mode="fixed", indices=indices, num_classes=num_classes, settings=settings,
                     cascade=cascade, state_file=state_file, resume=resume, distributed=distributed)
    record = provenance(seed=settings.seed, device=x.device, wall_time=run.table.wall_time)
    record["processes"] = run.processes
    return Evaluation(
        threat=threat,
        attacks={name: attack.config() for name, attack in named.items()},
        samples=_samples(run, list(named)),
        provenance=record,
        model_card=model_card,
        passes=run.table.passes,
    )


def _samples(run: Run, names: list[str]) -> list[dict[str, Any]]:
    table, samples = run.table, []
    for i, (label, index) in enumerate(zip(run.labels, run.indices)):
        broken_by: str | None
        attacks = {name: {"success": table.results[name]["success"][i], "distance": table.results[name]["distance"][i]}
                   for name in names}
        if not run.correct(i):
            broken_by, distance = CLEAN, 0.0
        else:
            broken_by = next((name for name in names if attacks[name]["success"]), None)
            distance = math.inf if broken_by is None else attacks[broken_by]["distance"]
        samples.append({"index": index, "label": label, "clean_prediction": table.clean_prediction[i],
                        "broken_by": broken_by, "distance": distance, "attacks": attacks,
                        "forwards": table.forwards[i], "backwards": table.backwards[i]})
    return samples
