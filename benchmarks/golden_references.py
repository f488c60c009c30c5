"""Regenerate the golden files of tests/test_golden_references.py with the reference implementations.

    python benchmarks/golden_references.py            # rewrite tests/golden/*
    python benchmarks/golden_references.py --check    # recompute and compare, write nothing

Needs the peers (pyautoattack 0.2.0, torchattacks 3.5.1, foolbox 3.3.4; see benchmarks/README.md).
The tests read only the files written here, so CI does not need the peers.

One fixed tiny case (tests/golden/tiny_mlp.safetensors): a 16-24-5 ReLU MLP in float64 with
weights drawn from a seeded generator, six inputs of shape [1, 4, 4] in [0.35, 0.65] labelled
with the model's own predictions, and fixed starting points in the L∞ and L2 balls. Every
reference runs from the same start as robustlab (the starts are injected: ``x_init`` for
pyautoattack, no random start for torchattacks), and each file records what the reference
produced: the loss at every iterate, the final points and the per-sample outcome. Float64
throughout, so the tests compare at 1e-9.

Benchmark code: it reseeds global generators and imports the peers; robustlab never imports it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"
CASE_FILE = GOLDEN / "tiny_mlp.safetensors"
SEED = 20261204
# Radii exact in float32: the reference keeps its step sizes in float32.
N, EPS_LINF, EPS_L2 = 6, 3 / 128, 1 / 16
START_SEED = 7
STEPS = 100  # APGD: 100 iterations, where the paper's checkpoints and the reference's coincide


def tiny_mlp(tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The golden model; the tests build it the same way from the same file."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 5)).double()
    model.load_state_dict({k: v for k, v in tensors.items() if k[0].isdigit()})
    return model.eval()


def build_case() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    w1 = torch.randn(24, 16, generator=g, dtype=torch.float64)
    t: dict[str, torch.Tensor] = {  # hidden units centred on the middle of the box
        "1.weight": w1,
        "1.bias": -0.5 * w1.sum(1) + 0.1 * torch.randn(24, generator=g, dtype=torch.float64),
        "3.weight": torch.randn(5, 24, generator=g, dtype=torch.float64),
        "3.bias": 0.1 * torch.randn(5, generator=g, dtype=torch.float64),
    }
    x = 0.35 + 0.3 * torch.rand(N, 1, 4, 4, generator=g, dtype=torch.float64)
    model = tiny_mlp(t)
    with torch.no_grad():
        t["y"] = model(x).argmax(1)
    t["x"] = x
    # The starts robustlab's APGD draws from torch.Generator().manual_seed(START_SEED), as the
    # reference does: x + eps * t / ||t|| with t uniform in [-1, 1]^d (L∞) or Gaussian (L2).
    t_inf = 2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(START_SEED), dtype=torch.float64) - 1
    t["start_linf"] = (x + EPS_LINF * t_inf / (t_inf.flatten(1).abs().amax(1).view(-1, 1, 1, 1) + 1e-12)).clamp(0, 1)
    t_2 = torch.randn(x.shape, generator=torch.Generator().manual_seed(START_SEED), dtype=torch.float64)
    t["start_l2"] = (x + EPS_L2 * t_2 / (t_2.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)).clamp(0, 1)
    return t


class Recorder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.model(x)


def dlr_sorted(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """DLR as the reference code writes it (sort-based), for the iterates' loss values."""
    s = z.sort(dim=1).values
    rows = torch.arange(z.shape[0])
    if t is None:
        other = torch.where(z.argmax(1) == y, s[:, -2], s[:, -1])
        return -(z[rows, y] - other) / (s[:, -1] - s[:, -3] + 1e-12)
    return -(z[rows, y] - z[rows, t]) / (s[:, -1] - 0.5 * (s[:, -3] + s[:, -4]) + 1e-12)


def iterate_losses(model: nn.Module, iterates: list[torch.Tensor], y: torch.Tensor, loss: str,
                   targets: torch.Tensor | None = None) -> list[list[float]]:
    out = []
    with torch.no_grad():
        for xi in iterates:
            z = model(xi)
            value = F.cross_entropy(z, y, reduction="none") if loss == "ce" else dlr_sorted(z, y, targets)
            out.append([float(f"{v:.13g}") for v in value.tolist()])  # 1e-13: ample for 1e-9 tests
    return out


