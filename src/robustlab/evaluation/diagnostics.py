"""Automatic detection of gradient masking: is a robustness number to be trusted?

Athalye, Carlini & Wagner (ICML 2018, Sec. 3.1) list five signs that a defense only *looks*
robust because its gradients are obfuscated. :func:`diagnose` runs each as an automated check,
plus probes of gradient health, and returns one :class:`Finding` per check with a verdict
(``pass``, ``warn``, ``fail`` or ``skip``), the numbers behind it and a pointer to the page of
``docs/diagnostics.md`` that explains cause and remedy.

The five signs (thresholds from ``algorithms.md`` §10(c)):

1. ``one-step``: FGSM beats the white-box attacks (accuracy lower by more than ``tolerance``).
2. ``black-box``: a black-box attack (Square, transfer from a surrogate) beats them.
3. ``unbounded``: PGD with eps covering the whole box does not reach 99% success.
4. ``random-sampling``: random points in the eps-ball break samples they could not.
5. ``eps-monotone``: accuracy does not fall as eps grows, or stays above 10% at a large eps.

"The white-box attacks" are PGD-``steps`` and APGD (100 steps, CE and DLR losses), a sample counting
as robust only if both fail: the signs are about gradients misleading every gradient attack,
not about fixed-step PGD being weaker than APGD, which ``stronger-attack`` reports separately.

Gradient health: ``probabilities`` (outputs are softmax), ``zero-gradients`` (zero or NaN input
gradients), ``stochastic`` (two forward passes differ: use EOT), ``non-differentiable``
(autograd disagrees with finite differences: use BPDA), ``loss-rises`` (PGD fails to raise
its loss), ``loss-agreement`` (CE and margin PGD disagree by more than 2 points),
``stronger-attack`` (APGD-CE/DLR leaves lower accuracy than PGD: a PGD number overstates robustness;
more than 10 points fails) and ``more-steps`` (more PGD steps still lower the accuracy).

Every check runs on the inputs given, in eval mode; accuracies are over all given samples
(misclassified clean samples count as broken, never as robust).
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab._tensors import flat
from robustlab.attacks import APGD, ATTACKS, FGSM, PGD, Attack, AttackResult, build_attack
from robustlab.documentation import docs_pointer
from robustlab.errors import RobustlabError
from robustlab.io import header
from robustlab.losses import looks_like_probabilities
from robustlab.modes import ModuleMode
from robustlab.threat import Linf, ThreatModel

__all__ = ["Finding", "Diagnosis", "diagnose", "CHECKS", "VERDICTS"]

VERDICTS = ("pass", "warn", "fail", "skip")
CHECKS = (
    "probabilities", "stochastic", "zero-gradients", "non-differentiable", "one-step", "black-box", "unbounded",
    "random-sampling", "eps-monotone", "loss-rises", "loss-agreement", "stronger-attack", "more-steps",
)


@dataclass
class Finding:
    """One check's outcome. ``numbers`` holds the measurements the verdict was derived from."""

    check: str
    verdict: str
    message: str
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def docs(self) -> str:
        return docs_pointer("diagnostics", self.check)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "docs": self.docs}


@dataclass
class Diagnosis:
    """All findings of :func:`diagnose`; ``verdict`` is the worst of them."""

    findings: list[Finding]
    threat: ThreatModel

    @property
    def verdict(self) -> str:
        order = {"pass": 0, "skip": 0, "warn": 1, "fail": 2}
        worst = max((order[f.verdict] for f in self.findings), default=0)
        return ("pass", "warn", "fail")[worst]

    def __getitem__(self, check: str) -> Finding:
        for finding in self.findings:
            if finding.check == check:
                return finding
        raise KeyError(check)

    def to_dict(self) -> dict[str, Any]:
        """The ``diagnostics`` document (``diagnostics.json``)."""
        return {**header("diagnostics"), "threat": self.threat.to_dict(), "verdict": self.verdict,
                "findings": [f.to_dict() for f in self.findings]}

    def markdown(self) -> str:
        lines = [f"## Gradient-masking diagnostics: **{self.verdict}**", "", "| check | verdict | finding |",
                 "|---|---|---|"]
        for f in self.findings:
            lines.append(f"| {f.check} (`{f.docs}`) | {f.verdict} | {f.message} |")
        return "\n".join(lines) + "\n"


