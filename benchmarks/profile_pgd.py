"""Where robustlab's PGD spends time that torchattacks' does not.

Three views of one batch of the benchmark (PGD-40, Linf eps 0.3, step 0.01, random start; the
cached LeNet of ``pgd_mnist.py``):

1. wall time per batch, interleaved and repeated: robustlab, torchattacks, and a bare
   reference loop (the textbook PGD loop in ten lines: the floor for any library);
2. robustlab's wall time split by component (the oracle's forward+backward, ``BestIterate.update``,
   ``Linf.project``, ``steepest_direction``, ``is_adversarial``, the template's checks and
   extra forward passes), by wrapping those functions with timers *in this process only*;
3. ``torch.profiler`` operator counts and self CPU time for robustlab and torchattacks.

Usage: ``ROBUSTLAB_DATA=/work/shared/data python benchmarks/profile_pgd.py [--batch-size 250]``.
Needs torchattacks (see benchmarks/README.md). Prints Markdown; ``--out`` also writes JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from attack_floor import bare_loop

import robustlab.attacks.base as rl_base
import robustlab.attacks.gradient as rl_gradient
import robustlab.modes as rl_modes
from robustlab.attacks import PGD
from robustlab.data import load_dataset
from robustlab.threat import Linf

EPS, STEP, STEPS = 0.3, 0.01, 40


def bare_pgd(model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
    """The minimal PGD loop (same arithmetic as torchattacks): a floor, not a library."""
    return bare_loop(model, x, y, STEPS, STEP, generator=generator)


class Timers:
    """Accumulated wall time per label of wrapped functions (exact on CPU: ops are synchronous)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[str] = []
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)
        raw = owner.__dict__.get(name, original) if isinstance(owner, type) else original
        is_static = isinstance(raw, staticmethod)
        func = raw.__func__ if is_static else original

        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            # Exclusive time: a wrapped call's time is taken off the enclosing wrapped call.
            start = time.perf_counter()
            self._stack.append(label)
            try:
                return func(*args, **kwargs)
            finally:
                self._stack.pop()
                elapsed = time.perf_counter() - start
                self.seconds[label] += elapsed
                self.calls[label] += 1
                if self._stack:
                    self.seconds[self._stack[-1]] -= elapsed

        setattr(owner, name, staticmethod(timed) if is_static else timed)
        self._undo.append(lambda: setattr(owner, name, raw))

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def robustlab_components(model, x, y, repeats: int) -> dict[str, Any]:
    timers = Timers()
    attack, threat = PGD(steps=STEPS, step_size=STEP, random_start=True), Linf(eps=EPS)
    # What each wrapped function is, in robustlab's own terms.
    timers.wrap(rl_base.Attack, "__call__", "template: Attack.__call__ (rest)")
    timers.wrap(rl_base, "check_inputs", "template: check_inputs")
    timers.wrap(rl_base, "check_logits", "template: check_logits")
    timers.wrap(rl_modes.FrozenEval, "__enter__", "template: FrozenEval enter/exit")
    timers.wrap(rl_modes.FrozenEval, "__exit__", "template: FrozenEval enter/exit")
    timers.wrap(Linf, "contains", "template: threat.contains")
    timers.wrap(Linf, "distance", "template: threat.distance")
    timers.wrap(rl_base.ModelOracle, "logits", "oracle.logits (no-grad forwards)")
    timers.wrap(rl_base.ModelOracle, "loss_and_grad", "oracle.loss_and_grad (fwd+loss+bwd)")
    timers.wrap(rl_gradient, "is_adversarial", "is_adversarial")
    timers.wrap(rl_gradient.BestIterate, "update", "BestIterate.update")
    timers.wrap(rl_gradient.BestIterate, "empty", "BestIterate.empty")
    timers.wrap(Linf, "project", "Linf.project")
    timers.wrap(Linf, "steepest_direction", "Linf.steepest_direction")
    timers.wrap(Linf, "random_init", "Linf.random_init (rest)")
    timers.wrap(rl_gradient.ProjectedGradientDescent, "_descend", "_descend loop (rest: Python, closures)")
    timers.wrap(rl_gradient.ProjectedGradientDescent, "_run", "_run (rest: restarts bookkeeping)")
    try:
        totals = []
        for r in range(repeats):
            start = time.perf_counter()
            attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(r))
            totals.append(time.perf_counter() - start)
    finally:
        timers.restore()
    total = sum(totals)
    rows = sorted(timers.seconds.items(), key=lambda kv: -kv[1])
    return {
        "total_seconds_per_batch": total / repeats,
        "components": [
            {"component": k, "ms_per_batch": 1000 * v / repeats, "calls_per_batch": timers.calls[k] / repeats,
             "share": v / total}
            for k, v in rows
        ],
    }


