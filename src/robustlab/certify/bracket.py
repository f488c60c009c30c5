"""The per-sample bracket of the minimal adversarial perturbation:
certified lower bound <= exact minimum (MILP) <= attack upper bound.

- **lower**: the largest radius a bound-propagation certifier (CROWN by default) certifies, by
  bisection up to the attack's distance (:func:`~robustlab.certify.certified_radius`);
- **exact**: the MILP minimum where the solver finishes within the time limit (otherwise the
  solver's interval);
- **upper**: the smallest verified distance of the minimum-norm attacks (FMN and DeepFool for
  Linf, FMN for L1 by default), each run unbounded.

:func:`bracket` returns a :class:`Bracket` with one row (dict) per sample, gap statistics and a
Markdown rendering. Consistency (``lower <= exact <= upper`` up to ``tol``) is checked per
sample and reported in the ``consistent`` column; a violation would be a bug in one of the three.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.attacks.base import Attack
from robustlab.certify.certifiers import CROWN, Certifier, certified_radius
from robustlab.certify.milp import MILPVerifier
from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel, require_unbounded

__all__ = ["Bracket", "bracket", "default_attacks"]


def default_attacks(norm: str) -> dict[str, Attack]:
    from robustlab.attacks import build_attack

    if norm == "Linf":
        return {"fmn": build_attack("fmn", steps=200), "deepfool": build_attack("deepfool")}
    if norm == "L1":
        return {"fmn": build_attack("fmn", steps=200)}
    raise RobustlabError(f"the bracket supports Linf and L1 (the exact MILP cannot do L2), not {norm}")


@dataclass
class Bracket:
    """``rows``: one dict per sample; ``summary``: gap statistics; :meth:`markdown` renders both."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    norm: str
    extras: dict[str, Any] = field(default_factory=dict)

    def markdown(self, digits: int = 4) -> str:
        def fmt(v: Any) -> str:
            if v is None:
                return "–"
            if isinstance(v, float):
                return "inf" if math.isinf(v) else f"{v:.{digits}f}"
            return str(v)

        columns = ["index", "label", "lower", "exact", "upper", "best_attack", "milp_status", "milp_interval",
                   "unstable", "milp_seconds", "consistent"]
        lines = [f"### Minimal {self.norm} perturbation: certified lower ≤ exact ≤ attack upper", "",
                 "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in self.rows:
            cells = dict(row)
            cells["milp_interval"] = f"[{fmt(row['milp_lower'])}, {fmt(row['milp_upper'])}]"
            lines.append("| " + " | ".join(fmt(cells.get(c)) for c in columns) + " |")
        lines += ["", "| statistic | value |", "|---|---|"]
        lines += [f"| {k} | {fmt(v)} |" for k, v in self.summary.items()]
        return "\n".join(lines) + "\n"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def bracket(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    threat: ThreatModel,
    certifier: Certifier | None = None,
    attacks: Mapping[str, Attack] | None = None,
    time_limit: float = 60.0,
    lp_tighten: bool = False,
    bisection_steps: int = 16,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
) -> Bracket:
    """Lower, exact and upper bound on the minimal perturbation of each sample.

    Args:
        threat: the unbounded threat model (``eps = math.inf``, e.g. ``Linf(math.inf)``; see
            :func:`~robustlab.threat.require_unbounded`): its norm (Linf or L1) measures the
            perturbation, its box bounds the inputs.
        certifier: bound propagation for the lower bound (default :class:`CROWN`).
        attacks: name -> minimum-norm attack (default :func:`default_attacks`).
        time_limit: MILP seconds per sample.
        bisection_steps: halvings of the certified-radius bisection (on ``[0, attack upper]``).
        tol: absolute slack for the consistency check (the MILP encodes "misclassified" with a
            ``1e-4`` logit margin and works in float64; the attacks in float32).

    Cost: one unbounded run per attack, ``bisection_steps + 1`` certifier calls, and per
    sample one MILP per wrong class (each bounded by the best so far).
    """
    require_unbounded(threat, "bracket")
    norm = threat.norm
    certifier = certifier or CROWN()
    attacks = dict(attacks) if attacks is not None else default_attacks(norm)
    n = x.shape[0]
    per_attack: dict[str, list[float]] = {}
    attack_seconds = {}
    for name, attack in attacks.items():
        start = time.perf_counter()
        result = attack(model, x, y, threat=threat, generator=generator)
        dist = torch.where(result.success, result.distance, torch.full_like(result.distance, math.inf))
        per_attack[name] = dist.tolist()
        attack_seconds[name] = time.perf_counter() - start
    upper = torch.tensor([min(per_attack[a][i] for a in per_attack) if per_attack else math.inf for i in range(n)],
                         dtype=x.dtype)
    start = time.perf_counter()
    low, high = threat.bounds
    width = (high - low) * (1 if norm == "Linf" else x[0].numel())
    lower = certified_radius(certifier, model, x, y, threat=threat, eps_max=upper.clamp(max=width),
                             steps=bisection_steps)
    certify_seconds = time.perf_counter() - start
    exact = MILPVerifier(time_limit=time_limit, lp_tighten=lp_tighten).minimal_perturbation(
        model, x, y, threat=threat, upper=upper, lower=lower)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        distances = {a: per_attack[a][i] for a in per_attack}
        best_attack = min(distances, key=distances.__getitem__) if distances else None
        status = exact.status[i]
        value = exact.lower[i] if status == "optimal" else None
        lo, up = float(lower[i]), float(upper[i])
        checks = [lo <= exact.upper[i] + tol, exact.lower[i] <= up + tol] if status != "misclassified" else [True]
        if value is not None:
            checks.append(lo <= value + tol and value <= up + tol)
        if exact.counterexample[i] is not None:
            checks.append(bool(exact.counterexample_ok[i]))
        rows.append({
            "index": i, "label": int(y[i]), "lower": lo, "exact": value, "upper": up,
            "best_attack": best_attack, **{f"dist_{a}": d for a, d in distances.items()},
            "milp_status": status, "milp_lower": exact.lower[i], "milp_upper": exact.upper[i],
            "counterexample_ok": exact.counterexample_ok[i], "unstable": exact.unstable[i],
            "milp_seconds": exact.seconds[i], "consistent": all(checks),
        })
    solved = [r for r in rows if r["milp_status"] == "optimal" and r["exact"] and r["exact"] > 0]
    summary = {
        "samples": n,
        "misclassified_clean": sum(r["milp_status"] == "misclassified" for r in rows),
        "solved_exactly": len(solved),
        "timed_out": sum(r["milp_status"] == "timeout" for r in rows),
        "all_consistent": all(r["consistent"] for r in rows),
        "median_upper_over_exact": _median([r["upper"] / r["exact"] for r in solved if math.isfinite(r["upper"])]),
        "median_lower_over_exact": _median([r["lower"] / r["exact"] for r in solved]),
        "median_milp_seconds": _median([r["milp_seconds"] for r in rows if r["milp_status"] != "misclassified"]),
        "certify_seconds": certify_seconds,
        **{f"median_{a}_over_exact": _median([r[f"dist_{a}"] / r["exact"] for r in solved
                                              if math.isfinite(r[f"dist_{a}"])]) for a in per_attack},
        **{f"{a}_seconds": s for a, s in attack_seconds.items()},
    }
    return Bracket(rows, summary, norm, {"method": certifier.method, "time_limit": time_limit})