@dataclass
class _Context:
    model: nn.Module
    x: Tensor
    y: Tensor
    threat: ThreatModel
    steps: int
    seed: int
    tolerance: float
    random_samples: int
    surrogate: nn.Module | None
    correct: Tensor  # bool[N], from one clean forward pass
    num_classes: int
    cache: dict[str, Any] = field(default_factory=dict)

    def generator(self, key: str) -> torch.Generator:
        """A generator per purpose, so a check's randomness does not depend on which others ran."""
        return torch.Generator(device=self.x.device).manual_seed(self.seed * 7919 + zlib.crc32(key.encode()))

    def run(self, key: str, attack: Attack, threat: ThreatModel | None = None, model: nn.Module | None = None
            ) -> AttackResult:
        """Run ``attack`` once per key (results are shared between checks)."""
        if key not in self.cache:
            self.cache[key] = attack(model or self.model, self.x, self.y, threat=threat or self.threat,
                                     generator=self.generator(key))
        result: AttackResult = self.cache[key]
        return result

    def robust(self, key: str, attack: Attack, threat: ThreatModel | None = None) -> Tensor:
        """``bool[N]``: correctly classified and not broken by ``attack``."""
        return self.correct & ~self.run(key, attack, threat).success


    def apgd(self) -> Tensor:
        """``bool[N]``: robust to APGD with the CE and (models with 3+ classes) the DLR loss."""
        robust = self.robust("apgd-ce", APGD(steps=100))
        if self.num_classes >= 3:
            robust = robust & self.robust("apgd-dlr", APGD(steps=100, loss="dlr"))
        return robust

    def white_box(self) -> Tensor:
        """``bool[N]``: robust to PGD-``steps`` and to APGD."""
        return self.robust("pgd", self.pgd()) & self.apgd()

    def beats(self, weaker: Tensor, stronger: Tensor, points: float) -> bool:
        """Whether the attack that left ``weaker`` robust (``bool[N]``) is stronger than the one that
        left ``stronger``, by more than ``points`` of accuracy *and* beyond sampling noise: a
        paired (McNemar) comparison of the samples only one of them broke, at about 95%."""
        only_weaker_broke = int((stronger & ~weaker).sum())
        only_stronger_broke = int((weaker & ~stronger).sum())
        gap = only_weaker_broke - only_stronger_broke
        return 100.0 * gap / self.x.shape[0] > points and gap > 2.0 * math.sqrt(only_weaker_broke + only_stronger_broke)

    def is_stochastic(self) -> bool:
        if "stochastic" not in self.cache:
            first, second = self.logits(), self.logits()
            spread = float((first - second).abs().max())
            self.cache["stochastic"] = (spread, spread > 1e-5 * (1 + float(first.abs().max())))
        stochastic: bool = self.cache["stochastic"][1]
        return stochastic

    def logits(self) -> Tensor:
        with torch.no_grad():
            logits: Tensor = self.model(self.x)
        return logits

    def pgd(self, loss: str = "ce", steps: int | None = None, eps: float | None = None) -> PGD:
        """PGD with the step size of ``self.steps`` steps at ``eps``, whatever the number of steps
        (so that more steps explore further rather than take smaller steps)."""
        return PGD(steps=steps or self.steps, step_size=2.5 * (eps or self.threat.eps) / self.steps, loss=loss)


