"""Bad-input conformance suite (issue 16): every public entry point checks what it is given.

Each class of bad input is tried with several members on every entry point it applies to. A
case asserts the error type, that the message names the problem, and that nothing was written;
where an input is valid after all (a float16 model, a model returning a dict behind the
``Logits`` adapter), it asserts a correct result instead. The CLI runs in-process through
``main()``; models are tiny and untrained unless a case needs a correct answer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from robustlab.cli import main
from robustlab.errors import RobustlabError
from robustlab.models import ModelCard, build_model, save_model


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> Path:
    """An untrained digits MLP saved as a checkpoint (card names the digits dataset)."""
    folder = tmp_path_factory.mktemp("model")
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[16], seed=0)
    card = ModelCard(architecture="mlp", arguments={"input_shape": [1, 8, 8], "num_classes": 10, "hidden": [16]},
                     dataset="digits")
    save_model(model, folder / "model", card)
    return folder / "model"


# -- CLI: one line, exit status 2, nothing written -----------------------------------------
def _cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def _commands(model: Path, out: Path) -> dict[str, list[str]]:
    m = str(model)
    return {
        "attack": ["attack", "--model", m, "--attack", "fgsm", "--eps", "0.1", "--limit", "8", "--quiet", "--out", str(out)],
        "evaluate": ["evaluate", "--model", m, "--attack", "fgsm", "--eps", "0.1", "--limit", "8", "--quiet",
                     "--out", str(out)],
        "certify": ["certify", "--model", m, "--eps", "0.01", "--limit", "8", "--methods", "ibp", "--out", str(out)],
        "train": ["train", "--dataset", "digits", "--model", "mlp", "--model-arg", "hidden=[8]", "--epochs", "1",
                  "--limit", "100", "--quiet", "--out", str(out)],
    }


# (command, extra argv replacing/adding options, words the message must hold)
CLI_USER_ERRORS = [
    ("attack", ["--eps", "abc"], ["--eps", "abc"]),
    ("evaluate", ["--eps", "abc"], ["--eps", "abc"]),
    ("attack", ["--eps", "nan"], ["eps"]),
    ("certify", ["--eps", "0.01,abc"], ["--eps", "abc"]),
    ("certify", ["--eps", "0.01,-1"], ["--eps", "-1"]),
    ("certify", ["--methods", "ibp,magic"], ["magic"]),
    ("certify", ["--limit", "0"], ["--limit", "positive"]),
    ("attack", ["--limit", "0"], ["--limit", "positive"]),
    ("attack", ["--batch-size", "0"], ["--batch-size", "positive"]),
    ("attack", ["--limit", "ten"], ["--limit", "ten"]),
    ("evaluate", ["--limit", "0"], ["--limit", "positive"]),
    ("evaluate", ["--batch-size", "-3"], ["--batch-size"]),
    ("attack", ["--device", "foo"], ["device", "foo"]),
    ("evaluate", ["--device", "cuda"], ["cuda"]),
    ("train", ["--device", "cuda:3"], ["cuda"]),
    ("train", ["--val-fraction", "-0.2"], ["--val-fraction", "-0.2"]),
    ("train", ["--val-fraction", "1"], ["--val-fraction"]),
    ("train", ["--epochs", "0"], ["--epochs"]),
    ("train", ["--lr", "abc"], ["--lr"]),
    ("attack", ["--norm", "L7"], ["unknown norm"]),
    ("attack", ["--eot", "x"], ["--eot"]),
    ("evaluate", ["--dataset", "mnist"], ["shape", "[1, 28, 28]", "[1, 8, 8]"]),
    ("attack", ["--dataset", "mnist"], ["shape"]),
    ("certify", ["--dataset", "mnist"], ["shape"]),
    ("attack", ["--no-such-option"], ["--no-such-option"]),
]


@pytest.mark.parametrize("command, extra, words", CLI_USER_ERRORS, ids=[f"{c}{' '.join(e)}" for c, e, _ in CLI_USER_ERRORS])
def test_cli_user_error_is_one_line_exit_2_nothing_written(digits_model, tmp_path, capsys, command, extra, words):
    if "mnist" in extra and not _mnist_available():
        pytest.skip("MNIST not in ROBUSTLAB_DATA")
    if "cuda" in " ".join(extra) and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "out"
    argv = _commands(digits_model, out)[command]
    for i in range(0, len(extra), 2):
        if extra[i] in argv and i + 1 < len(extra):
            argv[argv.index(extra[i]) + 1] = extra[i + 1]
        else:
            argv += extra[i:i + 2]
    code, err = _cli(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert not out.exists()


def _mnist_available() -> bool:
    from robustlab.data import locate

    return locate("mnist") is not None


@pytest.mark.parametrize("command", ["attack", "evaluate", "certify", "train"])
@pytest.mark.parametrize("kind", ["file", "below-a-file", "not-writable"])
def test_cli_out_that_cannot_be_written_is_refused_before_any_work(digits_model, tmp_path, capsys, monkeypatch,
                                                                   command, kind):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    out = {"file": blocker, "below-a-file": blocker / "run", "not-writable": tmp_path / "locked" / "run"}[kind]
    if kind == "not-writable":
        (tmp_path / "locked").mkdir()
        real_access = os.access
        # Root ignores permission bits, so the refusal is simulated at os.access.
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path / "locked" else real_access(p, mode))
    import robustlab.models as models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(models, "load_model", no_loading)
    code, err = _cli(_commands(digits_model, out)[command], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--out" in err and str(out) in err
    assert blocker.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["blocker"] + (["locked"] if kind == "not-writable" else []))


def test_evaluate_limit_zero_is_refused_not_written_as_nan(digits_model, tmp_path, capsys):
    code, err = _cli(_commands(digits_model, tmp_path / "out")["evaluate"][:-2] + ["--limit", "0", "--out",
                                                                                 str(tmp_path / "out")], capsys)
    assert code == 2 and "--limit" in err and not (tmp_path / "out").exists()


def test_results_export_into_a_missing_folder_is_refused(tmp_path, capsys):
    code, err = _cli(["results", "export", "1", "--db", str(tmp_path / "r.db"), "--out", str(tmp_path / "no" / "x.json")],
                     capsys)
    assert code == 2 and "does not exist" in err and str(tmp_path / "no") in err
    assert _files(tmp_path) == []


def test_cli_unexpected_exception_is_one_line_naming_a_log(digits_model, tmp_path, capsys, monkeypatch):
    import robustlab.cli.evaluate as cli

    def broken(args):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(cli, "load_defended_model", broken)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    code, err = _cli(_commands(digits_model, tmp_path / "out")["evaluate"], capsys)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "internal error" in err and "ZeroDivisionError: boom" in err and "report" in err
    (log,) = tmp_path.glob("robustlab-error-*.log")
    assert str(log) in err
    text = log.read_text()
    assert "Traceback" in text and "ZeroDivisionError: boom" in text and "evaluate" in text


# -- Models as people write them (item 4), every registered attack -------------------------
from robustlab.attacks import ATTACKS, build_attack  # noqa: E402
from robustlab.models import Logits  # noqa: E402
from robustlab.threat import NORMS  # noqa: E402
from test_attacks import EPS, OVERRIDES  # noqa: E402

ATTACK_CASES = [pytest.param(name, norm, id=f"{name}-{norm}") for name, cls in sorted(ATTACKS.items())
                for norm in sorted(cls.norms)]
ATTACK_NAMES = sorted(ATTACKS)


def _attack(name: str):
    return build_attack(name, **OVERRIDES.get(name, {}))


def _first_norm(name: str) -> str:
    return sorted(ATTACKS[name].norms)[0]


class _TupleModel(torch.nn.Module):
    """Returns ``(features, logits)`` or ``{"features": ..., "logits": ...}``, as people write them."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU())
            self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        features = self.body(x)
        logits = self.head(features)
        return {"tuple": (features, logits), "list": [features, logits],
                "dict": {"features": features, "logits": logits}}[self.kind]


