"""Certification: soundness by dense sampling, exactness on linear models, CROWN vs IBP, MILP
against attacks and bound propagation, the bracket, bad input."""

from __future__ import annotations

import argparse
import json
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustlab.attacks import build_attack
from robustlab.certify import CROWN, CROWNIBP, IBP, AlphaCROWN, certified_radius
from robustlab.certify.bracket import bracket
from robustlab.certify.cli import add_certify_parser, read_bracket
from robustlab.certify.milp import MILPResult, MILPVerifier
from robustlab.errors import RobustlabError
from robustlab.io import save_document
from robustlab.models import MLP, Normalize, PreActBlock
from robustlab.threat import L1, L2, Linf

pytestmark = pytest.mark.usefixtures("single_thread")

UNBOUNDED = Linf(math.inf)

CERTIFIERS = {
    "ibp": IBP(),
    "crown": CROWN(with_ibp=False),
    "crown-ibp": CROWNIBP(with_ibp=False),
    "alpha-crown": AlphaCROWN(alpha_steps=10, with_ibp=False),
}


def _seeded(build, seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build().eval()


def small_cnn() -> nn.Module:
    def build():
        model = nn.Sequential(
            Normalize([0.4], [0.3]), nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3), nn.ReLU(), nn.AvgPool2d(2, stride=1), nn.Flatten(), nn.Linear(6, 8), nn.ReLU(),
            nn.Linear(8, 3),
        )
        model[2].running_mean.uniform_(-0.2, 0.2)
        model[2].running_var.uniform_(0.5, 2.0)
        return model
    return _seeded(build)


class ResidualNet(nn.Sequential):
    def __init__(self):
        super().__init__(OrderedDict([
            ("conv", nn.Conv2d(1, 4, 3, padding=1)),
            ("block1", PreActBlock(4, 4)),
            ("block2", PreActBlock(4, 6, stride=2)),
            ("relu", nn.ReLU()),
            ("flatten", nn.Flatten()),
            ("fc", nn.Linear(6 * 4 * 4, 3)),
        ]))


def residual_net() -> nn.Module:
    def build():
        model = ResidualNet()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        return model
    return _seeded(build, 1)


def random_mlp(seed=0) -> nn.Module:
    return _seeded(lambda: MLP(64, (20, 20), 4), seed)


# -- traced forms: custom forwards that no module walk could follow --------------------------