def paper_agrees_until(losses: list[list[float]], rho: float = 0.75) -> list[int]:
    """Per sample, the number of leading iterates over which the reference and the paper agree.

    APGD's step-size rule differs between the paper (Croce & Hein 2020, Sec. 3 and Algorithm 1),
    which robustlab follows, and the reference code in three places: condition 1 is ``count <
    rho * window`` in the paper and ``<=`` in the code; after a halving the paper's iterate *is*
    the restart point, so the next increase is counted against its loss, while the code counts
    against the last iterate's; at the first checkpoint the code skips condition 2 and counts the
    first step against 0. Replaying both rules on the reference's own losses finds, per sample,
    the first checkpoint where they may decide differently (they do, or a comparison in the
    window is a near-tie that rounding could flip; exact ties, from an iterate that no longer moves,
    compare the same in both); up to it the trajectories must agree, after it they may part.
    """
    from robustlab.attacks.apgd import checkpoints  # the paper's schedule; equals the code's at 100 steps

    steps = len(losses) - 1
    marks = [0, *checkpoints(steps)]
    out = []
    for i in range(len(losses[0])):
        f = [row[i] for row in losses]
        current, best, best_at_check, halved = f[0], f[0], f[0], False
        until = steps + 1
        for a, w in zip(marks, marks[1:]):
            if w >= steps:
                break
            paper_count = ref_count = 0
            tie = False
            for k in range(a, w):
                before = f[k] if k > 0 else 0.0
                tie |= any(0 < abs(f[k + 1] - v) <= 1e-10 * max(1.0, abs(v)) for v in (current, before))
                paper_count += f[k + 1] > current
                ref_count += f[k + 1] > before
                current = f[k + 1]
                tie |= abs(f[k + 1] - best) <= 1e-10 * max(1.0, abs(best)) and f[k + 1] != best
                best = max(best, f[k + 1])
            tie |= abs(best - best_at_check) <= 1e-10 * max(1.0, abs(best)) and best != best_at_check
            paper = paper_count < rho * (w - a) or (not halved and best <= best_at_check)
            ref = ref_count <= rho * (w - a) or (a > 0 and not halved and best <= best_at_check)
            if paper != ref or tie:
                until = w + 1
                break
            halved, best_at_check = paper, best
            if paper:
                current = best
        out.append(until)
    return out


