"""The block runner behind the three evaluation modes: checks, blocks, seeds, state, shards, cost.

:func:`~robustlab.evaluation.evaluate` (fixed eps), :func:`~robustlab.evaluation.evaluate_minimum_norm`
and :func:`~robustlab.evaluation.evaluate_targeted` are thin layers over :func:`run_blocks`: each
names its attack *steps* and turns the per-sample :class:`Table` the runner returns into its result.

**Checks.** Before any model pass, ``x``, ``y``, ``indices``, ``batch_size`` and ``num_classes``
are checked (:func:`robustlab.attacks.base.check_inputs`, the attack template's own check). The
clean pass then runs over every block of the shard and its logits are checked
(:func:`robustlab.attacks.base.check_logits`: shape, number of classes, label range, NaN) before
the state file is first written; a bad input raises :class:`RobustlabError` having written nothing.

**Blocks.** The samples are cut into fixed blocks of ``batch_size`` consecutive positions (the
last may be shorter). Each block is worked through in steps: the clean pass, then each attack
step in order (an attack; in the targeted mode an attack towards one target offset). A step
attacks the block's clean-correct samples, or in a cascade only those no earlier step broke.

**Seeds.** Each (step, block) call draws from its own generator, seeded with
:func:`block_seed` ``(seed, step key, first position of the block)``, so a block's results depend
on nothing outside the block: not on resuming, sharding or (without cascade) the other steps.
They do depend on ``batch_size``, as any batched attack's do.

**Resuming.** With a state file, the per-sample state is written atomically after the clean pass
and after every step. A run killed at any point and started again with the same state file
continues at the first unfinished step and gives the same table as an uninterrupted run. A state
file of another model, data, threat model, attack list, mode or setting is refused.

**Warm starts.** In a cascade, an attack with ``warm_start=True`` (the ``fast`` suite's Square)
gets ``start=``: per sample, the point of the earlier steps nearest the decision boundary
(smallest :attr:`~robustlab.attacks.base.AttackResult.margin`). While such a step is still to
come, those points of the block in progress are written next to the state file
(``STATE.points-BLOCK-STEP.pt``, named in the state), so resuming gives the same table.

**Sharding.** With ``distributed=True`` the ranks of the initialized process group (e.g. under
``torchrun``) each take a contiguous run of whole blocks (:func:`shard_range`); the gathered table
equals that of a single process.

**Cost.** Every model pass is counted in sample-passes (a forward of ``m`` inputs counts ``m``,
as the attacks' :class:`~robustlab.attacks.base.ModelOracle` counts): the clean pass (one
forward per sample), each attack call's ``forwards`` and ``backwards`` and the runner's own
verification forwards. Per sample, ``forwards``/``backwards`` hold what was spent on it: its
clean forward, one forward per verification of it, and for each call that attacked it an equal
share of the call's passes. The oracle counts per call, so the share is exact for attacks that
treat every sample of a call alike (PGD, APGD, FGSM, DDN, FMN, ...) and an even split of the
call's total for attacks that stop early per sample; shares are integers (the remainder goes to
the call's first samples), so the per-sample counts sum to the totals exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustlab._progress import progress_bar
from robustlab.attacks.base import Attack, AttackResult, check_call, check_inputs, check_logits
from robustlab.errors import RobustlabError
from robustlab.evaluation.distributed import all_gather, rank_and_world, shard_range
from robustlab.io import KINDS, header, jsonable, read_document, save_json, save_tensors
from robustlab.modes import FrozenEval
from robustlab.settings import RunSettings
from robustlab.threat import ThreatModel

__all__ = ["Run", "Step", "Table", "block_seed", "fingerprint", "run_blocks"]

STATE_KIND = "evaluation-state"  # its version (robustlab.io.KINDS), 2: one runner for the three modes; per-sample passes

# Relative tolerance when comparing an attack's reported best distance with the verified one.
MISMATCH_RTOL = 1e-4

_FIELDS = ("success", "distance", "reported", "mismatch")


def block_seed(seed: int, key: str, block_start: int) -> int:
    """The 63-bit seed of step ``key`` on the block whose first sample is at ``block_start``.

    A hash of the three values rather than arithmetic such as ``seed * 1000 + position``, which
    collides (seed 1 with attack 0 is seed 0 with attack 1000). Keyed by the step's name, not
    its position in the list, so that adding or removing another attack leaves it unchanged.
    """
    digest = hashlib.sha256(f"robustlab-evaluate/{seed}/{key}/{block_start}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class Step:
    """One attack step of every block: ``attack`` run under the runner's threat model, untargeted,
    or (``target_offset > 0``) towards the classes ``(y + target_offset) % K``. ``key`` names the
    step in the table, the state file and the cost, and seeds its generators."""

    key: str
    attack: Attack
    target_offset: int = 0


# -- checks and model passes -----------------------------------------------------------------


def check_run(x: Tensor, y: Tensor, threat: ThreatModel, *, indices: Any, num_classes: int | None) -> Tensor:
    """Check what every mode is given before any model pass (the batch size and seed were
    checked by :class:`~robustlab.settings.RunSettings`); return the ``[N]`` int64 indices."""
    check_inputs(x, y, threat)
    n = x.shape[0]
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise RobustlabError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if n and int(y.max()) >= num_classes:
            raise RobustlabError(f"labels must lie in [0, {num_classes}) for num_classes={num_classes}; "
                                 f"got a label {int(y.max())}")
    if indices is None:
        return torch.arange(n)
    indices = indices if isinstance(indices, Tensor) else torch.as_tensor(indices)
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise RobustlabError(f"indices must be integers (positions in the original split), got dtype {indices.dtype}")
    if indices.shape != (n,):
        raise RobustlabError(f"indices must have shape [{n}] (one per sample), got {tuple(indices.shape)}")
    positions: Tensor = indices.to(torch.int64)
    return positions


def model_logits(model: nn.Module, x: Tensor) -> Tensor:
    """The model's outputs on ``x`` in eval mode, without gradient (its state is restored)."""
    with FrozenEval(model), torch.no_grad():
        logits: Tensor = model(x)
    return logits


