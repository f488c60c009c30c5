"""The one registry idiom (issue 19): every kind of named thing is a Registry keyed by the
entry's own name, nothing defined is left out, and the command line lists what is registered."""

import importlib
import pkgutil
import subprocess
import sys

import pytest
import torch

import robustlab.training
from robustlab.attacks import ATTACKS
from robustlab.certify import CERTIFIERS, CROWN, CROWNIBP, AlphaCROWN
from robustlab.cli import build_parser
from robustlab.errors import RobustlabError
from robustlab.models import MODELS
from robustlab.models.preprocessing import DEFENSES
from robustlab.registry import Registry
from robustlab.reproduce import REPRODUCTIONS
from robustlab.training import METHODS
from robustlab.training.methods import TrainingMethod


class _Named:
    name = "thing"


def test_registry_keys_by_name_refuses_a_second_entry_and_names_the_choices():
    registry = Registry("widget", [_Named])
    assert registry["thing"] is _Named and registry.lookup("thing") is _Named
    assert registry.add(_Named) is _Named  # the same entry again is a no-op

    class Other:
        name = "thing"

    with pytest.raises(RobustlabError, match="a widget named 'thing' is already registered"):
        registry.add(Other)
    with pytest.raises(RobustlabError, match=r"unknown widget 'gadget'; choose one of \['thing'\]"):
        registry.lookup("gadget")
    with pytest.raises(RobustlabError, match="non-empty string name"):
        registry.add(object())


@pytest.mark.parametrize("registry", [ATTACKS, METHODS, MODELS, DEFENSES, CERTIFIERS, REPRODUCTIONS],
                         ids=lambda r: r.kind)
def test_every_registry_is_the_one_idiom(registry):
    assert isinstance(registry, Registry) and len(registry) > 0
    for name, entry in registry.items():
        own = getattr(entry, "name", name)
        assert own == name or not isinstance(own, str), (name, entry)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_training_method_defined_in_the_package_is_registered():
    for info in pkgutil.iter_modules(robustlab.training.__path__, "robustlab.training."):
        importlib.import_module(info.name)
    defined = {cls for cls in _subclasses(TrainingMethod) if cls.__module__.startswith("robustlab.") and cls.name}
    assert defined and all(METHODS.get(cls.name) is cls for cls in defined)
    # `import robustlab.training` alone registers all of them (no method depends on a later import).
    code = "import robustlab.training as t; print(' '.join(sorted(t.METHODS)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == sorted(cls.name for cls in defined | {METHODS["natural"]})


def test_crown_variants_are_classes_with_the_old_defaults():
    assert isinstance(CROWNIBP(), CROWN) and isinstance(AlphaCROWN(), CROWN)
    assert CROWNIBP().intermediate == "ibp" and CROWNIBP().method == "crown-ibp"
    assert AlphaCROWN().alpha_steps == 30 and AlphaCROWN(alpha_steps=5).method == "alpha-crown"
    assert CERTIFIERS.names() == ["alpha-crown", "crown", "crown-ibp", "ibp", "milp"]


def test_the_command_line_lists_what_is_registered():
    parser = build_parser()
    text = parser.format_help()
    commands = parser._subparsers._group_actions[0].choices
    assert all(command in text for command in commands)
    (method,) = [a for a in commands["train"]._actions if "--method" in a.option_strings]
    assert all(name in method.help for name in METHODS)


def test_eps_in_an_unbounded_evaluation_mode_is_an_error(tmp_path, capsys):
    from robustlab.cli import main

    for mode in ("minimum-norm", "targeted"):
        code = main(["evaluate", "--model", "zoo:mnist-tiny", "--mode", mode, "--attack", "deepfool", "--eps", "0.1",
                     "--out", str(tmp_path / mode)])
        assert code == 2
        assert f"--eps does not apply to --mode {mode}" in capsys.readouterr().err


@pytest.mark.parametrize("name", CERTIFIERS.names())
def test_every_registered_certifier_is_sound_and_leaves_the_model_as_it_was(name, digits, digits_mlp):
    from robustlab.attacks import PGD
    from robustlab.threat import Linf

    _, _, x_test, y_test = digits
    # Some samples certified, some broken; the exact MILP (seconds per sample) gets 4 of them, both kinds.
    rows = slice(9, 13) if name == "milp" else slice(0, 40)
    x, y, threat = x_test[rows], y_test[rows], Linf(eps=0.03)
    certifier = CERTIFIERS[name](**({"alpha_steps": 5} if name == "alpha-crown" else {}))
    digits_mlp.train()
    try:
        result = certifier(digits_mlp, x, y, threat=threat)
        assert digits_mlp.training and all(p.requires_grad and p.grad is None for p in digits_mlp.parameters())
    finally:
        digits_mlp.eval()
    assert result.method == name and result.margins.shape == (len(y), 10)
    assert bool((result.certified == (result.margin > 0) & result.clean_correct).all())
    assert 0 < int(result.certified.sum()) <= int(result.clean_correct.sum())
    broken = PGD(steps=20, step_size=0.0075)(digits_mlp, x, y, threat=threat,
                                             generator=torch.Generator().manual_seed(0)).success
    assert bool((broken & result.clean_correct).any())
    assert not bool((result.certified & broken).any())
