"""ruff and mypy on src/ (settings in pyproject.toml), as .ci/run runs them: the whole-suite run
before a merge catches a lint or type error too, not only CI."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("tool", "args"), [("ruff", ["check", "src"]), ("mypy", [])])
def test_the_sources_pass(tool, args):
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed (it comes with the test extra: pip install -e '.[test]')")
    done = subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"{tool} found problems:\n{done.stdout[-6000:]}{done.stderr[-2000:]}"
