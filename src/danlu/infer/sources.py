"""What ``danlu predict`` reads: image files, folders, globs and video files.

:func:`expand_sources` turns the command line's SOURCE arguments into an ordered list of
inputs: a file as given; a folder as the images (and videos) directly inside it, sorted by
name (all levels below with ``recursive``); a pattern with ``*``, ``?`` or ``[`` as the
files it matches (``**`` spans folders), sorted. A video file (:data:`VIDEO_SUFFIXES`) is one
input that :func:`video_frames` reads frame by frame (every ``stride``-th frame) with OpenCV.

A path that does not exist, a pattern that matches nothing, or a folder with no image is an
error before any work starts: a typo should not cost a model load.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.png", "a.jpg", "notes.txt"):
    ...     _ = (d / name).write_bytes(b"")
    >>> [p.name for p in expand_sources([str(d)])]
    ['a.jpg', 'b.png']
    >>> [p.name for p in expand_sources([str(d / "*.png")])]
    ['b.png']
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from danlu.data.formats._common import IMAGE_EXTENSIONS
from danlu.errors import ConfigError, DatasetError

#: the dataset readers' image suffixes, and the few more PIL opens that datasets rarely hold
IMAGE_SUFFIXES = frozenset(IMAGE_EXTENSIONS) | {".jp2", ".ppm", ".pgm"}
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})


def is_video(path: Path) -> bool:
    """True for the suffixes read as videos (:data:`VIDEO_SUFFIXES`)."""
    return path.suffix.lower() in VIDEO_SUFFIXES


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def _folder(folder: Path, recursive: bool) -> list[Path]:
    walk = folder.rglob("*") if recursive else folder.iterdir()
    wanted = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    return sorted(p for p in walk if p.is_file() and p.suffix.lower() in wanted)


def expand_sources(sources: Sequence[str | Path], *, recursive: bool = False) -> list[Path]:
    """SOURCE arguments -> the files to predict, in order, each once (see the module
    docstring).

    Raises:
        DatasetError: a path that does not exist, a pattern or folder with nothing to read.
    """
    out: list[Path] = []
    for source in sources:
        text = str(source)
        if _is_pattern(text) and not Path(text).exists():
            found = sorted(Path(p) for p in glob.glob(text, recursive=True)
                           if Path(p).is_file())
            if not found:
                raise DatasetError(f"{text}: the pattern matches no file",
                                   hint="quote it so that danlu, not the shell, expands it")
            out += found
            continue
        path = Path(text)
        if path.is_dir():
            found = _folder(path, recursive)
            if not found:
                hint = ("images in sub-folders? pass --recursive" if not recursive and any(
                    p.is_dir() for p in path.iterdir()) else
                        "image suffixes: " + " ".join(sorted(IMAGE_SUFFIXES)))
                raise DatasetError(f"{path}: no images in this folder", hint=hint)
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise DatasetError(f"{path}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def video_frames(path: str | Path, stride: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame index, HxWx3 uint8 RGB)`` for every ``stride``-th frame of a video, from 0.

    Raises:
        ConfigError: OpenCV is not installed.
        DatasetError: the file cannot be opened as a video.
    """
    if stride < 1:
        raise ConfigError(f"--vid-stride must be at least 1, got {stride}")
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - opencv is a dependency of the extra
        raise ConfigError("reading video needs OpenCV",
                          hint="pip install opencv-python-headless") from e
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DatasetError(f"{path}: cannot open as a video")
    try:
        index = 0
        while True:
            if index % stride == 0:
                ok, frame = cap.read()
                if not ok:
                    break
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            elif not cap.grab():  # skipped frames are not decoded
                break
            index += 1
    finally:
        cap.release()


def video_frame_count(path: str | Path, stride: int = 1) -> int | None:
    """How many frames :func:`video_frames` will give (from the container; None if unknown)."""
    try:
        import cv2
    except ImportError:  # pragma: no cover
        return None
    cap = cv2.VideoCapture(str(path))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    return (n + stride - 1) // stride if n > 0 else None


__all__ = ["expand_sources", "video_frames", "video_frame_count", "is_video",
           "IMAGE_SUFFIXES", "VIDEO_SUFFIXES"]
