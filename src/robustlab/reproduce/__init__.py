"""Reproductions of published tables at a stated (CPU) scale: ``robustlab reproduce NAME``.

:data:`REPRODUCTIONS` maps a name to ``(description, budget, function)``; later work registers
its tables with :func:`register`. Each function takes :class:`ReproOptions`, writes
``<out>/<name>.json`` and ``<out>/<name>.md`` (our numbers beside the paper's) and returns a
:class:`ReproResult`.
"""

# Importing the modules registers their tables.
from robustlab.reproduce import athalye as _athalye  # noqa: F401
from robustlab.reproduce import bilateral as _bilateral  # noqa: F401
from robustlab.reproduce import cw as _cw  # noqa: F401
from robustlab.reproduce import madry as _madry  # noqa: F401
from robustlab.reproduce import madry_capacity as _madry_capacity  # noqa: F401
from robustlab.reproduce import tisode as _tisode  # noqa: F401
from robustlab.reproduce import training_methods as _training_methods  # noqa: F401
from robustlab.reproduce.registry import (
    REPRODUCTIONS,
    Reproduction,
    ReproOptions,
    ReproResult,
    register,
    run_reproduction,
)

__all__ = ["REPRODUCTIONS", "ReproOptions", "ReproResult", "Reproduction", "register", "run_reproduction"]
