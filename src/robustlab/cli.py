"""The ``robustlab`` command line (``robustlab --help`` lists the commands).

Attacks are named with their hyperparameters as ``NAME[:key=value,key=value]``, for example
``--attack pgd:steps=40,step_size=0.01,restarts=5``; input-transformation defenses likewise, for
example ``--defense jpeg:quality=75`` (see ``robustlab.models.preprocessing.DEFENSES``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from robustlab.documentation import docs_pointer
from robustlab.errors import RobustlabError
from robustlab.evaluation.suites import SUITES as SUITE_NAMES
from robustlab.formatting import percent
from robustlab.validate import is_int, is_number

log = logging.getLogger("robustlab")


# -- argument helpers ----------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors raise instead of exiting, so that :func:`main`
    reports them as one line with exit status 2 (sub-command parsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        raise RobustlabError(f"{message} (see {self.prog} --help)")


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], what: str, name: str) -> Callable[[str], Any]:
    """argparse type: ``convert(text)``, refused unless ``ok``; both errors say ``what`` is expected."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


positive_int = _checked(int, lambda v: v >= 1, "a positive integer", "positive_int")  # sizes, counts, limits
nonnegative_int = _checked(int, lambda v: v >= 0, "an integer >= 0", "nonnegative_int")
positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0", "positive_float")
fraction = _checked(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)", "fraction")


