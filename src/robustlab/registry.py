"""The one registry idiom: attacks, training methods, models, defenses, certifiers and
reproductions are each a :class:`Registry`, a ``name -> class`` dict filled by :meth:`Registry.add`
under the object's own ``name``.

Everything that lists them (command-line choices and help, the documentation check, the
conformance suites) reads the registry, never a hand-written list.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from robustlab.errors import RobustlabError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """``name -> entry`` for one kind of thing (``kind`` names it in errors: "attack", "training
    method", ...). A dict, so ``REGISTRY[name]``, ``name in REGISTRY`` and ``sorted(REGISTRY)``
    work as for any mapping; entries come in through :meth:`add`, which keys them by their own
    ``name`` attribute (a class attribute for classes) and refuses a name taken by another entry."""

    def __init__(self, kind: str, entries: Iterable[T] = ()):
        super().__init__()
        self.kind = kind
        for entry in entries:
            self.add(entry)

    def add(self, entry: T, name: str | None = None) -> T:
        """Register ``entry`` under ``name`` (default: ``entry.name``) and return it, so that
        ``@REGISTRY.add`` works as a class decorator."""
        key = getattr(entry, "name", None) if name is None else name
        if not isinstance(key, str) or not key:
            raise RobustlabError(f"a registered {self.kind} needs a non-empty string name; {entry!r} has {key!r}")
        existing = self.get(key)
        if existing is not None and existing is not entry:
            raise RobustlabError(f"a {self.kind} named {key!r} is already registered ({existing!r})")
        self[key] = entry
        return entry

    def lookup(self, name: str) -> T:
        """The entry called ``name``; a clear error listing the choices for an unknown one."""
        if not isinstance(name, str) or name not in self:
            raise RobustlabError(f"unknown {self.kind} {name!r}; choose one of {self.names()}")
        return self[name]

    def names(self) -> list[str]:
        """The registered names, sorted (command-line choices, help and error messages)."""
        return sorted(self)
