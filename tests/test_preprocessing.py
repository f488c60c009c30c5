"""Input-transformation defenses: what each transform computes, that the non-differentiable ones
really mask gradients (zeros, not errors), that BPDA mode keeps the forward value exact while
back-propagating through the approximation, and bad settings."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustlab.attacks.composition import bpda_mode
from robustlab.errors import RobustlabError
from robustlab.models.preprocessing import (
    BitDepthReduction,
    InputTransformDefense,
    JPEGDefense,
    RandomResizePad,
    ThermometerEncoding,
    resize_and_pad,
    soft_thermometer_encode,
    thermometer_encode,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 4, c: int = 1, side: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, side, side, generator=gen(seed))


def linear(in_features: int, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 3))


def input_grad(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    return grad


# --- the transforms ---------------------------------------------------------------------------


def test_bit_depth_rounds_to_the_nearest_level():
    x = torch.tensor([0.0, 0.1, 0.2, 0.49, 0.51, 0.9, 1.0]).view(1, 1, 1, 7)
    out = BitDepthReduction(nn.Identity(), bits=1).transform(x)
    assert out.flatten().tolist() == [0, 0, 0, 0, 1, 1, 1]
    x = images()
    out = BitDepthReduction(nn.Identity(), bits=3).transform(x)
    assert torch.allclose(out * 7, (out * 7).round(), atol=1e-5)
    assert (out - x).abs().max() <= 0.5 / 7 + 1e-6
    assert not torch.equal(out, x)


def test_jpeg_matches_a_pillow_round_trip_and_changes_the_image():
    from PIL import Image

    x = images(2, 3, 16)
    out = JPEGDefense(nn.Identity(), quality=30).transform(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    pixels = (x[1] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=30)
    expected = torch.from_numpy(np.array(Image.open(io.BytesIO(buffer.getvalue())))).permute(2, 0, 1) / 255
    assert torch.equal(out[1], expected.float())
    assert (out - x).abs().mean() > 0.02  # random noise does not survive JPEG at quality 30


def test_jpeg_grayscale_keeps_the_shape_and_lower_quality_loses_more():
    x = images(3, 1, 8)
    errors = [(JPEGDefense(nn.Identity(), quality=q).transform(x) - x).abs().mean() for q in (95, 20)]
    assert errors[0] < errors[1]
    assert JPEGDefense(nn.Identity()).transform(x[:0]).shape == (0, 1, 8, 8)


def test_thermometer_code_counts_the_levels_below_each_pixel():
    x = torch.tensor([0.0, 0.3, 0.55, 1.0]).view(1, 1, 2, 2)
    code = thermometer_encode(x, 4)
    assert code.shape == (1, 4, 2, 2)
    assert code.sum(dim=1).flatten().tolist() == [0, 2, 3, 4]  # thresholds 0, .25, .5, .75
    assert (code[:, :-1] >= code[:, 1:]).all()  # a thermometer: ones, then zeros


def test_thermometer_layout_is_channel_major():
    x = torch.zeros(1, 2, 1, 1)
    x[0, 1] = 1.0
    code = thermometer_encode(x, 3)
    assert code.flatten().tolist() == [0, 0, 0, 1, 1, 1]


def test_soft_thermometer_agrees_with_the_hard_code_away_from_the_pixel_level():
    x = images(2, 2, 5)
    levels = 6
    hard, soft = thermometer_encode(x, levels), soft_thermometer_encode(x, levels)
    assert soft.shape == hard.shape and (soft >= 0).all() and (soft <= 1).all()
    assert ((soft > 0) == (hard > 0)).all()
    differs = ((soft - hard).abs() > 0).view(2, 2, levels, 5, 5)
    assert differs.sum(dim=2).max() <= 1  # per pixel, only the level containing x differs
    assert torch.allclose(soft_thermometer_encode(torch.full((1, 1, 1, 1), 0.3), 4).flatten(),
                          torch.tensor([1.0, 0.2, 0.0, 0.0]))


def test_resize_and_pad_matches_interpolate_then_pad():
    x = images(3, 2, 8)
    size, top, left = torch.tensor([5, 8, 7]), torch.tensor([0, 1, 3]), torch.tensor([4, 0, 2])
    out = resize_and_pad(x, size, top, left, 10)
    assert out.shape == (3, 2, 10, 10)
    for i in range(3):
        s, t, lft = int(size[i]), int(top[i]), int(left[i])
        resized = F.interpolate(x[i : i + 1], size=(s, s), mode="bilinear", align_corners=False)
        expected = F.pad(resized, (lft, 10 - s - lft, t, 10 - s - t))
        assert torch.allclose(out[i : i + 1], expected, atol=1e-5)


def test_random_resize_pad_draws_per_image_and_per_call_from_its_generator():
    x = images(64, 1, 8).clamp_min(0.01)  # no zero pixels, so the support shows the drawn box
    defense = RandomResizePad(nn.Identity(), min_size=5, out_size=9, generator=gen(3))
    first, second = defense.transform(x), defense.transform(x)
    assert first.shape == (64, 1, 9, 9)
    assert not torch.equal(first, second)
    support = (first[:, 0] > 0).sum(dim=(1, 2))
    sides = support.float().sqrt()
    assert torch.equal(sides, sides.round()) and sides.min() >= 5 and sides.max() <= 8
    assert len(set(sides.tolist())) == 4  # every size in [5, 9) occurs among 64 draws
    defense.generator.manual_seed(3)
    assert torch.equal(defense.transform(x), first)


def test_random_resize_pad_default_follows_xie_et_al():
    assert RandomResizePad(nn.Identity()).sizes(299) == (299, 331)


def test_random_resize_pad_stays_random_in_eval_mode_and_is_differentiable():
    defense = RandomResizePad(linear(81), min_size=6, out_size=9, generator=gen()).eval()
    x = images(8)
    with torch.no_grad():
        assert not torch.equal(defense(x), defense(x))
    assert input_grad(defense, x).abs().sum() > 0


# --- gradients: masked by default, the approximation's under BPDA -------------------------------


DETERMINISTIC = [
    pytest.param(lambda m: BitDepthReduction(m, bits=3), 1, id="bit-depth"),
    pytest.param(lambda m: JPEGDefense(m, quality=75), 1, id="jpeg"),
    pytest.param(lambda m: ThermometerEncoding(m, levels=4), 4, id="thermometer"),
]


@pytest.mark.parametrize("make,width", DETERMINISTIC)
def test_non_differentiable_defenses_give_exactly_zero_gradients(make, width):
    defense = make(linear(64 * width))
    x = images()
    grad = input_grad(defense, x)
    assert grad.shape == x.shape and torch.equal(grad, torch.zeros_like(x))


@pytest.mark.parametrize("make,width", DETERMINISTIC)
def test_bpda_mode_keeps_the_forward_value_and_uses_the_approximation_gradient(make, width):
    model = linear(64 * width)
    defense = make(model)
    x = images()
    with torch.no_grad():
        plain = defense(x)
    with bpda_mode(defense) as found:
        assert found == [defense] and defense.bpda
        with torch.no_grad():
            assert torch.equal(defense(x), plain)
        grad = input_grad(defense, x)
    assert not defense.bpda
    expected = input_grad(lambda z: model(defense.approximation(z)), x)
    assert grad.abs().sum() > 0 and torch.allclose(grad, expected)


def test_a_custom_approximation_is_used_by_bpda():
    model = linear(64)
    defense = BitDepthReduction(model, bits=2, approximation=lambda z: 3 * z)
    with bpda_mode(defense):
        grad = input_grad(defense, images())
    assert torch.allclose(grad, 3 * input_grad(model, images()))


def test_bpda_approximation_with_the_wrong_shape_is_reported():
    defense = ThermometerEncoding(linear(64 * 4), levels=4, approximation=lambda z: z)
    with bpda_mode(defense), pytest.raises(RobustlabError, match="approximation returns shape"):
        defense(images())


def test_defenses_nest_inside_larger_models():
    inner = BitDepthReduction(linear(64), bits=2)
    model = nn.Sequential(nn.Identity(), inner)
    with bpda_mode(model) as found:
        assert found == [inner]
        assert input_grad(model, images()).abs().sum() > 0
    assert torch.equal(input_grad(model, images()), torch.zeros(4, 1, 8, 8))


# --- bad settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("build,match", [
    (lambda: BitDepthReduction(nn.Identity(), bits=0), "bits"),
    (lambda: BitDepthReduction(nn.Identity(), bits=2.5), "bits"),
    (lambda: BitDepthReduction(nn.Identity(), bits=True), "bits"),
    (lambda: JPEGDefense(nn.Identity(), quality=0), "quality"),
    (lambda: JPEGDefense(nn.Identity(), quality=101), "quality"),
    (lambda: JPEGDefense(nn.Identity(), quality=75.0), "quality"),
    (lambda: ThermometerEncoding(nn.Identity(), levels=1), "levels"),
    (lambda: RandomResizePad(nn.Identity(), min_size=0), "min_size"),
    (lambda: RandomResizePad(nn.Identity(), min_size=8, out_size=8), "exceed"),
    (lambda: RandomResizePad(nn.Identity(), generator=0), "generator"),
    (lambda: BitDepthReduction(lambda z: z), "wraps an nn.Module"),
    (lambda: BitDepthReduction(nn.Identity(), approximation=3), "callable"),
])
def test_bad_settings_are_rejected(build, match):
    with pytest.raises(RobustlabError, match=match):
        build()


def test_jpeg_rejects_two_channel_images():
    with pytest.raises(RobustlabError, match="1 .grayscale. or 3 .RGB."):
        JPEGDefense(nn.Identity()).transform(images(2, 2, 8))


def test_base_class_needs_a_transform():
    with pytest.raises(NotImplementedError):
        InputTransformDefense(nn.Identity())(images())
