"""``robustlab train``: train a model; data-parallel under ``torchrun``.

Its settings are written once. Every :class:`~robustlab.training.TrainConfig` field is an option
of the same name (``batch_size``: ``--batch-size``) with the field's default, help and choices
(its metadata), except ``method_options`` (``--option KEY=VALUE``, an ``[options]`` table in a
run file) and ``threat`` (``--norm`` and ``--eps``); the settings of the run itself are the
fields of :class:`TrainRun`. A ``--config`` run file may hold any of them under the same names;
the parser leaves the options it was not given at None, so that the defaults come first, then
the run file, then the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

from robustlab.cli.loading import defended, device, load_data, shape_behind
from robustlab.cli.options import (
    add_defense_option,
    check_out_folder,
    fraction,
    key_values,
    nonnegative_int,
    parse_defense,
    positive_float,
    positive_int,
)
from robustlab.errors import RobustlabError
from robustlab.training import TrainConfig
from robustlab.validate import is_int, is_number

# TrainConfig fields that other settings give: method_options (options), threat (norm and eps).
SET_OTHERWISE = ("method_options", "threat")
# argparse types of TrainConfig fields that refuse more than the field's type (TrainConfig checks again).
_STRICTER_TYPES = {"epochs": positive_int, "batch_size": positive_int, "lr": positive_float,
                   "robust_eval_samples": nonnegative_int, "robust_eval_steps": positive_int}


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclasses.dataclass(frozen=True)
class TrainRun:
    """The settings of a `robustlab train` run that are not TrainConfig fields. Each is an option
    (its field's metadata: the option's help, argparse settings and flags) and a key of the run
    file."""

    dataset: str | None = field(default=None, metadata={"help": "required (here or in --config)"})
    model: str | None = field(default=None, metadata={
        "help": "architecture name (robustlab.models.list_models()); required"})
    model_arg: str = field(default="", metadata={"help": "architecture arguments, key=value,key=value"})
    mean: list[float] | None = field(default=None, metadata={
        "help": "per-channel mean for a Normalize layer inside the model", "type": float, "nargs": "+"})
    std: list[float] | None = field(default=None, metadata={"help": None, "type": float, "nargs": "+"})
    defense: list[str] = field(default_factory=list)  # add_defense_option
    options: dict[str, Any] = field(default_factory=dict)  # --option KEY=VALUE
    norm: str = field(default="Linf", metadata={
        "help": "threat model norm for adversarial training and robust validation"})
    eps: float | None = field(default=None, metadata={
        "help": "threat model radius; needed by adversarial methods", "type": positive_float})
    limit: int | None = field(default=None, metadata={
        "help": "train on a stratified subset of this many samples", "type": positive_int})
    val_fraction: float = field(default=0.1, metadata={
        "help": "held-out fraction of the training data for validation (0: none)", "type": fraction})
    out: str | None = field(default=None, metadata={
        "help": "run folder: checkpoints/, metrics.jsonl and the final model; required"})
    no_resume: bool = field(default=False, metadata={
        "help": "start afresh even if the run folder has a checkpoint", "action": "store_true"})
    download: bool = field(default=False, metadata={"help": None, "action": "store_true"})
    data_dir: str | None = field(default=None, metadata={
        "help": "directory holding the datasets (else $ROBUSTLAB_DATA, the cache, system dirs)"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:1, mps or auto"})
    quiet: bool = field(default=False, metadata={
        "help": "no progress bars", "action": "store_true", "flags": ("--quiet", "-q")})


def _config_fields() -> list[dataclasses.Field[Any]]:
    """The TrainConfig fields that are options of their own."""
    return [f for f in dataclasses.fields(TrainConfig) if f.name not in SET_OTHERWISE]


def train_defaults() -> dict[str, Any]:
    """Every `robustlab train` setting with its default (a --config file may set any of them)."""
    return {f.name: _default(f) for f in [*dataclasses.fields(TrainRun), *_config_fields()]}


def _help(f: dataclasses.Field[Any], choices: Any = None) -> str | None:
    """The field's help, with its choices (a registry's names, sorted) and its default."""
    text, default = f.metadata["help"], _default(f)
    if choices is not None:
        text = f"{text}: {', '.join(sorted(choices) if isinstance(choices, dict) else choices)}"
    if default is None or isinstance(default, bool) or default in ("", [], {}):
        return text
    shown = " ".join(f"{v:g}" for v in default) if isinstance(default, tuple) else \
        f"{default:g}" if isinstance(default, float) else str(default)
    return f"{text}; default {shown}" if text else f"default {shown}"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from robustlab.training import METHODS

    p: argparse.ArgumentParser = sub.add_parser(
        "train", help=f"train a model ({', '.join(METHODS.names())}); data-parallel under torchrun",
        description="Train a model. Under `torchrun --nproc-per-node N -m robustlab train ...` the "
                    "ranks split every batch of --batch-size and average gradients (Gloo on CPU, "
                    "NCCL on CUDA); rank 0 writes the checkpoints, metrics and model.")
    p.add_argument("--config", help="run file (TOML; YAML with PyYAML) with these settings, keys as the long option "
                                    "names and method options in an [options] table; the command line overrides it")
    # None = not given, so that a --config file can set them (see train_settings).
    for f in dataclasses.fields(TrainRun):
        settings = {k: v for k, v in f.metadata.items() if k not in ("flags", "help")}
        if f.name == "defense":
            add_defense_option(p, "The network is trained behind them (thermometer: on the encoded inputs) and the "
                                  "model card records them, so that loading the model rebuilds them. Only --method "
                                  "natural behind jpeg, bit-depth or thermometer.")
        elif f.name == "options":
            p.add_argument("--option", action="append", metavar="KEY=VALUE",
                           help="a method option, e.g. steps=40 or beta=6; repeat for several")
        else:
            p.add_argument(*f.metadata.get("flags", ("--" + f.name.replace("_", "-"),)), default=None, help=_help(f),
                           **settings)
    types = typing.get_type_hints(TrainConfig)
    for f in _config_fields():
        choices = f.metadata.get("choices")
        option: dict[str, Any] = {"default": None, "help": _help(f, choices)}
        kind = types[f.name]
        if type(None) in typing.get_args(kind):  # X | None: an option of type X, not given = the default None
            (kind,) = (arg for arg in typing.get_args(kind) if arg is not type(None))
        if kind is bool:
            option.update(action="store_true")
        elif typing.get_origin(kind) is tuple:
            option.update(type=typing.get_args(kind)[0], nargs="+")
        else:
            option.update(type=_STRICTER_TYPES.get(f.name, kind))
        if isinstance(choices, dict):  # a registry: too many names for the usage line
            option.update(choices=sorted(choices), metavar=f.name.upper())
        elif choices is not None:
            option.update(choices=choices)
        p.add_argument("--" + f.name.replace("_", "-"), **option)
    p.set_defaults(func=run)
    return p


def read_run_file(path: str) -> dict[str, Any]:
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


def train_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every setting of the run, by its run-file name: the defaults, then the --config file, then
    the command line."""
    from_file = read_run_file(args.config) if args.config else {}
    defaults = train_defaults()
    given = {key: value for key, value in vars(args).items() if key in defaults and value is not None}
    options = dict(from_file.get("options", {}))
    for item in args.option or []:
        options.update(key_values(item, "--option"))
    settings = {**defaults, **from_file, **given, "options": options}
    for required in ("dataset", "model", "out"):
        if settings[required] is None:
            raise RobustlabError(f"train needs --{required} (on the command line or in the --config file)")
    return settings


