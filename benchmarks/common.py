"""Shared pieces of the side-by-side benchmarks: the cached MNIST model, the image subset, the
common evaluation of adversarial examples, and provenance.

Benchmark code, not library code: it may print, reseed global generators (peers draw their
random starts from them) and import the peer libraries. robustlab never imports from here.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import torch
from torch import Tensor, nn

import robustlab
from robustlab.data import load_dataset
from robustlab.models import ModelCard, build_model, load_model, save_model
from robustlab.training import TrainConfig, train

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_WORKDIR = BENCH_DIR / ".cache"

# Peer packages: import name -> distribution name (for the version in provenance).
PEERS = {
    "torchattacks": "torchattacks",
    "foolbox": "foolbox",
    "art": "adversarial-robustness-toolbox",
}

# Natural training of the benchmark model. LeNet-5 (61,706 parameters) reaches ~99% clean test
# accuracy in two epochs and trains in about a minute on two cores; it is the "small CNN" of the
# benchmark because a PGD-40 run over 1000 images then takes seconds, so the whole comparison
# (five rows, warm-up and five repeats each) stays within a few minutes.
TRAIN_CONFIGS = {
    "lenet": TrainConfig(epochs=2, batch_size=128, optimizer="sgd", lr=0.05, momentum=0.9,
                         weight_decay=5e-4, schedule="cosine", seed=0),
    "madry-cnn": TrainConfig(epochs=1, batch_size=128, optimizer="sgd", lr=0.05, momentum=0.9,
                             weight_decay=5e-4, schedule="cosine", seed=0),
    "small-cnn": TrainConfig(epochs=2, batch_size=128, optimizer="sgd", lr=0.05, momentum=0.9,
                             weight_decay=5e-4, schedule="cosine", seed=0),
}
MIN_CLEAN_ACCURACY = 0.98


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """Predicted classes ``[N]`` by a fresh forward pass in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def get_model(arch: str, workdir: Path, data_dir: str | None) -> tuple[nn.Module, ModelCard, bool]:
    """The naturally trained MNIST model ``arch``: loaded from ``workdir`` if cached there,
    otherwise trained with robustlab's loop and saved with ``save_model``.

    Returns ``(model in eval mode, card, trained_now)``. The model is always the one read back
    from the safetensors file, so a fresh run and a cached run attack identical weights.
    """
    stem = workdir / f"mnist-{arch}-natural"
    weights = stem.with_name(stem.name + ".safetensors")
    trained_now = False
    if not weights.exists():
        config = TRAIN_CONFIGS[arch]
        log(f"[model] training {arch} on MNIST ({config.epochs} epochs, natural); cached in {workdir}")
        train_set = load_dataset("mnist", split="train", data_dir=data_dir)
        test_set = load_dataset("mnist", split="test", data_dir=data_dir)
        torch.manual_seed(config.seed)
        model = build_model(arch, input_shape=(1, 28, 28), num_classes=10)
        start = time.perf_counter()
        result = train(model, train_set.x, train_set.y, config=config, val_x=test_set.x, val_y=test_set.y)
        seconds = time.perf_counter() - start
        clean = float((predict(model, test_set.x) == test_set.y).float().mean())
        log(f"[model] trained in {seconds:.0f} s; clean test accuracy {clean:.4f}")
        if clean < MIN_CLEAN_ACCURACY:
            raise SystemExit(f"{arch} reached only {clean:.4f} clean accuracy (< {MIN_CLEAN_ACCURACY}); not caching it")
        card = ModelCard(
            architecture=arch,
            arguments={"input_shape": [1, 28, 28], "num_classes": 10},
            dataset="mnist",
            training={"method": "natural", "config": config.to_dict(), "seconds": round(seconds, 1),
                      "history": result.history},
            metrics={"clean_test_accuracy": clean},
            extra={"made_by": "benchmarks/common.py"},
        )
        workdir.mkdir(parents=True, exist_ok=True)
        save_model(model, stem, card)
        trained_now = True
    model, card = load_model(stem)
    model.eval()
    return model, card, trained_now