def cross_check(model: nn.Module, result: AttackResult, reported: list[float]) -> tuple[list[bool], list[int]]:
    """Per sample, whether the attack's reported best distance contradicts the verified one
    (``result.distance`` where ``result.success``, else ``inf``); and the rows that needed a forward.

    A success that flips between the attack's bookkeeping and the template's fresh forward pass
    is forgiven where ``x_adv`` sits on a tie of the two top logits (within ``1e-4`` relative):
    there float rounding, e.g. from a different batch composition, decides, not a bug. Costs one
    forward for each flipped sample only.
    """
    verified = verified_distances(result)
    flags = [_disagrees(d, r) for d, r in zip(verified, reported)]
    flipped = [i for i, (d, r) in enumerate(zip(verified, reported))
               if flags[i] and math.isinf(d) != math.isinf(r)]
    if flipped:
        top = model_logits(model, result.x_adv[torch.tensor(flipped, device=result.x_adv.device)]).topk(2, dim=1).values
        tie = ((top[:, 0] - top[:, 1]) <= MISMATCH_RTOL * top[:, 0].abs().clamp_min(1.0)).tolist()
        for i, is_tie in zip(flipped, tie):
            flags[i] = not is_tie
    return flags, flipped


def verified_distances(result: AttackResult) -> list[float]:
    """``result.distance`` where the fresh forward pass says success, else ``inf``."""
    return torch.where(result.success, result.distance, torch.full_like(result.distance, math.inf)).tolist()


def _disagrees(verified: float, reported: float) -> bool:
    if math.isinf(verified) or math.isinf(reported):
        return math.isinf(verified) != math.isinf(reported)
    return abs(verified - reported) > MISMATCH_RTOL * max(1.0, verified)


