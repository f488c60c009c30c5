"""Input-transformation defenses, the textbook cases of obfuscated gradients.

Each defense is an ``nn.Module`` that wraps any classifier: ``JPEGDefense(model, quality=75)``
computes ``model(transform(x))``. Inputs are images ``[N, C, H, W]`` in the box ``[0, 1]``.

* :class:`JPEGDefense` (Guo et al., ICLR 2018; Dziugaite et al., 2016): a JPEG round trip.
* :class:`BitDepthReduction` (Xu et al., NDSS 2018, "feature squeezing"): ``bits`` per channel.
* :class:`ThermometerEncoding` (Buckman et al., ICLR 2018): each pixel becomes ``levels``
  binary channels; the wrapped model takes ``[N, C * levels, H, W]``.
* :class:`RandomResizePad` (Xie et al., ICLR 2018): resize to a random size, pad at a random
  position.

The first three are piecewise constant, so their true derivative is zero almost everywhere:
their backward pass returns exact zeros, as a real non-differentiable layer would, and plain
gradient attacks see no signal (the "shattered gradients" of Athalye et al., ICML 2018). Each
exposes :meth:`InputTransformDefense.approximation`, the differentiable stand-in that BPDA
(``robustlab.attacks.composition.BPDA``) back-propagates through while the forward pass stays
the real layer. :class:`RandomResizePad` is differentiable but random; attack it with EOT.

Defenses are registered by name in :data:`DEFENSES` (``"jpeg"``, ``"bit-depth"``,
``"thermometer"``, ``"resize-pad"``), so that a model card can record them and the command
line can name them: ``build_defense("bit-depth", model, bits=3)``; :meth:`config` gives
``{"defense": "bit-depth", "bits": 3}``, and :func:`apply_defenses` / :func:`split_defenses`
turn a list of such configs (innermost first) into nested wrappers and back.
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robustlab.errors import RobustlabError
from robustlab.registry import Registry
from robustlab.validate import is_int

__all__ = [
    "DEFENSES",
    "InputTransformDefense",
    "JPEGDefense",
    "BitDepthReduction",
    "ThermometerEncoding",
    "RandomResizePad",
    "apply_defenses",
    "build_defense",
    "defense_arguments",
    "list_defenses",
    "resize_and_pad",
    "split_defenses",
    "thermometer_encode",
    "soft_thermometer_encode",
]


class _ZeroGradient(torch.autograd.Function):
    """Runs a piecewise-constant ``fn`` and back-propagates zeros, its a.e. derivative.

    Zeros rather than "no gradient" so that a gradient attack runs and finds nothing, which is
    the failure mode the defense causes in practice; an error would hide it."""

    @staticmethod
    def forward(ctx, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.input_shape = x.shape
        return fn(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output.new_zeros(ctx.input_shape), None


def _check_images(x: Tensor, who: str) -> None:
    if x.dim() != 4:
        raise RobustlabError(f"{who} expects images [N, C, H, W], got shape {tuple(x.shape)}")


class InputTransformDefense(nn.Module):
    """Base class: ``forward(x) = model(transform(x))``.

    Subclasses implement :meth:`transform` (the real layer) and may override
    :meth:`approximation` (default: identity, or the ``approximation`` given at construction,
    e.g. a network trained to imitate the transform, which Athalye et al. §4.1 recommend when
    the transform is far from the identity). Set ``differentiable = True`` on transforms whose
    autograd gradient is already meaningful.

    While ``self.bpda`` is True (``robustlab.attacks.composition.bpda_mode`` sets it for the
    duration of a gradient computation), the forward value is still exactly ``transform(x)``
    but the gradient is that of ``approximation(x)``.

    A registered subclass sets ``name`` (its key in :data:`DEFENSES`), ``stochastic = True``
    if every forward draws afresh (what EOT is for), and :meth:`arguments`, its settings.
    """

    name: ClassVar[str] = ""
    differentiable: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False

    def __init__(self, model: nn.Module, *, approximation: Callable[[Tensor], Tensor] | None = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise RobustlabError(f"{type(self).__name__} wraps an nn.Module, got {type(model).__name__}")
        if approximation is not None and not callable(approximation):
            raise RobustlabError(f"approximation must be callable (x -> approx. transform(x)), got {approximation!r}")
        self.model = model
        self.approximation_fn = approximation
        self.bpda = False

    def transform(self, x: Tensor) -> Tensor:
        """The defense's preprocessing, as deployed."""
        raise NotImplementedError

    def approximation(self, x: Tensor) -> Tensor:
        """Differentiable ``g(x) ≈ transform(x)`` for BPDA; same output shape as the transform."""
        return x if self.approximation_fn is None else self.approximation_fn(x)

    def preprocess(self, x: Tensor) -> Tensor:
        if self.differentiable:
            return self.transform(x)
        if not self.bpda:
            return _ZeroGradient.apply(x, self.transform)
        approx = self.approximation(x)
        with torch.no_grad():
            real = self.transform(x)
        if approx.shape != real.shape:
            raise RobustlabError(
                f"{type(self).__name__}: the BPDA approximation returns shape {tuple(approx.shape)} but the "
                f"transform returns {tuple(real.shape)}"
            )
        # approx - approx.detach() is exactly 0, so the value is the real layer's bit for bit
        # (no rounding from the usual approx + (real - approx).detach()) and the gradient is g's.
        return real + (approx - approx.detach())

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.preprocess(x))

    def arguments(self) -> dict[str, Any]:
        """The constructor's settings that define the deployed transform (JSON-able), i.e.
        everything but ``model``, ``approximation`` and a ``generator``."""
        return {}

    def config(self) -> dict[str, Any]:
        """``{"defense": name, **arguments}``: what a model card records, and what
        :func:`build_defense` takes back."""
        if not self.name or DEFENSES.get(self.name) is not type(self):
            raise RobustlabError(f"{type(self).__name__} is not a registered defense (robustlab.models.preprocessing"
                                 f".DEFENSES has {list_defenses()}), so it has no name a model card could record")
        return {"defense": self.name, **self.arguments()}


