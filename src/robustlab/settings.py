"""Run settings: the seed, batch size, progress display and device of one run, as one frozen
object.

They are how a run is carried out, as opposed to what is computed on what (the model, data,
threat model and attacks): the command line builds them once from ``--seed``, ``--batch-size``,
``--quiet`` and ``--device``, and the evaluations (:func:`~robustlab.evaluation.evaluate`,
:func:`~robustlab.evaluation.evaluate_minimum_norm`,
:func:`~robustlab.evaluation.evaluate_targeted`) pass them down to the block runner
(:func:`~robustlab.evaluation.runner.run_blocks`) unchanged. A function that needs only one of
them (``diagnose(seed=...)``, a certifier's ``batch_size``) takes that one alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustlab.errors import RobustlabError

__all__ = ["RunSettings"]


@dataclass(frozen=True)
class RunSettings:
    """Seed, batch size, progress display and device of a run (validated on construction).

    Args:
        seed: every random draw of the run comes from generators seeded from it (an evaluation
            seeds one generator per attack and block, see
            :func:`~robustlab.evaluation.runner.block_seed`).
        batch_size: samples per model call (an evaluation's blocks); results of batched
            attacks depend on it, as they do in every library.
        progress: show a progress bar (the command line's default; off in library calls).
        device: where the run computes (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``), or
            ``None``: wherever the inputs already are. The evaluations move nothing; they refuse
            inputs on another device than a device given here.
    """

    seed: int = 0
    batch_size: int = 256
    progress: bool = False
    device: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise RobustlabError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise RobustlabError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.progress, bool):
            raise RobustlabError(f"progress must be True or False, got {self.progress!r}")
        if self.device is not None:
            try:
                device = torch.device(self.device)
            except (RuntimeError, TypeError):
                raise RobustlabError(f"unknown device {self.device!r}; use cpu, cuda, cuda:N or mps") from None
            object.__setattr__(self, "device", str(device))

    def check_device(self, x: torch.Tensor) -> None:
        """Refuse inputs ``x`` on another device than :attr:`device` (``None`` accepts any; a
        device without an index, such as ``"cuda"``, accepts any of its kind)."""
        if self.device is None:
            return
        wanted = torch.device(self.device)
        if x.device.type != wanted.type or (wanted.index is not None and x.device.index != wanted.index):
            raise RobustlabError(f"the run settings say device {self.device!r} but the inputs are on {x.device}; "
                                 "move the model and inputs there first, or leave RunSettings.device None")