def _shares(total: int, m: int) -> list[int]:
    """``total`` split into ``m`` integer shares summing to it (the first ones one larger)."""
    q, r = divmod(total, m)
    return [q + 1] * r + [q] * (m - r)


# -- the table ---------------------------------------------------------------------------------


def _cost() -> dict[str, int]:
    return {"forwards": 0, "backwards": 0, "samples": 0, "calls": 0}


@dataclass
class Table:
    """Per-sample results for the positions ``[start, stop)`` and how far each block got.

    Lists are indexed by ``position - start``. ``done[b]`` counts the finished steps of block
    ``b``: 0 nothing, 1 the clean pass, ``1 + j`` the clean pass and the first ``j`` attack steps.
    ``results[key]`` holds per sample the step's ``success`` and ``distance`` (``result.distance``
    of the returned ``x_adv``) and, where the run verifies reported distances, ``reported`` (the
    attack's ``extras["best_distance"]``) and ``mismatch`` (:func:`cross_check`); ``None`` where
    the step did not run on the sample (misclassified, broken earlier in a cascade, unfinished).
    ``forwards``/``backwards`` are the per-sample passes, ``clean_cost`` and ``step_cost[key]``
    the totals (``forwards``, ``backwards``, ``samples`` attacked, ``calls``).
    """

    start: int
    stop: int
    done: list[int]
    clean_prediction: list[int | None]
    forwards: list[int]
    backwards: list[int]
    num_classes: int | None = None
    steps: list[str] = field(default_factory=list)
    results: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    clean_cost: dict[str, int] = field(default_factory=_cost)
    step_cost: dict[str, dict[str, int]] = field(default_factory=dict)
    wall_time: float = 0.0
    points_file: str | None = None  # the warm-start points of the block in progress (see _Runner)

    @classmethod
    def fresh(cls, start: int, stop: int, batch_size: int) -> Table:
        n = stop - start
        return cls(start=start, stop=stop, done=[0] * math.ceil(n / batch_size), clean_prediction=[None] * n,
                   forwards=[0] * n, backwards=[0] * n)

    def set_steps(self, keys: Sequence[str]) -> None:
        n = self.stop - self.start
        self.steps = list(keys)
        self.results = {k: {f: [None] * n for f in _FIELDS} for k in keys}
        self.step_cost = {k: _cost() for k in keys}

    @property
    def passes(self) -> dict[str, Any]:
        """Total model passes: ``{"forwards", "backwards", "clean": {...}, "steps": {key: {...}}}``."""
        parts = [self.clean_cost, *self.step_cost.values()]
        return {"forwards": sum(p["forwards"] for p in parts), "backwards": sum(p["backwards"] for p in parts),
                "clean": dict(self.clean_cost), "steps": {k: dict(v) for k, v in self.step_cost.items()}}

    @classmethod
    def concat(cls, parts: Sequence[Table]) -> Table:
        """The tables of consecutive shards (in rank order) as one; costs are summed."""
        merged = cls(start=parts[0].start, stop=parts[-1].stop, done=[d for p in parts for d in p.done],
                     clean_prediction=[v for p in parts for v in p.clean_prediction],
                     forwards=[v for p in parts for v in p.forwards], backwards=[v for p in parts for v in p.backwards],
                     num_classes=parts[0].num_classes, wall_time=max(p.wall_time for p in parts))
        merged.set_steps(parts[0].steps)
        for p in parts:
            if p.steps != merged.steps:
                raise RobustlabError(f"the shards ran different steps: {p.steps} and {merged.steps}")
            for key in p.steps:
                for f in _FIELDS:
                    merged.results[key][f][p.start - merged.start:p.stop - merged.start] = p.results[key][f]
                for c, v in p.step_cost[key].items():
                    merged.step_cost[key][c] += v
            for c, v in p.clean_cost.items():
                merged.clean_cost[c] += v
        return merged

    # -- the state file ------------------------------------------------------------------------

    def to_dict(self, fingerprint: dict[str, Any]) -> dict[str, Any]:
        return {**header(STATE_KIND), "fingerprint": fingerprint,
                "shard": [self.start, self.stop], "steps": self.done, "step_keys": self.steps,
                "num_classes": self.num_classes, "wall_time_s": self.wall_time,
                "clean_prediction": self.clean_prediction, "forwards": self.forwards, "backwards": self.backwards,
                "results": {k: {f: [_encode(v) for v in r[f]] for f in _FIELDS} for k, r in self.results.items()},
                "clean_cost": self.clean_cost, "step_cost": self.step_cost, "points_file": self.points_file}

    def save(self, path: Path, fingerprint: dict[str, Any]) -> None:
        """Write atomically: a kill during the write leaves the previous state intact."""
        save_json(path, self.to_dict(fingerprint))

    @classmethod
    def load(cls, path: Path, expected: dict[str, Any], start: int, stop: int) -> Table:
        """Read a state file, refusing one written by another evaluation or for another shard."""
        data = read_document(path, STATE_KIND)
        if data.get("version") != KINDS[STATE_KIND].version:
            raise RobustlabError(f"{path} has state format version {data.get('version')}; this robustlab "
                                 f"reads version {KINDS[STATE_KIND].version}: start afresh (resume=False; CLI: --no-resume)")
        # Compare after a JSON round trip, so that tuples, inf and float formatting cannot differ.
        found = data["fingerprint"]
        differ = [key for key in expected if found.get(key) != expected[key]]
        if data["shard"] != [start, stop]:
            differ.append(f"shard (samples {data['shard'][0]}:{data['shard'][1]}, not {start}:{stop})")
        if differ:
            raise RobustlabError(
                f"the state file {path} belongs to another evaluation (different {', '.join(differ)}); "
                "delete it, give another state file, or start afresh (resume=False; CLI: --no-resume)"
            )
        table = cls(start=start, stop=stop, done=data["steps"], clean_prediction=data["clean_prediction"],
                    forwards=data["forwards"], backwards=data["backwards"], num_classes=data["num_classes"],
                    clean_cost=data["clean_cost"], wall_time=float(data["wall_time_s"]))
        table.steps = data["step_keys"]
        table.results = {k: {f: [_decode(v) for v in r[f]] for f in _FIELDS} for k, r in data["results"].items()}
        table.step_cost = data["step_cost"]
        table.points_file = data.get("points_file")
        return table


