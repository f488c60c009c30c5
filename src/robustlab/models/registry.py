"""Registry of architectures by name, and ``build_model``.

A builder is a callable ``builder(*, input_shape, num_classes, **kwargs) -> nn.Module``. Its
keyword arguments other than ``input_shape`` and ``num_classes`` are the model's *arguments*:
they are what a model card stores, so they must be JSON-able (numbers, strings, lists).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from robustlab.errors import RobustlabError
from robustlab.models.normalize import Normalize
from robustlab.registry import Registry
from robustlab.validate import is_int

Builder = Callable[..., nn.Module]

MODELS: Registry[Builder] = Registry("model")

_RESERVED = ("input_shape", "num_classes")


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator that registers ``builder`` under ``name`` (registering a name twice is an error)."""
    if not isinstance(name, str) or not name:
        raise RobustlabError(f"model name must be a non-empty string, got {name!r}")

    def decorator(builder: Builder) -> Builder:
        parameters = inspect.signature(builder).parameters
        missing = [p for p in _RESERVED if p not in parameters]
        if missing:
            raise RobustlabError(f"builder for {name!r} must accept keyword arguments {missing}")
        return MODELS.add(builder, name)

    return decorator


def list_models() -> list[str]:
    """Names of the registered architectures, sorted."""
    return MODELS.names()


def model_arguments(name: str) -> dict[str, Any]:
    """The extra arguments ``name`` accepts, with their defaults (``inspect.Parameter.empty`` if none)."""
    builder = MODELS.lookup(name)
    return {
        p.name: p.default
        for p in inspect.signature(builder).parameters.values()
        if p.name not in _RESERVED and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def build_model(
    name: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    normalize: tuple[Sequence[float], Sequence[float]] | Mapping[str, Sequence[float]] | None = None,
    seed: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the registered architecture ``name`` for inputs of shape ``input_shape = (C, H, W)``.

    ``normalize``: ``(mean, std)`` (or ``{"mean": ..., "std": ...}``); when given, the result is
    ``nn.Sequential(Normalize(mean, std), net)`` so normalization lives inside the model.
    Unknown names, unknown arguments and inputs too small for the architecture raise
    :class:`~robustlab.errors.RobustlabError`.

    ``seed``: initialise the weights from this seed (on a forked copy of the global RNG, which
    is left as it was), so that the same seed builds the same model.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            return build_model(name, input_shape=input_shape, num_classes=num_classes, normalize=normalize, **kwargs)
    builder = MODELS.lookup(name)
    accepted = model_arguments(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        listed = ", ".join(accepted) if accepted else "none"
        raise RobustlabError(
            f"unknown argument(s) {unknown} for model {name!r}; it accepts: {listed}"
        )
    shape = check_input_shape(input_shape)
    classes = check_num_classes(num_classes)
    net = builder(input_shape=shape, num_classes=classes, **kwargs)
    if normalize is None:
        return net
    mean, std = _unpack_normalize(normalize)
    layer = Normalize(mean, std)
    if layer.num_channels not in (1, shape[0]):
        raise RobustlabError(
            f"normalize has {layer.num_channels} channel statistics but input_shape {shape} "
            f"has {shape[0]} channels"
        )
    return nn.Sequential(layer, net)


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Validate ``(C, H, W)`` and return it as a tuple of ints."""
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise RobustlabError(f"input_shape must be (C, H, W), got {input_shape!r}")
    values = tuple(input_shape)
    if len(values) != 3 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise RobustlabError(f"input_shape must be three positive ints (C, H, W), got {input_shape!r}")
    return values


def check_num_classes(num_classes: int) -> int:
    if not is_int(num_classes, 2):
        raise RobustlabError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return num_classes


def _unpack_normalize(normalize: Any) -> tuple[Any, Any]:
    if isinstance(normalize, Mapping):
        if set(normalize) != {"mean", "std"}:
            raise RobustlabError(
                f"normalize must have exactly the keys 'mean' and 'std', got {sorted(normalize)}"
            )
        return normalize["mean"], normalize["std"]
    if isinstance(normalize, Sequence) and not isinstance(normalize, (str, bytes)) and len(normalize) == 2:
        return normalize[0], normalize[1]
    raise RobustlabError(f"normalize must be (mean, std) or None, got {normalize!r}")

