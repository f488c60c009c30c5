"""Exact verification of ReLU networks by mixed-integer linear programming (Tjeng, Xiao &
Tedrake, ICLR 2019), solved with ``scipy.optimize.milp`` (HiGHS).

Supported networks: whatever the tracer (:mod:`robustlab.certify.trace`) turns into a sequence
of affine maps (``Linear``, ``Conv2d``, ``BatchNorm`` in eval mode, normalization, flatten and
reshape, average pooling, constants added or multiplied: all turned into dense matrices, so
keep them small) and ``ReLU``, whatever the forward's code. Max-pooling and sums of branches
(residual additions, concatenations) are not supported here: a RobustlabError names the first.

Encoding (float64): one continuous variable per input coordinate and per ReLU output; a ReLU
with pre-activation bounds ``l < 0 < u`` gets one binary ``d`` with ``a >= z``, ``a >= 0``,
``a <= z - l (1 - d)``, ``a <= u d``; stable ReLUs are exact (``a = z`` or ``a = 0``) and need
no binary. Bounds are tightened progressively on the *restricted domain* (the eps-ball for
verification; the ball of the attack's distance for the minimal perturbation, since the
minimum is no larger): IBP ∩ CROWN (both from :mod:`robustlab.certify.bounds`), then optionally
an LP per remaining unstable neuron (``lp_tighten=True``: two LPs per neuron, layer by layer).

Misclassification (minimal perturbation) is a disjunction over target classes; we solve one
MILP per target ``t`` (``z_t - z_j >= margin`` for all ``j != t``, ``margin = 1e-4`` to avoid
ties) in order of the clean logits, each with the distance bounded by the best found so far, so
later targets are often proved infeasible at once. This avoids the big-M disjunction's extra
binaries and weak relaxation, and each target's MILP is small.

Every counterexample is checked by a float32 forward pass of the original model
(``counterexample_ok``). Each sample has a time limit; the status is ``"optimal"`` (exact),
``"robust"`` / ``"not-robust"`` (verification), or ``"timeout"`` with the interval known so
far (lower: the smallest MILP dual bound over unfinished targets; upper: the best incumbent).

Cost: exponential in the number of unstable ReLUs in the worst case. Small MLPs
(784-32-32-10 at the attack's distance, IBP-trained 784-100-100-10) take seconds to minutes with
HiGHS; naturally trained wide MLPs do not finish.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from robustlab.certify.bounds import InputSet, crown_bounds, margin_spec
from robustlab.certify.certifiers import Certifier, CertResult, Prepared, check_certify_inputs, eps_per_sample, prepare
from robustlab.certify.graph import AffineOp, MaxPoolOp, ReLUOp
from robustlab.errors import RobustlabError
from robustlab.modes import FrozenEval
from robustlab.threat import ThreatModel, require_unbounded

__all__ = ["MILPResult", "MILPVerifier", "dense_layers"]

_MARGIN = 1e-4
_SLACK = 1e-7  # widen float64 bounds a hair, so round-off never cuts off a feasible point

#: Dense layers ``(A, b)`` (or per-layer bounds ``(lower, upper)``), in float64.
Layers = list[tuple[np.ndarray, np.ndarray]]


@dataclass
class MILPResult:
    """Per-sample outcome (lists of length N).

    ``status``: "optimal" / "timeout" / "misclassified" (minimal distance), or "robust" /
    "not-robust" / "timeout" / "misclassified" (verification). ``lower``/``upper``: the interval
    known for the minimal distance (equal when optimal), or for verification the upper bound of
    ``max_t z_t - z_y`` (``upper``) and the best violation found (``lower``).
    ``counterexample``: the adversarial input (``[*in]`` tensor) or None; ``counterexample_ok``:
    a fresh forward pass confirms it is misclassified; ``unstable``: binaries per sample;
    ``seconds``: solve time per sample.
    """

    status: list[str]
    lower: list[float]
    upper: list[float]
    counterexample: list[Tensor | None]
    counterexample_ok: list[bool | None]
    unstable: list[int]
    seconds: list[float]
    norm: str = "Linf"
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def exact(self) -> list[float | None]:
        return [lo if s == "optimal" else None for s, lo in zip(self.status, self.lower)]


def dense_layers(prepared: Prepared) -> Layers:
    """``[(A_0, b_0), ..., (A_L, b_L)]`` in float64 with a ReLU after every block but the last;
    ``A_k`` is ``[out, in]`` on flattened features."""
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    current: tuple[np.ndarray, np.ndarray] | None = None

    def compose(a: np.ndarray, b: np.ndarray) -> None:
        nonlocal current
        current = (a, b) if current is None else (a @ current[0], a @ current[1] + b)

    in_dim = None
    for op in prepared.ops:
        if isinstance(op, AffineOp):
            d_in = math.prod(op.in_shape)
            in_dim = in_dim or d_in
            with torch.no_grad():
                basis = torch.eye(d_in, dtype=torch.float64).reshape(d_in, *op.in_shape)
                a = op.linear(basis).reshape(d_in, -1).T.numpy()
                b = op.offset(basis).reshape(-1).numpy()
            compose(a, b)
        elif isinstance(op, ReLUOp):
            if current is None:
                d = math.prod(op.in_shape)
                current = (np.eye(d), np.zeros(d))
            in_dim = in_dim or math.prod(op.in_shape)
            layers.append(current)
            current = None
        else:
            what = (f"the max-pooling {op.name!r}" if isinstance(op, MaxPoolOp)
                    else f"the sum of branches at {op.name!r} (a residual addition, subtraction or concatenation)")
            raise RobustlabError(
                f"the MILP verifier supports affine layers and ReLU only, in sequence, not {what}; "
                "use a bound-propagation certifier (IBP, CROWN) for max-pooling, residual and branching networks"
            )
    w = prepared.weight.detach().double().numpy()
    b = np.zeros(w.shape[0]) if prepared.bias is None else prepared.bias.detach().double().numpy()
    compose(w, b)
    assert current is not None  # compose just set it
    layers.append(current)
    return layers


class _Problem:
    """The MILP of one sample: variables ``[x (n) | a_1 | d_1 | a_2 | d_2 | ... | extra]``."""

    def __init__(self, layers: Layers, pre_bounds: Layers, x_lower: np.ndarray, x_upper: np.ndarray,
                 upto: int | None = None):
        self.n = x_lower.size
        self.lb, self.ub, self.integrality = list(x_lower), list(x_upper), [0] * self.n
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []
        self.row_lb: list[float] = []
        self.row_ub: list[float] = []
        self.num_rows = 0
        self.unstable = 0
        prev_off, prev_size = 0, self.n
        hidden = len(layers) - 1 if upto is None else upto
        for k in range(hidden):
            a_mat, b_vec = layers[k]
            l, u = pre_bounds[k]
            prev_off, prev_size = self._relu_layer(a_mat, b_vec, l, u, prev_off, prev_size)
        self.last_off, self.last_size = prev_off, prev_size

    def _add_var(self, lb: float, ub: float, integer: int = 0) -> int:
        self.lb.append(lb)
        self.ub.append(ub)
        self.integrality.append(integer)
        return len(self.lb) - 1

    def add_row(self, cols: Sequence[int] | np.ndarray, vals: Sequence[float] | np.ndarray, lb: float, ub: float) -> None:
        self.rows.append(np.full(len(cols), self.num_rows))
        self.cols.append(np.asarray(cols))
        self.vals.append(np.asarray(vals, dtype=np.float64))
        self.row_lb.append(lb)
        self.row_ub.append(ub)
        self.num_rows += 1

    def _relu_layer(self, a_mat: np.ndarray, b_vec: np.ndarray, l: np.ndarray, u: np.ndarray, prev_off: int,
                    prev_size: int) -> tuple[int, int]:
        prev_cols = np.arange(prev_off, prev_off + prev_size)
        offset = len(self.lb)
        for j in range(a_mat.shape[0]):
            if u[j] <= 0:
                self._add_var(0.0, 0.0)
            elif l[j] >= 0:
                self._add_var(l[j], u[j])
            else:
                self._add_var(0.0, u[j])
        for j in range(a_mat.shape[0]):
            col = offset + j
            if u[j] <= 0:
                continue
            cols = np.append(prev_cols, col)
            vals = np.append(-a_mat[j], 1.0)
            if l[j] >= 0:
                self.add_row(cols, vals, b_vec[j], b_vec[j])
                continue
            self.unstable += 1
            d = self._add_var(0.0, 1.0, 1)
            self.add_row(cols, vals, b_vec[j], math.inf)  # a >= z
            self.add_row(np.append(cols, d), np.append(vals, -l[j]), -math.inf, b_vec[j] - l[j])  # a <= z - l(1-d)
            self.add_row([col, d], [1.0, -u[j]], -math.inf, 0.0)  # a <= u d
        return offset, a_mat.shape[0]

    def solve(self, objective: dict[int, float], *, time_limit: float, relax: bool = False) -> Any:
        """scipy's ``OptimizeResult`` (HiGHS) for ``min objective . v``."""
        from scipy.optimize import LinearConstraint, milp
        from scipy.sparse import coo_matrix

        nvar = len(self.lb)
        c = np.zeros(nvar)
        for index, value in objective.items():
            c[index] += value
        constraints = None
        if self.num_rows:
            matrix = coo_matrix(
                (np.concatenate(self.vals), (np.concatenate(self.rows), np.concatenate(self.cols))),
                shape=(self.num_rows, nvar),
            ).tocsr()
            constraints = LinearConstraint(matrix, np.array(self.row_lb), np.array(self.row_ub))
        from scipy.optimize import Bounds

        integrality = np.zeros(nvar) if relax else np.array(self.integrality)
        return milp(c, integrality=integrality, bounds=Bounds(np.array(self.lb), np.array(self.ub)),
                    constraints=constraints, options={"time_limit": max(time_limit, 1e-3), "disp": False})

    def output_row(self, weights: np.ndarray) -> dict[int, float]:
        return {self.last_off + i: w for i, w in enumerate(weights) if w != 0.0}


