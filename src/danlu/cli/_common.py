"""What every command shares: the stderr console, progress bars, JSON output, errors."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

# Human-facing text goes to stderr so that stdout carries only --json documents.
console = Console(stderr=True)
_quiet = {"on": False}


def set_quiet(quiet: bool) -> None:
    """Silence progress bars and informational text (errors still print)."""
    _quiet["on"] = quiet


def show_progress() -> bool:
    """Progress bars appear only on a terminal and without --quiet."""
    return not _quiet["on"] and sys.stderr.isatty()


def info(message: str) -> None:
    """Print an informational line on stderr unless quiet."""
    if not _quiet["on"]:
        console.print(message)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr (no bar when not a terminal or quiet)."""
    if not show_progress():
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def print_json(document: Any) -> None:
    """Print exactly one JSON document on stdout."""
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2
                                  | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
    sys.stdout.flush()
