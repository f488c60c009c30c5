"""A result's provenance record, field by field: versions, hardware, seed, device, the GPU's name on
CUDA devices (the name query recorded, not made), the wall time rounded to the millisecond."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime

import pytest
import torch

import robustlab
from robustlab.evaluation.provenance import provenance


def test_every_field_of_a_cpu_record():
    before = datetime.now(UTC).replace(microsecond=0)
    info = provenance(seed=7, wall_time=12.34567)
    after = datetime.now(UTC)
    assert set(info) == {"robustlab", "torch", "python", "platform", "cpu_count", "torch_threads", "device", "seed",
                         "date", "wall_time_s"}
    assert info["robustlab"] == robustlab.__version__ and info["torch"] == torch.__version__
    assert info["python"] == sys.version.split()[0] == platform.python_version()
    assert info["platform"] == platform.platform() and info["cpu_count"] == os.cpu_count()
    assert info["torch_threads"] == torch.get_num_threads()
    assert (info["device"], info["seed"], info["wall_time_s"]) == ("cpu", 7, 12.346)
    assert before <= datetime.fromisoformat(info["date"]) <= after
    assert json.loads(json.dumps(info)) == info


def test_defaults_and_the_wall_time_only_when_given():
    info = provenance()
    assert info["seed"] is None and info["device"] == "cpu" and "wall_time_s" not in info and "gpu" not in info
    assert provenance(wall_time=0.0)["wall_time_s"] == 0.0  # zero seconds is a time, not a missing one
    assert provenance(wall_time=1.0004)["wall_time_s"] == 1.0
    assert provenance(device="meta")["device"] == "meta" and "gpu" not in provenance(device="meta")


@pytest.mark.parametrize("device,expected", [("cuda", "cuda"), ("cuda:1", "cuda:1"), (torch.device("cuda", 2), "cuda:2")])
def test_a_cuda_record_names_its_gpu(monkeypatch, device, expected):
    asked = []

    def name(d):
        asked.append(d)
        return "Test GPU 80GB"

    monkeypatch.setattr(torch.cuda, "get_device_name", name)
    info = provenance(device=device, seed=1)
    assert info["device"] == expected and info["gpu"] == "Test GPU 80GB"
    assert asked == [torch.device(expected)]
