"""Saving and restoring a model's state around a piece of work: the one place it is written.

- :class:`ModuleMode`: the whole model in train or eval mode for the body, every module's own
  ``training`` flag restored after (a model whose submodules were in mixed modes gets them back).
- :class:`FrozenEval`: eval mode and every parameter frozen (``requires_grad=False``) for the
  body; modes, ``requires_grad`` flags and ``.grad`` restored after. The attack template and the
  certifiers run models this way (DESIGN.md: calls leave nothing behind).

Both are context managers (``with FrozenEval(model): ...``) whose ``__enter__`` returns the model.
"""

from __future__ import annotations

from torch import nn

__all__ = ["FrozenEval", "ModuleMode"]


class ModuleMode:
    """``model.train(training)`` for the body; each module's ``training`` flag restored on exit."""

    def __init__(self, model: nn.Module, training: bool):
        self.model = model
        self.training = training

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.train(self.training)
        return self.model

    def __exit__(self, *exc: object) -> None:
        for m, training in self.modes:
            m.training = training


class FrozenEval(ModuleMode):
    """Eval mode, parameters frozen; modes, ``requires_grad`` and ``.grad`` restored on exit."""

    def __init__(self, model: nn.Module):
        super().__init__(model, False)

    def __enter__(self) -> nn.Module:
        self.params = [(p, p.requires_grad, p.grad) for p in self.model.parameters()]
        super().__enter__()
        for p, _, _ in self.params:
            p.requires_grad_(False)
        return self.model

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        for p, requires_grad, grad in self.params:
            p.requires_grad_(requires_grad)
            p.grad = grad
