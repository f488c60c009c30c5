"""Data-parallel training over a ``torch.distributed`` process group (``torchrun``).

:func:`robustlab.training.train` with ``distributed=True`` runs one copy of the loop per rank;
the ranks talk only through the :class:`ProcessGroup` below. A :class:`LocalGroup` (one rank,
every operation the identity) stands in for single-process runs, so the loop has one code path
and a single-process run is bitwise what it was before distribution existed.

Semantics (with ``N`` ranks and ``B = TrainConfig.batch_size``):

- **The global batch is B, split across the ranks.** Every rank draws the same seeded
  permutation of the training set, cuts it into the same batches of ``B`` as a single-process
  run, and takes its own contiguous shard of each batch (sizes differ by at most one, see
  :func:`shard_of`). The union of the shards of an epoch is exactly the single-process epoch,
  the number of optimizer steps and the learning-rate schedule are unchanged, and the
  hyperparameters mean what they mean in one process. (The other choice, a per-rank batch of
  ``B`` and a global batch of ``N B``, changes the trajectory with ``N`` and would need the
  learning rate rescaled.)
- **Gradients are averaged with the shard sizes as weights**, ``sum_r n_r g_r / B`` where
  ``g_r`` is rank ``r``'s gradient of its mean loss: for a loss that is a mean over the batch
  this is the single-process gradient up to floating-point summation order, uneven last
  batches included. Natural training of a model without BatchNorm or Dropout therefore
  follows the single-process trajectory to within rounding.
- **BatchNorm statistics stay per rank**: each rank normalises with its own shard's batch
  statistics and updates its own running statistics; rank 0's are evaluated and saved.
- **Randomness per rank**: rank 0 uses exactly the seeds of a single-process run; rank ``r > 0``
  reseeds the global RNG (Dropout) and the method's ``generator`` (random starts) with seeds
  derived from the run's seed and ``r`` (:func:`rank_seed`), so ranks do not reuse the same
  noise. All ranks' random states go into the checkpoint, so a resumed distributed run is exact.
- **Per-example state** (a method's ``per_example: dict[str, Tensor]``, tensors
  ``[num_train, ...]`` indexed by dataset position, such as MMA's eps): after every optimizer
  step each rank's freshly written rows ``per_example[k][shard]`` are all-gathered and written
  into every rank's tensors (:meth:`ProcessGroup.share_rows`), so all ranks hold the same,
  complete state and rank 0's checkpoint holds every example's.

Why an explicit all-reduce instead of wrapping the model in ``DistributedDataParallel``: DDP
synchronises gradients from hooks that only fire for a backward pass through a forward of the
DDP wrapper, with every parameter used and the same number of wrapper forwards on every rank.
The method contract (:mod:`robustlab.training.methods`) lets a method build part of its graph
in ``make_inputs``, take parameter gradients with ``torch.autograd.grad`` (YOPO) or look up
submodules by name; under DDP some of these would fail and some would silently leave the ranks'
gradients unsynchronised. One all-reduce of the flattened gradients after ``backward`` works for
every method; what it gives up is DDP's overlap of communication with the backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.evaluation.distributed import all_gather, rank_and_world, shard_range

__all__ = ["LocalGroup", "ProcessGroup", "check_batches", "rank_seed", "shard_of"]


def shard_of(n: int, rank: int, world: int) -> tuple[int, int]:
    """Positions ``[start, stop)`` of rank ``rank``'s contiguous shard of a batch of ``n``:
    the first ``n % world`` ranks take one more. The shards are disjoint and cover the batch."""
    return shard_range(n, 1, rank, world)


def check_batches(num_train: int, batch_size: int, world: int) -> None:
    """Raise unless every batch of an epoch has at least one example for each of ``world`` ranks
    (a rank with nothing to train on has no loss to take a gradient of)."""
    last = num_train - (math.ceil(num_train / batch_size) - 1) * batch_size
    if last < world:
        raise RobustlabError(
            f"with {num_train} training examples and batch_size {batch_size} the last batch of each "
            f"epoch has {last} example(s), fewer than the {world} ranks, and every rank needs at least "
            "one; change batch_size or the number of processes"
        )


def rank_seed(seed: int, rank: int) -> int:
    """``seed`` for rank 0 (so rank 0 draws what a single-process run draws); for ``rank > 0`` the
    ``rank``-th draw of a generator seeded with ``seed``."""
    if rank == 0:
        return seed
    generator = torch.Generator().manual_seed(seed)
    return int(torch.randint(0, 2**62, (rank,), generator=generator)[-1])


class LocalGroup:
    """The one-rank group of a single-process run: every collective is the identity."""

    rank = 0
    world = 1
    is_main = True

    def shard(self, n: int) -> tuple[int, int]:
        return 0, n

    def average_gradients(self, params: Iterable[nn.Parameter], weight: int, total: int) -> None:
        pass

    def sum(self, values: Tensor) -> Tensor:
        return values

    def broadcast(self, obj: Any) -> Any:
        return obj

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast_module(self, module: nn.Module) -> None:
        pass

    def share_rows(self, per_example: dict[str, Tensor], index: Tensor, batch_size: int) -> None:
        pass


class ProcessGroup:
    """The default ``torch.distributed`` process group (Gloo on CPU, NCCL on CUDA), joined
    beforehand with :func:`robustlab.evaluation.distributed.init_process_group`. ``device``:
    where this rank's tensors live (a CUDA device under NCCL)."""

    def __init__(self, device: torch.device) -> None:
        self.rank, self.world = rank_and_world()
        self.is_main = self.rank == 0
        self.device = device

    def shard(self, n: int) -> tuple[int, int]:
        return shard_of(n, self.rank, self.world)

    def average_gradients(self, params: Iterable[nn.Parameter], weight: int, total: int) -> None:
        """Replace each parameter's ``.grad`` by ``sum_r weight_r grad_r / total``, on every rank.

        ``weight``: this rank's number of examples in the step; ``total``: the global batch. One
        all-reduce per dtype, over the flattened gradients and a presence flag per parameter: a
        parameter with no gradient on any rank keeps ``grad = None`` (so the optimizer skips it,
        as it would in one process); one with a gradient on some rank only counts as zero
        elsewhere.
        """
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for p in params:
            if p.grad is not None and (p.grad.is_sparse or p.grad.layout != torch.strided):
                raise RobustlabError("distributed training supports dense gradients only")
            by_dtype.setdefault(p.dtype, []).append(p)
        for dtype, group in by_dtype.items():
            parts = [p.grad.reshape(-1) * weight if p.grad is not None else p.new_zeros(p.numel()) for p in group]
            present = torch.tensor([p.grad is not None for p in group], dtype=dtype, device=group[0].device)
            flat = torch.cat([*parts, present])
            dist.all_reduce(flat)
            values, present = flat[: -len(group)], flat[-len(group):] > 0
            for p, chunk, has_grad in zip(group, values.split([p.numel() for p in group]), present.tolist()):
                p.grad = chunk.view_as(p).div_(total) if has_grad else None

    def sum(self, values: Tensor) -> Tensor:
        """``values`` summed over the ranks (a new tensor, on every rank)."""
        values = values.clone()
        dist.all_reduce(values)
        return values

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (picklable), on every rank."""
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        return all_gather(obj)

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every rank's ``module``, so that all ranks
        start from the same weights whatever each built."""
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def share_rows(self, per_example: dict[str, Tensor], index: Tensor, batch_size: int) -> None:
        """Write every rank's rows ``per_example[k][index_r]`` into every rank's ``per_example[k]``.

        ``index``: this rank's dataset positions in the step (its shard of a global batch of
        ``batch_size``). Shards differ in length by at most one, and an all-gather needs equal
        lengths, so a short shard is padded with a repeat of its last position and row: the
        duplicate write stores the value already there.
        """
        longest = math.ceil(batch_size / self.world)
        pad = longest - len(index)
        padded_index = torch.cat([index, index[-1:].expand(pad)]) if pad else index
        gathered_index = [torch.empty_like(padded_index) for _ in range(self.world)]
        dist.all_gather(gathered_index, padded_index)
        everyone = torch.cat(gathered_index)
        for key in sorted(per_example):  # the same order on every rank: each is a collective
            table = per_example[key]
            rows = table[padded_index]
            gathered_rows = [torch.empty_like(rows) for _ in range(self.world)]
            dist.all_gather(gathered_rows, rows)
            table[everyone] = torch.cat(gathered_rows)