def diagnose(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    threat: ThreatModel,
    steps: int = 40,
    surrogate: nn.Module | None = None,
    random_samples: int = 200,
    tolerance: float = 1.0,
    seed: int = 0,
    checks: tuple[str, ...] = CHECKS,
) -> Diagnosis:
    """Run the gradient-masking checks on ``model`` at ``x [N, ...]``, ``y [N]``.

    Args:
        threat: the threat model the robustness claim is made for (Linf or L2; the
            ``unbounded`` check always uses L∞ over the whole box).
        steps: PGD steps of the white-box reference (>= 20, as the checks require).
        surrogate: an independently trained model for the transfer part of ``black-box``
            (Square runs whenever it is registered).
        random_samples: uniform draws in the eps-ball per sample PGD failed on.
        tolerance: accuracy difference, in points, tolerated before a sign fires; a sign also
            needs the difference to be beyond sampling noise (a paired test over the samples),
            so that small subsets do not fire on noise. The checks are meant for 500-1000
            samples.
        checks: which of :data:`CHECKS` to run, in that order.

    Cost: dominated by the gradient attacks (about six PGD runs of ``steps`` forwards and
    backwards per sample, one of ``5 * steps``, two APGD runs of 100) and Square's 1000 queries.
    """
    if threat.norm not in ("Linf", "L2") or threat.unbounded:
        raise RobustlabError(f"diagnose needs a bounded Linf or L2 threat model, got {threat}")
    if steps < 20:
        raise RobustlabError(f"the checks compare against PGD with at least 20 steps; got steps={steps}")
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise RobustlabError(f"unknown checks {unknown}; choose from {list(CHECKS)}")
    if x.shape[0] == 0:
        raise RobustlabError("diagnose needs at least one sample")
    with ModuleMode(model, False):
        with torch.no_grad():
            clean = model(x)
        ctx = _Context(model, x.detach(), y, threat, steps, seed, tolerance, random_samples, surrogate,
                       clean.argmax(1) == y, clean.shape[1])
        return Diagnosis([_RUNNERS[name](ctx) for name in CHECKS if name in checks], threat)


# --- gradient health ---------------------------------------------------------------------------


def _probabilities(ctx: _Context) -> Finding:
    if looks_like_probabilities(ctx.logits()):
        return Finding("probabilities", "fail", "the outputs are probabilities (rows sum to 1): attacks need logits; "
                       "remove the final softmax")
    return Finding("probabilities", "pass", "the outputs are logits")


def _stochastic(ctx: _Context) -> Finding:
    stochastic = ctx.is_stochastic()
    spread = ctx.cache["stochastic"][0]
    if stochastic:
        return Finding("stochastic", "warn", f"two forward passes on the same inputs differ (max |Δlogit| {spread:.3g}): "
                       "the model is randomized; attack it with EOT", {"max_logit_difference": spread})
    return Finding("stochastic", "pass", "the model is deterministic", {"max_logit_difference": spread})


def _input_gradient(ctx: _Context) -> Tensor:
    with torch.enable_grad():
        x = ctx.x.clone().requires_grad_(True)
        loss = F.cross_entropy(ctx.model(x), ctx.y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _zero_gradients(ctx: _Context) -> Finding:
    grad = _input_gradient(ctx)
    nan = _fraction((~torch.isfinite(flat(grad))).any(1))
    zero = _fraction((flat(grad) == 0).all(1))
    numbers = {"nan_fraction": nan, "zero_fraction": zero}
    if nan > 0:
        return Finding("zero-gradients", "fail", f"{100 * nan:.1f}% of input gradients contain NaN or inf", numbers)
    if zero > 0.5:
        return Finding("zero-gradients", "fail", f"{100 * zero:.1f}% of input gradients are exactly zero: "
                       "gradient attacks cannot move (shattered or saturated gradients)", numbers)
    if zero > 0.05:
        return Finding("zero-gradients", "warn", f"{100 * zero:.1f}% of input gradients are exactly zero", numbers)
    return Finding("zero-gradients", "pass", f"{100 * zero:.1f}% zero, {100 * nan:.1f}% non-finite input gradients",
                   numbers)


def _non_differentiable(ctx: _Context, directions: int = 4, h: float = 1e-3) -> Finding:
    """Compare autograd's directional derivatives with central finite differences.

    A non-differentiable layer whose backward is zero or wrong (JPEG, quantisation) shows as
    finite differences that autograd does not see. Directions are random unit vectors; the
    finite-difference step ``h`` is relative to the box width.
    """
    if ctx.is_stochastic():
        return Finding("non-differentiable", "skip", "the model is randomized, so finite differences are noise "
                       "(see the 'stochastic' finding)")
    grad = flat(_input_gradient(ctx))
    g = ctx.generator("finite-differences")
    width = ctx.threat.bounds[1] - ctx.threat.bounds[0]
    lo, hi = ctx.threat.bounds
    auto, finite = [], []
    for _ in range(directions):
        d = torch.randn(ctx.x.shape, generator=g, device=ctx.x.device, dtype=ctx.x.dtype)
        d = d / flat(d).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (d.dim() - 1))
        step = h * width
        with torch.no_grad():
            up = F.cross_entropy(ctx.model((ctx.x + step * d).clamp(lo, hi)), ctx.y, reduction="none")
            down = F.cross_entropy(ctx.model((ctx.x - step * d).clamp(lo, hi)), ctx.y, reduction="none")
        finite.append((up - down) / (2 * step))
        auto.append((grad * flat(d)).sum(1))
    auto_t, finite_t = torch.cat(auto), torch.cat(finite)
    cosine = float(F.cosine_similarity(auto_t, finite_t, dim=0, eps=1e-12))
    numbers = {"cosine": cosine, "finite_difference_scale": float(finite_t.abs().mean()),
               "autograd_scale": float(auto_t.abs().mean())}
    if float(finite_t.abs().max()) == 0:
        return Finding("non-differentiable", "pass", "the loss is locally flat (finite differences are zero)", numbers)
    if cosine < 0.5:
        return Finding("non-differentiable", "fail", f"autograd and finite differences disagree (cosine {cosine:.2f}): "
                       "a layer is non-differentiable or its backward is wrong; attack it with BPDA", numbers)
    if cosine < 0.9:
        return Finding("non-differentiable", "warn", f"autograd and finite differences only partly agree "
                       f"(cosine {cosine:.2f})", numbers)
    return Finding("non-differentiable", "pass", f"autograd matches finite differences (cosine {cosine:.2f})", numbers)


