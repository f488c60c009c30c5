"""Small convolutional networks: Madry et al.'s MNIST CNN, the C&W/TRADES SmallCNN, LeNet-5 and
Wong & Kolter's small model.

Each is a plain ``nn.Sequential`` with named children (``conv1``, ``relu1``, ``pool1``, ...,
``flatten``, ``fc1``, ...), so bound propagation and MILP verification can walk the layers in
order, and YOPO can split off the first layer (``conv1``, or ``conv1`` + ``relu1``). ReLUs are
not in-place, so intermediate activations stay valid for hooks. Flatten sizes come from a dry
shape calculation on ``input_shape``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from robustlab.errors import RobustlabError
from robustlab.models._checks import feature_size, int_tuple, probability
from robustlab.models.registry import register_model
from robustlab.validate import is_int


class MadryCNN(nn.Sequential):
    """conv(2w, 5x5, pad 2)-ReLU-maxpool2, conv(4w, 5x5, pad 2)-ReLU-maxpool2, fc(64w)-ReLU, fc;
    ``w = 16`` (32 and 64 filters, 1024 units) unless a smaller capacity is asked for."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: int = 16) -> None:
        channels = input_shape[0]
        height, width_out = feature_size(
            "madry-cnn", input_shape, [("conv", 5, 2), ("pool", 2, 0), ("conv", 5, 2), ("pool", 2, 0)]
        )
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(channels, 2 * width, 5, padding=2)),
                    ("relu1", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(2)),
                    ("conv2", nn.Conv2d(2 * width, 4 * width, 5, padding=2)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(2)),
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(4 * width * height * width_out, 64 * width)),
                    ("relu3", nn.ReLU()),
                    ("fc2", nn.Linear(64 * width, num_classes)),
                ]
            )
        )


class SmallCNN(nn.Sequential):
    """Four 3x3 'valid' convolutions with two max-pools, then two hidden FC layers and dropout.

    conv(c1)-ReLU, conv(c2)-ReLU, maxpool2, conv(c3)-ReLU, conv(c4)-ReLU, maxpool2, flatten,
    fc(h1)-ReLU, dropout, fc(h2)-ReLU, fc(classes). The dropout layer is omitted when
    ``dropout == 0``.
    """

    fc3: nn.Linear

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        conv_channels: Sequence[int],
        hidden: Sequence[int],
        dropout: float,
    ) -> None:
        c1, c2, c3, c4 = conv_channels
        h1, h2 = hidden
        height, width = feature_size(
            "small-cnn",
            input_shape,
            [("conv", 3, 0), ("conv", 3, 0), ("pool", 2, 0), ("conv", 3, 0), ("conv", 3, 0), ("pool", 2, 0)],
        )
        layers: list[tuple[str, nn.Module]] = [
            ("conv1", nn.Conv2d(input_shape[0], c1, 3)),
            ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(c1, c2, 3)),
            ("relu2", nn.ReLU()),
            ("pool1", nn.MaxPool2d(2)),
            ("conv3", nn.Conv2d(c2, c3, 3)),
            ("relu3", nn.ReLU()),
            ("conv4", nn.Conv2d(c3, c4, 3)),
            ("relu4", nn.ReLU()),
            ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(c4 * height * width, h1)),
            ("relu5", nn.ReLU()),
        ]
        if dropout > 0:
            layers.append(("dropout", nn.Dropout(dropout)))
        layers += [
            ("fc2", nn.Linear(h1, h2)),
            ("relu6", nn.ReLU()),
            ("fc3", nn.Linear(h2, num_classes)),
        ]
        super().__init__(OrderedDict(layers))

    def reset_parameters_trades(self) -> None:
        """TRADES' initialization: Kaiming-normal conv weights, zero conv biases, zero last layer."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.zeros_(self.fc3.weight)
        nn.init.zeros_(self.fc3.bias)


class LeNet(nn.Sequential):
    """LeNet-5 layout with ReLU and max-pooling.

    conv(6, 5x5, pad 2)-ReLU-maxpool2, conv(16, 5x5)-ReLU-maxpool2, fc(120)-ReLU, fc(84)-ReLU,
    fc(classes). The padding on the first convolution makes a 28x28 input behave like LeCun's
    32x32 one (16x5x5 features before fc1).
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        height, width = feature_size(
            "lenet", input_shape, [("conv", 5, 2), ("pool", 2, 0), ("conv", 5, 0), ("pool", 2, 0)]
        )
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(input_shape[0], 6, 5, padding=2)),
                    ("relu1", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(2)),
                    ("conv2", nn.Conv2d(6, 16, 5)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(2)),
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(16 * height * width, 120)),
                    ("relu3", nn.ReLU()),
                    ("fc2", nn.Linear(120, 84)),
                    ("relu4", nn.ReLU()),
                    ("fc3", nn.Linear(84, num_classes)),
                ]
            )
        )


