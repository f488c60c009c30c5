"""``robustlab certify``: certified accuracy (IBP / CROWN / CROWN-IBP / alpha-CROWN) at given
radii and, with ``--bracket``, the per-sample bracket lower <= exact <= upper.

The command line adds it with :func:`add_certify_parser` (``robustlab.cli.COMMANDS``).

Writes ``certify.json`` (and ``bracket.md`` / ``bracket.json``) into ``--out`` and prints a
summary. Both are documents (:mod:`robustlab.io`: kinds ``certification`` and ``bracket``) in
strict JSON (RFC 8259): a non-finite number is written as ``null``. In ``bracket.json`` a null
``upper``, ``dist_<attack>`` or ``milp_upper`` means that no adversarial example was found;
:func:`read_bracket` reads the file back with those nulls restored to ``inf``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from robustlab.certify import CERTIFIERS, Certifier, MILPVerifier
from robustlab.errors import RobustlabError
from robustlab.io import load_document, save_document

__all__ = ["add_certify_parser", "bracket_from_dict", "certify_command", "read_bracket"]

def _certifier(name: str, batch_size: int, *, time_limit: float, lp_tighten: bool) -> Certifier:
    """The registered certifier ``name``; the MILP takes --time-limit and --lp-tighten."""
    kind = CERTIFIERS.lookup(name)
    if issubclass(kind, MILPVerifier):
        return kind(time_limit=time_limit, lp_tighten=lp_tighten)
    return kind(batch_size=batch_size)


def certify_command(args: argparse.Namespace) -> int:
    from robustlab.certify.bracket import bracket
    from robustlab.cli.loading import ModelRequest, load_model_and_data
    from robustlab.cli.options import check_out_folder, eps_list
    from robustlab.threat import threat_model

    check_out_folder(args.out)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in CERTIFIERS]
    if unknown or not methods:
        raise RobustlabError(f"unknown certification method(s) {unknown or args.methods!r}; "
                             f"choose from {', '.join(CERTIFIERS.names())}")
    try:
        eps_values = args.eps if isinstance(args.eps, list) else eps_list(str(args.eps))
    except argparse.ArgumentTypeError as exc:
        raise RobustlabError(f"--eps: {exc}") from None
    threat_model(args.norm, eps_values[0], (0.0, 1.0))  # an unknown norm fails before any work
    model, card, data = load_model_and_data(ModelRequest.from_args(args))
    if card.defenses:
        raise RobustlabError(
            f"the model card records preprocessing defenses ({', '.join(d['defense'] for d in card.defenses)}); bound "
            "propagation through JPEG, bit-depth reduction, thermometer encoding or random resizing certifies "
            "nothing meaningful. Certify the network without them"
        )
    model.eval()
    dataset = data.name
    unbounded = threat_model(args.norm, math.inf, tuple(card.input_bounds))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"model": str(args.model), "model_card": card.to_dict(), "dataset": dataset, "samples": len(data), "norm": args.norm,
                     "certified_accuracy": {}, "seconds": {}}
    for method in methods:
        certifier = _certifier(method, args.batch_size, time_limit=args.time_limit, lp_tighten=args.lp_tighten)
        for eps in eps_values:
            start = time.perf_counter()
            result = certifier(model, data.x, data.y, threat=unbounded.with_eps(eps))
            results["certified_accuracy"].setdefault(method, {})[f"{eps:g}"] = result.certified_accuracy
            results["seconds"].setdefault(method, {})[f"{eps:g}"] = round(time.perf_counter() - start, 3)
    if args.bracket:
        n = min(args.bracket, len(data))
        table = bracket(model, data.x[:n], data.y[:n], threat=unbounded, time_limit=args.time_limit,
                        lp_tighten=args.lp_tighten)
        (out / "bracket.md").write_text(table.markdown())
        save_document(out / "bracket.json", "bracket", {"rows": table.rows, "summary": table.summary})
        results["bracket"] = table.summary
        print(table.markdown())
    print(save_document(out / "certify.json", "certification", results).read_text(encoding="utf-8").rstrip())
    return 0


# Distances that are infinite exactly when no adversarial example was found; every other null
# in a bracket row (``exact`` of an unsolved MILP, ``best_attack`` without attacks) means "none".
_INFINITE_WHEN_NULL = ("upper", "milp_upper")


def read_bracket(path: str | Path) -> dict[str, Any]:
    """``{"rows": [...], "summary": {...}}`` from a ``bracket.json``, with the distances written
    as ``null`` because they were infinite (``upper``, ``milp_upper``, ``dist_<attack>``) read
    back as ``inf`` (a file without a kind, written before documents had one, is read as a bracket)."""
    document: dict[str, Any] = load_document(path, "bracket", legacy_kind="bracket")
    return document


def bracket_from_dict(document: dict[str, Any]) -> dict[str, Any]:
    """The bracket document as read from strict JSON, with the nulls of infinite distances as ``inf``."""
    for row in document["rows"]:
        for key, value in row.items():
            if value is None and (key in _INFINITE_WHEN_NULL or key.startswith("dist_")):
                row[key] = math.inf
    return document


def add_certify_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``certify`` sub-command to ``sub`` (the result of ``add_subparsers``)."""
    # Imported here: robustlab.cli imports this module to build its parser.
    from robustlab.cli.options import add_model_options, eps_list, nonnegative_int, positive_float, positive_int

    p: argparse.ArgumentParser = sub.add_parser("certify", help="certified accuracy by bound propagation; exact MILP bracket on a few samples")
    add_model_options(p)
    p.add_argument("--data-dir")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=positive_int, default=1000, help="stratified subset of this many samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--download", action="store_true")
    p.add_argument("--norm", default="Linf", help="Linf, L2 or L1 (the bracket: Linf or L1)")
    p.add_argument("--eps", type=eps_list, required=True, help="comma-separated radii, e.g. 0.01,0.03")
    p.add_argument("--methods", default="ibp,crown", help=f"comma-separated, from {', '.join(CERTIFIERS.names())}")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--bracket", type=nonnegative_int, default=0, metavar="N",
                   help="also compute certified <= exact (MILP) <= attack on the first N samples")
    p.add_argument("--time-limit", type=positive_float, default=60.0, help="MILP seconds per sample (milp, --bracket)")
    p.add_argument("--lp-tighten", action="store_true",
                   help="tighten MILP bounds by an LP per unstable neuron (milp, --bracket)")
    p.add_argument("--out", default="certify-report")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=certify_command)
    return p