def op_profile(fn: Callable[[], Any], top: int = 18) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    # self time of aten ops: the kernels and their dispatch; wall minus that is Python and the
    # profiler's own cost.
    aten = [e for e in events if e.key.startswith("aten::")]
    self_total = sum(e.self_cpu_time_total for e in events) / 1e6
    ops = sorted(aten, key=lambda e: -e.self_cpu_time_total)[:top]
    return {
        "wall_seconds_under_profiler": wall,
        "self_cpu_seconds_all_events": self_total,
        "aten_calls": sum(e.count for e in aten),
        "top_ops": [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1000} for e in ops],
        "counts": {e.key: e.count for e in aten},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    import torchattacks

    threads = args.threads or __import__("os").cpu_count() or 1
    torch.set_num_threads(threads)
    model, _, _ = common.get_model("lenet", args.workdir, args.data_dir)
    data = load_dataset("mnist", split="test", data_dir=args.data_dir, limit=1000, seed=0)
    x, y = data.x[: args.batch_size].contiguous(), data.y[: args.batch_size]

    attack, threat = PGD(steps=STEPS, step_size=STEP, random_start=True), Linf(eps=EPS)
    ta = torchattacks.PGD(model, eps=EPS, alpha=STEP, steps=STEPS, random_start=True)
    runners = {
        "robustlab": lambda: attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0)),
        "torchattacks": lambda: ta(x, y),
        "bare loop": lambda: bare_pgd(model, x, y, torch.Generator().manual_seed(0)),
    }
    for fn in runners.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    loads: dict[str, list[float | None]] = {k: [] for k in runners}
    discarded = 0
    for _ in range(args.repeats):
        for name, fn in runners.items():
            seconds, other, dropped = common.quiet_timing(fn)
            times[name].append(seconds)
            loads[name].append(other)
            discarded += dropped
    wall = {k: statistics.median(v) for k, v in times.items()}

    common.wait_until_idle(120.0, probe=0.5)
    with common.OtherLoad() as load_components:
        components = robustlab_components(model, x, y, args.repeats)
    components["other_processes_cores"] = load_components.cores
    profiles = {}
    for name in ("robustlab", "torchattacks"):
        common.wait_until_idle(120.0, probe=0.5)
        with common.OtherLoad() as load_profile:
            profiles[name] = op_profile(runners[name])
        profiles[name]["other_processes_cores"] = load_profile.cores

    report = {"batch_size": args.batch_size, "threads": threads, "repeats": args.repeats,
              "wall_median_seconds": wall, "wall_all_seconds": times, "other_processes_cores": loads,
              "discarded_disturbed_runs": discarded, "robustlab_components": components,
              "op_profiles": profiles, "load_average": common.load_average(),
              "provenance": common.provenance(threads)}
    print(render(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for prof in profiles.values():
            prof.pop("counts")
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def render(report: dict[str, Any]) -> str:
    w = report["wall_median_seconds"]
    b = report["batch_size"]
    out = [(f"## Wall time, one batch of {b} (median of {report['repeats']}, {report['threads']} threads; "
           f"{report['discarded_disturbed_runs']} runs disturbed by other processes discarded and repeated)"), "",
           "| Runner | ms / batch | ms / step | vs bare loop |", "|---|---:|---:|---:|"]
    for name, sec in w.items():
        out.append(f"| {name} | {1000 * sec:.1f} | {1000 * sec / STEPS:.2f} | {sec / w['bare loop']:.2f}× |")
    comp = report["robustlab_components"]
    out += ["", (f"## robustlab by component (exclusive wall time; total {1000 * comp['total_seconds_per_batch']:.1f} "
                "ms / batch, timers on; other processes "
                f"{comp['other_processes_cores'] or 0:.2f} cores)"), "",
            "| Component | ms / batch | calls / batch | share |", "|---|---:|---:|---:|"]
    for c in comp["components"]:
        out.append(f"| {c['component']} | {c['ms_per_batch']:.2f} | {c['calls_per_batch']:.0f} | {100 * c['share']:.1f}% |")
    counts = {k: v["counts"] for k, v in report["op_profiles"].items()}
    keys = sorted(set(counts["robustlab"]) | set(counts["torchattacks"]),
                  key=lambda k: -(counts["robustlab"].get(k, 0) - counts["torchattacks"].get(k, 0)))
    out += ["", "## aten operator calls per batch (torch.profiler)", "",
            "| Operator | robustlab | torchattacks |", "|---|---:|---:|"]
    for k in keys:
        a, t = counts["robustlab"].get(k, 0), counts["torchattacks"].get(k, 0)
        if a != t:
            out.append(f"| {k} | {a} | {t} |")
    for name, prof in report["op_profiles"].items():
        out += ["", (f"### {name}: top operators by self CPU time ({prof['aten_calls']} aten calls; wall under "
                    f"profiler {1000 * prof['wall_seconds_under_profiler']:.0f} ms)"), "",
                "| Operator | calls | self ms |", "|---|---:|---:|"]
        for op in prof["top_ops"]:
            out.append(f"| {op['op']} | {op['calls']} | {op['self_ms']:.2f} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