def _encode(value: Any) -> Any:
    """State files are strict JSON: non-finite floats are written as strings."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def _decode(value: Any) -> Any:
    return float(value) if isinstance(value, str) else value


# -- fingerprint -------------------------------------------------------------------------------


def _update_with_tensor(h: Any, t: Tensor) -> None:
    h.update(f"{tuple(t.shape)}/{t.dtype};".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _jsonable_config(config: dict[str, Any]) -> dict[str, Any]:
    # Attack.config() falls back to repr() for objects; a callable's repr carries its memory
    # address, which changes from process to process and would make every resume look foreign.
    return {k: re.sub(r" at 0x[0-9a-fA-F]+", "", v) if isinstance(v, str) else v for k, v in config.items()}


def fingerprint(model: nn.Module, x: Tensor, y: Tensor, indices: Tensor, *, threat: ThreatModel,
                attacks: Mapping[str, Attack], settings: dict[str, Any]) -> dict[str, Any]:
    """What a state file must match to be resumed: digests of the data and the model weights,
    the threat model, the attack configurations (in order) and the settings in plain values.

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
        "threat": threat.to_dict(),  # as saved: strict JSON writes an infinite eps as null
        # A list, not a dict: the order of the attacks changes a cascade's results.
        "attacks": [[name, _jsonable_config(attack.config())] for name, attack in attacks.items()],
        "settings": settings,
    }


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Run:
    """The merged table over all ``N`` samples, with their labels and original indices."""

    table: Table
    labels: list[int]
    indices: list[int]
    processes: int

    def correct(self, i: int) -> bool:
        return self.table.clean_prediction[i] == self.labels[i]


