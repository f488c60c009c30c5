"""The process-group helpers of sharded evaluation, in one process: the shards by hand, the torchrun
environment, the backend and device per device type (CUDA's calls recorded, not made), and a real
one-rank Gloo group for rank, world, gather and close."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist

from robustlab.errors import RobustlabError
from robustlab.evaluation import distributed
from robustlab.evaluation.distributed import (
    all_gather,
    close,
    init_process_group,
    launched_distributed,
    rank_and_world,
    shard_range,
)


@pytest.mark.parametrize("n,batch_size,world,expected", [
    # 6 blocks over 4 ranks: the first 2 ranks take one more; the last block is partial
    (81, 16, 4, [(0, 32), (32, 64), (64, 80), (80, 81)]),
    (80, 16, 2, [(0, 48), (48, 80)]),  # 5 blocks: 3 + 2
    (96, 16, 3, [(0, 32), (32, 64), (64, 96)]),  # divides evenly
    (10, 16, 3, [(0, 10), (10, 10), (10, 10)]),  # fewer blocks than ranks: empty shards at n
    (33, 8, 1, [(0, 33)]),
    (0, 8, 2, [(0, 0), (0, 0)]),
])
def test_shards_are_whole_blocks_the_first_ranks_taking_the_extra(n, batch_size, world, expected):
    assert [shard_range(n, batch_size, r, world) for r in range(world)] == expected


@pytest.mark.parametrize("rank,world", [(-1, 2), (2, 2), (5, 3)])
def test_a_rank_outside_the_world_is_refused(rank, world):
    with pytest.raises(RobustlabError, match=rf"^rank must lie in \[0, {world}\), got {rank}$"):
        shard_range(10, 4, rank, world)


@pytest.mark.parametrize("value,launched", [(None, False), ("1", False), ("2", True), ("8", True)])
def test_launched_distributed_reads_torchruns_world_size(monkeypatch, value, launched):
    if value is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", value)
    assert launched_distributed() is launched


def _torchrun_env(monkeypatch, port: int | None = None, **extra: str) -> None:
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port or 29500), **extra}
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_init_names_every_missing_torchrun_variable(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RobustlabError, match=r"^a distributed run needs the environment variables "
                                             r"\['RANK', 'MASTER_ADDR', 'MASTER_PORT'\] \(start it with torchrun\)$"):
        init_process_group(torch.device("cpu"))


def _record_calls(monkeypatch, initialized: bool = False) -> list:
    calls: list = []
    monkeypatch.setattr(dist, "is_initialized", lambda: initialized)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.append(("init", kwargs)))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    return calls


@pytest.mark.parametrize("local_rank,index", [(None, 0), ("3", 3)])
def test_a_cuda_rank_takes_gpu_local_rank_and_nccl(monkeypatch, local_rank, index):
    _torchrun_env(monkeypatch, **({} if local_rank is None else {"LOCAL_RANK": local_rank}))
    calls = _record_calls(monkeypatch)
    device = init_process_group(torch.device("cuda"))
    assert device == torch.device("cuda", index)
    assert calls == [("set_device", torch.device("cuda", index)), ("init", {"backend": "nccl", "init_method": "env://"})]


def test_a_cpu_rank_keeps_its_device_and_uses_gloo(monkeypatch):
    _torchrun_env(monkeypatch, LOCAL_RANK="3")
    calls = _record_calls(monkeypatch)
    assert init_process_group(torch.device("cpu")) == torch.device("cpu")
    assert calls == [("init", {"backend": "gloo", "init_method": "env://"})]


def test_an_initialized_group_is_not_initialized_again(monkeypatch):
    _torchrun_env(monkeypatch)
    calls = _record_calls(monkeypatch, initialized=True)
    assert init_process_group(torch.device("cpu")) == torch.device("cpu") and calls == []


def test_rank_world_and_gather_need_an_initialized_group(monkeypatch):
    message = (r"^a distributed run needs an initialized torch.distributed process group "
               r"\(robustlab.evaluation.distributed.init_process_group under torchrun\)$")
    assert not dist.is_initialized()
    with pytest.raises(RobustlabError, match=message):
        rank_and_world()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "is_available", lambda: False)
    with pytest.raises(RobustlabError, match=message):
        rank_and_world()
    close()  # "initialized" but not available: nothing to destroy (destroying would raise)


def test_a_one_rank_gloo_group_from_init_to_close(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _torchrun_env(monkeypatch, port)
    assert not dist.is_initialized()
    try:
        assert init_process_group(torch.device("cpu")) == torch.device("cpu")
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert init_process_group(torch.device("cpu")) == torch.device("cpu")  # joined already: a no-op
        assert rank_and_world() == (0, 1)
        assert all_gather({"rank": 0, "rows": [1, 2]}) == [{"rank": 0, "rows": [1, 2]}]
    finally:
        close()
    assert not dist.is_initialized()
    close()  # not in a group: nothing to leave


def test_all_gather_returns_one_object_per_rank_in_rank_order(monkeypatch):
    def fake_all_gather_object(out, obj):
        assert out == [None, None, None]
        out[:] = [f"rank{r}:{obj}" for r in range(len(out))]

    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 3)
    monkeypatch.setattr(distributed.dist, "all_gather_object", fake_all_gather_object)
    assert all_gather("x") == ["rank0:x", "rank1:x", "rank2:x"]
