"""What a run publishes, held in memory for the live page: bounded, thread-safe, O(1) to add.

The trainer's thread calls :meth:`EventBuffer.publish` (a lock held for a few microseconds, no
I/O); the server's threads read :meth:`EventBuffer.snapshot` (everything a page needs to draw
itself) and wait in :meth:`EventBuffer.since` for the events after the last one they sent
(server-sent events). Everything is bounded:

* the ring of recent events (``capacity``): a reader that falls further behind is told so
  (``gap``) and reloads the snapshot;
* the loss curve (``curve_points``): when full, every other point is dropped and only every
  ``stride``-th step is kept from then on, so a long run keeps its whole shape;
* the per-epoch rows and the history of control actions and notable events (``keep``).

Example:
    >>> buf = EventBuffer(capacity=4, curve_points=4)
    >>> for s in range(1, 10):
    ...     _ = buf.publish("step", {"step": s, "losses": {"loss": 1.0 / s}})
    >>> [p["step"] for p in buf.snapshot()["curve"]], buf.curve.stride
    ([2, 4, 6, 8], 2)
    >>> events, gap = buf.since(3, timeout=0)
    >>> [seq for seq, _, _ in events], gap
    ([6, 7, 8, 9], True)
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

#: event kinds kept in the history list (besides being streamed)
HISTORY_KINDS = ("control", "event")


class Curve:
    """Per-step points (``{"step", "lr", "losses": {name: value}}``), at most ``limit``,
    decimated by doubling the stride when full."""

    def __init__(self, limit: int = 2000) -> None:
        self.limit = max(int(limit), 2)
        self.stride = 1
        self.points: list[dict[str, Any]] = []
        self._seen = 0

    def add(self, point: dict[str, Any]) -> None:
        self._seen += 1
        if (self._seen - 1) % self.stride:
            return
        self.points.append(point)
        if len(self.points) > self.limit:
            self.points = self.points[1::2]
            self.stride *= 2
            self._seen = self.stride * len(self.points)  # keeps the phase of what is kept


class EventBuffer:
    """The bounded in-memory record of a run; see the module docstring."""

    def __init__(self, capacity: int = 4096, curve_points: int = 2000, keep: int = 500) -> None:
        self._cond = threading.Condition()
        self._ring: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=max(int(capacity), 1))
        self._seq = 0
        self.closed = False
        self.curve = Curve(curve_points)
        self.epochs: deque[dict[str, Any]] = deque(maxlen=keep)
        self.history: deque[dict[str, Any]] = deque(maxlen=keep)
        self.validation: dict[str, Any] | None = None
        self.state: dict[str, Any] = {"status": "starting"}

    @property
    def seq(self) -> int:
        """The number of the latest event (0: none yet)."""
        return self._seq

    def publish(self, kind: str, data: dict[str, Any], *, state: dict[str, Any] | None = None
                ) -> int:
        """Add one event (``data`` must not be changed afterwards) and merge ``state`` into
        the run's current state; wakes the readers. Returns the event's number."""
        with self._cond:
            self._seq += 1
            self._ring.append((self._seq, kind, data))
            if kind == "step":
                self.curve.add(data)
            elif kind == "epoch":
                self.epochs.append(data)
            elif kind == "eval":
                self.validation = data
            elif kind in HISTORY_KINDS:
                self.history.append(data)
            if state:
                self.state.update(state)
            self._cond.notify_all()
            return self._seq

    def update_state(self, **fields: Any) -> None:
        """Merge ``fields`` into the current state without an event of their own."""
        with self._cond:
            self.state.update(fields)

    def since(self, seq: int, timeout: float) -> tuple[list[tuple[int, str, dict[str, Any]]],
                                                       bool]:
        """The events after number ``seq``, waiting up to ``timeout`` seconds for one; and
        whether some were already dropped from the ring (then reload the snapshot)."""
        with self._cond:
            if self._seq <= seq and not self.closed and timeout > 0:
                self._cond.wait(timeout)
            if not self._ring or self._seq <= seq:
                return [], False
            first = self._ring[0][0]
            gap = seq + 1 < first
            start = max(seq + 1 - first, 0)
            return [self._ring[i] for i in range(start, len(self._ring))], gap

    def snapshot(self) -> dict[str, Any]:
        """Everything a page needs to draw the run now (copies; ``seq`` to stream from)."""
        with self._cond:
            return {"seq": self._seq, "state": dict(self.state),
                    "curve": list(self.curve.points), "curve_stride": self.curve.stride,
                    "epochs": list(self.epochs), "validation": self.validation,
                    "history": list(self.history)}

    def close(self) -> None:
        """Wake every reader for the last time (the run is over)."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()


__all__ = ["EventBuffer", "Curve", "HISTORY_KINDS"]
