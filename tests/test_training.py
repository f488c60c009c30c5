"""Tests of robustlab.training: learning, exact resume, checkpoints, schedules, validation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from robustlab.errors import RobustlabError
from robustlab.training import (
    METHODS,
    Batch,
    LossOutput,
    NaturalMethod,
    TrainConfig,
    build_optimizer,
    build_scheduler,
    load_checkpoint,
    train,
)
from robustlab.training import checkpoint as ckpt_module

FAST = dict(batch_size=64, lr=0.05, weight_decay=0.0)


@pytest.fixture(scope="module")
def digits():
    """sklearn's 8x8 digits as [N, 1, 8, 8] in [0, 1]; a fixed 1400/397 train/val split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


@pytest.fixture(scope="module")
def small(digits):
    """A 300-example subset for the tests that only need a few steps."""
    x, y, vx, vy = digits
    return x[:300], y[:300], vx[:100], vy[:100]


def make_mlp(*, dropout: bool = False, init_seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        layers = [nn.Flatten(), nn.Linear(64, 64)]
        if dropout:
            layers += [nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3)]
        else:
            layers += [nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(64, 10))


class Stop(Exception):
    """Raised from on_epoch_end to simulate a run killed after an epoch."""


def stop_after(epoch: int):
    def callback(record):
        if record["epoch"] == epoch:
            raise Stop

    return callback


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# --- learning ---------------------------------------------------------------------------


def test_natural_training_learns_digits(digits):
    x, y, vx, vy = digits
    model = make_mlp()
    config = TrainConfig(epochs=5, batch_size=64, lr=0.1, schedule="cosine", seed=1)
    result = train(model, x, y, config=config, val_x=vx, val_y=vy)

    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5]
    assert result.history[-1]["val_acc"] > 0.9
    assert result.best_val_acc == max(r["val_acc"] for r in result.history) > 0.9
    assert result.history[result.best_epoch - 1]["val_acc"] == result.best_val_acc
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert not model.training
    with torch.no_grad():
        accuracy = (model(vx).argmax(1) == vy).float().mean().item()
    assert accuracy == pytest.approx(result.history[-1]["val_acc"])


def test_adam_and_step_schedule_also_learn(digits):
    x, y, vx, vy = digits
    config = TrainConfig(epochs=3, batch_size=64, optimizer="adam", lr=3e-3, schedule="step")
    result = train(make_mlp(), x, y, config=config, val_x=vx, val_y=vy)
    assert result.history[-1]["val_acc"] > 0.85


# --- resume and reproducibility ---------------------------------------------------------