# --- the five warning signs ---------------------------------------------------------------------


def _fraction(mask: Tensor) -> float:
    """The fraction of ``True`` in ``mask`` (NaN if empty), in float64: a float32 mean puts 9 of 10 just below
    0.9 and 1 of 20 just above 0.05, so a threshold would fire on a fraction exactly at it."""
    return int(mask.sum()) / mask.numel() if mask.numel() else math.nan


def _percent(robust: Tensor) -> float:
    return round(100.0 * _fraction(robust), 2)


def _compare(check: str, weaker: str, weaker_robust: Tensor, ctx: _Context, numbers: dict[str, Any], what: str
             ) -> Finding:
    """Fail if the supposedly weaker attack beats the white-box attacks (see :meth:`_Context.beats`)."""
    white_box = ctx.white_box()
    weaker_acc, white_acc = _percent(weaker_robust), _percent(white_box)
    numbers = {**numbers, "white_box_accuracy": white_acc}
    if ctx.beats(weaker_robust, white_box, ctx.tolerance):
        return Finding(check, "fail", f"{what}: {weaker} leaves {weaker_acc:.1f}% accuracy, PGD-{ctx.steps} and APGD "
                       f"{white_acc:.1f}%; the white-box gradients are misleading", numbers)
    return Finding(check, "pass", f"the white-box attacks ({white_acc:.1f}%) are at least as strong as {weaker} "
                   f"({weaker_acc:.1f}%)", numbers)


def _one_step(ctx: _Context) -> Finding:
    fgsm = ctx.robust("fgsm", FGSM())
    return _compare("one-step", "FGSM", fgsm, ctx, {"fgsm_accuracy": _percent(fgsm)}, "one-step beats iterative")


def _black_box(ctx: _Context) -> Finding:
    candidates: dict[str, Tensor] = {}
    if "square" in ATTACKS:
        candidates["square"] = ctx.robust("square", build_attack("square", queries=1000))
    if ctx.surrogate is not None:
        transfer = ctx.run("transfer", ctx.pgd(), model=ctx.surrogate)
        with torch.no_grad():
            candidates["transfer"] = ctx.correct & (ctx.model(transfer.x_adv).argmax(1) == ctx.y)
    numbers: dict[str, Any] = {f"{name}_accuracy": _percent(robust) for name, robust in candidates.items()}
    if not candidates:
        return Finding("black-box", "skip", "no black-box attack available (register 'square' or give a surrogate)",
                       numbers)
    name, robust = min(candidates.items(), key=lambda kv: int(kv[1].sum()))
    return _compare("black-box", name, robust, ctx, numbers, "black-box beats white-box")


def _unbounded(ctx: _Context) -> Finding:
    lo, hi = ctx.threat.bounds
    whole_box = Linf(eps=hi - lo, bounds=ctx.threat.bounds)
    result = ctx.run("unbounded", PGD(steps=max(ctx.steps, 100), step_size=(hi - lo) / 20), whole_box)
    correct = ctx.correct
    rate = 100.0 * _fraction(result.success[correct])
    numbers = {"success_rate": rate, "eps": hi - lo}
    if math.isnan(rate):
        return Finding("unbounded", "skip", "no correctly classified sample", numbers)
    if rate < 99.0:
        return Finding("unbounded", "fail", f"PGD with eps covering the whole box breaks only {rate:.1f}% of the "
                       "correctly classified samples; any image can be reached, so gradients are not guiding the "
                       "attack", numbers)
    return Finding("unbounded", "pass", f"an unbounded attack breaks {rate:.1f}% of correctly classified samples",
                   numbers)