def run_blocks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    threat: ThreatModel,
    attacks: Mapping[str, Attack],
    steps: Callable[[int | None], list[Step]],
    mode: str,
    indices: Any = None,
    num_classes: int | None = None,
    settings: RunSettings = RunSettings(),
    cascade: bool = False,
    verify: bool = False,
    state_file: str | Path | None = None,
    resume: bool = True,
    distributed: bool = False,
) -> Run:
    """Check the inputs, then work through the blocks of this process's shard and return the table.

    Args:
        attacks: the named attacks (fingerprinted for the state file).
        settings: the seed and batch size (blocks of ``batch_size`` samples, generators seeded
            from ``seed``; both fingerprinted), the progress bar (rank 0 only) and the device
            the inputs must be on (:class:`~robustlab.settings.RunSettings`).
        steps: given the model's number of classes ``K`` (``None`` when there are no samples),
            the attack steps of every block, in order.
        mode: the evaluation mode's name (fingerprinted: a state file of another mode is refused).
        cascade: a step attacks only the samples no earlier step broke.
        verify: record each attack's reported ``extras["best_distance"]`` and cross-check it
            against the verified distance (:func:`cross_check`).
        distributed: shard over the ranks of the initialized process group; every rank gets the
            merged table. Each rank uses its own state file, ``NAME.rankR-of-W.SUFFIX``.

    Cost: the clean pass (one forward per sample), the attacks' own passes, a verification
    forward for each flipped success (``verify``); with a state file or ``distributed``, one
    hash of the data and weights, and with a state file one JSON write of the shard's table per
    step.
    """
    if not isinstance(settings, RunSettings):
        raise RobustlabError(f"settings must be a robustlab.settings.RunSettings, got {type(settings).__name__}")
    batch_size, seed = settings.batch_size, settings.seed
    x = check_call(model, x)  # the template's checks: not under inference_mode, x of the model's dtype
    indices = check_run(x, y, threat, indices=indices, num_classes=num_classes)
    settings.check_device(x)
    n = x.shape[0]
    rank, world = rank_and_world() if distributed else (0, 1)
    start, stop = shard_range(n, batch_size, rank, world)
    path = None if state_file is None else Path(state_file)
    fp: dict[str, Any] = {}
    if path is not None or world > 1:
        fp = fingerprint(model, x, y, indices, threat=threat, attacks=attacks,
                         settings={"mode": mode, "seed": seed, "batch_size": batch_size, "cascade": cascade})
        fp = json.loads(json.dumps(jsonable(fp)))
    if world > 1:
        if len({(f["data"], f["model"]) for f in all_gather(fp)}) > 1:
            raise RobustlabError("the ranks of the process group hold different data or model weights; "
                                 "every rank must load the same ones")
        if path is not None:
            path = path.with_name(f"{path.stem}.rank{rank}-of-{world}{path.suffix}")
    runner = _Runner(model, x, y, threat=threat, batch_size=batch_size, seed=seed, cascade=cascade, verify=verify,
                     path=path, fingerprint=fp)
    if path is not None and resume and path.exists():
        table = Table.load(path, fp, start, stop)
    else:
        table = Table.fresh(start, stop, batch_size)
    runner.clean_pass(table, num_classes, world)
    runner.attack(table, steps(table.num_classes), progress=settings.progress and rank == 0, desc=mode)
    if world > 1:
        table = Table.concat(all_gather(table))
    return Run(table=table, labels=y.tolist(), indices=indices.tolist(), processes=world)


