"""The training loop: one loop for every method, resumable bit for bit on CPU."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab._progress import progress_bar
from robustlab.attacks.base import check_call
from robustlab.attacks.gradient import ProjectedGradientDescent
from robustlab.errors import RobustlabError
from robustlab.models.adapters import output_error
from robustlab.threat import ThreatModel
from robustlab.training import checkpoint as ckpt
from robustlab.training.augment import AUGMENTATIONS, check_augmentable
from robustlab.training.config import TrainConfig
from robustlab.training.distributed import (
    LocalGroup,
    ProcessGroup,
    check_batches,
    rank_seed,
)
from robustlab.training.methods import Batch, Method, make_method
from robustlab.training.optim import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """``history``: one dict per epoch with ``epoch`` (1-based), ``train_loss``, ``train_acc``
    (on the method's training inputs), ``val_loss``, ``val_acc`` (clean; None without
    validation data), ``val_robust_acc`` (PGD robust accuracy on the validation subset; None
    without a threat model, validation data or with ``robust_eval_samples=0``), ``lr`` (at the
    epoch's first iteration) and ``seconds``. For methods that replay each minibatch ``m``
    times ("free"), an epoch is one pass over the data, and there are ``config.epochs / m``.
    ``best_epoch``: the epoch with the highest robust validation accuracy when it is measured,
    else the highest clean validation accuracy (the first such), or the last epoch without
    validation data; its weights are in ``best.ckpt``. ``best_val_acc`` /
    ``best_val_robust_acc``: that epoch's clean and robust validation accuracy."""

    history: list[dict]
    best_epoch: int
    best_val_acc: float | None
    best_val_robust_acc: float | None = None


def train(
    model: nn.Module,
    train_x: Tensor,
    train_y: Tensor,
    *,
    config: TrainConfig,
    val_x: Tensor | None = None,
    val_y: Tensor | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = False,
    device: str | torch.device = "cpu",
    on_epoch_end: Callable[[dict], None] | None = None,
    method: Method | None = None,
    distributed: bool = False,
    dataset: str | None = None,
) -> TrainResult:
    """Train ``model`` in place with the method ``config.method`` and return its history.

    ``train_x``: float ``[N, C, H, W]`` (any ``[N, ...]``) in the model's input box,
    ``train_y``: integer ``[N]``; likewise the optional ``val_x``/``val_y``, on which clean
    accuracy (and, with ``config.threat``, PGD robust accuracy on the first
    ``config.robust_eval_samples``) is measured after each epoch. Batches are drawn by a
    ``torch.randperm`` from a generator seeded by ``config.seed``; the learning rate is stepped
    at every optimizer step (``config.epochs * ceil(N / batch_size)`` steps in all, whatever
    the method's replay count). With ``config.mixed_precision``, ``make_inputs`` and ``loss`` run
    under autocast: float16 with the backward pass through a ``GradScaler`` on CUDA, bfloat16 on
    CPU (float32's range, no scaling needed); parameters, optimizer state and validation stay float32.

    With ``checkpoint_dir``, each epoch appends a JSON line to ``metrics.jsonl`` and writes
    ``last.ckpt`` (everything needed to continue) and, when the validation accuracy that
    selects the best epoch improves, ``best.ckpt`` (model weights); see :mod:`robustlab.training.checkpoint`. With ``resume``
    and an existing ``last.ckpt`` written under the same config, training continues after
    its epoch; on CPU the final weights are bitwise those of an uninterrupted run.

    With ``config.augment`` (see :mod:`robustlab.training.augment`), each training batch is
    augmented on ``device``, once, before the method's ``make_inputs`` (and its replays), from a
    generator of its own derived from ``config.seed`` (one per rank) and saved in each checkpoint;
    ``train_x`` must then be images ``[N, C, H, W]``.

    Randomness that uses torch's global generator (dropout) runs inside
    ``torch.random.fork_rng``, started from a state derived from ``config.seed`` and saved
    in each checkpoint: runs are reproducible whatever the caller's global RNG state, and
    that state is unchanged when ``train`` returns.

    ``on_epoch_end(record)`` is called after each epoch's checkpoint is written (an exception
    it raises stops training with that checkpoint intact). ``method``: an already built method
    for ``config.method`` (for methods that need more than configuration, such as the
    distillation student's teacher); by default ``METHODS[config.method](config, device=...)``.
    The model is left in eval mode.

    ``distributed=True``: data-parallel training, one call per rank of an initialized process
    group (under ``torchrun``, after :func:`robustlab.evaluation.distributed.init_process_group`;
    ``device`` is this rank's), every rank with the same arguments. Each rank trains on its
    shard of every batch of ``config.batch_size`` and gradients are averaged, so the run follows
    the single-process trajectory (see :mod:`robustlab.training.distributed` for the exact
    semantics, BatchNorm and randomness). Rank 0 alone reads and writes ``checkpoint_dir``,
    logs, shows progress and evaluates; the history it measures is returned on every rank.
    ``on_epoch_end`` is called on every rank (an exception on some ranks only leaves the others
    waiting). Every batch needs at least one example per rank.

    ``dataset``: the data's name (e.g. ``"mnist/train"``), recorded in the checkpoints with the
    number of examples and sha256 hashes of the labels and of a sample of the inputs; resuming
    on other data (another dataset, subset, order or labels) raises a ``RobustlabError``.
    """
    if not isinstance(config, TrainConfig):
        raise RobustlabError(f"config must be a TrainConfig, got {type(config).__name__}")
    method_name = getattr(method, "name", config.method)
    if method is not None and method_name != config.method:
        raise RobustlabError(f"method is a {method_name!r} method but config.method is {config.method!r}")
    device = _as_device(device)
    train_x, train_y = _check_pair(train_x, train_y, "train")
    if (val_x is None) != (val_y is None):
        raise RobustlabError("give both val_x and val_y, or neither")
    val = None if val_x is None else _check_pair(val_x, val_y, "val")
    # Not under inference_mode, and inputs of the model's dtype (see check_call).
    train_x = check_call(model, train_x)
    if val is not None:
        val = (check_call(model, val[0]), val[1])
    if config.channels_last and train_x.dim() != 4:
        raise RobustlabError(f"TrainConfig.channels_last needs images [N, C, H, W], got train_x of shape "
                             f"{tuple(train_x.shape)}")
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # a documented keyword the stubs omit
    group = ProcessGroup(device) if distributed else LocalGroup()
    check_batches(len(train_x), config.batch_size, group.world)

    checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
    shuffle_seed, global_seed, method_seed, augment_seed = _derive_seeds(config.seed)
    threat = config.threat_model()
    if threat is not None:
        _check_in_box(train_x, threat, "train_x")
        if val is not None:
            _check_in_box(val[0], threat, "val_x")
    if config.augment is not None:
        check_augmentable(config.augment, train_x, None if threat is None else threat.bounds)

    with _forked_global_rng(device, rank_seed(global_seed, group.rank)):
        _check_model_outputs(model, train_x, train_y, val, device)
        if checkpoint_dir is not None and group.is_main:  # after every check: nothing written for bad input
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
        group.broadcast_module(model)
        run = _Run(model, config, device, num_train=len(train_x), shuffle_seed=shuffle_seed, method=method,
                   group=group, method_seed=method_seed, augment_seed=augment_seed,
                   data=ckpt.data_fingerprint(dataset, train_x, train_y))
        last = None if checkpoint_dir is None else checkpoint_dir / ckpt.LAST
        stored = _read_last(last, group) if resume else None
        if stored is not None and last is not None and checkpoint_dir is not None:
            run.restore(stored, last)
            if group.is_main:
                ckpt.write_metrics(checkpoint_dir / ckpt.METRICS, run.history)
                logger.info("resuming from %s after epoch %d", last, run.epoch)
        elif checkpoint_dir is not None and group.is_main:
            ckpt.write_metrics(checkpoint_dir / ckpt.METRICS, [])
        try:
            while run.epoch < run.epochs:
                record = run.train_one_epoch(train_x, train_y, val, progress and group.is_main)
                if checkpoint_dir is not None:
                    run.write_checkpoints(checkpoint_dir)
                    if group.is_main:
                        ckpt.append_metrics(checkpoint_dir / ckpt.METRICS, record)
                if group.is_main:
                    logger.info("%s", _describe(record, run.epochs))
                if on_epoch_end is not None:
                    on_epoch_end(dict(record))
        finally:
            model.eval()
            if config.channels_last:
                model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return TrainResult(list(run.history), run.best_epoch, run.best_val_acc, run.best_val_robust_acc)


def _read_last(last: Path | None, group) -> dict | None:
    """Rank 0's ``last.ckpt`` (``None`` if there is none), on every rank: the other ranks need
    not see rank 0's disk, and a checkpoint rank 0 cannot read fails on every rank alike."""
    stored: dict | RobustlabError | None = None
    if group.is_main and last is not None and last.exists():
        try:
            stored = ckpt.load_checkpoint(last)
        except RobustlabError as exc:
            stored = exc
    stored = group.broadcast(stored)
    if isinstance(stored, RobustlabError):
        raise stored
    return stored


class _Run:
    """The mutable state of one run: everything a checkpoint holds."""

    def __init__(self, model, config: TrainConfig, device, *, num_train: int, shuffle_seed: int,
                 method: Method | None = None, group=None, method_seed: int = 0, augment_seed: int = 0,
                 data: dict | None = None):
        self.model = model
        self.config = config
        self.device = device
        self.group = LocalGroup() if group is None else group
        self.num_train = num_train
        self.data = data
        self.steps_per_epoch = math.ceil(num_train / config.batch_size)
        self.method: Method = make_method(config, device) if method is None else method
        self._prepare_method_for_ranks(method_seed)
        self.replays = self.method.replays
        # A replaying method spends `replays` of the configured epochs' optimizer steps on each
        # pass; TrainConfig has checked (through the method) that they divide.
        self.epochs = config.epochs // self.replays
        self.optimizer = build_optimizer(model.parameters(), config)
        self.scheduler = build_scheduler(self.optimizer, config, config.epochs * self.steps_per_epoch)
        self.threat = config.threat_model()
        self.warmup_steps = config.eps_warmup_epochs * self.steps_per_epoch
        self.amp_dtype = {"cuda": torch.float16, "cpu": torch.bfloat16}.get(device.type)
        self.amp = config.mixed_precision and self.amp_dtype is not None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and device.type == "cuda")
        self.generator = torch.Generator().manual_seed(shuffle_seed)
        # The augmentation's own stream, on the training device, one per rank (as the method's).
        self.augment = None if config.augment is None else AUGMENTATIONS.lookup(config.augment)
        self.augment_generator = None if self.augment is None else \
            torch.Generator(device=device).manual_seed(rank_seed(augment_seed, self.group.rank))
        self.epoch = 0
        self.global_step = 0
        self.history: list[dict] = []
        self.best_epoch = 0
        self.best_val_acc: float | None = None
        self.best_val_robust_acc: float | None = None
        self.improved = False

    def _prepare_method_for_ranks(self, method_seed: int) -> None:
        """Size the method's per-example state for the training set (``reserve(num_train)``,
        where the method has it). With several ranks also give the method the rank's own random
        stream (its ``generator``, the convention of every method here) and check that every
        per-example table covers the whole training set, so rows can be exchanged by index."""
        reserve = getattr(self.method, "reserve", None)
        if callable(reserve):
            reserve(self.num_train)
        if self.group.world == 1:
            return
        generator = getattr(self.method, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(rank_seed(method_seed, self.group.rank))
        for key, table in (getattr(self.method, "per_example", None) or {}).items():
            if not isinstance(table, Tensor) or len(table) != self.num_train:
                got = f"{len(table)} rows" if isinstance(table, Tensor) else type(table).__name__
                raise RobustlabError(
                    f"method {self.config.method!r} keeps per_example[{key!r}] with {got}; distributed "
                    f"training needs a tensor with one row per training example ({self.num_train}) "
                    "from the start (give the method a reserve(num_train) method)"
                )

    def threat_at(self, step: int) -> ThreatModel | None:
        """The threat model of optimizer step ``step`` (0-based): eps ramped linearly over the
        warm-up, reaching ``threat.eps`` after it. The ramp starts one step in, never at 0,
        because a threat model's eps must be positive."""
        if self.threat is None or step + 1 >= self.warmup_steps:
            return self.threat
        return self.threat.with_eps(self.threat.eps * (step + 1) / self.warmup_steps)

    def train_one_epoch(self, train_x, train_y, val, progress: bool) -> dict:
        start = time.perf_counter()
        self.epoch += 1
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss, train_acc = self._fit(train_x, train_y, progress)
        if not math.isfinite(train_loss):
            raise RobustlabError(
                f"training diverged in epoch {self.epoch} (loss {train_loss}); lower the "
                "learning rate. The last checkpoint is from the previous epoch."
            )
        val_loss, val_acc, robust_acc = None, None, None
        # Rank 0 evaluates alone, exactly as a single process would (same batches, same PGD
        # starts); the other ranks wait for its numbers.
        if self.group.is_main:
            val_loss, val_acc = (None, None) if val is None else self._evaluate(*val)
            if val is not None and self.threat is not None and self.config.robust_eval_samples > 0:
                robust_acc = self._robust_accuracy(*val, threat=self.threat)
        val_loss, val_acc, robust_acc = self.group.broadcast((val_loss, val_acc, robust_acc))
        record = {
            "epoch": self.epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "val_robust_acc": robust_acc,
            "lr": lr,
            "seconds": time.perf_counter() - start,
        }
        self.history.append(record)
        score, best = (robust_acc, self.best_val_robust_acc) if robust_acc is not None else (val_acc, self.best_val_acc)
        self.improved = score is None or best is None or score > best
        if self.improved:
            self.best_epoch, self.best_val_acc, self.best_val_robust_acc = self.epoch, val_acc, robust_acc
        return record

    def _fit(self, x_all: Tensor, y_all: Tensor, progress: bool) -> tuple[float, float]:
        self.model.train()
        order = torch.randperm(self.num_train, generator=self.generator)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        bar = progress_bar(
            total=self.steps_per_epoch * self.replays,
            desc=f"epoch {self.epoch}/{self.epochs}",
            disable=not progress,
            leave=False,
        )
        with bar:
            for first in range(0, self.num_train, self.config.batch_size):
                batch_index = order[first : first + self.config.batch_size]
                start, stop = self.group.shard(len(batch_index))
                index = batch_index[start:stop]
                x = x_all[index].to(self.device)
                if self.augment is not None and self.augment_generator is not None:
                    x = self.augment(x, self.augment_generator)  # once: a replaying method replays the augmented batch
                if self.config.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y_all[index].to(self.device)
                index = index.to(self.device)
                for _ in range(self.replays):
                    loss, logits = self._step(Batch(
                        x, y, index, epoch=self.epoch, step=self.global_step,
                        threat=self.threat_at(self.global_step),
                        scale_loss=self.scaler.scale,  # the identity when the scaler is disabled
                    ), global_batch=len(batch_index))
                    loss_sum += loss * len(index)
                    correct += (logits.argmax(dim=1) == y).sum()
                    seen += len(index)
                    if progress:
                        bar.set_postfix(
                            loss=f"{loss_sum.item() / seen:.4f}",
                            acc=f"{correct.item() / seen:.3f}",
                            refresh=False,
                        )
                        bar.update()
        totals = self.group.sum(
            torch.stack([loss_sum.double(), correct.double(), loss_sum.new_tensor(seen, dtype=torch.float64)])
        )
        loss_total, correct_total, seen_total = totals.tolist()
        return loss_total / seen_total, correct_total / seen_total

    def _step(self, batch: Batch, *, global_batch: int) -> tuple[Tensor, Tensor]:
        """One optimizer step on this rank's part ``batch`` of a batch of ``global_batch``
        examples; returns the detached loss and logits."""
        model, method, optimizer = self.model, self.method, self.optimizer
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp else contextlib.nullcontext()
        )
        with autocast:
            x_train = method.make_inputs(model, batch)
        # After make_inputs, so an inner maximization may leave gradients behind.
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss, logits = method.loss(model, x_train, batch)
        if loss.dim() != 0:
            raise RobustlabError(
                f"method {self.config.method!r} returned a loss of shape "
                f"{tuple(loss.shape)}; it must be a scalar"
            )
        self.scaler.scale(loss).backward()
        self.group.average_gradients(
            (p for p in model.parameters() if p.requires_grad), len(batch.index), global_batch
        )
        self.scaler.step(optimizer)
        self.scaler.update()
        self.scheduler.step()
        method.after_step(model, x_train, batch)
        per_example = getattr(method, "per_example", None)
        if per_example:
            self.group.share_rows(per_example, batch.index, global_batch)
        self.global_step += 1
        return loss.detach().float(), logits.detach()

    @torch.no_grad()
    def _evaluate(self, x_all: Tensor, y_all: Tensor) -> tuple[float, float]:
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for first in range(0, len(x_all), self.config.batch_size):
            x = x_all[first : first + self.config.batch_size].to(self.device)
            y = y_all[first : first + self.config.batch_size].to(self.device)
            logits = self.model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
        return loss_sum.item() / len(x_all), correct.item() / len(x_all)

    def _robust_accuracy(self, x_all: Tensor, y_all: Tensor, *, threat: ThreatModel) -> float:
        """Fraction of the first ``robust_eval_samples`` validation examples classified
        correctly at the clean input *and* at the PGD adversarial input. The attack's random
        starts come from a generator seeded afresh each epoch, so epochs are compared on the
        same starts and the evaluation leaves the run's randomness untouched."""
        n = min(self.config.robust_eval_samples, len(x_all))
        attack = ProjectedGradientDescent(steps=self.config.robust_eval_steps)
        generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        self.model.eval()
        robust = torch.zeros((), dtype=torch.long, device=self.device)
        for first in range(0, n, self.config.batch_size):
            x = x_all[first : min(first + self.config.batch_size, n)].to(self.device)
            y = y_all[first : min(first + self.config.batch_size, n)].to(self.device)
            with torch.no_grad():
                clean_correct = self.model(x).argmax(dim=1) == y
            result = attack(self.model, x, y, threat=threat, generator=generator)
            robust += (clean_correct & ~result.success).sum()
        return robust.item() / n

    def state(self) -> dict:
        state = {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "num_train": self.num_train,
            "data": self.data,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "method": self.method.state_dict(),
            "shuffle_generator": self.generator.get_state(),
            "global_rng": _get_global_rng(self.device),
            "model_generators": [g.get_state() for g in _model_generators(self.model)],
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_val_acc": self.best_val_acc,
            "best_val_robust_acc": self.best_val_robust_acc,
        }
        state.update(self._augment_state())
        return state

    def _augment_state(self) -> dict:
        """The augmentation generator's state (nothing without augmentation: such checkpoints are
        those written before augmentation existed)."""
        return {} if self.augment_generator is None else {"augment_generator": self.augment_generator.get_state()}

    def write_checkpoints(self, directory: Path) -> None:
        """On rank 0; a collective, so every rank calls it."""
        ranks = None
        if self.group.world > 1:
            # The ranks' own random streams, so that a resumed run continues each of them.
            ranks = self.group.gather({"global_rng": _get_global_rng(self.device), "method": self.method.state_dict(),
                                       "model_generators": [g.get_state() for g in _model_generators(self.model)],
                                       **self._augment_state()})
        if not self.group.is_main:
            return
        state = self.state()
        if ranks is not None:
            state["distributed"] = {"world_size": self.group.world, "ranks": ranks}
        # best first: a kill between the two writes then reruns this epoch, rewriting both.
        if self.improved:
            ckpt.save_checkpoint(
                directory / ckpt.BEST,
                {
                    "config": self.config.to_dict(),
                    "epoch": self.epoch,
                    "val_acc": self.best_val_acc,
                    "val_robust_acc": self.best_val_robust_acc,
                    "model": self.model.state_dict(),
                },
            )
        ckpt.save_checkpoint(directory / ckpt.LAST, state)

    def restore(self, state: dict, path: Path) -> None:
        ckpt.check_resumable(state.get("config", {}), self.config, path)
        if self.data is not None:
            ckpt.check_same_data(state.get("data"), self.data, path)
        saved_world = state.get("distributed", {}).get("world_size", 1)
        if saved_world != self.group.world:
            raise RobustlabError(
                f"cannot resume from {path}: it was written by a run on {saved_world} process(es), this run "
                f"has {self.group.world}; the shards and random streams differ, so use {saved_world}, pass "
                "resume=False (CLI: --no-resume) to start over, or choose another checkpoint_dir"
            )
        own = state["distributed"]["ranks"][self.group.rank] if saved_world > 1 else state
        if state["num_train"] != self.num_train:
            raise RobustlabError(
                f"cannot resume from {path}: it was trained on {state['num_train']} examples, "
                f"this run has {self.num_train}"
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise RobustlabError(
                f"cannot resume from {path}: its weights do not fit this model ({exc})"
            ) from exc
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler.is_enabled() and state["grad_scaler"]:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.method.load_state_dict(own["method"])
        self.generator.set_state(state["shuffle_generator"])
        if self.augment_generator is not None:  # check_resumable has checked that the run augmented too
            self.augment_generator.set_state(own["augment_generator"])
        _set_global_rng(self.device, own["global_rng"])
        generators, saved = _model_generators(self.model), own.get("model_generators", [])
        if saved and len(saved) != len(generators):
            raise RobustlabError(f"cannot resume from {path}: it saved the states of {len(saved)} random generator(s) of "
                                 f"the model's layers, this model has {len(generators)}")
        for generator, generator_state in zip(generators, saved):
            generator.set_state(generator_state)
        self.epoch = state["epoch"]
        self.global_step = state["global_step"]
        self.history = list(state["history"])
        self.best_epoch = state["best_epoch"]
        self.best_val_acc = state["best_val_acc"]
        self.best_val_robust_acc = state["best_val_robust_acc"]


def _describe(record: dict, epochs: int) -> str:
    text = (
        f"epoch {record['epoch']}/{epochs}: train_loss={record['train_loss']:.4f} "
        f"train_acc={record['train_acc']:.4f}"
    )
    if record["val_acc"] is not None:
        text += f" val_loss={record['val_loss']:.4f} val_acc={record['val_acc']:.4f}"
    if record["val_robust_acc"] is not None:
        text += f" val_robust_acc={record['val_robust_acc']:.4f}"
    return text + f" lr={record['lr']:.3g} ({record['seconds']:.1f}s)"


def _as_device(device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise RobustlabError(f"unknown device {device!r}") from exc


def _check_pair(x, y, name: str) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise RobustlabError(f"{name}_x and {name}_y must be torch tensors")
    if not x.is_floating_point():
        raise RobustlabError(f"{name}_x must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 2 or len(x) == 0:
        raise RobustlabError(f"{name}_x must be a non-empty batch [N, ...], got {tuple(x.shape)}")
    if y.dim() != 1 or len(y) != len(x):
        raise RobustlabError(
            f"{name}_y must have shape [{len(x)}] to match {name}_x, got {tuple(y.shape)}"
        )
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise RobustlabError(f"{name}_y must hold integer class labels, got {y.dtype}")
    if not torch.isfinite(x).all():
        raise RobustlabError(f"{name}_x contains NaN or infinite values")
    if (y < 0).any():
        raise RobustlabError(f"{name}_y contains negative labels")
    return x, y.long()


def _check_in_box(x: Tensor, threat: ThreatModel, name: str) -> None:
    lo, hi = threat.bounds
    if (x < lo).any() or (x > hi).any():
        raise RobustlabError(
            f"{name} has values in [{float(x.min()):.4g}, {float(x.max()):.4g}], outside the threat model's "
            f"bounds {threat.bounds}; inputs must be in the model's input box (put mean/std normalization "
            "inside the model, robustlab.models.Normalize)"
        )


def _check_model_outputs(model, train_x, train_y, val, device) -> None:
    """One eval-mode forward on one example: the model must return logits ``[1, K]``."""
    model.eval()
    with torch.no_grad():
        out = model(train_x[:1].to(device))
    if not isinstance(out, Tensor):
        raise output_error(out)
    if out.dim() != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise RobustlabError(f"the model must return logits of shape [N, K], got {shape}")
    num_classes = out.shape[1]
    highest = max(int(train_y.max()), -1 if val is None else int(val[1].max()))
    if highest >= num_classes:
        raise RobustlabError(
            f"labels go up to {highest} but the model has only {num_classes} outputs"
        )


def _derive_seeds(seed: int) -> tuple[int, int, int, int]:
    """Independent seeds for the shuffling generator, the forked global RNG, a method's own
    generator (the one :func:`~robustlab.training.methods.method_generator` seeds) and the data
    augmentation's generator."""
    generator = torch.Generator().manual_seed(seed)
    shuffle, global_rng, method = torch.randint(0, 2**62, (3,), generator=generator).tolist()
    # A draw of its own after the others, so that they stay what they were before augmentation existed.
    augment = int(torch.randint(0, 2**62, (1,), generator=generator))
    return shuffle, global_rng, method, augment


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@contextlib.contextmanager
def _forked_global_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Run the body on a private copy of the global RNG, started from ``seed``.

    The caller's global RNG state is restored on exit, so nothing global is reseeded.
    """
    cuda = [_cuda_index(device)] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(cuda[0]):
                torch.cuda.manual_seed(seed)
        yield


def _model_generators(model: nn.Module) -> list[torch.Generator]:
    """The generators the model's layers draw from (a module's ``generator`` attribute: a Bayesian
    network's weight draws, a neural SDE's noise, a random defense's draws), each once, in module
    order. Checkpoints save their states, so that a resumed run draws what an uninterrupted one
    draws; a layer drawing from torch's global RNG is covered by the loop's own fork of it."""
    found: dict[int, torch.Generator] = {}
    for module in model.modules():
        generator = getattr(module, "generator", None)
        if isinstance(generator, torch.Generator):
            found.setdefault(id(generator), generator)
    return list(found.values())


def _get_global_rng(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(_cuda_index(device))
    return state


def _set_global_rng(device: torch.device, state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], _cuda_index(device))
