"""Resolve a model specification into a model and the card that says what was loaded.

``resolve_model(spec, ...)`` is the one place the command line turns ``--model`` into a model.
It understands:

- ``SCHEME:NAME`` for a scheme registered in :data:`MODEL_SOURCES` (the model zoo registers
  ``zoo`` there: ``--model zoo:NAME``);
- ``path/to/file.py:factory`` and ``package.module:factory``: any ``nn.Module`` a user's function
  (or class) builds, with weights from ``weights`` (safetensors, or a state dict read with
  ``torch.load(weights_only=True)``), wrapped in ``Normalize(mean, std)`` when they are given;
- anything else: a robustlab checkpoint (``model.safetensors`` with ``model.json``), read by
  :func:`~robustlab.models.checkpoint.load_model`.

For a user's factory the returned card records what was loaded in ``card.extra["source"]``:
the file or module, the factory, its arguments and the SHA-256 of the file and of the weights,
so that an evaluation's JSON says exactly which model it measured.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.errors import RobustlabError
from robustlab.io import file_sha256
from robustlab.models.checkpoint import ModelCard, check_state, checkpoint_paths, load_model
from robustlab.models.normalize import Normalize
from robustlab.models.registry import check_input_shape, check_num_classes

__all__ = ["MODEL_SOURCES", "file_sha256", "register_model_source", "resolve_model", "weights_sha256"]

# A source: ``loader(name, **options) -> (model, card)`` with the options of resolve_model.
ModelSource = Callable[..., "tuple[nn.Module, ModelCard]"]

# Schemes of ``--model SCHEME:NAME`` ("zoo" below); register more with register_model_source.
MODEL_SOURCES: dict[str, ModelSource] = {}


def register_model_source(scheme: str) -> Callable[[ModelSource], ModelSource]:
    """Decorator registering ``loader(name, **options) -> (model, card)`` for ``SCHEME:NAME``."""
    if not scheme.isidentifier():
        raise RobustlabError(f"a model source scheme must be an identifier, got {scheme!r}")

    def decorator(loader: ModelSource) -> ModelSource:
        MODEL_SOURCES[scheme] = loader
        return loader

    return decorator


def resolve_model(
    spec: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    model_args: Mapping[str, Any] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    dataset: str | None = None,
    seed: int | None = None,
) -> tuple[nn.Module, ModelCard]:
    """``(model, card)`` for ``spec`` (see the module docstring), on the CPU in eval mode.

    ``weights``, ``model_args`` (keyword arguments of the factory), ``mean``/``std`` apply to a
    factory only; a robustlab checkpoint carries its own. ``input_shape`` (C, H, W) and
    ``num_classes`` describe a factory's model (from the dataset where it says them): the model
    is run once on zeros of that shape and must return ``[1, num_classes]`` logits. A factory
    whose signature names ``input_shape`` or ``num_classes`` receives them. ``dataset`` is
    recorded in the card. ``seed``: stochastic defenses of a checkpoint; the factory's random
    initialisation (before the weights are loaded) draws from a forked RNG seeded with it.
    """
    text = os.fspath(spec)
    scheme, _, name = text.partition(":")
    options: dict[str, Any] = {"weights": weights, "model_args": model_args, "mean": mean, "std": std, "input_shape": input_shape,
               "num_classes": num_classes, "dataset": dataset, "seed": seed}
    if scheme in MODEL_SOURCES:
        return MODEL_SOURCES[scheme](name, **options)
    factory = _factory_spec(text)
    if factory is None:
        return _checkpoint(text, **options)
    return _from_factory(*factory, **options)


def _checkpoint(path: str | os.PathLike[str], *, weights, model_args, mean, std, input_shape, num_classes, dataset,
                seed) -> tuple[nn.Module, ModelCard]:
    given = [f"--{k.replace('_', '-')}" for k, v in (("weights", weights), ("model_arg", model_args), ("mean", mean),
                                                      ("std", std)) if v]
    if given:
        raise RobustlabError(f"{', '.join(given)} apply to a model factory (--model file.py:factory); the "
                             f"robustlab checkpoint {os.fspath(path)} carries its own weights, arguments and "
                             "normalization")
    return load_model(path, seed=seed)  # its card says the input shape and classes (checked against the data by the CLI)


@register_model_source("zoo")
def _zoo(name: str, **options: Any) -> tuple[nn.Module, ModelCard]:
    """``zoo:NAME``: a model robustlab trained itself (:mod:`robustlab.zoo`), a checkpoint."""
    from robustlab.zoo import checkpoint

    return _checkpoint(checkpoint(name), **options)


def _factory_spec(text: str) -> tuple[str, str] | None:
    """``(target, factory)`` for ``file.py:factory`` or ``package.module:factory``, else None."""
    target, colon, factory = text.rpartition(":")
    if not colon or not factory.isidentifier():
        return None
    if target.endswith(".py") or all(part.isidentifier() for part in target.split(".")):
        return target, factory
    return None


def _from_factory(target: str, factory_name: str, *, weights, model_args, mean, std, input_shape, num_classes,
                  dataset, seed) -> tuple[nn.Module, ModelCard]:
    module, source = _import(target)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        available = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise RobustlabError(f"{target} has no function or class {factory_name!r}; callables there: "
                             f"{', '.join(available[:20]) or 'none'}")
    arguments = dict(model_args or {})
    shape = None if input_shape is None else check_input_shape(tuple(int(v) for v in input_shape))
    classes = None if num_classes is None else check_num_classes(num_classes)
    accepted = _parameters(factory)
    for key, value in (("input_shape", shape), ("num_classes", classes)):
        if key in accepted and key not in arguments and value is not None:
            arguments[key] = list(value) if isinstance(value, tuple) else value
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.random.default_generator.manual_seed(seed)
        try:
            net = factory(**arguments)
        except Exception as exc:  # the user's code: report it as one line, with the call
            raise RobustlabError(f"{target}:{factory_name}({_call_text(arguments)}) failed: "
                                 f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise RobustlabError(f"{target}:{factory_name} returned a {type(net).__name__}, not a torch.nn.Module")
    weights_hash = None
    if weights is not None:
        weights_hash = _load_weights(net, Path(weights), f"{target}:{factory_name}")
    model: nn.Module = net
    normalization = None
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise RobustlabError("--mean and --std go together (one value, or one per channel, each)")
        layer = Normalize(mean, std)
        model = nn.Sequential(layer, net)
        normalization = {"mean": layer.mean.tolist(), "std": layer.std.tolist()}
    model.eval()
    if shape is None or classes is None:
        raise RobustlabError(f"{target}:{factory_name}: the input shape and the number of classes are unknown; "
                             "give --dataset (which says them) or --input-shape C,H,W and --num-classes N")
    _probe(model, shape, classes, f"{target}:{factory_name}")
    source = {**source, "factory": factory_name, "arguments": _plain(arguments),
              "weights": None if weights is None else str(Path(weights).resolve()), "weights_sha256": weights_hash}
    card = ModelCard(
        architecture=f"{Path(target).name if target.endswith('.py') else target}:{factory_name}",
        arguments={"input_shape": list(shape), "num_classes": classes, **_plain(arguments)},
        dataset=dataset, normalization=normalization, extra={"source": source},
        # The card's identity (the results store hashes it) is what was loaded, not when.
        created=_mtime(Path(weights) if weights is not None else Path(source.get("path") or ".")),
    )
    return model, card


def _import(target: str) -> tuple[Any, dict[str, Any]]:
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise RobustlabError(f"model file not found: {target}")
        digest = file_sha256(path)
        name = f"robustlab_user_model_{digest[:16]}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[name] = module
            sys.path.insert(0, str(path.parent))  # so that the file can import its neighbours
            try:
                spec.loader.exec_module(module)  # type: ignore[union-attr]
            except Exception as exc:
                del sys.modules[name]
                raise RobustlabError(f"cannot import {target}: {type(exc).__name__}: {exc}") from exc
            finally:
                sys.path.remove(str(path.parent))
        return module, {"kind": "file", "path": str(path), "sha256": digest}
    try:
        module = importlib.import_module(target)
    except Exception as exc:
        raise RobustlabError(f"cannot import the module {target!r}: {type(exc).__name__}: {exc} (a file is "
                             "given as path/to/file.py:factory)") from exc
    file = getattr(module, "__file__", None)
    return module, {"kind": "module", "module": target, "path": file,
                    "sha256": file_sha256(Path(file)) if file else None}


def _parameters(factory: Callable[..., Any]) -> set[str]:
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return set()


def _call_text(arguments: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in arguments.items())


def _plain(arguments: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in arguments.items()}


def _mtime(path: Path) -> str:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
    except OSError:
        return ""


def weights_sha256(spec: str | os.PathLike[str], card: ModelCard) -> str | None:
    """SHA-256 of the weights behind ``spec`` as :func:`resolve_model` loaded it: the card's
    record for a factory or a zoo model, the checkpoint's ``.safetensors`` file otherwise."""
    source = card.extra.get("source") if isinstance(card.extra, dict) else None
    if isinstance(source, dict):
        return source.get("weights_sha256")
    scheme, _, name = os.fspath(spec).partition(":")
    if scheme == "zoo":
        from robustlab.zoo import checkpoint

        spec = checkpoint(name)
    return file_sha256(checkpoint_paths(spec)[0])


