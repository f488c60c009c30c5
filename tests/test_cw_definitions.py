"""Carlini & Wagner pieces pinned to their definitions on model-free cases (issue 15): each
objective's floor is its infimum (f3's was -log 2, below what f3 can take: fixed), the objectives' inputs are checked, and they are computed in at
least float32. Nothing here trains a model."""

from __future__ import annotations

import math

import pytest
import torch

from robustlab.attacks.cw_objectives import OBJECTIVES, get_objective, objective_floor
from robustlab.errors import RobustlabError

pytestmark = pytest.mark.usefixtures("single_thread")

LOG2 = math.log(2.0)
# The infimum of each objective (algorithms.md §1): f2 and f4 are clipped at 0; f1, f5 (-log 2F) and
# f7 (softplus(m) - log 2 of a logit margin) tend to -log 2 as the success grows certain; f3 is
# softplus(m) - log 2 of a probability margin m >= -1, so it tends to softplus(-1) - log 2; f6 stops
# at -kappa.
INFIMUM = {"f1": -LOG2, "f2": 0.0, "f3": math.log1p(math.exp(-1.0)) - LOG2, "f4": 0.0, "f5": -LOG2, "f6": 0.0,
           "f7": -LOG2}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_each_objective_floor_is_its_infimum(name, targeted):
    kappa = 2.5 if name == "f6" else 0.0
    floor = objective_floor(name, kappa)
    assert floor == pytest.approx(INFIMUM[name] - kappa, abs=1e-15)
    # A certain success (the target, or the winning wrong class, 60 above every other logit; the
    # true class 60 below) reaches the floor; anything less sure stays above it.
    logits = torch.tensor([[0.0, 60.0, -5.0], [0.0, 1.0, -5.0]], dtype=torch.float64)
    y, t = torch.tensor([0, 0]), torch.tensor([1, 1]) if targeted else None
    f = OBJECTIVES[name](logits, y, t, kappa=kappa)
    assert float(f[0]) == pytest.approx(floor, abs=1e-12)
    if name in ("f2", "f4"):  # clipped at 0: any sure enough success is at the floor
        assert float(f[1]) == floor
    else:
        assert float(f[1]) > floor + 1e-3


def test_default_objective_floors():
    assert objective_floor("f6") == 0.0
    assert objective_floor("f6", 1.5) == -1.5
    assert objective_floor("f2", 1.5) == 0.0 and objective_floor("f4") == 0.0
    assert objective_floor("f7", 1.5) == -LOG2


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objectives_need_logits_of_shape_n_k(name):
    with pytest.raises(RobustlabError, match="logits"):
        OBJECTIVES[name](torch.zeros(2, 3, 1), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(RobustlabError, match="at least 2 classes"):
        OBJECTIVES[name](torch.zeros(2, 1), torch.zeros(2, dtype=torch.int64))


def test_get_objective_resolves_names_and_rejects_others():
    for name, fn in OBJECTIVES.items():
        assert get_objective(name) is fn
    with pytest.raises(RobustlabError, match="unknown C&W objective 'f8'"):
        get_objective("f8")


@pytest.mark.parametrize("name", ["f1", "f2", "f3", "f4", "f5"])
def test_probability_objectives_are_computed_in_at_least_float32(name):
    # Half-precision logits: the softmax is taken in float32, so the result matches the float64 one
    # to float32 precision (in float16, F_t of a 10-logit gap is resolved to 3 digits only).
    z = torch.tensor([[0.0, 10.0, -3.0], [2.0, 1.0, 0.5]], dtype=torch.float16)
    y, t = torch.tensor([0, 2]), torch.tensor([1, 0])
    got = OBJECTIVES[name](z, y, t)
    assert got.dtype == torch.float32
    expected = OBJECTIVES[name](z.double(), y, t)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-7)
