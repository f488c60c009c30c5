"""Progress output: a bar on a terminal, one log line per stage elsewhere (files, pipes, CI logs)."""

from __future__ import annotations

import logging

from robustlab._progress import StageLog, progress_bar
from robustlab.settings import RunSettings


def test_off_a_terminal_a_stage_is_one_log_line(caplog):
    caplog.set_level(logging.INFO, logger="robustlab")
    bar = progress_bar(total=1000, desc="evaluate", unit="sample")  # pytest's stderr is not a terminal
    assert isinstance(bar, StageLog)
    with bar:
        for _ in range(100):
            bar.set_postfix(attack="pgd")
            bar.update(10)
    for _ in progress_bar(range(7), desc="epoch 1/3"):
        pass
    messages = [r.getMessage() for r in caplog.records if r.name == "robustlab"]
    assert len(messages) == 2
    assert messages[0].startswith("evaluate: 1000/1000 sample in ") and messages[0].endswith("(attack=pgd)")
    assert messages[1].startswith("epoch 1/3: 7/7 it in ")


def test_disabled_stages_say_nothing(caplog):
    caplog.set_level(logging.INFO, logger="robustlab")
    with progress_bar(total=3, desc="quiet", disable=True) as bar:
        bar.update(3)
    assert not [r for r in caplog.records if r.name == "robustlab"]


def test_an_evaluation_logs_one_line_not_one_per_batch(caplog, digits, digits_mlp):
    from robustlab.attacks import FGSM
    from robustlab.evaluation import evaluate
    from robustlab.threat import Linf

    caplog.set_level(logging.INFO, logger="robustlab")
    _, _, x, y = digits
    evaluate(digits_mlp, x[:64], y[:64], threat=Linf(eps=0.1), attacks={"fgsm": FGSM()}, settings=RunSettings(batch_size=8, progress=True))
    lines = [r.getMessage() for r in caplog.records if r.name == "robustlab" and " sample in " in r.getMessage()]
    assert len(lines) == 1 and "64/64 sample" in lines[0], lines  # 8 batches, one line


def test_a_long_stage_logs_a_line_every_heartbeat(caplog, monkeypatch):
    import robustlab._progress as progress

    readings = [0.0, 100.0, 350.0, 400.0, 700.0, 710.0]  # start, then one per update and one at close
    monkeypatch.setattr(progress.time, "perf_counter", lambda: readings.pop(0) if len(readings) > 1 else readings[0])
    caplog.set_level(logging.INFO, logger="robustlab")
    with progress_bar(total=4, desc="evaluate", unit="sample") as bar:
        bar.set_postfix(step="square")
        for _ in range(4):
            bar.update(1)
    messages = [r.getMessage() for r in caplog.records if r.name == "robustlab"]
    assert messages == ["evaluate: 2/4 sample after 350.0 s (step=square)",
                        "evaluate: 4/4 sample after 700.0 s (step=square)",
                        "evaluate: 4/4 sample in 710.0 s (step=square)"]
