"""Neural-ODE models on MNIST-sized inputs (issue 6): forward and backward time and peak memory of
ODENet and TisODE against the CNN baseline, and direct back-propagation against the adjoint method.

Every configuration runs on the same random batch of ``--batch-size`` 1x28x28 images with the
same width (``--channels``; the paper's is 64) and is timed as the median of ``--repeats`` runs
(each after waiting for an idle machine, see ``common.quiet_timing``), after one warm-up:

``forward``   ``model(x)`` under ``torch.no_grad()`` in eval mode
``backward``  ``loss.backward()`` of the cross-entropy of a forward with gradients, alone
              (forward with gradients timed separately as ``forward_grad``)
``memory``    peak memory of one forward with gradients plus backward, each configuration in a
              fresh process: on CPU the growth of the kernel's peak-RSS mark (VmHWM, reset after setup) over
              the resident size before the step (no warm-up step, whose freed memory would be reused); on
              CUDA ``max_memory_allocated`` after one warm-up step. Direct back-propagation stores every
              solver step's activations; the adjoint does not.

Configurations: ``cnn`` (``ode-cnn``), ``odenet`` (Euler 0.1, 10 steps), ``tisode`` (Euler 0.05,
20 steps) and ``tisode+steady`` (the training forward with the steady-state term over [0.9, 1.5],
32 steps), all direct; ``odenet-adjoint`` and ``tisode-adjoint`` when torchdiffeq is importable.

Benchmark code: it prints, and reseeds nothing but its own generators. Markdown on stdout,
progress on stderr, JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from robustlab.models import build_model  # noqa: E402
from robustlab.models.ode import logits_and_steady_state  # noqa: E402

SHAPE = (1, 28, 28)
#: name -> (architecture, extra arguments, with the steady-state term).
CONFIGS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "cnn": ("ode-cnn", {}, False),
    "odenet": ("odenet", {}, False),
    "tisode": ("tisode", {}, False),
    "tisode+steady": ("tisode", {}, True),
    "odenet-adjoint": ("odenet", {"adjoint": True}, False),
    "tisode-adjoint": ("tisode", {"adjoint": True}, False),
}


def _available() -> list[str]:
    adjoint = importlib.util.find_spec("torchdiffeq") is not None
    if not adjoint:
        common.log("[adjoint] torchdiffeq is not importable: adjoint configurations skipped")
    return [name for name, (_, extra, _) in CONFIGS.items() if adjoint or not extra.get("adjoint")]


def _setup(name: str, args) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, bool]:
    architecture, extra, steady = CONFIGS[name]
    model = build_model(architecture, input_shape=SHAPE, num_classes=10, channels=args.channels, seed=0, **extra)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, *SHAPE, generator=generator).to(args.device)
    y = torch.randint(0, 10, (args.batch_size,), generator=generator).to(args.device)
    return model.to(args.device), x, y, steady


def _loss(model, x, y, steady: bool) -> torch.Tensor:
    if steady:
        logits, penalty = logits_and_steady_state(model, x)
        return F.cross_entropy(logits, y) + 0.01 * penalty.mean()
    return F.cross_entropy(model(x), y)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, args) -> dict[str, Any]:
    fn()
    runs = []
    for _ in range(args.repeats):
        seconds, load, discarded = common.quiet_timing(fn, wait=args.wait_idle, retries=args.retries)
        runs.append({"seconds": seconds, "other_cores": load, "discarded": discarded})
    return {"median_s": statistics.median(r["seconds"] for r in runs), "runs": runs}


def time_config(name: str, args) -> dict[str, Any]:
    model, x, y, steady = _setup(name, args)
    model.eval()

    def forward() -> None:
        with torch.no_grad():
            model(x)
        _sync(args.device)

    def forward_grad() -> torch.Tensor:
        loss = _loss(model, x, y, steady)
        _sync(args.device)
        return loss

    backward_times = []

    def backward() -> None:
        # Only the backward pass is timed: the forward that builds its graph runs first, untimed.
        loss = forward_grad()
        start = time.perf_counter()
        loss.backward()
        _sync(args.device)
        backward_times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)

    result = {"forward": _time(forward, args), "forward_grad": _time(forward_grad, args)}
    backward()
    backward_times.clear()
    for _ in range(args.repeats):
        common.wait_until_idle(args.wait_idle, probe=0.5)
        backward()
    result["backward"] = {"median_s": statistics.median(backward_times), "runs": backward_times}
    result["parameters"] = sum(p.numel() for p in model.parameters())
    return result


def _vm_kib(field: str) -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def memory_child(name: str, args) -> None:
    """In a fresh process: the peak-memory growth of one forward with gradients plus backward."""
    model, x, y, steady = _setup(name, args)
    model.eval()
    if args.device.startswith("cuda"):
        # One untimed step first, so lazy initialization (allocator pools, kernels) is not
        # counted as the step's memory; CUDA's counters see what is live, not what was cached.
        _loss(model, x, y, steady).backward()
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        _loss(model, x, y, steady).backward()
        torch.cuda.synchronize()
        print(json.dumps({"peak_growth_mib": (torch.cuda.max_memory_allocated() - before) / 2**20, "kind": "cuda"}))
        return
    # On CPU no warm-up: memory freed by a warm-up step stays in the process (the allocator keeps
    # it), so the measured step would reuse it and the growth would depend on the warm-up's size.
    # The growth below includes lazy initialization, about the same for every model.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    before = _vm_kib("VmRSS")
    _loss(model, x, y, steady).backward()
    peak = _vm_kib("VmHWM")
    growth = (peak - before) / 1024 if reset and peak is not None and before is not None else None
    print(json.dumps({"peak_growth_mib": growth, "peak_rss_mib": None if peak is None else peak / 1024,
                      "kind": "cpu-rss"}))


def measure_memory(name: str, args) -> dict[str, Any]:
    command = [sys.executable, __file__, "--memory-child", name, "--batch-size", str(args.batch_size),
               "--channels", str(args.channels), "--device", args.device, "--threads", str(args.threads)]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        common.log(f"[memory] {name} failed: {out.stderr.strip()[-500:]}")
        return {"error": out.stderr.strip()[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(results: dict[str, dict[str, Any]], args) -> str:
    base = results["cnn"]
    lines = [f"## Neural-ODE cost on MNIST-sized input (batch {args.batch_size}, {args.channels} channels, "
             f"{args.device}, {args.threads} threads)", "",
             "| Model | params | forward (ms) | forward+grad (ms) | backward (ms) | peak memory growth (MiB) "
             "| forward / CNN | backward / CNN | memory / CNN |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        memory = r["memory"].get("peak_growth_mib")
        base_memory = base["memory"].get("peak_growth_mib")
        ratio_memory = f"{memory / base_memory:.1f}x" if memory and base_memory else "—"
        lines.append(
            f"| {name} | {r['parameters']:,} | {1e3 * r['forward']['median_s']:.1f} | "
            f"{1e3 * r['forward_grad']['median_s']:.1f} | {1e3 * r['backward']['median_s']:.1f} | "
            + (f"{memory:.1f}" if memory is not None else "—")
            + f" | {r['forward']['median_s'] / base['forward']['median_s']:.1f}x"
            f" | {r['backward']['median_s'] / base['backward']['median_s']:.1f}x | {ratio_memory} |")
    for direct, adjoint in (("odenet", "odenet-adjoint"), ("tisode", "tisode-adjoint")):
        if adjoint in results:
            a, d = results[adjoint], results[direct]
            text = f"\n{adjoint} / {direct}: backward {a['backward']['median_s'] / d['backward']['median_s']:.2f}x"
            if a["memory"].get("peak_growth_mib") and d["memory"].get("peak_growth_mib"):
                text += f", memory {a['memory']['peak_growth_mib'] / d['memory']['peak_growth_mib']:.2f}x"
            lines.append(text)
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128, help="the paper's training batch (default 128)")
    p.add_argument("--channels", type=int, default=64, help="feature width (the paper's: 64)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", default=None, help="comma-separated subset of " + ",".join(CONFIGS))
    p.add_argument("--wait-idle", type=float, default=120.0)
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--out", type=Path, default=common.BENCH_DIR / "results" / "ode_mnist.json")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args)
        return
    names = _available()
    if args.configs:
        wanted = args.configs.split(",")
        unknown = sorted(set(wanted) - set(CONFIGS))
        if unknown:
            p.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
        names = [n for n in names if n in wanted]
    if "cnn" not in names:
        names.insert(0, "cnn")  # every ratio is against the CNN baseline
    results = {}
    for name in names:
        common.log(f"[time] {name}")
        results[name] = time_config(name, args)
        results[name]["memory"] = measure_memory(name, args)
    text = markdown(results, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v
                                                 for k, v in vars(args).items()},
                                    "provenance": common.provenance(args.threads), "results": results,
                                    "markdown": text}, indent=1) + "\n")


if __name__ == "__main__":
    main()
