"""The conformance suite every registered training method must pass (as the attacks and the
certifiers have theirs): parametrized over ``METHODS``, so a newly registered method is covered
automatically.

Per method, on a few batches of sklearn digits with a small model: the training inputs of a
method that trains against a threat model lie in that threat set (and in the box) and are really
perturbed, not the clean batch; the weights move and stay finite; a run is reproducible from its
seed and leaves the caller's global RNG untouched; a run killed after an epoch and resumed ends
with exactly the weights of an uninterrupted run (so every bit of the method's own state, such as
its generators and per-example state, is in the checkpoint).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from robustlab.models import build_model
from robustlab.threat import ThreatModel
from robustlab.training import METHODS, Method, MMATraining, TrainConfig, train
from robustlab.training.mma import MAX_EPS_FACTOR

pytestmark = pytest.mark.usefixtures("single_thread")

EPS = 0.1
SHAPE = (1, 8, 8)


def mlp(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def pretrained(digits) -> nn.Module:
    """An MLP trained a little on the test's images, so that most are classified correctly: methods
    that attack only the correct ones (MMA) then do attack (a fresh MLP gets none right)."""
    x, y = digits[0][:96], digits[1][:96]
    model = mlp(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(50):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


# A method's model and options where the defaults do not fit a small MLP and two short epochs.
MODELS = {
    "adv-bnn": lambda: build_model("bayesian", input_shape=SHAPE, num_classes=10, base="mlp",
                                   base_arguments={"hidden": [32]}, init_sigma=0.01, ensemble=2, sample_seed=1,
                                   seed=0),
    "tisode": lambda: build_model("tisode", input_shape=SHAPE, num_classes=10, channels=4, seed=0),
}
OPTIONS = {
    "adv-bnn": {"steps": 2, "step_size": 0.05},
    "ibp": {"eps": EPS},
    "crown-ibp": {"eps": EPS},
    "free": {"replays": 2},
    "tisode": {"steady_from_epoch": 0},
}


def config(name: str, epochs: int = 2) -> TrainConfig:
    threat = {"norm": "Linf", "eps": EPS} if METHODS[name].needs_threat else None
    return TrainConfig(epochs=epochs, batch_size=32, optimizer="adam", lr=3e-3, weight_decay=0.0,
                       schedule="constant", seed=7, method=name, threat=threat,
                       method_options=OPTIONS.get(name, {}), robust_eval_samples=0)


def start(name: str, data) -> nn.Module:
    """The model a run of method ``name`` starts from (a fresh copy each time)."""
    return MODELS[name]() if name in MODELS else copy.deepcopy(data[2])


def run(name: str, data, *, epochs: int = 2, record: list | None = None, **kwargs) -> tuple[nn.Module, Method]:
    """Train method ``name`` from :func:`start`; ``record`` collects ``(batch, x_train)`` pairs."""
    x, y, _ = data
    model = start(name, data)
    cfg = config(name, epochs)
    extra = {"teacher": mlp(1).eval()} if name == "distillation-student" else {}
    method = METHODS[name](cfg, **extra)
    if record is not None:
        make_inputs = method.make_inputs

        def recording(model, batch):
            x_train = make_inputs(model, batch)
            record.append((batch, x_train.detach().clone()))
            return x_train

        method.make_inputs = recording
    train(model, x, y, config=cfg, method=method, **kwargs)
    return model, method


def radius(name: str, method: Method, threat: ThreatModel) -> ThreatModel:
    """The threat set the training inputs must lie in: the batch's, except for MMA, which trains at
    each example's margin up to ``1.05 d_max`` beyond the threat model's eps (Ding et al.)."""
    if name in ("mma", "omma"):
        assert isinstance(method, MMATraining)
        return dataclasses.replace(threat, eps=MAX_EPS_FACTOR * method.d_max)
    return threat


@pytest.fixture(scope="module")
def data(digits, pretrained):
    return digits[0][:96], digits[1][:96], pretrained


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("name", METHODS.names())
def test_training_inputs_lie_in_the_threat_set_and_are_perturbed(name, data):
    record: list = []
    before = weights(start(name, data))
    model, method = run(name, data, record=record)
    after = weights(model)
    assert record, "make_inputs was never called"
    moved = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert moved, "training changed no weight"
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    for batch, x_train in record:
        assert x_train.shape[1:] == batch.x.shape[1:] and x_train.shape[0] % batch.x.shape[0] == 0
        assert float(x_train.min()) >= 0 and float(x_train.max()) <= 1, "training inputs leave the box [0, 1]"
    if not METHODS[name].needs_threat:
        return
    farthest = 0.0
    for batch, x_train in record:
        for part in x_train.split(batch.x.shape[0]):  # methods may train on [x; x_adv]
            assert bool(radius(name, method, batch.threat).contains(batch.x, part).all()), \
                "training inputs leave the threat set"
            farthest = max(farthest, float((part - batch.x).abs().amax()))
    assert farthest > EPS / 2, f"the training inputs stay within {farthest:.3g} of the clean batch (eps {EPS})"


@pytest.mark.parametrize("name", METHODS.names())
def test_a_run_is_reproducible_from_its_seed_and_leaves_the_global_rng_alone(name, data):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = weights(run(name, data)[0])
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(456)  # another global state must not change the run
    assert_same(first, weights(run(name, data)[0]))


class Stop(Exception):
    pass


def stop_after_first_epoch(record: dict) -> None:
    if record["epoch"] == 1:
        raise Stop


@pytest.mark.parametrize("name", METHODS.names())
def test_a_killed_and_resumed_run_ends_with_the_uninterrupted_weights(name, data, tmp_path):
    whole = weights(run(name, data, checkpoint_dir=tmp_path / "whole")[0])
    with pytest.raises(Stop):
        run(name, data, checkpoint_dir=tmp_path / "killed", on_epoch_end=stop_after_first_epoch)
    resumed = weights(run(name, data, checkpoint_dir=tmp_path / "killed")[0])
    assert_same(whole, resumed)
    assert not math.isnan(float(next(iter(resumed.values())).float().sum()))
