"""Decision-based attacks: they see only the model's decision (adversarial or not, from the
argmax of the logits), never scores or gradients. Both are minimum-norm attacks: they start
from an adversarial point far from ``x`` and walk along the decision boundary towards ``x``.

- :class:`BoundaryAttack` (Brendel, Rauber & Bethge, ICLR 2018, "Decision-Based Adversarial
  Attacks: Reliable Attacks Against Black-Box Machine Learning Models"), L2;
- :class:`HopSkipJump` (Chen, Jordan & Wainwright, IEEE S&P 2020, "HopSkipJumpAttack: A
  Query-Efficient Decision-Based Attack"), L2 and L∞.

Reference implementations: Foolbox 3 (``bethgelab/foolbox:foolbox/attacks/boundary_attack.py``,
``hop_skip_jump.py``) and the HopSkipJump authors' ``Jianbo-Lab/HSJA:hsja.py``.

The eps of the threat model does not steer the search (as for the other minimum-norm attacks):
the template projects the result onto the threat set afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from robustlab._tensors import flat, per_sample
from robustlab.attacks.base import Attack, ModelOracle, is_adversarial, project_rounding_inward
from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel
from robustlab.validate import is_int

__all__ = ["HSJA", "Boundary", "BoundaryAttack", "HopSkipJump", "HopSkipJumpAttack"]

# Bisection steps of the initial blend between x and the adversarial noise: precision 2^-10,
# the reference code's tolerance 0.001 (``initialize`` in hsja.py).
_BLEND_STEPS = 10

# Most halvings of HopSkipJump's geometric step-size search; past them the iterate stays put.
# The search starts at dist / sqrt(t) from a point on the adversarial side, so a handful suffice.
_MAX_HALVINGS = 20

# Noise vectors per chunk of HopSkipJump's gradient estimate are capped so that a chunk holds
# at most this many input elements (bounded memory for large inputs and eval counts).
_CHUNK_ELEMENTS = 2**22


class _Decisions:
    """The model as a decision-based attack sees it: whether points are adversarial for given
    samples, with the queries counted per sample."""

    def __init__(self, oracle: ModelOracle, y: Tensor, targets: Tensor | None):
        self.oracle, self.y, self.targets = oracle, y, targets
        self.queries = torch.zeros(y.shape[0], dtype=torch.int64, device=y.device)

    def __call__(self, idx: Tensor, points: Tensor) -> Tensor:
        """``bool[M]``: is ``points[i]`` adversarial for sample ``idx[i]`` (``idx`` may repeat)."""
        self.queries.index_add_(0, idx, torch.ones_like(idx))
        targets = None if self.targets is None else self.targets[idx]
        return is_adversarial(self.oracle.logits(points), self.y[idx], targets)


def _uniform_box(shape: torch.Size, threat: ThreatModel, generator: torch.Generator | None, like: Tensor) -> Tensor:
    lo, hi = threat.bounds
    return lo + (hi - lo) * torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


@dataclass(frozen=True, kw_only=True)
class _DecisionBased(Attack):
    """Shared configuration and initialisation of the decision-based attacks."""

    minimum_norm = True

    max_queries: int = 10000
    init_draws: int = 100
    init_attack: Attack | None = None

    def _check_common(self) -> None:
        for label in ("max_queries", "init_draws"):
            value = getattr(self, label)
            if not is_int(value, 1):
                raise RobustlabError(f"{label} must be a positive integer, got {value!r}")
        if self.init_attack is not None and not isinstance(self.init_attack, Attack):
            raise RobustlabError(f"init_attack must be a robustlab Attack or None, got {type(self.init_attack).__name__}")

    def _check_budget(self, extra: int, x: Tensor) -> None:
        """Raise unless ``max_queries`` covers the initialisation's worst case plus ``extra``."""
        cost = 1 + self.init_draws + _BLEND_STEPS + extra
        if self.max_queries < cost:
            raise RobustlabError(
                f"max_queries={self.max_queries} is too small: finding and refining a starting point may take "
                f"{cost} queries for inputs of {math.prod(x.shape[1:])} features (init_draws={self.init_draws}); "
                "raise max_queries or lower init_draws"
            )

    def _initialise(self, decide: _Decisions, x: Tensor, threat: ThreatModel,
                    generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(start, found, clean)`` per sample: an adversarial starting point where ``found``,
        and whether ``x`` itself is already adversarial (``clean``; then ``start = x``).

        Starting points come from ``init_attack`` where it succeeds, else from uniform noise in
        the box (up to ``init_draws`` draws, each only for samples still without one), blended
        towards ``x`` by bisection to the last adversarial blend (``initialize`` in hsja.py;
        Foolbox's ``LinearSearchBlendedUniformNoiseAttack`` searches the blend linearly).
        """
        n = x.shape[0]
        everyone = torch.arange(n, device=x.device)
        clean = decide(everyone, x)
        start, found = x.clone(), clean.clone()
        if self.init_attack is not None:
            self._from_init_attack(self.init_attack, decide, x, threat, generator, start, found)
        noise = x.clone()
        from_noise = torch.zeros_like(found)
        for _ in range(self.init_draws):
            todo = (~found).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            draw = _uniform_box(x[todo].shape, threat, generator, x)
            hit = decide(todo, draw)
            noise[todo[hit]] = draw[hit]
            found[todo[hit]] = True
            from_noise[todo[hit]] = True
        todo = from_noise.nonzero().squeeze(1)
        if todo.numel() == 0:
            return start, found, clean
        low, high = x.new_zeros(todo.numel()), x.new_ones(todo.numel())
        for _ in range(_BLEND_STEPS):
            mid = (low + high) / 2
            hit = decide(todo, self._blend(x[todo], noise[todo], mid))
            high, low = torch.where(hit, mid, high), torch.where(hit, low, mid)
        start[todo] = self._blend(x[todo], noise[todo], high)
        return start, found, clean

    @staticmethod
    def _blend(x: Tensor, other: Tensor, alpha: Tensor) -> Tensor:
        return x + per_sample(alpha, x) * (other - x)

    def _from_init_attack(self, init_attack: Attack, decide: _Decisions, x: Tensor, threat: ThreatModel,
                          generator: torch.Generator | None, start: Tensor, found: Tensor) -> None:
        """Run ``init_attack`` (unbounded) on the samples without a start, through this attack's
        own oracle: a wrapper's oracle (EOT's averaging, BPDA's backward) applies to it too, and
        its passes land on the same counters. Its successes (checked by one more decision
        each) become starts."""
        todo = (~found).nonzero().squeeze(1)
        if todo.numel() == 0:
            return
        if threat.norm not in init_attack.norms:
            raise RobustlabError(f"init_attack {type(init_attack).__name__} supports the norms "
                                 f"{sorted(init_attack.norms)}, not {threat.norm}")
        targets = None if decide.targets is None else decide.targets[todo]
        unbounded = threat.with_eps(math.inf)
        x_init, _ = init_attack._run(decide.oracle, x[todo], decide.y[todo], threat=unbounded, targets=targets,
                                          generator=generator)
        x_init = project_rounding_inward(unbounded, x[todo], x_init.detach())
        hit = decide(todo, x_init)
        start[todo[hit]] = x_init[hit]
        found[todo[hit]] = True


@dataclass(frozen=True, kw_only=True)
class BoundaryAttack(_DecisionBased):
    """Boundary Attack: a random walk along the decision boundary towards ``x`` (L2).

    From an adversarial start (see ``init_draws``/``init_attack``), each step (paper Sec. 3.1,
    Foolbox's ``draw_proposals``) for every sample still running, with ``v = x - x_adv``:

    1. orthogonal step: Gaussian noise made orthogonal to ``v``, scaled to
       ``spherical_step * ||v||``, added to ``x_adv`` and projected back onto the sphere of
       radius ``||v||`` around ``x`` (Pythagoras), clipped to the box;
    2. step towards ``x`` by ``source_step * ||v||``, clipped to the box;
    3. one query: the candidate replaces ``x_adv`` if adversarial and closer to ``x``.

    Every ``update_stats_every`` steps the orthogonal point of step 1 is queried as well, and the
    success rates over the last 100 orthogonal points and the last 30 candidates adapt the steps
    (paper Sec. 3.2; thresholds from Foolbox): orthogonal success > 50%: both steps x
    ``step_adaptation``, < 20%: both / ``step_adaptation``; candidate success > 25%:
    ``source_step`` x ``step_adaptation``, < 10%: ``source_step`` / ``step_adaptation``.
    A sample stops when ``source_step < source_step_convergence`` or its queries run out.
    Noise is drawn per sample (Foolbox shares one draw across the batch).

    Args:
        max_queries: per-sample query budget, the initialisation included, 10000 (the paper
            reports results after up to ~1.2M queries, Foolbox runs 25000 steps).
        spherical_step, source_step: initial relative step sizes, 0.01 (Foolbox).
        step_adaptation: factor of the step-size adaptation, 1.5 (Foolbox).
        source_step_convergence: convergence threshold on ``source_step``, 1e-7 (Foolbox).
        update_stats_every: steps between orthogonal-point queries, 10 (Foolbox).
        init_draws: most uniform-noise draws per sample when looking for a start, 100.
        init_attack: an attack (run unbounded) whose successful outputs start the walk, e.g. a
            transfer attack; ``None`` uses uniform noise only. Its forwards and backwards are
            added to the result's counters but not to ``extras["queries"]``.

    ``extras``: ``queries`` (``[N]`` decisions asked per sample, at most ``max_queries``),
    ``initial_distance`` (L2 distance of the start, ``inf`` without one) and ``best_distance``
    (of the returned point; 0 where ``x`` is already adversarial, ``inf`` where no start was
    found: then ``x`` is returned).

    Cost: ``sum(extras["queries"])`` forwards, no backward (without ``init_attack``), plus the
    template's two forwards.
    """

    name = "boundary"
    norms = frozenset({"L2"})

    spherical_step: float = 0.01
    source_step: float = 0.01
    step_adaptation: float = 1.5
    source_step_convergence: float = 1e-7
    update_stats_every: int = 10

    def __post_init__(self) -> None:
        self._check_common()
        for label in ("spherical_step", "source_step", "source_step_convergence"):
            value = getattr(self, label)
            if not (value > 0 and math.isfinite(value)):
                raise RobustlabError(f"{label} must be a positive finite number, got {value!r}")
        if not (self.step_adaptation > 1 and math.isfinite(self.step_adaptation)):
            raise RobustlabError(f"step_adaptation must be a finite number > 1, got {self.step_adaptation!r}")
        if not is_int(self.update_stats_every, 1):
            raise RobustlabError(f"update_stats_every must be a positive integer, got {self.update_stats_every!r}")

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        self._check_budget(0, x)
        decide = _Decisions(oracle, y, targets)
        x_adv, found, clean = self._initialise(decide, x, threat, generator)
        n = x.shape[0]
        inf = x.new_full((n,), math.inf)
        initial = torch.where(found, threat.distance(x, x_adv), inf)
        spherical = x.new_full((n,), self.spherical_step)
        source = x.new_full((n,), self.source_step)
        spherical_history = _History(n, 100, x.device)
        step_history = _History(n, 30, x.device)
        running = found & ~clean
        step = 0
        while True:
            step += 1
            check = step % self.update_stats_every == 0
            running &= (source >= self.source_step_convergence) & (decide.queries + 1 + check <= self.max_queries)
            todo = running.nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            candidate, orthogonal = self._proposals(x[todo], x_adv[todo], spherical[todo], source[todo], threat, generator)
            hit = decide(todo, candidate)
            closer = threat.distance(x[todo], candidate) < threat.distance(x[todo], x_adv[todo])
            x_adv[todo] = torch.where(per_sample(hit & closer, candidate), candidate, x_adv[todo])
            if check:
                spherical_history.append(todo, decide(todo, orthogonal))
                step_history.append(todo, hit)
                self._adapt(spherical, source, spherical_history, step_history)
        best = torch.where(found, threat.distance(x, x_adv), inf)
        return x_adv, {"queries": decide.queries, "initial_distance": initial, "best_distance": best}

    @staticmethod
    def _proposals(x: Tensor, x_adv: Tensor, spherical: Tensor, source: Tensor, threat: ThreatModel,
                   generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """``(candidate, orthogonal)``: the orthogonal step then the step towards ``x``, and the
        orthogonal step alone (both clipped to the box)."""
        to_source = flat(x - x_adv)
        distance = to_source.norm(dim=1, keepdim=True).clamp_min(1e-12)
        direction = to_source / distance
        eta = torch.randn(to_source.shape, generator=generator, device=x.device, dtype=x.dtype)
        eta = eta - (eta * direction).sum(dim=1, keepdim=True) * direction
        eta = eta * (spherical[:, None] * distance / eta.norm(dim=1, keepdim=True).clamp_min(1e-12))
        orthogonal = threat.clip_to_box(flat(x) + (eta - to_source) / (spherical[:, None].square() + 1).sqrt())
        new_source = flat(x) - orthogonal
        new_distance = new_source.norm(dim=1, keepdim=True).clamp_min(1e-12)
        # Step length, corrected for the clipping's move off the sphere.
        length = (source[:, None] * distance + new_distance - distance).clamp_min(0) / new_distance
        candidate = threat.clip_to_box(orthogonal + length * new_source)
        return candidate.reshape(x.shape), orthogonal.reshape(x.shape)

    def _adapt(self, spherical: Tensor, source: Tensor, spherical_history: _History, step_history: _History) -> None:
        factor = self.step_adaptation
        full, rate = spherical_history.full(), spherical_history.rate()
        up, down = full & (rate > 0.5), full & (rate < 0.2)
        # In the steps' own dtype: a float32 factor 1 / 1.5 would round float64 steps.
        for steps in (spherical, source):
            steps.copy_(torch.where(up, steps * factor, torch.where(down, steps / factor, steps)))
        spherical_history.clear(up | down)
        full, rate = step_history.full(), step_history.rate()
        up, down = full & (rate > 0.25), full & (rate < 0.1)
        source.copy_(torch.where(up, source * factor, torch.where(down, source / factor, source)))
        step_history.clear(up | down)


Boundary = BoundaryAttack


class _History:
    """Per sample, the last ``length`` outcomes (a ring buffer) and how many were recorded since
    the last clear."""

    def __init__(self, n: int, length: int, device: torch.device):
        self.values = torch.zeros(n, length, dtype=torch.bool, device=device)
        self.count = torch.zeros(n, dtype=torch.int64, device=device)
        self.length = length

    def append(self, idx: Tensor, outcome: Tensor) -> None:
        self.values[idx, self.count[idx] % self.length] = outcome
        self.count[idx] += 1

    def full(self) -> Tensor:
        return self.count >= self.length

    def rate(self) -> Tensor:
        return self.values.float().mean(dim=1)

    def clear(self, which: Tensor) -> None:
        self.count[which] = 0


@dataclass(frozen=True, kw_only=True)
class HopSkipJump(_DecisionBased):
    """HopSkipJumpAttack: boundary search, gradient-direction estimate from decisions, and a
    geometric step (paper Algorithm 2), L2 and L∞.

    ``x`` is ``[N, ...]`` with ``d`` features per sample. From an adversarial start (see
    ``init_draws``/``init_attack``), a bisection moves it to the boundary; then each iteration
    ``t = 1, 2, ...`` for every sample still within its budget:

    1. estimate the gradient direction at the boundary point ``x_t`` from ``B_t = min(B_0 sqrt(t),
       max_evaluations)`` decisions at ``x_t + delta_t u_b`` (``u_b`` uniform on the unit sphere
       for L2, uniform in the cube then L2-normalised for L∞; clipped to the box):
       ``mean((phi_b - mean phi) u_b)`` with ``phi = ±1``, the baseline omitted when every
       ``phi_b`` agrees (paper eq. 16, Sec. 3.3); ``delta_1 = 0.1 (hi - lo)``, later
       ``delta_t = sqrt(d) theta ||x_t - x||_2`` (L2) or ``d theta ||x_t - x||_inf`` (L∞)
       (paper Sec. 3.4, ``select_delta``);
    2. step along the estimate (L2) or its sign (L∞) by ``xi = ||x_t - x|| / sqrt(t)``, halved
       until the point is adversarial (paper Sec. 4, geometric progression; at most 20 halvings,
       after which the iterate stays);
    3. bisect back to the boundary between ``x`` and that point: on the segment (L2) or over the
       L∞ radius (L∞), to precision ``theta`` (relative to the distance for L∞), with
       ``theta = gamma / d^(3/2)`` (L2) or ``gamma / d^2`` (L∞) (paper Sec. 4).

    The iterate is always adversarial (the bisection keeps the adversarial end); the closest
    one seen is returned. The distance used for ``delta_t`` is the current iterate's, as in
    Foolbox (the reference code uses the distance before its last bisection).

    Args:
        max_queries: per-sample query budget, the initialisation included, 10000. An
            iteration runs only if its worst-case cost fits; the initialisation must fit too.
        steps: most iterations, 64 (Foolbox; the reference code uses 40).
        initial_evaluations: ``B_0 = 100`` (paper Sec. 4, reference code).
        max_evaluations: cap on ``B_t``, 10000 (reference code).
        gamma: 1.0 (paper Sec. 4, reference code, Foolbox).
        init_draws, init_attack: as in :class:`BoundaryAttack`.

    ``extras``: ``queries``, ``initial_distance`` and ``best_distance`` as in
    :class:`BoundaryAttack` (distances in the threat model's norm).

    Cost: ``sum(extras["queries"])`` forwards, no backward (without ``init_attack``), plus the
    template's two forwards.
    """

    name = "hopskipjump"
    norms = frozenset({"L2", "Linf"})

    steps: int = 64
    initial_evaluations: int = 100
    max_evaluations: int = 10000
    gamma: float = 1.0

    def __post_init__(self) -> None:
        self._check_common()
        for label in ("steps", "initial_evaluations", "max_evaluations"):
            value = getattr(self, label)
            if not is_int(value, 1):
                raise RobustlabError(f"{label} must be a positive integer, got {value!r}")
        if not (self.gamma > 0 and math.isfinite(self.gamma)):
            raise RobustlabError(f"gamma must be a positive finite number, got {self.gamma!r}")

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        lo, hi = threat.bounds
        d = math.prod(x.shape[1:])
        linf = threat.norm == "Linf"
        theta = self.gamma / d**2 if linf else self.gamma / d**1.5
        # Bisection steps of one boundary search, at most: the gap shrinks from at most
        # max(1, hi - lo) (L∞ radius) or 1 (L2 blend) to theta.
        bisections = math.ceil(math.log2(max(1.0, hi - lo) / theta if linf else 1 / theta)) + 1
        self._check_budget(bisections, x)
        decide = _Decisions(oracle, y, targets)
        start, found, clean = self._initialise(decide, x, threat, generator)
        inf = x.new_full((x.shape[0],), math.inf)
        initial = torch.where(found, threat.distance(x, start), inf)
        x_adv = start.clone()
        running = found & ~clean
        todo = running.nonzero().squeeze(1)
        x_adv[todo] = self._boundary_search(decide, todo, x[todo], x_adv[todo], linf, theta)
        best, best_distance = x_adv.clone(), torch.where(found, threat.distance(x, x_adv), inf)
        for t in range(1, self.steps + 1):
            evaluations = min(int(self.initial_evaluations * math.sqrt(t)), self.max_evaluations)
            running &= decide.queries + evaluations + _MAX_HALVINGS + bisections <= self.max_queries
            todo = running.nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            xt, x0 = x_adv[todo], x[todo]
            distance = threat.distance(x0, xt)
            if t == 1:
                delta = torch.full_like(distance, 0.1 * (hi - lo))
            else:
                delta = (d if linf else math.sqrt(d)) * theta * distance
            direction = self._estimate_direction(decide, todo, xt, delta, evaluations, linf, threat, generator)
            if linf:
                direction = direction.sign()
            stepped = self._geometric_step(decide, todo, xt, direction, distance / math.sqrt(t), threat)
            x_adv[todo] = self._boundary_search(decide, todo, x0, stepped, linf, theta)
            new_distance = threat.distance(x0, x_adv[todo])
            closer = new_distance < best_distance[todo]
            best[todo] = torch.where(per_sample(closer, xt), x_adv[todo], best[todo])
            best_distance[todo] = torch.where(closer, new_distance, best_distance[todo])
        return best, {"queries": decide.queries, "initial_distance": initial, "best_distance": best_distance}

    @staticmethod
    def _boundary_search(decide: _Decisions, idx: Tensor, x: Tensor, x_adv: Tensor, linf: bool, theta: float) -> Tensor:
        """Bisect between ``x`` and the adversarial ``x_adv`` (per sample) to the boundary; return
        the adversarial end (``binary_search_batch`` in hsja.py). L2 bisects the blend factor in
        ``[0, 1]`` to precision ``theta``; L∞ the radius of the box ``[x - r, x + r]`` that
        ``x_adv`` is clipped into, from its L∞ distance, to ``theta * min(distance, 1)``."""
        m = x.shape[0]
        if linf:
            high = flat(x_adv - x).abs().amax(dim=1) if m else x.new_zeros(0)
            threshold = (high * theta).clamp_max(theta)
        else:
            high, threshold = x.new_ones(m), x.new_full((m,), theta)
        low = torch.zeros_like(high)

        def point(alpha: Tensor, rows: Tensor) -> Tensor:
            if linf:
                r = per_sample(alpha, x[rows])
                return torch.minimum(torch.maximum(x_adv[rows], x[rows] - r), x[rows] + r)
            return x[rows] + per_sample(alpha, x[rows]) * (x_adv[rows] - x[rows])

        while True:
            rows = (high - low > threshold).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            mid = (high[rows] + low[rows]) / 2
            hit = decide(idx[rows], point(mid, rows))
            high[rows] = torch.where(hit, mid, high[rows])
            low[rows] = torch.where(hit, low[rows], mid)
        return point(high, torch.arange(m, device=x.device))

    @staticmethod
    def _estimate_direction(decide: _Decisions, idx: Tensor, x_adv: Tensor, delta: Tensor, evaluations: int,
                            linf: bool, threat: ThreatModel, generator: torch.Generator | None) -> Tensor:
        """Unit-L2 estimate of the gradient direction of the decision at ``x_adv`` (``[M, ...]``)
        from ``evaluations`` random decisions per sample (``approximate_gradient`` in hsja.py)."""
        m = x_adv.shape[0]
        features = math.prod(x_adv.shape[1:])
        chunk = max(1, min(evaluations, _CHUNK_ELEMENTS // max(1, m * features)))
        weighted = torch.zeros_like(flat(x_adv))  # sum of phi_b u_b
        plain = torch.zeros_like(weighted)  # sum of u_b
        votes = x_adv.new_zeros(m)  # sum of phi_b
        scale = delta[:, None, None]
        for begin in range(0, evaluations, chunk):
            b = min(chunk, evaluations - begin)
            shape = (m, b, features)
            if linf:
                u = 2 * torch.rand(shape, generator=generator, device=x_adv.device, dtype=x_adv.dtype) - 1
            else:
                u = torch.randn(shape, generator=generator, device=x_adv.device, dtype=x_adv.dtype)
            u = u / u.norm(dim=2, keepdim=True).clamp_min(1e-12)
            origin = flat(x_adv)[:, None, :]
            probes = threat.clip_to_box(origin + scale * u)
            u = (probes - origin) / scale
            hit = decide(idx.repeat_interleave(b), probes.reshape(m * b, *x_adv.shape[1:])).reshape(m, b)
            phi = hit.to(x_adv.dtype) * 2 - 1
            weighted += (phi[:, :, None] * u).sum(dim=1)
            plain += u.sum(dim=1)
            votes += phi.sum(dim=1)
        mean_phi = (votes / evaluations)[:, None]
        unanimous = mean_phi.abs() == 1
        grad = torch.where(unanimous, weighted, weighted - mean_phi * plain) / evaluations
        grad = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
        direction: Tensor = grad.reshape(x_adv.shape)
        return direction

    @staticmethod
    def _geometric_step(decide: _Decisions, idx: Tensor, x_adv: Tensor, direction: Tensor, size: Tensor,
                        threat: ThreatModel) -> Tensor:
        """``clip(x_adv + xi direction)`` with ``xi`` halved from ``size`` until adversarial
        (``geometric_progression_for_stepsize`` in hsja.py); ``x_adv`` where no ``xi`` is."""
        size = size.clone()
        accepted = torch.zeros_like(size)
        pending = torch.ones_like(size, dtype=torch.bool)
        for _ in range(_MAX_HALVINGS):
            rows = pending.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            trial = threat.clip_to_box(x_adv[rows] + per_sample(size[rows], direction[rows]) * direction[rows])
            hit = decide(idx[rows], trial)
            accepted[rows] = torch.where(hit, size[rows], accepted[rows])
            pending[rows] = ~hit
            size[rows] = size[rows] / 2
        return threat.clip_to_box(x_adv + per_sample(accepted, direction) * direction)


HopSkipJumpAttack = HopSkipJump
HSJA = HopSkipJump
