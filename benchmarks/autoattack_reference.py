"""robustlab's `standard` and `fast` protocols against the reference AutoAttack (``pyautoattack``
0.2.0, the authors' code, version "standard"), in one run, on the same models and images.

Models: the robustlab-trained kinds of ``zoo_models.py`` (natural, PGD, TRADES, fast FGSM with
catastrophic overfitting on madry-cnn and small-cnn, bilateral, a CIFAR-10 model), L∞ and L2.
Per model and threat: robust accuracy of each, the samples broken by one and not the other
(both ways, per sample), wall time and model passes (forward and backward passes per sample,
counted the same way for every library by a counting wrapper around the model), and the ratios
fast / reference and standard / reference.

    ROBUSTLAB_DATA=/work/shared/data python benchmarks/autoattack_reference.py [--images 200] \\
        [--rows NAME ...] [--threads 1] [--out benchmarks/results/autoattack_reference.json]

Benchmark code: it reseeds global generators (pyautoattack draws from them) and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import zoo_models

from robustlab.data import load_dataset
from robustlab.evaluation import build_suite, evaluate
from robustlab.settings import RunSettings
from robustlab.threat import threat_model

# Targets of issue 14 for `fast` against the reference.
TIME_TARGET, PASS_TARGET = 0.25, 0.10


@dataclass(frozen=True)
class Row:
    model: str
    norm: str
    eps: float
    images: int


ROWS: dict[str, Row] = {row.model + ":" + row.norm: row for row in (
    Row("mnist-natural-lenet", "Linf", 0.1, 500),
    Row("mnist-pgd-kwsmall", "Linf", 0.3, 500),
    Row("mnist-trades-kwsmall", "Linf", 0.3, 500),
    Row("mnist-fastfgsm-madry", "Linf", 0.3, 500),
    Row("mnist-fastfgsm-smallcnn", "Linf", 0.3, 500),
    Row("mnist-bilateral-kwsmall", "Linf", 0.3, 500),
    Row("cifar10-pgd-kwsmall", "Linf", 8 / 255, 500),
    Row("mnist-natural-lenet", "L2", 1.0, 500),
    Row("mnist-pgd-kwsmall", "L2", 2.0, 500),
)}
# Held-out rows: models of robustlab's zoo, trained to convergence from their recipes and never used to choose
# `fast`'s rules. Run by name (`--rows zoo:mnist-crown-ibp:Linf`), not by default.
HELD_OUT: dict[str, Row] = {row.model + ":" + row.norm: row for row in (
    Row("zoo:mnist-crown-ibp", "Linf", 0.3, 500),
    Row("zoo:mnist-trades", "Linf", 0.3, 500),
    Row("zoo:mnist-mma", "Linf", 0.3, 500),
    # 200 images: a WRN-16-2 robust to a third of them costs the reference about 20 s per image on this CPU.
    Row("zoo:cifar10-pgd", "Linf", 8 / 255, 200),
)}


class CountingModel(nn.Module):
    """The model, counting forward passes and backward passes through it, per sample.

    A backward pass is counted each time a gradient flows back through the output (a hook on
    the output tensor), so FAB's one backward per class counts ``K`` and APGD's one backward
    counts 1."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forwards = 0
        self.backwards = 0

    def forward(self, x: Tensor) -> Tensor:
        self.forwards += x.shape[0]
        out = self.model(x)
        if out.requires_grad:
            n = x.shape[0]
            out.register_hook(lambda grad: self._count_backward(n))
        return out

    def _count_backward(self, n: int) -> None:
        self.backwards += n

    def reset(self) -> None:
        self.forwards = self.backwards = 0


def run_reference(counting: CountingModel, x: Tensor, y: Tensor, row: Row, seed: int, batch_size: int
                  ) -> tuple[Tensor, dict[str, int], list[str | None]]:
    """pyautoattack's standard version, one attack at a time on the images still robust (what
    ``run_standard_evaluation`` does with all four in one call), so that the attack that broke
    each image is known. What one call would not repeat is not counted: from the second call on,
    pyautoattack's model checks are switched off and its clean re-check of the survivors (one
    forward each) is subtracted from the pass count."""
    from pyautoattack import AutoAttack, autoattack

    adversary = AutoAttack(counting, norm=row.norm, eps=row.eps, seed=seed, version="standard", device=x.device)
    attacks = list(adversary.attacks_to_run)
    robust = common.predict(counting.model, x) == y
    broken_by: list[str | None] = [None if r else "clean" for r in robust.tolist()]
    checks = {name: getattr(autoattack.checks, name) for name in ("check_randomized", "check_dynamic", "check_range_output")}
    try:
        for i, attack in enumerate(attacks):
            todo = robust.nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            if i > 0:
                autoattack.checks.check_randomized = lambda *a, **k: None
                autoattack.checks.check_dynamic = lambda *a, **k: None
                autoattack.checks.check_range_output = lambda *a, **k: 10
                counting.forwards -= todo.numel()
            adversary.attacks_to_run = [attack]
            x_adv, _ = adversary.run_standard_evaluation(x[todo], y[todo], batch_size=batch_size)
            _check_and_record(counting, x, y, x_adv, todo, robust, broken_by, attack, row)
    finally:
        for name, fn in checks.items():
            setattr(autoattack.checks, name, fn)
    counts: dict[str, int] = {}
    for b in broken_by:
        if b not in (None, "clean"):
            counts[b] = counts.get(b, 0) + 1
    return robust, counts, broken_by


