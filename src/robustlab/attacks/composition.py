"""Attack wrappers against obfuscated gradients (Athalye, Carlini & Wagner, ICML 2018):
BPDA, EOT, transfer, and reparameterization for defenses defined by an inner optimization.

Each wrapper is itself an :class:`Attack` around any gradient attack, so the template still
checks inputs, projects, restores the model and judges success by a fresh forward pass of the
real model. BPDA and EOT change only how the wrapped attack's gradients are computed, by
handing it a substitute :class:`ModelOracle` that routes every pass through the template's
oracle: the cost counters stay honest (EOT with ``n`` draws costs ``n`` forwards and backwards
per gradient). They compose either way round, e.g. ``EOT(BPDA(PGD()), draws=30)`` for a
randomised, non-differentiable defense.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.attacks.base import Attack, ModelOracle, is_adversarial, project_rounding_inward
from robustlab.attacks.gradient import BestIterate
from robustlab.documentation import docs_pointer
from robustlab.errors import RobustlabError, SingleDrawEOTWarning
from robustlab.losses import Loss, margin
from robustlab.models.preprocessing import InputTransformDefense
from robustlab.threat import ThreatModel
from robustlab.validate import is_int, is_number

__all__ = ["BPDA", "EOT", "MinimumNormEnsemble", "TransferAttack", "Reparameterization", "SingleDrawEOTWarning",
           "bpda_mode"]


@contextlib.contextmanager
def bpda_mode(model: nn.Module) -> Iterator[list[InputTransformDefense]]:
    """Within the context, every :class:`InputTransformDefense` inside ``model`` keeps its real
    forward value and back-propagates through its ``approximation``. Yields those defenses;
    their previous settings are restored on exit."""
    defenses = [m for m in model.modules() if isinstance(m, InputTransformDefense)]
    before = [d.bpda for d in defenses]
    try:
        for d in defenses:
            d.bpda = True
        yield defenses
    finally:
        for d, flag in zip(defenses, before):
            d.bpda = flag


class _RelayOracle(ModelOracle):
    """An oracle that answers through another, so that every pass lands on its counters."""

    def __init__(self, base: ModelOracle):
        self.base = base
        self.model = base.model

    @property
    def forwards(self) -> int:  # type: ignore[override]
        return self.base.forwards

    @property
    def backwards(self) -> int:  # type: ignore[override]
        return self.base.backwards


class _BPDAOracle(_RelayOracle):
    def logits(self, x: Tensor) -> Tensor:
        return self.base.logits(x)

    def losses_and_grads(self, x: Tensor, loss_fns: Sequence[Callable[[Tensor], Tensor]]
                         ) -> tuple[list[Tensor], list[Tensor], Tensor]:
        with bpda_mode(self.model):
            return self.base.losses_and_grads(x, loss_fns)


class _EOTOracle(_RelayOracle):
    """Averages over ``draws`` independent passes of a random model (each a fresh draw)."""

    def __init__(self, base: ModelOracle, draws: int):
        super().__init__(base)
        self.draws = draws

    def logits(self, x: Tensor) -> Tensor:
        total = self.base.logits(x)
        for _ in range(self.draws - 1):
            total = total + self.base.logits(x)
        return total / self.draws

    def losses_and_grads(self, x: Tensor, loss_fns: Sequence[Callable[[Tensor], Tensor]]
                         ) -> tuple[list[Tensor], list[Tensor], Tensor]:
        losses, grads, logits = self.base.losses_and_grads(x, loss_fns)
        for _ in range(self.draws - 1):
            more_losses, more_grads, more_logits = self.base.losses_and_grads(x, loss_fns)
            losses = [a + b for a, b in zip(losses, more_losses)]
            grads = [a + b for a, b in zip(grads, more_grads)]
            logits = logits + more_logits
        return [v / self.draws for v in losses], [g / self.draws for g in grads], logits / self.draws


@dataclass(frozen=True, kw_only=True)
class _Wrapper(Attack):
    """An attack around another; supported norms, family and loss are the wrapped attack's."""

    attack: Attack = field(kw_only=False)

    def __post_init__(self) -> None:
        if not isinstance(self.attack, Attack):
            raise RobustlabError(f"{type(self).__name__} wraps a robustlab Attack, got {type(self.attack).__name__}")

    @property
    def norms(self) -> frozenset[str]:  # type: ignore[override]
        return self.attack.norms

    @property
    def minimum_norm(self) -> bool:  # type: ignore[override]
        return self.attack.minimum_norm

    @property
    def loss_fn(self) -> Loss | None:
        return getattr(self.attack, "loss_fn", None)

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"attack": self.name, "inner": self.attack.config()}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float, str, bool, type(None))):
                out[f.name] = value
        return out