def _load_weights(net: nn.Module, path: Path, what: str) -> str:
    if not path.is_file():
        raise RobustlabError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise RobustlabError(f"cannot read the safetensors file {path}: {exc}") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001  pickle.UnpicklingError, RuntimeError, EOFError, ...
            raise RobustlabError(
                f"cannot read {path} as a state dict with torch.load(weights_only=True): {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''} (save model.state_dict(), not the model object, "
                "or use safetensors)") from None
    state = _state_dict(state, path)
    expected = net.state_dict()
    if not set(state) & set(expected) and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from (Distributed)DataParallel
    check_state(state, expected, source=str(path), target=f"the model {what} builds")
    net.load_state_dict(state, strict=True)
    return file_sha256(path)


def _state_dict(value: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor mapping in ``value``: the state dict itself, or the one under ``state_dict`` /
    ``model_state_dict`` / ``model`` of a training checkpoint."""
    if isinstance(value, Mapping) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
        return dict(value)
    if isinstance(value, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = value.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        raise RobustlabError(f"{path} holds a {type(value).__name__} with keys {sorted(map(str, value))[:10]}, not "
                             "a state dict (parameter name -> tensor)")
    raise RobustlabError(f"{path} holds a {type(value).__name__}, not a state dict (parameter name -> tensor)")


def _probe(model: nn.Module, shape: tuple[int, ...], classes: int, what: str) -> None:
    """One forward pass on zeros: the model must take ``[1, *shape]`` and return ``[1, classes]``."""
    parameter = next(iter(model.parameters()), None)
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *shape, dtype=dtype))
    except Exception as exc:
        raise RobustlabError(f"{what} does not run on inputs of shape [N, {', '.join(map(str, shape))}]: "
                             f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RobustlabError(f"{what} returns {got} for one input of shape {list(shape)}; expected logits of shape "
                             f"(1, {classes}), one per class")