def _check_and_record(counting, x, y, x_adv, todo, robust, broken_by, attack, row) -> None:
    """Judge the reference's images by a fresh forward pass (uncounted: ``counting.model``)."""
    check = common.check_threat_set(x[todo], x_adv, row.eps) if row.norm == "Linf" else None
    if check is not None and (check.linf_violations or check.box_violations or check.nonfinite):
        raise SystemExit(f"pyautoattack returned images outside the threat set: {check.as_dict()}")
    fell = todo[common.predict(counting.model, x_adv) != y[todo]]
    robust[fell] = False
    for i in fell.tolist():
        broken_by[i] = attack


def run_robustlab(suite: str, counting: CountingModel, x: Tensor, y: Tensor, row: Row, seed: int, batch_size: int,
                  square: dict[str, Any] | None = None) -> tuple[Tensor, dict[str, int]]:
    threat = threat_model(row.norm, row.eps)
    attacks = build_suite(suite, threat, 10)
    if square and "square" in attacks:  # a variant of the suite's Square (--fast-square)
        attacks["square"] = dataclasses.replace(attacks["square"], **square)
    ev = evaluate(counting, x, y, threat=threat, attacks=attacks, cascade=True, settings=RunSettings(seed=seed, batch_size=batch_size))
    broken_by: dict[str, int] = {}
    for s in ev.samples:
        if s["broken_by"] not in (None, "clean"):
            broken_by[s["broken_by"]] = broken_by.get(s["broken_by"], 0) + 1
    return (torch.tensor([s["broken_by"] is None for s in ev.samples]), broken_by,
            [s["broken_by"] for s in ev.samples])


def run_torchattacks(counting: CountingModel, x: Tensor, y: Tensor, row: Row, seed: int, batch_size: int
                     ) -> tuple[Tensor, dict[str, int], list[str | None]]:
    """torchattacks' AutoAttack (its re-implementation, version "standard", the same seed),
    judged like the reference: by a fresh, uncounted forward pass on its images, checked
    against the threat set. It runs its four attacks in one call: no per-attack credit."""
    import torchattacks

    attack = torchattacks.AutoAttack(counting, norm=row.norm, eps=row.eps, version="standard", n_classes=10, seed=seed)
    robust = common.predict(counting.model, x) == y
    broken_by: list[str | None] = [None if r else "clean" for r in robust.tolist()]
    for lo in range(0, len(x), batch_size):
        todo = lo + robust[lo:lo + batch_size].nonzero().squeeze(1)
        if todo.numel():
            _check_and_record(counting, x, y, attack(x[todo], y[todo]), todo, robust, broken_by, "autoattack", row)
    return robust, {"autoattack": sum(b == "autoattack" for b in broken_by)}, broken_by


def measure(name: str, fn, counting: CountingModel, device: torch.device) -> dict[str, Any]:
    counting.reset()
    with common.OtherLoad() as load:
        common.synchronize(device)
        start = time.perf_counter()
        robust, *extra = fn()
        common.synchronize(device)
        seconds = time.perf_counter() - start
    out = {"robust": robust.cpu(), "seconds": seconds, "forwards": counting.forwards, "backwards": counting.backwards,
           "passes": counting.forwards + counting.backwards, "other_load_cores": load.cores}
    if extra:
        out["broken_by"], out["per_sample"] = extra
    common.log(f"  [{name}] {seconds:.1f} s, {out['passes']} passes, robust {int(robust.sum())}")
    return out


