"""Data augmentation of the training batches (TrainConfig.augment, robustlab.training.augment):
crop-flip against an independent construction, its place in the loop (before the method's
make_inputs, labels untouched), reproducibility, exact resume, and that it is off by default."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from robustlab.errors import RobustlabError
from robustlab.training import METHODS, TrainConfig, load_checkpoint, train
from robustlab.training.augment import AUGMENTATIONS, CROP_PADDING, crop_flip
from robustlab.training.checkpoint import check_resumable

pytestmark = pytest.mark.usefixtures("single_thread")

SHIFTS = range(-CROP_PADDING, CROP_PADDING + 1)


def shifted(image: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """``image`` [C, H, W] with ``out[r, c] = image[r + dy, c + dx]`` (0 outside), then mirrored
    left-right if ``flip``: a crop of the zero-padded image, built by slicing."""
    _, height, width = image.shape
    out = torch.zeros_like(image)
    r0, r1 = max(0, -dy), min(height, height - dy)
    c0, c1 = max(0, -dx), min(width, width - dx)
    if r0 < r1 and c0 < c1:
        out[:, r0:r1, c0:c1] = image[:, r0 + dy : r1 + dy, c0 + dx : c1 + dx]
    return out.flip(-1) if flip else out


def identify(original: torch.Tensor, augmented: torch.Tensor) -> list[tuple[int, int, bool]]:
    """Every (dy, dx, flip) of crop-flip's range that turns ``original`` into ``augmented``."""
    return [(dy, dx, flip) for dy in SHIFTS for dx in SHIFTS for flip in (False, True)
            if torch.equal(shifted(original, dy, dx, flip), augmented)]