@pytest.mark.parametrize("dropout", [False, True], ids=["mlp", "mlp-bn-dropout"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_is_bitwise_exact(small, tmp_path, dropout, optimizer):
    x, y, vx, vy = small
    config = TrainConfig(
        epochs=4, batch_size=32, optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.05,
        schedule="onecycle", seed=3,
    )
    whole = make_mlp(dropout=dropout)
    full = train(whole, x, y, config=config, val_x=vx, val_y=vy, checkpoint_dir=tmp_path / "a")

    killed = make_mlp(dropout=dropout)
    with pytest.raises(Stop):
        train(killed, x, y, config=config, val_x=vx, val_y=vy,
              checkpoint_dir=tmp_path / "b", on_epoch_end=stop_after(2))
    assert load_checkpoint(tmp_path / "b" / "last.ckpt")["epoch"] == 2

    resumed = make_mlp(dropout=dropout, init_seed=99)  # fresh instance, different init
    seen = []
    result = train(resumed, x, y, config=config, val_x=vx, val_y=vy,
                   checkpoint_dir=tmp_path / "b", on_epoch_end=seen.append)

    assert [r["epoch"] for r in seen] == [3, 4]
    assert_same_weights(resumed, whole)
    drop_time = [{k: v for k, v in r.items() if k != "seconds"} for r in result.history]
    assert drop_time == [{k: v for k, v in r.items() if k != "seconds"} for r in full.history]
    assert (result.best_epoch, result.best_val_acc) == (full.best_epoch, full.best_val_acc)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def test_resume_of_finished_run_restores_weights_without_training(small, tmp_path):
    x, y, _, _ = small
    config = TrainConfig(epochs=2, **FAST)
    first = make_mlp()
    train(first, x, y, config=config, checkpoint_dir=tmp_path)
    again = make_mlp(init_seed=5)
    calls = []
    result = train(again, x, y, config=config, checkpoint_dir=tmp_path, on_epoch_end=calls.append)
    assert calls == [] and len(result.history) == 2
    assert_same_weights(again, first)


def test_same_seed_same_weights_and_global_rng_untouched(small):
    x, y, _, _ = small
    config = TrainConfig(epochs=2, seed=7, **FAST)
    before = torch.get_rng_state()
    first = make_mlp(dropout=True)
    train(first, x, y, config=config)
    assert torch.equal(torch.get_rng_state(), before)

    torch.rand(100)  # a different global state must not change the result
    second = make_mlp(dropout=True)
    train(second, x, y, config=config)
    assert_same_weights(first, second)

    third = make_mlp(dropout=True)
    train(third, x, y, config=TrainConfig(epochs=2, seed=8, **FAST))
    assert not torch.equal(third[-1].weight, first[-1].weight)


def test_resume_false_starts_over(small, tmp_path):
    x, y, _, _ = small
    train(make_mlp(), x, y, config=TrainConfig(epochs=1, **FAST), checkpoint_dir=tmp_path)
    fresh = make_mlp()
    result = train(fresh, x, y, config=TrainConfig(epochs=2, lr=0.01, batch_size=64),
                   checkpoint_dir=tmp_path, resume=False)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(lr=0.01), "lr"),
        (dict(epochs=3), "epochs"),
        (dict(batch_size=32), "batch_size"),
        (dict(optimizer="adam"), "optimizer"),
        (dict(schedule="constant"), "schedule"),
        (dict(seed=1), "seed"),
    ],
)
def test_resume_with_different_config_is_refused(small, tmp_path, change, field):
    x, y, _, _ = small
    base = dict(epochs=2, **FAST)
    with pytest.raises(Stop):
        train(make_mlp(), x, y, config=TrainConfig(**base), checkpoint_dir=tmp_path,
              on_epoch_end=stop_after(1))
    metrics = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(RobustlabError, match=f"different training configuration.*{field}"):
        train(make_mlp(), x, y, config=TrainConfig(**{**base, **change}), checkpoint_dir=tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == metrics  # nothing written is lost


def test_resume_with_other_model_or_data_is_refused(small, tmp_path):
    x, y, _, _ = small
    config = TrainConfig(epochs=2, **FAST)
    with pytest.raises(Stop):
        train(make_mlp(), x, y, config=config, checkpoint_dir=tmp_path, on_epoch_end=stop_after(1))
    with pytest.raises(RobustlabError, match="do not fit this model"):
        train(make_mlp(dropout=True), x, y, config=config, checkpoint_dir=tmp_path)
    with pytest.raises(RobustlabError, match="examples"):
        train(make_mlp(), x[:200], y[:200], config=config, checkpoint_dir=tmp_path)


# --- checkpoints and metrics ------------------------------------------------------------


def test_checkpoints_are_complete_atomic_and_load_weights_only(small, tmp_path):
    x, y, vx, vy = small
    config = TrainConfig(epochs=3, **FAST)
    model = make_mlp(dropout=True)
    result = train(model, x, y, config=config, val_x=vx, val_y=vy, checkpoint_dir=tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt", "metrics.jsonl"]
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "shuffle_generator", "global_rng",
                "epoch", "global_step", "history", "config", "method"):
        assert key in last, key
    assert last["epoch"] == 3 and last["global_step"] == 3 * math.ceil(len(x) / 64)
    assert last["config"] == config.to_dict()
    assert isinstance(last["shuffle_generator"], torch.Tensor)
    for key, value in model.state_dict().items():
        assert torch.equal(last["model"][key], value)

    best = torch.load(tmp_path / "best.ckpt", weights_only=True)
    assert best["epoch"] == result.best_epoch and best["val_acc"] == result.best_val_acc
    if result.best_epoch == 3:
        assert_same_weights_dict(best["model"], model.state_dict())


def assert_same_weights_dict(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_best_checkpoint_holds_the_best_epoch(small, tmp_path):
    x, y, vx, vy = small
    snapshots = {}
    model = make_mlp()

    def snapshot(record):
        snapshots[record["epoch"]] = {k: v.clone() for k, v in model.state_dict().items()}

    result = train(model, x, y, config=TrainConfig(epochs=3, **FAST), val_x=vx, val_y=vy,
                   checkpoint_dir=tmp_path, on_epoch_end=snapshot)
    best = load_checkpoint(tmp_path / "best.ckpt")
    assert_same_weights_dict(best["model"], snapshots[result.best_epoch])


def test_failed_checkpoint_write_keeps_previous_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    ckpt_module.save_checkpoint(path, {"epoch": 1})

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        ckpt_module.save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert load_checkpoint(path)["epoch"] == 1


def test_load_checkpoint_rejects_foreign_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(RobustlabError, match="not a robustlab training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(RobustlabError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.ckpt")


@pytest.mark.parametrize("with_val", [True, False])
def test_metrics_jsonl_has_one_json_line_per_epoch(small, tmp_path, with_val):
    x, y, vx, vy = small
    val = dict(val_x=vx, val_y=vy) if with_val else {}
    config = TrainConfig(epochs=3, **FAST)
    result = train(make_mlp(), x, y, config=config, checkpoint_dir=tmp_path, **val)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records == result.history
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for record in records:
        assert set(record) == {
            "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_robust_acc", "lr", "seconds"
        }
        assert record["val_robust_acc"] is None  # no threat model configured
        assert 0 <= record["train_acc"] <= 1
        assert (record["val_acc"] is None) == (not with_val)
    if not with_val:
        assert result.best_epoch == 3 and result.best_val_acc is None


# --- schedules --------------------------------------------------------------------------


def lrs(schedule: str, total: int = 100, **kwargs) -> list[float]:
    """The lr used at each of ``total`` iterations, plus the value after the last step."""
    config = TrainConfig(schedule=schedule, lr=0.2, **kwargs)
    optimizer = build_optimizer([nn.Parameter(torch.zeros(1))], config)
    scheduler = build_scheduler(optimizer, config, total)
    values = []
    for _ in range(total):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values + [optimizer.param_groups[0]["lr"]]


def test_constant_schedule():
    assert lrs("constant") == [0.2] * 101


def test_step_schedule():
    v = lrs("step", milestones=(0.5, 0.75), gamma=0.1)
    assert v[0] == v[49] == pytest.approx(0.2)
    assert v[50] == v[74] == pytest.approx(0.02)
    assert v[75] == v[100] == pytest.approx(0.002)


def test_cosine_schedule():
    v = lrs("cosine")
    assert v[0] == pytest.approx(0.2)
    assert v[50] == pytest.approx(0.1)
    assert v[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(v, v[1:]))


def test_onecycle_schedule():
    v = lrs("onecycle")
    assert v[0] == 0.0
    assert v[20] == pytest.approx(0.1)
    assert v[40] == pytest.approx(0.2) and max(v) == pytest.approx(0.2)
    assert v[70] == pytest.approx(0.1)
    assert v[100] == pytest.approx(0.0, abs=1e-12)


def test_schedule_is_stepped_per_iteration_in_train(small):
    x, y, _, _ = small  # 300 examples, batch 64: 5 iterations per epoch
    result = train(make_mlp(), x, y, config=TrainConfig(epochs=4, batch_size=64, lr=0.1))
    epoch_lrs = [r["lr"] for r in result.history]
    assert epoch_lrs[0] == pytest.approx(0.1)
    assert epoch_lrs[2] == pytest.approx(0.05)  # start of epoch 3 = halfway
    expected = 0.05 * (1 + math.cos(math.pi * 5 / 20))
    assert epoch_lrs[1] == pytest.approx(expected)


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-0.1), "lr must be > 0"),
        (dict(lr=0), "lr must be > 0"),
        (dict(lr=float("nan")), "lr must be a finite number"),
        (dict(optimizer="rmsprop"), "optimizer must be one of"),
        (dict(schedule="linear"), "schedule must be one of"),
        (dict(method="trades-ish"), "method must be one of"),
        (dict(epochs=0), "epochs must be >= 1"),
        (dict(epochs=2.5), "epochs must be an integer"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(momentum=1.0), "momentum"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(milestones=(0.75, 0.5)), "increasing"),
        (dict(milestones=(0.5, 1.5)), "strictly between 0 and 1"),
        (dict(gamma=0), "gamma"),
        (dict(seed=-1), "seed"),
        (dict(nesterov=True, momentum=0.0), "nesterov"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(RobustlabError, match=message):
        TrainConfig(**kwargs)


def test_config_normalizes_milestones():
    assert TrainConfig(milestones=[0.3, 0.6]).milestones == (0.3, 0.6)


def test_bad_inputs_are_reported(small):
    x, y, vx, vy = small
    config = TrainConfig(epochs=1, **FAST)
    cases = [
        (dict(train_x=x, train_y=y[:-1]), "must have shape"),
        (dict(train_x=x, train_y=y.float()), "integer class labels"),
        (dict(train_x=(x * 255).to(torch.uint8), train_y=y), "floating-point"),
        (dict(train_x=x[:0], train_y=y[:0]), "non-empty"),
        (dict(train_x=x, train_y=y, val_x=vx), "both val_x and val_y"),
        (dict(train_x=x, train_y=y + 10), "only 10 outputs"),
        (dict(train_x=x, train_y=-y - 1), "negative labels"),
        (dict(train_x=torch.full_like(x, float("nan")), train_y=y), "NaN"),
    ]
    for kwargs, message in cases:
        with pytest.raises(RobustlabError, match=message):
            train(make_mlp(), config=config, **kwargs)
    with pytest.raises(RobustlabError, match="TrainConfig"):
        train(make_mlp(), x, y, config={"epochs": 1})


# --- the plug points --------------------------------------------------------------------


def test_natural_method_is_identity_plus_cross_entropy(small):
    x, y, _, _ = small
    model, method = make_mlp(), NaturalMethod(TrainConfig())
    batch = Batch(x, y, torch.arange(len(x)))
    assert method.make_inputs(model, batch) is x and method.replays == 1
    loss, logits = method.loss(model, x, batch)
    assert torch.equal(logits, model(x))
    assert loss.item() == pytest.approx(nn.functional.cross_entropy(model(x), y).item())
    assert METHODS["natural"] is NaturalMethod


def test_a_registered_method_plugs_into_the_loop(small, monkeypatch):
    x, y, _, _ = small
    calls = {"inputs": 0, "loss": 0, "after": 0}
    seen = []

    class Shifted(NaturalMethod):
        def make_inputs(self, model, batch):
            assert model.training
            calls["inputs"] += 1
            # The dataset indices of the batch: the examples themselves, in the loop's order.
            assert torch.equal(x[batch.index], batch.x) and torch.equal(y[batch.index], batch.y)
            seen.append(batch.index)
            assert batch.step == len(seen) - 1 and batch.threat is None
            model(batch.x).sum().backward()  # leaves gradients behind; the loop must discard them
            return (batch.x + 0.1).clamp(0, 1)

        def loss(self, model, x_train, batch):
            calls["loss"] += 1
            assert not torch.equal(x_train, batch.x)
            return super().loss(model, x_train, batch)

        def after_step(self, model, x_train, batch):
            calls["after"] += 1

    monkeypatch.setitem(METHODS, "shifted", Shifted)
    result = train(make_mlp(), x, y, config=TrainConfig(epochs=2, method="shifted", **FAST))
    assert calls == {"inputs": 10, "loss": 10, "after": 10}
    assert len(result.history) == 2
    for epoch in (seen[:5], seen[5:]):  # every example exactly once per epoch
        assert torch.equal(torch.cat(epoch).sort().values, torch.arange(len(x)))


def test_nonscalar_or_nan_loss_is_reported(small, monkeypatch):
    x, y, _, _ = small

    class PerSample(NaturalMethod):
        def loss(self, model, x_train, batch):
            logits = model(x_train)
            return LossOutput(nn.functional.cross_entropy(logits, batch.y, reduction="none"), logits)

    class Diverging(NaturalMethod):
        def loss(self, model, x_train, batch):
            out = super().loss(model, x_train, batch)
            return LossOutput(out.loss * float("nan"), out.logits)

    monkeypatch.setitem(METHODS, "per-sample", PerSample)
    monkeypatch.setitem(METHODS, "diverging", Diverging)
    with pytest.raises(RobustlabError, match="must be a scalar"):
        train(make_mlp(), x, y, config=TrainConfig(epochs=1, method="per-sample", **FAST))
    with pytest.raises(RobustlabError, match="diverged"):
        train(make_mlp(), x, y, config=TrainConfig(epochs=1, method="diverging", **FAST))


def test_progress_bar_and_logging_never_print(small, capsys, caplog):
    x, y, _, _ = small
    with caplog.at_level("INFO", logger="robustlab.training"):
        train(make_mlp(), x, y, config=TrainConfig(epochs=2, **FAST), progress=True)
    assert capsys.readouterr().out == ""
    assert sum("epoch" in r.getMessage() for r in caplog.records) == 2


def _small_cnn() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 6 * 6, 10)).double()