def _reused(previous: dict[str, Any], suites: list[str], x: Tensor) -> dict[str, dict[str, Any]]:
    """The runs of an earlier result of the same row that are not run again (the reference's,
    and any suite not in ``suites``), with their per-sample verdicts as the ``robust`` mask."""
    runs = {}
    for name, run in previous["runs"].items():
        if name in suites:
            continue
        kept = {k: v for k, v in run.items() if k in ("seconds", "forwards", "backwards", "passes",
                                                    "other_load_cores", "broken_by", "per_sample")}
        kept["robust"] = torch.tensor([v is None for v in run["per_sample"]])
        kept["reused_from_earlier_run"] = True
        runs[name] = kept
    if len(runs["reference"]["robust"]) != len(x):
        raise SystemExit("the reused result holds another number of images")
    return runs


def run_row(row: Row, images: int, seed: int, batch_size: int, reference_seeds: list[int],
            suites: list[str], previous: dict[str, Any] | None = None,
            suite_seeds: dict[str, list[int]] | None = None, retime_reference: bool = False,
            torchattacks: bool = False, device: torch.device | None = None,
            fast_square: dict[str, Any] | None = None) -> dict[str, Any]:
    device = device or torch.device("cpu")
    model, card = zoo_models.get(row.model)
    model.to(device)
    dataset = zoo_models.dataset(row.model)
    data = load_dataset(dataset, split="test", limit=images, seed=seed)
    x, y = data.x.contiguous().to(device), data.y.to(device)
    counting = CountingModel(model).eval()
    clean = common.predict(model, x) == y
    common.log(f"[{row.model} {row.norm} eps={row.eps:.4g}] {len(x)} images, clean {int(clean.sum())}")
    torch.manual_seed(seed)
    reused_reference_seconds = None
    if previous is not None:
        runs = _reused(previous, suites, x)
        if fast_square:  # the earlier seeds of `fast` ran another Square
            runs = {name: run for name, run in runs.items() if not name.startswith("fast-seed")}
        reference_seeds = list(previous.get("reference_seeds", [seed]))[1:]
        if retime_reference:
            # The reference again, in this process and under this load, for the time ratio; its
            # verdicts must be the reused ones (the same seed gives the same run).
            reused = runs["reference"]
            reused_reference_seconds = reused["seconds"]
            runs["reference"] = measure("reference", lambda: run_reference(counting, x, y, row, seed, batch_size), counting,
                                        device)
            if not torch.equal(runs["reference"]["robust"], reused["robust"]):
                raise SystemExit(f"{row.model} {row.norm}: the reference's verdicts differ from the reused run's")
    else:
        runs = {"reference": measure("reference", lambda: run_reference(counting, x, y, row, seed, batch_size), counting,
                                     device)}
    square = {"fast": fast_square}
    for suite in suites:
        runs[suite] = measure(suite, lambda: run_robustlab(suite, counting, x, y, row, seed, batch_size, square.get(suite)),
                              counting, device)
    suite_seeds = suite_seeds or {}
    for suite, extra_seeds in suite_seeds.items():
        for extra_seed in extra_seeds:
            runs[f"{suite}-seed{extra_seed}"] = measure(f"{suite} seed {extra_seed}", lambda: run_robustlab(
                suite, counting, x, y, row, extra_seed, batch_size, square.get(suite)), counting, device)
    if torchattacks:
        runs["torchattacks"] = measure("torchattacks", lambda: run_torchattacks(counting, x, y, row, seed, batch_size),
                                       counting, device)
    if previous is None:
        for extra_seed in reference_seeds:
            runs[f"reference-seed{extra_seed}"] = measure(f"reference seed {extra_seed}", lambda: run_reference(
                counting, x, y, row, extra_seed, batch_size), counting, device)
    runs = {name: runs[name] for name in ("reference", "standard", "fast", *sorted(runs)) if name in runs}
    ref = runs["reference"]["robust"]
    # Samples whose verdict changes with the reference's seed: what no protocol can be held to.
    variable = torch.zeros_like(ref)
    for extra_seed in reference_seeds:
        variable |= runs[f"reference-seed{extra_seed}"]["robust"] != ref
    result: dict[str, Any] = {"model": row.model, "dataset": dataset, "norm": row.norm, "eps": row.eps,
                              "images": len(x), "clean": int(clean.sum()), "runs": {},
                              "reference_seeds": [seed, *reference_seeds],
                              "seed_variable": variable.nonzero().squeeze(1).tolist()}
    # Images the reference broke that a suite leaves robust with every one of its seeds (its
    # earlier seeds' runs reused from ``previous`` count too).
    every_seed: dict[str, Tensor] = {}
    for suite in ("standard", "fast"):
        seeds = sorted(int(k.rsplit("seed", 1)[1]) for k in runs if k.startswith(f"{suite}-seed"))
        if suite in runs and seeds:
            every_seed[suite] = runs[suite]["robust"].clone()
            for extra_seed in seeds:
                every_seed[suite] &= runs[f"{suite}-seed{extra_seed}"]["robust"]
            result[f"{suite}_seeds"] = [seed, *seeds]
    for name, run in runs.items():
        robust = run.pop("robust")
        if name in every_seed:
            missed = ~ref & every_seed[name] & ~variable
            run["broken_by_reference_not_this_in_any_seed_beyond_seed_variation"] = int(missed.sum())
            run["indices_broken_by_reference_not_this_in_any_seed_beyond_seed_variation"] = missed.nonzero().squeeze(1).tolist()
        run["robust_accuracy"] = float(robust.float().mean())
        run["seconds"] = round(run["seconds"], 2)
        if name != "reference":
            run["broken_by_reference_not_this"] = int((~ref & robust).sum())
            run["indices_broken_by_reference_not_this"] = (~ref & robust).nonzero().squeeze(1).tolist()
            run["broken_by_reference_not_this_beyond_seed_variation"] = int((~ref & robust & ~variable).sum())
            run["broken_by_this_not_reference"] = int((ref & ~robust).sum())
            # A reused run's time is compared with the reference's time of its own (earlier) run.
            reference_seconds = (reused_reference_seconds if run.get("reused_from_earlier_run") and reused_reference_seconds
                                 else runs["reference"]["seconds"])
            run["reference_seconds"] = round(reference_seconds, 2)
            run["time_ratio"] = round(run["seconds"] / reference_seconds, 3)
            run["pass_ratio"] = round(run["passes"] / max(runs["reference"]["passes"], 1), 4)
        result["runs"][name] = run
    return result


