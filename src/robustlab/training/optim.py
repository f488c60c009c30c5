"""Optimizer and per-iteration learning-rate schedule built from a :class:`TrainConfig`."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from robustlab.training.config import TrainConfig

# Wong et al., "Fast is better than free" (2020), Sec. 5: peak at 2/5 of training.
ONECYCLE_PEAK = 0.4


def build_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig):
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
        )
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Factor applied to ``config.lr`` at iteration ``step`` (0-based) of ``total_steps``."""
    total = max(total_steps, 1)
    if config.schedule == "constant":
        return lambda step: 1.0
    if config.schedule == "step":
        boundaries = [round(m * total) for m in config.milestones]
        return lambda step: config.gamma ** bisect.bisect_right(boundaries, step)
    if config.schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    peak = ONECYCLE_PEAK * total

    def onecycle(step: int) -> float:
        if step <= peak:
            return step / peak
        return max(0.0, (total - step) / (total - peak))

    return onecycle


def build_scheduler(optimizer, config: TrainConfig, total_steps: int) -> LambdaLR:
    """A ``LambdaLR`` to be stepped once per iteration, ``total_steps`` times in all."""
    return LambdaLR(optimizer, lr_factor(config, total_steps))