def _random_sampling(ctx: _Context) -> Finding:
    """Uniform draws in ball ∩ box (for L∞ every other draw of each sample a random vertex of the
    cube) around the samples the white-box attacks failed on."""
    survivors = ctx.white_box().nonzero().flatten()
    numbers: dict[str, Any] = {"white_box_survivors": int(survivors.numel()), "draws_per_sample": ctx.random_samples}
    if survivors.numel() == 0:
        return Finding("random-sampling", "skip", "the white-box attacks broke every sample; nothing to sample around",
                       numbers)
    g = ctx.generator("random-sampling")
    x, y = ctx.x[survivors], ctx.y[survivors]
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    chunk = max(1, 4096 // max(1, x.shape[0]))
    for start in range(0, ctx.random_samples, chunk):
        draws = min(chunk, ctx.random_samples - start)
        xs = x.repeat_interleave(draws, 0)
        noisy = ctx.threat.random_init(xs, g)
        if ctx.threat.norm == "Linf":
            signs = torch.randint(0, 2, xs.shape, generator=g, device=xs.device).to(xs.dtype) * 2 - 1
            vertices = ctx.threat.project(xs, xs + ctx.threat.eps * signs)
            # the draw's number for its sample (rows are samples x draws): odd draws are vertices, whatever
            # the chunking (numbering the rows instead gave no vertex to even samples when draws == 1)
            draw = start + torch.arange(xs.shape[0], device=xs.device) % draws
            odd = (draw % 2 == 1).view(-1, *[1] * (xs.dim() - 1))
            noisy = torch.where(odd, vertices, noisy)
        with torch.no_grad():
            wrong = ctx.model(noisy).argmax(1) != y.repeat_interleave(draws)
        found |= wrong.view(x.shape[0], draws).any(1)
    numbers["found"] = int(found.sum())
    if bool(found.any()):
        return Finding("random-sampling", "fail", f"random points in the eps-ball break {int(found.sum())} of the "
                       f"{x.shape[0]} samples the white-box attacks could not: the gradients point the wrong way", numbers)
    return Finding("random-sampling", "pass", f"random sampling found nothing the white-box attacks missed "
                   f"({x.shape[0]} samples)",
                   numbers)


def _eps_monotone(ctx: _Context) -> Finding:
    lo, hi = ctx.threat.bounds
    factors = (0.5, 1.0, 2.0, 4.0)
    cap = (hi - lo) if ctx.threat.norm == "Linf" else math.inf
    grid = [min(f * ctx.threat.eps, cap) for f in factors]
    robust = [ctx.robust("pgd" if e == ctx.threat.eps else f"pgd@{e:.6g}", ctx.pgd(eps=e), _with_eps(ctx.threat, e))
              for e in grid]
    accs = [_percent(r) for r in robust]
    numbers = {"eps": grid, "accuracy": accs}
    if any(ctx.beats(small, large, ctx.tolerance) for small, large in itertools.pairwise(robust)):
        return Finding("eps-monotone", "fail", f"accuracy rises with eps ({' → '.join(f'{a:.1f}' for a in accs)}%): "
                       "larger perturbations should never help the model", numbers)
    if accs[-1] > 10.0:
        return Finding("eps-monotone", "warn", f"at eps {grid[-1]:.3g} ({factors[-1]:g}x the claim) accuracy is still "
                       f"{accs[-1]:.1f}%: check that the attack is not stuck", numbers)
    return Finding("eps-monotone", "pass", f"accuracy falls with eps ({' → '.join(f'{a:.1f}' for a in accs)}%)",
                   numbers)


# --- the attack's own behaviour -----------------------------------------------------------------


def _loss_rises(ctx: _Context) -> Finding:
    pgd = ctx.run("pgd", ctx.pgd())
    with torch.no_grad():
        clean = F.cross_entropy(ctx.model(ctx.x), ctx.y, reduction="none")
        attacked = F.cross_entropy(ctx.model(pgd.x_adv), ctx.y, reduction="none")
    rose = _fraction((attacked > clean + 1e-6)[ctx.correct])
    numbers = {"fraction_rose": rose, "clean_loss": float(clean.mean()), "attacked_loss": float(attacked.mean())}
    if math.isnan(rose):
        return Finding("loss-rises", "skip", "no correctly classified sample", numbers)
    if rose < 0.9:
        return Finding("loss-rises", "fail", f"PGD raised the loss on only {100 * rose:.0f}% of samples: the attack is "
                       "not climbing the loss (check gradients and step size)", numbers)
    return Finding("loss-rises", "pass", f"PGD raised the loss on {100 * rose:.0f}% of samples", numbers)


def _loss_agreement(ctx: _Context) -> Finding:
    ce_robust, margin_robust = ctx.robust("pgd", ctx.pgd()), ctx.robust("pgd-margin", ctx.pgd("margin"))
    ce, margin = _percent(ce_robust), _percent(margin_robust)
    numbers = {"ce_accuracy": ce, "margin_accuracy": margin}
    if ctx.beats(ce_robust, margin_robust, 2.0) or ctx.beats(margin_robust, ce_robust, 2.0):
        return Finding("loss-agreement", "warn", f"PGD with CE ({ce:.1f}%) and with the margin loss ({margin:.1f}%) "
                       "disagree by more than 2 points: one loss is saturated; report the minimum", numbers)
    return Finding("loss-agreement", "pass", f"CE ({ce:.1f}%) and margin ({margin:.1f}%) PGD agree", numbers)


def _stronger_attack(ctx: _Context) -> Finding:
    pgd_robust, apgd_robust = ctx.robust("pgd", ctx.pgd()), ctx.apgd()
    pgd, apgd = _percent(pgd_robust), _percent(apgd_robust)
    numbers = {"pgd_accuracy": pgd, "apgd_accuracy": apgd}
    if ctx.beats(apgd_robust, pgd_robust, 10.0):
        return Finding("stronger-attack", "fail", f"APGD (CE and DLR) leaves {apgd:.1f}% accuracy, PGD-{ctx.steps} {pgd:.1f}%: "
                       "a PGD evaluation overstates robustness by more than 10 points; evaluate with the standard "
                       "suite", numbers)
    if ctx.beats(apgd_robust, pgd_robust, ctx.tolerance):
        return Finding("stronger-attack", "warn", f"APGD (CE and DLR) leaves {apgd:.1f}% accuracy, PGD-{ctx.steps} {pgd:.1f}%: "
                       "PGD alone overstates robustness; report the standard suite", numbers)
    return Finding("stronger-attack", "pass", f"PGD-{ctx.steps} ({pgd:.1f}%) is as strong as APGD ({apgd:.1f}%)",
                   numbers)


def _more_steps(ctx: _Context) -> Finding:
    short_robust, long_robust = ctx.robust("pgd", ctx.pgd()), ctx.robust("pgd-long", ctx.pgd(steps=5 * ctx.steps))
    short, long = _percent(short_robust), _percent(long_robust)
    numbers = {"steps": ctx.steps, "accuracy": short, "long_steps": 5 * ctx.steps, "long_accuracy": long}
    if ctx.beats(long_robust, short_robust, ctx.tolerance):
        return Finding("more-steps", "warn", f"{5 * ctx.steps} PGD steps lower accuracy from {short:.1f}% to "
                       f"{long:.1f}%: the attack had not converged; use more steps or APGD", numbers)
    return Finding("more-steps", "pass", f"{5 * ctx.steps} steps give {long:.1f}% vs {short:.1f}%", numbers)


def _with_eps(threat: ThreatModel, eps: float) -> ThreatModel:
    return type(threat)(eps=eps, bounds=threat.bounds)


_RUNNERS: dict[str, Callable[[_Context], Finding]] = {
    "probabilities": _probabilities, "stochastic": _stochastic, "zero-gradients": _zero_gradients,
    "non-differentiable": _non_differentiable, "one-step": _one_step, "black-box": _black_box,
    "unbounded": _unbounded, "random-sampling": _random_sampling, "eps-monotone": _eps_monotone,
    "loss-rises": _loss_rises, "loss-agreement": _loss_agreement, "stronger-attack": _stronger_attack,
    "more-steps": _more_steps,
}
