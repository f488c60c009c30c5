"""The ``robustlab`` command line (``robustlab --help`` lists the commands).

One module per command, each with ``add_parser(sub)`` (adds its sub-command and sets ``func``
to the function that runs it): :mod:`~robustlab.cli.datasets`, :mod:`~robustlab.cli.train`,
:mod:`~robustlab.cli.attack`, :mod:`~robustlab.cli.evaluate`, :mod:`~robustlab.cli.reproduce`,
:mod:`~robustlab.cli.demo`, :mod:`~robustlab.cli.results`, :mod:`~robustlab.cli.report`,
:mod:`~robustlab.cli.docs`, and beside their packages :mod:`robustlab.certify.cli` and
:mod:`robustlab.zoo.cli`. What they share: :mod:`~robustlab.cli.options` (argument types, the
``NAME:key=value`` specs, option groups), :mod:`~robustlab.cli.loading` (device, data, model,
attack wrappers) and :mod:`~robustlab.cli.tables` (printed tables).

Attacks are named with their hyperparameters as ``NAME[:key=value,key=value]``, for example
``--attack pgd:steps=40,step_size=0.01,restarts=5``; input-transformation defenses likewise, for
example ``--defense jpeg:quality=75`` (see ``robustlab.models.preprocessing.DEFENSES``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence

import torch

from robustlab.certify.cli import add_certify_parser
from robustlab.cli import attack, datasets, demo, docs, evaluate, report, reproduce, results, train
from robustlab.cli.loading import device
from robustlab.cli.options import Parser, parse_attack, parse_defense
from robustlab.cli.train import train_config
from robustlab.errors import RobustlabError
from robustlab.zoo.cli import add_zoo_parser

__all__ = ["COMMANDS", "build_parser", "main", "parse_attack", "parse_defense", "train_config"]

# Each adds its sub-command; `robustlab --help` lists them in this order.
COMMANDS = (datasets.add_parser, train.add_parser, attack.add_parser, evaluate.add_parser, reproduce.add_parser,
            demo.add_parser, results.add_parser, report.add_parser, docs.add_parser, add_certify_parser,
            add_zoo_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="robustlab")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_parser in COMMANDS:
        add_parser(sub)
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
            device(args.device)
        status: int = args.func(args)
        return status
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
