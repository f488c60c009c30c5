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