def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__}
    for dist in ("pyautoattack", "torchattacks", "foolbox"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def apgd_cases(case: dict[str, torch.Tensor]) -> dict[str, Any]:
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    x, y = case["x"], case["y"]
    out: dict[str, Any] = {}
    for name, norm, eps, loss in (("apgd_ce_linf", "Linf", EPS_LINF, "ce"), ("apgd_dlr_linf", "Linf", EPS_LINF, "dlr"),
                                  ("apgd_ce_l2", "L2", EPS_L2, "ce")):
        model = Recorder(tiny_mlp(case))
        attack = APGDAttack(model, n_iter=STEPS, norm=norm, eps=eps, loss=loss, seed=0, device="cpu")
        attack.init_hyperparam(x)
        start = case["start_linf" if norm == "Linf" else "start_l2"]
        x_best, robust, loss_best, _ = attack.attack_single_run(x, y, x_init=start)
        iterates = model.inputs
        assert len(iterates) == STEPS + 1
        if norm == "L2":  # the case keeps clear of the box, where the reference's projection is not exact
            assert all(bool(((it > 0) & (it < 1)).all()) for it in iterates)
        out[name] = {
            "reference": "pyautoattack 0.2.0 APGDAttack.attack_single_run(x, y, x_init=start)",
            "config": {"norm": norm, "eps": eps, "loss": loss, "steps": STEPS, "rho": 0.75},
            "loss": iterate_losses(model.model, iterates, y, loss),
            "paper_agrees_until": None,
            "loss_best": loss_best.tolist(),
            "x_best": x_best.flatten(1).tolist(),
            "robust": robust.bool().tolist(),
        }
        out[name]["paper_agrees_until"] = paper_agrees_until(out[name]["loss"])

    # APGD-T: one targeted-DLR run per target, the targets ranked by the clean logits.
    model = Recorder(tiny_mlp(case))
    attack = APGDAttack_targeted(model, n_iter=STEPS, norm="Linf", eps=EPS_LINF, seed=0, device="cpu")
    attack.init_hyperparam(x)
    with torch.no_grad():
        order = model.model(x).sort(dim=1)[1]
    runs = []
    for target_class in range(2, 5):
        model.inputs = []
        attack.y_target = order[:, -target_class]
        _, robust, loss_best, _ = attack.attack_single_run(x, y, x_init=case["start_linf"])
        losses = iterate_losses(model.model, model.inputs, y, "dlr", attack.y_target)
        runs.append({"targets": attack.y_target.tolist(), "loss": losses, "paper_agrees_until": paper_agrees_until(losses),
                     "loss_best": loss_best.tolist(), "robust": robust.bool().tolist()})
    out["apgd_t_linf"] = {
        "reference": "pyautoattack 0.2.0 APGDAttack_targeted.attack_single_run per target (x_init=start)",
        "config": {"norm": "Linf", "eps": EPS_LINF, "steps": STEPS, "n_target_classes": 3},
        "runs": runs,
    }
    return out


def pgd_fgsm_cases(case: dict[str, torch.Tensor]) -> dict[str, Any]:
    import torchattacks

    x, y = case["x"], case["y"]
    out: dict[str, Any] = {}
    for name, cls, eps, alpha in (("pgd_linf", torchattacks.PGD, EPS_LINF, 0.01), ("pgd_l2", torchattacks.PGDL2, EPS_L2, 0.05)):
        model = Recorder(tiny_mlp(case))
        attack = cls(model, eps=eps, alpha=alpha, steps=10, random_start=False)
        x_adv = attack(x, y)
        iterates = [it for it in model.inputs if it.shape == x.shape][-10:] + [x_adv]
        out[name] = {
            "reference": f"torchattacks 3.5.1 {cls.__name__}(eps={eps}, alpha={alpha}, steps=10, random_start=False)",
            "config": {"eps": eps, "step_size": alpha, "steps": 10},
            "loss": iterate_losses(model.model, iterates, y, "ce"),
            "x_adv": x_adv.flatten(1).tolist(),
        }
    model = tiny_mlp(case)
    x_adv = torchattacks.FGSM(model, eps=EPS_LINF)(x, y)
    out["fgsm_linf"] = {"reference": f"torchattacks 3.5.1 FGSM(eps={EPS_LINF})", "config": {"eps": EPS_LINF},
                        "x_adv": x_adv.flatten(1).tolist()}
    return out


def foolbox_cases(case: dict[str, torch.Tensor]) -> dict[str, Any]:
    import foolbox as fb

    x, y = case["x"], case["y"]
    out: dict[str, Any] = {}
    # DDN: the iterates' norms and losses (the norm follows eps, the direction the CE gradient).
    model = Recorder(tiny_mlp(case)).eval()
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0))
    model.inputs = []
    # gamma exact in float32: Foolbox forms the factors 1 -+ gamma in float32 (ep.where on scalars).
    raw, _, success = fb.attacks.DDNAttack(init_epsilon=0.05, steps=20, gamma=0.0625)(
        fmodel, x, fb.criteria.Misclassification(y), epsilons=None)
    iterates = [it for it in model.inputs if it.shape == x.shape][-21:-1]  # then Foolbox checks the result
    out["ddn_l2"] = {
        "reference": "foolbox 3.3.4 DDNAttack(init_epsilon=0.05, steps=20, gamma=0.0625)",
        "config": {"init_norm": 0.05, "steps": 20, "gamma": 0.0625, "step_size": 1.0, "final_step_size": 0.01},
        "loss": iterate_losses(model.model, iterates, y, "ce"),
        "norm": [(it - x).flatten(1).norm(dim=1).tolist() for it in iterates],
        "best_distance": (raw - x).flatten(1).norm(dim=1).tolist(),
        "success": success.tolist(),
    }
    # DeepFool L2 and L∞: Foolbox adds 1e-4 to each step's length "for numerical stability",
    # robustlab steps exactly onto the linearised boundary; the tests allow for that.
    for name, cls in (("deepfool_l2", fb.attacks.L2DeepFoolAttack), ("deepfool_linf", fb.attacks.LinfDeepFoolAttack)):
        attack = cls(steps=50, candidates=5, overshoot=0.02, loss="logits")
        raw, _, success = attack(fb.PyTorchModel(tiny_mlp(case), bounds=(0.0, 1.0)), x,
                                 fb.criteria.Misclassification(y), epsilons=None)
        out[name] = {
            "reference": f"foolbox 3.3.4 {cls.__name__}(steps=50, candidates=5, overshoot=0.02, loss='logits')",
            "config": {"steps": 50, "candidates": 5, "overshoot": 0.02},
            "x_adv": raw.flatten(1).tolist(), "success": success.tolist(),
        }
    return out


