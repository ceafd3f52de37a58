"""What every command shares: the stderr console, progress bars, JSON output, errors."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import orjson

T = TypeVar("T")


def _rich_console() -> Any:
    """rich's stderr ``Console``, built on first use: a command that prints only JSON (or
    plain lines to a pipe) does not import rich."""
    if _Console.real is None:
        import os

        from rich.console import Console

        # rich draws for 80 columns where stderr is no terminal (a log file, CI): tables of
        # runs and metrics then cut their cells short; COLUMNS still decides when it is set
        piped = not sys.stderr.isatty() and "COLUMNS" not in os.environ
        _Console.real = Console(stderr=True, width=PIPED_WIDTH if piped else None)
    return _Console.real


#: the width of tables and text written to a pipe or a file
PIPED_WIDTH = 120


class _Console:
    """Stands for :func:`_rich_console` until something is printed through it."""

    real: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(_rich_console(), name)


# Human-facing text goes to stderr so that stdout carries only --json documents.
console: Any = _Console()
_quiet = {"on": False}


def set_quiet(quiet: bool) -> None:
    """Silence progress bars and informational text (errors still print)."""
    _quiet["on"] = quiet


def show_progress() -> bool:
    """Progress bars appear only on a terminal and without --quiet."""
    return not _quiet["on"] and sys.stderr.isatty()


def info(message: str) -> None:
    """Print an informational line on stderr unless quiet (as it is when stderr is not a
    terminal: no markup, no wrapping)."""
    if _quiet["on"]:
        return
    if sys.stderr.isatty():
        console.print(message)
    else:
        sys.stderr.write(message + "\n")


def _progress(*extra: Any) -> Any:
    """rich's ``Progress`` on stderr with danlu's columns (``extra`` after the count)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *extra,
               TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*columns, console=_rich_console(), transient=True)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr (no bar when not a terminal or quiet)."""
    if not show_progress():
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with _progress() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


class _Counter:
    """``advance(n)`` for work that finishes in uneven steps (a batch of images at once)."""

    def __init__(self, progress: Any, task: Any) -> None:
        self.progress, self.task = progress, task

    def __call__(self, n: int = 1) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)


@contextlib.contextmanager
def counter(description: str, total: int | None, unit: str = "img") -> Iterator[_Counter]:
    """A progress bar with a rate column (``12.3 img/s``) on stderr, advanced by the callable
    it yields (a no-op when not a terminal or quiet)."""
    if not show_progress():
        yield _Counter(None, None)
        return
    from rich.progress import TextColumn

    with _progress(TextColumn("{task.fields[rate]}")) as progress:
        task = progress.add_task(description, total=total, rate="")

        class _Rated(_Counter):
            def __call__(self, n: int = 1) -> None:
                progress.advance(task, n)
                speed = progress.tasks[0].speed
                progress.update(task, rate=f"{speed:.1f} {unit}/s" if speed else "")

        yield _Rated(progress, task)


def prepare_numba() -> None:
    """Load numba and its implementation registry now, without letting it import SciPy.

    On its first compile or cache load numba imports ``numba.np.arraymath``, which imports
    ``scipy.linalg`` (when SciPy is installed) only to learn whether BLAS is there: 0.3 s and
    tens of MB that a command pays before its first kernel runs. danlu's kernels call no BLAS
    (the answer changes only numba's ``np.convolve`` / ``np.correlate``, which then use a
    plain loop), so the commands that run kernels hide SciPy's BLAS module for the length of
    that one import. Nothing else in the process is affected: the module is found again
    right after, and a process that has already loaded numba's registry or SciPy keeps it.

    The registry is then loaded by a first (cached) call, here rather than inside a reader
    thread, where it would only contend for the GIL with the main thread's work.
    """
    blas = "scipy.linalg.cython_blas"
    if "numba.np.arraymath" not in sys.modules and "scipy.linalg" not in sys.modules:
        import numba  # noqa: F401 - first, so that the import below runs as numba expects

        sys.modules[blas] = None  # type: ignore[assignment] - "not importable", for the probe
        try:
            import numba.np.arraymath  # noqa: F401
        finally:
            if sys.modules.get(blas, 0) is None:
                del sys.modules[blas]
    _load_registry()


@functools.cache
def _load_registry() -> None:
    """numba loads its registry on the first call of any kernel: a trivial one, once."""
    import numba

    numba.njit(cache=True)(_identity)(0)


def _identity(x: int) -> int:
    return x


_BENCH = "pip install 'danlu[bench]'"
#: optional modules danlu's commands and benchmarks import, and how to install each
OPTIONAL_MODULES = {
    **dict.fromkeys(("ensemble_boxes", "pycocotools", "faster_coco_eval", "hotcoco", "globox",
                     "albumentations", "shapely", "tqdm", "litserve", "flask"),
                    _BENCH),
    "ultralytics": "pip install 'danlu[bench-train]'",
    "sahi": "pip install --no-deps sahi==0.12.8 (what `make test` installs)",
    "cv2": "pip install 'danlu[opencv]'",
    **dict.fromkeys(("onnx", "onnxruntime", "onnxscript"), "pip install 'danlu[onnx]'"),
    **dict.fromkeys(("fastapi", "uvicorn", "multipart", "prometheus_client", "httpx", "redis"),
                    "pip install 'danlu[serve]'"),
    "ray": "pip install 'danlu[ray]'",
    **dict.fromkeys(("sklearn", "skimage"), "pip install 'danlu[digits]'"),
}


def missing_modules(modules: Iterable[str]) -> dict[str, str]:
    """Those of ``modules`` (top-level names in :data:`OPTIONAL_MODULES`) this environment
    lacks, each with how to install it."""
    import importlib.util

    return {m: OPTIONAL_MODULES[m] for m in modules
            if m in OPTIONAL_MODULES and importlib.util.find_spec(m) is None}


#: the pip name of an optional module, where it differs
PIP_NAMES = {"multipart": "python-multipart", "prometheus_client": "prometheus-client",
             "cv2": "opencv-python-headless", "sklearn": "scikit-learn",
             "skimage": "scikit-image", "ray": "ray[serve]"}


def require_modules(what: str, modules: Iterable[str]) -> None:
    """Raise one :class:`~danlu.errors.ConfigError` naming what is missing when any of
    ``modules`` (top-level names in :data:`OPTIONAL_MODULES`) is not installed: "``what``
    needs X, Y, which are not installed", with how to install them as the hint."""
    from danlu.errors import ConfigError

    missing = missing_modules(modules)
    if missing:
        names = [PIP_NAMES.get(m, m) for m in missing]
        raise ConfigError(f"{what} needs {', '.join(names)}, which "
                          f"{'is' if len(names) == 1 else 'are'} not installed",
                          hint="; ".join(sorted(set(missing.values()))))


