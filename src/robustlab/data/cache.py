"""The user cache directory."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """robustlab's user cache: ``$ROBUSTLAB_CACHE``, else ``$XDG_CACHE_HOME/robustlab``,
    else ``~/.cache/robustlab``. Not created here."""
    if os.environ.get("ROBUSTLAB_CACHE"):
        return Path(os.environ["ROBUSTLAB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "robustlab"


def data_cache_dir() -> Path:
    """Where downloaded datasets go: ``<cache>/data``."""
    return cache_dir() / "data"
