"""Fully connected ReLU networks."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from robustlab.models._checks import int_tuple
from robustlab.models.registry import register_model


class MLP(nn.Sequential):
    """``Flatten -> (Linear -> ReLU) * len(hidden) -> Linear``, as a plain ``nn.Sequential``.

    Children are named ``flatten``, ``fc1``, ``relu1``, ..., ``fc{len(hidden)+1}`` so bound
    propagation and MILP verification can walk the layers in order. ``hidden=()`` gives a linear
    model (useful where closed-form answers are known).
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        width = in_features
        for index, size in enumerate(hidden, start=1):
            layers += [(f"fc{index}", nn.Linear(width, size)), (f"relu{index}", nn.ReLU())]
            width = size
        layers.append((f"fc{len(hidden) + 1}", nn.Linear(width, num_classes)))
        super().__init__(OrderedDict(layers))


@register_model("mlp")
def mlp(
    *, input_shape: tuple[int, int, int], num_classes: int, hidden: Sequence[int] = (256, 256)
) -> MLP:
    """Multi-layer perceptron on the flattened input.

    ``hidden`` defaults to ``(256, 256)`` (a robustlab choice, not a paper's). The small MNIST
    MLPs that exact (MILP) verification can handle in reasonable time -- 784-32-32-10,
    784-100-100-10 or 3x50, as discussed for MIPVerify (Tjeng, Xiao & Tedrake, ICLR 2019) --
    are ``hidden=(32, 32)``, ``(100, 100)`` and ``(50, 50, 50)``. PyTorch's default
    initialization.
    """
    hidden = int_tuple(hidden, "hidden", "mlp")
    channels, height, width = input_shape
    return MLP(channels * height * width, hidden, num_classes)