class KWSmall(nn.Sequential):
    """conv(16, 4x4, stride 2, pad 1)-ReLU, conv(32, 4x4, stride 2, pad 1)-ReLU, fc(100)-ReLU, fc."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        height, width = feature_size("kw-small", input_shape, [("conv", 4, 1, 2), ("conv", 4, 1, 2)])
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(input_shape[0], 16, 4, stride=2, padding=1)),
                    ("relu1", nn.ReLU()),
                    ("conv2", nn.Conv2d(16, 32, 4, stride=2, padding=1)),
                    ("relu2", nn.ReLU()),
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(32 * height * width, 100)),
                    ("relu3", nn.ReLU()),
                    ("fc2", nn.Linear(100, num_classes)),
                ]
            )
        )


@register_model("madry-cnn")
def madry_cnn(*, input_shape: tuple[int, int, int], num_classes: int, width: int = 16) -> MadryCNN:
    """The MNIST CNN of Madry et al., "Towards Deep Learning Models Resistant to Adversarial
    Attacks" (ICLR 2018; ``MadryLab/mnist_challenge:model.py``), in the PyTorch form of
    ``advertorch_examples/models.py:LeNet5Madry`` (5x5 convolutions with padding 2, i.e. TF
    "SAME"). Also the MNIST model of MMA training (Ding et al., ICLR 2020).

    On 28x28x1 MNIST it has 3,274,634 parameters. PyTorch's default initialization.

    ``width``: the capacity scale of the paper's capacity study (Sec. 5, Figure 4): 2w and 4w
    filters and 64w hidden units, doubled from ``w = 1`` (2 and 4 filters, 64 units) to the
    network above at ``w = 16`` [recalled from the paper; the seed lists the study's findings,
    not the widths].
    """
    if not is_int(width) or width < 1:
        raise RobustlabError(f"madry-cnn: width must be a positive integer, got {width!r}")
    return MadryCNN(input_shape, num_classes, width)


@register_model("small-cnn")
def small_cnn(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    conv_channels: Sequence[int] = (32, 32, 64, 64),
    hidden: Sequence[int] = (200, 200),
    dropout: float = 0.5,
    init: str = "pytorch",
) -> SmallCNN:
    """SmallCNN of Carlini & Wagner (S&P 2017; ``carlini/nn_robust_attacks:train_models.py``) as
    used by TRADES (Zhang et al., ICML 2019; ``yaodongyu/TRADES:models/small_cnn.py``) and YOPO.

    Defaults: ``conv_channels=(32, 32, 64, 64)``, ``hidden=(200, 200)`` and ``dropout=0.5``
    after the first FC layer's ReLU are the MNIST model of both sources (the dropout value and
    position checked against TRADES' ``small_cnn.py``: ``SmallCNN(drop=0.5)``). C&W's CIFAR model
    is ``conv_channels=(64, 64, 128, 128), hidden=(256, 256)``. On 28x28x1 MNIST the default
    has 312,202 parameters.

    ``init``: ``"pytorch"`` (default, PyTorch's layer initialization) or ``"trades"`` (Kaiming-
    normal convolutions with zero bias and a zero-initialized last layer, as in TRADES). The
    default is not TRADES' because a zero last layer makes every logit 0 and every input
    gradient 0 until the first training step, which silently defeats attacks and gradient
    checks run on an untrained model.
    """
    conv_channels = int_tuple(conv_channels, "conv_channels", "small-cnn", length=4)
    hidden = int_tuple(hidden, "hidden", "small-cnn", length=2)
    dropout = probability(dropout, "dropout", "small-cnn")
    if init not in ("pytorch", "trades"):
        raise RobustlabError(f"small-cnn: init must be 'pytorch' or 'trades', got {init!r}")
    net = SmallCNN(input_shape, num_classes, conv_channels, hidden, dropout)
    if init == "trades":
        net.reset_parameters_trades()
    return net


@register_model("lenet")
def lenet(*, input_shape: tuple[int, int, int], num_classes: int) -> LeNet:
    """LeNet-5 (LeCun et al., 1998) in the form common in the adversarial-examples literature
    (e.g. JSMA and DeepFool's MNIST LeNet): ReLU instead of tanh, max- instead of average
    pooling, full connections between conv layers, and padding 2 on the first convolution so
    28x28 MNIST gives the original 16x5x5 feature map. 61,706 parameters on MNIST, as LeNet-5.
    PyTorch's default initialization.
    """
    return LeNet(input_shape, num_classes)


@register_model("kw-small")
def kw_small(*, input_shape: tuple[int, int, int], num_classes: int) -> KWSmall:
    """The "small" MNIST model of Wong & Kolter, "Provable defenses against adversarial examples
    via the convex outer adversarial polytope" (ICML 2018), also the MNIST model of Wong, Rice &
    Kolter, "Fast is better than free" (ICLR 2020) and a standard benchmark of certified training
    and bound propagation. Two stride-2 convolutions and no pooling: on MNIST it has 2.7x LeNet's
    parameters (166,406) yet a forward and backward pass costs less than LeNet's on CPU, which is why
    the MNIST time-to-robustness benchmark uses it (``benchmarks/README.md``). PyTorch's default
    initialization.
    """
    return KWSmall(input_shape, num_classes)
