"""Differential tests against the reference implementations, through golden files (issue 15).

``benchmarks/golden_references.py`` ran the references (pyautoattack 0.2.0, torchattacks 3.5.1,
foolbox 3.3.4) on a fixed tiny float64 MLP and fixed inputs, from the same starting points, and
stored what they produced in ``tests/golden/``. These tests run robustlab on the same case and
compare loss trajectories, step outcomes and per-sample results at 1e-9: a weakened attack (no
momentum, another loss, another step direction) changes every trajectory after a few steps.
Regenerate with ``python benchmarks/golden_references.py`` (needs the peers; CI does not).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from robustlab.attacks import APGD, APGDT, DDN, FAB, FABT, FGSM, FMN, PGD, CarliniWagnerL2, DeepFool, Square
from robustlab.threat import L2, Linf
from conftest import InputRecorder

GOLDEN = Path(__file__).parent / "golden"
START_SEED = 7  # APGD's starts: the golden script drew the reference's from this seed

pytestmark = pytest.mark.usefixtures("single_thread")


def _golden(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def case() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "tiny_mlp.safetensors")


def _model(case: dict[str, torch.Tensor]) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 5)).double()
    model.load_state_dict({k: v for k, v in case.items() if k[0].isdigit()})
    return model.eval()


def _dlr(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """DLR written from its definition (sorted logits), independent of robustlab.losses."""
    s = z.sort(dim=1, descending=True).values
    rows = torch.arange(z.shape[0])
    if t is None:
        other = torch.where(z.argmax(1) == y, s[:, 1], s[:, 0])
        return -(z[rows, y] - other) / (s[:, 0] - s[:, 2] + 1e-12)
    return -(z[rows, y] - z[rows, t]) / (s[:, 0] - (s[:, 2] + s[:, 3]) / 2 + 1e-12)


def _losses(model: nn.Module, iterates: list[torch.Tensor], y: torch.Tensor, loss: str,
            t: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        rows = [F.cross_entropy(model(xi), y, reduction="none") if loss == "ce" else _dlr(model(xi), y, t)
                for xi in iterates]
    return torch.stack(rows)


def _assert_trajectory(got: torch.Tensor, expected: list[list[float]], until: list[int] | None = None) -> None:
    """Losses ``[iterations, N]`` equal to 1e-9; sample ``i`` only over its first ``until[i]``
    iterates (APGD: where the paper's step-size rule, which robustlab follows, and the reference
    code's may decide differently; see ``paper_agrees_until`` in the golden script)."""
    want = torch.tensor(expected, dtype=torch.float64)
    assert got.shape == want.shape
    bad = ~torch.isclose(got, want, rtol=1e-9, atol=1e-12)
    if until is not None:
        bad &= torch.arange(want.shape[0])[:, None] < torch.tensor(until)[None, :]
    if bad.any():
        step, sample = (int(v) for v in bad.nonzero()[0])
        raise AssertionError(f"trajectories part at iteration {step}, sample {sample}: robustlab "
                             f"{got[step, sample].item():.12g}, reference {want[step, sample].item():.12g}")


@pytest.mark.parametrize("name", ["apgd_ce_linf", "apgd_dlr_linf", "apgd_ce_l2"])
def test_apgd_matches_the_reference_trajectory(case, name):
    ref = _golden(name)
    cfg = ref["config"]
    x, y = case["x"], case["y"]
    threat = Linf(eps=cfg["eps"]) if cfg["norm"] == "Linf" else L2(eps=cfg["eps"])
    model = InputRecorder(_model(case))
    result = APGD(loss=cfg["loss"], steps=cfg["steps"], rho=cfg["rho"], early_stop=False)(
        model, x, y, threat=threat, generator=torch.Generator().manual_seed(START_SEED))
    # Calls: the template's clean pass, the start and the `steps` iterates, the template's check.
    iterates = model.inputs[1:cfg["steps"] + 2]
    until = ref["paper_agrees_until"]
    _assert_trajectory(_losses(model.model, iterates, y, cfg["loss"]), ref["loss"], until)
    assert sum(until) >= 2 * (cfg["steps"] + 1)  # some samples agree all the way, through every halving
    full = torch.tensor(until) == cfg["steps"] + 1
    robust = torch.tensor(ref["robust"])
    assert torch.equal(result.success[full], ~robust[full])
    # Where nothing was found both return the highest-loss iterate.
    robust &= full
    x_best = torch.tensor(ref["x_best"], dtype=torch.float64)
    torch.testing.assert_close(result.x_adv.flatten(1)[robust], x_best[robust], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result.loss[robust], torch.tensor(ref["loss_best"], dtype=torch.float64)[robust],
                               rtol=1e-9, atol=1e-12)


def test_apgd_t_matches_the_reference_per_target(case):
    ref = _golden("apgd_t_linf")
    cfg = ref["config"]
    x, y = case["x"], case["y"]
    threat = Linf(eps=cfg["eps"])
    for run in ref["runs"]:
        targets = torch.tensor(run["targets"])
        model = InputRecorder(_model(case))
        APGDT(steps=cfg["steps"], early_stop=False)(model, x, y, threat=threat, targets=targets,
                                                    generator=torch.Generator().manual_seed(START_SEED))
        iterates = model.inputs[1:cfg["steps"] + 2]
        _assert_trajectory(_losses(model.model, iterates, y, "dlr", targets), run["loss"], run["paper_agrees_until"])
    # Untargeted APGD-T ranks the same targets; its first target's run starts from the same draw
    # (later targets draw new starts), so the samples it breaks are credited to that target.
    result = APGDT(steps=cfg["steps"], n_target_classes=cfg["n_target_classes"], early_stop=False)(
        _model(case), x, y, threat=threat, generator=torch.Generator().manual_seed(START_SEED))
    first = ref["runs"][0]
    checked = 0
    for i in range(x.shape[0]):
        if not first["robust"][i] and first["paper_agrees_until"][i] == cfg["steps"] + 1:
            assert result.extras["target"][i].item() == first["targets"][i], i
            assert result.success[i].item()
            checked += 1
    assert checked >= 2


@pytest.mark.parametrize("name", ["pgd_linf", "pgd_l2"])
def test_pgd_matches_torchattacks(case, name):
    ref = _golden(name)
    cfg = ref["config"]
    x, y = case["x"], case["y"]
    threat = Linf(eps=cfg["eps"]) if name.endswith("linf") else L2(eps=cfg["eps"])
    model = InputRecorder(_model(case))
    PGD(steps=cfg["steps"], step_size=cfg["step_size"], random_start=False)(model, x, y, threat=threat)
    iterates = model.inputs[1:cfg["steps"] + 2]  # x itself, then one iterate per step
    _assert_trajectory(_losses(model.model, iterates, y, "ce"), ref["loss"])
    torch.testing.assert_close(iterates[-1].flatten(1), torch.tensor(ref["x_adv"], dtype=torch.float64),
                               rtol=1e-9, atol=1e-12)


def test_fgsm_matches_torchattacks(case):
    ref = _golden("fgsm_linf")
    x, y = case["x"], case["y"]
    result = FGSM()(_model(case), x, y, threat=Linf(eps=ref["config"]["eps"]))
    torch.testing.assert_close(result.x_adv.flatten(1), torch.tensor(ref["x_adv"], dtype=torch.float64),
                               rtol=1e-9, atol=1e-12)


class _Stuck(nn.Module):
    """Logits that ignore the input: class 0 wins by 2, so Square's loss never improves."""

    def forward(self, x):
        return torch.tensor([[2.0, 0.0, -1.0]], dtype=x.dtype).expand(x.shape[0], 3) + 0 * x.flatten(1)[:, :1]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_square_window_sides_match_the_reference_schedule(index):
    ref = _golden("square_schedule")["cases"][index]
    queries, p_init, h = ref["queries"], ref["p_init"], ref["height"]
    bounds = [c[0] for c in ref["changes"]] + [queries]
    expected = [side for (first, _, side), end in zip(ref["changes"], bounds[1:]) for _ in range(first, end)]
    model = InputRecorder(_Stuck())
    x = torch.full((1, 1, h, h), 0.5)
    Square(queries=queries, p_init=p_init)(model, x, torch.zeros(1, dtype=torch.long), threat=Linf(eps=0.1),
                                           generator=torch.Generator().manual_seed(index))
    queried = model.inputs[2:2 + queries]
    init = queried[0]
    got = []
    for candidate in queried[1:]:
        rows = (candidate[0] != init[0]).any(dim=2).squeeze(0).nonzero().squeeze(1)
        got.append(int(rows.max() - rows.min()) + 1)
    # robustlab makes queries - 1 steps after the initialisation; the reference's windows may
    # cover the whole image where robustlab keeps one row free (H - 1), never the case here.
    assert got == [min(s, h - 1) for s in expected[:queries - 1]]


def test_ddn_matches_foolbox(case):
    ref = _golden("ddn_l2")
    cfg = ref["config"]
    x, y = case["x"], case["y"]
    model = InputRecorder(_model(case))
    result = DDN(steps=cfg["steps"], init_norm=cfg["init_norm"], gamma=cfg["gamma"], step_size=cfg["step_size"],
                 final_step_size=cfg["final_step_size"])(model, x, y, threat=L2(eps=math.inf))
    iterates = model.inputs[1:cfg["steps"] + 1]  # after the template's clean pass
    _assert_trajectory(_losses(model.model, iterates, y, "ce"), ref["loss"])
    _assert_trajectory(torch.stack([(it - x).flatten(1).norm(dim=1) for it in iterates]), ref["norm"])
    assert result.success.tolist() == ref["success"]
    torch.testing.assert_close(result.distance, torch.tensor(ref["best_distance"], dtype=torch.float64),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["deepfool_l2", "deepfool_linf"])
def test_deepfool_matches_foolbox(case, name):
    # Foolbox lengthens every step by 1e-4 "for numerical stability" (deepfool.py); robustlab steps
    # exactly onto the linearised boundary. With the box not binding here, the two differ by at
    # most (1 + overshoot) * 1e-4 per step in the step's norm.
    ref = _golden(name)
    cfg = ref["config"]
    x, y = case["x"], case["y"]
    threat = L2(eps=math.inf) if name.endswith("l2") else Linf(eps=math.inf)
    result = DeepFool(steps=cfg["steps"], candidates=cfg["candidates"], overshoot=cfg["overshoot"])(
        _model(case), x, y, threat=threat)
    x_ref = torch.tensor(ref["x_adv"], dtype=torch.float64).view_as(x)
    assert result.success.tolist() == ref["success"]
    iterations = result.extras["iterations"]
    ref_distance = threat.distance(x, x_ref)
    slack = (1 + cfg["overshoot"]) * 1e-4 * iterations
    assert ((result.distance - ref_distance).abs() <= slack + 1e-9).all(), (result.distance, ref_distance)
    assert ((result.x_adv - x_ref).flatten(1).norm(dim=1) <= 2 * slack * math.sqrt(16) + 1e-9).all()


@pytest.mark.parametrize("name", ["fab_linf", "fab_l2", "fab_t_linf"])
def test_fab_matches_the_reference(case, name):
    # The reference runs FAB in float32 (it casts x), so the distances agree to float32 precision.
    ref = _golden(name)
    cfg = ref["config"]
    x, y = case["x"], case["y"]
    threat = Linf(eps=math.inf) if cfg["norm"] == "Linf" else L2(eps=math.inf)
    attack = FABT(steps=cfg["steps"], n_target_classes=1) if cfg["targeted"] else FAB(steps=cfg["steps"])
    result = attack(_model(case), x, y, threat=threat)
    assert result.success.tolist() == ref["success"]
    torch.testing.assert_close(result.distance, torch.tensor(ref["distance"], dtype=torch.float64),
                               rtol=2e-4, atol=1e-6)


class _Shifted(nn.Module):
    """The golden model's logits + 20, as the C&W golden file was made (see the golden script)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) + 20.0


def _margins(model: nn.Module, iterates: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """``Z_y - max_{j != y} Z_j`` at every iterate, from sorted logits."""
    with torch.no_grad():
        rows = []
        for xi in iterates:
            z = model(xi)
            s = z.sort(dim=1, descending=True).values
            own = z.gather(1, y[:, None]).squeeze(1)
            rows.append(own - torch.where(z.argmax(1) == y, s[:, 1], s[:, 0]))
    return torch.stack(rows)


@pytest.mark.parametrize("name", ["cw_l2", "cw_l2_kappa"])
def test_cw_l2_matches_torchattacks(case, name):
    # One c, no abort: torchattacks' CW is the authors' inner loop (Adam on the tanh variable,
    # f6 with confidence kappa) without the binary search, which test_definitions pins by hand.
    ref = _golden(name)
    cfg = ref["config"]
    x, y = case["x"], case["y"]
    model = InputRecorder(_Shifted(_model(case)))
    result = CarliniWagnerL2(binary_search_steps=1, max_iterations=cfg["steps"], initial_const=cfg["const"],
                             learning_rate=cfg["learning_rate"], confidence=cfg["kappa"], abort_early=False)(
        model, x, y, threat=L2(eps=math.inf))
    iterates = model.inputs[1:cfg["steps"] + 1]  # after the template's clean pass
    _assert_trajectory(torch.stack([(it - x).flatten(1).norm(dim=1) for it in iterates]), ref["distance"])
    margins = _margins(model.model, iterates, y)
    _assert_trajectory(margins, ref["margin"])
    # The confidence decides success: a margin below -kappa at some iterate (the reference counts
    # any misclassification, so its best points are compared at kappa = 0 only).
    reached = (margins < -cfg["kappa"]).any(dim=0)
    assert reached.any() and torch.equal(result.success, reached)
    if cfg["kappa"] == 0:
        assert result.success.tolist() == ref["success"]
        torch.testing.assert_close(result.extras["best_distance"], torch.tensor(ref["best_distance"], dtype=torch.float64),
                                   rtol=1e-9, atol=1e-12)
    else:
        assert ((margins > -cfg["kappa"]) & (margins < 0)).any()  # the cap at -kappa was in play


def _fmn_linf_replay(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, *,
                     published: bool) -> list[torch.Tensor]:
    """FMN L∞, untargeted (Pintor et al. 2021, Algorithm 1; Foolbox's FMNAttackLp), written from the
    paper: the iterates ``x + delta_k``. ``published=False`` makes robustlab's one documented change
    (``attacks/fmn.py``): before the first success ``eps`` grows to ``max(eps, ||delta|| + |m| /
    ||grad m||_1) (1 + gamma)`` from 0, instead of being set to ``||delta|| + |m| / ||grad m||_1``
    from infinity."""
    n = x.shape[0]
    worst = torch.maximum(x, 1 - x).flatten(1).amax(1)
    delta = torch.zeros_like(x)
    eps = torch.full((n,), math.inf if published else 0.0, dtype=x.dtype)
    best = torch.full((n,), math.inf, dtype=x.dtype)
    found = torch.zeros(n, dtype=torch.bool)
    out = []
    for k in range(steps):
        anneal = (1 + math.cos(math.pi * k / steps)) / 2
        alpha, gamma = 0.01 + (1.0 - 0.01) * anneal, 0.001 + (0.05 - 0.001) * anneal
        xk = (x + delta).requires_grad_()
        z = model(xk)
        s = z.sort(dim=1, descending=True).values
        m = z.gather(1, y[:, None]).squeeze(1) - torch.where(z.argmax(1) == y, s[:, 1], s[:, 0])
        (g,) = torch.autograd.grad(m.sum(), xk)
        out.append(xk.detach())
        adv = z.argmax(1) != y
        norm = delta.flatten(1).abs().amax(1)
        best = torch.where(adv & (norm < best), norm, best)
        to_boundary = norm + m.detach().abs() / g.flatten(1).abs().sum(1)
        if published:
            grow = torch.where(found, eps * (1 + gamma), to_boundary)
        else:
            grow = torch.where(found, eps, torch.maximum(eps, to_boundary)) * (1 + gamma)
        found |= adv
        eps = torch.where(adv, torch.minimum(eps * (1 - gamma), best), grow).minimum(worst)
        delta = delta - alpha * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        e = eps.view(-1, 1, 1, 1)
        delta = torch.maximum(torch.minimum(delta, e), -e)
        delta = (x + delta).clamp(0, 1) - x
    return out


def _iterates_decided_by_the_algorithm(model: nn.Module, iterates: list[torch.Tensor], y: torch.Tensor,
                                       tol: float = 1e-12) -> list[int]:
    """Per sample, how many leading iterates follow from the algorithm alone: up to and including
    the first one whose margin is within ``tol`` of 0. Which side of the boundary such an iterate
    lies on, and so the next eps, is decided by the last bits of float64 arithmetic, which differ
    between CPUs: on a ReLU network the published rule's first step lands exactly on the boundary."""
    counts = [len(iterates)] * len(y)
    with torch.no_grad():
        for k, it in reversed(list(enumerate(iterates))):
            z = model(it)
            s = z.sort(dim=1, descending=True).values
            m = z.gather(1, y[:, None]).squeeze(1) - torch.where(z.argmax(1) == y, s[:, 1], s[:, 0])
            for i in torch.nonzero(m.abs() < tol).flatten().tolist():
                counts[i] = k + 1
    return counts


def test_fmn_follows_the_published_algorithm_but_for_its_documented_eps_rule(case):
    ref = _golden("fmn_linf")
    steps = ref["config"]["steps"]
    x, y = case["x"], case["y"]
    model = _model(case)
    # The replay of Algorithm 1 is the reference's (Foolbox's LInfFMNAttack) iterate for iterate,
    # as far as the algorithm and not rounding decides the path (most samples: all the way) ...
    published = _fmn_linf_replay(model, x, y, steps, published=True)
    golden = torch.tensor(ref["iterates"], dtype=torch.float64)
    decided = _iterates_decided_by_the_algorithm(model, published, y)
    assert sum(count == steps for count in decided) >= 4 and min(decided) >= 2, decided
    for i, count in enumerate(decided):
        torch.testing.assert_close(torch.stack([it[i].flatten() for it in published[:count]]), golden[:count, i],
                                   rtol=1e-9, atol=1e-12)
    # ... and with robustlab's eps rule before the first success, it is robustlab's FMN.
    recorder = InputRecorder(model)
    result = FMN(steps=steps)(recorder, x, y, threat=Linf(eps=math.inf))
    replay = _fmn_linf_replay(model, x, y, steps, published=False)
    torch.testing.assert_close(torch.stack(recorder.inputs[1:steps + 1]), torch.stack(replay), rtol=1e-9, atol=1e-12)
    assert result.success.tolist() == ref["success"]
    # Both find a minimal perturbation; the rules differ, the distances are of the same size.
    ref_best = torch.tensor(ref["best_distance"], dtype=torch.float64)
    assert (result.distance <= 1.5 * ref_best + 1e-3).all()
