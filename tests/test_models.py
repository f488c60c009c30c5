"""Tests for robustlab.models: architectures, Normalize, the registry and checkpoints."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import robustlab
from robustlab.errors import RobustlabError
from robustlab.models import (
    MODELS,
    ModelCard,
    Normalize,
    build_model,
    list_models,
    load_model,
    register_model,
    save_model,
)

DIGITS, MNIST, CIFAR = (1, 8, 8), (1, 28, 28), (3, 32, 32)
BUILTIN = {"mlp", "madry-cnn", "small-cnn", "lenet", "preact-resnet18", "wide-resnet"}

# Shapes each architecture supports, and small arguments that keep the tests fast on CPU.
SUPPORTED = {
    "mlp": [DIGITS, MNIST, CIFAR],
    "madry-cnn": [DIGITS, MNIST, CIFAR],
    "small-cnn": [MNIST, CIFAR],
    "lenet": [MNIST, CIFAR],
    "kw-small": [DIGITS, MNIST, CIFAR],
    "preact-resnet18": [DIGITS, MNIST, CIFAR],
    "wide-resnet": [DIGITS, MNIST, CIFAR],
}
TOO_SMALL = {"small-cnn": DIGITS, "lenet": DIGITS}
FAST_ARGS = {"wide-resnet": {"depth": 10, "width": 1}, "mlp": {"hidden": [32, 32]}}


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomize(model: nn.Module, seed: int = 0) -> None:
    """Random parameters and BN statistics, so a round trip that drops anything shows."""
    gen = _generator(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.2 + 0.9)
            elif tensor.is_floating_point() and not name.endswith((".mean", ".std")):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
            elif tensor.dtype == torch.long:
                tensor.fill_(7)


def test_builtin_models_registered():
    assert BUILTIN <= set(list_models())
    assert list_models() == sorted(MODELS)


@pytest.mark.parametrize("name", list_models())
def test_forward_shape_every_registered_model(name):
    shapes = SUPPORTED.get(name, [MNIST])  # models registered elsewhere: at least MNIST
    for shape in shapes:
        model = build_model(name, input_shape=shape, num_classes=7, **FAST_ARGS.get(name, {})).eval()
        with torch.no_grad():
            out = model(torch.rand((2, *shape), generator=_generator()))
        assert out.shape == (2, 7), (name, shape)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(TOO_SMALL))
def test_too_small_input_is_an_error(name):
    with pytest.raises(RobustlabError, match="too small"):
        build_model(name, input_shape=TOO_SMALL[name], num_classes=10)


def test_madry_cnn_parameter_count_on_mnist():
    # conv 1*32*25+32 + conv 32*64*25+64 + fc 3136*1024+1024 + fc 1024*10+10
    assert _num_params(build_model("madry-cnn", input_shape=MNIST, num_classes=10)) == 3_274_634


def test_small_cnn_parameter_count_on_mnist():
    # 28 -conv3-> 26 -conv3-> 24 -pool-> 12 -conv3-> 10 -conv3-> 8 -pool-> 4: fc1 sees 64*4*4 = 1024.
    expected = (
        (1 * 32 * 9 + 32)  # conv1: 320
        + (32 * 32 * 9 + 32)  # conv2: 9,248
        + (32 * 64 * 9 + 64)  # conv3: 18,496
        + (64 * 64 * 9 + 64)  # conv4: 36,928
        + (1024 * 200 + 200)  # fc1: 205,000
        + (200 * 200 + 200)  # fc2: 40,200
        + (200 * 10 + 10)  # fc3: 2,010
    )
    assert expected == 312_202
    assert _num_params(build_model("small-cnn", input_shape=MNIST, num_classes=10)) == 312_202


def test_other_known_parameter_counts():
    assert _num_params(build_model("lenet", input_shape=MNIST, num_classes=10)) == 61_706
    # conv 1*16*16+16 + conv 16*32*16+32 + fc (32*7*7)*100+100 + fc 100*10+10 (28 -> 14 -> 7)
    assert _num_params(build_model("kw-small", input_shape=MNIST, num_classes=10)) == 166_406
    assert build_model("kw-small", input_shape=CIFAR, num_classes=10).fc1.in_features == 32 * 8 * 8
    assert _num_params(build_model("mlp", input_shape=MNIST, num_classes=10, hidden=(100, 100))) == (
        784 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10
    )
    with torch.device("meta"):  # shapes only: no memory, no time
        wrn_28_10 = build_model("wide-resnet", input_shape=CIFAR, num_classes=10)
        wrn_34_10 = build_model("wide-resnet", input_shape=CIFAR, num_classes=10, depth=34)
        preact = build_model("preact-resnet18", input_shape=CIFAR, num_classes=10)
    assert _num_params(wrn_28_10) == 36_479_194
    assert _num_params(wrn_34_10) == 46_160_474
    assert _num_params(preact) == 11_172_170


def test_small_cnn_dropout_and_init_options():
    default = build_model("small-cnn", input_shape=MNIST, num_classes=10)
    assert isinstance(default.dropout, nn.Dropout) and default.dropout.p == 0.5
    no_dropout = build_model("small-cnn", input_shape=MNIST, num_classes=10, dropout=0.0)
    assert not any(isinstance(m, nn.Dropout) for m in no_dropout.modules())
    trades = build_model("small-cnn", input_shape=MNIST, num_classes=10, init="trades")
    assert torch.count_nonzero(trades.fc3.weight) == 0 and torch.count_nonzero(trades.fc3.bias) == 0
    assert torch.count_nonzero(default.fc3.weight) > 0
    with pytest.raises(RobustlabError, match="init"):
        build_model("small-cnn", input_shape=MNIST, num_classes=10, init="xavier")


def test_mlp_hidden_sizes_and_linear_model():
    model = build_model("mlp", input_shape=MNIST, num_classes=10, hidden=(32, 32))
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [32, 32, 10]
    linear = build_model("mlp", input_shape=MNIST, num_classes=10, hidden=())
    assert [type(m) for m in linear] == [nn.Flatten, nn.Linear]


def test_normalize_math():
    layer = Normalize([0.5, 0.25, 0.0], [0.5, 0.25, 2.0])
    x = torch.rand((4, 3, 5, 5), generator=_generator())
    expected = torch.stack([(x[:, 0] - 0.5) / 0.5, (x[:, 1] - 0.25) / 0.25, x[:, 2] / 2.0], dim=1)
    torch.testing.assert_close(layer(x), expected)
    assert "0.25" in repr(layer) and "mean=" in repr(layer) and "std=" in repr(layer)
    assert set(dict(layer.named_buffers())) == {"mean", "std"}
    assert layer(x.double()).dtype == torch.float64


def test_normalize_validates():
    with pytest.raises(RobustlabError, match="std"):
        Normalize([0.5], [0.0])
    with pytest.raises(RobustlabError, match="std"):
        Normalize([0.5, 0.5], [-1.0, 1.0])
    with pytest.raises(RobustlabError, match="values"):
        Normalize([0.5, 0.5], [1.0])
    with pytest.raises(RobustlabError, match="channels"):
        Normalize([0.5, 0.5, 0.5], [1.0, 1.0, 1.0])(torch.rand(2, 1, 4, 4))


def test_normalize_lives_inside_the_model():
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    model = build_model("lenet", input_shape=CIFAR, num_classes=10, normalize=(mean, std)).eval()
    assert isinstance(model, nn.Sequential) and isinstance(model[0], Normalize)
    assert {"0.mean", "0.std"} <= set(model.state_dict())
    x = torch.rand((2, *CIFAR), generator=_generator())
    manual = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model[1](manual))
    with pytest.raises(RobustlabError, match="channel"):
        build_model("lenet", input_shape=CIFAR, num_classes=10, normalize=((0.5, 0.5), (1.0, 1.0)))


def test_unknown_model_lists_available_names():
    with pytest.raises(RobustlabError, match="unknown model 'resnet9000'") as info:
        build_model("resnet9000", input_shape=MNIST, num_classes=10)
    for name in BUILTIN:
        assert name in str(info.value)


def test_unknown_argument_is_a_clear_error():
    with pytest.raises(RobustlabError, match=r"unknown argument.*'widht'.*depth, width, dropout"):
        build_model("wide-resnet", input_shape=CIFAR, num_classes=10, widht=4)
    with pytest.raises(RobustlabError, match="accepts: none"):
        build_model("lenet", input_shape=MNIST, num_classes=10, hidden=(3,))


@pytest.mark.parametrize("depth", [26, 4, 0, 27.0])
def test_wide_resnet_rejects_bad_depth(depth):
    with pytest.raises(RobustlabError, match="depth"):
        build_model("wide-resnet", input_shape=CIFAR, num_classes=10, depth=depth)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_shape": (28, 28), "num_classes": 10},
        {"input_shape": (1, 0, 28), "num_classes": 10},
        {"input_shape": MNIST, "num_classes": 1},
        {"input_shape": MNIST, "num_classes": 10, "hidden": (32, -1)},
    ],
)
def test_bad_shapes_and_arguments(kwargs):
    with pytest.raises(RobustlabError):
        build_model("mlp", **kwargs)


def test_register_model_rejects_duplicates():
    with pytest.raises(RobustlabError, match="already registered"):
        register_model("mlp")(lambda *, input_shape, num_classes: nn.Identity())


def _card(name: str, shape=MNIST, normalization=None, **arguments) -> ModelCard:
    return ModelCard(
        architecture=name,
        arguments={"input_shape": shape, "num_classes": 10, **arguments},
        dataset="test",
        normalization=normalization,
        training={"method": "pgd", "threat": {"norm": "Linf", "eps": 0.3}, "epochs": 1},
        metrics={"clean_accuracy": torch.tensor(0.5), "robust_accuracy": 0.25},
        extra={"note": "unit test"},
    )


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_save_load_round_trip(name, tmp_path):
    shape = SUPPORTED[name][-1]
    arguments = FAST_ARGS.get(name, {})
    normalization = {"mean": [0.5] * shape[0], "std": [0.25] * shape[0]}
    model = build_model(
        name, input_shape=shape, num_classes=10, normalize=(normalization["mean"], normalization["std"]), **arguments
    )
    _randomize(model)
    card = _card(name, shape, normalization, **arguments)
    weights = save_model(model, tmp_path / "ckpt", card)
    assert weights == tmp_path / "ckpt.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.json", "ckpt.safetensors"]  # no temp files left

    loaded, loaded_card = load_model(tmp_path / "ckpt")
    assert loaded_card == card
    assert not loaded.training
    x = torch.rand((2, *shape), generator=_generator(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_paths_with_or_without_suffix(tmp_path):
    model = build_model("mlp", input_shape=DIGITS, num_classes=10, hidden=[8])
    card = _card("mlp", DIGITS, hidden=[8])
    save_model(model, tmp_path / "sub" / "net.v1.safetensors", card)
    assert (tmp_path / "sub" / "net.v1.json").is_file()
    for path in ("net.v1", "net.v1.json", "net.v1.safetensors"):
        loaded, _ = load_model(tmp_path / "sub" / path)
        assert isinstance(loaded, nn.Module)
    loaded, _ = load_model(str(tmp_path / "sub" / "net.v1"), map_location=torch.device("cpu"))


def test_load_never_unpickles(tmp_path, monkeypatch):
    model = build_model("small-cnn", input_shape=MNIST, num_classes=10)
    save_model(model, tmp_path / "m", _card("small-cnn"))

    def forbidden(*args, **kwargs):
        raise AssertionError("load_model must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    loaded, _ = load_model(tmp_path / "m")
    assert isinstance(loaded, nn.Module)


def test_shared_and_non_contiguous_tensors_are_saved(tmp_path):
    model = build_model("mlp", input_shape=DIGITS, num_classes=10, hidden=[64, 64])
    with torch.no_grad():
        model.fc2.weight = nn.Parameter(model.fc2.weight.t().contiguous().t())  # non-contiguous
    model.fc1.bias = model.fc2.bias  # two keys, one storage
    save_model(model, tmp_path / "m", _card("mlp", DIGITS, hidden=[64, 64]))
    loaded, _ = load_model(tmp_path / "m")
    x = torch.rand((2, *DIGITS), generator=_generator())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize("problem", ["missing", "extra", "shape"])
def test_weights_that_do_not_fit_name_the_key(tmp_path, problem):
    model = build_model("lenet", input_shape=MNIST, num_classes=10)
    save_model(model, tmp_path / "m", _card("lenet"))
    path = tmp_path / "m.safetensors"
    tensors = load_file(str(path))
    if problem == "missing":
        del tensors["fc2.bias"]
        key = "fc2.bias"
    elif problem == "extra":
        tensors["fc9.weight"] = torch.zeros(3)
        key = "fc9.weight"
    else:
        tensors["conv2.weight"] = torch.zeros(16, 6, 3, 3)
        key = "conv2.weight"
    save_file(tensors, str(path))
    with pytest.raises(RobustlabError, match=key.replace(".", r"\.")):
        load_model(tmp_path / "m")


def test_card_with_missing_or_unknown_fields(tmp_path):
    model = build_model("lenet", input_shape=MNIST, num_classes=10)
    save_model(model, tmp_path / "m", _card("lenet"))
    card_path = tmp_path / "m.json"
    data = json.loads(card_path.read_text())

    del data["arguments"]
    card_path.write_text(json.dumps(data))
    with pytest.raises(RobustlabError, match=r"missing field\(s\) \['arguments'\]"):
        load_model(tmp_path / "m")

    data["arguments"] = {"input_shape": [1, 28, 28], "num_classes": 10}
    data["colour"] = "blue"
    card_path.write_text(json.dumps(data))
    with pytest.raises(RobustlabError, match=r"unknown field\(s\) \['colour'\]"):
        load_model(tmp_path / "m")

    card_path.write_text("{not json")
    with pytest.raises(RobustlabError, match="not valid JSON"):
        load_model(tmp_path / "m")


def test_card_json_round_trip_and_validation():
    card = _card("wide-resnet", CIFAR, {"mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2)}, depth=10, width=1)
    assert card.arguments["input_shape"] == [3, 32, 32]
    assert card.metrics["clean_accuracy"] == 0.5
    assert card.library_version == robustlab.__version__ and card.created
    assert ModelCard.from_json(card.to_json()) == card
    with pytest.raises(RobustlabError, match="input_shape"):
        ModelCard(architecture="mlp", arguments={"num_classes": 10})
    with pytest.raises(RobustlabError, match="JSON"):
        ModelCard(architecture="mlp", arguments={"input_shape": MNIST, "num_classes": 10}, extra={"f": object()})
    with pytest.raises(RobustlabError, match="std"):
        ModelCard(architecture="mlp", arguments={"input_shape": MNIST, "num_classes": 10},
                  normalization={"mean": [0.5], "std": [0.0]})
    with pytest.raises(RobustlabError, match="input_bounds"):
        ModelCard(architecture="mlp", arguments={"input_shape": MNIST, "num_classes": 10}, input_bounds=(1.0, 0.0))


def test_save_rejects_a_card_that_does_not_describe_the_model(tmp_path):
    model = build_model("lenet", input_shape=MNIST, num_classes=10)
    with pytest.raises(RobustlabError, match="do not fit"):
        save_model(model, tmp_path / "m", _card("madry-cnn"))
    normalized = build_model("lenet", input_shape=MNIST, num_classes=10, normalize=([0.1], [0.3]))
    with pytest.raises(RobustlabError, match="Normalize"):
        save_model(normalized, tmp_path / "m", _card("lenet"))
    with pytest.raises(RobustlabError, match="differs"):
        save_model(normalized, tmp_path / "m", _card("lenet", normalization={"mean": [0.2], "std": [0.3]}))
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_load_restores_float64_weights(tmp_path):
    model = build_model("mlp", input_shape=DIGITS, num_classes=10, hidden=[8]).double()
    save_model(model, tmp_path / "m", _card("mlp", DIGITS, hidden=[8]))
    loaded, _ = load_model(tmp_path / "m")
    assert loaded.fc1.weight.dtype == torch.float64
    assert torch.equal(loaded.fc1.weight, model.fc1.weight)


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    with pytest.raises(RobustlabError, match="not found"):
        load_model(tmp_path / "nothing")


def test_build_model_seed_is_reproducible_and_leaves_global_rng_alone():
    before = torch.get_rng_state()
    a = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, seed=3)
    b = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, seed=3)
    c = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))
