"""Data-parallel training (robustlab.training.distributed): 2-rank Gloo runs against one process.

The multi-process tests start two CPU ranks with ``torch.multiprocessing.spawn``; each rank
saves what it ends with, and the assertions run here, in the parent.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.training import NaturalMethod, TrainConfig, load_checkpoint, train
from robustlab.training.distributed import check_batches, rank_seed, shard_of

pytestmark = pytest.mark.usefixtures("single_thread")

WORLD = 2
NUM_TRAIN = 230
# 230 = 5 * 45 + 5: the last batch of 5 splits 3/2, so uneven shards and the padding of the
# per-example exchange are exercised in every epoch.
BATCH = 45


def mlp(*, dropout: float = 0.0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        layers = [nn.Flatten(), nn.Linear(64, 32), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        return nn.Sequential(*layers, nn.Linear(32, 10))


def pretrained_with_dropout(weights: dict[str, Tensor]) -> nn.Module:
    """The conftest's trained digits MLP (64-128-10) with a Dropout layer added: MMA only finds
    margins for examples the model already classifies with some confidence."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))
    renamed = {name.replace("3.", "4.") if name.startswith("3.") else name: value for name, value in weights.items()}
    model.load_state_dict(renamed)
    return model


class CountingMethod(NaturalMethod):
    """Natural training that records, per example, how often it was trained on and its label.

    Each rank writes only the rows of its own shard, so the tables are complete and equal on
    every rank only if the loop exchanges the rows."""

    def __init__(self, config, *, device="cpu"):
        super().__init__(config, device=device)
        self.per_example = {"visits": torch.zeros(0, dtype=torch.int64), "label": torch.zeros(0, 2)}

    def reserve(self, num_train: int) -> None:
        self.per_example = {"visits": torch.zeros(num_train, dtype=torch.int64), "label": torch.zeros(num_train, 2)}

    def after_step(self, model, x_train, batch):
        self.per_example["visits"][batch.index] += 1
        self.per_example["label"][batch.index] = torch.stack(
            [batch.y.float(), torch.full_like(batch.y, batch.epoch, dtype=torch.float32)], dim=1
        )

    def state_dict(self):
        return {"per_example": {k: v.clone() for k, v in self.per_example.items()}}

    def load_state_dict(self, state):
        self.per_example = {k: v.clone() for k, v in state["per_example"].items()}


def natural_config() -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=BATCH, lr=0.1, seed=3, threat={"norm": "Linf", "eps": 0.1},
                       robust_eval_samples=20, robust_eval_steps=2)


def mma_config() -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=BATCH, lr=0.05, seed=5, method="mma",
                       method_options={"steps": 2, "bisection_steps": 3}, threat={"norm": "Linf", "eps": 0.3},
                       robust_eval_samples=0)


class _Stop(Exception):
    pass


def _stop_after_first_epoch(record: dict) -> None:
    if record["epoch"] == 1:
        raise _Stop


