"""The numbers the live page shows beside the curves: speed, ETA, memory, and divergence.

All are cheap enough for the training thread (a few arithmetic operations per step; memory is
read at most every :data:`MEMORY_EVERY` seconds).

Example:
    >>> s = Speed(batch=8)
    >>> for t in (0.0, 0.5, 1.0, 1.5):
    ...     s.tick(t, first_of_epoch=False)
    >>> round(s.step_seconds, 3), round(s.images_per_second, 1)
    (0.5, 16.0)
    >>> d = Divergence(warmup=3)
    >>> [d.check(v) for v in (1.0, 1.1, 0.9, 1.0, 50.0)]
    [None, None, None, None, 'diverging']
"""

from __future__ import annotations

import math
import os
import resource
import sys
from typing import Any

MEMORY_EVERY = 2.0  # seconds


class Speed:
    """Seconds per step (an exponential average over steps within an epoch, so that a
    validation or a pause between two steps does not count) and images per second."""

    def __init__(self, batch: int, alpha: float = 0.1) -> None:
        self.batch = int(batch)
        self.alpha = float(alpha)
        self.step_seconds: float | None = None
        self._last: float | None = None

    def tick(self, elapsed: float, first_of_epoch: bool) -> None:
        """One step ended at ``elapsed`` training seconds."""
        if self._last is not None and not first_of_epoch:
            dt = max(elapsed - self._last, 0.0)
            self.step_seconds = dt if self.step_seconds is None else (
                (1 - self.alpha) * self.step_seconds + self.alpha * dt)
        self._last = elapsed

    @property
    def images_per_second(self) -> float | None:
        if not self.step_seconds:
            return None
        return self.batch / self.step_seconds

    def eta(self, steps_left: int, evaluations_left: int, val_seconds: float) -> float | None:
        """Seconds to the end: the steps left at the current speed and the evaluations left
        at the last one's duration."""
        if self.step_seconds is None:
            return None
        return max(steps_left, 0) * self.step_seconds + max(evaluations_left, 0) * val_seconds


def evaluations_left(epoch: int, total_epochs: int, eval_every: int) -> int:
    """Validations still to come after epoch index ``epoch`` (0-based, in progress): every
    ``eval_every``-th epoch and the last.

    Example:
        >>> evaluations_left(0, 10, 3)   # epochs 3, 6, 9 and 10
        4
    """
    n = 0
    for e in range(epoch + 1, total_epochs + 1):
        if e % eval_every == 0 or e == total_epochs:
            n += 1
    return n


def process_memory() -> dict[str, int]:
    """This process's memory in bytes: ``rss`` now (Linux) and ``peak``."""
    out: dict[str, int] = {}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["peak"] = int(peak if sys.platform == "darwin" else peak * 1024)  # macOS counts bytes
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            out["rss"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    return out


def gpu_memory(device: Any) -> dict[str, int] | None:
    """CUDA memory of ``device`` in bytes (``allocated``, ``reserved``, ``peak``, ``total``);
    None off CUDA."""
    if getattr(device, "type", None) != "cuda":
        return None
    import torch

    return {"allocated": int(torch.cuda.memory_allocated(device)),
            "reserved": int(torch.cuda.memory_reserved(device)),
            "peak": int(torch.cuda.max_memory_allocated(device)),
            "total": int(torch.cuda.get_device_properties(device).total_memory)}


class Divergence:
    """Flags a loss that is not finite (``nonfinite``) or above ``factor`` times its running
    average after ``warmup`` steps (``diverging``); once per episode: it re-arms when the loss
    is back under twice the average."""

    def __init__(self, factor: float = 10.0, warmup: int = 20, alpha: float = 0.05) -> None:
        self.factor, self.warmup, self.alpha = float(factor), int(warmup), float(alpha)
        self.average: float | None = None
        self.steps = 0
        self.alarmed = False

    def check(self, loss: float) -> str | None:
        """``nonfinite``, ``diverging`` or None for this step's loss."""
        if not math.isfinite(loss):
            if self.alarmed:
                return None
            self.alarmed = True
            return "nonfinite"
        self.steps += 1
        avg = self.average
        if avg is not None and self.steps > self.warmup and loss > self.factor * max(avg, 1e-12):
            if self.alarmed:
                return None
            self.alarmed = True
            return "diverging"  # not averaged in: the baseline stays the healthy one
        if avg is not None and loss < 2 * avg:
            self.alarmed = False
        self.average = loss if avg is None else (1 - self.alpha) * avg + self.alpha * loss
        return None


__all__ = ["Speed", "Divergence", "evaluations_left", "process_memory", "gpu_memory"]