class _Runner:
    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: ThreatModel, batch_size: int, seed: int,
                 cascade: bool, verify: bool, path: Path | None, fingerprint: dict[str, Any]):
        self.model, self.x, self.y, self.threat = model, x, y, threat
        self.batch_size, self.seed, self.cascade, self.verify = batch_size, seed, cascade, verify
        self.path, self.fingerprint = path, fingerprint
        self.labels = y.tolist()
        self.session_start = time.perf_counter()
        self.time_before = 0.0

    def blocks(self, table: Table) -> list[tuple[int, int, int]]:
        """``(block, lo, hi)`` of the shard, in absolute positions."""
        return [(b, lo, min(lo + self.batch_size, table.stop))
                for b, lo in enumerate(range(table.start, table.stop, self.batch_size))]

    def save(self, table: Table, points: tuple[int, int] | None = None) -> None:
        """Write the state; ``points = (block, step)``: also the warm-start points after that
        step of that block, to a file of their own named in the state (written first, so the
        state never names a file that is not complete; the previous one is then removed)."""
        table.wall_time = self.time_before + time.perf_counter() - self.session_start
        if self.path is None:
            return
        old = table.points_file
        if points is not None:
            table.points_file = f"{self.path.name}.points-{points[0]}-{points[1]}.pt"
            save_tensors(self.path.with_name(table.points_file), {"x": self.points, "margin": self.margin})
        else:
            table.points_file = None
        table.save(self.path, self.fingerprint)
        if old is not None and old != table.points_file:
            self.path.with_name(old).unlink(missing_ok=True)

    def _start_block(self, table: Table, b: int, lo: int, hi: int, first: int, warm: list[bool]) -> None:
        """The warm-start points of a block: its clean inputs at infinite margin when it starts
        fresh, else those saved after its last finished step."""
        if not any(warm[first:]):  # no warm step left: nothing to keep
            return
        self.points, self.margin = self.x[lo:hi].clone(), self.x.new_full((hi - lo,), math.inf)
        if first == 0:
            return
        path = self.path
        name = f"{path.name}.points-{b}-{first}.pt" if path is not None else None
        if path is None or name is None or table.points_file != name or not path.with_name(name).exists():
            raise RobustlabError(f"the state file {self.path} lacks the warm-start points of block {b} after step "
                                 f"{first} ({name}): start afresh (resume=False; CLI: --no-resume)")
        saved = torch.load(path.with_name(name), map_location=self.x.device, weights_only=True)
        if saved["x"].shape != self.points.shape or saved["x"].dtype != self.points.dtype:
            raise RobustlabError(f"{name} does not hold the points of block {b}: start afresh")
        self.points, self.margin = saved["x"], saved["margin"]

    def clean_pass(self, table: Table, num_classes: int | None, world: int) -> None:
        """Step 0 of every block of the shard, its logits checked, before the state is first written."""
        self.time_before = table.wall_time
        fresh = not any(table.done)
        problem: str | None = None
        if fresh:
            k = num_classes
            try:
                for _b, lo, hi in self.blocks(table):
                    logits = model_logits(self.model, self.x[lo:hi])
                    check_logits(logits, self.y[lo:hi], k, stacklevel=5)
                    k = logits.shape[1]
                    for i, p in enumerate(logits.argmax(dim=1).tolist(), start=lo - table.start):
                        table.clean_prediction[i] = p
                        table.forwards[i] += 1
                    table.clean_cost["forwards"] += hi - lo
                    table.clean_cost["samples"] += hi - lo
                    table.clean_cost["calls"] += 1
            except RobustlabError as exc:
                problem = str(exc)
            table.num_classes = k
        elif num_classes is not None and table.num_classes not in (None, num_classes):
            problem = f"the model has {table.num_classes} outputs (says the state file) but num_classes is {num_classes}"
        if world > 1:  # every rank learns of any rank's bad input, and of the number of classes
            reports = all_gather((problem, table.num_classes))
            problem = next((p for p, _ in reports if p is not None), None)
            table.num_classes = next((k for _, k in reports if k is not None), None)
        if problem is not None:
            raise RobustlabError(problem)
        if fresh:
            table.done = [1] * len(table.done)

    def attack(self, table: Table, steps: list[Step], *, progress: bool, desc: str) -> None:
        keys = [s.key for s in steps]
        if not table.steps and not table.results:  # a fresh table
            table.set_steps(keys)
            self.save(table)
        elif table.steps != keys:
            raise RobustlabError(f"the state file {self.path} lists the steps {table.steps}, not {keys}: start afresh")
        sizes = [hi - lo for _, lo, hi in self.blocks(table)]
        bar = progress_bar(total=sum(sizes) * len(steps), desc=desc, unit="sample", disable=not progress, leave=False,
                   initial=sum(size * max(d - 1, 0) for size, d in zip(sizes, table.done)))
        # Warm steps start each sample from the point the earlier steps got nearest the boundary.
        warm = [self.cascade and not s.target_offset and getattr(s.attack, "warm_start", False) for s in steps]
        try:
            for b, lo, hi in self.blocks(table):
                first = table.done[b] - 1
                self._start_block(table, b, lo, hi, first, warm)
                for j in range(first, len(steps)):
                    bar.set_postfix(step=steps[j].key)
                    alive = [i for i in range(lo - table.start, hi - table.start) if self._attackable(table, i, j)]
                    if alive:
                        self._call(table, steps[j], alive, lo, warm=warm[j] and j > 0, track=any(warm[j + 1:]))
                    table.done[b] += 1
                    self.save(table, (b, j + 1) if any(warm[j + 1:]) else None)
                    bar.update(hi - lo)
        finally:
            bar.close()

    def _attackable(self, table: Table, i: int, j: int) -> bool:
        if table.clean_prediction[i] != self.labels[table.start + i]:
            return False
        return not (self.cascade and any(table.results[k]["success"][i] for k in table.steps[:j]))

    def _call(self, table: Table, step: Step, alive: list[int], lo: int, *, warm: bool, track: bool) -> None:
        """Run ``step`` on the ``alive`` samples of the block at ``lo``; ``warm``: give it the
        kept points as ``start``; ``track``: keep the points it brings nearer the boundary."""
        idx = torch.tensor(alive, device=self.x.device) + table.start
        rows = idx - lo  # positions in the block
        generator = torch.Generator(device=self.x.device).manual_seed(block_seed(self.seed, step.key, lo))
        y = self.y[idx]
        targets = None
        if step.target_offset:
            assert table.num_classes is not None
            targets = (y + step.target_offset) % table.num_classes
        result = step.attack(self.model, self.x[idx], y, threat=self.threat, targets=targets, generator=generator,
                             **({"start": self.points[rows]} if warm else {}))
        if track and result.margin is not None:
            nearer = result.margin < self.margin[rows]
            self.points[rows[nearer]] = result.x_adv[nearer]
            self.margin[rows[nearer]] = result.margin[nearer]
        record, cost = table.results[step.key], table.step_cost[step.key]
        for i, ok, d in zip(alive, result.success.tolist(), result.distance.tolist()):
            record["success"][i], record["distance"][i] = ok, d
        checked: list[int] = []
        reported = result.extras.get("best_distance") if self.verify else None
        if reported is not None:
            reported = torch.as_tensor(reported, dtype=result.distance.dtype).reshape(-1).tolist()
            flags, checked = cross_check(self.model, result, reported)
            for i, r, bad in zip(alive, reported, flags):
                record["reported"][i], record["mismatch"][i] = r, bad
        for i, f, b in zip(alive, _shares(result.forwards, len(alive)), _shares(result.backwards, len(alive))):
            table.forwards[i] += f
            table.backwards[i] += b
        for row in checked:
            table.forwards[alive[row]] += 1
        cost["forwards"] += result.forwards + len(checked)
        cost["backwards"] += result.backwards
        cost["samples"] += len(alive)
        cost["calls"] += 1