class CustomMLP(nn.Module):
    """view with a size() call, functional ReLU, the layers in a child, F.linear on a parameter."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 20), nn.ReLU())
        self.hidden = nn.Linear(20, 16)
        self.head_weight = nn.Parameter(torch.randn(4, 16) * 0.3)

    def forward(self, x):
        h = self.body(x.view(x.size(0), -1))
        return F.linear(torch.relu(self.hidden(h)), self.head_weight)


class NormalizedCNN(nn.Module):
    """Normalization in forward (x.sub(mean).div(std) on buffers), batch norm in eval mode,
    average pooling (module and functional), mean over the spatial dims."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.45]).view(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor([0.25]).view(1, 1, 1, 1))
        self.conv1 = nn.Conv2d(1, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.pool = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(5, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = x.sub(self.mean).div(self.std)
        x = self.pool(F.relu(self.bn(self.conv1(x))))
        x = F.relu(self.conv2(x))
        return self.fc(F.avg_pool2d(x, 2).mean((2, 3)))


class BranchNet(nn.Module):
    """Concatenation of two branches, a residual addition and a subtraction of branches, a
    normalization by a constant in forward, flatten via torch.flatten."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.left = nn.Conv2d(4, 3, 3, padding=1)
        self.right = nn.Conv2d(4, 1, 1)
        self.mix = nn.Conv2d(4, 4, 3, padding=1)
        self.a = nn.Linear(4 * 16, 10)
        self.b = nn.Linear(4 * 16, 10)
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        h = F.relu(self.stem((x - 0.5) / 0.3))
        branches = torch.cat([self.left(h), self.right(h)], dim=1)
        h = F.relu(branches) + h
        h = F.relu(self.mix(h))
        h = torch.flatten(F.avg_pool2d(h, 2), 1)
        return self.fc(F.relu(self.a(h) - self.b(h)))


class TangledNet(nn.Module):
    """Not series-parallel: ``a`` feeds both the sum ``c = a + b`` and the final sum."""

    def __init__(self):
        super().__init__()
        self.f = nn.Linear(64, 12)
        self.g = nn.Linear(64, 12)
        self.h = nn.Linear(12, 12)
        self.out = nn.Linear(12, 4)

    def forward(self, x):
        x = x.flatten(1)
        a = F.relu(self.f(x))
        c = a + F.relu(self.g(x))
        d = F.relu(self.h(a)) + c
        return self.out(d)


def _with_statistics(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model


def custom_mlp() -> nn.Module:
    return _seeded(CustomMLP, 2)


def normalized_cnn() -> nn.Module:
    return _seeded(lambda: _with_statistics(NormalizedCNN()), 3)


def branch_net() -> nn.Module:
    return _seeded(BranchNet, 4)


def tangled_net() -> nn.Module:
    return _seeded(TangledNet, 5)


TRACED = [custom_mlp, normalized_cnn, branch_net, tangled_net]


def _inputs(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g) * 0.8 + 0.1


def _margins(model, x, y):
    with torch.no_grad():
        z = model(x)
    return z.gather(1, y[:, None]) - z


def _vertices(x, eps, count, generator):
    signs = torch.randint(0, 2, (count, *x.shape), generator=generator).float() * 2 - 1
    return (x.unsqueeze(0) + eps * signs).clamp(0, 1).reshape(-1, *x.shape[1:])


# -- soundness -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CERTIFIERS))
@pytest.mark.parametrize("build", [random_mlp, small_cnn, residual_net, *TRACED],
                         ids=["mlp", "cnn", "resnet", "custom-mlp", "normalized-cnn", "branches", "tangled"])
def test_dense_sampling_never_leaves_the_bounds(name, build):
    model = build()
    x = _inputs()
    y = model(x).argmax(1)
    g = torch.Generator().manual_seed(0)
    for threat in (Linf(eps=0.03), L2(eps=0.2), L1(eps=0.5)):
        result = CERTIFIERS[name](model, x, y, threat=threat)
        reps = 300
        xs = threat.random_init(x.repeat(reps, 1, 1, 1), generator=g)
        if threat.norm == "Linf":
            xs = torch.cat([xs, _vertices(x, threat.eps, reps, g)])
        ys = y.repeat(xs.shape[0] // x.shape[0])
        bound = result.margins.repeat(xs.shape[0] // x.shape[0], 1)
        sampled = _margins(model, xs, ys)
        finite = torch.isfinite(bound)
        assert (sampled[finite] >= bound[finite] - 1e-5).all(), (name, threat)
        # Adversarial points found by PGD (on the margin) respect the bounds too.
        pgd = build_attack("pgd", steps=20, step_size=threat.eps / 4)
        adv = pgd(model, x, y, threat=threat, generator=g).x_adv
        assert (_margins(model, adv, y)[finite[: x.shape[0]]] >= result.margins[finite[: x.shape[0]]] - 1e-5).all()


def test_linear_model_bounds_equal_the_dual_norm_closed_form():
    model = _seeded(lambda: MLP(64, (), 4))
    x = _inputs(3)
    y = torch.tensor([0, 1, 3])
    w = model.fc1.weight
    with torch.no_grad():
        z = model(x)
        diff = w[y].unsqueeze(1) - w.unsqueeze(0)  # [N, K, D]
        for threat, dual in ((Linf(eps=0.05), 1), (L2(eps=0.3), 2), (L1(eps=0.5), math.inf)):
            expected = (z.gather(1, y[:, None]) - z) - threat.eps * torch.linalg.vector_norm(diff, ord=dual, dim=2)
            expected[torch.arange(3), y] = math.inf
            for certifier in (IBP(), CROWN(with_ibp=False)):
                got = certifier(model, x, y, threat=threat).margins
                assert torch.allclose(got, expected, atol=1e-5), (threat, certifier.method)


@pytest.mark.parametrize("build", [random_mlp, residual_net], ids=["mlp", "resnet"])
def test_crown_at_least_as_tight_as_ibp(build):
    model = build()
    x = _inputs(6)
    y = model(x).argmax(1)
    for eps in (0.01, 0.03):
        ibp = IBP()(model, x, y, threat=Linf(eps=eps)).margins
        crown = CROWN(with_ibp=False)(model, x, y, threat=Linf(eps=eps)).margins
        alpha = AlphaCROWN(alpha_steps=10, with_ibp=False)(model, x, y, threat=Linf(eps=eps)).margins
        finite = torch.isfinite(ibp)
        assert (crown[finite] >= ibp[finite] - 1e-5).all()
        assert (alpha[finite] >= crown[finite] - 1e-6).all()


@pytest.mark.parametrize("build", [small_cnn, residual_net], ids=["cnn", "resnet"])
def test_crown_in_memory_bounded_chunks_gives_the_bounds_of_one_batch(build, monkeypatch):
    # CROWN holds [samples, rows, features] back-substitutions (23 GB for 250 MNIST images on kw-small):
    # it cuts the batch to stay within _CROWN_MEMORY; per-sample bounds do not depend on the cut.
    from robustlab.certify import certifiers

    model = build()
    x = _inputs(5)
    y = model(x).argmax(1)
    threat = Linf(eps=0.02)
    chunks = []
    real = certifiers.crown_bounds
    monkeypatch.setattr(certifiers, "crown_bounds", lambda ops, w, b, spec, part, **kw: chunks.append(len(part.x))
                        or real(ops, w, b, spec, part, **kw))
    whole = [c(model, x, y, threat=threat).margins for c in (CROWN(), AlphaCROWN(alpha_steps=5))]
    assert chunks == [5, 5]  # small enough for one chunk each
    chunks.clear()
    monkeypatch.setattr(certifiers, "_CROWN_MEMORY", 1)  # one sample per chunk
    for certifier, expected in zip((CROWN(), AlphaCROWN(alpha_steps=5)), whole):
        torch.testing.assert_close(certifier(model, x, y, threat=threat).margins, expected, rtol=1e-6, atol=1e-6)
    assert chunks == [1] * 10
    prepared = certifiers.prepare(model, x[:1])
    per_sample = certifiers._crown_bytes_per_sample(prepared.ops, 10, "crown", 4)
    assert per_sample > certifiers._crown_bytes_per_sample(prepared.ops, 10, "ibp", 4) > 0


def test_crown_certifies_more_than_ibp_and_never_broken_by_pgd(digits, digits_mlp):
    _, _, x, y = digits
    x, y = x[:100], y[:100]
    for eps in (0.01, 0.02):
        threat = Linf(eps=eps)
        ibp, crown = IBP()(digits_mlp, x, y, threat=threat), CROWN()(digits_mlp, x, y, threat=threat)
        assert crown.certified_accuracy >= ibp.certified_accuracy
        assert (ibp.certified <= crown.certified).all()
        pgd = build_attack("pgd", steps=20, restarts=2)
        broken = pgd(digits_mlp, x, y, threat=threat, generator=torch.Generator().manual_seed(0)).success
        assert not (broken & crown.certified).any()
        assert crown.certified.sum() > 0


def test_state_restored_and_result_fields(digits_mlp):
    x = _inputs(5)
    digits_mlp.train()
    try:
        result = CROWN()(digits_mlp, x, torch.zeros(5, dtype=torch.long), threat=Linf(eps=0.01))
        assert digits_mlp.training
    finally:
        digits_mlp.eval()
    assert result.margins.shape == (5, 10) and result.certified.dtype == torch.bool
    assert all(p.requires_grad for p in digits_mlp.parameters())


# -- bad input -----------------------------------------------------------------------------


def test_unsupported_layer_is_named():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 3))
    with pytest.raises(RobustlabError, match=r"layer '2' \(Tanh\).*supported:.*ReLU"):
        IBP()(model, _inputs(1), torch.tensor([0]), threat=Linf(eps=0.1))


def test_first_unsupported_operation_in_a_forward_is_named_with_its_line():
    class Smooth(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 3)

        def forward(self, x):
            return torch.sigmoid(self.fc(torch.tanh(x.flatten(1))))

    with pytest.raises(RobustlabError, match=r"torch\.tanh.*test_certify\.py.*line \d+") as error:
        CROWN()(Smooth(), _inputs(1), torch.tensor([0]), threat=Linf(eps=0.1))
    assert "sigmoid" not in str(error.value).split("supported:")[0]


def test_products_of_input_dependent_tensors_and_control_flow_are_refused():
    class Gated(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3] * x.flatten(1)[:, 3:6]

    class Branching(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3] if x.sum() > 0 else -x.flatten(1)[:, :3]

    with pytest.raises(RobustlabError, match="several input-dependent tensors"):
        IBP()(Gated(), _inputs(1), torch.tensor([0]), threat=Linf(eps=0.1))
    with pytest.raises(RobustlabError, match="torch.fx cannot trace"):
        IBP()(Branching(), _inputs(1), torch.tensor([0]), threat=Linf(eps=0.1))


def test_traced_forward_gives_the_bounds_of_its_sequential_twin():
    """Tracing is exact: a custom forward and the nn.Sequential computing the same function get
    the same bounds, from every certifier."""
    custom = custom_mlp()
    twin = nn.Sequential(nn.Flatten(), custom.body[0], nn.ReLU(), custom.hidden, nn.ReLU(),
                         nn.Linear(16, 4, bias=False)).eval()
    with torch.no_grad():
        twin[5].weight.copy_(custom.head_weight)
    x = _inputs(5)
    y = custom(x).argmax(1)
    for certifier in CERTIFIERS.values():
        for threat in (Linf(eps=0.02), L2(eps=0.2)):
            got, expected = certifier(custom, x, y, threat=threat), certifier(twin, x, y, threat=threat)
            assert torch.allclose(got.margins, expected.margins, atol=1e-5, rtol=1e-5)


def test_milp_on_a_custom_forward_equals_its_sequential_twin(digits, tiny_mlp):
    class Custom(nn.Module):
        def __init__(self, mlp):
            super().__init__()
            self.mlp = mlp
            self.register_buffer("mean", torch.tensor(0.0))

        def forward(self, x):
            return self.mlp((x - self.mean).reshape(x.shape[0], -1))

    _, _, x, y = digits
    x, y = x[:2], y[:2]
    exact = MILPVerifier(time_limit=120).minimal_perturbation(tiny_mlp, x, y, threat=UNBOUNDED)
    traced = MILPVerifier(time_limit=120).minimal_perturbation(Custom(tiny_mlp).eval(), x, y, threat=UNBOUNDED)
    assert exact.status == traced.status == ["optimal", "optimal"]
    assert traced.lower == pytest.approx(exact.lower, rel=1e-6)


def test_milp_names_the_branching_it_cannot_encode():
    model = branch_net()
    with pytest.raises(RobustlabError, match=r"sum of branches at 'add'"):
        MILPVerifier().minimal_perturbation(model, _inputs(1), model(_inputs(1)).argmax(1), threat=UNBOUNDED)


def test_milp_rejects_max_pool():
    with pytest.raises(RobustlabError, match="affine layers and ReLU only"):
        MILPVerifier().minimal_perturbation(small_cnn(), _inputs(1), small_cnn()(_inputs(1)).argmax(1),
                                            threat=UNBOUNDED)


# -- exact MILP ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_mlp(digits):
    x_train, y_train, _, _ = digits
    model = _seeded(lambda: MLP(64, (16, 16), 10), 0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(15):
        perm = torch.randperm(x_train.shape[0], generator=order)
        for start in range(0, x_train.shape[0], 50):
            idx = perm[start:start + 50]
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def _attack_distance(attack, model, x, y, threat):
    result = attack(model, x, y, threat=threat)
    return torch.where(result.success, result.distance, torch.full_like(result.distance, math.inf))


def test_milp_minimal_linf_between_crown_and_attacks(digits, tiny_mlp):
    _, _, x, y = digits
    x, y = x[:6], y[:6]
    unbounded = Linf(eps=math.inf)
    fmn = _attack_distance(build_attack("fmn", steps=100), tiny_mlp, x, y, unbounded)
    deepfool = _attack_distance(build_attack("deepfool"), tiny_mlp, x, y, unbounded)
    upper = torch.minimum(fmn, deepfool)
    certified = certified_radius(CROWN(), tiny_mlp, x, y, threat=unbounded, eps_max=upper.clamp(max=1.0), steps=12)
    result = MILPVerifier(time_limit=60).minimal_perturbation(tiny_mlp, x, y, threat=unbounded, upper=upper,
                                                                lower=certified)
    for i in range(len(y)):
        if result.status[i] == "misclassified":
            continue
        assert result.status[i] == "optimal"
        exact = result.lower[i]
        assert exact <= fmn[i] + 1e-4 and exact <= deepfool[i] + 1e-4
        assert exact >= certified[i] - 1e-6
        point = result.counterexample[i]
        assert result.counterexample_ok[i] and int(tiny_mlp(point[None]).argmax()) != int(y[i])
        assert Linf(eps=exact * (1 + 1e-4) + 1e-6).contains(x[i:i + 1], point[None]).all()
    # Verification at eps agrees with the minimal distance on either side of it.
    i = next(i for i in range(len(y)) if result.status[i] == "optimal")
    verifier = MILPVerifier(time_limit=60)
    below = verifier.verify(tiny_mlp, x[i:i + 1], y[i:i + 1], threat=Linf(result.lower[i] * 0.97))
    above = verifier.verify(tiny_mlp, x[i:i + 1], y[i:i + 1], threat=Linf(result.lower[i] * 1.03))
    assert below.status == ["robust"] and below.upper[0] < 0
    assert above.status == ["not-robust"] and above.counterexample_ok == [True]
    assert int(tiny_mlp(above.counterexample[0][None]).argmax()) != int(y[i])


def test_milp_minimal_l1_below_attack(digits, tiny_mlp):
    _, _, x, y = digits
    x, y = x[10:12], y[10:12]
    fmn = _attack_distance(build_attack("fmn", steps=100), tiny_mlp, x, y, L1(eps=math.inf))
    result = MILPVerifier(time_limit=60).minimal_perturbation(tiny_mlp, x, y, threat=L1(math.inf), upper=fmn)
    for i in range(2):
        assert result.status[i] == "optimal"
        assert result.lower[i] <= fmn[i] + 1e-4
        assert result.counterexample_ok[i]


def test_milp_timeout_gives_an_interval_not_a_hang(digits, digits_mlp):
    _, _, x, y = digits
    result = MILPVerifier(time_limit=1e-3).minimal_perturbation(digits_mlp, x[:2], y[:2], threat=UNBOUNDED)
    for i in range(2):
        assert result.status[i] in ("timeout", "misclassified", "optimal")
        assert result.lower[i] <= result.upper[i]
    assert "timeout" in result.status


def test_bracket_is_consistent_and_renders(digits, tiny_mlp):
    _, _, x, y = digits
    table = bracket(tiny_mlp, x[20:23], y[20:23], threat=UNBOUNDED, time_limit=60, bisection_steps=10)
    assert len(table.rows) == 3 and table.summary["all_consistent"]
    for row in table.rows:
        if row["exact"] is not None:
            assert row["lower"] <= row["exact"] + 1e-4 <= row["upper"] + 2e-4
    assert "| index |" in table.markdown() and "median_upper_over_exact" in table.markdown()


def test_cli_parser_builds():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_certify_parser(sub)
    args = parser.parse_args(["certify", "--model", "m.safetensors", "--eps", "0.01,0.02", "--bracket", "5"])
    assert args.bracket == 5 and callable(args.func)


def test_certify_json_is_strict_and_reads_back_infinite_distances(digits, tiny_mlp, tmp_path):
    _, _, x, y = digits
    # Gaussian noise of sigma 1/255 never flips this model: the attack upper bound is infinite.
    table = bracket(tiny_mlp, x[20:21], y[20:21], threat=UNBOUNDED, attacks={"noise": build_attack("gaussian-noise", sigma=1.0)},
                    time_limit=0.5, bisection_steps=4)
    assert table.rows[0]["upper"] == math.inf and table.rows[0]["dist_noise"] == math.inf
    save_document(tmp_path / "bracket.json", "bracket", {"rows": table.rows, "summary": table.summary,
                                                         "nan": math.nan, "nested": [(-math.inf, 1.5)]})

    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    strict = json.loads((tmp_path / "bracket.json").read_text(), parse_constant=reject)
    assert strict["rows"][0]["upper"] is None and strict["nan"] is None and strict["nested"] == [[None, 1.5]]
    document = read_bracket(tmp_path / "bracket.json")
    row = document["rows"][0]
    assert row["upper"] == math.inf and row["dist_noise"] == math.inf
    assert row["lower"] == table.rows[0]["lower"] and row["milp_status"] == table.rows[0]["milp_status"]
    assert row["exact"] == table.rows[0]["exact"]  # None (unsolved) stays None, a solved value stays a number


@pytest.mark.parametrize("certifier", [IBP(), CROWN()])
def test_certifiers_refuse_x_of_another_dtype_and_inference_mode(certifier):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.full((2, 1, 2, 2), 0.5), torch.tensor([0, 1])
    with pytest.raises(RobustlabError, match="dtype torch.float64 but the model's parameters are torch.float32"):
        certifier(model, x.double(), y, threat=Linf(eps=0.1))
    with torch.inference_mode(), pytest.raises(RobustlabError, match="inference_mode"):
        certifier(model, x, y, threat=Linf(eps=0.1))
    assert certifier(model, x, y, threat=Linf(eps=0.1)).certified.shape == (2,)


def test_milp_is_a_certifier_agreeing_with_verify_and_never_looser_than_crown(digits, tiny_mlp):
    from robustlab.certify import CERTIFIERS, Certifier

    _, _, x, y = digits
    x, y, threat = x[:5], y[:5], Linf(eps=0.04)
    verifier = MILPVerifier(time_limit=60)
    assert isinstance(verifier, Certifier) and CERTIFIERS["milp"] is MILPVerifier
    result = verifier(tiny_mlp, x, y, threat=threat)
    statuses = result.extras["milp"]  # what verify() returns for these samples
    assert result.method == "milp" and result.margins.shape == (5, 10) and torch.equal(result.eps, torch.full((5,), 0.04))
    assert isinstance(statuses, MILPResult) and len(statuses.status) == 5
    assert result.certified.tolist() == [s == "robust" for s in statuses.status]
    assert result.clean_correct.tolist() == [s != "misclassified" for s in statuses.status]
    assert bool((result.certified == (result.margin > 0) & result.clean_correct).all())
    for i, status in enumerate(statuses.status):
        if status == "robust":  # every target solved: the smallest margin is minus verify's upper bound
            assert float(result.margin[i]) == pytest.approx(-statuses.upper[i], rel=1e-5, abs=1e-6)
    # Exact: a margin lower bound at least CROWN's (up to float32 vs float64), and certifies a superset.
    crown = CROWN()(tiny_mlp, x, y, threat=threat)
    finite = torch.isfinite(crown.margins) & torch.isfinite(result.margins)
    assert bool((result.margins[finite] >= crown.margins[finite] - 1e-4).all())
    assert bool((crown.certified <= result.certified).all())
    assert 0 < int(result.certified.sum()) < int(result.clean_correct.sum())  # some proved, some broken
    with pytest.raises(RobustlabError, match="Linf and L1"):
        verifier(tiny_mlp, x, y, threat=L2(eps=0.5))


def test_distance_outputs_take_an_unbounded_threat(digits, tiny_mlp):
    _, _, x, y = digits
    x, y = x[:2], y[:2]
    with pytest.raises(RobustlabError, match=r"unbounded: pass Linf\(math.inf"):
        MILPVerifier().minimal_perturbation(tiny_mlp, x, y, threat=Linf(0.1))
    with pytest.raises(RobustlabError, match=r"certified_radius .*not eps=0.1"):
        certified_radius(CROWN(), tiny_mlp, x, y, threat=Linf(0.1))
    with pytest.raises(RobustlabError, match="not the string 'Linf'"):
        bracket(tiny_mlp, x, y, threat="Linf")
