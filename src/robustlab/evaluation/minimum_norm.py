"""Minimum-norm evaluation: one unbounded run per attack gives robust accuracy at *every* eps.

A minimum-norm attack (C&W, DeepFool, FMN, DDN, FAB, JSMA, ...) looks for the smallest perturbation
that changes the prediction. Run once with an unbounded threat (``eps = math.inf``), it yields
per sample a distance ``d_i`` (``inf`` where it never succeeded); a sample is broken at budget
``eps`` iff it is misclassified clean (``d_i = 0``) or ``d_i <= eps``. The robust-accuracy
curve over eps, the median distance and the fixed-eps :class:`Evaluation` all derive from this
one per-sample table.

The distances are *verified*: each is the distance of the ``x_adv`` the attack returned, judged
by the attack template's fresh forward pass (``result.distance`` where ``result.success``, else
``inf``). An attack's own bookkeeping (``extras["best_distance"]``) is only a cross-check; a
disagreement is recorded per sample and raises :class:`DistanceMismatchWarning`.
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from robustlab.attacks.base import Attack
from robustlab.documentation import docs_pointer
from robustlab.errors import DistanceMismatchWarning, RobustlabError
from robustlab.evaluation.evaluate import CLEAN, Evaluation, named_attacks
from robustlab.evaluation.metrics import accuracy
from robustlab.evaluation.provenance import provenance
from robustlab.evaluation.runner import Run, Step, run_blocks
from robustlab.io import header, inf_from_json, read_document, save_json
from robustlab.settings import RunSettings
from robustlab.threat import ThreatModel, require_unbounded
from robustlab.validate import is_number

__all__ = ["BEST", "DistanceMismatchWarning", "MinimumNormEvaluation", "evaluate_minimum_norm", "distance_statistics"]

BEST = "best"  # the column that takes, per sample, the smallest distance over all attacks


# -- shared helpers (also used by the targeted protocol) -------------------------------------


def check_minimum_norm(attack: Any, key: str, threat: ThreatModel) -> None:
    """Raise a :class:`RobustlabError` unless ``attack`` is a minimum-norm attack for ``threat.norm``."""
    if not isinstance(attack, Attack):
        raise RobustlabError(f"{key!r} is not a robustlab Attack (got {type(attack).__name__})")
    if not attack.minimum_norm:
        raise RobustlabError(
            f"{key!r} ({type(attack).__name__}) is a fixed-budget attack, not a minimum-norm one: its distances "
            "say nothing about smaller budgets. Use a minimum-norm attack (C&W, DeepFool, FMN, DDN, FAB, JSMA) here, "
            "or evaluate() at a fixed eps"
        )
    if threat.norm not in attack.norms:
        raise RobustlabError(f"{key!r} ({type(attack).__name__}) supports the norms {sorted(attack.norms)}, not {threat.norm}")


def warn_mismatch(name: str, count: int, total: int, stacklevel: int = 3) -> None:
    warnings.warn(
        f"{name}: for {count} of {total} samples the attack's own best_distance disagrees with the verified "
        "distance of the x_adv it returned (recomputed success and distance); the verified one is used. "
        f"See `{docs_pointer('diagnostics', 'distance-mismatch')}`",
        DistanceMismatchWarning,
        stacklevel=stacklevel,
    )


def distance_statistics(distances: Iterable[float]) -> dict[str, float]:
    """Summary of per-sample minimal distances (``inf`` = attack failed) over the attacked samples.

    ``median`` is over *all* attacked samples with failures as ``inf`` (the eps at which half of
    them are broken; ``inf`` if half or more failed); ``median_successful`` and
    ``mean_successful`` are over the successful ones only (the C&W paper's "mean distance").
    """
    values = sorted(distances)
    finite = [d for d in values if math.isfinite(d)]
    n = len(values)
    return {
        "attacked": n,
        "successes": len(finite),
        "success_rate": len(finite) / n if n else math.nan,
        "median": median_of(values),
        "median_successful": median_of(finite),
        "mean_successful": sum(finite) / len(finite) if finite else math.nan,
    }


def median_of(sorted_values: list[float]) -> float:
    n = len(sorted_values)
    if n == 0:
        return math.nan
    if n % 2:
        return sorted_values[n // 2]
    return (sorted_values[n // 2 - 1] + sorted_values[n // 2]) / 2


# -- the result ------------------------------------------------------------------------------


@dataclass
class MinimumNormEvaluation:
    """Per-sample minimal distances from unbounded minimum-norm attacks, and what follows from them.

    ``samples`` holds one dict per sample: ``index`` (in the original split), ``label``,
    ``clean_prediction``, ``distance`` (the smallest verified distance over all attacks; 0 if
    misclassified clean, ``inf`` if no attack succeeded), ``best_attack`` (the attack that found
    it, first in order on ties; ``"clean"`` if misclassified clean; ``None`` if none succeeded),
    and per attack ``{"distance", "reported", "mismatch"}``: the verified distance (0 for clean
    misclassifications, which are not attacked), the attack's own ``extras["best_distance"]``
    and whether it contradicts the verified one beyond a logit tie
    (:func:`robustlab.evaluation.runner.cross_check`; both keys absent where not attacked or not
    given), and ``forwards``/``backwards``: the model passes spent on the sample. In JSON, ``inf``
    is written as ``null``.

    ``passes`` holds the total model passes (``{"forwards", "backwards", "clean": {...},
    "steps": {attack: {...}}}``, see :mod:`robustlab.evaluation.runner`); ``cost`` the attacks'
    share per attack (``{attack: {"forwards", "backwards", "samples"}}``, as before ``passes``).

    Broken at budget ``eps`` means ``distance <= eps`` (and finite: a sample no attack broke stays
    robust even at ``eps = inf``, where only a failed search is known); robust accuracy at ``eps`` is the
    fraction of *all* samples that are clean-correct and have ``distance > eps``.
    """

    threat: ThreatModel  # the unbounded threat the attacks ran under (norm and bounds)
    attacks: dict[str, dict[str, Any]]
    samples: list[dict[str, Any]]
    cost: dict[str, dict[str, int]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    model_card: dict[str, Any] | None = None
    passes: dict[str, Any] = field(default_factory=dict)

    @property
    def norm(self) -> str:
        return self.threat.norm

    @property
    def columns(self) -> list[str]:
        """The attack names, then :data:`BEST`."""
        return [*self.attacks, BEST]

    def distances(self, attack: str = BEST) -> list[float]:
        """``[N]`` per-sample distances of one attack (or of :data:`BEST`), 0 for clean errors."""
        if attack == BEST:
            return [s["distance"] for s in self.samples]
        if attack not in self.attacks:
            raise RobustlabError(f"unknown attack {attack!r}; this evaluation has {self.columns}")
        return [s["attacks"][attack]["distance"] for s in self.samples]

    def _correct_sorted(self, attack: str) -> list[float]:
        return sorted(d for s, d in zip(self.samples, self.distances(attack)) if s["clean_prediction"] == s["label"])

    def robust_accuracy_at(self, eps: float, attack: str = BEST) -> float:
        """Fraction of all samples that are clean-correct and not broken within ``eps``
        (``distance > eps``). ``eps = 0`` gives the clean accuracy; NaN for no samples."""
        _check_eps(eps)
        if not self.samples:
            return math.nan
        return _surviving(self._correct_sorted(attack), eps) / len(self.samples)

    def curve(self, eps_grid: Sequence[float] | Tensor | None = None) -> dict[str, Any]:
        """Robust accuracy at each eps of ``eps_grid`` (default :meth:`default_eps_grid`), for
        each attack and for :data:`BEST`: ``{"eps": [G], "robust_accuracy": {column: [G]}}``.
        Non-increasing in eps by construction. Cost: ``O(N log N + G log N)`` per column."""
        grid = self.default_eps_grid() if eps_grid is None else [float(e) for e in (eps_grid.tolist() if isinstance(eps_grid, Tensor) else eps_grid)]
        for eps in grid:
            _check_eps(eps)
        n = len(self.samples)
        out: dict[str, list[float]] = {}
        for column in self.columns:
            correct = self._correct_sorted(column)
            out[column] = [_surviving(correct, e) / n if n else math.nan for e in grid]
        return {"eps": grid, "robust_accuracy": out}

    def default_eps_grid(self, points: int = 9) -> list[float]:
        """``points`` evenly spaced budgets from 0 to the largest finite best distance, rounded
        to 3 significant digits (the last point is rounded up, so everything broken is broken)."""
        finite = [d for d in self.distances(BEST) if math.isfinite(d) and d > 0]
        if not finite or points < 2:
            return [0.0]
        top = _round_up(max(finite))
        return [float(f"{top * i / (points - 1):.3g}") for i in range(points - 1)] + [top]

    def distance_statistics(self, attack: str = BEST) -> dict[str, float]:
        """:func:`distance_statistics` over the clean-correct samples for one column."""
        return distance_statistics(d for s, d in zip(self.samples, self.distances(attack))
                                   if s["clean_prediction"] == s["label"])

    @property
    def metrics(self) -> dict[str, Any]:
        n = len(self.samples)
        correct = sum(1 for s in self.samples if s["clean_prediction"] == s["label"])
        mismatches = {name: sum(1 for s in self.samples if s["attacks"][name].get("mismatch")) for name in self.attacks}
        return {
            "samples": n,
            "norm": self.norm,
            "clean_accuracy": accuracy(correct, n),
            "distance": {column: self.distance_statistics(column) for column in self.columns},
            "best_attack": {name: sum(1 for s in self.samples if s["best_attack"] == name) for name in self.attacks},
            "reported_distance_mismatches": mismatches,
        }

    def at(self, eps: float) -> Evaluation:
        """The fixed-eps :class:`Evaluation` this run implies: a sample is broken by the first
        attack (in order) whose distance is ``<= eps``. Per attack ``distance`` is the minimal
        distance where it broke the sample (``None`` otherwise)."""
        _check_eps(eps)
        if eps == 0:
            raise RobustlabError("eps must be > 0 for a fixed-eps Evaluation (robust_accuracy_at(0) is the clean accuracy)")
        samples = []
        for s in self.samples:
            clean = s["clean_prediction"] != s["label"]
            per_attack = {name: {"success": None, "distance": None} if clean else
                          {"success": _broken(a["distance"], eps), "distance": a["distance"] if _broken(a["distance"], eps) else None}
                          for name, a in s["attacks"].items()}
            broken = next((name for name, a in per_attack.items() if a["success"]), None)
            samples.append({"index": s["index"], "label": s["label"], "clean_prediction": s["clean_prediction"],
                            "broken_by": CLEAN if clean else broken,
                            "distance": 0.0 if clean else (per_attack[broken]["distance"] if broken else math.inf),
                            "attacks": per_attack, "forwards": s.get("forwards"), "backwards": s.get("backwards")})
        return Evaluation(threat=self.threat.with_eps(eps), attacks=self.attacks, samples=samples,
                          provenance=self.provenance, model_card=self.model_card, passes=self.passes)

    def to_dict(self) -> dict[str, Any]:
        return {**header("minimum-norm"), "threat": self.threat.to_dict(), "attacks": self.attacks,
                "metrics": self.metrics, "cost": self.cost, "passes": self.passes, "provenance": self.provenance,
                "model_card": self.model_card, "samples": self.samples}

    def save(self, path: str | Path) -> Path:
        """Write as JSON (atomically); ``inf`` distances become ``null``."""
        return save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> MinimumNormEvaluation:
        return cls.from_dict(read_document(path, "minimum-norm"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MinimumNormEvaluation:
        """The evaluation :meth:`to_dict` gave, as read from strict JSON (``null`` distances are ``inf``)."""
        samples = data["samples"]
        for s in samples:
            s["distance"] = inf_from_json(s["distance"])
            for a in s["attacks"].values():
                a["distance"] = inf_from_json(a["distance"])
                if "reported" in a:
                    a["reported"] = inf_from_json(a["reported"])
        return cls(threat=ThreatModel.from_dict(data["threat"]), attacks=data["attacks"],
                   samples=samples, cost=data.get("cost", {}), provenance=data.get("provenance", {}),
                   model_card=data.get("model_card"), passes=data.get("passes", {}))


def _broken(distance: float, eps: float) -> bool:
    """Broken at budget ``eps``: a perturbation of size ``<= eps`` was found (``inf`` = none was,
    so even ``eps = inf`` does not break a sample every attack failed on)."""
    return distance <= eps and math.isfinite(distance)


def _surviving(sorted_distances: list[float], eps: float) -> int:
    """How many of the (sorted) distances are not broken at ``eps``."""
    broken = bisect.bisect_right(sorted_distances, eps)
    if math.isinf(eps):
        broken = bisect.bisect_left(sorted_distances, math.inf)
    return len(sorted_distances) - broken


def _check_eps(eps: float) -> None:
    if not is_number(eps, finite=False) or math.isnan(eps) or eps < 0:
        raise RobustlabError(f"eps must be a number >= 0, got {eps!r}")


def _round_up(value: float) -> float:
    """``value`` rounded up to 3 significant digits (never below ``value``)."""
    if value <= 0:
        return 0.0
    scale = 10.0 ** (math.floor(math.log10(value)) - 2)
    top = float(f"{math.ceil(value / scale - 1e-9) * scale:.3g}")
    return max(top, value)


# -- the run ---------------------------------------------------------------------------------


def evaluate_minimum_norm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    attacks: Sequence[Attack] | Mapping[str, Attack],
    threat: ThreatModel,
    settings: RunSettings = RunSettings(),
    indices: Tensor | None = None,
    num_classes: int | None = None,
    model_card: dict[str, Any] | None = None,
    state_file: str | Path | None = None,
    resume: bool = True,
    distributed: bool = False,
) -> MinimumNormEvaluation:
    """Run minimum-norm attacks unbounded and record each sample's minimal verified distance.

    Runs on the block runner shared by the three evaluation modes (:mod:`robustlab.evaluation.runner`):
    input and logit checks, blocks, seeds, state file, resume, sharding and cost as in
    :func:`~robustlab.evaluation.evaluate`.

    Args:
        x, y: ``[N, ...]`` inputs inside ``threat.bounds`` and ``[N]`` integer labels, on the model's device.
        attacks: minimum-norm attacks (``attack.minimum_norm``) supporting ``threat.norm``; a mapping
            names them, a sequence is named by each attack's ``name``. Each runs on every
            clean-correct sample (not as a cascade: every attack's own curve is exact).
        threat: the unbounded threat model the attacks run under (``eps = math.inf``, e.g.
            ``L2(math.inf)``; :func:`~robustlab.threat.require_unbounded`): its norm (``L2``, ``Linf``, ``L1`` or
            ``L0``) measures the distances, its box bounds the inputs.
        settings: seed, batch size, progress bar and device (:class:`~robustlab.settings.RunSettings`):
            each attack gets one generator per block of ``batch_size`` samples, seeded from
            ``seed``, the attack's name and the block's first position, as in :func:`evaluate`.
        indices: ``[N]`` integer indices in the original split (default ``arange``).
        num_classes: if given, the model must have that many outputs.
        state_file, resume, distributed: as in :func:`~robustlab.evaluation.evaluate`.

    Returns a :class:`MinimumNormEvaluation` whose ``curve`` gives robust accuracy at every eps.

    Cost: one clean forward per sample plus each attack's own cost on the clean-correct samples
    (e.g. DDN/FMN: ``steps`` forwards and backwards each), and a forward per sample whose
    success the attack's bookkeeping contradicts; recorded per sample and in ``passes``.
    """
    named = named_attacks(attacks)
    if BEST in named:
        raise RobustlabError(f"{BEST!r} is reserved for the best-of-attacks column; name the attack differently")
    require_unbounded(threat, "evaluate_minimum_norm")
    for key, attack in named.items():
        check_minimum_norm(attack, key, threat)
    run = run_blocks(model, x, y, threat=threat, attacks=named, steps=lambda k: [Step(n, a) for n, a in named.items()],
                     mode="minimum-norm", indices=indices, num_classes=num_classes, settings=settings,
                     verify=True, state_file=state_file, resume=resume, distributed=distributed)
    table = run.table
    samples: list[dict[str, Any]] = []
    for i, (label, index) in enumerate(zip(run.labels, run.indices)):
        row = {name: _verified(run, name, i) for name in named}
        if not run.correct(i):
            best_attack, distance = CLEAN, 0.0
        else:
            best_attack, distance = None, math.inf
            for name, a in row.items():
                if a["distance"] < distance:
                    best_attack, distance = name, a["distance"]
        samples.append({"index": index, "label": label, "clean_prediction": table.clean_prediction[i],
                        "distance": distance, "best_attack": best_attack, "attacks": row,
                        "forwards": table.forwards[i], "backwards": table.backwards[i]})
    for name in named:
        mismatched = sum(1 for s in samples if s["attacks"][name].get("mismatch"))
        if mismatched:
            warn_mismatch(name, mismatched, table.step_cost[name]["samples"])
    record = provenance(seed=settings.seed, device=x.device, wall_time=table.wall_time)
    record["processes"] = run.processes
    return MinimumNormEvaluation(
        threat=threat,
        attacks={name: attack.config() for name, attack in named.items()},
        samples=samples,
        cost={name: {k: c[k] for k in ("forwards", "backwards", "samples")} for name, c in table.step_cost.items()},
        provenance=record,
        model_card=model_card,
        passes=table.passes,
    )


def verified(run: Run, key: str, i: int) -> tuple[float, float | None, bool | None]:
    """``(verified distance, reported, mismatch)`` of step ``key`` on clean-correct sample ``i``:
    the distance of the returned ``x_adv`` where the fresh forward pass says success, else ``inf``."""
    r = run.table.results[key]
    return (r["distance"][i] if r["success"][i] else math.inf), r["reported"][i], r["mismatch"][i]


def _verified(run: Run, name: str, i: int) -> dict[str, Any]:
    if not run.correct(i):
        return {"distance": 0.0}
    d, reported, mismatch = verified(run, name, i)
    return {"distance": d} if reported is None else {"distance": d, "reported": reported, "mismatch": mismatch}
