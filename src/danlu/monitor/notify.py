"""Notifications that never slow or fail training.

:class:`Notifier` gives every target its own daemon thread and bounded queue: the training
thread only drops a :class:`~danlu.monitor.payloads.Notice` into each queue (when a queue is
full its oldest notice goes). The thread posts with a :data:`TIMEOUT` per attempt, tries
:data:`ATTEMPTS` times with a doubling pause after network errors, 429 and 5xx, and then gives
up with a warning on stderr (one per target per :data:`WARN_EVERY` seconds) and a
``notify_failed`` line in ``history.jsonl``. At the end :meth:`Notifier.close` waits a bounded
time for the last notices (the run's end, or its crash) to go out.

Example:
    >>> parse_every("5"), parse_every("30m")
    (('epochs', 5.0), ('minutes', 30.0))
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from danlu.errors import ConfigError
from danlu.monitor.http import redact, request
from danlu.monitor.payloads import (
    Notice,
    Target,
    build_request,
    check_target,
    delivered,
    parse_target,
)
from danlu.monitor.secrets import NAMES, Secrets

TIMEOUT = 2.0  # seconds per attempt
ATTEMPTS = 3
BACKOFF = 0.5  # seconds before the second attempt, doubled after each
QUEUE = 32  # notices waiting per target
WARN_EVERY = 60.0  # seconds between two warnings about one target

Failure = Callable[[Target, Notice, str], None]


def parse_every(text: str | None) -> tuple[str, float] | None:
    """``--notify-every``: ``"N"`` epochs or ``"Nm"`` minutes (None: only events)."""
    if text is None or str(text).strip() == "":
        return None
    t = str(text).strip().lower()
    unit = "minutes" if t.endswith("m") else "epochs"
    try:
        n = float(t.rstrip("m"))
    except ValueError:
        n = 0.0
    if not n > 0 or (unit == "epochs" and not n.is_integer()):
        raise ConfigError(f"--notify-every {text!r}: expected N (epochs) or Nm (minutes)",
                          hint="e.g. --notify-every 5 or --notify-every 30m")
    return unit, n


class _Worker:
    """One target's queue and thread."""

    def __init__(self, target: Target, secrets: Secrets, on_failure: Failure | None,
                 timeout: float, attempts: int, backoff: float) -> None:
        self.target, self.secrets, self.on_failure = target, secrets, on_failure
        self.timeout, self.attempts, self.backoff = timeout, attempts, backoff
        self.queue: queue.Queue[Notice | None] = queue.Queue(maxsize=QUEUE)
        self.idle = threading.Event()
        self.idle.set()
        self.sent = self.failed = self.dropped = 0
        self._last_warning = -WARN_EVERY
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"danlu-notify-{target.kind}")
        self.thread.start()

    def offer(self, notice: Notice | None) -> None:
        """Queue without waiting; a full queue loses its oldest notice."""
        with self._lock:
            self.idle.clear()
            while True:
                try:
                    self.queue.put_nowait(notice)
                    return
                except queue.Full:
                    try:
                        self.queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass

    def _run(self) -> None:
        while True:
            notice = self.queue.get()
            if notice is None:
                self.idle.set()
                return
            self._deliver(notice)
            with self._lock:
                if self.queue.empty():
                    self.idle.set()

    def _deliver(self, notice: Notice) -> None:
        why, pause = "", self.backoff
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(pause)
                pause *= 2
            try:
                req = build_request(self.target, notice, self.secrets)
                resp = request(req.method, req.url, data=req.body, headers=req.headers,
                               timeout=self.timeout)
            except OSError as e:
                why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                continue
            ok, retry, why = delivered(self.target.kind, resp)
            if ok:
                self.sent += 1
                return
            if not retry:
                break
        self.failed += 1
        why = redact(why, *(self.secrets.get(n) for n in NAMES))
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            print(f"warning: notification to {self.target.host} ({self.target.kind}) failed: "
                  f"{why}; training goes on", file=sys.stderr, flush=True)
        if self.on_failure is not None:
            try:
                self.on_failure(self.target, notice, why)
            except Exception:  # noqa: BLE001 - a failing logger must not end the thread
                pass


class Notifier:
    """Asynchronous delivery of notices to ``targets`` (``[KIND:]URL`` strings or
    :class:`Target`); see the module docstring.

    Args:
        targets: where to post.
        secrets: tokens and signing secrets (:class:`~danlu.monitor.secrets.Secrets`).
        on_failure: called from the sending thread with ``(target, notice, why)`` after the
            last attempt failed.
        timeout / attempts / backoff: per attempt, attempts per notice, first pause.
    """

    def __init__(self, targets: Sequence[str | Target], secrets: Secrets | None = None, *,
                 on_failure: Failure | None = None, timeout: float = TIMEOUT,
                 attempts: int = ATTEMPTS, backoff: float = BACKOFF) -> None:
        self.secrets = secrets or Secrets()
        self.targets = [t if isinstance(t, Target) else parse_target(t) for t in targets]
        for t in self.targets:
            check_target(t, self.secrets)
        self.on_failure = on_failure
        self._workers = [_Worker(t, self.secrets, self._failed, timeout, attempts, backoff)
                         for t in self.targets]
        self.closed = False

    def _failed(self, target: Target, notice: Notice, why: str) -> None:
        if self.on_failure is not None:
            self.on_failure(target, notice, why)

    def send(self, notice: Notice) -> None:
        """Queue ``notice`` for every target; returns at once."""
        if not self.closed:
            for w in self._workers:
                w.offer(notice)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait up to ``timeout`` seconds in all for the queues to empty; True when they did."""
        deadline = time.monotonic() + timeout
        return all(w.idle.wait(max(deadline - time.monotonic(), 0.0)) for w in self._workers)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (waiting up to ``timeout`` s), then end the threads."""
        if self.closed:
            return
        self.flush(timeout)
        self.closed = True
        for w in self._workers:
            w.offer(None)

    def stats(self) -> dict[str, Any]:
        """Per target: notices ``sent``, ``failed`` and ``dropped`` (queue full)."""
        return {f"{w.target.kind}:{w.target.host}": {"sent": w.sent, "failed": w.failed,
                                                       "dropped": w.dropped}
                for w in self._workers}


__all__ = ["Notifier", "parse_every", "TIMEOUT", "ATTEMPTS", "BACKOFF"]