@dataclass(frozen=True, kw_only=True)
class MILPVerifier(Certifier):
    """Exact verification and minimal adversarial perturbation (Linf, L1) by MILP.

    A :class:`~robustlab.certify.certifiers.Certifier`: ``verifier(model, x, y, *, threat)``
    returns a :class:`~robustlab.certify.certifiers.CertResult` whose margins are the MILP's
    bounds (exact where the solver finished); :meth:`verify` gives the per-sample statuses and
    counterexamples behind it, :meth:`minimal_perturbation` the exact minimal distance.

    Args:
        time_limit: seconds per sample (all targets together); a sample that runs out gets the
            status "timeout" with the interval known so far, never a hang.
        lp_tighten: tighten each unstable neuron's bounds by two LPs (slower to build, fewer
            binaries and a tighter relaxation).
        margin: ``z_t - z_j >= margin`` encodes "classified as t" without ties (1e-4, as in
            the reference's recipe).
        batch_size: unused (each sample is its own MILP); kept from :class:`Certifier`.
    """

    name: ClassVar[str] = "milp"
    method = "milp"
    time_limit: float = 60.0
    lp_tighten: bool = False
    margin: float = _MARGIN

    # -- shared set-up ------------------------------------------------------------------
    def _setup(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, radius: float
               ) -> tuple[Layers, Layers, np.ndarray, np.ndarray]:
        """Double-precision copy, dense layers, bounds on the domain of radius ``radius``."""
        model64 = copy.deepcopy(model).double().eval()
        x64 = x.detach().double()
        with torch.no_grad():
            prepared = prepare(model64, x64)
            layers = dense_layers(prepared)
            inputs = InputSet(x64, torch.tensor([radius], dtype=torch.float64), threat.norm, threat.bounds)
            spec = margin_spec(y.reshape(1), prepared.weight.shape[0], torch.float64)
            _, pre = crown_bounds(prepared.ops, prepared.weight, prepared.bias, spec, inputs, intermediate="crown")
        relus = [op for op in prepared.ops if isinstance(op, ReLUOp)]
        pre_bounds = []
        for op in relus:
            low, high = pre[id(op)]
            l, u = low.reshape(-1).numpy(), high.reshape(-1).numpy()
            pre_bounds.append((l - _SLACK * (1 + np.abs(l)), u + _SLACK * (1 + np.abs(u))))
        x_lower, x_upper = (t.reshape(-1).numpy() for t in inputs.box())
        return layers, pre_bounds, x_lower, x_upper

    def _tighten(self, layers: Layers, pre_bounds: Layers, x_lower: np.ndarray, x_upper: np.ndarray,
                 deadline: float) -> Layers:
        for k in range(1, len(pre_bounds)):  # the first layer's bounds are already exact
            l, u = pre_bounds[k]
            a_mat, b_vec = layers[k]
            problem = _Problem(layers, pre_bounds, x_lower, x_upper, upto=k)
            for j in np.flatnonzero((l < 0) & (u > 0)):
                for sign in (1.0, -1.0):
                    if time.perf_counter() > deadline:
                        return pre_bounds
                    res = problem.solve(problem.output_row(sign * a_mat[j]), time_limit=deadline - time.perf_counter(),
                                        relax=True)
                    if res.status == 0:
                        value = sign * (res.fun + 0.0) + b_vec[j]
                        slack = _SLACK * (1 + abs(value)) + 1e-9
                        if sign > 0:
                            l[j] = max(l[j], value - slack)
                        else:
                            u[j] = min(u[j], value + slack)
        return pre_bounds

    @staticmethod
    def _predicts(model: nn.Module, point: Tensor, y: int) -> bool:
        with torch.no_grad():
            return int(model(point.unsqueeze(0)).argmax(1)) != y

    # -- minimal perturbation ---------------------------------------------------------------
    def minimal_perturbation(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        threat: ThreatModel,
        upper: Tensor | None = None,
        lower: Tensor | None = None,
    ) -> MILPResult:
        """Minimal perturbation per sample of ``x [N, ...]`` in ``threat``'s norm ("Linf" or
        "L1") and box; ``threat`` is unbounded (``eps = math.inf``,
        :func:`~robustlab.threat.require_unbounded`), since the distance is the output.

        ``upper [N]`` (e.g. an attack's distances, ``inf`` where it failed) restricts the
        domain, which makes the bounds and the MILP far tighter; ``lower [N]`` (e.g. a certified
        radius) is used as the lower end of the interval for a sample that times out.
        """
        require_unbounded(threat, "MILPVerifier.minimal_perturbation")
        norm = threat.norm
        if norm not in ("Linf", "L1"):
            raise RobustlabError(f"exact minimal perturbation supports Linf and L1 (L2 needs MIQP), not {norm}")
        out = MILPResult([], [], [], [], [], [], [], norm=norm)
        full = (threat.bounds[1] - threat.bounds[0]) * (1 if norm == "Linf" else x[0].numel())
        with FrozenEval(model):
            for i in range(x.shape[0]):
                start = time.perf_counter()
                ub = math.inf if upper is None else float(upper[i])
                lb_hint = 0.0 if lower is None else float(lower[i])
                self._minimal_one(model, x[i], int(y[i]), threat, ub, lb_hint, full, start, out)
                out.seconds.append(time.perf_counter() - start)
        return out

    def _minimal_one(self, model: nn.Module, x: Tensor, y: int, threat: ThreatModel, ub: float, lb_hint: float,
                     full: float, start: float, out: MILPResult) -> None:
        deadline = start + self.time_limit
        norm = threat.norm
        if self._predicts(model, x, y):
            out.status.append("misclassified")
            out.lower.append(0.0)
            out.upper.append(0.0)
            out.counterexample.append(x.clone())
            out.counterexample_ok.append(True)
            out.unstable.append(0)
            return
        radius = min(full, ub * (1 + 1e-3) + 1e-6) if math.isfinite(ub) else full
        layers, pre_bounds, x_lower, x_upper = self._setup(model, x.unsqueeze(0), torch.tensor([y]), threat, radius)
        if self.lp_tighten:
            pre_bounds = self._tighten(layers, pre_bounds, x_lower, x_upper, deadline)
        problem = _Problem(layers, pre_bounds, x_lower, x_upper)
        x0 = x.detach().double().reshape(-1).numpy()
        n = x0.size
        if norm == "Linf":
            t = problem._add_var(0.0, radius)
            for i in range(n):
                problem.add_row([i, t], [1.0, -1.0], -math.inf, x0[i])
                problem.add_row([i, t], [1.0, 1.0], x0[i], math.inf)
            objective = {t: 1.0}
            dist_cols, dist_vals = [t], [1.0]
        else:
            s = [problem._add_var(0.0, radius) for _ in range(n)]
            for i in range(n):
                problem.add_row([s[i], i], [1.0, -1.0], -x0[i], math.inf)
                problem.add_row([s[i], i], [1.0, 1.0], x0[i], math.inf)
            objective = dict.fromkeys(s, 1.0)
            dist_cols, dist_vals = s, [1.0] * n
        a_last, b_last = layers[-1]
        with torch.no_grad():
            order = model(x.unsqueeze(0))[0].argsort(descending=True).tolist()
        best, best_point, lowers, timed_out = math.inf, None, [], False
        base_rows = problem.num_rows
        for target in (c for c in order if c != y):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                timed_out = True
                lowers.append(lb_hint)
                continue
            # Rows of this target's disjunct (removed again before the next target).
            del problem.rows[base_rows:], problem.cols[base_rows:], problem.vals[base_rows:]
            del problem.row_lb[base_rows:], problem.row_ub[base_rows:]
            problem.num_rows = base_rows
            cols_last = np.arange(problem.last_off, problem.last_off + problem.last_size)
            for j in range(a_last.shape[0]):
                if j != target:
                    problem.add_row(cols_last, a_last[target] - a_last[j], b_last[j] - b_last[target] + self.margin, math.inf)
            if math.isfinite(best):
                problem.add_row(dist_cols, dist_vals, -math.inf, best)
            res = problem.solve(objective, time_limit=remaining)
            if res.x is not None and res.fun is not None and res.fun < best:
                best, best_point = float(res.fun), res.x[:n].copy()
            if res.status == 0 or res.status == 2:  # optimal or infeasible: this target is settled
                continue
            timed_out = True
            dual = getattr(res, "mip_dual_bound", None)
            lowers.append(float(dual) if dual is not None and np.isfinite(dual) else lb_hint)
        out.unstable.append(problem.unstable)
        point = None
        if best_point is not None:
            lo, hi = threat.bounds
            point = torch.from_numpy(np.clip(best_point, lo, hi)).to(x.dtype).reshape(x.shape)
            diff = (point.double() - x.double()).reshape(-1)
            best = float(diff.abs().max() if norm == "Linf" else diff.abs().sum())
        out.counterexample.append(point)
        out.counterexample_ok.append(None if point is None else self._predicts(model, point, y))
        if not timed_out:
            out.status.append("optimal")
            # No misclassification inside the domain: the minimum is at least its radius.
            out.lower.append(best if math.isfinite(best) else radius)
            out.upper.append(best)
        else:
            out.status.append("timeout")
            out.lower.append(max(lb_hint, min([*lowers, best])))
            out.upper.append(min(best, ub))

    # -- verification at eps ---------------------------------------------------------------
    def verify(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: ThreatModel) -> MILPResult:
        """Decide per sample whether every point of ``threat``'s ball (Linf or L1, radius
        ``threat.eps``) ∩ box is classified ``y``: "robust", "not-robust" (with a forward-checked
        counterexample) or "timeout". ``upper`` is an upper bound on ``max_{x', t != y} z_t - z_y``
        (< 0: robust)."""
        return self._verify(model, x, y, threat, [threat.eps] * x.shape[0])[0]

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: ThreatModel,
                 eps: float | Tensor | None = None) -> CertResult:
        """The :class:`~robustlab.certify.certifiers.Certifier` contract: certify ``x [N, ...]``
        with labels ``y [N]`` against ``threat`` (or per-sample radii ``eps [N]`` in its norm
        and box). ``margins [N, K]`` are lower bounds on ``z_y - z_j``: exact where the
        target's MILP finished, the solver's dual bound where it timed out, ``-inf`` for the
        targets not examined (after a counterexample or the time limit) and for samples
        misclassified clean. Certified exactly where :meth:`verify` says "robust";
        ``extras["milp"]`` holds that :class:`MILPResult`."""
        x, y = check_certify_inputs(model, x, y, threat)
        if threat.norm not in ("Linf", "L1"):
            raise RobustlabError(f"MILP verification supports Linf and L1, not {threat.norm}")
        start = time.perf_counter()
        eps_t = eps_per_sample(threat.eps if eps is None else eps, x)
        with FrozenEval(model), torch.no_grad():
            logits = model(x)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
            raise RobustlabError(f"labels must lie in [0, {logits.shape[1]})")
        result, margins = self._verify(model, x, y, threat, eps_t.tolist(), logits.shape[1])
        margins = margins.to(x.dtype)
        margin = margins.amin(dim=1) if margins.numel() else x.new_zeros(x.shape[0])
        correct = torch.tensor([s != "misclassified" for s in result.status], dtype=torch.bool)
        certified = (margin > 0) & correct
        return CertResult(certified, margins, margin, eps_t, threat.norm, self.method, correct,
                          time.perf_counter() - start, extras={"milp": result})

    def _verify(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, eps: list[float],
                classes: int | None = None) -> tuple[MILPResult, Tensor]:
        """:meth:`verify` at per-sample radii, and the ``[N, K]`` margin lower bounds (float64)."""
        if threat.norm not in ("Linf", "L1"):
            raise RobustlabError(f"MILP verification supports Linf and L1, not {threat.norm}")
        out = MILPResult([], [], [], [], [], [], [], norm=threat.norm)
        rows = []
        with FrozenEval(model):
            for i in range(x.shape[0]):
                start = time.perf_counter()
                rows.append(self._verify_one(model, x[i], int(y[i]), eps[i], threat, start, out, classes))
                out.seconds.append(time.perf_counter() - start)
        margins = torch.stack(rows) if rows else torch.zeros((0, classes or 0), dtype=torch.float64)
        return out, margins

    def _verify_one(self, model: nn.Module, x: Tensor, y: int, eps: float, threat: ThreatModel, start: float,
                    out: MILPResult, classes: int | None) -> Tensor:
        """Append sample ``x``'s outcome to ``out``; return its ``[K]`` margin lower bounds."""
        deadline = start + self.time_limit
        with torch.no_grad():
            order = model(x.unsqueeze(0))[0].argsort(descending=True).tolist()
        margins = torch.full((classes or len(order),), -math.inf, dtype=torch.float64)
        margins[y] = math.inf
        if self._predicts(model, x, y):
            out.status.append("misclassified")
            out.lower.append(math.inf)
            out.upper.append(math.inf)
            out.counterexample.append(x.clone())
            out.counterexample_ok.append(True)
            out.unstable.append(0)
            return margins
        layers, pre_bounds, x_lower, x_upper = self._setup(model, x.unsqueeze(0), torch.tensor([y]), threat, eps)
        if self.lp_tighten:
            pre_bounds = self._tighten(layers, pre_bounds, x_lower, x_upper, deadline)
        problem = _Problem(layers, pre_bounds, x_lower, x_upper)
        n = x.numel()
        if threat.norm == "L1":
            x0 = x.detach().double().reshape(-1).numpy()
            s = [problem._add_var(0.0, eps) for _ in range(n)]
            for i in range(n):
                problem.add_row([s[i], i], [1.0, -1.0], -x0[i], math.inf)
                problem.add_row([s[i], i], [1.0, 1.0], x0[i], math.inf)
            problem.add_row(s, [1.0] * n, -math.inf, eps)
        out.unstable.append(problem.unstable)
        a_last, b_last = layers[-1]
        upper_bound, worst, timed_out = -math.inf, -math.inf, False
        for target in (c for c in order if c != y):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                timed_out, upper_bound = True, math.inf
                break
            weights = a_last[target] - a_last[y]
            const = b_last[target] - b_last[y]
            res = problem.solve({k: -v for k, v in problem.output_row(weights).items()}, time_limit=remaining)
            if res.status == 0:
                target_upper = -float(res.fun) + const
            else:
                timed_out = True
                dual = getattr(res, "mip_dual_bound", None)
                target_upper = -float(dual) + const if dual is not None and np.isfinite(dual) else math.inf
            upper_bound = max(upper_bound, target_upper)
            margins[target] = -target_upper
            if res.x is not None:
                value = -float(res.fun) + const
                worst = max(worst, value)
                if value > 0:
                    lo, hi = threat.bounds
                    point = torch.from_numpy(np.clip(res.x[:n], lo, hi)).to(x.dtype).reshape(x.shape)
                    if self._predicts(model, point, y):
                        out.status.append("not-robust")
                        out.lower.append(worst)
                        out.upper.append(math.inf)
                        out.counterexample.append(point)
                        out.counterexample_ok.append(True)
                        return margins
        out.counterexample.append(None)
        out.counterexample_ok.append(None)
        out.lower.append(worst)
        out.upper.append(upper_bound)
        if upper_bound < 0:
            out.status.append("robust")
        elif timed_out:
            out.status.append("timeout")
        else:
            # The optimum is >= 0 but no solver point was confirmed misclassified by a forward
            # pass (a tie at the decision boundary, or round-off): say so rather than guess.
            out.status.append("unconfirmed")
        return margins