def _missed(run: dict[str, Any]) -> str:
    """Samples the reference broke and this run did not, and (in parentheses, where the
    reference ran with several seeds) how many of them beyond the reference's seed variation."""
    beyond = run.get("broken_by_reference_not_this_beyond_seed_variation")
    every = run.get("broken_by_reference_not_this_in_any_seed_beyond_seed_variation")
    return (f"{run['broken_by_reference_not_this']}" + ("" if beyond is None else f" ({beyond}")
            + ("" if every is None else f"; {every} with no seed") + ("" if beyond is None else ")"))


def _reference_seconds(result: dict[str, Any], name: str) -> float:
    """The reference's seconds that run ``name`` of ``result`` is timed against."""
    run = result["runs"][name]
    return run.get("reference_seconds") or run["seconds"] / run["time_ratio"]


def markdown(results: list[dict[str, Any]]) -> str:
    head = ("| model | threat | images (clean) | robust: reference / standard / fast | "
            "ref-not-std / std-not-ref | ref-not-fast / fast-not-ref | seed-variable (ref seeds) | "
            "seconds: ref / std / fast | time ratio std / fast | pass ratio std / fast |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in results:
        ref, std, fast = (r["runs"][k] for k in ("reference", "standard", "fast"))
        lines.append(
            f"| {r['model']} | {r['norm']} {r['eps']:.4g} | {r['images']} ({r['clean']}) | "
            f"{100 * ref['robust_accuracy']:.1f} / {100 * std['robust_accuracy']:.1f} / {100 * fast['robust_accuracy']:.1f} | "
            f"{_missed(std)} / {std['broken_by_this_not_reference']} | "
            f"{_missed(fast)} / {fast['broken_by_this_not_reference']} | "
            f"{len(r.get('seed_variable', []))} ({len(r.get('reference_seeds', [0]))}) | "
            f"{ref['seconds']:.0f} / {std['seconds']:.0f} / {fast['seconds']:.0f} | "
            f"{std['time_ratio']:.2f} / {fast['time_ratio']:.2f} | {std['pass_ratio']:.3f} / {fast['pass_ratio']:.3f} |")
    total = {k: sum(r["runs"][k]["passes"] for r in results) for k in ("reference", "standard", "fast")}
    # Each run's time against the reference run it was measured beside (a reused run: the earlier one).
    seconds = {k: sum(r["runs"][k]["seconds"] for r in results) / sum(_reference_seconds(r, k) for r in results)
               for k in ("standard", "fast")}
    lines.append(f"\nTotal over the rows: passes fast / reference = {total['fast'] / max(total['reference'], 1):.3f}, "
                 f"standard / reference = {total['standard'] / max(total['reference'], 1):.3f}; wall time fast / "
                 f"reference = {seconds['fast']:.3f}, standard / reference = {seconds['standard']:.3f}.")
    peer = [r for r in results if "torchattacks" in r["runs"]]
    if peer:
        lines += ["", "torchattacks' AutoAttack (version standard, same seed) beside the reference:", "",
                  "| model | threat | robust: reference / torchattacks | ref-not-ta / ta-not-ref | time ratio | pass ratio |",
                  "|---|---|---|---|---|---|"]
        for r in peer:
            ref, ta = r["runs"]["reference"], r["runs"]["torchattacks"]
            lines.append(f"| {r['model']} | {r['norm']} {r['eps']:.4g} | {100 * ref['robust_accuracy']:.1f} / "
                         f"{100 * ta['robust_accuracy']:.1f} | {_missed(ta)} / {ta['broken_by_this_not_reference']} | "
                         f"{ta['time_ratio']:.2f} | {ta['pass_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=[*ROWS, *HELD_OUT],
                   help=f"rows to run (default all): {list(ROWS)}; held-out zoo rows: {list(HELD_OUT)}")
    p.add_argument("--images", type=int, help="images per row (default: each row's own count)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--reference-seeds", type=int, nargs="*", default=[],
                   help="also run the reference with these seeds (its seed-to-seed variation)")
    for suite in ("standard", "fast"):
        p.add_argument(f"--{suite}-seeds", type=int, nargs="*", default=[],
                       help=f"also run {suite} with these seeds: an image the reference broke counts as missed by "
                            f"{suite} only if no seed of {suite} breaks it ({suite}'s own seed-to-seed variation; "
                            "runs with other seeds reused by --reuse-reference count too)")
    p.add_argument("--torchattacks", action="store_true",
                   help="also run torchattacks' AutoAttack (version standard, the same seed): its robust accuracy, "
                        "time and passes beside the reference's")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where the model and images live: cpu (default) or cuda[:N]")
    p.add_argument("--suites", nargs="*", default=["standard", "fast"], choices=["standard", "fast"],
                   help="the robustlab suites to run with --seed (default both; none: only the extra seeds, the "
                        "rest reused by --reuse-reference)")
    p.add_argument("--reuse-reference", type=Path,
                   help="take the reference's runs (and those of the suites not run) of each row from this earlier "
                        "result file, same rows, images and seed: to measure a changed suite against the same "
                        "reference verdicts; the reused runs are marked in the JSON")
    p.add_argument("--retime-reference", action="store_true",
                   help="with --reuse-reference: run the reference again (its first seed) in this process, for a time "
                        "ratio measured under the same load; its verdicts are checked against the reused ones")
    p.add_argument("--fast-square", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="measure a variant of fast: these fields of its SquareAttack replaced (a JSON value each, e.g. "
                        "cold_search_near=0.2); recorded in the result's settings")
    p.add_argument("--out", type=Path, default=common.BENCH_DIR / "results" / "autoattack_reference.json")
    p.add_argument("--render", type=Path, nargs="+",
                   help="only print the Markdown table of these result files together (runs nothing)")
    args = p.parse_args(argv)
    if args.render:
        print(markdown([r for path in args.render for r in json.loads(path.read_text())["results"]]))
        return 0
    fast_square = {}
    for item in args.fast_square:
        field, sep, value = item.partition("=")
        if not sep:
            p.error(f"--fast-square takes FIELD=VALUE, got {item!r}")
        fast_square[field] = json.loads(value)
    torch.set_num_threads(args.threads)
    logging.getLogger("auto-attack").setLevel(logging.ERROR)
    results = []
    earlier = json.loads(args.reuse_reference.read_text())["results"] if args.reuse_reference else None
    for key in args.rows:
        row = {**ROWS, **HELD_OUT}[key]
        images = args.images or row.images
        previous = None
        if earlier is not None:
            found = [r for r in earlier if (r["model"], r["norm"], r["eps"], r["images"]) == (row.model, row.norm, row.eps, images)]
            if not found:
                raise SystemExit(f"{args.reuse_reference} has no result for {key} on {images} images")
            previous = found[0]
        results.append(run_row(row, images, args.seed, args.batch_size, args.reference_seeds, args.suites, previous,
                               {"standard": args.standard_seeds, "fast": args.fast_seeds}, args.retime_reference,
                               args.torchattacks, torch.device(args.device), fast_square))
        report = {"benchmark": "autoattack_reference",
                  "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
                  "settings": {"seed": args.seed, "batch_size": args.batch_size, "fast_square": fast_square,
                               "targets": {"time_ratio": TIME_TARGET, "pass_ratio": PASS_TARGET}},
                  "results": results, "provenance": {**common.provenance(args.threads, args.device),
                                                     "pyautoattack": common.version_of("pyautoattack")}}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
