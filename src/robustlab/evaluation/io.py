"""JSON for evaluation results and state files: atomic writes, ``inf`` as ``null``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from robustlab.threat import ThreatModel

__all__ = ["jsonable", "save_json", "threat_dict"]


def threat_dict(threat: ThreatModel) -> dict[str, Any]:
    return {"norm": threat.norm, "eps": threat.eps, "bounds": list(threat.bounds)}


def save_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write JSON atomically (a killed write leaves the old file); ``inf`` becomes ``null``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(data), indent=1, allow_nan=True))
    tmp.replace(path)
    return path


def jsonable(value: Any) -> Any:
    """``value`` with ``+inf`` floats replaced by ``None`` (JSON has no infinity)."""
    if isinstance(value, float) and math.isinf(value):
        return None if value > 0 else value
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
