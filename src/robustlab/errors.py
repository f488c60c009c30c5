"""Typed errors and warnings.

Every warning robustlab emits is a subclass of :class:`RobustlabWarning`, so users can filter
or escalate them as a group (``warnings.simplefilter("error", RobustlabWarning)``).
"""

from __future__ import annotations


class RobustlabError(ValueError):
    """Bad input: a shape, dtype, range or setting that robustlab cannot work with."""


class DataError(RobustlabError):
    """A dataset file is missing, truncated or corrupt; the message names the file."""


class RobustlabWarning(UserWarning):
    """Base class of every warning robustlab emits."""


class ProbabilityOutputWarning(RobustlabWarning):
    """The model's outputs look like probabilities; attacks and losses expect logits."""


class DistanceMismatchWarning(RobustlabWarning):
    """A minimum-norm attack's own ``extras["best_distance"]`` disagrees with the verified
    distance of the ``x_adv`` it returned (a bug in the attack's bookkeeping, or a logit tie)."""


class SingleDrawEOTWarning(RobustlabWarning):
    """EOT with one draw per step is plain PGD on a random model, a pitfall (Athalye et al. §4.2)."""
