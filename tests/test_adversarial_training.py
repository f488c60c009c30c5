"""Adversarial training: FGSM, fast FGSM, free, PGD and TRADES in the training loop; threat,
eps warm-up, BatchNorm mode, robust validation, exact resume and the ``train`` command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from robustlab.attacks import PGD
from robustlab.cli import main
from robustlab.errors import RobustlabError
from robustlab.threat import threat_model
from robustlab.training import METHODS, Batch, TrainConfig, load_checkpoint, train
from robustlab.training.adversarial import ascend
from robustlab.training.trades import TradesTraining

pytestmark = pytest.mark.usefixtures("single_thread")

EPS = 0.15
LINF = {"norm": "Linf", "eps": EPS}
# Cheap settings per method: few inner steps, and free with 2 replays so 4 epochs = 2 passes.
CHEAP = {
    "fgsm": {},
    "fast-fgsm": {},
    "free": {"replays": 2},
    "pgd": {"steps": 3},
    "trades": {"steps": 3, "beta": 3.0},
}


def make_mlp(*, seed: int = 0, batchnorm: bool = False, hidden: int = 64) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = [nn.Flatten(), nn.Linear(64, hidden)]
        if batchnorm:
            layers += [nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.2)]
        else:
            layers += [nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(hidden, 10))


def config(method: str, epochs: int = 4, **kwargs) -> TrainConfig:
    values = dict(epochs=epochs, batch_size=50, optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant",
                  method=method, method_options=CHEAP.get(method, {}), threat=LINF)
    return TrainConfig(**{**values, **kwargs})


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = EPS) -> float:
    result = PGD(steps=20)(model, x, y, threat=threat_model("Linf", eps), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean = model(x).argmax(dim=1) == y
    return float((clean & ~result.success).float().mean())


class Stop(Exception):
    pass


def stop_after(epoch: int):
    def callback(record):
        if record["epoch"] == epoch:
            raise Stop

    return callback


# --- the inner maximizations -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fgsm", "fast-fgsm", "pgd", "trades"])
def test_inner_maximization_stays_in_the_threat_set_and_raises_the_loss(digits, digits_mlp, method):
    x, y = digits[2][:100], digits[3][:100]
    threat = threat_model("Linf", EPS)
    built = METHODS[method](config(method))
    batch = Batch(x, y, torch.arange(100), threat=threat)
    x_adv = built.make_inputs(digits_mlp, batch)
    assert x_adv.shape == x.shape and bool(threat.contains(x, x_adv).all())
    assert float(threat.distance(x, x_adv).mean()) > 0.5 * EPS  # it moves, and far
    with torch.no_grad():
        clean, adv = digits_mlp(x), digits_mlp(x_adv)
    if method == "trades":
        kl = nn.functional.kl_div(adv.log_softmax(1), clean.softmax(1), reduction="batchmean")
        assert float(kl) > 0.1
    else:
        ce = nn.functional.cross_entropy
        assert float(ce(adv, y)) > 2 * float(ce(clean, y))
    assert all(p.grad is None for p in digits_mlp.parameters())  # input gradients only


def test_trades_under_autocast_takes_its_clean_logits_and_first_step_in_float32(digits, digits_mlp):
    x, y = digits[2][:50], digits[3][:50]
    threat = threat_model("Linf", EPS)
    batch = Batch(x, y, torch.arange(50), threat=threat)
    dtypes = []
    hook = digits_mlp[1].register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    plain = METHODS["trades"](config("trades")).make_inputs(digits_mlp, batch)
    assert dtypes == [torch.float32] * 4  # the clean logits and 3 steps
    dtypes.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = METHODS["trades"](config("trades")).make_inputs(digits_mlp, batch)
    hook.remove()
    # At the start the KL is nearly 0: the clean logits and the first step in float32, the rest bfloat16.
    assert dtypes == [torch.float32, torch.float32, torch.bfloat16, torch.bfloat16]
    assert bool(threat.contains(x, mixed).all())
    assert float((mixed == plain).float().mean()) > 0.9  # the same start (seeded); the steps mostly agree


def test_pgd_inner_maximization_is_as_strong_as_the_pgd_attack(digits, digits_mlp):
    x, y = digits[2][:200], digits[3][:200]
    threat = threat_model("Linf", 0.2)
    method = METHODS["pgd"](config("pgd", method_options={"steps": 10, "step_size": 0.05}))
    x_adv = method.make_inputs(digits_mlp, Batch(x, y, torch.arange(200), threat=threat))
    with torch.no_grad():
        ours = float((digits_mlp(x_adv).argmax(1) != y).float().mean())
    attack = PGD(steps=10, step_size=0.05)(digits_mlp, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    assert ours > 0.8 and ours >= attack.success_rate - 0.05


def test_ascend_on_l2_takes_normalized_steps_and_projects(digits, digits_mlp):
    x, y = 0.2 + 0.6 * digits[2][:20], digits[3][:20]  # away from the box, which would clip a step
    threat = threat_model("L2", 0.5)
    loss = lambda logits: nn.functional.cross_entropy(logits, y, reduction="none")
    one = ascend(digits_mlp, x, x, loss, threat=threat, steps=1, step_size=0.2)
    assert torch.allclose(threat.distance(x, one), torch.full((20,), 0.2), atol=1e-5)
    many = ascend(digits_mlp, x, x, loss, threat=threat, steps=10, step_size=0.2)
    assert bool(threat.contains(x, many).all()) and float(threat.distance(x, many).min()) > 0.45


def test_presets_and_defaults_of_the_inner_steps():
    pgd = lambda **o: METHODS["pgd"](config("pgd", method_options=o)).options
    assert pgd(preset="mnist").resolve(0.3, {"mnist": (40, 0.01)}, 7, 0.25) == (40, 0.01)
    from robustlab.training.adversarial import PGD_PRESETS

    assert pgd(preset="cifar10").resolve(8 / 255, PGD_PRESETS, 7, 0.25) == (7, 2 / 255)
    assert pgd(preset="mnist", steps=5).resolve(0.3, PGD_PRESETS, 7, 0.25) == (5, 0.01)
    assert pgd().resolve(8 / 255, PGD_PRESETS, 7, 0.25) == (7, pytest.approx(2 / 255))
    trades = TradesTraining(config("trades", method_options={})).options
    assert trades.beta == 6.0 and trades.resolve(0.031) == (10, pytest.approx(0.007))
    mnist = TradesTraining(config("trades", method_options={"preset": "mnist"})).options
    assert mnist.resolve(0.3) == (40, 0.01)


def test_trades_objective_is_ce_plus_beta_batchmean_kl_through_both_arguments(digits):
    x, y = digits[0][:32], digits[1][:32]
    model = make_mlp()
    method = TradesTraining(config("trades", method_options={"beta": 2.0}))
    x_adv = (x + 0.05).clamp(0, 1)
    out = method.loss(model, x_adv, Batch(x, y, torch.arange(32)))
    clean, adv = model(x), model(x_adv)
    kl = nn.functional.kl_div(adv.log_softmax(1), clean.softmax(1), reduction="sum") / 32
    expected = nn.functional.cross_entropy(clean, y) + 2.0 * kl
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    # f(x) is not detached: the KL term sends gradient through the clean branch too.
    xr = x.clone().requires_grad_(True)
    kl_term = method.loss(model, x_adv, Batch(xr, y, torch.arange(32))).loss - nn.functional.cross_entropy(model(xr), y)
    (grad_x,) = torch.autograd.grad(kl_term, xr)
    assert float(grad_x.abs().sum()) > 0


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_bn_mode_decides_whether_attack_forwards_update_batchnorm(digits, bn_mode):
    x, y = digits[0][:50], digits[1][:50]
    model = make_mlp(batchnorm=True).train()
    before = model[2].running_mean.clone()
    method = METHODS["pgd"](config("pgd", bn_mode=bn_mode))
    method.make_inputs(model, Batch(x, y, torch.arange(50), threat=threat_model("Linf", EPS)))
    assert model.training and all(m.training for m in model.modules())  # modes restored
    assert torch.equal(model[2].running_mean, before) == (bn_mode == "eval")


# --- training ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(CHEAP))
def test_each_method_trains_and_its_objective_decreases(digits, method):
    x, y, vx, vy = digits
    model = make_mlp()
    result = train(model, x[:600], y[:600], config=config(method, robust_eval_samples=100), val_x=vx, val_y=vy)
    history = result.history
    passes = 2 if method == "free" else 4
    assert [r["epoch"] for r in history] == list(range(1, passes + 1))
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert all(r["val_robust_acc"] is not None and 0 <= r["val_robust_acc"] <= r["val_acc"] for r in history)
    assert history[-1]["val_acc"] > 0.6


def test_free_replays_each_minibatch_and_counts_epochs_in_optimizer_steps(digits):
    x, y = digits[0][:200], digits[1][:200]
    steps = []

    class Recording(METHODS["free"]):
        def make_inputs(self, model, batch):
            steps.append((batch.step, batch.index))
            return super().make_inputs(model, batch)

    cfg = config("free", epochs=6, method_options={"replays": 3})
    method = Recording(cfg)
    result = train(make_mlp(), x, y, config=cfg, method=method)
    assert len(result.history) == 2  # 6 epochs / 3 replays
    assert [s for s, _ in steps] == list(range(6 * 4))  # 4 minibatches of 50 per pass
    assert all(torch.equal(steps[i][1], steps[i + 1][1]) for i in range(0, len(steps), 3) for i in (i, i + 1))
    assert method.delta.shape == (50, 1, 8, 8) and 0 < float(method.delta.abs().max()) <= EPS + 1e-6


def test_eps_warmup_ramps_linearly_per_step(digits):
    x, y = digits[0][:100], digits[1][:100]  # 2 steps per epoch
    eps = []

    class Recording(METHODS["pgd"]):
        def make_inputs(self, model, batch):
            eps.append(batch.threat.eps)
            return super().make_inputs(model, batch)

    cfg = config("pgd", epochs=3, eps_warmup_epochs=2)
    train(make_mlp(), x, y, config=cfg, method=Recording(cfg))
    assert eps == pytest.approx([EPS / 4, EPS / 2, 3 * EPS / 4, EPS, EPS, EPS])


def test_pgd_training_makes_the_model_more_robust(digits):
    x, y, vx, vy = digits
    common = dict(epochs=10, lr=3e-3, method_options={"steps": 5, "step_size": EPS / 4}, robust_eval_samples=0)
    natural, robust = make_mlp(hidden=128), make_mlp(hidden=128)
    train(natural, x, y, config=config("natural", **{**common, "method_options": {}}))
    train(robust, x, y, config=config("pgd", **common))
    clean_natural = float((natural(vx).argmax(1) == vy).float().mean())
    clean_robust = float((robust(vx).argmax(1) == vy).float().mean())
    natural_robust_acc, pgd_robust_acc = robust_accuracy(natural, vx, vy), robust_accuracy(robust, vx, vy)
    assert clean_natural > 0.9 and clean_robust > 0.8
    assert natural_robust_acc < 0.3
    assert pgd_robust_acc > natural_robust_acc + 0.3


def test_best_checkpoint_is_chosen_by_robust_validation_accuracy(digits, tmp_path):
    x, y, vx, vy = digits
    result = train(make_mlp(), x[:400], y[:400], config=config("fast-fgsm", robust_eval_samples=150),
                   val_x=vx, val_y=vy, checkpoint_dir=tmp_path)
    robust = [r["val_robust_acc"] for r in result.history]
    assert result.best_epoch == robust.index(max(robust)) + 1 and result.best_val_robust_acc == max(robust)
    assert result.best_val_acc == result.history[result.best_epoch - 1]["val_acc"]
    best = load_checkpoint(tmp_path / "best.ckpt")
    assert best["epoch"] == result.best_epoch and best["val_robust_acc"] == max(robust)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_robust_acc"] for r in lines] == robust


@pytest.mark.parametrize("method", ["pgd", "free", "trades"])
def test_kill_and_resume_gives_bitwise_identical_weights(digits, tmp_path, method):
    x, y, vx, vy = digits
    x, y = x[:200], y[:200]
    cfg = config(method, epochs=4, eps_warmup_epochs=1.5, bn_mode="train" if method == "pgd" else "eval",
                 robust_eval_samples=50)
    whole = make_mlp(batchnorm=True)
    full = train(whole, x, y, config=cfg, val_x=vx, val_y=vy)
    with pytest.raises(Stop):
        train(make_mlp(batchnorm=True), x, y, config=cfg, val_x=vx, val_y=vy, checkpoint_dir=tmp_path,
              on_epoch_end=stop_after(1))
    state = load_checkpoint(tmp_path / "last.ckpt")
    assert state["config"]["threat"]["eps"] == EPS and state["method"]  # generator / delta are saved
    resumed = make_mlp(seed=7, batchnorm=True)
    result = train(resumed, x, y, config=cfg, val_x=vx, val_y=vy, checkpoint_dir=tmp_path)
    for (key, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(result.history) == strip(full.history)


def test_resume_with_other_threat_or_options_is_refused(digits, tmp_path):
    x, y = digits[0][:100], digits[1][:100]
    with pytest.raises(Stop):
        train(make_mlp(), x, y, config=config("pgd", epochs=2), checkpoint_dir=tmp_path, on_epoch_end=stop_after(1))
    with pytest.raises(RobustlabError, match="threat"):
        train(make_mlp(), x, y, config=config("pgd", epochs=2, threat={"norm": "Linf", "eps": 0.2}),
              checkpoint_dir=tmp_path)
    with pytest.raises(RobustlabError, match="method_options"):
        train(make_mlp(), x, y, config=config("pgd", epochs=2, method_options={"steps": 4}), checkpoint_dir=tmp_path)


def test_mixed_precision_on_cpu_runs_the_steps_in_bfloat16_and_keeps_the_weights_float32(digits):
    x, y = digits[0][:200], digits[1][:200]
    a, b = make_mlp(), make_mlp()
    train(a, x, y, config=config("fast-fgsm", epochs=2))
    dtypes = []
    b[1].register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    train(b, x, y, config=config("fast-fgsm", epochs=2, mixed_precision=True))
    # After the loop's float32 check of the model's outputs on one batch, every forward pass of
    # training runs in bfloat16: the attack's and the loss's, 2 per step, 4 steps per epoch.
    assert dtypes == [torch.float32] + [torch.bfloat16] * 16
    assert all(p.dtype == torch.float32 for p in b.parameters())
    # Other rounding, so other weights; the same training all the same.
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    b.eval()
    with torch.no_grad():
        clean = [(model(x).argmax(1) == y).float().mean().item() for model in (a.eval(), b)]
    assert clean[1] > 0.4 and abs(clean[0] - clean[1]) < 0.1, clean  # chance: 0.1


# --- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="madry"), "method must be one of"),
    (dict(method="pgd"), "needs a threat model"),
    (dict(method="pgd", threat=LINF, method_options={"stepsize": 0.1}),
     r"unknown option\(s\) 'stepsize' for training method 'pgd'; valid options: steps, step_size, preset"),
    (dict(method="trades", threat=LINF, method_options={"beta": -1}), "beta"),
    (dict(method="pgd", threat=LINF, method_options={"preset": "imagenet"}), "preset"),
    (dict(method="free", threat=LINF, epochs=10), "multiple of 8"),
    (dict(method="natural", method_options={"steps": 3}), "valid options: none"),
    (dict(threat={"norm": "Linf", "eps": -0.1}), "eps must be a finite number > 0"),
    (dict(threat={"norm": "Linf", "eps": math.inf}), "eps must be a finite number > 0"),
    (dict(threat={"norm": "L3", "eps": 0.1}), "norm must be one of"),
    (dict(threat={"eps": 0.1}), "must be a ThreatModel or a dict"),
    (dict(threat=LINF, epochs=4, eps_warmup_epochs=5), r"eps_warmup_epochs .* must lie in \[0, epochs=4\]"),
    (dict(threat=LINF, eps_warmup_epochs=-1), "eps_warmup_epochs"),
    (dict(eps_warmup_epochs=1), "needs a threat model"),
    (dict(bn_mode="batch"), "bn_mode must be one of"),
    (dict(robust_eval_steps=0), "robust_eval_steps"),
])
def test_bad_settings_give_clear_errors(kwargs, message):
    with pytest.raises(RobustlabError, match=message):
        TrainConfig(**kwargs)


def test_threat_model_object_is_stored_as_plain_data():
    cfg = TrainConfig(method="pgd", threat=threat_model("L2", 1.5, (-1.0, 1.0)))
    assert cfg.to_dict()["threat"] == {"norm": "L2", "eps": 1.5, "bounds": (-1.0, 1.0)}
    assert cfg.threat_model() == threat_model("L2", 1.5, (-1.0, 1.0))


def test_inputs_outside_the_threat_box_are_refused(digits):
    x, y = digits[0][:50], digits[1][:50]
    with pytest.raises(RobustlabError, match="outside the threat model's bounds"):
        train(make_mlp(), x * 2, y, config=config("pgd", epochs=1))


# --- the train command -----------------------------------------------------------------------------------


def test_train_command_with_config_file_and_overrides(tmp_path, capsys):
    (tmp_path / "run.toml").write_text(
        'dataset = "digits"\nmodel = "mlp"\nmodel_arg = "hidden=[32]"\nepochs = 3\nbatch_size = 64\n'
        'optimizer = "adam"\nlr = 0.003\nmethod = "pgd"\nnorm = "Linf"\neps = 0.1\nlimit = 400\n'
        'robust_eval_samples = 40\n[options]\nsteps = 2\nstep_size = 0.05\n'
    )
    out = tmp_path / "run"
    code = main(["train", "--config", str(tmp_path / "run.toml"), "--epochs", "2", "--option", "steps=3",
                 "--out", str(out), "--quiet"])
    assert code == 0
    card = json.loads((out / "model.json").read_text())
    cfg = card["training"]["config"]
    assert card["training"]["method"] == "pgd" and cfg["epochs"] == 2  # the command line wins
    assert cfg["method_options"] == {"steps": 3, "step_size": 0.05}  # merged per option
    assert cfg["threat"]["eps"] == 0.1 and cfg["optimizer"] == "adam"
    records = [json.loads(line) for line in (out / "checkpoints" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["val_robust_acc"] is not None for r in records)


@pytest.mark.parametrize("argv, message", [
    (["--method", "pgd", "--option", "stepz=3", "--eps", "0.1"], "unknown option"),
    (["--method", "pgd"], "needs a threat model"),
    (["--option", "steps"], "key=value"),
])
def test_train_command_reports_bad_settings(tmp_path, capsys, argv, message):
    code = main(["train", "--dataset", "digits", "--model", "mlp", "--out", str(tmp_path), "--quiet", *argv])
    assert code == 2 and message in capsys.readouterr().err


def test_train_command_rejects_unknown_config_keys(tmp_path, capsys):
    (tmp_path / "run.toml").write_text('dataset = "digits"\nmodel = "mlp"\nlearning_rate = 0.1\n')
    code = main(["train", "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path), "--quiet"])
    assert code == 2 and "learning_rate" in capsys.readouterr().err