class Shifted(nn.Module):
    """The golden model with every logit raised by 20 (predictions and logit differences unchanged).

    torchattacks' C&W takes ``max((1 - onehot) * Z)`` as the largest other logit and ``max(onehot *
    Z)`` as the own logit, which is right only when the logits are positive; here they are."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) + 20.0


CW_STEPS, CW_CONST, CW_LR = 100, 5.0, 0.01


def cw_cases(case: dict[str, torch.Tensor]) -> dict[str, Any]:
    import torchattacks

    class AuthorsStart(torchattacks.CW):
        """torchattacks' CW starting where the authors' l2_attack.py starts: arctanh of the image
        scaled by 0.999999 (torchattacks omits the factor, which only keeps arctanh finite)."""

        def inverse_tanh_space(self, x):
            return torch.atanh((x * 2 - 1) * 0.999999)

    x, y = case["x"], case["y"]
    out: dict[str, Any] = {}
    for name, kappa in (("cw_l2", 0.0), ("cw_l2_kappa", 1.0)):
        model = Recorder(Shifted(tiny_mlp(case)))
        x_adv = AuthorsStart(model, c=CW_CONST, kappa=kappa, steps=CW_STEPS, lr=CW_LR)(x, y)
        # torchattacks stops all samples once the batch's loss rose since its last check (every
        # steps / 10); robustlab then runs as many steps (max_iterations) without aborting.
        iterates = model.inputs
        with torch.no_grad():
            logits = [model.model(it) for it in iterates]
        assert all(bool((z > 0).all()) for z in logits)  # torchattacks' masked max is right here
        margins = [(z.gather(1, y[:, None]).squeeze(1) - z.scatter(1, y[:, None], -math.inf).amax(1)) for z in logits]
        with torch.no_grad():
            success = tiny_mlp(case)(x_adv).argmax(1) != y
        out[name] = {
            "reference": f"torchattacks 3.5.1 CW(c={CW_CONST}, kappa={kappa}, steps={CW_STEPS}, lr={CW_LR}) started at "
                         "arctanh(0.999999 (2x - 1)) as the authors' code; model logits + 20",
            "config": {"const": CW_CONST, "kappa": kappa, "steps": len(iterates), "learning_rate": CW_LR},
            "distance": [[float(f"{v:.13g}") for v in (it - x).flatten(1).norm(dim=1).tolist()] for it in iterates],
            "margin": [[float(f"{v:.13g}") for v in m.tolist()] for m in margins],
            "success": success.tolist(),
            "best_distance": (x_adv - x).flatten(1).norm(dim=1).tolist(),
        }
    return out


FMN_STEPS = 30


def fmn_cases(case: dict[str, torch.Tensor]) -> dict[str, Any]:
    import foolbox as fb

    x, y = case["x"], case["y"]
    model = Recorder(tiny_mlp(case)).eval()
    raw, _, success = fb.attacks.LInfFMNAttack(steps=FMN_STEPS)(fb.PyTorchModel(model, bounds=(0.0, 1.0)), x,
                                                                fb.criteria.Misclassification(y), epsilons=None)
    iterates = [it for it in model.inputs if it.shape == x.shape][:FMN_STEPS]  # then Foolbox checks the result
    assert torch.equal(iterates[0], x)
    return {"fmn_linf": {
        "reference": f"foolbox 3.3.4 LInfFMNAttack(steps={FMN_STEPS}) (max_stepsize 1, min_stepsize 0.01, gamma 0.05)",
        "config": {"steps": FMN_STEPS, "step_size": 1.0, "final_step_size": 0.01, "gamma": 0.05, "final_gamma": 0.001},
        "iterates": [it.flatten(1).tolist() for it in iterates],
        "loss": iterate_losses(model.model, iterates, y, "ce"),
        "success": success.tolist(),
        "best_distance": (raw - x).flatten(1).abs().amax(1).tolist(),
    }}


class _Float64(nn.Module):
    """pyautoattack's FAB casts its inputs to float32; the model stays float64."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.double()).float()


