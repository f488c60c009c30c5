"""Any model from the command line: ``--model file.py:factory`` / ``package.module:factory`` with
``--weights`` (a torch.save'd state dict or safetensors), ``--mean``/``--std``, round trips through
evaluate, attack, certify and --diagnose, and the card recording what was loaded."""

from __future__ import annotations

import hashlib
import json
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from robustlab.cli import main
from robustlab.errors import RobustlabError
from robustlab.models.loading import resolve_model
from robustlab.settings import RunSettings

pytestmark = pytest.mark.usefixtures("single_thread")

FACTORY = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        """A custom forward: flatten inside, the layers in a child Sequential."""

        def __init__(self, hidden=128, num_classes=10):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

        def forward(self, x):
            return self.net(x.flatten(1))


    def build(hidden=128, num_classes=10):
        return Net(hidden, num_classes)


    def not_a_module():
        return 3
''')


@pytest.fixture(scope="module")
def user_files(tmp_path_factory, digits_mlp):
    """usermodels.py with a factory, and the digits MLP's weights under the factory's names as a
    torch.save'd state dict and as safetensors."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "usermodels.py").write_text(FACTORY)
    trained = digits_mlp.state_dict()  # Sequential(Flatten, Linear, ReLU, Linear)
    state = {"net.0.weight": trained["1.weight"], "net.0.bias": trained["1.bias"],
             "net.2.weight": trained["3.weight"], "net.2.bias": trained["3.bias"]}
    torch.save(state, folder / "weights.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "weights.safetensors"))
    return folder


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_evaluate_a_factory_with_a_state_dict_records_what_was_loaded(user_files, digits_mlp, tmp_path, capsys):
    from robustlab.attacks import PGD
    from robustlab.data import load_dataset
    from robustlab.evaluation import evaluate
    from robustlab.threat import Linf

    spec = f"{user_files / 'usermodels.py'}:build"
    code = main(["evaluate", "--model", spec, "--weights", str(user_files / "weights.pt"), "--dataset", "digits",
                 "--attack", "pgd:steps=10", "--eps", "0.1", "--limit", "80", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    document = json.loads((tmp_path / "evaluation.json").read_text())
    source = document["model_card"]["extra"]["source"]
    assert source["kind"] == "file" and source["path"] == str((user_files / "usermodels.py").resolve())
    assert source["factory"] == "build" and source["sha256"] == _sha256(user_files / "usermodels.py")
    assert source["weights_sha256"] == _sha256(user_files / "weights.pt")
    assert document["model_card"]["arguments"]["input_shape"] == [1, 8, 8]
    # The same numbers as the trained model evaluated in process: the weights were loaded.
    data = load_dataset("digits", split="test", limit=80, seed=0)
    expected = evaluate(digits_mlp, data.x, data.y, threat=Linf(eps=0.1), attacks={"pgd": PGD(steps=10)}, settings=RunSettings(seed=0))
    for key in ("clean_accuracy", "robust_accuracy"):
        assert document["metrics"][key]["value"] == expected.metrics[key]["value"]
    assert document["metrics"]["clean_accuracy"]["value"] > 0.9


def test_module_factory_safetensors_and_normalization(user_files, digits_mlp, monkeypatch):
    monkeypatch.syspath_prepend(str(user_files))
    model, card = resolve_model("usermodels:build", weights=user_files / "weights.safetensors",
                                mean=[0.5], std=[0.25], input_shape=(1, 8, 8), num_classes=10)
    assert card.normalization == {"mean": [0.5], "std": [0.25]}
    assert card.extra["source"]["kind"] == "module" and card.extra["source"]["module"] == "usermodels"
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x), digits_mlp((x - 0.5) / 0.25), atol=1e-5)
    model, card = resolve_model("usermodels:build", model_args={"hidden": 16}, input_shape=(1, 8, 8),
                                num_classes=10, seed=3)
    assert model.net[0].weight.shape == (16, 64)
    assert card.arguments["hidden"] == 16 and card.extra["source"]["weights_sha256"] is None
    again, _ = resolve_model("usermodels:build", model_args={"hidden": 16}, input_shape=(1, 8, 8), num_classes=10,
                             seed=3)
    assert torch.equal(again.net[0].weight, model.net[0].weight)  # the seed fixes the initialisation


def test_attack_and_diagnose_take_a_factory(user_files, tmp_path, capsys):
    spec = f"{user_files / 'usermodels.py'}:build"
    weights = str(user_files / "weights.safetensors")
    code = main(["attack", "--model", spec, "--weights", weights, "--dataset", "digits", "--attack", "pgd:steps=10",
                 "--eps", "0.2", "--limit", "20", "--quiet", "--out", str(tmp_path / "attack")])
    assert code == 0
    assert json.loads((tmp_path / "attack" / "summary.json").read_text())["success_rate"] > 0.5
    code = main(["evaluate", "--model", spec, "--weights", weights, "--dataset", "digits", "--diagnose", "--eps", "0.1",
                 "--limit", "40", "--quiet", "--out", str(tmp_path / "diagnose")])
    assert code in (0, 1)
    assert json.loads((tmp_path / "diagnose" / "diagnostics.json").read_text())["findings"]


@pytest.mark.parametrize("arguments, message", [
    (["--model", "{dir}/usermodels.py:missing"], "has no function or class 'missing'"),
    (["--model", "{dir}/usermodels.py:not_a_module"], "returned a int, not a torch.nn.Module"),
    (["--model", "{dir}/nowhere.py:build"], "model file not found"),
    (["--model", "{dir}/usermodels.py:build", "--model-arg", "hidden=32", "--weights", "{dir}/weights.pt"],
     "wrong shape"),
    (["--model", "{dir}/usermodels.py:build", "--weights", "{dir}/usermodels.py"], "torch.load(weights_only=True)"),
    (["--model", "{dir}/usermodels.py:build", "--num-classes", "7"], "differs from digits's 10"),
    (["--model", "{dir}/usermodels.py:build", "--mean", "0.5"], "--mean and --std go together"),
])
def test_a_bad_factory_or_weights_is_one_clear_error(user_files, tmp_path, capsys, arguments, message):
    arguments = [a.format(dir=user_files) for a in arguments]
    code = main(["evaluate", *arguments, "--dataset", "digits", "--attack", "fgsm", "--eps", "0.1", "--limit", "10",
                 "--quiet", "--out", str(tmp_path)])
    assert code == 2
    assert message in capsys.readouterr().err


def test_weights_only_refuses_a_pickled_model(user_files, tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pt")
    with pytest.raises(RobustlabError, match="not the model object"):
        resolve_model(f"{user_files / 'usermodels.py'}:build", weights=tmp_path / "whole.pt",
                      input_shape=(1, 8, 8), num_classes=10)


def test_a_checkpoint_refuses_factory_options(tmp_path):
    with pytest.raises(RobustlabError, match="carries its own weights"):
        resolve_model(tmp_path / "model", weights=tmp_path / "w.pt")


def test_a_scheme_is_dispatched_to_its_registered_source(monkeypatch):
    from robustlab.models import loading

    seen = {}

    def source(name, **options):
        seen.update(name=name, **options)
        return "model", "card"

    monkeypatch.setitem(loading.MODEL_SOURCES, "hub", source)
    assert resolve_model("hub:mnist-pgd", num_classes=10) == ("model", "card")
    assert seen["name"] == "mnist-pgd" and seen["num_classes"] == 10


def test_zoo_models_resolve_as_checkpoints():
    from robustlab.zoo import card, names

    if "mnist-tiny" not in names():
        pytest.skip("the zoo ships no trained mnist-tiny")
    model, loaded = resolve_model("zoo:mnist-tiny", num_classes=10)
    assert loaded.to_dict() == card("mnist-tiny").to_dict() and not model.training
    with pytest.raises(RobustlabError, match="carries its own weights"):
        resolve_model("zoo:mnist-tiny", weights="w.pt")


def test_stored_runs_record_the_sha256_of_the_weights_evaluated(user_files, tmp_path, capsys):
    from robustlab.models import checkpoint_paths
    from robustlab.report.store import ResultsStore
    from robustlab.zoo import checkpoint, names

    db = tmp_path / "results.sqlite"
    runs = [(f"{user_files / 'usermodels.py'}:build", ["--weights", str(user_files / "weights.pt")],
             user_files / "weights.pt")]
    if "mnist-tiny" in names():
        runs.append(("zoo:mnist-tiny", [], checkpoint_paths(checkpoint("mnist-tiny"))[0]))
    for spec, extra, weights in runs:
        dataset = [] if spec.startswith("zoo:") else ["--dataset", "digits"]
        code = main(["evaluate", "--model", spec, *extra, *dataset, "--attack", "fgsm", "--eps", "0.1", "--limit", "10",
                     "--quiet", "--db", str(db), "--out", str(tmp_path / spec.split(":")[0].split("/")[-1])])
        assert code == 0
        with ResultsStore(db) as store:
            stored = store.get(store.runs()[0].id)
        assert stored["run"]["weights_hash"] == _sha256(weights)


def test_certify_a_factory_with_a_custom_forward(user_files, digits_mlp, tmp_path, capsys):
    """The factory's Net flattens inside forward and keeps its layers in a child: certified by
    tracing, with the numbers of the same weights in an nn.Sequential."""
    from robustlab.certify import CROWN, IBP
    from robustlab.data import load_dataset
    from robustlab.threat import Linf

    code = main(["certify", "--model", f"{user_files / 'usermodels.py'}:build", "--weights",
                 str(user_files / "weights.pt"), "--dataset", "digits", "--eps", "0.01,0.03", "--limit", "60",
                 "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "certify.json").read_text())
    assert result["model_card"]["extra"]["source"]["weights_sha256"] == _sha256(user_files / "weights.pt")
    data = load_dataset("digits", split="test", limit=60, seed=0)
    for name, certifier in (("ibp", IBP()), ("crown", CROWN())):
        for eps in (0.01, 0.03):
            expected = certifier(digits_mlp, data.x, data.y, threat=Linf(eps=eps)).certified_accuracy
            assert result["certified_accuracy"][name][f"{eps:g}"] == pytest.approx(expected)
    assert result["certified_accuracy"]["crown"]["0.01"] > 0.5
