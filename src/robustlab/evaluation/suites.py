"""Attack suites: fixed, ordered attack lists for :func:`robustlab.evaluation.evaluate`.

``build_suite(name, threat, num_classes)`` (or ``SUITES[name](threat, num_classes)``) returns an
ordered ``{key: Attack}`` mapping; run it with ``cascade=True`` for the worst case at the cost of
a cascade. Attacks are built by registry name (:func:`robustlab.attacks.build_attack`) when a
suite is requested, so a suite whose attack is not registered fails then, with a clear error,
and importing this module never does.

* ``"standard"``: AutoAttack's standard version (Croce & Hein, ICML 2020; the ``set_version``
  of the authors' ``autoattack.py``). L∞ and L2: APGD-CE (100 steps, 1 restart), APGD-T
  (targeted DLR, 9 target classes, 100 steps), FAB-T (9 target classes, 100 steps), Square
  (5000 iterations after the initial query, ``p_init`` 0.8, the ``p`` schedule not rescaled to
  the budget: AutoAttack's ``resc_schedule=False``). L1 (AutoAttack's L1 version, Croce & Hein, ICML 2021): APGD-CE
  with 5 restarts, APGD-T with 5 target classes and FAB-T; AutoAttack's list also names Square,
  which robustlab implements for L∞ and L2 only, so the L1 suite has no score-based attack. AutoAttack
  additionally runs its L1 APGD with a larger-eps warm start (``use_largereps``), which
  robustlab's l1-APGD does not have: on L1 this suite can be slightly weaker than AutoAttack.
  Target counts are capped at ``K - 1``.
* ``"fast"`` (the default of ``robustlab evaluate``): our protocol, meant to break every sample
  ``standard`` breaks at a fraction of its cost. Run as a cascade, every attack compacting its
  batch to the samples still unbroken at every step (``early_stop``):

  1. APGD-CE, 100 steps, 1 restart (as ``standard``; a sample leaves the batch at its first
     adversarial iterate, or unbroken at a checkpoint where its smallest margin so far is above
     ``FAST_APGD_KEEP_NEAR`` = 0.15 of its clean margin and its recent progress, kept up
     ``FAST_APGD_GIVE_UP`` = 2-fold, would not reach the boundary in the steps left:
     ``give_up`` and ``keep_near``, see :class:`~robustlab.attacks.AutoPGD`);
  2. APGD-T on the ``FAST_TARGETS`` = 4 target classes ranked by MALT's linearised distance
     ``(Z_y - Z_j) / ||grad(Z_y - Z_j)||_q`` (Melamed, Yehudai & Shamir, NeurIPS 2024;
     :func:`robustlab.attacks.apgd.linearised_target_ranking`) instead of 9 ranked by logit,
     100 steps each, with the same ``give_up``. On the benchmark models most APGD successes
     come within 10 steps, and the samples that never fall sit on a plateau: giving up there
     costs no success on the recorded trajectories of ten models and saves 25-50% of the
     gradient steps, which pays for targets 3 and 4 (on the bilateral model they break images
     the first two targets miss);
  3. Square (AutoAttack's: 5001 queries, ``p_init`` 0.8, schedule not rescaled) on the
     survivors, for L∞ warm-started (``warm_start``): each sample continues, with small squares, from
     the point of steps 1-2 nearest the decision boundary where that point scores better than
     Square's own start, so the search begins where the gradient attacks stopped and breaks in a
     few hundred queries what a cold search breaks in thousands; and each sample gives up when
     its margin cannot plausibly reach the boundary within the budget (``give_up`` =
     ``FAST_SQUARE_GIVE_UP``, see :class:`~robustlab.attacks.SquareAttack`). The warm and the
     cold search break different images near the boundary: attacked alone with ten seeds, ``fast``
     with the warm search only broke an image of the zoo's first (kw-small) ``mnist-trades`` in 6
     where the reference's cold Square broke it in 10, and one of ``mnist-mma`` in 0 against 6
     (``benchmarks/autoattack_misses.py``; 8 and 1 now). So a sample the warm search
     leaves unbroken, from a start below ``FAST_SQUARE_COLD_NEAR`` (0.3) of its clean margin, is
     searched again from Square's own start for at most ``FAST_SQUARE_COLD_QUERIES`` (2000)
     queries (``cold_search_near``, ``cold_search_queries``): 10% more passes on the benchmark
     rows (the whole cold search cost 44%). The gradient-free
     attack stays, so models whose gradients are masked are broken as by ``standard`` (there,
     Square's own start scores better and is kept), but points that will not fall stop costing
     queries. L2 Square starts cold: APGD's L2 point lies on the sphere, where Square's L2 step
     only moves the budget it already spends between windows, and from there it made no
     progress on the benchmark's PGD-trained model (margins 0.926 -> 0.925 in 500 queries).

  FAB-T is left out: on the benchmark models it broke no sample that the other three did not
  (``benchmarks/README.md``, "The reference AutoAttack"). L1: steps 1 and 2 only (no Square).
* ``"quick"``: APGD-CE and APGD-T with 20 steps and 3 target classes: a smoke test of a few
  hundred forward/backward passes per sample, not a number to report (our choice, no paper).
* ``"thorough"``: AutoAttack's "plus" version (APGD-CE and APGD-DLR with 5 restarts,
  untargeted FAB with 5 restarts, Square, APGD-T and FAB-T with 9 targets) plus PGD on the
  C&W margin loss (100 steps, 5 restarts; a loss none of the others climbs) and Square with
  10000 queries instead of 5000 (for L1 without Square, as ``standard``). Untargeted FAB linearises all ``K - 1`` boundaries each step:
  its memory and time grow with the number of classes.

L0 has no suite: AutoAttack defines none.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from robustlab.attacks.base import Attack
from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel

__all__ = ["DEFAULT_SUITE", "SUITES", "build_suite", "suite_spec"]

# (key in the evaluation, registry name, hyperparameters)
Spec = list[tuple[str, str, dict[str, Any]]]

_NORMS = ("Linf", "L2", "L1")


def _quick(norm: str, num_classes: int) -> Spec:
    return [
        ("apgd-ce", "apgd", {"loss": "ce", "steps": 20, "restarts": 1}),
        ("apgd-t", "apgd-t", {"steps": 20, "restarts": 1, "n_target_classes": min(3, num_classes - 1)}),
    ]


def _standard(norm: str, num_classes: int) -> Spec:
    l1 = norm == "L1"
    spec: Spec = [
        ("apgd-ce", "apgd", {"loss": "ce", "steps": 100, "restarts": 5 if l1 else 1}),
        ("apgd-t", "apgd-t", {"steps": 100, "restarts": 1, "n_target_classes": min(5 if l1 else 9, num_classes - 1)}),
        ("fab-t", "fab-t", {"steps": 100, "restarts": 1, "n_target_classes": min(9, num_classes - 1)}),
    ]
    # AutoAttack's Square: 5000 iterations after the initial query (5001 queries) and the p
    # schedule not rescaled to the budget (``resc_schedule=False``).
    square: tuple[str, str, dict[str, Any]] = ("square", "square", {"queries": 5001, "p_init": 0.8, "rescale_schedule": False})
    return spec if l1 else [*spec, square]


def _fast(norm: str, num_classes: int) -> Spec:
    targets = min(FAST_TARGETS, num_classes - 1)
    spec = [
        ("apgd-ce", "apgd", {"loss": "ce", "steps": 100, "restarts": 1, "early_stop": True,
                             "give_up": FAST_APGD_GIVE_UP, "keep_near": FAST_APGD_KEEP_NEAR}),
        ("apgd-t", "apgd-t", {"steps": 100, "restarts": 1, "n_target_classes": targets, "ranking": "linear",
                              "early_stop": True, "give_up": FAST_APGD_GIVE_UP, "keep_near": FAST_APGD_KEEP_NEAR}),
    ]
    if norm == "L1":
        return spec
    square = {"queries": 5001, "p_init": 0.8, "rescale_schedule": False, "give_up": FAST_SQUARE_GIVE_UP,
              "keep_near": FAST_SQUARE_KEEP_NEAR}
    if norm == "L2":
        # Square's own start. APGD's L2 point lies on the sphere, where Square's L2 step can only
        # move the budget it already spends between windows: from there it made no progress.
        return [*spec, ("square", "square", square)]
    return [*spec, ("square", "square", {**square, "warm_start": True, "cold_search_near": FAST_SQUARE_COLD_NEAR,
                                         "cold_search_queries": FAST_SQUARE_COLD_QUERIES})]


def _thorough(norm: str, num_classes: int) -> Spec:
    if num_classes < 3:
        raise RobustlabError(f"the thorough suite's APGD-DLR needs at least 3 classes, the model has {num_classes}")
    targets = min(9, num_classes - 1)
    spec: Spec = [
        ("apgd-ce", "apgd", {"loss": "ce", "steps": 100, "restarts": 5}),
        ("apgd-dlr", "apgd", {"loss": "dlr", "steps": 100, "restarts": 5}),
        ("pgd-margin", "pgd", {"loss": "margin", "steps": 100, "restarts": 5}),
        ("fab", "fab", {"steps": 100, "restarts": 5}),
        ("square", "square", {"queries": 10000, "p_init": 0.8}),
        ("apgd-t", "apgd-t", {"steps": 100, "restarts": 1, "n_target_classes": targets}),
        ("fab-t", "fab-t", {"steps": 100, "restarts": 1, "n_target_classes": targets}),
    ]
    return [entry for entry in spec if norm != "L1" or entry[1] != "square"]


#: ``fast``: targets of its APGD-T (MALT-ranked), its APGDs' and its Square's give-up safety
#: factors and the fractions of the clean margin below which they never give up.
FAST_TARGETS = 4
FAST_APGD_GIVE_UP = 2.0
FAST_APGD_KEEP_NEAR = 0.15
FAST_SQUARE_GIVE_UP = 2.0
FAST_SQUARE_KEEP_NEAR = 0.06
#: ``fast``'s Square (L∞): the fraction of the clean margin below which a sample the warm search
#: leaves unbroken is searched again from Square's own start, and that cold search's budget.
FAST_SQUARE_COLD_NEAR = 0.3
FAST_SQUARE_COLD_QUERIES = 2000

_SPECS: dict[str, Callable[[str, int], Spec]] = {"fast": _fast, "quick": _quick, "standard": _standard,
                                                  "thorough": _thorough}


def suite_spec(name: str, threat: ThreatModel | str, num_classes: int) -> Spec:
    """The suite as ``[(key, registry name, hyperparameters)]``, without building anything."""
    if name not in _SPECS:
        raise RobustlabError(f"unknown attack suite {name!r}; choose one of {sorted(_SPECS)}")
    norm = threat.norm if isinstance(threat, ThreatModel) else threat
    if norm not in _NORMS:
        raise RobustlabError(f"attack suites are defined for {list(_NORMS)} (as AutoAttack), not {norm!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise RobustlabError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return _SPECS[name](norm, num_classes)


def build_suite(name: str, threat: ThreatModel | str, num_classes: int) -> dict[str, Attack]:
    """The attacks of suite ``name`` for ``threat`` (or its norm) and a ``num_classes``-way model,
    in order, keyed by their names in the evaluation.

    Raises :class:`RobustlabError` if an attack of the suite is not registered or does not
    support the norm: a suite silently missing an attack would overstate robustness.
    """
    from robustlab.attacks import ATTACKS, build_attack

    norm = threat.norm if isinstance(threat, ThreatModel) else threat
    attacks: dict[str, Attack] = {}
    for key, registered, hyperparameters in suite_spec(name, threat, num_classes):
        if registered not in ATTACKS:
            raise RobustlabError(f"the {name!r} suite needs the attack {registered!r}, which is not registered "
                                 f"in this robustlab (robustlab.attacks.ATTACKS has {sorted(ATTACKS)})")
        if norm not in ATTACKS[registered].norms:
            raise RobustlabError(f"the {name!r} suite needs {registered!r} for {norm}, which it does not support "
                                 f"(it supports {sorted(ATTACKS[registered].norms)})")
        attacks[key] = build_attack(registered, **hyperparameters)
    return attacks


#: The suite ``robustlab evaluate`` runs when no attack or suite is given.
DEFAULT_SUITE = "fast"

SUITES: dict[str, Callable[[ThreatModel | str, int], dict[str, Attack]]] = {
    name: partial(build_suite, name) for name in _SPECS
}
