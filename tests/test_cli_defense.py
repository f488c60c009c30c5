"""Preprocessing defenses in model cards and on the command line: a saved defended model loads
back as the same wrapper, `--defense` wraps a plain one, `--bpda` / `--eot` wrap the attacks, and
bad specs are clear errors (exit status 2, no traceback)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from robustlab.cli import main, parse_defense
from robustlab.errors import RobustlabError
from robustlab.models import ModelCard, build_model, load_model, save_model
from robustlab.models.preprocessing import (
    BitDepthReduction,
    JPEGDefense,
    RandomResizePad,
    ThermometerEncoding,
    split_defenses,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 10) -> torch.nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=order).split(50):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def _card(input_shape, defenses=()) -> ModelCard:
    return ModelCard(architecture="mlp", arguments={"input_shape": list(input_shape), "num_classes": 10, "hidden": [64]},
                     dataset="digits", defenses=list(defenses))


def _mlp(input_shape, seed: int = 0) -> torch.nn.Module:
    return build_model("mlp", input_shape=input_shape, num_classes=10, hidden=[64], seed=seed)


@pytest.fixture(scope="module")
def plain(digits, tmp_path_factory):
    """A clean-trained registry MLP on digits, saved without defenses."""
    x_train, y_train, _, _ = digits
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _train(_mlp((1, 8, 8)), x_train, y_train)
    path = tmp_path_factory.mktemp("plain") / "model"
    save_model(model, path, _card((1, 8, 8)))
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- model cards -------------------------------------------------------------------------------


def test_bit_depth_model_round_trips_through_its_card(digits, tmp_path):
    _, _, x, _ = digits
    defended = BitDepthReduction(_mlp((1, 8, 8)), bits=3).eval()
    save_model(defended, tmp_path / "m", _card((1, 8, 8), [{"defense": "bit-depth", "bits": 3}]))
    assert set(load_file(str(tmp_path / "m.safetensors"))) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert json.loads((tmp_path / "m.json").read_text())["defenses"] == [{"defense": "bit-depth", "bits": 3}]

    loaded, card = load_model(tmp_path / "m")
    assert isinstance(loaded, BitDepthReduction) and loaded.bits == 3 and not loaded.training
    assert card.defenses == [{"defense": "bit-depth", "bits": 3}]
    with torch.no_grad():
        assert torch.equal(loaded(x), defended(x))
        # the defense is really there: the inner network alone answers differently
        assert not torch.equal(loaded(x), loaded.model(x))


def test_thermometer_model_trained_on_encoded_inputs_round_trips(digits, tmp_path):
    _, _, x, _ = digits
    defended = ThermometerEncoding(_mlp((4, 8, 8)), levels=4).eval()
    card = _card((4, 8, 8), [{"defense": "thermometer", "levels": 4}])
    save_model(defended, tmp_path / "m", card)
    loaded, loaded_card = load_model(tmp_path / "m")
    assert isinstance(loaded, ThermometerEncoding) and loaded.levels == 4
    assert loaded_card.arguments["input_shape"] == [4, 8, 8]
    with torch.no_grad():
        assert loaded(x).shape == (len(x), 10)
        assert torch.equal(loaded(x), defended(x))


def test_stacked_and_random_defenses_round_trip_with_a_seeded_generator(digits, tmp_path):
    _, _, x, _ = digits
    x = x[:16]
    inner = _mlp((1, 10, 10))
    defended = RandomResizePad(JPEGDefense(inner, quality=50), min_size=8, out_size=10)
    configs = [{"defense": "jpeg", "quality": 50}, {"defense": "resize-pad", "min_size": 8, "out_size": 10}]
    assert split_defenses(defended)[1] == configs
    save_model(defended, tmp_path / "m", _card((1, 10, 10), configs))

    first, _ = load_model(tmp_path / "m", seed=3)
    again, _ = load_model(tmp_path / "m", seed=3)
    other, _ = load_model(tmp_path / "m", seed=4)
    assert isinstance(first, RandomResizePad) and isinstance(first.model, JPEGDefense) and first.model.quality == 50
    with torch.no_grad():
        reference = first(x)
        assert torch.equal(reference, again(x))
        assert not torch.equal(reference, other(x))
        assert not torch.equal(reference, first(x))  # fresh draws on every call


def test_saving_refuses_a_card_that_does_not_describe_the_defenses(tmp_path):
    defended = BitDepthReduction(_mlp((1, 8, 8)), bits=3)
    with pytest.raises(RobustlabError, match="differ from the card's"):
        save_model(defended, tmp_path / "m", _card((1, 8, 8)))
    with pytest.raises(RobustlabError, match="differ from the card's"):
        save_model(defended, tmp_path / "m", _card((1, 8, 8), [{"defense": "bit-depth", "bits": 4}]))
    approximated = BitDepthReduction(_mlp((1, 8, 8)), bits=3, approximation=lambda x: x)
    with pytest.raises(RobustlabError, match="custom BPDA approximation"):
        save_model(approximated, tmp_path / "m", _card((1, 8, 8), [{"defense": "bit-depth", "bits": 3}]))
    assert not (tmp_path / "m.json").exists()


def test_plain_cards_are_unchanged_and_cards_without_the_field_still_load(plain):
    data = json.loads(plain.with_suffix(".json").read_text())
    assert "defenses" not in data
    model, card = load_model(plain)
    assert card.defenses == [] and not isinstance(model, BitDepthReduction)


def test_a_card_naming_an_unknown_defense_is_a_clear_error(plain, tmp_path, capsys):
    for suffix in (".safetensors", ".json"):
        (tmp_path / f"m{suffix}").write_bytes(plain.with_suffix(suffix).read_bytes())
    card = json.loads((tmp_path / "m.json").read_text())
    card["defenses"] = [{"defense": "median-filter", "size": 3}]
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(RobustlabError, match="unknown defense 'median-filter'.*bit-depth"):
        load_model(tmp_path / "m")
    code, _, err = _run(capsys, "evaluate", "--model", str(tmp_path / "m"), "--attack", "fgsm", "--eps", "0.1",
                        "--limit", "10", "--quiet", "--out", str(tmp_path / "out"))
    assert code == 2 and "median-filter" in err and "Traceback" not in err


# --- command line ------------------------------------------------------------------------------


def test_parse_defense_fills_in_defaults():
    assert parse_defense("jpeg") == {"defense": "jpeg", "quality": 75}
    assert parse_defense("bit-depth:bits=3") == {"defense": "bit-depth", "bits": 3}
    assert parse_defense("resize-pad:out-size=40") == {"defense": "resize-pad", "min_size": None, "out_size": 40}


def test_bpda_breaks_the_defense_that_plain_pgd_cannot(plain, tmp_path, capsys):
    common = ["evaluate", "--model", str(plain), "--defense", "bit-depth:bits=3", "--attack", "pgd:steps=10",
              "--eps", "0.2", "--limit", "100", "--quiet"]
    assert _run(capsys, *common, "--out", str(tmp_path / "plain"))[0] == 0
    assert _run(capsys, *common, "--bpda", "--out", str(tmp_path / "bpda"))[0] == 0
    plain_ev = json.loads((tmp_path / "plain" / "evaluation.json").read_text())
    bpda_ev = json.loads((tmp_path / "bpda" / "evaluation.json").read_text())

    clean = plain_ev["metrics"]["clean_accuracy"]["value"]
    masked = plain_ev["metrics"]["robust_accuracy_per_attack"]["pgd"]["value"]
    broken = bpda_ev["metrics"]["robust_accuracy_per_attack"]["bpda+pgd"]["value"]
    assert clean > 0.8
    # About 0.95 and 0.06: PGD sees zero gradients and has only its random start; BPDA's
    # identity backward is a good enough stand-in for rounding to 8 levels.
    assert masked > clean - 0.1
    assert broken < masked - 0.5
    assert bpda_ev["attacks"]["bpda+pgd"]["attack"] == "bpda"
    assert bpda_ev["attacks"]["bpda+pgd"]["inner"]["attack"] == "pgd"
    for ev in (plain_ev, bpda_ev):
        assert ev["model_card"]["defenses"] == [{"defense": "bit-depth", "bits": 3}]


def test_defended_card_is_used_by_attack_and_eot_runs_on_a_random_defense(tmp_path, capsys):
    configs = [{"defense": "resize-pad", "min_size": 8, "out_size": 10}]
    # Resize-pad changes the image size; a network on 10x10 inputs sits behind it.
    inner = _mlp((1, 10, 10))
    save_model(RandomResizePad(inner, min_size=8, out_size=10), tmp_path / "m", _card((1, 10, 10), configs))
    code, _, err = _run(capsys, "attack", "--model", str(tmp_path / "m"), "--attack", "pgd:steps=2", "--eot", "3",
                          "--eps", "0.1", "--limit", "20", "--quiet", "--out", str(tmp_path / "out"))
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["defenses"] == configs
    assert summary["attack"]["attack"] == "eot" and summary["attack"]["draws"] == 3
    assert summary["attack"]["inner"]["steps"] == 2


def test_eot_runs_on_a_bayesian_model_without_a_defense(tmp_path, capsys):
    arguments = {"input_shape": [1, 8, 8], "num_classes": 10, "base": "mlp", "base_arguments": {"hidden": [16]},
                 "ensemble": 2, "sample_seed": 0}
    model = build_model("bayesian", **{**arguments, "input_shape": (1, 8, 8)}, seed=0)
    save_model(model, tmp_path / "bnn", ModelCard(architecture="bayesian", arguments=arguments, dataset="digits"))
    code, _, err = _run(capsys, "attack", "--model", str(tmp_path / "bnn"), "--attack", "pgd:steps=2", "--eot", "3",
                        "--eps", "0.1", "--limit", "10", "--quiet", "--out", str(tmp_path / "out"))
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["attack"]["attack"] == "eot" and summary["attack"]["draws"] == 3


def test_train_behind_thermometer_encoding_records_it_in_the_card(tmp_path, capsys):
    code, _, err = _run(capsys, "train", "--dataset", "digits", "--model", "mlp", "--model-arg", "hidden=[32]",
                        "--defense", "thermometer:levels=4", "--epochs", "2", "--batch-size", "64", "--lr", "0.05",
                        "--limit", "400", "--quiet", "--out", str(tmp_path))
    assert code == 0, err
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["defenses"] == [{"defense": "thermometer", "levels": 4}]
    assert card["arguments"]["input_shape"] == [4, 8, 8]
    model, _ = load_model(tmp_path / "model")
    assert isinstance(model, ThermometerEncoding) and model.model.fc1.in_features == 4 * 64


@pytest.mark.parametrize("argv, message", [
    (["--defense", "median-filter"], "unknown defense 'median-filter'"),
    (["--defense", "bit-depth:bits=0"], "bits must be an integer >= 1"),
    (["--defense", "bit-depth:levels=3"], "unknown setting(s) ['levels'] for defense 'bit-depth'"),
    (["--defense", "jpeg:quality"], "expected key=value"),
    (["--bpda"], "--bpda needs a non-differentiable defense"),
    (["--defense", "resize-pad", "--bpda"], "--bpda needs a non-differentiable defense"),
    (["--defense", "jpeg", "--eot", "5"], "--eot needs a stochastic defense"),
    (["--defense", "resize-pad", "--eot", "1"], "at least 2"),
])
def test_bad_defense_options_exit_2_with_a_clear_message(plain, tmp_path, capsys, argv, message):
    code, _, err = _run(capsys, "evaluate", "--model", str(plain), "--attack", "pgd:steps=2", "--eps", "0.1",
                        "--limit", "10", "--quiet", "--out", str(tmp_path), *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "evaluation.json").exists()


def test_adversarial_training_behind_a_masking_defense_is_refused(tmp_path, capsys):
    code, _, err = _run(capsys, "train", "--dataset", "digits", "--model", "mlp", "--defense", "bit-depth",
                        "--method", "pgd", "--eps", "0.1", "--quiet", "--out", str(tmp_path))
    assert code == 2 and "zero input gradients" in err
    assert not (tmp_path / "model.json").exists()


def test_certify_refuses_a_defended_model(tmp_path, capsys):
    defended = BitDepthReduction(_mlp((1, 8, 8)), bits=3)
    save_model(defended, tmp_path / "m", _card((1, 8, 8), [{"defense": "bit-depth", "bits": 3}]))
    code, _, err = _run(capsys, "certify", "--model", str(tmp_path / "m"), "--eps", "0.01", "--limit", "4",
                        "--quiet", "--out", str(tmp_path / "out"))
    assert code == 2
    assert "bit-depth" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "certify.json").exists()