def train_config(settings: dict[str, Any]) -> TrainConfig:
    """The :class:`~robustlab.training.TrainConfig` of `robustlab train`'s settings (see
    :func:`train_settings`)."""
    threat = None if settings["eps"] is None else {"norm": settings["norm"], "eps": settings["eps"]}
    return TrainConfig(**{f.name: settings[f.name] for f in _config_fields()}, method_options=settings["options"],
                       threat=threat)


def _train_run(settings: dict[str, Any]) -> TrainRun:
    run = TrainRun(**{f.name: settings[f.name] for f in dataclasses.fields(TrainRun)})
    if isinstance(run.defense, str) or not isinstance(run.defense, (list, tuple)):
        raise RobustlabError(f"defense must be a list of specs such as ['thermometer:levels=16'], got {run.defense!r}")
    if not is_number(run.val_fraction, finite=False) or not 0 <= run.val_fraction < 1:
        raise RobustlabError(f"val_fraction must lie in [0, 1), got {run.val_fraction!r}")
    if run.limit is not None and not is_int(run.limit, 1):
        raise RobustlabError(f"limit must be a positive integer, got {run.limit!r}")
    return run


def run(args: argparse.Namespace) -> int:
    from robustlab.data import train_val_split
    from robustlab.evaluation import distributed
    from robustlab.models import ModelCard, build_model, save_model
    from robustlab.training import train

    settings = train_settings(args)
    # Validated before any data is loaded, so a misspelt option fails at once.
    config = train_config(settings)
    run = _train_run(settings)
    assert run.dataset is not None and run.model is not None and run.out is not None  # train_settings checked
    defenses = _train_defenses(run.defense, config.method)
    on = device(run.device)
    check_out_folder(run.out)
    data = load_data(run.dataset, split="train", limit=run.limit, seed=config.seed, data_dir=run.data_dir,
                     download=run.download)
    train_set, val_set = (train_val_split(data, run.val_fraction, seed=config.seed) if run.val_fraction > 0
                          else (data, None))
    model_args = key_values(run.model_arg, "model arguments")
    normalize: tuple[Any, Any] | None = (run.mean, run.std) if run.mean is not None else None  # Normalize checks std
    input_shape = shape_behind(defenses, tuple(data.shape))
    model = build_model(run.model, input_shape=input_shape, num_classes=data.num_classes, normalize=normalize,
                        seed=config.seed, **model_args)
    model = defended(model, defenses, config.seed)
    out = Path(run.out)
    # Under torchrun: data-parallel over the ranks; rank 0 alone writes, prints and saves.
    sharded = distributed.launched_distributed()
    if sharded:
        on = distributed.init_process_group(on)
    try:
        main_rank = not sharded or distributed.rank_and_world()[0] == 0
        result = train(model.to(on), train_set.x, train_set.y, config=config,
                       val_x=None if val_set is None else val_set.x, val_y=None if val_set is None else val_set.y,
                       checkpoint_dir=out / "checkpoints", resume=not run.no_resume, progress=not run.quiet,
                       device=on, distributed=sharded, dataset=f"{run.dataset}/train",
                       on_epoch_end=None if run.quiet or not main_rank else lambda r: print(json.dumps(r), file=sys.stderr))
    finally:
        if sharded:
            distributed.close()
    if not main_rank:
        return 0
    card = ModelCard(
        architecture=run.model,
        arguments={"input_shape": list(input_shape), "num_classes": data.num_classes, **model_args},
        dataset=run.dataset,
        normalization=None if normalize is None else {"mean": list(run.mean or ()), "std": list(run.std or ())},
        defenses=defenses,
        training={"method": config.method, "config": config.to_dict(), "samples": len(train_set)},
        metrics={"best_val_acc": result.best_val_acc, "best_val_robust_acc": result.best_val_robust_acc,
                 "final": result.history[-1] if result.history else None},
    )
    path = save_model(model.cpu(), out / "model", card)
    robust = "" if result.best_val_robust_acc is None else f", robust {result.best_val_robust_acc}"
    print(f"saved {path} (val accuracy {result.best_val_acc}{robust})")
    return 0


def _train_defenses(specs: list[str], method: str) -> list[dict[str, Any]]:
    """--defense's configs for training; refused for adversarial or certified training through
    a non-differentiable defense, whose inner attack would see only zero input gradients."""
    from robustlab.models.preprocessing import DEFENSES

    defenses = [parse_defense(spec) for spec in specs]
    masked = [d["defense"] for d in defenses if not DEFENSES[d["defense"]].differentiable]
    if masked and method != "natural":
        raise RobustlabError(f"--method {method} through the non-differentiable defense(s) {masked} would train "
                             "against attacks that see zero input gradients; train naturally (--method natural) "
                             "behind them, or train the network without them and add them at evaluation")
    return defenses