def eps_value(text: str) -> float:
    """argparse type: a radius, a number or ``inf`` (``unbounded``); its sign is checked by the
    threat model, which says what is wrong with it."""
    if text.strip() in ("inf", "unbounded"):
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'inf', got {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError("eps must be a number, got nan")
    return value


def eps_list(text: str) -> list[float]:
    """argparse type: comma-separated finite radii > 0, e.g. ``0.01,0.03``."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated radii such as 0.01,0.03, got {text!r}")
    values = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} in {text!r} is not a number") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"each radius must be a finite number > 0, got {item!r}")
        values.append(value)
    return values


def check_out_folder(path: str | Path, option: str = "--out") -> Path:
    """Refuse an output folder that cannot be written, before any work is done: an existing
    file, a path below a file, or a folder (or its nearest existing parent) without write
    permission. Creates nothing."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise RobustlabError(f"{option} {out} is a file, not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RobustlabError(f"{option} {out} lies below {existing}, which is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RobustlabError(f"{option} {out}: cannot write into {existing} (permission denied)")
    return out


def check_out_file(path: str | Path, option: str = "--out") -> Path:
    """Refuse an output file whose folder is missing or not writable, or that is a folder."""
    out = Path(path)
    if out.is_dir():
        raise RobustlabError(f"{option} {out} is a folder; give a file name")
    folder = out.parent
    if not folder.is_dir():
        raise RobustlabError(f"{option} {out}: the folder {folder} does not exist" if not folder.exists()
                             else f"{option} {out}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise RobustlabError(f"{option} {out}: cannot write there (permission denied)")
    return out


def _value(text: str) -> Any:
    """Parse a command-line value: JSON (numbers, true/false, null, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so that ``hidden=[16,16],dropout=0.5`` has two items."""
    items, depth, current = [], 0, ""
    for char in text:
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item for item in [*items, current] if item.strip()]


def _key_values(text: str, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in _split_top_level(text):
        if "=" not in item:
            raise RobustlabError(f"{what}: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = _value(value.strip())
    return out


def parse_attack(spec: str):
    """``"pgd:steps=40,step_size=0.01"`` -> the configured attack."""
    from robustlab.attacks import build_attack

    name, _, params = spec.partition(":")
    return build_attack(name.strip(), **_key_values(params, f"attack {name}"))


def parse_defense(spec: str) -> dict[str, Any]:
    """``"bit-depth:bits=3"`` -> ``{"defense": "bit-depth", "bits": 3}``, the full config
    (unset settings at their defaults), as a model card records it. Checked by building it."""
    from torch import nn

    from robustlab.models.preprocessing import build_defense

    name, _, params = spec.partition(":")
    return build_defense(name.strip(), nn.Identity(), **_key_values(params, f"defense {name}")).config()


def _defended(model: torch.nn.Module, defenses: list[dict[str, Any]], seed: int) -> torch.nn.Module:
    """``model`` (perhaps already defended) inside ``defenses`` as well, innermost first, with one
    generator seeded from ``seed`` for every stochastic defense in the chain."""
    from robustlab.models.preprocessing import apply_defenses, split_defenses

    inner, recorded = split_defenses(model)
    return apply_defenses(inner, recorded + defenses, generator=torch.Generator().manual_seed(seed))


def _check_attack_wrappers(args: argparse.Namespace, model: torch.nn.Module) -> None:
    """--bpda needs a non-differentiable defense and --eot a stochastic one: on any other model
    BPDA is the plain attack and EOT the plain attack at ``N`` times the cost."""
    from robustlab.models.preprocessing import InputTransformDefense

    defenses = [m for m in model.modules() if isinstance(m, InputTransformDefense)]
    if args.bpda and all(d.differentiable for d in defenses):
        raise RobustlabError("--bpda needs a non-differentiable defense (jpeg, bit-depth or thermometer), in the model "
                             "card or given with --defense; this model has none, so BPDA would be the plain attack")
    if args.eot is not None:
        if args.eot < 2:
            raise RobustlabError(f"--eot takes the number of draws per gradient, at least 2 (30 in Athalye et al.), "
                                 f"got {args.eot}")
        if not any(getattr(m, "stochastic", False) is True for m in model.modules()):
            raise RobustlabError("--eot needs a stochastic defense (resize-pad, sap, rse, defense-gan) in the model card "
                                 "or given with --defense, or a random model (bayesian, odenet with diffusion); this "
                                 "model is deterministic, so EOT would only multiply the cost")


def _around(attacks: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Each attack inside BPDA (--bpda) and then EOT (--eot N), keyed ``eot+bpda+<key>``."""
    from robustlab.attacks import BPDA, EOT

    out = {}
    for key, attack in attacks.items():
        if args.bpda:
            attack, key = BPDA(attack), f"bpda+{key}"
        if args.eot is not None:
            attack, key = EOT(attack, draws=args.eot), f"eot+{key}"
        out[key] = attack
    return out


def _threat(args: argparse.Namespace, bounds: tuple[float, float]):
    from robustlab.threat import threat_model

    eps = args.eps
    if isinstance(eps, str):  # set programmatically rather than parsed
        try:
            eps = eps_value(eps)
        except argparse.ArgumentTypeError as exc:
            raise RobustlabError(f"--eps: {exc}") from None
    return threat_model(args.norm, eps, bounds)


def _device(name: Any) -> torch.device:
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


def check_data_fits(card: Any, data: Any) -> None:
    """Refuse a dataset whose images do not have the shape the model's card was built for, or
    with more classes than the model has outputs (cards that do not record them pass)."""
    arguments = getattr(card, "arguments", {}) or {}
    expected = arguments.get("input_shape")
    if expected is not None:
        shape = _shape_behind(list(card.defenses), tuple(data.shape))
        if list(shape) != list(expected):
            behind = f" ({list(shape)} behind the model's defenses)" if card.defenses else ""
            raise RobustlabError(
                f"dataset {data.name} has images of shape {list(data.shape)}{behind}, but the model ({card.architecture}) takes {list(expected)}; pass the --dataset it was trained on"
                + (f" ({card.dataset})" if card.dataset else ""))
    classes = arguments.get("num_classes")
    if isinstance(classes, int) and data.num_classes > classes:
        raise RobustlabError(f"dataset {data.name} has {data.num_classes} classes but the model ({card.architecture}) "
                             f"has {classes} outputs; pass the --dataset it was trained on")


def _load_data(args: argparse.Namespace, name: str, split: str, limit: int | None):
    from robustlab.data import load_dataset

    return load_dataset(name, split=split, data_dir=args.data_dir, limit=limit, seed=args.seed,
                        download=getattr(args, "download", False))


def _print_table(rows: list[tuple[str, str]], header: tuple[str, str]) -> None:
    width = max(len(r[0]) for r in [header, *rows])
    print(f"{header[0]:<{width}}  {header[1]}")
    print(f"{'-' * width}  {'-' * len(header[1])}")
    for a, b in rows:
        print(f"{a:<{width}}  {b}")


def _accuracy_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    def number(value: float | None) -> str:  # None or NaN: an accuracy over zero samples
        return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"

    def fmt(acc: dict[str, float]) -> str:
        value = number(acc["value"])
        return f"{value:>5}{'%' if value != '-' else ' '}  [{number(acc['ci_low'])}, {number(acc['ci_high'])}]"

    rows = [("clean", fmt(metrics["clean_accuracy"]))]
    rows += [(name, fmt(acc)) for name, acc in metrics["robust_accuracy_per_attack"].items()]
    rows.append(("worst case", fmt(metrics["robust_accuracy"])))
    return rows


# -- commands ------------------------------------------------------------------------------
def cmd_datasets(args: argparse.Namespace) -> int:
    from robustlab.data import DATASETS, fetch, locate, search_paths

    if args.action == "list":
        for name, info in DATASETS.items():
            where = locate(name, args.data_dir)
            status = "no download needed" if not info.needs_download else (str(where) if where else "not found")
            print(f"{name:<14} {info.description}  [{status}]")
        return 0
    if not args.name:
        raise RobustlabError(f"datasets {args.action} needs a dataset name: one of {sorted(DATASETS)}")
    if args.action == "locate":
        where = locate(args.name, args.data_dir)
        print(where or "not found; searched:\n  " + "\n  ".join(map(str, search_paths(args.name, args.data_dir))))
        return 0 if where or not DATASETS[args.name].needs_download else 1
    path = fetch(args.name, dest=Path(args.data_dir) if args.data_dir else None, base_url=args.base_url, progress=True)
    print(path)
    return 0


# Defaults of `robustlab train`. Its parser leaves options it was not given at None, so that a
# --config file can fill them in and whatever the command line says still wins.
# `robustlab train` settings that are TrainConfig fields of the same name: their defaults (and the
# defaults their help states) come from the dataclass, and train_config passes them on by name.
_CONFIG_SETTINGS = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "seed", "method",
                    "eps_warmup_epochs", "bn_mode", "robust_eval_samples", "robust_eval_steps", "mixed_precision")
# Its other settings and their defaults.
_OTHER_TRAIN_DEFAULTS: dict[str, Any] = {
    "data_dir": None, "device": "cpu", "quiet": False, "dataset": None, "model": None, "model_arg": "", "mean": None,
    "std": None, "limit": None, "val_fraction": 0.1, "out": None, "no_resume": False, "download": False, "options": {},
    "norm": "Linf", "eps": None, "defense": [],
}


def train_defaults() -> dict[str, Any]:
    """Every `robustlab train` setting with its default (a --config file may set any of them)."""
    from robustlab.training import TrainConfig

    config = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return {**_OTHER_TRAIN_DEFAULTS, **{name: config[name] for name in _CONFIG_SETTINGS}}


def _read_run_file(path: str) -> dict[str, Any]:
    """A run file's settings: TOML (``.toml``), or YAML where PyYAML is installed. Keys are the
    long option names (``batch_size`` or ``batch-size``); method options go in an ``options`` table."""
    file = Path(path)
    try:
        if file.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise RobustlabError(f"{file} is YAML, which needs PyYAML; install it or write the run file as TOML") from None
            values = yaml.safe_load(file.read_text()) or {}
        else:
            import tomllib

            values = tomllib.loads(file.read_text())
    except OSError as exc:
        raise RobustlabError(f"cannot read the run file {file}: {exc}") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError and yaml's errors are ValueErrors or reported here
        raise RobustlabError(f"cannot parse the run file {file}: {exc}") from None
    if not isinstance(values, dict):
        raise RobustlabError(f"the run file {file} must hold a table of settings")
    values = {key.replace("-", "_"): value for key, value in values.items()}
    defaults = train_defaults()
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise RobustlabError(f"unknown setting(s) {', '.join(unknown)} in {file}; valid: {', '.join(sorted(defaults))}")
    if not isinstance(values.get("options", {}), dict):
        raise RobustlabError(f"'options' in {file} must be a table of method options")
    return values


def _train_settings(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults, then the --config file, then the command line."""
    from_file = _read_run_file(args.config) if args.config else {}
    defaults = train_defaults()
    given = {key: value for key, value in vars(args).items() if key in defaults and value is not None}
    options = dict(from_file.get("options", {}))
    for item in args.option or []:
        options.update(_key_values(item, "--option"))
    settings = {**defaults, **from_file, **given, "options": options}
    for required in ("dataset", "model", "out"):
        if settings[required] is None:
            raise RobustlabError(f"train needs --{required} (on the command line or in the --config file)")
    return argparse.Namespace(**{**vars(args), **settings})


def train_config(args: argparse.Namespace):
    """The :class:`~robustlab.training.TrainConfig` of `robustlab train`'s settings (after
    ``_train_settings``: defaults, --config file, command line)."""
    from robustlab.training import TrainConfig

    threat = None if args.eps is None else {"norm": args.norm, "eps": args.eps}
    return TrainConfig(**{name: getattr(args, name) for name in _CONFIG_SETTINGS}, method_options=args.options,
                       threat=threat)


def cmd_train(args: argparse.Namespace) -> int:
    from robustlab.data import train_val_split
    from robustlab.evaluation import distributed
    from robustlab.models import ModelCard, build_model, save_model
    from robustlab.training import train

    args = _train_settings(args)
    # Validated before any data is loaded, so a misspelt option fails at once.
    config = train_config(args)
    defenses = _train_defenses(args)
    device = _device(args.device)
    check_out_folder(args.out)
    if not is_number(args.val_fraction, finite=False) \
            or not 0 <= args.val_fraction < 1:
        raise RobustlabError(f"val_fraction must lie in [0, 1), got {args.val_fraction!r}")
    if args.limit is not None and (not is_int(args.limit, 1)):
        raise RobustlabError(f"limit must be a positive integer, got {args.limit!r}")
    data = _load_data(args, args.dataset, "train", args.limit)
    train_set, val_set = train_val_split(data, args.val_fraction, seed=args.seed) if args.val_fraction > 0 else (data, None)
    model_args = _key_values(args.model_arg, "model arguments")
    normalize = (args.mean, args.std) if args.mean is not None else None
    input_shape = _shape_behind(defenses, tuple(data.shape))
    model = build_model(args.model, input_shape=input_shape, num_classes=data.num_classes, normalize=normalize,
                        seed=args.seed, **model_args)
    model = _defended(model, defenses, args.seed)
    out = Path(args.out)
    # Under torchrun: data-parallel over the ranks; rank 0 alone writes, prints and saves.
    sharded = distributed.launched_distributed()
    if sharded:
        device = distributed.init_process_group(device)
    try:
        main_rank = not sharded or distributed.rank_and_world()[0] == 0
        result = train(model.to(device), train_set.x, train_set.y, config=config,
                       val_x=None if val_set is None else val_set.x, val_y=None if val_set is None else val_set.y,
                       checkpoint_dir=out / "checkpoints", resume=not args.no_resume, progress=not args.quiet,
                       device=device, distributed=sharded, dataset=f"{args.dataset}/train",
                       on_epoch_end=None if args.quiet or not main_rank else lambda r: print(json.dumps(r), file=sys.stderr))
    finally:
        if sharded:
            distributed.close()
    if not main_rank:
        return 0
    card = ModelCard(
        architecture=args.model,
        arguments={"input_shape": list(input_shape), "num_classes": data.num_classes, **model_args},
        dataset=args.dataset,
        normalization=None if normalize is None else {"mean": list(args.mean), "std": list(args.std)},
        defenses=defenses,
        training={"method": config.method, "config": config.to_dict(), "samples": len(train_set)},
        metrics={"best_val_acc": result.best_val_acc, "best_val_robust_acc": result.best_val_robust_acc,
                 "final": result.history[-1] if result.history else None},
    )
    path = save_model(model.cpu(), out / "model", card)
    robust = "" if result.best_val_robust_acc is None else f", robust {result.best_val_robust_acc}"
    print(f"saved {path} (val accuracy {result.best_val_acc}{robust})")
    return 0


def _train_defenses(args: argparse.Namespace) -> list[dict[str, Any]]:
    """--defense's configs for training; refused for adversarial or certified training through
    a non-differentiable defense, whose inner attack would see only zero input gradients."""
    from robustlab.models.preprocessing import DEFENSES

    specs = args.defense
    if isinstance(specs, str) or not isinstance(specs, list):
        raise RobustlabError(f"defense must be a list of specs such as ['thermometer:levels=16'], got {specs!r}")
    defenses = [parse_defense(spec) for spec in specs]
    masked = [d["defense"] for d in defenses if not DEFENSES[d["defense"]].differentiable]
    if masked and args.method != "natural":
        raise RobustlabError(f"--method {args.method} through the non-differentiable defense(s) {masked} would train "
                             "against attacks that see zero input gradients; train naturally (--method natural) "
                             "behind them, or train the network without them and add them at evaluation")
    return defenses


def _shape_behind(defenses: list[dict[str, Any]], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The input shape of the network behind ``defenses`` (thermometer encoding multiplies the
    channels by its levels; resize-pad enlarges the image), found by passing a blank image."""
    from torch import nn

    from robustlab.models.preprocessing import apply_defenses

    if not defenses:
        return shape
    probe = apply_defenses(nn.Identity(), defenses, generator=torch.Generator())
    with torch.no_grad():
        return tuple(probe(torch.zeros(1, *shape)).shape[1:])


def _input_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 3,32,32, got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive sizes C,H,W such as 3,32,32, got {text!r}")
    return shape


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--model and what a user's factory needs (evaluate, attack, certify)."""
    p.add_argument("--model", required=True,
                   help="a robustlab checkpoint (model.safetensors with model.json beside it), zoo:NAME (robustlab "
                        "zoo list), or your own model: "
                        "path/to/file.py:factory or package.module:factory (a function or class returning an "
                        "nn.Module; with --weights, --model-arg, --mean/--std, --input-shape/--num-classes)")
    p.add_argument("--weights", help="weights for a factory's model: .safetensors, or a state dict saved with "
                                     "torch.save (read with torch.load(weights_only=True))")
    p.add_argument("--model-arg", default="", metavar="KEY=VALUE,...", help="keyword arguments of the factory")
    p.add_argument("--mean", type=float, nargs="+", help="per-channel mean: the factory's model is wrapped in "
                                                          "Normalize(mean, std), since inputs are in [0, 1]")
    p.add_argument("--std", type=float, nargs="+")
    p.add_argument("--input-shape", type=_input_shape, metavar="C,H,W",
                   help="input shape of a factory's model (default: the dataset's)")
    p.add_argument("--num-classes", type=int, help="classes of a factory's model (default: the dataset's)")
    p.add_argument("--dataset", help="default: the dataset named in the model card (required with a factory)")


def load_model_and_data(args: argparse.Namespace):
    """``(model, card, data)`` for --model and its options (see robustlab.models.loading.resolve_model):
    a factory's input shape and classes come from --dataset unless --input-shape / --num-classes say
    them; a checkpoint names its dataset in its card."""
    from robustlab.models.loading import resolve_model

    data = _load_data(args, args.dataset, args.split, args.limit) if args.dataset else None
    if data is not None and args.input_shape is not None and tuple(args.input_shape) != data.shape:
        raise RobustlabError(f"--input-shape {','.join(map(str, args.input_shape))} differs from {data.name}'s "
                             f"{','.join(map(str, data.shape))}")
    if data is not None and args.num_classes is not None and args.num_classes != data.num_classes:
        raise RobustlabError(f"--num-classes {args.num_classes} differs from {data.name}'s {data.num_classes}")
    model, card = resolve_model(
        args.model, weights=args.weights, model_args=_key_values(args.model_arg, "--model-arg") or None,
        mean=args.mean, std=args.std, seed=args.seed, dataset=args.dataset,
        input_shape=args.input_shape or (data.shape if data is not None else None),
        num_classes=args.num_classes or (data.num_classes if data is not None else None))
    if "source" not in card.extra and (args.input_shape is not None or args.num_classes is not None):
        raise RobustlabError("--input-shape and --num-classes describe a model factory's model; a checkpoint's card "
                             "says them")
    if data is None:
        if not card.dataset:
            raise RobustlabError("the model card names no dataset; pass --dataset")
        data = _load_data(args, card.dataset, args.split, args.limit)
    check_data_fits(card, data)
    return model, card, data


def _load_model_and_data(args: argparse.Namespace):
    """The model inside the card's defenses and then --defense's (the card returned lists them
    all, so that evaluations record what was evaluated), the data, and the device."""
    device = _device(args.device)
    defenses = [parse_defense(spec) for spec in args.defense or []]
    model, card, data = load_model_and_data(args)
    if defenses:
        model = _defended(model, defenses, args.seed)
        card = dataclasses.replace(card, defenses=card.defenses + defenses)
    _check_attack_wrappers(args, model)
    return model.to(device), card, data, device


def cmd_attack(args: argparse.Namespace) -> int:
    from robustlab._progress import progress_bar
    from robustlab.report.grid import save_examples

    out = check_out_folder(args.out)
    _threat(args, (0.0, 1.0))  # a bad --norm or --eps fails before the model and data are loaded
    model, card, data, device = _load_model_and_data(args)
    (attack,) = _around({"attack": parse_attack(args.attack)}, args).values()
    threat = _threat(args, tuple(card.input_bounds))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    outputs: dict[str, list[torch.Tensor]] = {k: [] for k in ("x_adv", "success", "distance", "predictions", "clean")}
    start = time.perf_counter()
    for i in progress_bar(range(0, len(data), args.batch_size), desc=attack.name, disable=args.quiet):
        x, y = data.x[i:i + args.batch_size].to(device), data.y[i:i + args.batch_size].to(device)
        result = attack(model, x, y, threat=threat, targets=args.targets, generator=generator)
        with torch.no_grad():
            outputs["clean"].append(model(x).argmax(1).cpu())
        for key in ("x_adv", "success", "distance", "predictions"):
            outputs[key].append(getattr(result, key).cpu())
    merged = {k: torch.cat(v) for k, v in outputs.items()}
    summary = {"attack": attack.config(), "defenses": card.defenses, "threat": str(threat), "samples": len(data),
               "success_rate": float(merged["success"].float().mean()) if len(data) else math.nan,
               "median_distance": float(merged["distance"].median()) if len(data) else math.nan,
               "wall_time_s": round(time.perf_counter() - start, 3)}
    save_examples(out, x=data.x, y=data.y, x_adv=merged["x_adv"], clean=merged["clean"],
                  adversarial=merged["predictions"], success=merged["success"], distance=merged["distance"],
                  indices=data.indices, summary=summary, classes=data.classes, norm=threat.norm,
                  bounds=tuple(card.input_bounds))
    print((out / "summary.json").read_text(encoding="utf-8").rstrip())  # strict JSON: NaN is null
    print(f"wrote {out}/adversarial.safetensors, {out}/grid.png, {out}/summary.json")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from robustlab.evaluation import (
        MinimumNormEvaluation,
        TargetedEvaluation,
        distributed,
        evaluate_minimum_norm,
        evaluate_targeted,
    )
    from robustlab.report import minimum_norm_markdown, targeted_markdown

    check_out_folder(args.out)
    if args.state_file:
        check_out_file(args.state_file, "--state-file")
    if args.mode == "fixed":
        return _evaluate_fixed(args)
    if args.suite or args.cascade is not None or args.diagnose:
        raise RobustlabError("--suite, --cascade and --diagnose apply to --mode fixed only")
    if args.eps is not None:
        raise RobustlabError(f"--eps does not apply to --mode {args.mode}: the attacks are unbounded and each sample's "
                             "smallest perturbation is measured (robust accuracy at every eps comes from one run)")
    if not args.attack:
        raise RobustlabError(f"--mode {args.mode} needs at least one --attack")
    sharded = distributed.launched_distributed()
    if sharded:
        args.device = str(distributed.init_process_group(_device(args.device)))
    try:
        model, card, data, device = _load_model_and_data(args)
        attacks = _around(_named([parse_attack(spec) for spec in args.attack]), args)
        bounds = tuple(card.input_bounds)
        x, y = data.x.to(device), data.y.to(device)
        out = Path(args.out)
        common = dict(batch_size=args.batch_size, seed=args.seed, indices=data.indices, num_classes=data.num_classes,
                      model_card=card.to_dict(), progress=not args.quiet, **_run_state(args, out, sharded))
        ev: MinimumNormEvaluation | TargetedEvaluation
        if args.mode == "minimum-norm":
            ev = evaluate_minimum_norm(model, x, y, attacks=attacks, norm=args.norm, bounds=bounds, **common)
        else:
            if len(attacks) != 1:
                raise RobustlabError("--mode targeted runs the C&W protocol with exactly one --attack")
            ev = evaluate_targeted(model, x, y, attack=next(iter(attacks.values())), norm=args.norm, bounds=bounds,
                                   **common)
        if sharded and distributed.rank_and_world()[0] != 0:
            return 0
    finally:
        if sharded:
            distributed.close()
    text = targeted_markdown(ev) if isinstance(ev, TargetedEvaluation) else minimum_norm_markdown(ev)
    ev.save(out / f"{args.mode}.json")
    (out / "report.md").write_text(text)
    print(text)
    print(f"wrote {out}/{args.mode}.json and {out}/report.md")
    _store_run(args, ev, data, card)
    return 0


def _run_state(args: argparse.Namespace, out: Path, sharded: bool) -> dict[str, Any]:
    """The evaluation runner's state file, resume and sharding settings (the same in every mode)."""
    default = out / ("state.json" if args.mode == "fixed" else f"state-{args.mode}.json")  # modes may share --out
    return {"state_file": Path(args.state_file) if args.state_file else default,
            "resume": not args.no_resume, "distributed": sharded}


def _evaluate_fixed(args: argparse.Namespace) -> int:
    """Robust accuracy at --eps; resumable through a state file, sharded when run under torchrun."""
    from robustlab.evaluation import build_suite, distributed, evaluate
    from robustlab.evaluation.suites import DEFAULT_SUITE
    from robustlab.report import evaluation_markdown

    if args.eps is None:
        raise RobustlabError("--eps is required for a fixed-budget evaluation (or use --mode minimum-norm)")
    _threat(args, (0.0, 1.0))  # a bad --norm or --eps fails before the model and data are loaded
    if not args.suite and not args.attack:
        if args.diagnose:
            if args.bpda or args.eot is not None:
                raise RobustlabError("--bpda and --eot wrap attacks; the diagnostics alone examine the model as it is")
            return _diagnose(args)
        args.suite = DEFAULT_SUITE
    sharded = distributed.launched_distributed()
    if sharded:
        args.device = str(distributed.init_process_group(_device(args.device)))
    try:
        model, card, data, device = _load_model_and_data(args)
        threat = _threat(args, tuple(card.input_bounds))
        attacks = build_suite(args.suite, threat, data.num_classes) if args.suite else {}
        attacks = _around(_named([parse_attack(spec) for spec in args.attack or []], attacks), args)
        out = Path(args.out)
        ev = evaluate(model, data.x.to(device), data.y.to(device), threat=threat, attacks=attacks,
                      cascade=bool(args.suite) if args.cascade is None else args.cascade, batch_size=args.batch_size,
                      seed=args.seed, indices=data.indices, num_classes=data.num_classes, model_card=card.to_dict(),
                      progress=not args.quiet, **_run_state(args, out, sharded))
        if sharded and distributed.rank_and_world()[0] != 0:
            return 0
    finally:
        if sharded:
            distributed.close()
    ev.save(out / "evaluation.json")
    (out / "report.md").write_text(evaluation_markdown(ev))
    print(f"{threat}, {len(data)} samples of {data.name}/{data.split}" + (f", {args.suite} suite" if args.suite else ""))
    _print_table(_accuracy_rows(ev.metrics), ("accuracy", "value   [95% CI]"))
    print(f"wrote {out}/evaluation.json and {out}/report.md")
    _store_run(args, ev, data, card)
    return _diagnose(args, model, data, threat) if args.diagnose else 0


def _named(attacks: list[Any], named: dict[str, Any] | None = None) -> dict[str, Any]:
    """``named`` (e.g. a suite) followed by ``attacks`` under their names, ``pgd-2`` for a second ``pgd``."""
    out = dict(named or {})
    for attack in attacks:
        key, i = attack.name, 1
        while key in out:
            i += 1
            key = f"{attack.name}-{i}"
        out[key] = attack
    return out


def _diagnose(args: argparse.Namespace, model=None, data=None, threat=None) -> int:
    """The gradient-masking checks on the evaluated samples; exit status 1 if any check fails."""
    from robustlab.evaluation import diagnose
    from robustlab.evaluation.io import save_json

    after_evaluation = model is not None
    if model is None:
        model, card, data, _ = _load_model_and_data(args)
        threat = _threat(args, tuple(card.input_bounds))
    device = next(iter(model.parameters()), torch.empty(0)).device
    diagnosis = diagnose(model, data.x.to(device), data.y.to(device), threat=threat, seed=args.seed)
    out = Path(args.out)
    save_json(out / "diagnostics.json", diagnosis.to_dict())
    with open(out / "report.md", "a" if after_evaluation else "w", encoding="utf-8") as report:
        report.write(("\n" if after_evaluation else "") + diagnosis.markdown())
    _print_table([(f.check, f"{f.verdict}: {f.message}") for f in diagnosis.findings], ("check", "finding"))
    print(f"diagnostics: {diagnosis.verdict}; wrote {out}/diagnostics.json (what each check means: `"
          f"{docs_pointer('diagnostics')}`)")
    return 1 if diagnosis.verdict == "fail" else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from robustlab.demo import run_demo

    check_out_folder(args.out)
    start = time.perf_counter()
    summary = run_demo(Path(args.out), seed=args.seed, progress=not args.quiet)
    ev = summary["evaluation"]
    print(f"\nrobustlab demo: {summary['model']} on scikit-learn digits (8x8), {ev.metrics['samples']} test images, {ev.threat}")
    _print_table(_accuracy_rows(ev.metrics), ("accuracy", "value   [95% CI]"))
    print(f"\nreport folder: {args.out}/ (model, evaluation.json, report.md, report.html, grid.png); {time.perf_counter() - start:.1f} s")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from robustlab.reproduce import REPRODUCTIONS, ReproOptions, run_reproduction

    if args.list or not args.name:
        for name, (description, budget, _) in REPRODUCTIONS.items():
            print(f"{name:<12} {description}\n{'':<12} budget: {budget}")
        return 0
    check_out_folder(args.out)
    options = ReproOptions(images=args.images, data_dir=args.data_dir, out=Path(args.out), full=args.full, seed=args.seed,
                           device=str(_device(args.device)), progress=not args.quiet,
                           cache_dir=Path(args.cache_dir) if args.cache_dir else None, retrain=args.retrain,
                           train=not args.no_train)
    result = run_reproduction(args.name, options)
    print(result.markdown)
    print(f"wrote {result.json_path} and {result.markdown_path}")
    return 0


def _store_run(args: argparse.Namespace, ev: Any, data: Any, card: Any) -> None:
    """With --store or --db, add the evaluation to the results database."""
    if not (args.store or args.db):
        return
    from robustlab.models.loading import weights_sha256
    from robustlab.report.store import ResultsStore

    with ResultsStore(args.db) as store:
        run_id = store.add(ev, dataset=data.name, split=data.split, label=args.label, weights_hash=weights_sha256(args.model, card))
    print(f"stored as run {run_id} in {store.path}")


def _percent(value: float | None) -> str:
    return percent(value, missing="-")


def _percent_ci(acc: dict[str, float]) -> str:
    return f"{_percent(acc['value'])} [{_percent(acc['ci_low'])}, {_percent(acc['ci_high'])}]"


def _print_columns(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _threat_text(threat: dict[str, Any]) -> str:
    return f"{threat['norm']} eps={'inf' if threat['eps'] is None else format(threat['eps'], 'g')}"


def cmd_docs(args: argparse.Namespace) -> int:
    from robustlab import documentation

    if args.serve:
        site = documentation.build_site()
        server = documentation.serve_site(site, port=args.port)
        host, port = server.server_address[:2]
        print(f"serving the robustlab documentation at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        finally:
            server.server_close()
        return 0
    if not args.page:
        print("robustlab documentation pages (robustlab docs PAGE, or PAGE#section):")
        for page in documentation.list_pages():
            print(f"  {page}")
        return 0
    sys.stdout.write(documentation.read_page(args.page))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from robustlab.report.html import write_report

    for out in args.out:
        if Path(out).is_dir():
            raise RobustlabError(f"--out {out} is a folder; give a report file name ending in .html or .md")
        check_out_folder(Path(out).parent)
    for out in args.out:
        print(f"wrote {write_report(args.runs, out, title=args.title)}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from robustlab.report.store import ResultsStore

    if args.action == "export" and args.out:
        check_out_file(args.out)
    with ResultsStore(args.db, create=args.action == "import") as store:
        if args.action == "import":
            for file in args.files:
                try:
                    document = json.loads(Path(file).read_text())
                except (OSError, ValueError) as exc:
                    raise RobustlabError(f"cannot read the evaluation file {file}: {exc}") from None
                run_id = store.add(document, dataset=args.dataset, split=args.split, label=args.label)
                print(f"stored {file} as run {run_id} in {store.path}")
        elif args.action == "list":
            runs = store.runs(dataset=args.dataset, norm=args.norm, kind=args.kind, model=args.model, limit=args.limit)
            _print_columns(("id", "created", "kind", "dataset", "model", "threat", "attacks", "n", "clean", "robust", "label"),
                           [(r.id, r.created, r.kind, f"{r.dataset}/{r.split}" if r.split else r.dataset,
                             f"{r.architecture} {(r.model_hash or '')[:10]}",
                             _threat_text({"norm": r.norm, "eps": r.eps}), ",".join(r.attacks), r.samples,
                             _percent(r.clean_accuracy), _percent(r.robust_accuracy), r.label or "") for r in runs])
        elif args.action == "show":
            _show_run(store.get(args.ids[0]))
        elif args.action == "delete":
            for run_id in args.ids:
                store.get(run_id)  # every id must exist before any is deleted
            for run_id in args.ids:
                store.delete(run_id)
                print(f"deleted run {run_id} from {store.path}")
        elif args.action == "compare":
            _compare_runs(store.compare(*args.ids))
        elif args.action == "export":
            text = store.export(args.ids[0], args.format)
            if args.out:
                Path(args.out).write_text(text)
                print(f"wrote run {args.ids[0]} to {args.out}")
            else:
                sys.stdout.write(text)
        else:
            rows = store.leaderboard(dataset=args.dataset, norm=args.norm, eps=args.eps)
            print(f"{args.dataset}, {args.norm} eps={args.eps:g}: lowest robust accuracy found per model")
            _print_columns(("#", "model", "method", "robust [95% CI]", "clean", "n", "run", "attacks", "runs"),
                           [(rank, f"{e['architecture']} {e['model_hash'][:10]}", e["method"] or "-",
                             _percent_ci(e["robust_accuracy"]), _percent(e["clean_accuracy"]["value"]), e["samples"], e["run_id"], ",".join(e["attacks"]),
                             e["runs"]) for rank, e in enumerate(rows, 1)])
    return 0


def _show_run(doc: dict[str, Any]) -> None:
    run, card = doc["run"], doc["model_card"] or {}
    print(f"run {run['id']} ({run['kind']}), stored {run['created']}" + (f", label {run['label']!r}" if run["label"] else ""))
    print(f"model: {card.get('architecture', '?')} {run['model_hash'] or '(no model card)'}"
          + (f", weights sha256 {run['weights_hash']}" if run["weights_hash"] else ""))
    print(f"data: {run['dataset']}" + (f"/{run['split']}" if run["split"] else "") + f", {len(doc['samples'])} samples")
    print(f"threat: {_threat_text(doc['threat'])}, bounds {doc['threat']['bounds']}")
    attacks = doc.get("attacks") or {"attack": doc.get("attack")}
    for name, config in attacks.items():
        print(f"attack {name}: {json.dumps(config)}")
    if run["kind"] == "fixed":
        _print_table(_accuracy_rows(doc["metrics"]), ("accuracy", "value   [95% CI]"))
    else:
        print("metrics: " + json.dumps(doc["metrics"], indent=1))
    print("provenance: " + ", ".join(f"{k}={v}" for k, v in doc["provenance"].items()))


def _compare_runs(comparison: dict[str, Any]) -> None:
    a, b = comparison["runs"]

    def accuracy_of(run: dict[str, Any], *keys: str) -> str:
        value = run["metrics"]
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return _percent(value.get("value")) if isinstance(value, dict) else "-"

    rows = [("kind", a["kind"], b["kind"]),
            ("model", (a["model_hash"] or "-")[:10], (b["model_hash"] or "-")[:10]),
            ("dataset", a["dataset"], b["dataset"]),
            ("threat", _threat_text(a["threat"]), _threat_text(b["threat"])),
            ("attacks", ",".join(a["attacks"]), ",".join(b["attacks"])),
            ("samples", a["metrics"].get("samples"), b["metrics"].get("samples")),
            ("clean", accuracy_of(a, "clean_accuracy"), accuracy_of(b, "clean_accuracy")),
            ("robust (worst case)", accuracy_of(a, "robust_accuracy"), accuracy_of(b, "robust_accuracy"))]
    for name in dict.fromkeys([*a["attacks"], *b["attacks"]]):
        rows.append((f"robust ({name})", accuracy_of(a, "robust_accuracy_per_attack", name),
                     accuracy_of(b, "robust_accuracy_per_attack", name)))
    _print_columns(("", f"run {a['id']}", f"run {b['id']}"), rows)
    if not comparison["same_model"]:
        print("note: different models")
    if not comparison["same_threat"]:
        print("note: different threat models")
    if comparison["samples"] is not None:
        print("per sample (matched on index): " + ", ".join(f"{k} {v}" for k, v in comparison["samples"].items()))


# -- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from robustlab.attacks.base import TARGET_MODES
    from robustlab.training import METHODS, OPTIMIZERS, SCHEDULES
    from robustlab.training.methods import BN_MODES

    parser = _Parser(prog="robustlab")
    default = train_defaults()
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="directory holding the datasets (else $ROBUSTLAB_DATA, the cache, system dirs)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps or auto")
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")

    def defense_option(p: argparse.ArgumentParser, where: str) -> None:
        p.add_argument("--defense", action="append", metavar="NAME[:key=value,...]",
                       help="wrap the model in an input-transformation defense: jpeg[:quality=75], bit-depth[:bits=4], "
                            "thermometer[:levels=16] or resize-pad[:min_size=H,out_size=H*331/299] (random, drawn "
                            "from --seed); repeat for several, the first innermost (closest to the network). " + where)

    def attack_common(p: argparse.ArgumentParser, *, eps_required: bool) -> None:
        common(p)
        add_model_options(p)
        p.add_argument("--split", default="test")
        p.add_argument("--limit", type=positive_int, default=1000, help="stratified subset of this many samples")
        p.add_argument("--norm", default="Linf", help="Linf, L2, L1 or L0")
        p.add_argument("--eps", type=eps_value, required=eps_required,
                       help="radius of the threat model ('inf' for unbounded)")
        p.add_argument("--batch-size", type=positive_int, default=256)
        p.add_argument("--download", action="store_true", help="download the dataset if not found")
        defense_option(p, "They go outside any the model card records, and the evaluation's card lists them all.")
        p.add_argument("--bpda", action="store_true",
                       help="run every attack through BPDA: forward through the real non-differentiable defense, "
                            "backward through its approximation (identity for jpeg and bit-depth, the soft code for "
                            "thermometer); needs such a defense")
        p.add_argument("--eot", type=positive_int, metavar="N",
                       help="run every attack through EOT: average loss and gradient over N fresh draws of the "
                            "stochastic defense or random model per step (Athalye et al. use 30); needs one (resize-pad, sap, rse, "
                            "defense-gan, or the bayesian architecture). With --bpda: "
                            "EOT over BPDA. --diagnose examines the model as it is, without either")

    p = sub.add_parser("datasets", help="list, locate or fetch datasets")
    p.add_argument("action", choices=["list", "locate", "fetch"])
    p.add_argument("name", nargs="?")
    p.add_argument("--data-dir", help="where to look (locate) or to download to (fetch)")
    p.add_argument("--base-url", help="download from this mirror instead of the official source")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("train", help=f"train a model ({', '.join(METHODS.names())}); data-parallel under torchrun",
                       description="Train a model. Under `torchrun --nproc-per-node N -m robustlab train ...` the "
                                   "ranks split every batch of --batch-size and average gradients (Gloo on CPU, "
                                   "NCCL on CUDA); rank 0 writes the checkpoints, metrics and model.")
    common(p)
    p.add_argument("--config", help="run file (TOML; YAML with PyYAML) with these settings, keys as the long option "
                                    "names and method options in an [options] table; the command line overrides it")
    p.add_argument("--dataset", help="required (here or in --config)")
    p.add_argument("--model", help="architecture name (robustlab.models.list_models()); required")
    p.add_argument("--model-arg", help="architecture arguments, key=value,key=value")
    p.add_argument("--mean", type=float, nargs="+", help="per-channel mean for a Normalize layer inside the model")
    p.add_argument("--std", type=float, nargs="+")
    defense_option(p, "The network is trained behind them (thermometer: on the encoded inputs) and the model "
                      "card records them, so that loading the model rebuilds them. Only --method natural behind "
                      "jpeg, bit-depth or thermometer.")
    p.add_argument("--epochs", type=positive_int,
                   help=f"default {default['epochs']} (free training: epochs' worth of steps, a multiple of replays)")
    p.add_argument("--batch-size", type=positive_int, help=f"default {default['batch_size']}")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default {default['optimizer']}")
    p.add_argument("--lr", type=positive_float, help=f"default {default['lr']:g}")
    p.add_argument("--momentum", type=float, help=f"default {default['momentum']:g}")
    p.add_argument("--weight-decay", type=float, help=f"default {default['weight_decay']:g}")
    p.add_argument("--schedule", choices=SCHEDULES, help=f"default {default['schedule']}")
    p.add_argument("--method", help=f"training method, default {default['method']}: {', '.join(METHODS.names())}")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a method option, e.g. steps=40 or beta=6; repeat for several")
    p.add_argument("--norm", help=f"threat model norm for adversarial training and robust validation, default "
                                  f"{default['norm']}")
    p.add_argument("--eps", type=positive_float, help="threat model radius; needed by adversarial methods")
    p.add_argument("--eps-warmup-epochs", type=float,
                   help=f"ramp eps linearly over this many epochs, default {default['eps_warmup_epochs']}")
    p.add_argument("--bn-mode", choices=BN_MODES, help=f"model mode in the inner maximization, default {default['bn_mode']}")
    p.add_argument("--robust-eval-samples", type=nonnegative_int,
                   help=f"validation samples for PGD robust accuracy, default {default['robust_eval_samples']}")
    p.add_argument("--robust-eval-steps", type=positive_int,
                   help=f"PGD steps of the robust validation, default {default['robust_eval_steps']}")
    p.add_argument("--mixed-precision", action="store_true", default=None, help="float16 autocast on CUDA")
    p.add_argument("--limit", type=positive_int, help="train on a stratified subset of this many samples")
    p.add_argument("--val-fraction", type=fraction, help=f"default {default['val_fraction']} (0: no validation)")
    p.add_argument("--out", help="run folder: checkpoints/, metrics.jsonl and the final model; required")
    p.add_argument("--no-resume", action="store_true", default=None,
                   help="start afresh even if the run folder has a checkpoint")
    p.add_argument("--download", action="store_true", default=None)
    # None = not given, so that a --config file can set them (see train_defaults).
    p.set_defaults(func=cmd_train, seed=None, device=None, quiet=None)

    p = sub.add_parser("attack", help="run one attack; save adversarial inputs and a PNG grid")
    attack_common(p, eps_required=True)
    p.add_argument("--attack", required=True, help="NAME[:key=value,...], e.g. pgd:steps=40,step_size=0.01")
    p.add_argument("--targets", choices=TARGET_MODES, help="targeted attack")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("evaluate", help="robust accuracy under several attacks, per sample and worst case")
    attack_common(p, eps_required=False)
    p.add_argument("--attack", action="append", help="NAME[:key=value,...]; repeat for several (after --suite's)")
    p.add_argument("--suite", choices=sorted(SUITE_NAMES),
                   help="an attack suite (standard: AutoAttack's; fast, the default when no --attack is given: "
                        "never weaker at a fraction of its cost); runs as a cascade unless --no-cascade")
    p.add_argument("--cascade", action=argparse.BooleanOptionalAction, default=None,
                   help="run each attack only on samples still unbroken (default: on with --suite, else off)")
    p.add_argument("--state-file", help="per-sample progress, written after every batch and resumed from "
                                        "(default: OUT/state.json, OUT/state-MODE.json for the other modes; "
                                        "one file per rank under torchrun)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if the state file exists")
    p.add_argument("--diagnose", action="store_true",
                   help="also run the gradient-masking diagnostics (exit status 1 if one fails); alone, only them")
    p.add_argument("--mode", choices=["fixed", "minimum-norm", "targeted"], default="fixed",
                   help="fixed: robust accuracy at --eps; minimum-norm: per-sample minimal distances and robust "
                        "accuracy at every eps; targeted: the C&W protocol (every sample against all other classes)")
    p.add_argument("--out", required=True)
    p.add_argument("--store", action="store_true",
                   help="also add the run to the results database ($ROBUSTLAB_RESULTS, else the user data directory)")
    p.add_argument("--db", help="add the run to this results database (implies --store)")
    p.add_argument("--label", help="a name for the stored run")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("reproduce", help="reproduce a published table at CPU scale (--list shows them)")
    p.add_argument("name", nargs="?", help="e.g. cw-table4; omit with --list")
    p.add_argument("--list", action="store_true", help="list the reproductions and their budgets")
    p.add_argument("--images", type=positive_int, help="number of test images (default: the reproduction's CPU default)")
    p.add_argument("--data-dir", help="directory holding the datasets (else $ROBUSTLAB_DATA, the cache, system dirs)")
    p.add_argument("--out", default="reproduce", help="folder for NAME.json and NAME.md")
    p.add_argument("--full", action="store_true", help="the paper's settings (needs a GPU and hours)")
    p.add_argument("--cache-dir", help="where trained models are cached (default: <user cache>/reproduce)")
    p.add_argument("--retrain", action="store_true",
                   help="rebuild the zoo models the reproduction attacks from their recipes (cached) instead of "
                        "loading the shipped weights")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: rows that need a model neither shipped nor cached are reported as not run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("demo", help="train a small model on scikit-learn digits, attack it, write a report (< 2 min)")
    p.add_argument("--out", default="demo-report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("results", help="the results database: list, show, compare, export, import, delete runs; leaderboard")
    results = p.add_subparsers(dest="action", required=True)

    def results_parser(name: str, help: str) -> argparse.ArgumentParser:
        q = results.add_parser(name, help=help)
        q.add_argument("--db", help="database file (default: $ROBUSTLAB_RESULTS, else the user data directory)")
        q.set_defaults(func=cmd_results)
        return q

    q = results_parser("list", "stored runs, newest first")
    q.add_argument("--dataset")
    q.add_argument("--norm")
    q.add_argument("--kind", choices=["fixed", "minimum-norm", "targeted"])
    q.add_argument("--model", help="a prefix of the model card hash")
    q.add_argument("--limit", type=positive_int)
    results_parser("show", "one run: model, threat, attacks, metrics, provenance").add_argument("ids", type=int, nargs=1, metavar="ID")
    results_parser("compare", "two runs side by side").add_argument("ids", type=int, nargs=2, metavar="ID")
    results_parser("delete", "remove runs (and their samples) from the database").add_argument(
        "ids", type=int, nargs="+", metavar="ID")
    q = results_parser("export", "one run as JSON or per-sample CSV")
    q.add_argument("ids", type=int, nargs=1, metavar="ID")
    q.add_argument("--format", choices=["json", "csv"], default="json")
    q.add_argument("--out", help="file to write (default: standard output)")
    q = results_parser("import", "store evaluation JSON files (evaluate's output, or an export)")
    q.add_argument("files", nargs="+")
    q.add_argument("--dataset", help="default: the export's metadata, else the model card's dataset")
    q.add_argument("--split")
    q.add_argument("--label")
    q = results_parser("leaderboard", "robust accuracy per model for a dataset and threat model, best first")
    q.add_argument("--dataset", required=True)
    q.add_argument("--norm", default="Linf")
    q.add_argument("--eps", type=eps_value, required=True)

    p = sub.add_parser("report", help="one self-contained HTML page (or Markdown) from run folders",
                       description="Build a report from the outputs of evaluate, attack, certify and train: "
                                   "each RUN is a folder holding them (or one such file). Sections appear for "
                                   "whatever the runs hold.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder or output file")
    p.add_argument("--out", action="append", required=True,
                   help="report file: .html or .md (the suffix picks the format); repeat for both")
    p.add_argument("--title", default="robustlab report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("docs", help="read the documentation shipped with robustlab: a page, or one of its sections",
                       description="Print a documentation page (robustlab docs diagnostics) or one section of it "
                                   "(robustlab docs diagnostics#eot); without a page, list them. The pointers in "
                                   "robustlab's warnings and reports are such arguments.")
    p.add_argument("page", nargs="?", metavar="PAGE[#SECTION]")
    p.add_argument("--serve", action="store_true", help="build the pages with mkdocs (if installed) and serve them on "
                                                        "localhost")
    p.add_argument("--port", type=int, default=8000, help="port for --serve (0: any free port)")
    p.set_defaults(func=cmd_docs)

    from robustlab.certify.cli import add_certify_parser
    from robustlab.zoo.cli import add_zoo_parser

    add_certify_parser(sub)
    add_zoo_parser(sub)
    parser.description = f"Adversarial robustness of image classifiers. Commands: {', '.join(sub.choices)}."
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0: done. 1: a diagnostic check failed (``evaluate --diagnose``), or an unexpected error,
    reported as one line naming a log file with the traceback to send with a bug report.
    2: a user error (bad option, file, dataset, model or device), one line on stderr, no
    traceback, checked before any output is written. 130: interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except RobustlabError as exc:
        print(f"robustlab: error: {exc}", file=sys.stderr)
        return 2
    level = logging.DEBUG if args.verbose else logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    command = f"robustlab {args.command}" + (f" {args.action}" if getattr(args, "action", None) and args.command == "results" else "")
    try:
        if getattr(args, "device", None) is not None:
            _device(args.device)
        return args.func(args)
    except RobustlabError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, torch.OutOfMemoryError):
        print(f"{command}: error: out of memory; use a smaller --batch-size (or --limit)", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001  a bug (or an input robustlab fails to check): one line and a log
        log_file = _crash_log(argv, exc)
        summary = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"{command}: internal error ({type(exc).__name__}: {summary[:200]}); this is a bug in robustlab: "
              f"please report it with the command line and the traceback in {log_file}", file=sys.stderr)
        return 1


def _crash_log(argv: Sequence[str] | None, exc: BaseException) -> str:
    """Write the traceback, command line and versions to a new file in the temporary folder."""
    import platform

    import robustlab

    text = (f"robustlab {robustlab.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
            f"{platform.platform()}\ncommand: {' '.join(sys.argv[:1] + list(sys.argv[1:] if argv is None else argv))}\n\n"
            + "".join(traceback.format_exception(exc)))
    try:
        descriptor, path = tempfile.mkstemp(prefix="robustlab-error-", suffix=".log", text=True)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        return path
    except OSError:
        return "(no log: the temporary folder is not writable)"
