"""Adapters for models written for something else than robustlab's contract.

Attacks, evaluations, certifiers and training need a model that maps ``x [N, ...]`` to a logits
tensor ``[N, K]``. Many models return more: a tuple ``(logits, features)``, a dict
``{"logits": ..., "aux": ...}`` or a Hugging Face ``ModelOutput``. :class:`Logits` picks the
logits out of such an output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from robustlab.errors import RobustlabError

__all__ = ["Logits", "describe_output"]


class Logits(nn.Module):
    """``Logits(model, key)``: the model whose output is ``model(x)[key]``.

    ``key`` is an ``int`` index into a tuple or list output (``Logits(model, 0)`` for
    ``(logits, features)``) or a key of a dict-like output (``Logits(model, "logits")``, which
    also fits Hugging Face's ``ModelOutput``). The wrapped model's parameters, buffers and
    train/eval mode are those of ``model`` (it is a submodule), so saving, freezing and mode
    changes behave as on ``model`` itself.
    """

    def __init__(self, model: nn.Module, key: int | str = 0):
        super().__init__()
        if not callable(model):
            raise RobustlabError(f"Logits needs a model (an nn.Module or callable), got {type(model).__name__}")
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise RobustlabError(f"Logits: key must be an int index or a str dict key, got {key!r}")
        self.model = model
        self.key = key

    def forward(self, x: Tensor) -> Tensor:
        output = self.model(x)
        try:
            value = output[self.key]
        except (KeyError, IndexError, TypeError):
            raise RobustlabError(f"Logits: the model's output, {describe_output(output)}, has no item {self.key!r}") from None
        if not isinstance(value, Tensor):
            raise RobustlabError(f"Logits: item {self.key!r} of the model's output is a {type(value).__name__}, "
                                 "not a logits tensor")
        return value

    def extra_repr(self) -> str:
        return f"key={self.key!r}"


def describe_output(output: Any) -> str:
    """A short description of a model output that is not a tensor, for error messages."""
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {list(output)[:8]}"
    if isinstance(output, (tuple, list)):
        kinds = [f"Tensor{list(v.shape)}" if isinstance(v, Tensor) else type(v).__name__ for v in output[:8]]
        return f"a {type(output).__name__} of {len(output)} items ({', '.join(kinds)})"
    return f"a {type(output).__name__}"


def output_error(output: Any) -> RobustlabError:
    """The error for a model whose output is not a tensor, naming the adapter that fixes it."""
    if isinstance(output, Mapping):
        keys = list(output)
        fix = ("robustlab.models.Logits(model, 'logits')" if "logits" in keys
               else f"robustlab.models.Logits(model, KEY) with KEY the key of the logits, one of {keys[:8]}")
    elif isinstance(output, (tuple, list)):
        fix = f"robustlab.models.Logits(model, INDEX) with INDEX the position of the logits (0 to {len(output) - 1})"
    else:
        return RobustlabError(f"the model must return a logits tensor [N, K], got {describe_output(output)}")
    return RobustlabError(f"the model returns {describe_output(output)}, not a logits tensor [N, K]; wrap it as {fix}")