def fab_cases(case: dict[str, torch.Tensor]) -> dict[str, Any]:
    from pyautoattack.fab_pt import FABAttack_PT

    x, y = case["x"], case["y"]
    out: dict[str, Any] = {}
    for name, norm, targeted in (("fab_linf", "Linf", False), ("fab_l2", "L2", False), ("fab_t_linf", "Linf", True)):
        attack = FABAttack_PT(_Float64(tiny_mlp(case)), norm=norm, n_restarts=1, n_iter=100, eps=1.0, alpha_max=0.1,
                              eta=1.05, beta=0.9, seed=0, device="cpu")
        if targeted:
            attack.target_class = 2  # the most likely wrong class of a correctly classified point
        adv = attack.attack_single_run(x, y, use_rand_start=False, is_targeted=targeted).double()
        dist = (adv - x).flatten(1)
        dist = dist.abs().amax(1) if norm == "Linf" else dist.norm(dim=1)
        with torch.no_grad():
            success = tiny_mlp(case)(adv).argmax(1) != y
        out[name] = {
            "reference": f"pyautoattack 0.2.0 FABAttack_PT(norm={norm!r}, n_iter=100, alpha_max=0.1, eta=1.05, "
                         f"beta=0.9).attack_single_run(use_rand_start=False, is_targeted={targeted}); float32 inside",
            "config": {"norm": norm, "steps": 100, "targeted": targeted},
            "distance": dist.tolist(), "success": success.tolist(),
        }
    return out


def square_schedule() -> dict[str, Any]:
    from pyautoattack.square import SquareAttack

    out: dict[str, Any] = {"reference": "pyautoattack 0.2.0 SquareAttack.p_selection and its window side "
                                        "s = max(int(round(sqrt(p * n_features / c))), 1)", "cases": []}
    for queries, p_init, hw in ((300, 0.8, 16), (600, 0.8, 20), (200, 0.3, 28)):
        ref = SquareAttack(None, norm="Linf", n_queries=queries, eps=0.1, p_init=p_init)
        p = [ref.p_selection(i) for i in range(queries)]
        side = [min(max(int(round(math.sqrt(pi * hw * hw))), 1), hw) for pi in p]
        # Run-length encoded: (first iteration, p, side) wherever p changes.
        changes = [[i, p[i], side[i]] for i in range(queries) if i == 0 or p[i] != p[i - 1]]
        out["cases"].append({"queries": queries, "p_init": p_init, "height": hw, "changes": changes})
    return out


