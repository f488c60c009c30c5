"""``robustlab evaluate``: robust accuracy under several attacks, per sample and worst case, at a
fixed --eps (``--mode fixed``, with the gradient-masking diagnostics on request), or the
unbounded protocols (``--mode minimum-norm``, ``--mode targeted``)."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from robustlab.cli.loading import ModelRequest, device, load_defended_model, threat, wrap_attacks
from robustlab.cli.options import add_attack_options, check_out_file, check_out_folder, parse_attack
from robustlab.cli.tables import accuracy_rows, print_table
from robustlab.documentation import docs_pointer
from robustlab.errors import RobustlabError
from robustlab.settings import RunSettings
from robustlab.threat import ThreatModel

MODES = ("fixed", "minimum-norm", "targeted")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from robustlab.evaluation.suites import SUITES

    p: argparse.ArgumentParser = sub.add_parser(
        "evaluate", help="robust accuracy under several attacks, per sample and worst case")
    add_attack_options(p, eps_required=False)
    p.add_argument("--attack", action="append", help="NAME[:key=value,...]; repeat for several (after --suite's)")
    p.add_argument("--suite", choices=sorted(SUITES),
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
    p.add_argument("--mode", choices=MODES, default="fixed",
                   help="fixed: robust accuracy at --eps; minimum-norm: per-sample minimal distances and robust "
                        "accuracy at every eps; targeted: the C&W protocol (every sample against all other classes)")
    p.add_argument("--out", required=True)
    p.add_argument("--store", action="store_true",
                   help="also add the run to the results database ($ROBUSTLAB_RESULTS, else the user data directory)")
    p.add_argument("--db", help="add the run to this results database (implies --store)")
    p.add_argument("--label", help="a name for the stored run")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
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
    return _evaluate_unbounded(args)


def _evaluate_unbounded(args: argparse.Namespace) -> int:
    """Minimal distances (--mode minimum-norm) or the C&W targeted protocol (--mode targeted)."""
    from robustlab.evaluation import (
        MinimumNormEvaluation,
        TargetedEvaluation,
        distributed,
        evaluate_minimum_norm,
        evaluate_targeted,
    )
    from robustlab.report import minimum_norm_markdown, targeted_markdown

    request = ModelRequest.from_args(args)
    sharded = distributed.launched_distributed()
    if sharded:
        request = dataclasses.replace(request, device=str(distributed.init_process_group(device(request.device))))
    try:
        model, card, data, on = load_defended_model(request)
        attacks = wrap_attacks(_named([parse_attack(spec) for spec in args.attack]), bpda=request.bpda, eot=request.eot)
        unbounded = threat(args.norm, math.inf, tuple(card.input_bounds))
        x, y = data.x.to(on), data.y.to(on)
        out = Path(args.out)
        common = dict(settings=_settings(args, on), indices=data.indices, num_classes=data.num_classes,
                      model_card=card.to_dict(), **_run_state(args, out, sharded))
        ev: MinimumNormEvaluation | TargetedEvaluation
        if args.mode == "minimum-norm":
            ev = evaluate_minimum_norm(model, x, y, attacks=attacks, threat=unbounded, **common)
        else:
            if len(attacks) != 1:
                raise RobustlabError("--mode targeted runs the C&W protocol with exactly one --attack")
            ev = evaluate_targeted(model, x, y, attack=next(iter(attacks.values())), threat=unbounded,
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


def _settings(args: argparse.Namespace, on: torch.device) -> RunSettings:
    """--seed, --batch-size and --quiet, on the device the model and data were loaded to."""
    return RunSettings(seed=args.seed, batch_size=args.batch_size, progress=not args.quiet, device=str(on))


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
    requested = threat(args.norm, args.eps)  # a bad --norm or --eps fails before the model and data are loaded
    request = ModelRequest.from_args(args)
    suite = args.suite
    if not suite and not args.attack:
        if args.diagnose:
            if request.bpda or request.eot is not None:
                raise RobustlabError("--bpda and --eot wrap attacks; the diagnostics alone examine the model as it is")
            return _diagnose(request, requested, Path(args.out))
        suite = DEFAULT_SUITE
    sharded = distributed.launched_distributed()
    if sharded:
        request = dataclasses.replace(request, device=str(distributed.init_process_group(device(request.device))))
    try:
        model, card, data, on = load_defended_model(request)
        threat_model = requested.with_bounds(tuple(card.input_bounds))
        attacks = build_suite(suite, threat_model, data.num_classes) if suite else {}
        attacks = wrap_attacks(_named([parse_attack(spec) for spec in args.attack or []], attacks),
                               bpda=request.bpda, eot=request.eot)
        out = Path(args.out)
        ev = evaluate(model, data.x.to(on), data.y.to(on), threat=threat_model, attacks=attacks,
                      cascade=bool(suite) if args.cascade is None else args.cascade, settings=_settings(args, on),
                      indices=data.indices, num_classes=data.num_classes, model_card=card.to_dict(),
                      **_run_state(args, out, sharded))
        if sharded and distributed.rank_and_world()[0] != 0:
            return 0
    finally:
        if sharded:
            distributed.close()
    ev.save(out / "evaluation.json")
    (out / "report.md").write_text(evaluation_markdown(ev))
    print(f"{threat_model}, {len(data)} samples of {data.name}/{data.split}" + (f", {suite} suite" if suite else ""))
    print_table(accuracy_rows(ev.metrics), ("accuracy", "value   [95% CI]"))
    print(f"wrote {out}/evaluation.json and {out}/report.md")
    _store_run(args, ev, data, card)
    if not args.diagnose:
        return 0
    return _diagnose(request, requested, out, evaluated=(model, data, threat_model))


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


def _diagnose(request: ModelRequest, requested: ThreatModel, out: Path,
              evaluated: tuple[torch.nn.Module, Any, Any] | None = None) -> int:
    """The gradient-masking checks on the evaluated samples (``evaluated``: the model, data and
    threat model of the evaluation just run; else loaded here, ``requested`` on the card's box);
    exit status 1 if any check fails."""
    from robustlab.evaluation import diagnose
    from robustlab.io import save_json

    if evaluated is None:
        model, card, data, _ = load_defended_model(request)
        threat_model = requested.with_bounds(tuple(card.input_bounds))
    else:
        model, data, threat_model = evaluated
    on = next(iter(model.parameters()), torch.empty(0)).device
    diagnosis = diagnose(model, data.x.to(on), data.y.to(on), threat=threat_model, seed=request.seed)
    save_json(out / "diagnostics.json", diagnosis.to_dict())
    with open(out / "report.md", "a" if evaluated else "w", encoding="utf-8") as report:
        report.write(("\n" if evaluated else "") + diagnosis.markdown())
    print_table([(f.check, f"{f.verdict}: {f.message}") for f in diagnosis.findings], ("check", "finding"))
    print(f"diagnostics: {diagnosis.verdict}; wrote {out}/diagnostics.json (what each check means: `"
          f"{docs_pointer('diagnostics')}`)")
    return 1 if diagnosis.verdict == "fail" else 0


def _store_run(args: argparse.Namespace, ev: Any, data: Any, card: Any) -> None:
    """With --store or --db, add the evaluation to the results database."""
    if not (args.store or args.db):
        return
    from robustlab.models.loading import weights_sha256
    from robustlab.report.store import ResultsStore

    with ResultsStore(args.db) as store:
        run_id = store.add(ev, dataset=data.name, split=data.split, label=args.label,
                           weights_hash=weights_sha256(args.model, card))
    print(f"stored as run {run_id} in {store.path}")

