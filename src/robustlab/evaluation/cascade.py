"""The attack cascade behind :func:`robustlab.evaluation.evaluate`: blocks, seeds, resumable state.

The samples are cut into fixed blocks of ``batch_size`` consecutive positions (the last one may
be shorter). A block is worked through in steps: the clean forward pass, then each attack in
order. An attack sees only the block's samples that no earlier attack broke (cascade) or all of
its correctly classified samples. Each (attack, block) call draws from its own generator, seeded
from the evaluation seed, the attack's name and the block's first position, so a block's results
depend on nothing outside the block. Two promises follow:

* **Resuming.** After every step the per-sample state is written atomically to the state file.
  A run killed at any point and started again with the same state file continues at the first
  unfinished step and produces the same table as an uninterrupted run.
* **Sharding.** Ranks of a process group each take a contiguous run of whole blocks; the merged
  table equals that of a single process with the same seed and batch size.

Results therefore depend on ``batch_size`` (as any batched attack's do), never on which blocks ran
before, in which process, or in how many sessions.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.attacks.base import Attack
from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel

__all__ = ["CLEAN", "CascadeState", "block_seed", "fingerprint", "run_cascade"]

CLEAN = "clean"  # broken_by value of samples the model already misclassifies

STATE_FORMAT = "robustlab-evaluate-state"
STATE_VERSION = 1


def block_seed(seed: int, attack: str, block_start: int) -> int:
    """The 63-bit seed of ``attack`` on the block whose first sample is at ``block_start``.

    A hash of the three values rather than arithmetic such as ``seed * 1000 + position``, which
    collides (seed 1 with attack 0 is seed 0 with attack 1000). Keyed by the attack's name, not
    its position in the list, so that adding or removing another attack leaves it unchanged.
    """
    digest = hashlib.sha256(f"robustlab-evaluate/{seed}/{attack}/{block_start}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _update_with_tensor(h: Any, t: Tensor) -> None:
    h.update(f"{tuple(t.shape)}/{t.dtype};".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _jsonable_config(config: dict[str, Any]) -> dict[str, Any]:
    # Attack.config() falls back to repr() for objects; a callable's repr carries its memory
    # address, which changes from process to process and would make every resume look foreign.
    return {k: re.sub(r" at 0x[0-9a-fA-F]+", "", v) if isinstance(v, str) else v for k, v in config.items()}


def fingerprint(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    indices: Tensor,
    *,
    threat: ThreatModel,
    attacks: Mapping[str, Attack],
    seed: int,
    batch_size: int,
    cascade: bool,
) -> dict[str, Any]:
    """What a state file must match to be resumed: digests of the data and the model weights,
    and the threat model, attack configurations and settings in plain values.

    Cost: one pass over the data and the weights (copied to the CPU and hashed).
    """
    data = hashlib.sha256()
    for t in (x, y, indices):
        _update_with_tensor(data, t)
    weights = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        weights.update(name.encode())
        _update_with_tensor(weights, t)
    return {
        "data": data.hexdigest(),
        "model": weights.hexdigest(),
        "threat": {"norm": threat.norm, "eps": threat.eps if math.isfinite(threat.eps) else None,
                   "bounds": list(threat.bounds)},
        # A list, not a dict: the order of the attacks changes a cascade's results.
        "attacks": [[name, _jsonable_config(attack.config())] for name, attack in attacks.items()],
        "settings": {"seed": seed, "batch_size": batch_size, "cascade": cascade},
    }


@dataclass
class CascadeState:
    """Per-sample results for the positions ``[start, stop)`` and how far each block got.

    Lists are indexed by ``position - start``. ``steps[b]`` counts the finished steps of block
    ``b``: 0 nothing, 1 the clean pass, ``1 + k`` the clean pass and the first ``k`` attacks.
    Entries of unfinished steps are ``None``; ``success[name][i] is None`` also where the attack
    did not run on sample ``i`` (misclassified, or broken earlier in a cascade).
    """

    fingerprint: dict[str, Any]
    start: int
    stop: int
    attacks: list[str]
    steps: list[int]
    clean_prediction: list[int | None]
    broken_by: list[str | None]
    distance: list[float | None]
    success: dict[str, list[bool | None]]
    attack_distance: dict[str, list[float | None]]
    wall_time: float = 0.0

    @classmethod
    def fresh(cls, fingerprint: dict[str, Any], start: int, stop: int, batch_size: int) -> CascadeState:
        n = stop - start
        names = [name for name, _ in fingerprint["attacks"]]
        return cls(fingerprint=fingerprint, start=start, stop=stop, attacks=names,
                   steps=[0] * math.ceil(n / batch_size), clean_prediction=[None] * n, broken_by=[None] * n,
                   distance=[None] * n, success={a: [None] * n for a in names},
                   attack_distance={a: [None] * n for a in names})

    @property
    def finished(self) -> bool:
        return all(s == len(self.attacks) + 1 for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "fingerprint": self.fingerprint,
                "shard": [self.start, self.stop], "steps": self.steps, "wall_time_s": self.wall_time,
                "clean_prediction": self.clean_prediction, "broken_by": self.broken_by, "distance": self.distance,
                "attacks": {a: {"success": self.success[a], "distance": self.attack_distance[a]} for a in self.attacks}}

    def save(self, path: Path) -> None:
        """Write atomically: a kill during the write leaves the previous state intact."""
        # Imported here because evaluate.py, which owns the JSON writer, imports this module.
        from robustlab.evaluation.evaluate import save_json

        save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path, expected: dict[str, Any], start: int, stop: int) -> CascadeState:
        """Read a state file, refusing one written by another evaluation or for another shard."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RobustlabError(f"cannot read the evaluation state file {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise RobustlabError(f"{path} is not a robustlab evaluation state file")
        if data.get("version") != STATE_VERSION:
            raise RobustlabError(f"{path} has state format version {data.get('version')}; this robustlab "
                                 f"reads version {STATE_VERSION}: start afresh")
        # Compare after a JSON round trip, so that tuples, inf and float formatting cannot differ.
        from robustlab.evaluation.evaluate import _jsonable

        expected = json.loads(json.dumps(_jsonable(expected)))
        found = data["fingerprint"]
        differ = [key for key in expected if found.get(key) != expected[key]]
        if data["shard"] != [start, stop]:
            differ.append(f"shard (samples {data['shard'][0]}:{data['shard'][1]}, not {start}:{stop})")
        if differ:
            raise RobustlabError(
                f"the state file {path} belongs to another evaluation (different {', '.join(differ)}); "
                "delete it, give another state file, or start afresh (resume=False; CLI: --no-resume)"
            )
        names = [name for name, _ in expected["attacks"]]
        correct = [p is not None for p in data["clean_prediction"]]
        return cls(
            fingerprint=expected, start=start, stop=stop, attacks=names, steps=data["steps"],
            clean_prediction=data["clean_prediction"], broken_by=data["broken_by"],
            # JSON has no inf: an unbroken sample's distance was written as null.
            distance=[math.inf if ok and d is None else d for ok, d in zip(correct, data["distance"])],
            success={a: data["attacks"][a]["success"] for a in names},
            attack_distance={a: [math.inf if s is not None and d is None else d
                                 for s, d in zip(data["attacks"][a]["success"], data["attacks"][a]["distance"])]
                             for a in names},
            wall_time=float(data.get("wall_time_s", 0.0)),
        )


def run_cascade(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    threat: ThreatModel,
    attacks: Mapping[str, Attack],
    fingerprint: dict[str, Any],
    batch_size: int,
    seed: int,
    cascade: bool,
    start: int = 0,
    stop: int | None = None,
    state_file: str | Path | None = None,
    resume: bool = True,
    progress: bool = False,
) -> CascadeState:
    """Work through the blocks of positions ``[start, stop)`` of ``x`` (``[N, ...]``) and ``y`` (``[N]``).

    ``start`` must be a multiple of ``batch_size`` (or ``N``, an empty shard) so that the blocks
    are those of a full run.
    With ``state_file``, an existing state is resumed (if ``resume``; it must match
    ``fingerprint`` and the shard) and the state is written after every step.

    Cost: one clean forward per sample plus each attack's own cost on the samples it runs on,
    and one state write (JSON of the shard's table) per step when ``state_file`` is given.
    """
    stop = x.shape[0] if stop is None else stop
    if (start % batch_size and start != x.shape[0]) or not 0 <= start <= stop <= x.shape[0]:
        raise RobustlabError(f"a shard must start at a multiple of batch_size ({batch_size}) or at the end, and lie "
                             f"within [0, {x.shape[0]}]; got {start}:{stop}")
    path = None if state_file is None else Path(state_file)
    if path is not None and resume and path.exists():
        state = CascadeState.load(path, fingerprint, start, stop)
    else:
        state = CascadeState.fresh(fingerprint, start, stop, batch_size)
    names = list(attacks)
    session_start, time_before = time.perf_counter(), state.wall_time

    def step_done(block: int) -> None:
        state.steps[block] += 1
        state.wall_time = time_before + time.perf_counter() - session_start
        if path is not None:
            state.save(path)

    sizes = [min(batch_size, stop - lo) for lo in range(start, stop, batch_size)]
    bar = tqdm(total=(stop - start) * len(names), desc="evaluate", unit="sample", disable=not progress, leave=False,
               initial=sum(size * max(s - 1, 0) for size, s in zip(sizes, state.steps)))
    labels = y.tolist()
    try:
        for block, lo in enumerate(range(start, stop, batch_size)):
            hi = lo + sizes[block]
            if state.steps[block] == 0:
                predictions = _clean_predictions(model, x[lo:hi])
                for i, (p, label) in enumerate(zip(predictions, labels[lo:hi]), start=lo - start):
                    state.clean_prediction[i] = p
                    state.broken_by[i], state.distance[i] = (None, math.inf) if p == label else (CLEAN, 0.0)
                step_done(block)
            for name in names[state.steps[block] - 1:]:
                bar.set_postfix(attack=name)
                alive = [i for i in range(lo - start, hi - start) if state.broken_by[i] is None
                         or (not cascade and state.broken_by[i] != CLEAN)]
                if alive:
                    generator = torch.Generator(device=x.device).manual_seed(block_seed(seed, name, lo))
                    idx = torch.tensor(alive, device=x.device) + start
                    result = attacks[name](model, x[idx], y[idx], threat=threat, generator=generator)
                    for i, ok, d in zip(alive, result.success.tolist(), result.distance.tolist()):
                        state.success[name][i], state.attack_distance[name][i] = ok, d
                        if ok and state.broken_by[i] is None:
                            state.broken_by[i], state.distance[i] = name, d
                step_done(block)
                bar.update(hi - lo)
    finally:
        bar.close()
    return state


def _clean_predictions(model: nn.Module, x: Tensor) -> list[int]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model(x).argmax(dim=1).tolist()
    finally:
        for m, training in modes:
            m.training = training
