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
    import robustlab.cli as cli

    def broken(args):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(cli, "_load_model_and_data", broken)
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
