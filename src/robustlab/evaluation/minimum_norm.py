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
import json
import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.attacks.base import Attack, AttackResult
from robustlab.errors import DOCS, DistanceMismatchWarning, RobustlabError
from robustlab.evaluation.evaluate import CLEAN, Evaluation, _named, save_json, threat_dict
from robustlab.evaluation.metrics import accuracy
from robustlab.evaluation.provenance import provenance
from robustlab.threat import ThreatModel, threat_model

__all__ = ["BEST", "DistanceMismatchWarning", "MinimumNormEvaluation", "evaluate_minimum_norm", "distance_statistics"]

BEST = "best"  # the column that takes, per sample, the smallest distance over all attacks

# Relative tolerance when comparing an attack's reported best distance with the verified one.
_MISMATCH_RTOL = 1e-4


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


def unbounded_threat(norm: str, bounds: tuple[float, float]) -> ThreatModel:
    """The threat model ``norm`` with ``eps = inf`` (only the box applies); clear error for an unknown norm."""
    if isinstance(norm, ThreatModel):
        raise RobustlabError("give the norm as a name ('L2', 'Linf', 'L1', 'L0'); minimum-norm evaluation is unbounded")
    return threat_model(norm, math.inf, tuple(bounds))


def check_batch(x: Tensor, y: Tensor, batch_size: int, indices: Tensor | None) -> Tensor:
    """Validate the shared arguments; return the ``[N]`` original indices."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise RobustlabError("x and y must be torch tensors")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RobustlabError(f"batch_size must be a positive integer, got {batch_size!r}")
    if x.dim() < 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise RobustlabError(f"x must be [N, ...] and y [N] with the same N; got {tuple(x.shape)} and {tuple(y.shape)}")
    n = x.shape[0]
    indices = torch.arange(n) if indices is None else torch.as_tensor(indices)
    if indices.shape != (n,):
        raise RobustlabError(f"indices must have shape [{n}], got {tuple(indices.shape)}")
    return indices


def clean_logits(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """``[N, K]`` logits in eval mode, without gradient (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if x.shape[0] == 0:
                return model(x[:1].new_zeros((1, *x.shape[1:])))[:0]
            logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    finally:
        model.train(was_training)
    if logits.dim() != 2:
        raise RobustlabError(f"the model must return logits of shape [N, K], got {tuple(logits.shape)}")
    return logits


def verified_distances(result: AttackResult) -> tuple[list[float], list[float | None]]:
    """``(verified, reported)`` per sample: ``result.distance`` where the fresh forward pass says
    success, else ``inf``; and the attack's ``extras["best_distance"]`` (``None`` if absent)."""
    inf = torch.full_like(result.distance, math.inf)
    verified = torch.where(result.success, result.distance, inf).tolist()
    reported = result.extras.get("best_distance")
    if reported is None:
        return verified, [None] * len(verified)
    return verified, torch.as_tensor(reported, dtype=result.distance.dtype).reshape(-1).tolist()


def disagrees(verified: float, reported: float | None) -> bool:
    """Whether an attack's reported best distance contradicts the verified one."""
    if reported is None:
        return False
    if math.isinf(verified) or math.isinf(reported):
        return math.isinf(verified) != math.isinf(reported)
    return abs(verified - reported) > _MISMATCH_RTOL * max(1.0, verified)


def cross_check(model: nn.Module, result: AttackResult, verified: list[float], reported: list[float | None]) -> list[bool]:
    """Per sample, whether the attack's reported best distance contradicts the verified one.

    A success that flips between the attack's bookkeeping and the template's fresh forward pass
    is forgiven where ``x_adv`` sits on a tie of the two top logits (within ``1e-4`` relative):
    there float rounding, e.g. from a different batch composition, decides, not a bug. Costs one
    forward for each flipped sample only.
    """
    flags = [disagrees(d, r) for d, r in zip(verified, reported)]
    flipped = [i for i, (d, r) in enumerate(zip(verified, reported))
               if flags[i] and r is not None and math.isinf(d) != math.isinf(r)]
    if flipped:
        top = clean_logits(model, result.x_adv[torch.tensor(flipped, device=result.x_adv.device)], len(flipped))
        top = top.topk(2, dim=1).values
        tie = ((top[:, 0] - top[:, 1]) <= _MISMATCH_RTOL * top[:, 0].abs().clamp_min(1.0)).tolist()
        for i, is_tie in zip(flipped, tie):
            flags[i] = not is_tie
    return flags


def warn_mismatch(name: str, count: int, total: int, stacklevel: int = 3) -> None:
    warnings.warn(
        f"{name}: for {count} of {total} samples the attack's own best_distance disagrees with the verified "
        "distance of the x_adv it returned (recomputed success and distance); the verified one is used. "
        f"See {DOCS}/diagnostics/#distance-mismatch",
        DistanceMismatchWarning,
        stacklevel=stacklevel,
    )


def inf_from_json(value: float | None) -> float:
    """JSON stores ``inf`` as ``null`` (as :class:`Evaluation` does); undo that."""
    return math.inf if value is None else float(value)


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
        "median": _median(values),
        "median_successful": _median(finite),
        "mean_successful": sum(finite) / len(finite) if finite else math.nan,
    }


