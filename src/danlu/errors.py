"""One exception family for everything danlu reports to a user.

Catch :class:`DanluError` to handle any of them. The CLI prints ``error: <message>`` and,
when the error carries one, ``hint: <hint>``, then exits with status 2.
"""

from __future__ import annotations


class DanluError(Exception):
    """Base class of every error danlu raises on purpose.

    Args:
        message: what went wrong, naming the file and the line or JSON path where one applies.
        hint: optional advice on how to fix it, shown on its own line by the CLI.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class DatasetError(DanluError):
    """A dataset or annotation file is missing, malformed or inconsistent."""


class ConfigError(DanluError):
    """An option, argument or configuration value is invalid."""


class ModelError(DanluError):
    """A model or checkpoint cannot be built, loaded or run."""


class ServeError(DanluError):
    """The HTTP service, its queue or a worker failed."""


__all__ = ["DanluError", "DatasetError", "ConfigError", "ModelError", "ServeError"]
