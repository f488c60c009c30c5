"""scripts/setup.sh: the README's first command, on a copy of the repository.

The full install (a fresh .venv, torch and the package) is slow (minutes: torch is a large
wheel) and needs a package source (the network, or the machine's local wheels), so it is marked
``slow``; CI exercises the same path with the distribution's python3 in ``.ci/run``. The check of
the interpreter runs everywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SKIP = shutil.ignore_patterns(".venv", ".git", "site", "__pycache__", "*.egg-info", ".pytest_cache", "build",
                               "demo-report", ".cache")


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "robustlab"
    for name in ("scripts", "src", "docs", "tests", "pyproject.toml", "README.md", "mkdocs.yml"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=_SKIP, symlinks=True)
        else:
            copy.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def test_setup_refuses_a_python_older_than_3_11(tmp_path):
    fake = tmp_path / "python-old"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Python 3.8.10'; exit 0; fi\nexit 1\n")
    fake.chmod(0o755)
    copy = _copy(tmp_path)
    done = subprocess.run(["bash", "scripts/setup.sh"], cwd=copy, env={**os.environ, "PYTHON": str(fake)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "robustlab needs Python 3.11 or newer" in done.stderr and "Python 3.8.10" in done.stderr
    assert not (copy / ".venv").exists()


def _pythons() -> list[str]:
    found = [sys.executable]  # a Python that already has torch
    if Path("/usr/bin/python3").exists():
        found.append("/usr/bin/python3")  # the distribution's (PEP 668: pip refuses to install into it)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("python", _pythons())
def test_setup_creates_a_fresh_venv_that_runs_robustlab(tmp_path, python):
    copy = _copy(tmp_path)
    done = subprocess.run(["bash", "scripts/setup.sh"], cwd=copy, env={**os.environ, "PYTHON": python},
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    venv_python = copy / ".venv" / "bin" / "python"
    check = subprocess.run([str(venv_python), "-c", "import robustlab, torch; print(robustlab.__file__, torch.__version__)"],
                           capture_output=True, text=True, timeout=300, env={k: v for k, v in os.environ.items()
                                                                             if k != "PYTHONPATH"})
    assert check.returncode == 0, check.stderr
    assert str(copy / "src" / "robustlab") in check.stdout and "+cpu" in check.stdout
    docs = subprocess.run([str(venv_python), "-m", "robustlab", "docs", "diagnostics#eot"], capture_output=True,
                          text=True, timeout=300, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert docs.returncode == 0 and docs.stdout.startswith("## eot")
    again = subprocess.run(["bash", "scripts/setup.sh"], cwd=copy, env={**os.environ, "PYTHON": python},
                           capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, again.stderr[-3000:]  # idempotent