def _median(sorted_values: list[float]) -> float:
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
    and whether it contradicts the verified one beyond a logit tie (:func:`cross_check`; both
    keys absent where not attacked or not given). In JSON, ``inf`` is written as ``null``.

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
                            "attacks": per_attack})
        return Evaluation(threat=self.threat.with_eps(eps), attacks=self.attacks, samples=samples,
                          provenance=self.provenance, model_card=self.model_card)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "minimum-norm", "threat": threat_dict(self.threat), "attacks": self.attacks,
                "metrics": self.metrics, "cost": self.cost, "provenance": self.provenance,
                "model_card": self.model_card, "samples": self.samples}

    def save(self, path: str | Path) -> Path:
        """Write as JSON (atomically); ``inf`` distances become ``null``."""
        return save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "MinimumNormEvaluation":
        data = json.loads(Path(path).read_text())
        if data.get("kind") != "minimum-norm":
            raise RobustlabError(f"{path} is not a minimum-norm evaluation (kind={data.get('kind')!r})")
        t = data["threat"]
        samples = data["samples"]
        for s in samples:
            s["distance"] = inf_from_json(s["distance"])
            for a in s["attacks"].values():
                a["distance"] = inf_from_json(a["distance"])
                if "reported" in a:
                    a["reported"] = inf_from_json(a["reported"])
        return cls(threat=threat_model(t["norm"], inf_from_json(t["eps"]), tuple(t["bounds"])), attacks=data["attacks"],
                   samples=samples, cost=data.get("cost", {}), provenance=data.get("provenance", {}),
                   model_card=data.get("model_card"))


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
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or math.isnan(eps) or eps < 0:
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
    norm: str,
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 256,
    seed: int = 0,
    indices: Tensor | None = None,
    model_card: dict[str, Any] | None = None,
    progress: bool = False,
) -> MinimumNormEvaluation:
    """Run minimum-norm attacks unbounded and record each sample's minimal verified distance.

    Args:
        x, y: ``[N, ...]`` inputs inside ``bounds`` and ``[N]`` labels, on the model's device.
        attacks: minimum-norm attacks (``attack.minimum_norm``) supporting ``norm``; a mapping
            names them, a sequence is named by each attack's ``name``. Each runs on every
            clean-correct sample (not as a cascade: every attack's own curve is exact).
        norm: ``"L2"``, ``"Linf"``, ``"L1"`` or ``"L0"``; the attacks run under
            ``threat_model(norm, math.inf, bounds)``.
        seed: each attack gets its own generator seeded with ``seed * 1000 + position`` (as in
            :func:`evaluate`), consumed batch by batch.
        indices: ``[N]`` indices in the original split (default ``arange``).

    Returns a :class:`MinimumNormEvaluation` whose ``curve`` gives robust accuracy at every eps.

    Cost: one clean forward per sample plus each attack's own cost on the clean-correct samples
    (e.g. DDN/FMN: ``steps`` forwards and backwards each); recorded in ``cost``.
    """
    named = _named(attacks)
    if BEST in named:
        raise RobustlabError(f"{BEST!r} is reserved for the best-of-attacks column; name the attack differently")
    threat = unbounded_threat(norm, bounds)
    for key, attack in named.items():
        check_minimum_norm(attack, key, threat)
    indices = check_batch(x, y, batch_size, indices)
    n = x.shape[0]
    start = time.perf_counter()
    device = x.device

    clean_pred = clean_logits(model, x, batch_size).argmax(dim=1)
    correct = (clean_pred == y).tolist()
    alive = [i for i in range(n) if correct[i]]
    per_attack: dict[str, list[dict[str, Any]]] = {
        name: [{"distance": math.inf if correct[i] else 0.0} for i in range(n)] for name in named}
    cost = {name: {"forwards": 0, "backwards": 0, "samples": len(alive)} for name in named}

    bar = tqdm(total=len(named) * len(alive), desc="minimum-norm", unit="sample", disable=not progress, leave=False)
    for position, (name, attack) in enumerate(named.items()):
        generator = torch.Generator(device=device).manual_seed(seed * 1000 + position)
        bar.set_postfix(attack=name)
        mismatched = 0
        for b in range(0, len(alive), batch_size):
            chunk = alive[b:b + batch_size]
            idx = torch.tensor(chunk, device=device)
            result = attack(model, x[idx], y[idx], threat=threat, generator=generator)
            cost[name]["forwards"] += result.forwards
            cost[name]["backwards"] += result.backwards
            verified, reported = verified_distances(result)
            flags = cross_check(model, result, verified, reported)
            for i, d, r, bad in zip(chunk, verified, reported, flags):
                per_attack[name][i] = {"distance": d} if r is None else {"distance": d, "reported": r, "mismatch": bad}
                mismatched += bad
            bar.update(len(chunk))
        if mismatched:
            warn_mismatch(name, mismatched, len(alive))
    bar.close()

    samples = []
    for i in range(n):
        row = {name: per_attack[name][i] for name in named}
        if not correct[i]:
            best_attack, distance = CLEAN, 0.0
        else:
            best_attack, distance = None, math.inf
            for name, a in row.items():
                if a["distance"] < distance:
                    best_attack, distance = name, a["distance"]
        samples.append({"index": int(indices[i]), "label": int(y[i]), "clean_prediction": int(clean_pred[i]),
                        "distance": distance, "best_attack": best_attack, "attacks": row})
    return MinimumNormEvaluation(
        threat=threat,
        attacks={name: attack.config() for name, attack in named.items()},
        samples=samples,
        cost=cost,
        provenance=provenance(seed=seed, device=device, wall_time=time.perf_counter() - start),
        model_card=model_card,
    )
