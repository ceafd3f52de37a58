"""Atomic writes: a file or a folder appears complete, or not at all.

A file is written to a temporary sibling and renamed over the target (``os.replace`` is atomic
on POSIX within one file system). A folder is built in a temporary sibling folder and renamed
into place at the end; an existing target is moved aside first and removed only after the new
folder is in place. On any error the temporary file or folder is removed.

The results get the permissions any other tool's would: ``0666`` (files) or ``0777`` (folders)
less the process's umask. Python's ``mkstemp`` / ``mkdtemp`` create ``0600`` / ``0700`` for
privacy while the file is temporary; that mode would otherwise survive the rename, and a
colleague, a container or a web server could not read the results.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_bytes_atomic(d / "a.txt", b"hello")
    >>> with atomic_dir(d / "out") as tmp:
    ...     _ = (tmp / "b.txt").write_text("x")
    >>> sorted(p.name for p in d.iterdir())
    ['a.txt', 'out']
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from danlu.errors import DatasetError


def current_umask() -> int:
    """The process's umask (read from ``/proc`` where it can be, without changing it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # elsewhere: set and put back
    os.umask(old)
    return old


def temp_sibling(path: Path, *, folder: bool = False) -> tuple[int | None, str]:
    """A temporary sibling of ``path`` (``(fd, name)``; a folder: ``(None, name)``) with the
    mode a plain ``open`` / ``mkdir`` would give it, so the renamed result keeps that mode."""
    prefix, suffix = f".{path.name}.", ".tmp"
    if folder:
        name = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent)
        os.chmod(name, 0o777 & ~current_umask())
        return None, name
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())
    return fd, name


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_sibling(path)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it becomes ``path``.

    Args:
        path: the folder to create.
        overwrite: replace an existing non-empty ``path``; without it such a target raises
            :class:`DatasetError` before anything is written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DatasetError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise DatasetError(f"{path}: folder exists and is not empty",
                           hint="choose another output folder or pass overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(temp_sibling(path, folder=True)[1])
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old",
                                        dir=path.parent))
            os.replace(path, old / "x")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["atomic_open", "atomic_dir", "write_bytes_atomic", "write_text_atomic",
           "temp_sibling", "current_umask"]