def state_digest(model: nn.Module) -> str:
    """SHA-256 of the state dict, to check that no library changed the weights."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class Check:
    """Threat-set membership of a batch of adversarial examples, checked the same way for all."""

    max_linf: float
    linf_violations: int  # samples with ||x_adv - x||_inf > eps + tol
    box_violations: int  # samples with any value outside [lo, hi] (no tolerance)
    max_box_excess: float  # how far outside [lo, hi] the worst value is (0 when inside)
    nonfinite: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_threat_set(x: Tensor, x_adv: Tensor, eps: float, bounds=(0.0, 1.0), tol: float = 1e-5) -> Check:
    lo, hi = bounds
    x_adv = x_adv.detach()
    flat_delta = (x_adv - x).reshape(len(x), -1).abs()
    linf = flat_delta.amax(dim=1) if len(x) else x.new_zeros(0)
    flat = x_adv.reshape(len(x), -1)
    outside = ((flat < lo) | (flat > hi)).any(dim=1)
    excess = torch.clamp(torch.maximum(lo - flat, flat - hi), min=0.0)
    return Check(
        max_linf=float(linf.max()) if len(x) else 0.0,
        linf_violations=int((linf > eps + tol).sum()),
        box_violations=int(outside.sum()),
        max_box_excess=float(excess.max()) if len(x) else 0.0,
        nonfinite=int((~torch.isfinite(flat)).any(dim=1).sum()),
    )


def peer_available(module: str) -> tuple[bool, str]:
    """Whether peer ``module`` imports; the reason when it does not."""
    try:
        importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 - any import failure means "skip this peer"
        return False, f"{type(error).__name__}: {error}"
    return True, ""


def version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _cpu_seconds() -> tuple[float, float] | None:
    """``(busy CPU seconds of the whole machine, CPU seconds of this process)`` so far."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # guest time is already counted in user
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return busy / os.sysconf("SC_CLK_TCK"), usage.ru_utime + usage.ru_stime


class OtherLoad:
    """Cores used on average by *other* processes while the ``with`` block runs.

    Machine-wide busy time from /proc/stat minus this process's CPU time, over wall time.
    On a 2-core machine, anything above a few tenths means the timing was disturbed (torch's
    OpenMP threads busy-wait, so sharing the cores can slow a run down many times over).
    None where /proc/stat is not available.
    """

    def __enter__(self) -> Self:
        self.cores: float | None = None
        self._start = _cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        end, wall_end = _cpu_seconds(), time.perf_counter()
        (start, wall_start) = self._start
        if start is None or end is None or wall_end <= wall_start:
            return
        others = (end[0] - start[0]) - (end[1] - start[1])
        self.cores = max(0.0, others / (wall_end - wall_start))


def wait_until_idle(max_wait: float, threshold: float = 0.2, probe: float = 1.0) -> float | None:
    """Wait (at most ``max_wait`` seconds) until other processes use < ``threshold`` cores over a
    ``probe``-second window; returns the last measured load (None if it cannot be measured)."""
    deadline = time.monotonic() + max_wait
    while True:
        with OtherLoad() as meter:
            time.sleep(probe)
        if meter.cores is None or meter.cores < threshold or time.monotonic() >= deadline:
            return meter.cores
        log(f"[load] other processes use {meter.cores:.2f} cores; waiting for an idle machine")


def quiet_timing(fn: Callable[[], Any], *, wait: float = 120.0, threshold: float = 0.2,
                 retries: int = 3) -> tuple[float, float | None, int]:
    """Wall seconds of ``fn()`` on an idle machine: wait for idle, time it, and run it again
    (up to ``retries`` times) when other processes used ``threshold`` cores or more meanwhile.
    Returns ``(seconds, other processes' cores during the kept run, discarded runs)``."""
    for attempt in range(retries + 1):
        if wait > 0:
            wait_until_idle(wait, threshold=threshold, probe=0.5)
        with OtherLoad() as meter:
            start = time.perf_counter()
            fn()
            seconds = time.perf_counter() - start
        if meter.cores is None or meter.cores < threshold or attempt == retries:
            return seconds, meter.cores, attempt
    raise AssertionError("unreachable")


def git_revision() -> str | None:
    """The commit of the checkout (read-only ``git rev-parse``), or None."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on ``device``: CUDA kernels run asynchronously, so a timer read
    without this measures the launches, not the work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device | str) -> str:
    """``"cpu"``, or the GPU's name with the device, e.g. ``"NVIDIA H100 80GB HBM3 (cuda:0)"``."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = torch.cuda.current_device() if device.index is None else device.index
    return f"{torch.cuda.get_device_name(index)} (cuda:{index})"


def provenance(threads: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "robustlab": robustlab.__version__,
        "robustlab_git": git_revision(),
        "torch": torch.__version__,
        "numpy": version_of("numpy"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": device_name(device),
        "peers": {module: version_of(dist) for module, dist in PEERS.items()},
    }
