"""A room's main function bound at the package root under the room's own name.

``danlu.train(...)`` trains and ``danlu.train`` is also the room ``danlu/train/`` (likewise
``danlu.evaluate``). Python binds ``danlu.train`` to the subpackage the first time it is
imported, so the package root imports the room first and then binds a :class:`RoomFunction`
over it: calling it calls the function, any other attribute is the room's
(``danlu.train.TrainConfig``), and ``from danlu.train import X`` reads the package itself from
``sys.modules``. No module changes its class.

Example:
    >>> import danlu
    >>> danlu.train.TrainConfig(epochs=2).epochs
    2
    >>> callable(danlu.train)
    True
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any


class RoomFunction:
    """Call ``module.function``; read every other attribute from the package ``room``."""

    def __init__(self, room: str, module: str, function: str) -> None:
        self._room, self._module, self._function = room, module, function

    def _target(self) -> Any:
        return getattr(import_module(self._module), self._function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name not in ("__path__", "__all__"):
            raise AttributeError(name)
        return getattr(import_module(self._room), name)

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self._target().__doc__

    @property
    def __wrapped__(self) -> Any:  # inspect.signature and help() follow it
        return self._target()

    def __dir__(self) -> list[str]:
        return sorted(set(dir(import_module(self._room))))

    def __repr__(self) -> str:
        return f"<function {self._module}.{self._function} (and the room {self._room})>"


def lazy_attributes(module: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``module``: ``name`` is read from the module
    ``table[name]`` on first use (and kept in ``module``'s namespace), so a package can export
    names without importing what defines them.

    Example:
        >>> get = lazy_attributes("danlu", {"loads": "json"})
        >>> get("loads").__module__
        'json'
    """

    def __getattr__(name: str) -> Any:
        source = table.get(name)
        if source is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(import_module(source), name)
        setattr(sys.modules[module], name, value)
        return value

    return __getattr__


__all__ = ["RoomFunction", "lazy_attributes"]
