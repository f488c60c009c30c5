"""PixelDefend (Song et al., ICLR 2018): the PixelCNN is causal in raster order, purification
stays in its window and follows the model's argmax, the purified classifier has zero gradients
(the diagnostics see it), BPDA breaks what plain PGD cannot touch, and the card round-trips
with the purifier's checkpoint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.attacks import BPDA, PGD
from robustlab.errors import RobustlabError
from robustlab.evaluation import diagnose
from robustlab.models import ModelCard, build_model, load_model, save_model
from robustlab.models.pixeldefend import (
    MaskedConv2d,
    PixelCNN,
    PixelDefend,
    build_pixelcnn,
    load_pixelcnn,
    purify,
    quantize,
    save_pixelcnn,
    train_pixelcnn,
)
from robustlab.threat import Linf

pytestmark = pytest.mark.usefixtures("single_thread")


def test_pixelcnn_output_at_a_pixel_depends_only_on_earlier_pixels():
    net = build_pixelcnn(levels=5, channels=8, layers=2, seed=0)
    x = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    for row, col in ((0, 0), (2, 3), (5, 5)):
        # the first layer sees the quantized input: test causality on the layers themselves
        inputs = x.clone().requires_grad_(True)
        out = net.net(inputs)[0, :, row, col].sum()
        (grad,) = torch.autograd.grad(out, inputs)
        flat = grad.flatten().abs()
        index = row * 6 + col
        assert (flat[index:] == 0).all() and (index == 0 or flat[:index].sum() > 0)
    assert MaskedConv2d("A", 1, 1, 3).mask[0, 0].tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert MaskedConv2d("B", 1, 1, 3).mask[0, 0].tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]


def test_purification_stays_in_its_window_and_takes_the_windowed_argmax():
    net = build_pixelcnn(levels=9, channels=8, layers=1, seed=1).eval()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(purify(net, x, 0.0), quantize(x, 9).float() / 8)
    out = purify(net, x, 2 / 8)
    levels = quantize(out, 9)
    assert ((levels - quantize(x, 9)).abs() <= 2).all()
    # the first pixel conditions on nothing: its value is the windowed argmax of the first logits
    with torch.no_grad():
        first = net(torch.zeros_like(x))[:, :, 0, 0]
    centre = quantize(x, 9)[:, 0, 0, 0]
    window = (torch.arange(9)[None] - centre[:, None]).abs() <= 2
    assert torch.equal(levels[:, 0, 0, 0], first.masked_fill(~window, -float("inf")).argmax(1))


@pytest.fixture(scope="module")
def purifier(digits):
    x_train, _, _, _ = digits
    net = build_pixelcnn(levels=17, channels=32, layers=4, seed=0)
    history = train_pixelcnn(net, x_train, epochs=4, seed=0)
    assert history[-1] < history[0]
    return net


def test_shattered_gradients_are_seen_and_bpda_breaks_them(purifier, digits, digits_mlp):
    _, _, x_test, y_test = digits
    x, y, threat = x_test[:40], y_test[:40], Linf(eps=0.2)
    defended = PixelDefend(digits_mlp, purifier=purifier, eps=2 / 16).eval()
    with torch.no_grad():
        assert (defended(x).argmax(1) == y).float().mean() > 0.85
    assert diagnose(defended, x[:10], y[:10], threat=threat, checks=("zero-gradients",))["zero-gradients"].verdict \
        != "pass"
    pgd = PGD(steps=5, step_size=0.05)
    naive = 1 - pgd(defended, x, y, threat=threat, generator=torch.Generator().manual_seed(0)).success.float().mean()
    bpda = 1 - BPDA(pgd)(defended, x, y, threat=threat, generator=torch.Generator().manual_seed(0)).success.float().mean()
    # measured at 100 images and 10 steps: naive 95%, BPDA 9%
    assert naive > 0.8 and bpda < naive - 0.5, (float(naive), float(bpda))


def test_card_round_trip(purifier, digits, tmp_path):
    save_pixelcnn(purifier, tmp_path / "pixelcnn.safetensors")
    reloaded = load_pixelcnn(tmp_path / "pixelcnn.safetensors")
    assert (reloaded.levels, reloaded.channels, reloaded.layers) == (17, 32, 4)
    for (name, a), (_, b) in zip(purifier.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    classifier = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[16], seed=0)
    defended = PixelDefend(classifier, purifier=str(tmp_path / "pixelcnn.safetensors"), eps=2 / 16)
    card = ModelCard(architecture="mlp", arguments={"input_shape": [1, 8, 8], "num_classes": 10, "hidden": [16]},
                     defenses=[defended.config()])
    save_model(defended, tmp_path / "classifier", card)
    loaded, loaded_card = load_model(tmp_path / "classifier")
    assert isinstance(loaded, PixelDefend) and loaded_card.defenses[0]["defense"] == "pixeldefend"
    _, _, x_test, _ = digits
    with torch.no_grad():
        assert torch.equal(loaded(x_test[:8]), defended.eval()(x_test[:8]))


def test_bad_settings_are_rejected(purifier, tmp_path):
    with pytest.raises(RobustlabError, match="purifier"):
        PixelDefend(nn.Identity())
    with pytest.raises(RobustlabError, match="eps"):
        PixelDefend(nn.Identity(), purifier=purifier, eps=2.0)
    with pytest.raises(RobustlabError, match="no path"):
        PixelDefend(nn.Identity(), purifier=purifier).config()
    with pytest.raises(RobustlabError, match="levels"):
        build_pixelcnn(levels=1)
    save_model(build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[4]), tmp_path / "mlp",
               ModelCard(architecture="mlp", arguments={"input_shape": [1, 8, 8], "num_classes": 10, "hidden": [4]}))
    with pytest.raises(RobustlabError, match="not a pixelcnn"):
        load_pixelcnn(tmp_path / "mlp.safetensors")
    with pytest.raises(RobustlabError, match="grayscale"):
        PixelCNN(4, 4, 1)(torch.rand(1, 3, 4, 4))
