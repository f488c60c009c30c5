"""The command line as a package (issue 19): `robustlab train`'s options are the TrainConfig
fields, with the dataclass's defaults; options that do not apply are errors, not ignored."""

import dataclasses
import subprocess
import sys

import pytest

from robustlab.cli import build_parser, main
from robustlab.cli.train import SET_OTHERWISE, TrainRun, read_run_file, train_config, train_settings
from robustlab.errors import RobustlabError
from robustlab.training import METHODS, TrainConfig

REQUIRED = ["--dataset", "digits", "--model", "mlp", "--out", "unused"]


def _train_actions():
    commands = build_parser()._subparsers._group_actions[0].choices
    return {a.dest: a for a in commands["train"]._actions}


def _config(*argv):
    return train_config(train_settings(build_parser().parse_args(["train", *REQUIRED, *argv])))


def test_every_train_config_field_is_an_option_with_the_dataclass_default():
    actions = _train_actions()
    for f in dataclasses.fields(TrainConfig):
        if f.name in SET_OTHERWISE:
            continue
        action = actions[f.name]
        assert action.option_strings == ["--" + f.name.replace("_", "-")], f.name
        assert action.default is None, f.name  # left unset, so that a --config file can fill it in
        if f.default is None:  # an optional setting (augment): off unless given
            assert action.help.endswith("(none by default)" + (f": {', '.join(sorted(f.metadata['choices']))}"
                                                                 if "choices" in f.metadata else "")), f.name
        elif f.type not in ("bool", bool):
            default = " ".join(f"{v:g}" for v in f.default) if isinstance(f.default, tuple) else \
                f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
            assert action.help.endswith(f"default {default}"), (f.name, action.help)
        choices = f.metadata.get("choices")
        if choices is not None:
            assert sorted(action.choices) == sorted(choices), f.name
            assert all(name in action.help for name in choices), f.name
    # The other two: method options by --option, the threat model by --norm and --eps.
    assert {"option", "norm", "eps"} <= set(actions)
    # Without options, the configuration is the dataclass's own.
    assert _config() == TrainConfig()


def test_every_train_config_field_is_set_from_its_option():
    config = _config("--epochs", "3", "--batch-size", "32", "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.5",
                     "--weight-decay", "0", "--nesterov", "--schedule", "step", "--milestones", "0.3", "0.6",
                     "--gamma", "0.5", "--seed", "7", "--method", "pgd", "--option", "steps=3", "--norm", "L2",
                     "--eps", "0.5", "--eps-warmup-epochs", "1", "--bn-mode", "train", "--robust-eval-samples", "0",
                     "--robust-eval-steps", "4", "--mixed-precision", "--augment", "crop-flip", "--channels-last")
    assert config == TrainConfig(epochs=3, batch_size=32, optimizer="sgd", lr=0.05, momentum=0.5, weight_decay=0.0,
                                 nesterov=True, schedule="step", milestones=(0.3, 0.6), gamma=0.5, seed=7,
                                 method="pgd", method_options={"steps": 3}, threat={"norm": "L2", "eps": 0.5},
                                 eps_warmup_epochs=1.0, bn_mode="train", robust_eval_samples=0,
                                 robust_eval_steps=4, mixed_precision=True, augment="crop-flip", channels_last=True)
    # Every TrainConfig field was given a value other than its default above.
    changed = {f.name for f in dataclasses.fields(TrainConfig)
               if getattr(config, f.name) != getattr(TrainConfig(), f.name)}
    assert changed == {f.name for f in dataclasses.fields(TrainConfig)} - {"optimizer"}


def test_run_file_takes_every_setting_by_name_and_the_command_line_wins(tmp_path):
    run_file = tmp_path / "run.toml"
    run_file.write_text('dataset = "digits"\nmodel = "mlp"\nschedule = "step"\nmilestones = [0.25, 0.5]\n'
                        'gamma = 0.2\nnesterov = true\nval_fraction = 0.2\nmethod = "pgd"\neps = 0.1\n[options]\nsteps = 2\n')
    assert read_run_file(str(run_file))["milestones"] == [0.25, 0.5]
    settings = train_settings(build_parser().parse_args(["train", "--config", str(run_file), "--out", "o",
                                                         "--gamma", "0.5"]))
    config = train_config(settings)
    assert config.milestones == (0.25, 0.5) and config.gamma == 0.5 and config.nesterov
    assert settings["val_fraction"] == 0.2 and settings["options"] == {"steps": 2}
    # Every TrainRun field and every TrainConfig field with an option of its own is a valid key.
    keys = {f.name for f in dataclasses.fields(TrainRun)} | {
        f.name for f in dataclasses.fields(TrainConfig) if f.name not in SET_OTHERWISE}
    run_file.write_text("".join(f"{key} = 1\n" for key in sorted(keys)) + "threat = 1\n")
    with pytest.raises(RobustlabError, match=r"unknown setting\(s\) threat in"):
        read_run_file(str(run_file))


def test_train_help_lists_every_registered_method():
    actions = _train_actions()
    assert all(name in actions["method"].help for name in METHODS)
    assert sorted(actions["method"].choices) == METHODS.names()


def test_eps_in_minimum_norm_mode_is_refused_before_anything_is_loaded(tmp_path, capsys):
    code = main(["evaluate", "--model", str(tmp_path / "no-such-model"), "--mode", "minimum-norm", "--attack", "ddn",
                 "--eps", "0.5", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "--eps does not apply to --mode minimum-norm" in err and "no-such-model" not in err
    assert not (tmp_path / "out").exists()


def test_the_entry_points_run_the_package():
    out = subprocess.run([sys.executable, "-m", "robustlab", "--help"], capture_output=True, text=True, check=True)
    assert "Commands: datasets, train, attack, evaluate" in " ".join(out.stdout.split())


def test_defense_help_names_the_registered_defenses():
    from robustlab.models.preprocessing import DEFENSES

    commands = build_parser()._subparsers._group_actions[0].choices
    actions = {a.dest: " ".join(a.help.split()) for a in commands["evaluate"]._actions if a.help}
    assert ", ".join(DEFENSES.names()) in actions["defense"]
    masking = [name for name in DEFENSES.names() if not DEFENSES[name].differentiable]
    random = [name for name in DEFENSES.names() if DEFENSES[name].stochastic]
    assert "jpeg" in masking and "resize-pad" in random
    assert f"({', '.join(masking)})" in actions["bpda"] and f"({', '.join(random)}," in actions["eot"]