#: what a ``--split`` names, in every command's help
SPLIT_KINDS = ("a VOC ImageSets/Main name, a YOLO data.yaml key or images/<split> folder, a "
               "COCO annotations/instances_<split>.json")
SPLIT_HELP = f"Read only this split: {SPLIT_KINDS}."


#: the help of every ``--image-dir`` option
IMAGE_DIR_HELP = ("Find the images here when they are not where the annotations say (by "
                  "file name, then by stem, in any sub-folder).")


def print_notices(ds: Any) -> None:
    """Print :func:`danlu.data.io.dataset_notices` of a dataset just read, one ``note:`` line
    each, on stderr (even with --quiet: they say what was read)."""
    from danlu.data.io import dataset_notices

    for note in dataset_notices(ds):
        print(f"note: {note}", file=sys.stderr)


def print_losses(ds: Any, to: str) -> None:
    """Print :func:`danlu.data.formats.losses.conversion_losses` of writing ``ds`` as ``to``,
    one ``warning:`` line each, on stderr (even with --quiet: the output lacks something)."""
    from danlu.data.formats.losses import conversion_losses

    for line in conversion_losses(ds, to):
        print(f"warning: {line}", file=sys.stderr)


def renamed_option(value: Any, old_value: Any, old: str, new: str) -> Any:
    """The value of an option given under its old name ``old`` (kept hidden so that scripts
    keep working) or its name ``new``, with a note on stderr; both, differing, is an error."""
    if old_value is None:
        return value
    if value is not None and value != old_value:
        from danlu.errors import ConfigError

        raise ConfigError(f"{old} {old_value} and {new} {value} disagree",
                          hint=f"{old} is the old name of {new}: give {new} only")
    print(f"note: {old} is now {new}", file=sys.stderr)
    return old_value


def print_json(document: Any) -> None:
    """Print exactly one JSON document on stdout."""
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2
                                  | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
    sys.stdout.flush()