class BitDepthReduction(InputTransformDefense):
    """Round each value to ``2**bits`` evenly spaced levels in ``[0, 1]`` (Xu et al., NDSS 2018,
    "feature squeezing"; [recalled] 1 bit on MNIST, 5 on CIFAR-10, 4 on ImageNet, the default here).

    Gradient: zero (piecewise constant); BPDA uses the identity (Athalye et al., ICML 2018, on input transformations).
    """

    name = "bit-depth"

    def __init__(self, model: nn.Module, *, bits: int = 4, approximation: Callable[[Tensor], Tensor] | None = None):
        super().__init__(model, approximation=approximation)
        if not is_int(bits, 1):
            raise RobustlabError(f"bits must be an integer >= 1, got {bits!r}")
        self.bits = bits

    def arguments(self) -> dict[str, Any]:
        return {"bits": self.bits}

    def transform(self, x: Tensor) -> Tensor:
        levels = 2**self.bits - 1
        return torch.round(x.clamp(0, 1) * levels) / levels

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class JPEGDefense(InputTransformDefense):
    """JPEG compression at ``quality`` through Pillow, one image at a time (Guo et al., ICLR
    2018, use quality 75, the default here).

    Images are rounded to 8 bits, encoded with Pillow's defaults (standard IJG tables, 4:2:0
    chroma subsampling for RGB) and decoded; 1-channel inputs are grayscale, 3-channel RGB.
    The round trip runs on the CPU and leaves autograd, so it is slow and its gradient is zero
    (quantised DCT coefficients are piecewise constant in the input); BPDA uses the identity
    (Athalye et al., ICML 2018, on input transformations).
    """

    name = "jpeg"

    def __init__(self, model: nn.Module, *, quality: int = 75, approximation: Callable[[Tensor], Tensor] | None = None):
        super().__init__(model, approximation=approximation)
        if not is_int(quality) or not 1 <= quality <= 100:
            raise RobustlabError(f"quality must be an integer in [1, 100], got {quality!r}")
        self.quality = quality

    def arguments(self) -> dict[str, Any]:
        return {"quality": self.quality}

    def transform(self, x: Tensor) -> Tensor:
        from PIL import Image  # optional dependency, only needed by this defense

        _check_images(x, "JPEGDefense")
        channels = x.shape[1]
        if channels not in (1, 3):
            raise RobustlabError(f"JPEGDefense handles 1 (grayscale) or 3 (RGB) channels, got {channels}")
        pixels = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        decoded = []
        for image in pixels:
            buffer = io.BytesIO()
            Image.fromarray(image[..., 0] if channels == 1 else image).save(buffer, format="JPEG", quality=self.quality)
            buffer.seek(0)
            decoded.append(torch.from_numpy(_as_array(Image.open(buffer), channels)))
        out = torch.stack(decoded) if decoded else torch.empty(tuple(pixels.shape), dtype=torch.uint8)
        return out.permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype) / 255

    def extra_repr(self) -> str:
        return f"quality={self.quality}"


