"""Pre-activation residual networks for small images: PreAct-ResNet-18 and Wide ResNets.

Both end in global average pooling, so they accept any spatial size (8x8 digits, 28x28 MNIST,
32x32 CIFAR); on 32x32 inputs they compute exactly what the fixed ``avg_pool2d(out, 4 or 8)``
of the reference code computes. Parameter names follow the reference implementations, so
published state dicts can be converted to safetensors and loaded with strict key checks.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from robustlab.errors import RobustlabError
from robustlab.models._checks import positive_int, probability
from robustlab.models.registry import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity shortcut, or a 1x1 conv shortcut taken
    from the pre-activated input when the shape changes (He et al. 2016, Fig. 4(e))."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """conv3x3(64) stem, four stages of two :class:`PreActBlock` (64/128/256/512 channels,
    strides 1/2/2/2), BN-ReLU, global average pooling, linear.

    The stem ``conv1`` has no BN/ReLU after it (the blocks start with BN-ReLU), which makes it
    YOPO's "first layer" f0.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        in_planes = 64
        stages = []
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class WideBasicBlock(nn.Module):
    """Pre-activation basic block of a Wide ResNet, as in TRADES' and MMA's implementation.

    When the channel count changes, BN-ReLU is applied to the block's input and the 1x1
    shortcut convolution reads that activated tensor; otherwise the shortcut is the identity
    on the raw input. Dropout (if any) sits between the two convolutions.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        # camelCase kept so state dicts match the reference implementations' parameter names.
        self.convShortcut: nn.Conv2d | None = None
        if in_planes != out_planes or stride != 1:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class _WideStage(nn.Module):
    def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropout)
                for i in range(blocks)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``width``: conv3x3(16) stem, three stages of ``(depth - 4) / 6`` blocks with
    16k/32k/64k channels (k = ``width``; strides 1/2/2), BN-ReLU, global average pooling, linear.
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int, width: int, dropout: float) -> None:
        super().__init__()
        blocks = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _WideStage(blocks, channels[0], channels[1], 1, dropout)
        self.block2 = _WideStage(blocks, channels[1], channels[2], 2, dropout)
        self.block3 = _WideStage(blocks, channels[2], channels[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(channels[3], num_classes)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # The reference initialization (TRADES / MMA): He-normal with fan-out for convolutions,
        # BN weight 1 and bias 0, zero linear bias (linear weight keeps PyTorch's default).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@register_model("preact-resnet18")
def preact_resnet18(*, input_shape: tuple[int, int, int], num_classes: int) -> PreActResNet18:
    """Pre-activation ResNet-18, CIFAR variant: He, Zhang, Ren & Sun, "Identity Mappings in
    Deep Residual Networks" (ECCV 2016), in the layout of the PyTorch CIFAR implementation used
    by YOPO and by Wong et al. / Rice et al.'s adversarial-training code (3x3 stem, no max-pool,
    stages 64/128/256/512 of two blocks each).

    Final BN-ReLU before pooling as in the paper's pre-activation design; the variant in YOPO's
    ``network.py`` omits that last BN-ReLU. PyTorch's default initialization. 11,172,170
    parameters for 3x32x32 inputs and 10 classes.
    """
    return PreActResNet18(input_shape[0], num_classes)


@register_model("wide-resnet")
def wide_resnet(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    depth: int = 28,
    width: int = 10,
    dropout: float = 0.0,
) -> WideResNet:
    """Wide ResNet (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016) with the
    pre-activation basic blocks of ``yaodongyu/TRADES:models/wideresnet.py`` (also advertorch's
    ``get_cifar10_wrn28_widen_factor``, used by MMA).

    Defaults: ``depth=28, width=10`` is WRN-28-10, the paper's CIFAR model (TRADES and YOPO use
    ``depth=34``, MMA ``width=4``); ``dropout=0.0`` as in TRADES and MMA. ``depth`` must satisfy
    ``(depth - 4) % 6 == 0``. TRADES' class also builds an unused ``sub_block1`` (never called
    in ``forward``); it is not built here, so WRN-34-10 has 46,160,474 parameters, not more.
    The initialization is TRADES' (He-normal fan-out convolutions).
    """
    depth = positive_int(depth, "depth", "wide-resnet")
    width = positive_int(width, "width", "wide-resnet")
    dropout = probability(dropout, "dropout", "wide-resnet")
    if depth < 10 or (depth - 4) % 6 != 0:
        raise RobustlabError(
            f"wide-resnet: depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth}"
        )
    return WideResNet(input_shape[0], num_classes, depth, width, dropout)
