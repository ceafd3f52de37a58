"""The ``--slice`` / ``slice`` option as users type it, read without torch (the web side of
``danlu serve --redis`` / ``--ray`` checks it with no model loaded)."""

from __future__ import annotations

from danlu.errors import ConfigError


def parse_slice_size(value: object, name: str = "--slice") -> int | str | None:
    """A ``--slice`` value as a user types it -> a tile side in pixels, ``"auto"``, or None
    (``""``, ``off``, ``none``, ``0``: no slicing); ConfigError naming ``name`` otherwise.

    Example:
        >>> parse_slice_size("640"), parse_slice_size("AUTO"), parse_slice_size("off")
        (640, 'auto', None)
    """
    text = "" if value is None else str(value).strip().lower()
    if text in ("", "off", "none", "0"):
        return None
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name} {value!r}: expected a tile side in pixels or 'auto'") from None


__all__ = ["parse_slice_size"]