def _as_array(image: object, channels: int):
    import numpy as np

    array = np.array(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def thermometer_encode(x: Tensor, levels: int) -> Tensor:
    """``[N, C, H, W] -> [N, C * levels, H, W]``: channel ``c * levels + k`` is 1 where
    ``x_c > k / levels`` (k = 0 .. levels - 1), else 0. Piecewise constant; no useful gradient."""
    _check_images(x, "thermometer encoding")
    n, c, h, w = x.shape
    thresholds = torch.arange(levels, device=x.device, dtype=x.dtype) / levels
    bits = (x.unsqueeze(2) > thresholds.view(1, 1, levels, 1, 1)).to(x.dtype)
    return bits.reshape(n, c * levels, h, w)


def soft_thermometer_encode(x: Tensor, levels: int) -> Tensor:
    """The relaxation ``min(max(x - k / levels, 0) * levels, 1)`` of :func:`thermometer_encode`
    (Athalye et al., ICML 2018, on thermometer encoding), same layout; it is 0 or 1 wherever the hard code is, except within
    one level of ``x``, where it ramps linearly."""
    _check_images(x, "thermometer encoding")
    n, c, h, w = x.shape
    thresholds = torch.arange(levels, device=x.device, dtype=x.dtype) / levels
    soft = ((x.unsqueeze(2) - thresholds.view(1, 1, levels, 1, 1)) * levels).clamp(0, 1)
    return soft.reshape(n, c * levels, h, w)


class ThermometerEncoding(InputTransformDefense):
    """Thermometer encoding (Buckman et al., ICLR 2018; 16 levels there, the default here).

    The wrapped model is trained on encoded inputs and takes ``[N, C * levels, H, W]``; this
    wrapper takes ``[N, C, H, W]`` in ``[0, 1]``. Gradient: zero. BPDA uses
    :func:`soft_thermometer_encode` (Athalye et al., ICML 2018, on thermometer encoding) unless another approximation is given.
    """

    name = "thermometer"

    def __init__(self, model: nn.Module, *, levels: int = 16, approximation: Callable[[Tensor], Tensor] | None = None):
        super().__init__(model, approximation=approximation)
        if not is_int(levels, 2):
            raise RobustlabError(f"levels must be an integer >= 2, got {levels!r}")
        self.levels = levels

    def arguments(self) -> dict[str, Any]:
        return {"levels": self.levels}

    def transform(self, x: Tensor) -> Tensor:
        return thermometer_encode(x, self.levels)

    def approximation(self, x: Tensor) -> Tensor:
        if self.approximation_fn is not None:
            return self.approximation_fn(x)
        return soft_thermometer_encode(x, self.levels)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


def resize_and_pad(x: Tensor, size: Tensor, top: Tensor, left: Tensor, out_size: int) -> Tensor:
    """Per sample, resize ``x[i]`` bilinearly to ``size[i] x size[i]`` and place it with its
    top-left corner at ``(top[i], left[i])`` on a zero canvas ``out_size x out_size``.

    ``x``: ``[N, C, H, W]``; ``size``, ``top``, ``left``: integer ``[N]``. Matches
    ``F.interpolate(mode="bilinear", align_corners=False)`` followed by zero padding, but is
    one batched, differentiable ``grid_sample`` with no per-sample loop.
    """
    n = x.shape[0]
    size_f, top_f, left_f = (t.to(device=x.device, dtype=x.dtype) for t in (size, top, left))
    # The resized image covers [offset, offset + size) of the canvas; in grid_sample's normalised
    # coordinates that is a box of half-width size / out_size centred at c.
    scale = size_f / out_size
    center_x = -1 + (2 * left_f + size_f) / out_size
    center_y = -1 + (2 * top_f + size_f) / out_size
    theta = x.new_zeros(n, 2, 3)
    theta[:, 0, 0] = 1 / scale
    theta[:, 0, 2] = -center_x / scale
    theta[:, 1, 1] = 1 / scale
    theta[:, 1, 2] = -center_y / scale
    grid = F.affine_grid(theta, [n, x.shape[1], out_size, out_size], align_corners=False)
    # "border" reproduces interpolate's edge clamping inside the image; the mask zeroes the padding.
    resized = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    pixel = torch.arange(out_size, device=x.device)
    rows = (pixel >= top.to(x.device)[:, None]) & (pixel < (top + size).to(x.device)[:, None])
    cols = (pixel >= left.to(x.device)[:, None]) & (pixel < (left + size).to(x.device)[:, None])
    inside = (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)
    return resized * inside.to(x.dtype)


class RandomResizePad(InputTransformDefense):
    """Random resizing and padding (Xie et al., ICLR 2018, §3): each image is resized to a
    random ``r x r`` with ``r`` uniform in ``[min_size, out_size)``, then zero-padded to
    ``out_size x out_size`` at a uniformly random offset. Xie et al. resize 299 to [299, 331)
    and pad to 331; the defaults scale that rule to the input (``min_size = H``,
    ``out_size = round(H * 331 / 299)``). Draws are independent per image and per call, in
    train and eval mode alike: the randomness is the defense.

    Randomness comes from ``generator`` (a CPU ``torch.Generator``; its state advances with every
    forward, so seed it again before a run to reproduce it) or, if None, from torch's global RNG.
    The transform is differentiable for a fixed draw, so BPDA is not needed: attack it with EOT
    (``robustlab.attacks.composition.EOT``), which averages gradients over fresh draws.
    """

    name = "resize-pad"
    differentiable = True
    stochastic = True

    def __init__(self, model: nn.Module, *, min_size: int | None = None, out_size: int | None = None,
                 generator: torch.Generator | None = None):
        super().__init__(model)
        for name, value in (("min_size", min_size), ("out_size", out_size)):
            if value is not None and (not is_int(value, 1)):
                raise RobustlabError(f"{name} must be a positive integer or None, got {value!r}")
        if min_size is not None and out_size is not None and out_size <= min_size:
            raise RobustlabError(
                f"out_size ({out_size}) must exceed min_size ({min_size}): sizes are drawn from [min_size, out_size)"
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise RobustlabError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.min_size = min_size
        self.out_size = out_size
        self.generator = generator

    def sizes(self, height: int) -> tuple[int, int]:
        """``(min_size, out_size)`` for inputs of side ``height``."""
        low = self.min_size if self.min_size is not None else height
        high = self.out_size if self.out_size is not None else max(low + 1, round(height * 331 / 299))
        if high <= low:
            raise RobustlabError(f"RandomResizePad: out_size {high} must exceed min_size {low} for inputs of side {height}")
        return low, high

    def transform(self, x: Tensor) -> Tensor:
        _check_images(x, "RandomResizePad")
        low, high = self.sizes(x.shape[2])
        n = x.shape[0]
        size = torch.randint(low, high, (n,), generator=self.generator)
        # Offsets uniform in [0, high - size], inclusive: u in [0, 1) scaled by the slack + 1.
        slack = (high - size + 1).to(torch.float64)
        top = (torch.rand(n, generator=self.generator, dtype=torch.float64) * slack).floor().to(torch.int64)
        left = (torch.rand(n, generator=self.generator, dtype=torch.float64) * slack).floor().to(torch.int64)
        return resize_and_pad(x, size, top, left, high)

    def approximation(self, x: Tensor) -> Tensor:
        return self.transform(x)

    def arguments(self) -> dict[str, Any]:
        return {"min_size": self.min_size, "out_size": self.out_size}

    def extra_repr(self) -> str:
        return f"min_size={self.min_size}, out_size={self.out_size}"


DEFENSES: Registry[type[InputTransformDefense]] = Registry(
    "defense", (JPEGDefense, BitDepthReduction, ThermometerEncoding, RandomResizePad))

# Constructor arguments that are not part of the deployed transform, so neither a model card
# nor a command-line spec sets them.
_NOT_SETTINGS = ("model", "approximation", "generator")


def list_defenses() -> list[str]:
    """Names of the registered defenses, sorted."""
    return DEFENSES.names()


def defense_arguments(name: str) -> dict[str, Any]:
    """The settings defense ``name`` accepts, with their defaults."""
    return {
        p.name: p.default
        for p in inspect.signature(DEFENSES.lookup(name)).parameters.values()
        if p.name not in _NOT_SETTINGS and p.kind is p.KEYWORD_ONLY
    }


def build_defense(name: str, model: nn.Module, *, generator: torch.Generator | None = None,
                  **arguments: Any) -> InputTransformDefense:
    """The registered defense ``name`` around ``model`` with ``arguments`` (its settings, see
    :func:`defense_arguments`); ``generator`` seeds a stochastic defense and is refused by a
    deterministic one. Unknown names and settings raise :class:`RobustlabError`."""
    cls = DEFENSES.lookup(name)
    accepted = defense_arguments(name)
    unknown = sorted(set(arguments) - set(accepted))
    if unknown:
        raise RobustlabError(f"unknown setting(s) {unknown} for defense {name!r}; it accepts: "
                             f"{', '.join(accepted) or 'none'}")
    if generator is not None:
        if not cls.stochastic:
            raise RobustlabError(f"defense {name!r} is deterministic; it takes no generator")
        arguments = {**arguments, "generator": generator}
    return cls(model, **arguments)


def apply_defenses(model: nn.Module, configs: Sequence[Mapping[str, Any]], *,
                   generator: torch.Generator | None = None) -> nn.Module:
    """Wrap ``model`` in the defenses ``configs`` describes, innermost first: with
    ``[{"defense": "thermometer", "levels": 16}, {"defense": "jpeg"}]`` an input is compressed,
    then encoded, then classified. Every stochastic defense draws from ``generator`` (one
    stream shared by all; None: torch's global RNG)."""
    for config in configs:
        if not isinstance(config, Mapping) or not isinstance(config.get("defense"), str):
            raise RobustlabError(f"a defense is described by {{'defense': name, setting: value, ...}}, got {config!r}")
        settings = {key: value for key, value in config.items() if key != "defense"}
        cls = DEFENSES.lookup(config["defense"])
        model = build_defense(cls.name, model, generator=generator if cls.stochastic else None, **settings)
    return model


def split_defenses(model: nn.Module) -> tuple[nn.Module, list[dict[str, Any]]]:
    """``(inner model, configs innermost first)``, the inverse of :func:`apply_defenses`.

    Raises if a defense cannot be described faithfully: an unregistered subclass, a custom BPDA
    ``approximation`` (a callable, perhaps a trained network, that a card cannot hold), or a
    defense inside the model rather than around it."""
    configs: list[dict[str, Any]] = []
    while isinstance(model, InputTransformDefense):
        if model.approximation_fn is not None:
            raise RobustlabError(
                f"{type(model).__name__} has a custom BPDA approximation, which a model card cannot record; "
                "save the defense without it and pass the approximation again after loading"
            )
        configs.append(model.config())
        model = model.model
    nested = [name for name, module in model.named_modules() if isinstance(module, InputTransformDefense)]
    if nested:
        raise RobustlabError(f"defense(s) inside the model at {nested}; only defenses wrapping the whole model "
                             "(outside any other layer) can be recorded")
    return model, configs[::-1]

