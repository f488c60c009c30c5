"""What the commands share on the way in: argparse value types, the ``NAME[:key=value,...]``
specs of attacks and defenses, output-path checks, and the option groups several commands add
(run options, model options, attack options).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from robustlab.errors import RobustlabError
from robustlab.threat import NORMS


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors raise instead of exiting, so that
    :func:`robustlab.cli.main` reports them as one line with exit status 2 (sub-command parsers
    inherit the class)."""

    def error(self, message: str) -> NoReturn:
        raise RobustlabError(f"{message} (see {self.prog} --help)")


# -- value types ---------------------------------------------------------------------------
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


def input_shape(text: str) -> tuple[int, ...]:
    """argparse type: ``C,H,W`` (or ``CxHxW``), three positive sizes."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 3,32,32, got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive sizes C,H,W such as 3,32,32, got {text!r}")
    return shape


# -- output paths --------------------------------------------------------------------------
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


# -- NAME:key=value specs ------------------------------------------------------------------
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


def key_values(text: str, what: str) -> dict[str, Any]:
    """``"steps=40,hidden=[16,16]"`` -> ``{"steps": 40, "hidden": [16, 16]}`` (values parsed as
    JSON where they are JSON, ``-`` in keys read as ``_``); ``what`` names the text in errors."""
    out: dict[str, Any] = {}
    for item in _split_top_level(text):
        if "=" not in item:
            raise RobustlabError(f"{what}: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = _value(value.strip())
    return out


def parse_attack(spec: str) -> Any:
    """``"pgd:steps=40,step_size=0.01"`` -> the configured attack."""
    from robustlab.attacks import build_attack

    name, _, params = spec.partition(":")
    return build_attack(name.strip(), **key_values(params, f"attack {name}"))


def parse_defense(spec: str) -> dict[str, Any]:
    """``"bit-depth:bits=3"`` -> ``{"defense": "bit-depth", "bits": 3}``, the full config
    (unset settings at their defaults), as a model card records it. Checked by building it."""
    from torch import nn

    from robustlab.models.preprocessing import build_defense

    name, _, params = spec.partition(":")
    return build_defense(name.strip(), nn.Identity(), **key_values(params, f"defense {name}")).config()


# -- option groups -------------------------------------------------------------------------
def defense_names(**attributes: bool) -> str:
    """The registered defenses (``robustlab.models.preprocessing.DEFENSES``) whose class attributes
    have the given values, e.g. ``defense_names(stochastic=True)``: for help texts and errors."""
    from robustlab.models.preprocessing import DEFENSES

    return ", ".join(name for name in DEFENSES.names()
                     if all(getattr(DEFENSES[name], key) is value for key, value in attributes.items()))


def add_run_options(p: argparse.ArgumentParser) -> None:
    """--data-dir, --seed, --device and --quiet (train, attack, evaluate)."""
    p.add_argument("--data-dir", help="directory holding the datasets (else $ROBUSTLAB_DATA, the cache, system dirs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps or auto")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def add_defense_option(p: argparse.ArgumentParser, where: str) -> None:
    """--defense NAME[:key=value,...], repeatable; ``where`` says what the command does with them."""
    p.add_argument("--defense", action="append", metavar="NAME[:key=value,...]",
                   help=f"wrap the model in an input-transformation defense: {defense_names()}, with its settings "
                        "as in jpeg:quality=75 or bit-depth:bits=4 (random ones draw from --seed); repeat for "
                        "several, the first innermost (closest to the network). " + where)


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
    p.add_argument("--input-shape", type=input_shape, metavar="C,H,W",
                   help="input shape of a factory's model (default: the dataset's)")
    p.add_argument("--num-classes", type=int, help="classes of a factory's model (default: the dataset's)")
    p.add_argument("--dataset", help="default: the dataset named in the model card (required with a factory)")


def add_attack_options(p: argparse.ArgumentParser, *, eps_required: bool) -> None:
    """The model, data, threat model, defenses and attack wrappers of attack and evaluate."""
    add_run_options(p)
    add_model_options(p)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=positive_int, default=1000, help="stratified subset of this many samples")
    p.add_argument("--norm", default="Linf", help=", ".join(NORMS))
    p.add_argument("--eps", type=eps_value, required=eps_required,
                   help="radius of the threat model ('inf' for unbounded)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--download", action="store_true", help="download the dataset if not found")
    add_defense_option(p, "They go outside any the model card records, and the evaluation's card lists them all.")
    p.add_argument("--bpda", action="store_true",
                   help="run every attack through BPDA: forward through the real non-differentiable defense, "
                        "backward through its approximation (identity for jpeg and bit-depth, the soft code for "
                        f"thermometer); needs such a defense ({defense_names(differentiable=False)})")
    p.add_argument("--eot", type=positive_int, metavar="N",
                   help="run every attack through EOT: average loss and gradient over N fresh draws of the "
                        f"stochastic defense or random model per step (Athalye et al. use 30); needs one "
                        f"({defense_names(stochastic=True)}, or the bayesian architecture). With --bpda: "
                        "EOT over BPDA. --diagnose examines the model as it is, without either")
