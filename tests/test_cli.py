"""The command line, end to end on scikit-learn digits (no download)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image
from safetensors.torch import load_file

from robustlab.cli import main, parse_attack
from robustlab.errors import RobustlabError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["train", "--dataset", "digits", "--model", "mlp", "--model-arg", "hidden=[64]", "--epochs", "8",
                 "--batch-size", "64", "--lr", "0.1", "--quiet", "--out", str(out)])
    assert code == 0
    return out


def test_train_writes_model_card_and_checkpoints(trained):
    card = json.loads((trained / "model.json").read_text())
    assert card["architecture"] == "mlp" and card["dataset"] == "digits"
    assert card["arguments"]["hidden"] == [64]
    assert card["metrics"]["best_val_acc"] > 0.85
    assert (trained / "model.safetensors").exists()
    assert (trained / "checkpoints" / "last.ckpt").exists()
    assert len((trained / "checkpoints" / "metrics.jsonl").read_text().splitlines()) == 8


def test_attack_saves_adversarial_inputs_and_grid(trained, tmp_path, capsys):
    code = main(["attack", "--model", str(trained / "model"), "--attack", "pgd:steps=10,restarts=2", "--eps", "0.2",
                 "--limit", "60", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    saved = load_file(str(tmp_path / "adversarial.safetensors"))
    assert saved["x_adv"].shape == saved["x"].shape == (60, 1, 8, 8)
    assert (saved["x_adv"] - saved["x"]).abs().max() <= 0.2 + 1e-5
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["attack"]["restarts"] == 2 and summary["success_rate"] > 0.5
    assert summary["success_rate"] == pytest.approx(saved["success"].float().mean().item())
    width, height = Image.open(tmp_path / "grid.png").size
    assert width >= 3 * 96 and height >= 8 * 96  # 3 columns (clean, adversarial, perturbation), 8 rows


def test_evaluate_writes_json_and_report(trained, tmp_path, capsys):
    code = main(["evaluate", "--model", str(trained / "model"), "--attack", "fgsm", "--attack", "pgd:steps=10",
                 "--eps", "0.2", "--limit", "60", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "evaluation.json").read_text())
    assert len(data["samples"]) == 60 and set(data["attacks"]) == {"fgsm", "pgd"}
    assert data["model_card"]["architecture"] == "mlp"
    printed = capsys.readouterr().out
    assert "worst case" in printed and "pgd" in printed
    assert "worst case" in (tmp_path / "report.md").read_text()


def test_evaluate_diagnose_writes_findings_and_passes_a_clean_model(trained, tmp_path, capsys):
    code = main(["evaluate", "--model", str(trained / "model"), "--attack", "pgd:steps=10", "--diagnose",
                 "--eps", "0.1", "--limit", "100", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    diagnosis = json.loads((tmp_path / "diagnostics.json").read_text())
    assert diagnosis["verdict"] == "pass" and len(diagnosis["findings"]) >= 10
    report = (tmp_path / "report.md").read_text()
    assert "worst case" in report and "Gradient-masking diagnostics" in report
    assert "diagnostics: pass" in capsys.readouterr().out


def test_evaluate_diagnose_alone_exits_1_when_a_check_fails(trained, tmp_path, monkeypatch, capsys):
    import robustlab.cli.evaluate as cli
    from robustlab.models.preprocessing import BitDepthReduction

    load = cli.load_defended_model

    def quantized(args):
        model, card, data, device = load(args)
        return BitDepthReduction(model, bits=2), card, data, device

    monkeypatch.setattr(cli, "load_defended_model", quantized)
    code = main(["evaluate", "--model", str(trained / "model"), "--diagnose", "--eps", "0.1", "--limit", "100",
                 "--quiet", "--out", str(tmp_path)])
    assert code == 1
    diagnosis = json.loads((tmp_path / "diagnostics.json").read_text())
    assert {f["check"]: f["verdict"] for f in diagnosis["findings"]}["zero-gradients"] == "fail"
    assert (tmp_path / "report.md").read_text().startswith("## Gradient-masking diagnostics: **fail**")
    assert not (tmp_path / "evaluation.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--eps", "-1"], "eps must be > 0"),
    (["--eps", "0.1", "--norm", "L7"], "unknown norm"),
    (["--eps", "0.1", "--attack-name", "nope"], "unknown attack"),
    (["--eps", "0.1", "--attack-name", "pgd:steps=0"], "steps must be a positive integer"),
    (["--eps", "0.1", "--attack-name", "pgd:bogus=1"], "bad hyperparameters"),
])
def test_bad_input_gives_a_clear_error_and_exit_code_2(trained, tmp_path, capsys, argv, message):
    attack = "pgd"
    if "--attack-name" in argv:
        i = argv.index("--attack-name")
        attack = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    code = main(["attack", "--model", str(trained / "model"), "--attack", attack, "--limit", "10", "--quiet",
                 "--out", str(tmp_path), *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    code = main(["evaluate", "--model", str(tmp_path / "nothing"), "--attack", "fgsm", "--eps", "0.1", "--out", str(tmp_path)])
    assert code == 2
    assert "nothing" in capsys.readouterr().err


def test_parse_attack_values():
    attack = parse_attack("pgd:steps=7,step_size=0.01,random_start=false,loss=margin,kappa=5")
    assert (attack.steps, attack.step_size, attack.random_start, attack.loss, attack.kappa) == (7, 0.01, False, "margin", 5)
    with pytest.raises(RobustlabError, match="key=value"):
        parse_attack("pgd:steps")


def test_datasets_list_and_locate(capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "mnist" in out
    assert main(["datasets", "locate", "digits"]) == 0


def test_demo_runs_end_to_end(tmp_path):
    # The README's main command, as a subprocess: it must work from a fresh interpreter.
    proc = subprocess.run([sys.executable, "-m", "robustlab", "demo", "--quiet", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "worst case" in proc.stdout
    for name in ("model.safetensors", "model.json", "evaluation.json", "report.md", "report.html", "grid.png", "curve.json"):
        assert (tmp_path / name).exists(), name
    ev = json.loads((tmp_path / "evaluation.json").read_text())
    assert ev["metrics"]["clean_accuracy"]["value"] > 0.9
    assert ev["metrics"]["robust_accuracy"]["value"] < ev["metrics"]["clean_accuracy"]["value"] - 0.2
    curve = json.loads((tmp_path / "curve.json").read_text())["robust_accuracy"]
    values = [curve[k] for k in sorted(curve, key=float)]
    assert values == sorted(values, reverse=True)  # robust accuracy falls as eps grows
    page = (tmp_path / "report.html").read_text()
    assert "<svg" in page and "robust accuracy" in page.lower()


def test_model_arguments_may_hold_lists():
    from robustlab.cli.options import key_values

    assert key_values("hidden=[16,16],dropout=0.5", "model") == {"hidden": [16, 16], "dropout": 0.5}


def test_certify_command_end_to_end(trained, tmp_path, capsys):
    code = main(["certify", "--model", str(trained / "model"), "--eps", "0.005,0.02", "--methods", "ibp,crown",
                 "--limit", "40", "--bracket", "2", "--time-limit", "20", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    strict = {"parse_constant": lambda c: pytest.fail(f"{c} is not valid JSON")}
    result = json.loads((tmp_path / "certify.json").read_text(), **strict)
    json.loads((tmp_path / "bracket.json").read_text(), **strict)
    acc = result["certified_accuracy"]
    assert acc["crown"]["0.005"] >= acc["ibp"]["0.005"] >= acc["ibp"]["0.02"]
    assert (tmp_path / "bracket.md").exists() and result["bracket"]["all_consistent"]


def test_evaluate_minimum_norm_and_targeted_modes(trained, tmp_path, capsys):
    code = main(["evaluate", "--model", str(trained / "model"), "--mode", "minimum-norm", "--norm", "L2",
                 "--attack", "deepfool", "--attack", "ddn:steps=20", "--limit", "30", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "minimum-norm.json").read_text())
    assert len(data["samples"]) == 30
    assert json.loads((tmp_path / "state-minimum-norm.json").read_text())["fingerprint"]["settings"]["mode"] == "minimum-norm"
    assert "robust accuracy" in (tmp_path / "report.md").read_text().lower()
    code = main(["evaluate", "--model", str(trained / "model"), "--mode", "targeted", "--norm", "L2",
                 "--attack", "ddn:steps=10", "--limit", "10", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    assert "worst" in capsys.readouterr().out
    code = main(["evaluate", "--model", str(trained / "model"), "--attack", "fgsm", "--limit", "10", "--out", str(tmp_path)])
    assert code == 2


def test_evaluate_suite_resumes_from_its_state_file(trained, tmp_path, capsys):
    argv = ["evaluate", "--model", str(trained / "model"), "--suite", "quick", "--limit", "40", "--batch-size", "16",
            "--quiet", "--out", str(tmp_path)]
    assert main([*argv, "--eps", "0.2"]) == 0
    data = json.loads((tmp_path / "evaluation.json").read_text())
    assert list(data["attacks"]) == ["apgd-ce", "apgd-t"]
    assert json.loads((tmp_path / "state.json").read_text())["steps"] == [3, 3, 3]  # 3 blocks: clean + 2 attacks
    # A suite runs as a cascade: APGD-T only saw what APGD-CE left.
    assert all(s["attacks"]["apgd-t"]["success"] is None for s in data["samples"]
               if s["broken_by"] in ("clean", "apgd-ce"))
    assert data["metrics"]["robust_accuracy"]["value"] < data["metrics"]["clean_accuracy"]["value"] - 0.3
    assert main([*argv, "--eps", "0.2"]) == 0  # a finished state file: the same table again
    assert json.loads((tmp_path / "evaluation.json").read_text())["samples"] == data["samples"]
    capsys.readouterr()
    assert main([*argv, "--eps", "0.3"]) == 2
    assert "belongs to another evaluation (different threat)" in capsys.readouterr().err
    assert main([*argv, "--eps", "0.3", "--no-resume"]) == 0
    # Neither a suite nor an attack: the default protocol, fast.
    default_out = tmp_path / "default"
    assert main([*argv[:3], *argv[5:-1], str(default_out), "--eps", "0.2"]) == 0
    assert list(json.loads((default_out / "evaluation.json").read_text())["attacks"]) == ["apgd-ce", "apgd-t", "square"]
    assert "fast suite" in capsys.readouterr().out


@pytest.mark.slow  # two torchrun workers, each a fresh interpreter
def test_evaluate_under_torchrun_matches_a_single_process(trained, tmp_path):
    import os

    argv = ["evaluate", "--model", str(trained / "model"), "--attack", "fgsm", "--attack", "pgd:steps=3",
            "--cascade", "--eps", "0.1", "--limit", "40", "--batch-size", "8", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "single")]) == 0
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "robustlab", *argv, "--out", str(tmp_path / "sharded")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    single = json.loads((tmp_path / "single" / "evaluation.json").read_text())
    sharded = json.loads((tmp_path / "sharded" / "evaluation.json").read_text())
    assert sharded["samples"] == single["samples"] and sharded["provenance"]["processes"] == 2
    assert sorted(p.name for p in (tmp_path / "sharded").glob("state*.json")) == ["state.rank0-of-2.json",
                                                                                   "state.rank1-of-2.json"]
