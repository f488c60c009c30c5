"""What the commands share on the way to work: the device, the data, the model behind --model
with its defenses, the attack wrappers (--bpda, --eot) and the threat model.

The commands read their argparse namespace once (:meth:`ModelRequest.from_args`); what is
below takes plain arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch

from robustlab.cli.options import defense_names, eps_value, key_values, parse_defense
from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel


def device(name: Any) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``, refused clearly if this machine or
    this PyTorch build cannot run it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise RobustlabError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
            raise RobustlabError(f"device {name!r}: {build} (torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RobustlabError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise RobustlabError(f"device {name!r}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise RobustlabError(f"device {name!r} is not supported; use cpu, cuda, cuda:N, mps or auto")
    return device


def threat(norm: str, eps: float | str, bounds: tuple[float, float] = (0.0, 1.0)) -> ThreatModel:
    """The threat model of --norm and --eps on ``bounds`` (the commands build it once, before any
    model is loaded, and move it onto the model card's box with ``with_bounds``); an eps given
    as text (set programmatically rather than parsed) is read as the option would read it.
    The one place the command line turns option strings into a threat model."""
    from robustlab.threat import threat_model

    if isinstance(eps, str):
        try:
            eps = eps_value(eps)
        except argparse.ArgumentTypeError as exc:
            raise RobustlabError(f"--eps: {exc}") from None
    return threat_model(norm, eps, bounds)


def load_data(name: str, *, split: str, limit: int | None, seed: int, data_dir: str | None = None,
              download: bool = False) -> Any:
    from robustlab.data import load_dataset

    return load_dataset(name, split=split, data_dir=data_dir, limit=limit, seed=seed, download=download)


def shape_behind(defenses: list[dict[str, Any]], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The input shape of the network behind ``defenses`` (thermometer encoding multiplies the
    channels by its levels; resize-pad enlarges the image), found by passing a blank image."""
    from torch import nn

    from robustlab.models.preprocessing import apply_defenses

    if not defenses:
        return shape
    probe = apply_defenses(nn.Identity(), defenses, generator=torch.Generator())
    with torch.no_grad():
        return tuple(probe(torch.zeros(1, *shape)).shape[1:])


def defended(model: torch.nn.Module, defenses: list[dict[str, Any]], seed: int) -> torch.nn.Module:
    """``model`` (perhaps already defended) inside ``defenses`` as well, innermost first, with one
    generator seeded from ``seed`` for every stochastic defense in the chain."""
    from robustlab.models.preprocessing import apply_defenses, split_defenses

    inner, recorded = split_defenses(model)
    return apply_defenses(inner, recorded + defenses, generator=torch.Generator().manual_seed(seed))


def check_data_fits(card: Any, data: Any) -> None:
    """Refuse a dataset whose images do not have the shape the model's card was built for, or
    with more classes than the model has outputs (cards that do not record them pass)."""
    arguments = getattr(card, "arguments", {}) or {}
    expected = arguments.get("input_shape")
    if expected is not None:
        shape = shape_behind(list(card.defenses), tuple(data.shape))
        if list(shape) != list(expected):
            behind = f" ({list(shape)} behind the model's defenses)" if card.defenses else ""
            raise RobustlabError(
                f"dataset {data.name} has images of shape {list(data.shape)}{behind}, but the model ({card.architecture}) takes {list(expected)}; pass the --dataset it was trained on"
                + (f" ({card.dataset})" if card.dataset else ""))
    classes = arguments.get("num_classes")
    if isinstance(classes, int) and data.num_classes > classes:
        raise RobustlabError(f"dataset {data.name} has {data.num_classes} classes but the model ({card.architecture}) "
                             f"has {classes} outputs; pass the --dataset it was trained on")


@dataclasses.dataclass(frozen=True)
class ModelRequest:
    """What --model and its options ask for (see :func:`robustlab.cli.options.add_model_options`):
    the model, the data to run it on and, for attack and evaluate, the --defense specs put around
    it, the attack wrappers and the device. Field names are the options' destinations."""

    model: str
    weights: str | None = None
    model_arg: str = ""
    mean: list[float] | None = None
    std: list[float] | None = None
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    dataset: str | None = None
    data_dir: str | None = None
    split: str = "test"
    limit: int | None = None
    seed: int = 0
    download: bool = False
    defense: tuple[str, ...] = ()
    bpda: bool = False
    eot: int | None = None
    device: str = "cpu"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelRequest:
        """The request of a command's parsed options (those it does not have keep their defaults)."""
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        return cls(**{**values, "defense": tuple(values.get("defense") or ())})

    def load_data(self, name: str) -> Any:
        return load_data(name, split=self.split, limit=self.limit, seed=self.seed, data_dir=self.data_dir,
                         download=self.download)


def load_model_and_data(request: ModelRequest) -> tuple[torch.nn.Module, Any, Any]:
    """``(model, card, data)`` for --model and its options (see robustlab.models.loading.resolve_model):
    a factory's input shape and classes come from --dataset unless --input-shape / --num-classes say
    them; a checkpoint names its dataset in its card."""
    from robustlab.models.loading import resolve_model

    r = request
    data = r.load_data(r.dataset) if r.dataset else None
    if data is not None and r.input_shape is not None and tuple(r.input_shape) != data.shape:
        raise RobustlabError(f"--input-shape {','.join(map(str, r.input_shape))} differs from {data.name}'s "
                             f"{','.join(map(str, data.shape))}")
    if data is not None and r.num_classes is not None and r.num_classes != data.num_classes:
        raise RobustlabError(f"--num-classes {r.num_classes} differs from {data.name}'s {data.num_classes}")
    model, card = resolve_model(
        r.model, weights=r.weights, model_args=key_values(r.model_arg, "--model-arg") or None,
        mean=r.mean, std=r.std, seed=r.seed, dataset=r.dataset,
        input_shape=r.input_shape or (data.shape if data is not None else None),
        num_classes=r.num_classes or (data.num_classes if data is not None else None))
    if "source" not in card.extra and (r.input_shape is not None or r.num_classes is not None):
        raise RobustlabError("--input-shape and --num-classes describe a model factory's model; a checkpoint's card "
                             "says them")
    if data is None:
        if not card.dataset:
            raise RobustlabError("the model card names no dataset; pass --dataset")
        data = r.load_data(card.dataset)
    check_data_fits(card, data)
    return model, card, data


def load_defended_model(request: ModelRequest) -> tuple[torch.nn.Module, Any, Any, torch.device]:
    """``(model, card, data, device)``: the model inside the card's defenses and then --defense's
    (the card returned lists them all, so that evaluations record what was evaluated), on the
    device, checked to suit --bpda and --eot."""
    target = device(request.device)
    defenses = [parse_defense(spec) for spec in request.defense]
    model, card, data = load_model_and_data(request)
    if defenses:
        model = defended(model, defenses, request.seed)
        card = dataclasses.replace(card, defenses=card.defenses + defenses)
    check_attack_wrappers(model, bpda=request.bpda, eot=request.eot)
    return model.to(target), card, data, target


def check_attack_wrappers(model: torch.nn.Module, *, bpda: bool, eot: int | None) -> None:
    """--bpda needs a non-differentiable defense and --eot a stochastic one: on any other model
    BPDA is the plain attack and EOT the plain attack at ``N`` times the cost."""
    from robustlab.models.preprocessing import InputTransformDefense

    defenses = [m for m in model.modules() if isinstance(m, InputTransformDefense)]
    if bpda and all(d.differentiable for d in defenses):
        raise RobustlabError(f"--bpda needs a non-differentiable defense ({defense_names(differentiable=False)}), in "
                             "the model card or given with --defense; this model has none, so BPDA would be the plain "
                             "attack")
    if eot is not None:
        if eot < 2:
            raise RobustlabError(f"--eot takes the number of draws per gradient, at least 2 (30 in Athalye et al.), "
                                 f"got {eot}")
        if not any(getattr(m, "stochastic", False) is True for m in model.modules()):
            raise RobustlabError(f"--eot needs a stochastic defense ({defense_names(stochastic=True)}) in the model "
                                 "card or given with --defense, or a random model (bayesian, odenet with diffusion); "
                                 "this model is deterministic, so EOT would only multiply the cost")


def wrap_attacks(attacks: dict[str, Any], *, bpda: bool, eot: int | None) -> dict[str, Any]:
    """Each attack inside BPDA (--bpda) and then EOT (--eot N), keyed ``eot+bpda+<key>``."""
    from robustlab.attacks import BPDA, EOT

    out = {}
    for key, attack in attacks.items():
        if bpda:
            attack, key = BPDA(attack), f"bpda+{key}"
        if eot is not None:
            attack, key = EOT(attack, draws=eot), f"eot+{key}"
        out[key] = attack
    return out