def square_l2() -> dict[str, Any]:
    """The reference's L2 pieces: its bump ``eta(s)`` (random transpose undone) and its L2
    initialisation and first step run with scripted draws (window corners, signs, transposes),
    so that a test can replay them without pyautoattack's global generator."""
    from pyautoattack.square import SquareAttack

    def eta_upright(ref: SquareAttack, s: int) -> torch.Tensor:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            flipped = bool(torch.rand([1]) > 0.5)  # eta's only draw, after its deterministic rectangles
            torch.manual_seed(0)
            delta = SquareAttack.eta(ref, s)
        return delta.T if flipped else delta

    class Scripted(SquareAttack):
        def __init__(self, ints: list[int], choices: list[torch.Tensor], transposes: list[bool], **kw: Any):
            super().__init__(**kw)
            self.ints, self.choices, self.transposes = iter(ints), iter(choices), iter(transposes)

        def random_int(self, low=0, high=1, shape=(1,)):  # noqa: B008 - the reference's signature
            v = next(self.ints)
            assert low <= v < high, (low, v, high)
            return torch.tensor([v])

        def random_choice(self, shape):
            v = next(self.choices)
            assert list(v.shape) == list(shape), (v.shape, shape)
            return v

        def eta(self, s):
            d = eta_upright(self, s)
            return d.T if next(self.transposes) else d

    bumps = {str(s): eta_upright(SquareAttack(None, norm="L2", eps=1.0, device="cpu"), s).tolist()
             for s in range(1, 12)}
    g = torch.Generator().manual_seed(SEED + 1)
    n, c, h = 2, 2, 11  # init tiles of side 11 // 5 = 2 from 0; step windows of side 5 at p_init = 0.2
    eps, p_init = 0.5, 0.2
    x = 0.2 + 0.6 * torch.rand(n, c, h, h, generator=g, dtype=torch.float64)
    tiles = (h // (h // 5)) ** 2
    init_signs = (torch.randint(0, 2, (tiles, n, c, 1, 1), generator=g) * 2 - 1).double()
    init_transposes = torch.randint(0, 2, (tiles,), generator=g).bool().tolist()
    cases, inits = [], []
    for corners, transpose in (([1, 4, 3, 2], False), ([1, 4, 3, 2], True), ([5, 0, 5, 0], False)):
        step_signs = (torch.randint(0, 2, (1, n, c, 1, 1), generator=g) * 2 - 1).double()
        ref = Scripted(corners, [*init_signs, *step_signs], [*init_transposes, transpose], predict=None,
                       norm="L2", n_queries=1, eps=eps, p_init=p_init, device="cpu")
        recorder = Recorder(nn.Identity())
        ref.predict = lambda z: torch.stack([torch.full((z.shape[0],), 5.0, dtype=z.dtype),  # noqa: B023
                                             0 * recorder(z).flatten(1)[:, 0]], dim=1)
        ref.init_hyperparam(x)
        ref.attack_single_run(x, torch.zeros(n, dtype=torch.long))
        init, candidate = recorder.inputs
        inits.append(init)
        cases.append({"corners": corners, "transpose": transpose, "signs": step_signs[0].flatten(1).tolist(),
                      "candidate": candidate.tolist()})
    assert all(torch.equal(init, inits[0]) for init in inits)  # the same scripted start in every case
    return {
        "reference": "pyautoattack 0.2.0 SquareAttack(norm='L2'): eta(s) with its random transpose undone; "
                     "attack_single_run(n_queries=1) with random_int / random_choice / eta's transpose scripted",
        "bumps": bumps,
        "config": {"eps": eps, "p_init": p_init, "side": 5, "init_side": h // 5},
        "x": x.tolist(), "init_signs": init_signs.flatten(2).tolist(), "init_transposes": init_transposes,
        "init": inits[0].tolist(), "cases": cases,
    }


def generate() -> dict[str, Any]:
    torch.manual_seed(0)
    case = build_case()
    results: dict[str, Any] = {}
    results.update(apgd_cases(case))
    results.update(pgd_fgsm_cases(case))
    results.update(foolbox_cases(case))
    results.update(fab_cases(case))
    results["square_schedule"] = square_schedule()
    results["square_l2"] = square_l2()
    results.update(cw_cases(case))
    results.update(fmn_cases(case))
    return {"case": case, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="recompute and compare with the stored files")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    generated = generate()
    versions = _versions()
    if args.check:
        stored = load_file(CASE_FILE)
        same = all(torch.equal(stored[k], v) for k, v in generated["case"].items())
        for name, data in generated["results"].items():
            on_disk = json.loads((GOLDEN / f"{name}.json").read_text())
            on_disk.pop("versions", None)
            same &= on_disk == json.loads(json.dumps(data))
            print(f"{name}: {'same' if on_disk == json.loads(json.dumps(data)) else 'DIFFERS'}")
        return 0 if same else 1
    GOLDEN.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in generated["case"].items()}, CASE_FILE)
    for name, data in generated["results"].items():
        (GOLDEN / f"{name}.json").write_text(json.dumps({**data, "versions": versions}, indent=None) + "\n")
        print(f"wrote {GOLDEN / name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
