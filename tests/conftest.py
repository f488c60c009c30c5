"""Shared fixtures: scikit-learn's 8x8 digits (no download) and a small non-robust model on them.

Both are session-scoped so that every test file can reuse them at no extra cost. Tests must not
modify them in place (attacks restore model state by contract; tests that change the model
should build their own).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from torch import nn

DIGITS_SPLIT_SEED = 0
DIGITS_TRAIN_SIZE = 1400


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: sklearn digits scaled to ``[0, 1]`` (values / 16),
    ``x`` as float32 ``[N, 1, 8, 8]``, ``y`` as int64 ``[N]``; a fixed 1400/397 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    train, test = perm[:DIGITS_TRAIN_SIZE], perm[DIGITS_TRAIN_SIZE:]
    return x[train], y[train], x[test], y[test]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads, restoring the previous number afterwards.

    The tensors in these tests are tiny, so one thread is as fast as several on an idle machine,
    and on a busy one it avoids OpenMP's spin-waiting, which slows small ops down tenfold."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_digits_mlp(x_train: torch.Tensor, y_train: torch.Tensor, *, seed: int = 0, epochs: int = 30) -> nn.Module:
    """A 64-128-10 ReLU MLP trained with Adam on clean data (about 97% test accuracy, not robust).

    Deterministic: weights are initialised under a forked global RNG (the caller's global RNG
    state is left untouched) and batches are drawn from a local generator.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(seed)
    n = x_train.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order)
        for start in range(0, n, 50):
            idx = perm[start : start + 50]
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="session")
def digits_mlp(digits) -> nn.Module:
    """A clean-trained (non-robust) MLP on :func:`digits`, in eval mode; test accuracy > 90%."""
    x_train, y_train, _, _ = digits
    with torch_threads(1):
        return train_digits_mlp(x_train, y_train)


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Module-scoped :func:`torch_threads` (1): use it with ``pytestmark`` or ``autouse`` in test
    files whose tensors are all small."""
    with torch_threads(1):
        yield


def linear_two_class(dim: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor, float]:
    """A 2-class linear model whose logit difference is ``z_1 - z_0 = w . x + c`` (w ~ N(0, I))."""
    w = torch.randn(dim, generator=torch.Generator().manual_seed(seed))
    c = 0.3
    model = nn.Linear(dim, 2)
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros(dim), w]))
        model.bias.copy_(torch.tensor([0.0, c]))
    return model, w, c


def ramp3() -> nn.Module:
    """One input in [0, 1], three classes along it: with u = 10 (x - 0.5) the logits are
    (-u, 0.2, u), so class 0 wins for u < -0.2, class 1 only for |u| < 0.2 and class 2 for
    u > 0.2; an L∞ step of 0.1 moves u by 1."""
    model = nn.Linear(1, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-10.0], [0.0], [10.0]]))
        model.bias.copy_(torch.tensor([5.0, 0.2, -5.0]))
    return model


class InputRecorder(nn.Module):
    """Wraps a model and keeps a detached copy of every input it is called on (the iterates an
    attack evaluates), for tests that compare them with a definition or a reference."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.model(x)



def tanh_net(seed: int = 0, d: int = 6, k: int = 4) -> nn.Module:
    """A fixed smooth float64 network ``d -> 12 (tanh) -> k`` with N(0, 1) weights drawn from
    ``seed``: attacks that linearise it (DeepFool, FAB) need several steps, and tests replay them."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, 12), nn.Tanh(), nn.Linear(12, k)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return net.eval()


def unit_box_inputs(seed: int = 1, n: int = 8, d: int = 6) -> torch.Tensor:
    """``n`` float64 points in ``[0, 1]^d``, some with a coordinate on a face of the box."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    x[::3, 0] = 0.0
    x[1::3, 1] = 1.0
    return x


def linear_model(weight: list[list[float]], bias: list[float]) -> nn.Module:
    """A float64 ``nn.Linear`` with the given weight rows (one per class) and biases."""
    model = nn.Linear(len(weight[0]), len(weight)).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(weight, dtype=torch.float64))
        model.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return model


def random_mlp(features: int, classes: int = 3, seed: int = 0, scale: float = 2.0) -> nn.Module:
    """A float64 MLP ``features -> 10 (tanh) -> classes`` with N(0, scale^2) weights drawn from
    ``seed``, in eval mode: the model of the attacks' sample-by-sample replays."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, 10), nn.Tanh(), nn.Linear(10, classes)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model.eval()
