"""Defense-GAN (Samangouei, Kabkab & Chellappa, "Defense-GAN: Protecting Classifiers Against
Adversarial Attacks Using Generative Models", ICLR 2018), for images in ``[0, 1]``.

* :class:`GANGenerator` (:func:`build_generator`, saved by :func:`save_generator`): ``z [N, latent]
  -> images [N, C, H, W]`` in ``[0, 1]``. Layout ``"dcgan"`` is Samangouei et al.'s MNIST
  generator (``kabkabm/defensegan:models/dataset_models.py``, no batch norm): fc to ``4 x 4 x 4w``,
  ReLU, 5x5 stride-2 transposed convolution to ``2w``, ReLU, crop to 7x7, to ``w``, ReLU, to 1
  channel, sigmoid (28x28 grayscale only). Layout ``"mlp"``: two hidden layers of ``width``
  units (any image shape; the cheap test size). Train it with :func:`train_wgan_gp` (WGAN-GP,
  the paper's GAN: critic 3 x conv5 s2 + LeakyReLU 0.2 then fc, or an MLP for ``"mlp"``).
* :func:`project`: the Defense-GAN projection. ``R`` restarts ``z_0 ~ N(0, I / latent)`` drawn
  from a ``torch.Generator``; ``L`` steps of momentum gradient descent on the per-image mean
  squared error ``||G(z) - x||^2 / n`` (lr 10, x 0.1 after ``0.8 L``, momentum 0.7;
  ``defensegan/models/gan.py: reconstruct``); the restart with the smallest error wins.
* :class:`DefenseGAN` (defense ``"defense-gan"``): ``model(G(project(x)))``, an
  :class:`~robustlab.models.preprocessing.InputTransformDefense` whose transform is the
  projection. Its gradient is zero (the projection is an inner optimization that is not
  unrolled: Athalye et al. note that unrolling it makes gradients vanish or explode), so plain
  gradient attacks see nothing and the zero-gradient diagnostics fire; the random restarts make
  it stochastic (the stochastic diagnostics fire too). BPDA uses the identity.

Attack (Athalye, Carlini & Wagner, ICML 2018, §5.4): reparameterization
(:class:`~robustlab.attacks.composition.Reparameterization` with ``decoder = G``, ``encoder =
DefenseGAN.encode`` and ``classifier = model``) finds ``G(z_adv)`` near ``x`` that ``model``
misclassifies. An exact projection would return ``G(z_adv)`` itself (0% accuracy in principle);
the deployed projection is non-convex gradient descent from random restarts, which lands
elsewhere on the range of ``G``, so part of the attack fails (Athalye et al.: 55% at L2 0.005 on
MNIST). ``docs/defenses/defense-gan.md`` has the numbers measured here.

The card entry of a DefenseGAN holds ``gan``, the path of the generator's weights (written by
:func:`save_generator`; a relative path is resolved from the working directory), so
``load_model`` rebuilds classifier and generator.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robustlab.errors import RobustlabError
from robustlab.models.checkpoint import load_network, save_network
from robustlab.models.preprocessing import DEFENSES, InputTransformDefense
from robustlab.validate import is_int, is_number

__all__ = ["DefenseGAN", "GANGenerator", "build_generator", "load_generator", "project", "save_generator",
           "train_wgan_gp"]

LAYOUTS = ("dcgan", "mlp")


class GANGenerator(nn.Module):
    """See the module docstring. ``forward(z [N, latent]) -> [N, C, H, W]`` in ``[0, 1]``."""

    def __init__(self, image_shape: tuple[int, int, int], latent: int, layout: str, width: int):
        super().__init__()
        self.image_shape, self.latent, self.layout, self.width = tuple(image_shape), latent, layout, width
        if layout == "dcgan":
            self.fc = nn.Linear(latent, 4 * 4 * 4 * width)
            self.up1 = nn.ConvTranspose2d(4 * width, 2 * width, 5, stride=2, padding=2, output_padding=1)
            self.up2 = nn.ConvTranspose2d(2 * width, width, 5, stride=2, padding=2, output_padding=1)
            self.up3 = nn.ConvTranspose2d(width, 1, 5, stride=2, padding=2, output_padding=1)
        else:
            self.net = nn.Sequential(nn.Linear(latent, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                     nn.Linear(width, math.prod(self.image_shape)))

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent:
            raise RobustlabError(f"the generator takes latents [N, {self.latent}], got {tuple(z.shape)}")
        if self.layout == "mlp":
            return torch.sigmoid(self.net(z)).view(-1, *self.image_shape)
        h = F.relu(self.fc(z)).view(-1, 4 * self.width, 4, 4)
        h = F.relu(self.up1(h))[:, :, :7, :7]
        h = F.relu(self.up2(h))
        return torch.sigmoid(self.up3(h))


class _Critic(nn.Module):
    """WGAN-GP critic: 3 x (conv5 s2, LeakyReLU 0.2), fc -> 1 (``"dcgan"``), or an MLP."""

    def __init__(self, generator: GANGenerator):
        super().__init__()
        c, w = generator.image_shape[0], generator.width
        if generator.layout == "dcgan":
            self.net = nn.Sequential(
                nn.Conv2d(c, w, 5, stride=2, padding=2), nn.LeakyReLU(0.2),
                nn.Conv2d(w, 2 * w, 5, stride=2, padding=2), nn.LeakyReLU(0.2),
                nn.Conv2d(2 * w, 4 * w, 5, stride=2, padding=2), nn.LeakyReLU(0.2),
                nn.Flatten(), nn.Linear(4 * 4 * 4 * w, 1))
        else:
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(generator.image_shape), w), nn.LeakyReLU(0.2),
                                     nn.Linear(w, w), nn.LeakyReLU(0.2), nn.Linear(w, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)


def _positive_int(name: str, value: Any) -> int:
    if not is_int(value, 1):
        raise RobustlabError(f"{name} must be a positive integer, got {value!r}")
    return value


def build_generator(image_shape: Sequence[int] = (1, 28, 28), *, latent: int = 64,
                    layout: str = "dcgan", width: int = 32, seed: int | None = None) -> GANGenerator:
    """A generator for images of ``image_shape`` ``(C, H, W)``. ``layout="dcgan"`` (28x28
    grayscale; ``width`` is Samangouei et al.'s NET_DIM, 64 there, 32 in the CPU recipe of
    ``defenses-2.md`` §4(f), latent 128 there, 64 here) or ``"mlp"`` (any shape, ``width``
    hidden units). ``seed``: initialise from this seed on a forked global RNG (left as it was).
    Not in the model registry, whose architectures are classifiers."""
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise RobustlabError(f"image_shape must be (C, H, W) positive integers, got {image_shape!r}")
    _positive_int("latent", latent)
    _positive_int("width", width)
    if layout not in LAYOUTS:
        raise RobustlabError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "dcgan" and shape != (1, 28, 28):
        raise RobustlabError(f"the 'dcgan' generator makes 28x28 grayscale images (1, 28, 28), not {shape}; use "
                             "layout='mlp' for other shapes")
    if seed is None:
        return GANGenerator(shape, latent, layout, width)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return GANGenerator(shape, latent, layout, width)


def save_generator(net: GANGenerator, path: str | os.PathLike[str]) -> Path:
    """Write the weights and settings to ``path`` (a ``.safetensors`` file, settings in its
    metadata), atomically. Loading it never unpickles."""
    return save_network(net, path, "gan-generator", {"image_shape": ",".join(map(str, net.image_shape)),
                                                     "latent": str(net.latent), "layout": net.layout,
                                                     "width": str(net.width)})


def load_generator(path: str | os.PathLike[str]) -> GANGenerator:
    """The generator :func:`save_generator` wrote to ``path``, in eval mode."""
    def build(settings: dict[str, str]) -> GANGenerator:
        return build_generator(tuple(int(v) for v in settings["image_shape"].split(",")),
                               latent=int(settings["latent"]), layout=settings["layout"], width=int(settings["width"]))

    net = load_network(path, "gan-generator", build, what="GAN generator")
    assert isinstance(net, GANGenerator)
    return net


def train_wgan_gp(generator: GANGenerator, x: Tensor, *, iterations: int = 1000, critic_steps: int = 5,
                  batch_size: int = 50, lr: float = 1e-4, betas: tuple[float, float] = (0.5, 0.9),
                  gradient_penalty: float = 10.0, seed: int = 0) -> list[float]:
    """WGAN-GP (Gulrajani et al., 2017) on images ``x [N, C, H, W]`` in ``[0, 1]``, the paper's
    settings by default (5 critic steps per generator step, Adam 1e-4 with betas (0.5, 0.9),
    gradient penalty 10, batch 50; the paper runs 200,000 generator iterations). The critic is
    built here (seeded from ``seed``) and discarded. Batches, latents and interpolation weights
    come from a generator seeded with ``seed``. Returns the critic's Wasserstein estimate
    ``E[D(real)] - E[D(fake)]`` averaged over each block of 100 generator iterations.

    Cost per generator iteration: ``critic_steps`` critic steps (each a generator forward, three
    critic forwards and a double backward for the penalty) plus one generator step."""
    _positive_int("iterations", iterations)
    _positive_int("critic_steps", critic_steps)
    _positive_int("batch_size", batch_size)
    if x.dim() != 4 or tuple(x.shape[1:]) != generator.image_shape:
        raise RobustlabError(f"train_wgan_gp: images must be [N, {', '.join(map(str, generator.image_shape))}], got "
                             f"{tuple(x.shape)}")
    rng = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        critic = _Critic(generator).to(x.device)
    opt_d = torch.optim.Adam(critic.parameters(), lr=lr, betas=betas)
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
    generator.train()
    history, block = [], []

    def noise(n: int) -> Tensor:
        return torch.randn(n, generator.latent, generator=rng).to(x.device)

    for _ in range(iterations):
        for p in critic.parameters():
            p.requires_grad_(True)
        for _ in range(critic_steps):
            real = x[torch.randint(0, x.shape[0], (batch_size,), generator=rng).to(x.device)]
            with torch.no_grad():
                fake = generator(noise(batch_size))
            mix = torch.rand(batch_size, 1, 1, 1, generator=rng).to(x.device)
            between = (mix * real + (1 - mix) * fake).requires_grad_(True)
            (grad,) = torch.autograd.grad(critic(between).sum(), between, create_graph=True)
            penalty = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
            distance = critic(real).mean() - critic(fake).mean()
            opt_d.zero_grad(set_to_none=True)
            (-distance + gradient_penalty * penalty).backward()
            opt_d.step()
        block.append(float(distance.detach()))
        for p in critic.parameters():
            p.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        (-critic(generator(noise(batch_size))).mean()).backward()
        opt_g.step()
        if len(block) == 100:
            history.append(sum(block) / len(block))
            block = []
    if block:
        history.append(sum(block) / len(block))
    generator.eval()
    return history


def project(generator: GANGenerator, x: Tensor, *, steps: int = 200, restarts: int = 10, lr: float = 10.0,
            momentum: float = 0.7, rng: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Defense-GAN's projection of ``x [N, C, H, W]`` onto the range of ``generator``:
    ``(z [N, latent], error [N])``, the best of ``restarts`` runs of ``steps`` momentum-GD steps
    on the per-image mean squared error, and that error. Starts ``N(0, I / latent)`` from ``rng``
    (None: torch's global RNG). The generator's parameters get no gradient.

    Cost: ``steps`` forwards and backwards of the generator on ``restarts * N`` latents."""
    n = x.shape[0]
    if n == 0:
        return x.new_zeros(0, generator.latent), x.new_zeros(0)
    target = x.detach().repeat(restarts, *([1] * (x.dim() - 1)))
    z0 = torch.randn(restarts * n, generator.latent, generator=rng, dtype=x.dtype) / math.sqrt(generator.latent)
    z = z0.to(x.device).requires_grad_(True)
    optimizer = torch.optim.SGD([z], lr=lr, momentum=momentum)
    frozen = [(p, p.requires_grad) for p in generator.parameters()]
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        with torch.enable_grad():
            for step in range(steps):
                if step == int(0.8 * steps):
                    for group in optimizer.param_groups:
                        group["lr"] = lr * 0.1
                error = (generator(z) - target).pow(2).flatten(1).mean(dim=1)
                optimizer.zero_grad(set_to_none=True)
                error.sum().backward()
                optimizer.step()
        with torch.no_grad():
            error = (generator(z) - target).pow(2).flatten(1).mean(dim=1)
    finally:
        for p, requires_grad in frozen:
            p.requires_grad_(requires_grad)
    best = error.view(restarts, n).argmin(dim=0)
    pick = best * n + torch.arange(n, device=x.device)
    return z.detach()[pick], error[pick]