def _worker(rank: int, port: int, out: str, data: tuple[Tensor, ...]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    from robustlab.evaluation import distributed

    out_dir = Path(out)
    x, y, vx, vy, weights = data
    device = distributed.init_process_group(torch.device("cpu"))
    try:
        # Natural training; each rank is given its own checkpoint folder, so a write by rank 1
        # would show.
        config = natural_config()
        model, method = mlp(), CountingMethod(config)
        natural = train(model, x, y, config=config, val_x=vx, val_y=vy, method=method, device=device,
                        checkpoint_dir=out_dir / f"natural-rank{rank}", distributed=True)
        # MMA (per-example eps, random starts) with Dropout, killed after epoch 1 and resumed,
        # against an uninterrupted run.
        config = mma_config()
        whole = pretrained_with_dropout(weights)
        train(whole, x, y, config=config, device=device, checkpoint_dir=out_dir / "mma-whole", distributed=True)
        whole_eps = load_checkpoint(out_dir / "mma-whole" / "last.ckpt")["method"]["per_example"]["eps"] \
            if rank == 0 else None
        with pytest.raises(_Stop):
            train(pretrained_with_dropout(weights), x, y, config=config, device=device, checkpoint_dir=out_dir / "mma-killed",
                  distributed=True, on_epoch_end=_stop_after_first_epoch)
        resumed = pretrained_with_dropout(weights)
        from robustlab.training import METHODS

        mma = METHODS["mma"](config, device=device)
        train(resumed, x, y, config=config, device=device, checkpoint_dir=out_dir / "mma-killed", distributed=True,
              method=mma)
        # Natural training with data augmentation and Dropout, killed after epoch 1 and resumed.
        config = dataclasses.replace(natural_config(), augment="crop-flip", robust_eval_samples=0)
        augmented = mlp(dropout=0.2)
        train(augmented, x, y, config=config, device=device, checkpoint_dir=out_dir / "augment-whole", distributed=True)
        with pytest.raises(_Stop):
            train(mlp(dropout=0.2), x, y, config=config, device=device, checkpoint_dir=out_dir / "augment-killed",
                  distributed=True, on_epoch_end=_stop_after_first_epoch)
        augmented_resumed = mlp(dropout=0.2)
        train(augmented_resumed, x, y, config=config, device=device, checkpoint_dir=out_dir / "augment-killed",
              distributed=True)
        torch.save({
            "augment_whole": augmented.state_dict(),
            "augment_resumed": augmented_resumed.state_dict(),
            "natural_weights": model.state_dict(),
            "natural_history": natural.history,
            "natural_best_epoch": natural.best_epoch,
            "per_example": method.per_example,
            "mma_whole": whole.state_dict(),
            "mma_whole_eps": whole_eps,
            "mma_resumed": resumed.state_dict(),
            "mma_resumed_eps": mma.per_example["eps"],
        }, out_dir / f"rank{rank}.pt")
    finally:
        distributed.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(digits, digits_mlp, tmp_path_factory):
    x, y, vx, vy = digits
    data = (x[:NUM_TRAIN], y[:NUM_TRAIN], vx[:60], vy[:60])
    # One retry with a new port and folder where a rank dies by a signal: gloo aborts a rank (C++
    # "terminate called without an active exception"), seen once in a fresh-clone CI run and not again
    # in the same file rerun. An assertion failing in a rank raises ProcessRaisedException, not this,
    # and is never retried.
    for attempt in range(2):
        out = tmp_path_factory.mktemp("ddp")
        try:
            mp.spawn(_worker, args=(_free_port(), str(out), (*data, digits_mlp.state_dict())), nprocs=WORLD, join=True)
            break
        except mp.ProcessExitedException:
            if attempt:
                raise
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return out, data, ranks


# --- the sampler and helpers ----------------------------------------------------------------
@pytest.mark.parametrize("n", [3, 5, 44, 45])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_are_disjoint_contiguous_and_cover_the_batch(n, world):
    shards = [shard_of(n, r, world) for r in range(world)]
    assert shards[0][0] == 0 and shards[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(shards))
    sizes = [stop - start for start, stop in shards]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_batches_with_fewer_examples_than_ranks_are_refused():
    check_batches(NUM_TRAIN, BATCH, 2)
    with pytest.raises(RobustlabError, match="last batch of each epoch has 5 example"):
        check_batches(NUM_TRAIN, BATCH, 6)
    with pytest.raises(RobustlabError, match="fewer than the 4 ranks"):
        check_batches(3, 128, 4)


def test_rank_seeds_keep_rank_zero_and_differ_per_rank():
    assert rank_seed(1234, 0) == 1234
    seeds = {rank_seed(1234, r) for r in range(8)}
    assert len(seeds) == 8
    assert rank_seed(1234, 3) == rank_seed(1234, 3)


def test_single_process_refuses_a_checkpoint_of_a_two_process_run(digits, tmp_path):
    x, y, _, _ = digits
    config = TrainConfig(epochs=2, batch_size=BATCH, seed=1)
    with pytest.raises(_Stop):
        train(mlp(), x[:90], y[:90], config=config, checkpoint_dir=tmp_path, on_epoch_end=_stop_after_first_epoch)
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    state["distributed"] = {"world_size": 2, "ranks": []}
    torch.save(state, tmp_path / "last.ckpt")
    with pytest.raises(RobustlabError, match="written by a run on 2 process"):
        train(mlp(), x[:90], y[:90], config=config, checkpoint_dir=tmp_path)


# --- two Gloo ranks ---------------------------------------------------------------------------
def test_two_ranks_follow_the_single_process_run(two_ranks):
    _, (x, y, vx, vy), ranks = two_ranks
    config = natural_config()
    single = mlp()
    reference = train(single, x, y, config=config, val_x=vx, val_y=vy, method=CountingMethod(config))
    initial = mlp().state_dict()
    for rank in ranks:
        for name, value in single.state_dict().items():
            moved = (value - initial[name]).abs().max()
            gap = (rank["natural_weights"][name] - value).abs().max()
            assert moved > 1e-2, name  # the runs did train
            assert gap < 1e-5, (name, float(gap), float(moved))
    for name in single.state_dict():
        assert torch.equal(ranks[0]["natural_weights"][name], ranks[1]["natural_weights"][name])
    assert ranks[0]["natural_best_epoch"] == reference.best_epoch
    for rank in ranks:
        for got, want in zip(rank["natural_history"], reference.history):
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_robust_acc", "lr"):
                assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key


def test_rank_zero_alone_writes_checkpoints_and_metrics(two_ranks):
    out, _, ranks = two_ranks
    assert not (out / "natural-rank1").exists()
    folder = out / "natural-rank0"
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt", "metrics.jsonl"]
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    last = load_checkpoint(folder / "last.ckpt")
    assert last["distributed"]["world_size"] == WORLD and len(last["distributed"]["ranks"]) == WORLD
    for name, value in last["model"].items():
        assert torch.equal(value, ranks[0]["natural_weights"][name])
    # rank 0's checkpoint holds every example's state, not only rank 0's shards
    assert torch.equal(last["method"]["per_example"]["visits"], torch.full((NUM_TRAIN,), 2))


def test_per_example_state_is_complete_and_identical_on_every_rank(two_ranks):
    _, (_, y, _, _), ranks = two_ranks
    for rank in ranks:
        table = rank["per_example"]
        assert torch.equal(table["visits"], torch.full((NUM_TRAIN,), 2))
        assert torch.equal(table["label"][:, 0], y.float())
        assert torch.equal(table["label"][:, 1], torch.full((NUM_TRAIN,), 2.0))
    eps = [rank["mma_resumed_eps"] for rank in ranks]
    assert len(eps[0]) == NUM_TRAIN and torch.equal(eps[0], eps[1])
    assert (eps[0] > 0).float().mean() > 0.5  # margins were found and shared


def test_killed_and_resumed_two_rank_mma_run_is_exact(two_ranks):
    _, _, ranks = two_ranks
    for rank in ranks:
        for name, value in rank["mma_whole"].items():
            assert torch.equal(rank["mma_resumed"][name], value), name
    assert torch.equal(ranks[0]["mma_resumed_eps"], ranks[0]["mma_whole_eps"])


def test_killed_and_resumed_two_rank_augmented_run_is_exact(two_ranks):
    out, _, ranks = two_ranks
    for rank in ranks:
        for name, value in rank["augment_whole"].items():
            assert torch.equal(rank["augment_resumed"][name], value), name
    # Each rank draws its shard's crops and flips from a stream of its own, saved in the checkpoint.
    saved = load_checkpoint(out / "augment-whole" / "last.ckpt")["distributed"]["ranks"]
    assert not torch.equal(saved[0]["augment_generator"], saved[1]["augment_generator"])


@pytest.mark.slow
def test_torchrun_cli_matches_the_single_process_cli(tmp_path):
    from safetensors.torch import load_file

    from robustlab.cli import main

    args = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--batch-size", "64", "--limit", "400",
            "--robust-eval-samples", "0", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    "-m", "robustlab", *args, "--out", str(tmp_path / "two")], check=True, env=env, timeout=300)
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two, one = load_file(tmp_path / "two" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(two[name], one[name], atol=1e-5), name
    metrics = [json.loads((tmp_path / run / "checkpoints" / "metrics.jsonl").read_text()) for run in ("one", "two")]
    assert metrics[1]["val_acc"] == pytest.approx(metrics[0]["val_acc"], abs=1e-6)
    assert metrics[1]["train_loss"] == pytest.approx(metrics[0]["train_loss"], rel=1e-5)