def test_crop_flip_is_a_crop_of_the_zero_padded_image_flipped_half_the_time():
    n = 300
    # Strictly positive pixels, so a zero in the output can only be padding; H != W catches swapped axes.
    x = 0.1 + 0.9 * torch.rand(n, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    out = crop_flip(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    draws = []
    for original, augmented in zip(x, out):
        matches = identify(original, augmented)
        assert len(matches) == 1, matches  # exactly one shift and flip explains it
        draws.append(matches[0])
    rows, cols, flips = zip(*draws)
    assert set(rows) == set(SHIFTS) and set(cols) == set(SHIFTS)  # offsets cover -4..4 and no more
    assert abs(sum(flips) / n - 0.5) < 0.1  # 4 standard deviations of a fair coin at n = 300
    # The zero padding shows where the image was shifted: a row/column of zeros per pixel of shift.
    for image, (dy, dx, _) in zip(out, draws):
        zero_rows = (image == 0).all(dim=0).all(dim=1)
        assert int(zero_rows.sum()) == abs(dy)
        assert bool(zero_rows[:-dy].all() if dy < 0 else zero_rows[image.shape[1] - dy:].all()) or dy == 0
        zero_cols = (image == 0).all(dim=0).all(dim=0)
        assert int(zero_cols.sum()) == abs(dx)
    assert ((out == 0).flatten(1).any(dim=1)).float().mean() > 0.5  # most examples show padding


def test_crop_flip_is_reproducible_from_its_generator():
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    first = crop_flip(x, torch.Generator().manual_seed(5))
    assert torch.equal(first, crop_flip(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, crop_flip(x, torch.Generator().manual_seed(6)))
    assert AUGMENTATIONS.lookup("crop-flip") is crop_flip


def mlp(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))


def config(**kwargs) -> TrainConfig:
    settings = {"epochs": 2, "batch_size": 32, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0,
                "schedule": "constant", "seed": 7, "method": "pgd", "threat": {"norm": "Linf", "eps": 0.1},
                "method_options": {"steps": 2}, "robust_eval_samples": 0, "augment": "crop-flip"}
    return TrainConfig(**{**settings, **kwargs})


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_method_attacks_the_augmented_batch_with_its_labels(digits):
    """make_inputs sees each example of the batch cropped and flipped from the training image at
    its index, with that image's label; the PGD inputs stay within eps of the augmented images."""
    x, y = digits[0][:96], digits[1][:96]
    cfg = config()
    method = METHODS["pgd"](cfg)
    make_inputs, seen = method.make_inputs, []

    def recording(model, batch):
        x_train = make_inputs(model, batch)
        seen.append((batch.x.clone(), batch.y.clone(), batch.index.clone(), x_train.detach().clone()))
        return x_train

    method.make_inputs = recording
    train(mlp(), x, y, config=cfg, method=method)
    assert len(seen) == 2 * math.ceil(96 / 32)
    changed = 0
    for batch_x, batch_y, index, x_train in seen:
        assert torch.equal(batch_y, y[index])  # labels unchanged, and still those of the examples
        for original, augmented in zip(x[index], batch_x):
            assert identify(original, augmented), "a training input is not a crop-flip of its image"
        changed += int((batch_x != x[index]).flatten(1).any(dim=1).sum())
        assert float((x_train - batch_x).abs().max()) <= 0.1 + 1e-6  # attacked around the augmented image
    assert changed > 0.8 * 2 * 96  # augmentation happened (1/162 of draws are the identity)


def run(data, *, checkpoint_dir=None, on_epoch_end=None, **kwargs) -> dict[str, torch.Tensor]:
    """The weights of a short run (``config(**kwargs)``) on ``data`` from a fixed MLP with Dropout."""
    model = mlp()
    train(model, *data, config=config(**kwargs), checkpoint_dir=checkpoint_dir, on_epoch_end=on_epoch_end)
    return weights(model)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def data(digits):
    return digits[0][:96], digits[1][:96]


def test_augmented_runs_are_reproducible_from_the_seed_and_leave_the_global_rng_alone(data):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = run(data)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(456)
    assert_same(first, run(data))
    plain, reseeded = run(data, augment=None), run(data, seed=8)
    for other in (plain, reseeded):
        assert any(not torch.equal(first[k], other[k]) for k in first)


class Stop(Exception):
    pass


def stop_after_first_epoch(record: dict) -> None:
    if record["epoch"] == 1:
        raise Stop


def test_a_killed_and_resumed_augmented_run_ends_with_the_uninterrupted_weights(data, tmp_path):
    whole = run(data, checkpoint_dir=tmp_path / "whole")
    with pytest.raises(Stop):
        run(data, checkpoint_dir=tmp_path / "killed", on_epoch_end=stop_after_first_epoch)
    saved = load_checkpoint(tmp_path / "killed" / "last.ckpt")
    assert saved["config"]["augment"] == "crop-flip" and "augment_generator" in saved
    assert_same(whole, run(data, checkpoint_dir=tmp_path / "killed"))
    # Resuming it without augmentation (or a plain run with it) is a different run, refused.
    with pytest.raises(RobustlabError, match="augment: checkpoint has 'crop-flip', now None"):
        run(data, checkpoint_dir=tmp_path / "killed", augment=None)


def test_augmentation_is_off_by_default_and_leaves_plain_runs_as_they_were(data, tmp_path):
    """Without augmentation the config, the checkpoint and the derived seeds are exactly those of a
    robustlab without it (measured: the weights of short natural, PGD and TRADES runs were
    bitwise unchanged by its introduction)."""
    from robustlab.training.loop import _derive_seeds

    assert TrainConfig().augment is None
    with pytest.raises(Stop):
        run(data, augment=None, checkpoint_dir=tmp_path, on_epoch_end=stop_after_first_epoch)
    saved = load_checkpoint(tmp_path / "last.ckpt")
    assert "augment" not in saved["config"] and "augment_generator" not in saved
    old = torch.randint(0, 2**62, (3,), generator=torch.Generator().manual_seed(7)).tolist()
    assert list(_derive_seeds(7)[:3]) == old  # the seeds of shuffling, the global RNG and the method


def test_checkpoints_without_the_field_resume_when_it_holds_its_default(tmp_path):
    plain = TrainConfig(epochs=3, seed=2)
    stored = plain.to_dict()
    assert "augment" not in stored  # as in every checkpoint and card written before augmentation
    check_resumable(stored, plain, tmp_path)
    check_resumable({**stored, "augment": None}, plain, tmp_path)
    with pytest.raises(RobustlabError, match="augment: checkpoint has None, now 'crop-flip'"):
        check_resumable(stored, TrainConfig(epochs=3, seed=2, augment="crop-flip"), tmp_path)
    with pytest.raises(RobustlabError, match="epochs: checkpoint has 3, now 4"):
        check_resumable(stored, TrainConfig(epochs=4, seed=2), tmp_path)
    with pytest.raises(RobustlabError, match=r"jitter: a setting this robustlab does not know \(checkpoint has 1\)"):
        check_resumable({**stored, "jitter": 1}, plain, tmp_path)


def test_config_round_trips_through_to_dict_json_and_from_dict():
    for cfg in (TrainConfig(), config(), config(schedule="step", milestones=(0.3, 0.8), augment=None,
                                               threat={"norm": "L2", "eps": 0.5, "bounds": (-1.0, 1.0)})):
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg
        assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert TrainConfig.from_dict({"epochs": 3}) == TrainConfig(epochs=3)
    with pytest.raises(RobustlabError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"epochs": 3, "augmentation": "crop-flip"})


@pytest.mark.parametrize("value", ["crop", "", "none", ["crop-flip"], 1])
def test_unknown_augmentations_are_refused(value):
    with pytest.raises(RobustlabError, match=r"TrainConfig.augment must be one of \['crop-flip'\] or None"):
        TrainConfig(augment=value)


def test_inputs_that_cannot_be_augmented_are_refused(data, tmp_path):
    x, y = data
    with pytest.raises(RobustlabError, match=r"augments images \[N, C, H, W\]; the training inputs have shape \(96, 64\)"):
        train(mlp(), x.flatten(1), y, config=config(), checkpoint_dir=tmp_path / "flat")
    shifted_box = {"norm": "Linf", "eps": 0.1, "bounds": (0.5, 1.5)}  # zero padding would leave it
    with pytest.raises(RobustlabError, match="pads with zeros, which lie outside"):
        train(mlp(), x + 0.5, y, config=config(threat=shifted_box), checkpoint_dir=tmp_path / "box")
    assert not (tmp_path / "flat").exists() and not (tmp_path / "box").exists()


def test_the_cli_takes_augment_and_the_cifar10_recipes_use_it_in_channels_last(tmp_path):
    from robustlab import zoo
    from robustlab.cli import build_parser
    from robustlab.cli.train import train_config, train_settings

    def parsed(*extra: str) -> TrainConfig:
        return train_config(train_settings(build_parser().parse_args(
            ["train", "--dataset", "mnist", "--model", "mlp", "--out", str(tmp_path), *extra])))

    assert parsed().augment is None
    assert parsed("--augment", "crop-flip").augment == "crop-flip"
    with pytest.raises(RobustlabError, match="argument --augment: invalid choice: 'crop' \\(choose from 'crop-flip'\\)"):
        parsed("--augment", "crop")
    for name in ("cifar10-natural", "cifar10-pgd", "cifar10-trades"):
        settings = train_settings(build_parser().parse_args(["train", "--config", str(zoo.recipe_path(name)),
                                                             "--out", str(tmp_path)]))
        assert train_config(settings).augment == "crop-flip", name
        assert train_config(settings).channels_last, name  # 21% faster on CPU (docs/zoo.md)