class DefenseGAN(InputTransformDefense):
    """``model(G(project(x)))``; see the module docstring. ``gan``: the path
    :func:`save_generator` wrote (or a :class:`GANGenerator`, which a card cannot record).
    ``steps``, ``restarts``: the projection's L and R (200 and 10 in the paper); ``lr``,
    ``momentum``: its momentum GD (10 and 0.7). ``generator``: the ``torch.Generator`` the
    restarts are drawn from (None: torch's global RNG).

    Gradient: zero; BPDA uses the identity; reparameterization uses :meth:`encode`. Stochastic
    (fresh restarts on every forward). Cost per forward: ``steps`` generator forwards and
    backwards on ``restarts`` latents per image, plus one generator and one ``model`` forward."""

    name = "defense-gan"
    stochastic = True

    def __init__(self, model: nn.Module, *, gan: str | GANGenerator | None = None, steps: int = 200,
                 restarts: int = 10, lr: float = 10.0, momentum: float = 0.7,
                 generator: torch.Generator | None = None):
        super().__init__(model)
        if isinstance(gan, GANGenerator):
            self.path = None
            net = gan
        elif isinstance(gan, (str, os.PathLike)):
            self.path = os.fspath(gan)
            net = load_generator(self.path)
        else:
            raise RobustlabError("defense-gan: gan must be the path of a generator saved by save_generator (or a "
                                 "GANGenerator)")
        self.steps = _positive_int("defense-gan: steps", steps)
        self.restarts = _positive_int("defense-gan: restarts", restarts)
        if not is_number(lr, finite=False) or not 0 < lr < math.inf:
            raise RobustlabError(f"defense-gan: lr must be a positive finite number, got {lr!r}")
        if not is_number(momentum, finite=False) or not 0 <= momentum < 1:
            raise RobustlabError(f"defense-gan: momentum must be a number in [0, 1), got {momentum!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise RobustlabError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.lr, self.momentum = float(lr), float(momentum)
        self.generator = generator
        self.gan = net.eval()
        for p in self.gan.parameters():
            p.requires_grad_(False)

    def encode(self, x: Tensor) -> Tensor:
        """The latent the projection picks for ``x`` (one draw of restarts): the ``encoder`` of
        :class:`~robustlab.attacks.composition.Reparameterization`."""
        return project(self.gan, x, steps=self.steps, restarts=self.restarts, lr=self.lr, momentum=self.momentum,
                       rng=self.generator)[0]

    def transform(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.gan.image_shape:
            raise RobustlabError(f"defense-gan: its generator makes images {self.gan.image_shape}, got input "
                                 f"{tuple(x.shape)}")
        with torch.no_grad():
            return self.gan(self.encode(x)).to(x.dtype)

    def arguments(self) -> dict[str, Any]:
        if self.path is None:
            raise RobustlabError("defense-gan: a generator given as a module has no path for the card; save it with "
                                 "save_generator and pass the path")
        return {"gan": self.path, "steps": self.steps, "restarts": self.restarts, "lr": self.lr,
                "momentum": self.momentum}

    def extra_repr(self) -> str:
        return f"gan={self.path!r}, steps={self.steps}, restarts={self.restarts}, lr={self.lr:g}, momentum={self.momentum:g}"


DEFENSES.add(DefenseGAN)
