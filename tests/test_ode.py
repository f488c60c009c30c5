"""Tests for the neural-ODE models (ODENet, TisODE, the CNN baseline), feature denoising, input
randomization on them, and Gaussian-noise augmentation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustlab.attacks.noise import add_gaussian_noise, random_gaussian_noise
from robustlab.errors import RobustlabError
from robustlab.models import (
    ModelCard,
    RandomResizePad,
    build_model,
    load_model,
    save_model,
)
from robustlab.models.denoise import DENOISE_VARIANTS, DenoisingBlock
from robustlab.models.ode import (
    ODEBlock,
    ResidualBlock,
    TimeDependentDynamics,
    TimeInvariantDynamics,
    TisODE,
    logits_and_steady_state,
    odeint,
)

pytestmark = pytest.mark.usefixtures("single_thread")

DIGITS = (1, 8, 8)
MNIST = (1, 28, 28)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _Linear(nn.Module):
    """dz/dt = rate * z, time-invariant: z(t) = z0 exp(rate t), integral of |f| known in closed form."""

    time_dependent = False

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, t, z):
        return self.rate * z


class _Zero(nn.Module):
    time_dependent = False

    def forward(self, t, z):
        return torch.zeros_like(z)


# -- solvers ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_zero_dynamics_is_the_identity(solver):
    z = torch.randn(3, 4, 5, 5, generator=_gen())
    block = ODEBlock(_Zero(), solver=solver, step_size=0.1)
    assert torch.equal(block(z), z)


def test_solvers_match_the_closed_form_with_their_order():
    z0 = torch.randn(2, 3, generator=_gen(), dtype=torch.float64)
    exact = z0 * math.exp(-1.0)
    error = {}
    for solver in ("euler", "rk4"):
        for h in (0.1, 0.05):
            out = odeint(_Linear(-1.0), z0, 0.0, 1.0, solver=solver, step_size=h)
            error[solver, h] = float((out - exact).abs().max())
    # Euler is first order (halving h halves the error), RK4 fourth order (divides it by 16).
    assert error["euler", 0.05] / error["euler", 0.1] == pytest.approx(0.5, abs=0.05)
    assert error["rk4", 0.05] / error["rk4", 0.1] == pytest.approx(1 / 16, rel=0.1)
    assert error["rk4", 0.1] < 1e-5 < error["euler", 0.1]


def test_step_count_follows_step_size_and_uneven_intervals_are_covered_exactly():
    calls = []

    def f(t, z):
        calls.append(t)
        return torch.ones_like(z)

    z = torch.zeros(1)
    assert float(odeint(f, z, 0.0, 0.9, step_size=0.05)) == pytest.approx(0.9)
    assert len(calls) == 18  # 0.9 / 0.05 is 18.000000000000004 in floats: no extra step
    calls.clear()
    assert float(odeint(f, z, 0.0, 1.0, step_size=0.3)) == pytest.approx(1.0)
    assert len(calls) == 4 and calls[-1] == pytest.approx(0.75)


def test_euler_with_a_tiny_step_matches_rk4_on_odenet_dynamics():
    torch.manual_seed(0)
    dynamics = TimeDependentDynamics(4).double()
    z0 = torch.randn(2, 4, 5, 5, generator=_gen(), dtype=torch.float64)
    with torch.no_grad():
        rk4 = odeint(dynamics, z0, 0.0, 1.0, solver="rk4", step_size=0.1)
        euler = odeint(dynamics, z0, 0.0, 1.0, solver="euler", step_size=1e-3)
        coarse = odeint(dynamics, z0, 0.0, 1.0, solver="euler", step_size=0.25)
    assert (rk4 - z0).abs().max() > 0.1  # the dynamics move the state
    assert (euler - rk4).abs().max() < 5e-3
    assert (coarse - rk4).abs().max() > 10 * (euler - rk4).abs().max()


def test_dopri5_matches_fixed_step_solvers_when_available():
    pytest.importorskip("torchdiffeq")
    z0 = torch.randn(2, 3, generator=_gen(), dtype=torch.float64)
    out = odeint(_Linear(-1.0), z0, 0.0, 1.0, solver="dopri5", rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(out, z0 * math.exp(-1.0), rtol=1e-6, atol=1e-6)


def test_torchdiffeq_options_without_torchdiffeq_are_a_clear_error():
    try:
        import torchdiffeq  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torchdiffeq is installed")
    for kwargs in ({"solver": "dopri5"}, {"adjoint": True}):
        with pytest.raises(RobustlabError, match="torchdiffeq"):
            build_model("odenet", input_shape=DIGITS, num_classes=10, channels=4, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"solver": "midpoint"}, "unknown ODE solver"),
    ({"step_size": 0.0}, "step_size"),
    ({"t_end": -1.0}, "t_end"),
    ({"steady_start": 1.2}, "steady-state window"),
    ({"steady_end": 0.95}, "steady-state window"),
    ({"denoise": "median"}, "denoise"),
    ({"denoise": "mean", "denoise_after": ["fc"]}, "denoise_after"),
    ({"channels": 0}, "channels"),
])
def test_bad_options_are_clear_errors(kwargs, match):
    with pytest.raises(RobustlabError, match=match):
        build_model("tisode", input_shape=DIGITS, num_classes=10, **kwargs)


def test_too_small_input_is_an_error():
    with pytest.raises(RobustlabError, match="too small"):
        build_model("odenet", input_shape=(1, 3, 3), num_classes=10)
    build_model("odenet", input_shape=(1, 4, 4), num_classes=10, channels=4)


# -- TisODE and the steady-state term -------------------------------------------------------------------------
def test_tisode_dynamics_have_no_time_input_and_odenet_dynamics_do():
    torch.manual_seed(0)
    z = torch.randn(2, 8, 4, 4, generator=_gen())
    invariant, dependent = TimeInvariantDynamics(8), TimeDependentDynamics(8)
    assert invariant.conv1.in_channels == 8 and invariant.conv2.in_channels == 8
    assert torch.equal(invariant(0.0, z), invariant(3.7, z))
    assert not torch.allclose(dependent(0.0, z), dependent(3.7, z))
    model = build_model("tisode", input_shape=DIGITS, num_classes=10, channels=8)
    assert isinstance(model.block.dynamics, TimeInvariantDynamics)
    assert not any(isinstance(m, TimeDependentDynamics) for m in model.modules())


def test_steady_state_term_is_zero_for_stationary_dynamics():
    block = ODEBlock(_Zero(), t_end=1.0, step_size=0.05, steady_start=0.9, steady_end=1.5)
    z = torch.randn(3, 2, 4, 4, generator=_gen())
    out, penalty = block.steady_state(z)
    assert torch.equal(out, z)
    assert penalty.shape == (3,) and torch.equal(penalty, torch.zeros(3))


def test_steady_state_term_is_the_integral_of_the_absolute_dynamics():
    # dz/dt = -z: |f(z(t))| = |z0| e^{-t}, integral over [t1, t2] = |z0| (e^{-t1} - e^{-t2}).
    block = ODEBlock(_Linear(-1.0), t_end=1.0, step_size=1e-3, steady_start=0.9, steady_end=1.5).double()
    z = torch.randn(3, 2, 4, 4, generator=_gen(), dtype=torch.float64)
    out, penalty = block.steady_state(z)
    expected = z.abs().flatten(1).mean(1) * (math.exp(-0.9) - math.exp(-1.5))
    torch.testing.assert_close(penalty, expected, rtol=2e-3, atol=0)
    torch.testing.assert_close(out, block(z), rtol=1e-9, atol=1e-12)


def test_tisode_penalty_is_positive_differentiable_and_leaves_predictions_unchanged():
    torch.manual_seed(0)
    model = TisODE(DIGITS, 10, channels=8)
    x = torch.rand(4, *DIGITS, generator=_gen())
    logits, penalty = logits_and_steady_state(model, x)
    torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-6)
    assert penalty.shape == (4,) and bool((penalty > 0).all())
    torch.testing.assert_close(logits_and_steady_state(model, x)[1], penalty)  # the same on a second call
    penalty.sum().backward()
    assert model.block.dynamics.conv1.weight.grad.abs().sum() > 0
    assert model.block._steady_sink is None  # the call left nothing behind


def test_steady_state_through_wrappers_and_only_for_tisode():
    x = torch.rand(2, *DIGITS, generator=_gen())
    wrapped = build_model("tisode", input_shape=DIGITS, num_classes=10, channels=8, normalize=([0.5], [0.5]),
                          input_randomization=True, randomization_seed=0)
    logits, penalty = logits_and_steady_state(wrapped, x)
    assert logits.shape == (2, 10) and bool((penalty > 0).all())
    with pytest.raises(RobustlabError, match="no TisODE block"):
        logits_and_steady_state(build_model("odenet", input_shape=DIGITS, num_classes=10, channels=8), x)


# -- architectures --------------------------------------------------------------------------------------------
def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_paper_and_each_other():
    counts = {name: _count(build_model(name, input_shape=MNIST, num_classes=10))
              for name in ("ode-cnn", "odenet", "tisode")}
    stem = (1 * 64 * 9 + 64) + 128 + (64 * 64 * 16 + 64) + 128
    head = 64 * 10 + 10
    residual = 2 * 64 * 64 * 9 + 2 * 128
    assert counts["ode-cnn"] == counts["tisode"] == stem + residual + head == 141_130
    assert counts["odenet"] == stem + 2 * (65 * 64 * 9 + 64) + 2 * 128 + head == 142_410
    assert max(counts.values()) / min(counts.values()) < 1.15


def _subset(digits, n: int = 64):
    x_train, y_train, _, _ = digits
    return x_train[:n], y_train[:n]


def _loss(model: nn.Module, x, y, steady: bool) -> torch.Tensor:
    if steady:
        logits, penalty = logits_and_steady_state(model, x)
        return F.cross_entropy(logits, y) + 0.01 * penalty.mean()
    return F.cross_entropy(model(x), y)


def _reseed(model: nn.Module, seed: int) -> None:
    for module in model.modules():
        if isinstance(module, RandomResizePad):
            module.generator = _gen(seed)


ARCHITECTURES = [
    ("ode-cnn", {}),
    ("odenet", {}),
    ("tisode", {}),
    ("ode-cnn", {"denoise": "nonlocal-gaussian"}),
    ("tisode", {"denoise": "nonlocal-embedded-gaussian", "denoise_after": ["stem", "block"]}),
    ("odenet", {"denoise": "mean", "denoise_after": ["block"]}),
    ("ode-cnn", {"input_randomization": True, "randomization_seed": 3}),
    ("tisode", {"input_randomization": True, "randomization_seed": 3}),
]


@pytest.mark.parametrize("name, options", ARCHITECTURES, ids=[f"{n}-{'-'.join(o) or 'plain'}" for n, o in ARCHITECTURES])
def test_each_architecture_trains_and_round_trips(name, options, digits, tmp_path):
    x, y = _subset(digits)
    model = build_model(name, input_shape=DIGITS, num_classes=10, channels=16, seed=0, **options)
    steady = name == "tisode"
    _reseed(model, 0)
    with torch.no_grad():
        before = float(_loss(model, x, y, steady))
    block = next(m for m in model.modules() if isinstance(m, (ODEBlock, ResidualBlock)))
    initial = [p.detach().clone() for p in block.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(15):
        optimizer.zero_grad()
        _loss(model, x, y, steady).backward()
        optimizer.step()
    model.eval()
    _reseed(model, 0)
    with torch.no_grad():
        after = float(_loss(model, x, y, steady))
    # GroupNorm on 3x3 feature maps learns slowly; 15 full-batch steps lower the loss by 0.2-0.5.
    assert after < before - 0.1, (before, after)
    assert all(not torch.equal(p, q) for p, q in zip(block.parameters(), initial))  # gradients reach the block

    card = ModelCard(architecture=name, arguments={"input_shape": list(DIGITS), "num_classes": 10, "channels": 16,
                                                   **options})
    save_model(model, tmp_path / "m", card)
    loaded, _ = load_model(tmp_path / "m")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    _reseed(model, 1)
    _reseed(loaded, 1)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("name", ["ode-cnn", "odenet", "tisode"])
def test_forward_on_mnist_shapes(name):
    model = build_model(name, input_shape=MNIST, num_classes=7, channels=8).eval()
    with torch.no_grad():
        out = model(torch.rand(2, *MNIST, generator=_gen()))
    assert out.shape == (2, 7) and bool(torch.isfinite(out).all())


def test_input_randomization_varies_with_the_generator_and_reproduces_with_a_fixed_one():
    model = build_model("tisode", input_shape=DIGITS, num_classes=10, channels=8, seed=0,
                        input_randomization=True).eval()
    assert isinstance(model, RandomResizePad)
    x = torch.rand(4, *DIGITS, generator=_gen())
    outputs = []
    for seed in (0, 0, 1):
        model.generator = _gen(seed)
        with torch.no_grad():
            outputs.append(model(x))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.allclose(outputs[0], outputs[2])


# -- feature denoising ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", DENOISE_VARIANTS)
@pytest.mark.parametrize("norm", ["group", "batch", "none"])
def test_denoising_block_preserves_shape_and_starts_as_the_identity(variant, norm):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 6, generator=_gen())
    block = DenoisingBlock(8, variant=variant, norm=norm)
    assert block(x).shape == x.shape
    assert torch.equal(block.eval()(x), x)
    moved = DenoisingBlock(8, variant=variant, norm=norm, zero_init=False).eval()
    assert not torch.allclose(moved(x), x)


def test_denoising_operations_match_their_definitions():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 5, generator=_gen(), dtype=torch.float64)
    features = x.flatten(2)  # [N, C, HW]
    gram = torch.einsum("nci,ncj->nij", features, features)
    weights = {
        "nonlocal-gaussian": torch.softmax(gram / math.sqrt(4), dim=-1),
        "nonlocal-dot": gram / 15,
    }
    for variant, w in weights.items():
        expected = torch.einsum("nij,ncj->nci", w, features).reshape(x.shape)
        torch.testing.assert_close(DenoisingBlock(4, variant=variant).double().denoise(x), expected)
    block = DenoisingBlock(4, variant="nonlocal-embedded-gaussian").double()
    theta, phi = block.theta(x).flatten(2), block.phi(x).flatten(2)
    w = torch.softmax(torch.einsum("nci,ncj->nij", theta, phi) / math.sqrt(2), dim=-1)
    torch.testing.assert_close(block.denoise(x), torch.einsum("nij,ncj->nci", w, features).reshape(x.shape))
    mean = DenoisingBlock(4, variant="mean").double().denoise(x)
    torch.testing.assert_close(mean[:, :, 1, 1], x[:, :, 0:3, 0:3].mean(dim=(2, 3)))
    torch.testing.assert_close(mean[:, :, 0, 0], x[:, :, 0:2, 0:2].mean(dim=(2, 3)))


def test_denoising_block_rejects_bad_options():
    with pytest.raises(RobustlabError, match="variant"):
        DenoisingBlock(8, variant="bilateral")
    with pytest.raises(RobustlabError, match="norm"):
        DenoisingBlock(8, norm="layer")
    with pytest.raises(RobustlabError, match="feature maps"):
        DenoisingBlock(8)(torch.zeros(2, 8))


# -- Gaussian noise ---------------------------------------------------------------------------------------------
def test_gaussian_noise_is_on_the_255_scale_and_clamped():
    x = torch.full((200, 1, 8, 8), 0.5)
    small = add_gaussian_noise(x, 10.0, generator=_gen())
    assert float((small - x).std()) == pytest.approx(10 / 255, rel=0.05)
    large = add_gaussian_noise(x, 100.0, generator=_gen())
    assert float(large.min()) == 0.0 and float(large.max()) == 1.0
    assert float((large - x).std()) < 100 / 255  # clamping shrinks it
    per_sample = add_gaussian_noise(x[:2], torch.tensor([0.0, 50.0]), generator=_gen())
    assert torch.equal(per_sample[0], x[0]) and not torch.equal(per_sample[1], x[1])


def test_random_gaussian_noise_augments_about_half_the_samples_reproducibly():
    x = torch.full((400, 1, 16, 16), 0.5)
    out = random_gaussian_noise(x, generator=_gen(0))
    assert torch.equal(out, random_gaussian_noise(x, generator=_gen(0)))
    changed = (out != x).flatten(1).any(1)
    assert 0.4 < float(changed.float().mean()) < 0.6
    spread = (out - x)[changed].flatten(1).std(1)
    # Per-sample noise levels cluster around 50, 75 and 100 (before clamping shrinks the largest).
    assert float(spread.min()) > 40 / 255 and float(spread.max()) < 105 / 255
    assert bool(((out >= 0) & (out <= 1)).all())
    with pytest.raises(RobustlabError):
        random_gaussian_noise(x, sigmas=())


# --- neural SDE (the random self-ensemble as an SDE) ----------------------------------------------------


class _Decay(nn.Module):
    def forward(self, t, z):
        return -z + t


@pytest.mark.parametrize("kind", ["additive", "multiplicative"])
def test_sde_block_is_euler_maruyama_with_its_own_generator(kind):
    from robustlab.models.ode import ODEBlock

    z0 = torch.rand(3, 2, generator=torch.Generator().manual_seed(1)) + 0.5
    block = ODEBlock(_Decay(), t_end=1.0, step_size=0.25, diffusion=0.3, diffusion_kind=kind,
                     generator=torch.Generator().manual_seed(5))
    state = torch.random.get_rng_state()
    out = block(z0)
    assert torch.equal(state, torch.random.get_rng_state())
    noise = torch.Generator().manual_seed(5)
    z = z0
    for k in range(4):
        eps = torch.randn(z.shape, generator=noise)
        g = eps if kind == "additive" else z * eps
        z = z + 0.25 * (-z + k * 0.25) + 0.3 * math.sqrt(0.25) * g
    assert torch.allclose(out, z, atol=1e-6)
    assert block.stochastic and not torch.equal(block(z0), out)  # fresh noise on every forward
    assert not ODEBlock(_Decay()).stochastic


def test_odenet_with_diffusion_is_random_and_rebuilt_from_its_seed():
    from robustlab.evaluation import diagnose
    from robustlab.threat import Linf

    arguments = {"input_shape": (1, 8, 8), "num_classes": 10, "channels": 4, "diffusion": 0.5, "diffusion_seed": 3}
    a, b = (build_model("odenet", **arguments, seed=0).eval() for _ in range(2))
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    y = torch.zeros(4, dtype=torch.int64)
    assert diagnose(a, x, y, threat=Linf(eps=0.1), checks=("stochastic",))["stochastic"].verdict == "warn"
    with pytest.raises(RobustlabError, match="Euler-Maruyama"):
        build_model("odenet", **{**arguments, "solver": "rk4"})
    with pytest.raises(RobustlabError, match="diffusion_kind"):
        build_model("odenet", **{**arguments, "diffusion_kind": "pink"})
