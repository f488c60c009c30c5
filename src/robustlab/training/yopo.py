"""YOPO-m-n: "You Only Propagate Once" adversarial training (Zhang et al., NeurIPS 2019), as in the
reference code ``a1600012888/YOPO-You-Only-Propagate-Once`` (``training_function.py``, ``loss.py``).

The network is split into a *first layer* ``f0`` (everything the input goes through up to and
including the output of one named module) and the rest ``g``: ``logits = g(z)``, ``z = f0(x)``.
For each minibatch, starting from a uniform random ``eta`` in the threat set:

1. ``m`` times (``outer_steps``):

   a. one full forward and backward pass of ``CE(g(f0(x + eta)), y)`` (batch mean). Its parameter
      gradient is accumulated for *every* layer, ``f0`` included; its gradient with respect to
      ``z`` is the co-state ``-p`` (``p = -dCE/dz``), which is then frozen;
   b. ``n`` times (``inner_steps``): ``eta <- Proj(eta + sigma * dir(grad_eta <f0(x + eta), -p>))``,
      projected steepest ascent on the loss linearized at ``z``, propagating through ``f0`` only
      (``dir`` = sign for L∞; ``Proj`` onto ball ∩ box, so ``x + eta`` always stays in the box);
   c. the Hamiltonian gradient ``-d/dtheta0 H(x + eta, p) = d/dtheta0 <f0(x + eta), -p>`` at the
      new ``eta`` is added to ``f0``'s gradient.

   ``eta`` is carried from one outer iteration to the next.
2. One optimizer step on the summed gradient (the loop's step).

Fitting the loop: the whole computation runs in :meth:`YOPOTraining.loss`, which accumulates the
gradient above with ``torch.autograd.grad`` (``.grad`` fields are not touched) and returns the
surrogate ``mean_j CE_j + sum_theta <theta - stopgrad(theta), G_theta>``: its value is the mean
of the ``m`` cross-entropies (what is logged as the training loss) and its gradient with respect to
the parameters is exactly YOPO's accumulated gradient ``G``, so the loop's ``backward`` costs
next to nothing and its optimizer step is YOPO's single step per minibatch.

Learning rate: ``G`` is the *sum* over the ``m`` outer iterations, as in the reference code, which
divides the learning rate by ``m`` instead (its configs: lr 0.2 / K for PreAct-ResNet18, 0.01 / K
on MNIST). Set ``TrainConfig.lr`` to the paper's rate divided by ``m``. Dividing the loss by ``m``
is *not* equivalent under SGD with weight decay (the decay would act ``m`` times as strongly),
so it is not done here.

Decisions where the reference code is ambiguous, made explicit:

- ``f0``'s gradient includes the ``m`` full backward passes (step 1a) *and* the ``m`` Hamiltonian
  terms (1c), as in the CIFAR-10 code. The MNIST script saves and restores
  ``conv1.weight.grad`` around the full backward, but as gradients accumulate in place in the same
  tensor that is a no-op there too.
- The random start is projected onto the box (the reference code feeds ``x + eta`` unclipped to
  the first full pass only).
- The full passes run with the model as the loop leaves it (train mode): they are the training
  passes, so ``TrainConfig.bn_mode`` does not apply.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel
from robustlab.training.adversarial import (
    RandomStartMethod,
    check_positive_float,
    check_positive_int,
)
from robustlab.training.methods import METHODS, Batch, LossOutput

__all__ = ["YOPO_PRESETS", "YOPOOptions", "YOPOTraining", "first_layer_name"]

#: (m, n, sigma) of the reference experiments (the repository's configs, algorithms.md §7b):
#: MNIST YOPO-5-10 with sigma 0.01 at eps 0.3; CIFAR-10 YOPO-5-3 with sigma 2/255 at eps 8/255.
YOPO_PRESETS = {"mnist": (5, 10, 0.01), "cifar10": (5, 3, 2 / 255)}

# Element-wise modules that the default first layer takes along with the Conv/Linear before them,
# so that f0 is "conv1 + ReLU" as in the paper's MNIST SmallCNN.
_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Softplus, nn.Tanh, nn.Sigmoid, nn.Hardtanh,
)


@dataclass(frozen=True)
class YOPOOptions:
    """``outer_steps`` (``m``, the paper's ``K``), ``inner_steps`` (``n``) and ``step_size``
    (``sigma``, absolute, in input units) of YOPO-m-n. ``preset`` ``"mnist"`` (YOPO-5-10, sigma 0.01)
    or ``"cifar10"`` (YOPO-5-3, sigma 2/255) takes the paper's settings; explicit values override
    it; without either: YOPO-5-3 with ``sigma = eps / 4`` (the CIFAR-10 ratio).

    ``first_layer``: name (as in ``model.named_modules()``) of the module whose output is ``z``;
    ``f0`` is everything the input passes through up to and including it. Default: the first
    Conv/Linear module in module order, together with an element-wise activation module that
    directly follows it in the same ``nn.Sequential`` (``conv1`` + ``relu1`` in the MNIST CNNs,
    the bare stem ``conv1`` in PreAct-ResNet18: the paper's two choices); see
    :func:`first_layer_name`.
    """

    outer_steps: int | None = None
    inner_steps: int | None = None
    step_size: float | None = None
    preset: str | None = None
    first_layer: str | None = None

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in YOPO_PRESETS:
            raise RobustlabError(f"YOPOOptions.preset must be one of {sorted(YOPO_PRESETS)} or None, got {self.preset!r}")
        for name in ("outer_steps", "inner_steps"):
            if getattr(self, name) is not None:
                check_positive_int("YOPOOptions", name, getattr(self, name))
        if self.step_size is not None:
            check_positive_float("YOPOOptions", "step_size", self.step_size)
        if self.first_layer is not None and (not isinstance(self.first_layer, str) or not self.first_layer):
            raise RobustlabError(
                f"YOPOOptions.first_layer must be a module name such as 'conv1', got {self.first_layer!r}"
            )

    def resolve(self, eps: float) -> tuple[int, int, float]:
        """``(m, n, sigma)`` at radius ``eps``."""
        m, n, sigma = YOPO_PRESETS[self.preset] if self.preset is not None else (5, 3, None)
        m = self.outer_steps if self.outer_steps is not None else m
        n = self.inner_steps if self.inner_steps is not None else n
        sigma = self.step_size if self.step_size is not None else sigma
        return m, n, eps / 4 if sigma is None else sigma


def first_layer_name(model: nn.Module, name: str | None = None) -> str:
    """The name of the module whose output is YOPO's ``z`` (see :class:`YOPOOptions`).

    Raises :class:`RobustlabError` when ``name`` is not a proper submodule of ``model`` or, without
    ``name``, when the model has no Conv/Linear submodule to split off. Further conditions are
    checked during the first training step (see :class:`YOPOTraining`).
    """
    modules = dict(model.named_modules())
    if name is not None:
        if name == "" or name not in modules:
            choices = ", ".join(repr(n) for n in list(modules)[1:12]) or "none"
            raise RobustlabError(
                f"YOPO first_layer {name!r} is not a submodule of the model; the model's submodules "
                f"include {choices}"
            )
        return name
    for module_name, module in modules.items():
        if module_name and isinstance(module, (nn.Linear, _ConvNd)):
            parent_name, _, child = module_name.rpartition(".")
            parent = modules[parent_name]
            if isinstance(parent, nn.Sequential):
                children = list(parent.named_children())
                position = [c for c, _ in children].index(child)
                if position + 1 < len(children) and isinstance(children[position + 1][1], _ACTIVATIONS):
                    following = children[position + 1][0]
                    return f"{parent_name}.{following}" if parent_name else following
            return module_name
    raise RobustlabError(
        f"YOPO cannot split a first layer off this {type(model).__name__}: it has no Conv or Linear "
        "submodule; name the module that ends the first layer with method option first_layer"
    )


class _Truncated(Exception):
    """Raised by the first-layer hook to stop a forward pass once ``z`` is computed."""

    def __init__(self, output: Tensor) -> None:
        super().__init__()
        self.output = output


class _Split:
    """Forward hooks that evaluate ``f0`` alone or cut the full graph at ``z``.

    ``full(x)`` runs the whole model with ``z`` replaced by a fresh leaf ``z_leaf`` (so one backward
    gives ``g``'s parameter gradients and ``dCE/dz`` without entering ``f0``) and keeps the real
    ``z`` for ``f0``'s own backward; ``first(x)`` stops the forward pass at ``z`` and returns it.
    """

    def __init__(self, model: nn.Module, name: str) -> None:
        self.model = model
        self.name = name
        self.module = dict(model.named_modules())[name]
        self.truncate = False
        self.z: Tensor | None = None
        self.z_leaf: Tensor | None = None

    @property
    def leaf(self) -> Tensor:
        """The leaf that stands for the first layer's output in the last forward pass."""
        if self.z_leaf is None:
            raise RobustlabError(f"YOPO first layer {self.name!r} was not reached by the forward pass")
        return self.z_leaf

    @contextlib.contextmanager
    def hooked(self) -> Iterator[_Split]:
        handles = [self.module.register_forward_hook(self._on_first_layer)]
        handles += [m.register_forward_pre_hook(self._on_batchnorm) for m in self.model.modules()
                    if isinstance(m, _BatchNorm)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _on_first_layer(self, module: nn.Module, args: tuple, output: object) -> Tensor:
        if not isinstance(output, Tensor):
            raise RobustlabError(f"YOPO first layer {self.name!r} must return a tensor, got {type(output).__name__}")
        if self.truncate:
            raise _Truncated(output)
        if self.z is not None:
            raise RobustlabError(
                f"YOPO first layer {self.name!r} is called more than once per forward pass; the split "
                "needs a module the input passes through exactly once"
            )
        self.z = output
        self.z_leaf = output.detach().requires_grad_(True)
        # A copy, so that an in-place operation at the start of g (ReLU(inplace=True)) is legal.
        return self.z_leaf.clone()

    def _on_batchnorm(self, module: nn.Module, args: tuple) -> None:
        if self.z is None:
            raise RobustlabError(
                f"YOPO's first layer (up to {self.name!r}) contains a BatchNorm, which couples the examples "
                "of a batch in the Hamiltonian (algorithms.md §7 pitfalls); choose an earlier first_layer"
            )

    def full(self, x: Tensor) -> Tensor:
        self.truncate, self.z = False, None
        logits = self.model(x)
        if self.z is None:
            raise RobustlabError(f"YOPO first layer {self.name!r} is not called in the model's forward pass")
        return logits

    def first(self, x: Tensor) -> Tensor:
        self.truncate, self.z = True, None
        try:
            self.model(x)
        except _Truncated as stop:
            return stop.output
        finally:
            self.truncate = False
        raise RobustlabError(f"YOPO first layer {self.name!r} is not called in the model's forward pass")


class YOPOTraining(RandomStartMethod):
    """YOPO-m-n adversarial training; see the module docstring. ``x_train`` (from
    :meth:`make_inputs`) is the random start ``x + eta_0``; the reported training accuracy is on
    the last outer iteration's inputs ``x + eta_{m-1}``.

    Runtime checks (:class:`RobustlabError` at the first step): ``first_layer`` must be called
    exactly once per forward pass, contain no BatchNorm, have trainable parameters, and every path
    from the input to the logits must pass through it (no skip connection around it).

    Cost per batch: ``m`` full forwards and backwards, plus ``m * (n + 1)`` forwards and
    backwards through ``f0`` only (``n`` for the inner steps, one for the Hamiltonian's parameter
    gradient). PGD-r training costs ``r + 1`` full passes; the saving depends on ``f0`` being
    cheap relative to the whole network.
    """

    name = "yopo"
    Options = YOPOOptions

    def make_inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        return batch.required_threat.random_init(batch.x, self.generator).detach()

    def loss(self, model: nn.Module, x_train: Tensor, batch: Batch) -> LossOutput:
        threat, x, y = batch.required_threat, batch.x, batch.y
        m, n, sigma = self.options.resolve(threat.eps)
        params = [p for p in model.parameters() if p.requires_grad]
        # Input and co-state gradients are taken of the scaled loss (mixed precision), so that
        # float16 does not underflow; the accumulated parameter gradient is unscaled at the end.
        scale = batch.scale_loss(torch.ones((), device=x.device))
        total = [torch.zeros_like(p) for p in params]
        ce_sum = torch.zeros((), device=x.device)
        x_adv = x_train.detach()
        split = _Split(model, first_layer_name(model, self.options.first_layer))
        with torch.enable_grad(), split.hooked():
            for _ in range(m):
                x_in = x_adv.clone().requires_grad_(True)
                logits = split.full(x_in)
                ce = F.cross_entropy(logits.float(), y)
                *rest_grads, costate, bypass = torch.autograd.grad(
                    scale * ce, [*params, split.leaf, x_in], allow_unused=True
                )
                if bypass is not None:
                    raise RobustlabError(
                        f"the input reaches the logits without passing through YOPO's first layer "
                        f"{split.name!r} (a skip connection around it?); YOPO needs every path to go through it"
                    )
                z_start = split.z
                x_adv = self._inner_steps(split, x, x_adv, costate, threat, n, sigma)
                z_end = split.first(x_adv)
                if not z_end.requires_grad:
                    raise RobustlabError(f"YOPO's first layer (up to {split.name!r}) has no trainable parameters")
                first_grads = torch.autograd.grad(
                    [z_start, z_end], params, grad_outputs=[costate, costate], allow_unused=True
                )
                for acc, rest, first in zip(total, rest_grads, first_grads):
                    if rest is not None:
                        acc += rest
                    if first is not None:
                        acc += first
                ce_sum += ce.detach()
        surrogate = ce_sum / m
        for p, acc in zip(params, total):
            surrogate = surrogate + ((p - p.detach()) * (acc / scale)).sum()
        return LossOutput(surrogate, logits.detach())

    @staticmethod
    def _inner_steps(split: _Split, x: Tensor, x_adv: Tensor, costate: Tensor, threat: ThreatModel, steps: int,
                     step_size: float) -> Tensor:
        """``steps`` projected ascent steps on ``<f0(x_adv), costate>`` (costate frozen)."""
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(split.first(x_adv), x_adv, grad_outputs=costate)
            x_adv = x_adv.detach()
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
            x_adv = threat.project(x, x_adv + step_size * threat.steepest_direction(grad, x_adv))
        return x_adv


METHODS.add(YOPOTraining)