@dataclass(frozen=True, kw_only=True)
class BPDA(_Wrapper):
    """Backward Pass Differentiable Approximation (Athalye et al., ICML 2018, §4.1).

    ``BPDA(PGD())(defended, x, y, threat=...)``: every gradient the wrapped attack asks for is
    computed with each :class:`~robustlab.models.preprocessing.InputTransformDefense` inside
    ``defended`` in BPDA mode (forward: the real transform, value for value; backward: its
    ``approximation``, the identity for JPEG and bit-depth reduction, the soft relaxation for
    thermometer encoding). Forward-only queries and the final success check use the real model.

    Cost: that of the wrapped attack (a BPDA backward also evaluates the approximation, which
    is not counted as a model pass). Raises if the model contains no such defense: BPDA would
    silently be the plain attack.
    """

    name = "bpda"

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        if not any(isinstance(m, InputTransformDefense) for m in oracle.model.modules()):
            raise RobustlabError(
                "BPDA found no robustlab.models.preprocessing.InputTransformDefense inside the model; wrap the "
                "non-differentiable layer in one (subclass it with transform() and approximation())"
            )
        return self.attack._run(_BPDAOracle(oracle), x, y, threat=threat, targets=targets, generator=generator)


@dataclass(frozen=True, kw_only=True)
class EOT(_Wrapper):
    """Expectation over Transformation (Athalye, Engstrom, Ilyas & Kwok, ICML 2018; used against
    randomised defenses in Athalye, Carlini & Wagner, ICML 2018, §4.2): the wrapped attack
    climbs ``E_t[L(model_t(x))]``, estimated at every step by the mean loss and gradient over
    ``draws`` fresh forward/backward passes of a random model (random preprocessing such as
    :class:`~robustlab.models.preprocessing.RandomResizePad`, or dropout that stays on in eval
    mode). Forward-only queries average logits over ``draws``.

    The model draws its own randomness (the attack's ``generator`` cannot reach it): seed the
    model's generator to reproduce a run. The template's final success check is a single fresh
    draw, as deployed. On a deterministic model EOT only multiplies the cost.

    The wrapped attack runs its whole budget on every sample: an ``early_stop`` (APGD's, on by
    default) is turned off, with the give-up rules that need it, in the wrapped attack that
    :attr:`attack` holds (through BPDA too). A point misclassified on the average of the draws is
    about as often classified correctly by one draw; the iterations after it push it further. On
    ``mnist-ode-cnn-ird`` at L∞ 0.2 (200 images, 10 draws, ``benchmarks/eot_full_budget.py``)
    EOT-APGD-CE with the early stop left 18.2% accuracy (mean over 20 fresh draws of its points),
    without it 7.7%, for 10 times the passes; AutoAttack's version for randomized defenses
    (``version="rand"``) stops no sample early either.

    Args:
        draws: samples per gradient; 30 in Athalye et al.'s attack on Xie et al.'s randomisation
            (``randomization/robustml_attack.py``). ``draws=1`` warns (:class:`SingleDrawEOTWarning`).

    Cost: ``draws`` times the wrapped attack's model passes, forward and backward.
    """

    name = "eot"

    draws: int = 30

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_int(self.draws, 1):
            raise RobustlabError(f"draws must be a positive integer, got {self.draws!r}")
        if self.draws == 1:
            warnings.warn(
                "EOT with draws=1 averages nothing: each step follows the gradient of a single random draw. "
                f"Use tens of draws (Athalye et al. use 30). See `{docs_pointer('diagnostics', 'eot')}`",
                SingleDrawEOTWarning,
                stacklevel=3,
            )
        object.__setattr__(self, "attack", _whole_budget(self.attack))

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        return self.attack._run(_EOTOracle(oracle, self.draws), x, y, threat=threat, targets=targets, generator=generator)


def _whole_budget(attack: Attack) -> Attack:
    """``attack`` with its early stop (and the give-up rules built on it) off, inside wrappers too."""
    if isinstance(attack, _Wrapper):
        return dataclasses.replace(attack, attack=_whole_budget(attack.attack))
    names = {f.name for f in dataclasses.fields(attack)}
    if getattr(attack, "early_stop", False) and "early_stop" in names:
        off: dict[str, Any] = {"early_stop": False, **{name: None for name in ("give_up", "keep_near") if name in names}}
        return dataclasses.replace(attack, **off)
    return attack


