"""Feature denoising blocks (Xie, Wu, van der Maaten, Yuille & He, "Feature Denoising for
Improving Adversarial Robustness", CVPR 2019; ``facebookresearch/ImageNet-Adversarial-Training:
resnet_model.py``: ``denoising`` and ``non_local_op``).

A block maps ``[N, C, H, W] -> [N, C, H, W]``: ``x + norm(conv1x1(denoise(x)))`` (the paper's
Fig. 4). The 1x1 convolution and the residual connection let the network weigh the denoised
features against the raw ones; the normalization's scale starts at zero (the paper's
"zero-init" BN), so a freshly built block is exactly the identity and can be inserted after any
stage of a trained or untrained network without changing it.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robustlab.errors import RobustlabError
from robustlab.validate import is_int

__all__ = ["DENOISE_NORMS", "DENOISE_VARIANTS", "DenoisingBlock", "group_norm"]

#: Denoising operations, Xie et al. §4 (Fig. 5):
#: ``nonlocal-gaussian``: non-local means with softmax weights ``exp(x_i . x_j / sqrt(C))`` on the
#: features themselves (no embedding; [recalled] what the released ResNets use);
#: ``nonlocal-embedded-gaussian``: the same on 1x1-conv embeddings ``theta, phi`` of ``C/2``
#: channels; ``nonlocal-dot``: dot-product weights ``x_i . x_j`` normalized by ``H*W`` (no
#: softmax); ``mean``: a local 3x3 mean filter. The paper's median and bilateral filters are not
#: implemented.
DENOISE_VARIANTS = ("nonlocal-gaussian", "nonlocal-embedded-gaussian", "nonlocal-dot", "mean")
DENOISE_NORMS = ("group", "batch", "none")


def group_norm(channels: int) -> nn.GroupNorm:
    """``GroupNorm(gcd(32, channels), channels)``: the ``min(32, C)`` groups of the neural-ODE
    reference code (``HanshuYAN/TisODE:mnist/networks.py:norm``) whenever that divides ``C``."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


class DenoisingBlock(nn.Module):
    """``x + norm(conv1x1(denoise(x)))`` for ``x`` of shape ``[N, channels, H, W]``.

    ``variant``: one of :data:`DENOISE_VARIANTS` (default ``"nonlocal-gaussian"``).
    ``norm``: ``"group"`` (default; :func:`group_norm`, per-sample, like the rest of the ODE
    networks), ``"batch"`` (the paper's BatchNorm, which makes train-mode outputs depend on the
    batch) or ``"none"``. ``zero_init`` (default True, the paper's): the norm's scale and shift
    start at zero (with ``norm="none"``, the 1x1 convolution's weight and bias), so the block
    starts as the identity. Non-local variants cost ``O((H W)^2 C)`` time and ``O((H W)^2)``
    memory per sample (``nonlocal-dot`` is reassociated to ``O(H W C^2)``).
    """

    def __init__(self, channels: int, *, variant: str = "nonlocal-gaussian", norm: str = "group",
                 zero_init: bool = True) -> None:
        super().__init__()
        if not is_int(channels, 1):
            raise RobustlabError(f"DenoisingBlock: channels must be a positive int, got {channels!r}")
        if variant not in DENOISE_VARIANTS:
            raise RobustlabError(f"unknown denoising variant {variant!r}; choose one of {list(DENOISE_VARIANTS)}")
        if norm not in DENOISE_NORMS:
            raise RobustlabError(f"unknown denoising norm {norm!r}; choose one of {list(DENOISE_NORMS)}")
        if variant == "nonlocal-embedded-gaussian" and channels < 2:
            raise RobustlabError("the embedded non-local variant needs at least 2 channels (it embeds into C/2)")
        self.variant = variant
        self.theta: nn.Conv2d | None = None
        self.phi: nn.Conv2d | None = None
        if variant == "nonlocal-embedded-gaussian":
            self.theta = nn.Conv2d(channels, channels // 2, 1)
            self.phi = nn.Conv2d(channels, channels // 2, 1)
            for layer in (self.theta, self.phi):
                # N(0, 0.01) embeddings, as in the reference code.
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(cast(Tensor, layer.bias))
        self.conv = nn.Conv2d(channels, channels, 1)
        self.norm: nn.Module = (group_norm(channels) if norm == "group"
                                else nn.BatchNorm2d(channels) if norm == "batch" else nn.Identity())
        if zero_init:
            zeroed = self.conv if norm == "none" else self.norm
            nn.init.zeros_(cast(Tensor, zeroed.weight))
            nn.init.zeros_(cast(Tensor, zeroed.bias))

    def denoise(self, x: Tensor) -> Tensor:
        """The denoising operation alone, ``[N, C, H, W] -> [N, C, H, W]``."""
        if self.variant == "mean":
            return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        n, c, h, w = x.shape
        values = x.reshape(n, c, h * w)
        if self.theta is not None and self.phi is not None:
            queries = self.theta(x).flatten(2)
            keys = self.phi(x).flatten(2)
        else:
            queries = keys = values
        if self.variant == "nonlocal-dot":
            # sum_j (q_i . k_j) v_j / HW, computed as (V K^T) Q so that no HW x HW matrix is formed.
            out = torch.bmm(torch.bmm(values, keys.transpose(1, 2)), queries) / (h * w)
        else:
            scores = torch.bmm(queries.transpose(1, 2), keys) / math.sqrt(queries.shape[1])
            out = torch.bmm(values, scores.softmax(dim=-1).transpose(1, 2))
        return out.reshape(n, c, h, w)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise RobustlabError(f"DenoisingBlock expects feature maps [N, C, H, W], got shape {tuple(x.shape)}")
        return x + self.norm(self.conv(self.denoise(x)))

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}"