def test_channels_last_trains_the_same_weights_in_the_channels_last_format(digits):
    x, y = digits[0][:256].double().repeat(1, 3, 1, 1), digits[1][:256]  # three channels: the formats differ
    settings = dict(epochs=2, seed=3, schedule="constant", **FAST)
    plain, fast = _small_cnn(), _small_cnn()
    seen: list[bool] = []

    def record(module, args):
        if module.training:
            seen.append(args[0].is_contiguous(memory_format=torch.channels_last)
                        and module.weight.is_contiguous(memory_format=torch.channels_last))

    fast[0].register_forward_pre_hook(record)
    train(plain, x, y, config=TrainConfig(**settings))
    train(fast, x, y, config=TrainConfig(channels_last=True, **settings))
    assert len(seen) == 2 * math.ceil(256 / 64) and all(seen)  # every training batch and the weights, channels-last
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=name)  # float64: only summation order differs
        assert b.is_contiguous(), name  # returned in the default format (safetensors needs it)


def test_channels_last_is_a_bool_for_images_and_absent_from_stored_configs_by_default(digits, tmp_path):
    assert "channels_last" not in TrainConfig().to_dict()  # checkpoints and cards written before it still match
    assert TrainConfig.from_dict(TrainConfig(channels_last=True).to_dict()).channels_last is True
    with pytest.raises(RobustlabError, match="TrainConfig.channels_last must be a bool, got 1"):
        TrainConfig(channels_last=1)
    model = nn.Sequential(nn.Linear(64, 10))
    with pytest.raises(RobustlabError, match=r"channels_last needs images \[N, C, H, W\], got train_x of shape "
                                             r"\(64, 64\)"):
        train(model, digits[0][:64].flatten(1), digits[1][:64], config=TrainConfig(channels_last=True),
              checkpoint_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