def _tiny(dtype=torch.float32) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(),
                                   torch.nn.Linear(8, 4)).to(dtype).eval()


def _batch(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.rand(5, 1, 4, 4, generator=g).to(dtype), torch.randint(0, 4, (5,), generator=g)


@pytest.mark.parametrize("kind, fix", [("tuple", "Logits(model, INDEX)"), ("list", "Logits(model, INDEX)"),
                                       ("dict", "Logits(model, 'logits')")])
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_a_model_returning_a_tuple_or_dict_gets_an_error_naming_the_adapter(name, kind, fix):
    x, y = _batch()
    with pytest.raises(RobustlabError, match="not a logits tensor") as error:
        _attack(name)(_TupleModel(kind), x, y, threat=NORMS[_first_norm(name)](eps=EPS[_first_norm(name)]))
    assert fix in str(error.value)


@pytest.mark.parametrize("kind, key", [("tuple", 1), ("list", -1), ("dict", "logits")])
def test_the_logits_adapter_gives_the_attack_the_logits(kind, key):
    from robustlab.attacks import PGD
    from robustlab.threat import Linf

    x, y = _batch()
    model = _TupleModel(kind)
    adapted = Logits(model, key)
    torch.testing.assert_close(adapted(x), model.head(model.body(x)))
    assert list(adapted.parameters()) == list(model.parameters())
    threat = Linf(eps=0.3)
    result = PGD(steps=5)(adapted, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    reference = PGD(steps=5)(torch.nn.Sequential(model.body, model.head), x, y, threat=threat,
                             generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.x_adv, reference.x_adv)


@pytest.mark.parametrize("kind, key, words", [("tuple", 2, "no item 2"), ("dict", "logit", "no item 'logit'"),
                                              ("dict", 0, "no item 0")])
def test_the_logits_adapter_names_a_missing_key(kind, key, words):
    with pytest.raises(RobustlabError, match=words):
        Logits(_TupleModel(kind), key)(_batch()[0])
    with pytest.raises(RobustlabError, match="key must be"):
        Logits(_TupleModel(kind), 1.5)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_inference_mode_is_a_clear_error(name):
    x, y = _batch()
    norm = _first_norm(name)
    with torch.inference_mode(), pytest.raises(RobustlabError, match="inference_mode"):
        _attack(name)(_tiny(), x, y, threat=NORMS[norm](eps=EPS[norm]))


def test_inputs_made_under_inference_mode_are_valid_outside_it():
    from robustlab.attacks import PGD
    from robustlab.threat import Linf

    x, y = _batch()
    with torch.inference_mode():
        x_inf, y_inf = x.clone(), y.clone()
    result = PGD(steps=3)(_tiny(), x_inf, y_inf, threat=Linf(eps=0.1), generator=torch.Generator().manual_seed(0))
    reference = PGD(steps=3)(_tiny(), x, y, threat=Linf(eps=0.1), generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.x_adv, reference.x_adv)


@pytest.mark.parametrize("x_dtype, model_dtype", [(torch.float64, torch.float32), (torch.float32, torch.float16),
                                                  (torch.float16, torch.float32), (torch.float32, torch.bfloat16)])
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_x_of_another_dtype_than_the_model_is_refused_naming_both(name, x_dtype, model_dtype):
    x, y = _batch(x_dtype)
    norm = _first_norm(name)
    with pytest.raises(RobustlabError, match="dtype") as error:
        _attack(name)(_tiny(model_dtype), x, y, threat=NORMS[norm](eps=EPS[norm]))
    assert str(x_dtype) in str(error.value) and str(model_dtype) in str(error.value)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_a_model_labels_or_generator_on_another_device_than_x_are_refused_naming_both(name):
    """No GPU here: the meta device stands in for one. Each mismatch is a clear error before any
    model call, not torch's message from inside the attack."""
    x, y = _batch(torch.float32)
    norm = _first_norm(name)
    threat = NORMS[norm](eps=EPS[norm])
    with pytest.raises(RobustlabError, match=r"^x is on cpu but the model's parameters are on meta: move one"):
        _attack(name)(_tiny().to("meta"), x, y, threat=threat)
    with pytest.raises(RobustlabError, match=r"^x is on cpu and y on meta"):
        _attack(name)(_tiny(), x, y.to("meta"), threat=threat)
    with pytest.raises(RobustlabError, match=r"^generator must be a torch.Generator or None, got int"):
        _attack(name)(_tiny(), x, y, threat=threat, generator=0)


def test_a_generator_on_another_device_type_than_the_inputs_is_refused():
    from robustlab.attacks.base import check_generator

    with pytest.raises(RobustlabError, match=r"^the generator is on cpu but the inputs are on meta: make it there, "
                                             r"torch.Generator\(device='meta'\)"):
        check_generator(torch.Generator(), torch.empty(2, 3, device="meta"))
    check_generator(torch.Generator(), torch.empty(2, 3))
    check_generator(None, torch.empty(2, 3, device="meta"))


@pytest.mark.parametrize("name,norm", ATTACK_CASES)
def test_every_attack_runs_on_a_float16_model_inside_the_threat_set(name, norm):
    """Valid input: the result is float16, lies in the threat set exactly (checked in float64),
    and success is a fresh float16 forward pass."""
    x, y = _batch(torch.float16)
    model = _tiny(torch.float16)
    threat = NORMS[norm](eps=EPS[norm])
    result = _attack(name)(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    assert result.x_adv.dtype == torch.float16
    assert threat.contains(x.double(), result.x_adv.double(), tol=1e-6).all()
    with torch.no_grad():
        assert torch.equal(result.success, model(result.x_adv).argmax(1) != y)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm, eps", [("Linf", 0.1), ("L2", 1.5)])
def test_pgd_breaks_a_float16_digits_model_inside_the_threat_set(digits_mlp, digits, dtype, norm, eps):
    import copy

    from robustlab.attacks import PGD

    _, _, x_test, y_test = digits
    model = copy.deepcopy(digits_mlp).to(dtype)
    x, y = x_test[:100].to(dtype), y_test[:100]
    threat = NORMS[norm](eps=eps)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean()
    result = PGD(steps=20)(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    assert clean > 0.85
    assert threat.contains(x.double(), result.x_adv.double(), tol=1e-6).all()
    assert result.success.float().mean() > 0.5 * clean  # broken well beyond the clean error


# -- Training refuses to resume on other data (item 6) ---------------------------------------
from robustlab.training import TrainConfig, train  # noqa: E402


class _Stop(Exception):
    pass


def _stop_after_first_epoch(record):
    raise _Stop


@pytest.fixture(scope="module")
def digits_train(digits):
    x, y, vx, vy = digits
    return x[:200], y[:200], vx[:50], vy[:50]


def _interrupted_run(folder: Path, data, dataset="digits/train") -> dict[str, bytes]:
    x, y, vx, vy = data
    with pytest.raises(_Stop):
        train(_tiny_digits(), x, y, val_x=vx, val_y=vy, config=TrainConfig(epochs=2, batch_size=50, lr=0.05),
              checkpoint_dir=folder, on_epoch_end=_stop_after_first_epoch, dataset=dataset)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _tiny_digits() -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def _permuted(t: torch.Tensor) -> torch.Tensor:
    return t[torch.randperm(len(t), generator=torch.Generator().manual_seed(3))]


OTHER_DATA = [
    ("permuted labels", lambda x, y, vx, vy, name: (x, _permuted(y), vx, vy, name), "training labels"),
    ("other dataset name", lambda x, y, vx, vy, name: (x, y, vx, vy, "fashion-mnist/train"), "dataset"),
    ("other images", lambda x, y, vx, vy, name: (1 - x, y, vx, vy, name), "training inputs"),
    ("same size, other subset", lambda x, y, vx, vy, name: (torch.cat([x[1:], vx[:1]]), torch.cat([y[1:], vy[:1]]),
                                                            vx, vy, name), "training"),
    ("fewer examples", lambda x, y, vx, vy, name: (x[:150], y[:150], vx, vy, name), "training examples"),
]


@pytest.mark.parametrize("change, words", [(c, w) for _, c, w in OTHER_DATA], ids=[n for n, _, _ in OTHER_DATA])
def test_training_refuses_to_resume_on_other_data(digits_train, tmp_path, change, words):
    before = _interrupted_run(tmp_path, digits_train)
    x, y, vx, vy, name = change(*digits_train, "digits/train")
    with pytest.raises(RobustlabError, match="other data") as error:
        train(_tiny_digits(), x, y, val_x=vx, val_y=vy, config=TrainConfig(epochs=2, batch_size=50, lr=0.05),
              checkpoint_dir=tmp_path, dataset=name)
    assert words in str(error.value) and "resume=False" in str(error.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written


@pytest.mark.parametrize("validation", ["same", "permuted", "none"])
def test_training_resumes_on_the_same_data_to_the_uninterrupted_weights(digits_train, tmp_path, validation):
    """Validation data does not change the trajectory: a resumed run may change it."""
    x, y, vx, vy = digits_train
    config = TrainConfig(epochs=2, batch_size=50, lr=0.05)
    _interrupted_run(tmp_path / "a", digits_train)
    resumed, whole = _tiny_digits(), _tiny_digits()
    val = {"same": (vx, vy), "permuted": (vx, _permuted(vy)), "none": (None, None)}[validation]
    train(resumed, x, y, val_x=val[0], val_y=val[1], config=config, checkpoint_dir=tmp_path / "a",
          dataset="digits/train")
    train(whole, x, y, val_x=vx, val_y=vy, config=config, checkpoint_dir=tmp_path / "b", dataset="digits/train")
    for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()):
        assert torch.equal(a, b)


def test_cli_train_refuses_to_resume_into_the_same_out_on_other_data(tmp_path, capsys):
    argv = ["train", "--dataset", "digits", "--model", "mlp", "--model-arg", "hidden=[8]", "--epochs", "1",
            "--batch-size", "64", "--limit", "300", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 0
    checkpoint = (tmp_path / "checkpoints" / "last.ckpt").read_bytes()
    capsys.readouterr()
    code, err = _cli(argv[:-2] + ["--val-fraction", "0.2", "--out", str(tmp_path)], capsys)
    assert code == 2 and "other data" in err and "--no-resume" in err
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == checkpoint


# -- Checkpoints and cards (item 7) ----------------------------------------------------------
from robustlab.models import load_model  # noqa: E402
from robustlab.models.checkpoint import checkpoint_paths  # noqa: E402


def _saved(folder: Path) -> Path:
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[16], seed=0)
    card = ModelCard(architecture="mlp", arguments={"input_shape": [1, 8, 8], "num_classes": 10, "hidden": [16]},
                     dataset="digits")
    save_model(model, folder / "model", card)
    return folder / "model"


def _edit_card(path: Path, **changes) -> None:
    card_path = checkpoint_paths(path)[1]
    card = json.loads(card_path.read_text())
    for key, value in changes.items():
        if value is None:
            card.pop(key, None)
        elif key == "arguments":
            card["arguments"].update(value)
        else:
            card[key] = value
    card_path.write_text(json.dumps(card))


@pytest.mark.parametrize("arguments", [{"hidden": [10**6, 10**6]}, {"hidden": [2**16] * 3}, {"input_shape": [3, 10**5, 10**4]}],
                         ids=["two-huge-layers", "three-wide-layers", "huge-input"])
def test_load_model_refuses_a_card_describing_a_huge_architecture_before_allocating(tmp_path, monkeypatch, arguments):
    import robustlab.models.checkpoint as checkpoint

    path = _saved(tmp_path)
    _edit_card(path, arguments=arguments)
    real_build = checkpoint._build

    def build_only_on_meta(card):
        assert torch.empty(0).device.type == "meta", "the architecture was built outside the meta device"
        return real_build(card)

    monkeypatch.setattr(checkpoint, "_build", build_only_on_meta)
    with pytest.raises(RobustlabError, match="max_parameters") as error:
        load_model(path)
    assert "GiB" in str(error.value) and "mlp" in str(error.value)


def test_load_model_limit_is_adjustable(tmp_path):
    path = _saved(tmp_path)
    with pytest.raises(RobustlabError, match="max_parameters=100"):
        load_model(path, max_parameters=100)
    model, _ = load_model(path, max_parameters=None)
    assert sum(p.numel() for p in model.parameters()) == 64 * 16 + 16 + 16 * 10 + 10


@pytest.mark.parametrize("position", [0.5, 0.9, -1], ids=["middle", "late", "last-byte"])
def test_a_flipped_bit_in_the_weights_is_refused(tmp_path, position):
    path = _saved(tmp_path)
    weights = checkpoint_paths(path)[0]
    data = bytearray(weights.read_bytes())
    at = int(len(data) * position) if position > 0 else len(data) - 1
    data[at] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(RobustlabError, match="sha256") as error:
        load_model(path)
    assert "does not match its card" in str(error.value)


def test_the_card_records_the_weights_sha256_and_old_cards_still_load(tmp_path):
    import hashlib

    path = _saved(tmp_path)
    weights, card_path = checkpoint_paths(path)
    recorded = json.loads(card_path.read_text())["weights_sha256"]
    assert recorded == hashlib.sha256(weights.read_bytes()).hexdigest()
    reference, _ = load_model(path)
    _edit_card(path, weights_sha256=None)  # a card written before the field existed
    model, card = load_model(path)
    assert card.weights_sha256 is None
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.int64, torch.uint8, torch.bool])
def test_integer_weights_are_refused(tmp_path, dtype):
    from safetensors.torch import load_file, save_file

    path = _saved(tmp_path)
    weights = checkpoint_paths(path)[0]
    tensors = {k: v.to(dtype) for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights))
    _edit_card(path, weights_sha256=None)
    with pytest.raises(RobustlabError, match="not floating point") as error:
        load_model(path)
    assert str(dtype) in str(error.value)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_saved_files_get_the_umask_permissions(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = _saved(tmp_path)
    finally:
        os.umask(previous)
    for file in checkpoint_paths(path):
        assert file.stat().st_mode & 0o777 == 0o666 & ~umask, file


def test_training_checkpoints_get_the_umask_permissions(digits_train, tmp_path):
    previous = os.umask(0o022)
    try:
        _interrupted_run(tmp_path, digits_train)
    finally:
        os.umask(previous)
    for file in tmp_path.iterdir():
        assert file.stat().st_mode & 0o777 == 0o644, file


# -- Results database (item 8) -----------------------------------------------------------------
from robustlab.report.store import ResultsStore  # noqa: E402
from test_results_store import make_card, make_evaluation, make_minimum_norm  # noqa: E402


def _fixed_doc() -> dict:
    return json.loads(json.dumps(make_evaluation(make_card()).to_dict(), allow_nan=True).replace("Infinity", "null"))


def _set(doc: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    target = doc
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is _DELETE:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return doc


_DELETE = object()
BAD_DOCUMENTS = [
    ("metrics.robust_accuracy", _DELETE, "robust_accuracy"),
    ("metrics", {}, "clean_accuracy"),
    ("metrics.clean_accuracy", 0.9, "clean_accuracy"),
    ("metrics.clean_accuracy.count", "3", "count"),
    ("metrics.robust_accuracy.count", 25, "count"),
    ("metrics.robust_accuracy.total", 19, "total"),
    ("metrics.robust_accuracy_per_attack", [], "robust_accuracy_per_attack"),
    ("metrics.robust_accuracy_per_attack.pgd", {"value": 0.5}, "robust_accuracy_per_attack.pgd"),
    ("metrics.clean_accuracy.value", "high", "value"),
    ("threat", _DELETE, "threat"),
    ("threat.norm", "L7", "norm"),
    ("threat.eps", -0.3, "eps"),
    ("threat.eps", "0.3", "eps"),
    ("threat.bounds", [1, 0], "bounds"),
    ("threat.bounds", None, "bounds"),
    ("attacks", ["fgsm", "pgd"], "attacks"),
    ("attacks.pgd", "pgd", "configuration"),
    ("provenance", "yesterday", "provenance"),
    ("samples", {}, "samples"),
    ("samples.0", "a sample", "sample"),
    ("samples.0.label", None, "label"),
    ("samples.1.clean_prediction", 1.5, "clean_prediction"),
    ("samples.2.distance", "far", "distance"),
    ("samples.3.broken_by", 3, "broken_by"),
    ("samples.4.broken_by", _DELETE, "broken_by"),
    ("samples.5.index", -1, "index"),
    ("model_card", "mlp", "model card"),
    ("model_card.training", "pgd", "training"),
]


@pytest.mark.parametrize("path, value, words", BAD_DOCUMENTS, ids=[f"{p}={v!r}"[:40] for p, v, _ in BAD_DOCUMENTS])
def test_a_bad_document_is_refused_and_leaves_the_database_working(tmp_path, path, value, words):
    db = tmp_path / "results.sqlite"
    with ResultsStore(db) as store:
        good = store.add(make_evaluation(make_card()))
        before = store.runs()
        with pytest.raises(RobustlabError, match="evaluation|model card") as error:
            store.add(_set(_fixed_doc(), path, value))
        assert words in str(error.value)
        assert store.runs() == before
        assert store.leaderboard(dataset="mnist", norm="Linf", eps=0.3)[0]["run_id"] == good
        store.get(good)
        store.compare(good, good)
        store.export(good, "csv")


@pytest.mark.parametrize("document, words", [([], "list of 0 items"), ([{"threat": {}}], "list of 1 items"),
                                             ("evaluation.json", "str"), (42, "int")])
def test_importing_something_other_than_one_evaluation_is_refused(tmp_path, document, words):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(RobustlabError, match="not an evaluation") as error:
            store.add(document)
        assert words in str(error.value) and store.runs() == []


def test_every_kind_of_valid_evaluation_is_still_stored(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.add(make_evaluation(make_card()))
        store.add(make_minimum_norm(make_card(), [0.1, 0.2, math.inf]))
        store.add(_fixed_doc())
        assert len(store.runs()) == 3


def test_results_delete_removes_the_run_its_samples_and_an_orphan_card(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    with ResultsStore(db) as store:
        a = store.add(make_evaluation(make_card("mlp")))
        b = store.add(make_evaluation(make_card("lenet")))
        c = store.add(make_evaluation(make_card("lenet"), eps=0.1))
    code, err = _cli(["results", "delete", str(b), "--db", str(db)], capsys)
    assert code == 0, err
    with ResultsStore(db) as store:
        assert [r.id for r in store.runs()] == [c, a]
        assert store._conn.execute("SELECT count(*) FROM samples WHERE run_id = ?", (b,)).fetchone()[0] == 0
        assert store._conn.execute("SELECT count(*) FROM models").fetchone()[0] == 2  # lenet still used by c
        store.delete(c)
        assert store._conn.execute("SELECT count(*) FROM models").fetchone()[0] == 1
        with pytest.raises(RobustlabError, match=f"no run {c}"):
            store.delete(c)
    code, err = _cli(["results", "delete", str(a), "999", "--db", str(db)], capsys)
    assert code == 2 and "no run 999" in err
    with ResultsStore(db) as store:
        assert [r.id for r in store.runs()] == [a]  # nothing deleted when one id is unknown


@pytest.mark.parametrize("content, words", [("[]", "list of 0 items"), ('[{"a": 1}, {"b": 2}]', "list of 2 items"),
                                            ("{not json", "cannot read"), ('{"metrics": {}}', "lacks")])
def test_cli_results_import_of_a_bad_file_is_one_line_and_stores_nothing(tmp_path, capsys, content, words):
    file = tmp_path / "in.json"
    file.write_text(content)
    db = tmp_path / "r.sqlite"
    code, err = _cli(["results", "import", str(file), "--db", str(db)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err
    with ResultsStore(db) as store:
        assert store.runs() == []


import math  # noqa: E402


TRAIN_MODEL_ERRORS = [
    ("tuple output", lambda: _TupleModel("tuple"), lambda x: x, "Logits(model, INDEX)"),
    ("dict output", lambda: _TupleModel("dict"), lambda x: x, "Logits(model, 'logits')"),
    ("float64 x", lambda: _tiny(), lambda x: x.double(), "torch.float64"),
    ("float16 model", lambda: _tiny(torch.float16), lambda x: x, "torch.float16"),
]


@pytest.mark.parametrize("make_model, make_x, words", [c[1:] for c in TRAIN_MODEL_ERRORS],
                         ids=[c[0] for c in TRAIN_MODEL_ERRORS])
def test_train_refuses_models_and_inputs_it_cannot_train_and_writes_nothing(tmp_path, make_model, make_x, words):
    x, y = _batch()
    with pytest.raises(RobustlabError) as error:
        train(make_model(), make_x(x), y, config=TrainConfig(epochs=1, batch_size=5), checkpoint_dir=tmp_path / "ck")
    assert words in str(error.value)
    assert not (tmp_path / "ck").exists()


def test_train_under_inference_mode_is_a_clear_error(tmp_path):
    x, y = _batch()
    with torch.inference_mode(), pytest.raises(RobustlabError, match="inference_mode"):
        train(_tiny(), x, y, config=TrainConfig(epochs=1, batch_size=5), checkpoint_dir=tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_stored_and_exported_json_is_strict_even_for_zero_samples(tmp_path, capsys):
    def no_constants(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    db = tmp_path / "r.sqlite"
    with ResultsStore(db) as store:
        run = store.add(make_evaluation(make_card(), n=0, misclassified=0, broken=0))
        json.loads(store.export(run), parse_constant=no_constants)
        assert store.leaderboard(dataset="mnist", norm="Linf", eps=0.3)[0]["run_id"] == run
    for argv in (["list"], ["show", str(run)], ["compare", str(run), str(run)]):
        code, err = _cli(["results", *argv, "--db", str(db)], capsys)
        assert code == 0, err


# Every other command: (argv with {tmp} for the test's folder, words the one line must hold).
OTHER_CLI_ERRORS = [
    (["datasets", "locate", "nope"], ["unknown dataset", "nope"]),
    (["datasets", "fetch"], ["needs a dataset name"]),
    (["datasets", "frobnicate"], ["invalid choice", "frobnicate"]),
    (["reproduce", "nope", "--out", "{tmp}/out"], ["unknown reproduction", "nope"]),
    (["reproduce", "cw-table4", "--images", "0", "--out", "{tmp}/out"], ["--images", "positive"]),
    (["reproduce", "cw-table4", "--device", "cuda:7", "--out", "{tmp}/out"], ["cuda"]),
    (["demo", "--out", "{tmp}/blocker"], ["--out", "is a file"]),
    (["report", "{tmp}/nonexistent", "--out", "{tmp}/out/r.html"], ["no such file"]),
    (["report", "{tmp}", "--out", "{tmp}/blocker/r.html"], ["is a file"]),
    (["zoo", "show", "nope"], ["no zoo model", "nope"]),
    (["evaluate", "--model", "zoo:nope", "--eps", "0.1", "--attack", "fgsm", "--out", "{tmp}/out"], ["no zoo model"]),
    (["results", "show", "5", "--db", "{tmp}/blocker"], ["cannot open the results database"]),
    (["results", "show", "5", "--db", "{tmp}/r.sqlite"], ["no results database"]),
    (["results", "leaderboard", "--dataset", "mnist", "--eps", "abc", "--db", "{tmp}/r.sqlite"], ["--eps", "abc"]),
    (["results", "list", "--limit", "0", "--db", "{tmp}/r.sqlite"], ["--limit"]),
    (["results", "delete", "x", "--db", "{tmp}/r.sqlite"], ["invalid int value", "x"]),
    (["attack", "--model", "{tmp}/blocker", "--attack", "fgsm", "--eps", "0.1", "--out", "{tmp}/out"], ["not found"]),
    (["certify", "--model", "{tmp}/m", "--eps", "0.1", "--bracket", "-1", "--out", "{tmp}/out"], ["--bracket"]),
    (["certify", "--model", "{tmp}/m", "--eps", "0.1", "--time-limit", "0", "--out", "{tmp}/out"], ["--time-limit"]),
    # Neither --suite nor --attack runs the default suite (fast); the missing model is the error.
    (["evaluate", "--model", "{tmp}/m", "--eps", "0.1", "--out", "{tmp}/out"], ["not found"]),
    (["train", "--model", "mlp", "--out", "{tmp}/out"], ["--dataset"]),
]


@pytest.mark.parametrize("argv, words", OTHER_CLI_ERRORS, ids=[" ".join(a[:3]) for a, _ in OTHER_CLI_ERRORS])
def test_every_command_reports_a_user_error_in_one_line(tmp_path, capsys, argv, words):
    (tmp_path / "blocker").write_text("keep me")
    code, err = _cli([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]