@dataclass(frozen=True, kw_only=True)
class MinimumNormEnsemble(Attack):
    """Per sample, the smallest successful perturbation found by any of several minimum-norm
    attacks: the attack-level counterpart of the ``best`` column of
    :func:`robustlab.evaluation.evaluate_minimum_norm`, returning the points.

    ``MinimumNormEnsemble((DDN(steps=50), FMN(steps=50)))(model, x, y, threat=L2(eps=math.inf))``.
    Each attack runs on every sample, in order, on the same oracle (one generator, used in
    turn); each output is projected onto the threat set and judged by one forward pass of the
    real model. Different algorithms fail on different samples: on a PGD-trained MNIST LeNet
    (``benchmarks/minimum_norm.py``) DDN and FMN at 50 steps each reach a median L2 about 5%
    below either one at 100 steps, for the same number of gradients.

    Supported norms: those all the attacks support. ``extras["best_distance"]``: the smallest
    successful distance per sample (``inf`` where none); ``extras["best_attack"]``: the index of
    the attack that found it (``-1`` where none); a sample no attack breaks returns the first
    attack's output. Cost: the attacks' passes plus one forward per sample and attack.
    """

    name = "minimum-norm-ensemble"
    minimum_norm = True

    attacks: tuple[Attack, ...] = field(kw_only=False)

    def __post_init__(self) -> None:
        if not isinstance(self.attacks, tuple) or not self.attacks:
            raise RobustlabError("MinimumNormEnsemble needs a non-empty tuple of attacks")
        for attack in self.attacks:
            if not isinstance(attack, Attack) or not attack.minimum_norm:
                raise RobustlabError(
                    f"MinimumNormEnsemble takes minimum-norm robustlab attacks only, got {type(attack).__name__}: the "
                    "distance of a fixed-budget attack is not a minimum"
                )
        if not self.norms:
            raise RobustlabError(f"the attacks share no norm: {[sorted(a.norms) for a in self.attacks]}")

    @property
    def norms(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset.intersection(*(attack.norms for attack in self.attacks))

    def config(self) -> dict[str, Any]:
        return {"attack": self.name, "attacks": [attack.config() for attack in self.attacks]}

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        best_x = x
        best_distance = torch.full((x.shape[0],), float("inf"), device=x.device)
        best_attack = torch.full((x.shape[0],), -1, dtype=torch.int64, device=x.device)
        for index, attack in enumerate(self.attacks):
            x_adv, _ = attack._run(oracle, x, y, threat=threat, targets=targets, generator=generator)
            x_adv = project_rounding_inward(threat, x, x_adv.detach())
            success = is_adversarial(oracle.logits(x_adv), y, targets)
            distance = torch.where(success, threat.distance(x, x_adv), float("inf"))
            better = distance < best_distance
            keep = better if index else torch.ones_like(better)
            best_x = torch.where(keep.view(-1, *([1] * (x.dim() - 1))), x_adv, best_x)
            best_attack = torch.where(better, index, best_attack)
            best_distance = torch.minimum(distance, best_distance)
        return best_x, {"best_distance": best_distance, "best_attack": best_attack}


class _LogitEnsemble(nn.Module):
    """Mean of the members' logits (Liu et al., ICLR 2017, fuse an ensemble for transfer)."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


@dataclass(frozen=True, kw_only=True)
class TransferAttack(_Wrapper):
    """Transfer (black-box) attack: run ``attack`` on a surrogate, judge on the target.

    ``TransferAttack(PGD(), surrogates=[model_a, model_b])`` crafts on the mean of the
    surrogates' logits (one surrogate: that model) and returns the surrogate's adversarial
    inputs; the template then scores them on the target. A surrogate may be the same
    architecture trained with another seed, or the defense with its non-differentiable part
    removed (the black-box check of ``algorithms.md`` §10(c), sign 2).

    Cost on the target: only the template's two forwards per sample (clean and success check).
    Surrogate cost goes to ``extras["surrogate_forwards"]`` / ``["surrogate_backwards"]``;
    ``extras["surrogate_success"]`` is the per-sample success on the surrogate ensemble.
    """

    name = "transfer"

    surrogates: Sequence[nn.Module] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.surrogates, nn.Module):
            object.__setattr__(self, "surrogates", (self.surrogates,))
        surrogates = tuple(self.surrogates)
        if not surrogates:
            raise RobustlabError("TransferAttack needs at least one surrogate model")
        for s in surrogates:
            if not isinstance(s, nn.Module):
                raise RobustlabError(f"surrogates must be nn.Modules, got {type(s).__name__}")
        object.__setattr__(self, "surrogates", surrogates)

    def config(self) -> dict[str, Any]:
        out = super().config()
        out["surrogates"] = [type(s).__name__ for s in self.surrogates]
        return out

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        if any(s is oracle.model for s in self.surrogates):
            raise RobustlabError("a surrogate is the target model itself: that is a white-box attack, not transfer")
        surrogate = self.surrogates[0] if len(self.surrogates) == 1 else _LogitEnsemble(self.surrogates)
        result = self.attack(surrogate, x, y, threat=threat, targets=targets, generator=generator)
        return result.x_adv, {
            "surrogate_forwards": result.forwards,
            "surrogate_backwards": result.backwards,
            "surrogate_success": result.success,
            "surrogate_extras": result.extras,
        }


@dataclass(frozen=True, kw_only=True)
class Reparameterization(Attack):
    """Reparameterization (Athalye et al., ICML 2018, Sec. 4.3) for defenses that purify their
    input by an inner optimization ``g`` (Defense-GAN, PixelDefend): gradients through ``g``
    vanish or explode, so search over a latent ``z`` with ``x = decoder(z)`` on the range of
    ``g`` (where ``g(decoder(z)) ≈ decoder(z)``) and differentiate ``classifier(decoder(z))``,
    the defense with ``g`` removed.

    Adam on ``z`` (``steps``, learning rate ``step_size``) from ``z = encoder(x)`` maximises
    the margin loss of ``classifier(decoder(z))`` minus ``penalty * (distance(x, decoder(z)) -
    eps)^+`` (the hinge of the paper's released attacks, ``robustml_attack.py``). After every
    step ``decoder(z)`` is projected onto the threat set and scored on the *real* defended
    model (the oracle); the best point per sample (adversarial first, then highest loss) is
    returned. Untargeted and targeted; norms L∞ and L2.

    Not in the registry: it needs ``decoder``, ``encoder`` and ``classifier``.

    Cost per sample: ``steps`` forwards of the defended model (one per step, through the
    oracle), and ``steps`` forwards and backwards of ``classifier`` and ``decoder``, counted in
    ``extras["classifier_forwards"]`` / ``["classifier_backwards"]``.
    """

    name = "reparameterization"
    norms = frozenset({"Linf", "L2"})

    decoder: Callable[[Tensor], Tensor]
    encoder: Callable[[Tensor], Tensor]
    classifier: nn.Module
    steps: int = 100
    step_size: float = 0.1
    penalty: float = 10.0

    def __post_init__(self) -> None:
        for name in ("decoder", "encoder"):
            if not callable(getattr(self, name)):
                raise RobustlabError(f"{name} must be callable")
        if not isinstance(self.classifier, nn.Module):
            raise RobustlabError(f"classifier must be an nn.Module, got {type(self.classifier).__name__}")
        if not is_int(self.steps, 1):
            raise RobustlabError(f"steps must be a positive integer, got {self.steps!r}")
        for name in ("step_size", "penalty"):
            value = getattr(self, name)
            if not is_number(value, finite=False) or not value > 0:
                raise RobustlabError(f"{name} must be a positive number, got {value!r}")

    def config(self) -> dict[str, Any]:
        return {**super().config(), "decoder": repr(self.decoder), "encoder": repr(self.encoder),
                "classifier": type(self.classifier).__name__}

    def _run(self, oracle: ModelOracle, x: Tensor, y: Tensor, *, threat: ThreatModel, targets: Tensor | None,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        if threat.unbounded:
            raise RobustlabError("Reparameterization penalises distances beyond eps; it needs a bounded threat model")
        with torch.no_grad():
            z = self.encoder(x).detach()
        z.requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=self.step_size)
        best = BestIterate.empty(x)
        frozen = [(p, p.requires_grad) for p in self.classifier.parameters()]
        try:
            for p, _ in frozen:
                p.requires_grad_(False)
            for _ in range(self.steps):
                with torch.enable_grad():
                    x_hat = self.decoder(z)
                    loss = margin(self.classifier(x_hat), y, targets, kappa=float("inf"))
                    excess = (threat.distance(x, x_hat) - threat.eps).clamp_min(0)
                    objective = (loss - self.penalty * excess).sum()
                    optimizer.zero_grad(set_to_none=True)
                    (-objective).backward()
                optimizer.step()
                candidate = threat.project(x, x_hat.detach())
                logits = oracle.logits(candidate)
                best.update(None, candidate, margin(logits, y, targets, kappa=float("inf")),
                            is_adversarial(logits, y, targets))
        finally:
            for p, requires_grad in frozen:
                p.requires_grad_(requires_grad)
        n = x.shape[0] * self.steps
        return best.x, {"classifier_forwards": n, "classifier_backwards": n}
