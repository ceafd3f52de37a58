"""Steering a run while it trains, and telling a live run from a dead one.

:class:`RunControl` (one per :class:`~danlu.train.trainer.Trainer`: ``trainer.control``) takes
commands from any thread (:meth:`RunControl.submit`: what the monitor's page, HTTP API and chat
bots call) and from the run's control file (``RUN/control.jsonl``: what ``danlu runs control``
appends to when the run has no monitor), and applies them between two optimizer steps:

* ``stop``: stop after the current step; ``last.pt`` is written there (mid-epoch, without the
  epoch's validation) and ``danlu train --resume RUN`` continues exactly;
* ``pause`` / ``resume``: no step while paused (a ``--time`` budget does not count the pause);
* ``save``: write ``last.pt`` now;
* ``set lr=V``: the next step's learning rate is V and the schedule keeps its shape from there
  (its peak is scaled by the same factor); it travels in ``last.pt`` with the schedule;
* ``set eval_every=N``: evaluate every N epochs from now on; saved in ``last.pt``.

Each applied command is a ``control`` line of ``history.jsonl`` naming who sent it (``source``:
``page``, ``cli``, ``api`` or ``chat:<id>``). Under DDP rank 0 decides and every rank applies the
same decision at the same step: one small tensor is broadcast after every step.

The status file ``RUN/status.json`` (rank 0) names the process (host, boot, pid and the pid's
start time) and a thread refreshes its ``heartbeat`` every :data:`HEARTBEAT` seconds, so that
``danlu runs list`` tells a run that trains from one that was killed.

Example:
    >>> c = parse_command({"action": "set", "key": "lr", "value": "0.001"}, source="cli")
    >>> c.action, c.key, c.value, c.source
    ('set', 'lr', 0.001, 'cli')
    >>> parse_assignment("eval_every=2")
    ('eval_every', 2)
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from danlu.errors import ConfigError

if TYPE_CHECKING:
    from danlu.train.trainer import Trainer

ACTIONS = ("stop", "pause", "resume", "save", "set")
CONTROL_FILE = "control.jsonl"
STATUS_FILE = "status.json"
#: seconds between two writes of ``status.json`` while the process lives
HEARTBEAT = 10.0
#: how often the control file is looked at, at most (seconds)
FILE_POLL = 0.2
#: while paused, how long rank 0 waits for a command before the ranks meet again (seconds)
PAUSE_TICK = 0.25
_SOURCE = re.compile(r"^(page|cli|api|chat:[\w.@:-]{1,64})$")


def _positive_float(value: Any) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError("expected a number > 0")
    return v


def _positive_int(value: Any) -> int:
    v = float(value)
    if not (v.is_integer() and v >= 1):
        raise ValueError("expected an integer >= 1")
    return int(v)


#: what ``set`` may change, and how its value is read
SETTABLE = {"lr": _positive_float, "eval_every": _positive_int}


@dataclass
class Command:
    """One control action. ``key`` / ``value`` only for ``set``; ``id`` names it in
    ``history.jsonl``; ``done`` is set (and ``applied_step`` filled) once it is applied."""

    action: str
    key: str | None = None
    value: float | int | None = None
    source: str = "api"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    applied_step: int | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The command as ``history.jsonl`` and the control file write it."""
        doc: dict[str, Any] = {"action": self.action, "source": self.source, "id": self.id}
        if self.action == "set":
            doc.update(key=self.key, value=self.value)
        return doc


def parse_assignment(text: str) -> tuple[str, float | int]:
    """``"lr=0.001"`` (or ``"lr 0.001"``) -> ``("lr", 0.001)``, checked against
    :data:`SETTABLE`; raises :class:`ConfigError`."""
    parts = re.split(r"\s*=\s*|\s+", str(text).strip(), maxsplit=1)
    if len(parts) != 2 or not parts[1]:
        raise ConfigError(f"set {text!r}: expected KEY=VALUE",
                          hint="e.g. lr=0.001 or eval_every=2")
    return parts[0], _settable(parts[0], parts[1])


def _settable(key: str, value: Any) -> float | int:
    if key not in SETTABLE:
        raise ConfigError(f"set: {key!r} cannot be changed while training",
                          hint="one of " + ", ".join(SETTABLE))
    try:
        return SETTABLE[key](value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"set {key}={value!r}: {e}") from None


def parse_command(doc: Any, source: str = "api") -> Command:
    """A :class:`Command` from a JSON document ``{"action": ..., "key": ..., "value": ...,
    "source": ...}`` (``source`` defaults to ``source``); raises :class:`ConfigError`."""
    if not isinstance(doc, dict):
        raise ConfigError("a control command is a JSON object with an action")
    action = doc.get("action")
    if action not in ACTIONS:
        raise ConfigError(f"unknown control action {action!r}", hint="one of " + ", ".join(ACTIONS))
    src = str(doc.get("source") or source)
    if not _SOURCE.match(src):
        raise ConfigError(f"control source {src!r}: expected page, cli, api or chat:<id>")
    cmd = Command(action, source=src)
    if doc.get("id") is not None:
        cmd.id = str(doc["id"])[:64]
    if action == "set":
        key = str(doc.get("key", ""))
        cmd.key, cmd.value = key, _settable(key, doc.get("value"))
    return cmd


@dataclass
class Decision:
    """What rank 0 decided after one step (the fold of the commands it received)."""

    stop: bool = False
    save: bool = False
    paused: bool | None = None
    lr: float | None = None
    eval_every: int | None = None

    def fold(self, cmd: Command) -> None:
        if cmd.action == "stop":
            self.stop = True
        elif cmd.action == "save":
            self.save = True
        elif cmd.action in ("pause", "resume"):
            self.paused = cmd.action == "pause"
        elif cmd.key == "lr":
            self.lr = float(cmd.value)
        else:
            self.eval_every = int(cmd.value)

    def to_list(self) -> list[float]:
        """Five numbers, the tensor the ranks share (NaN / 0 / -1: no change)."""
        return [float(self.stop), float(self.save),
                -1.0 if self.paused is None else float(self.paused),
                math.nan if self.lr is None else self.lr, float(self.eval_every or 0)]

    @classmethod
    def from_list(cls, v: list[float]) -> Decision:
        return cls(v[0] > 0, v[1] > 0, None if v[2] < 0 else v[2] > 0,
                   None if math.isnan(v[3]) else v[3], int(v[4]) or None)


def set_lr(trainer: Trainer, value: float) -> None:
    """Make ``value`` the next step's learning rate, scaling the schedule's peak so that its
    shape (warmup, decay) goes on from there."""
    schedule = trainer.schedule
    factor = schedule.factor(trainer.step)
    schedule.base_lr = value / factor if factor > 0 else value


class RunControl:
    """Commands in, decisions applied between steps; see the module docstring."""

    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.paused = False
        self._file: Path | None = None
        self._offset = 0
        self._next_poll = 0.0
        self._status: StatusFile | None = None
        self._pending_done: list[Command] = []  # decided, marked done once applied

    # -- any thread --------------------------------------------------------------------------
    def submit(self, command: Command) -> Command:
        """Queue ``command`` (from any thread); it is applied after the current step."""
        self._inbox.put(command)
        return command

    # -- the training loop -------------------------------------------------------------------
    def begin(self, trainer: Trainer) -> None:
        """Before the first step: start the status file, skip old lines of the control file
        (a command sent to an earlier session is not this one's)."""
        if not trainer.is_main:
            return
        self._file = trainer.run_dir / CONTROL_FILE
        with contextlib.suppress(OSError):
            self._offset = self._file.stat().st_size
        self._status = StatusFile(trainer.run_dir / STATUS_FILE, lambda: _progress(trainer, self))
        self._status.start()

    def after_step(self, trainer: Trainer) -> None:
        """Apply what arrived during the step; stay here while paused."""
        self._apply(trainer, self._decide(trainer, 0.0))
        if not self.paused:
            return
        start = time.monotonic()
        self._beat()
        while self.paused and trainer.stop_reason is None:
            self._apply(trainer, self._decide(trainer, PAUSE_TICK))
        trainer.discount_time(time.monotonic() - start)
        self._beat()

    def close(self, trainer: Trainer) -> None:
        """After the run (or its failure): the status file's last write."""
        if self._status is not None:
            self._status.close()
            self._status = None

    # -- internals -----------------------------------------------------------------------------
    def _beat(self) -> None:
        if self._status is not None:
            self._status.write()

    def _decide(self, trainer: Trainer, wait: float) -> Decision:
        decision = Decision()
        applied: list[Command] = []
        if trainer.is_main:
            for cmd in self._collect(trainer, wait):
                decision.fold(cmd)
                applied.append(cmd)
                trainer.event("control", **cmd.to_dict())
        if trainer.world_size > 1:
            from danlu.train.distributed import broadcast_floats

            decision = Decision.from_list(broadcast_floats(decision.to_list()))
        self._pending_done = applied
        return decision

    def _apply(self, trainer: Trainer, d: Decision) -> None:
        if d.lr is not None:
            set_lr(trainer, d.lr)
        if d.eval_every is not None:
            trainer.eval_every = d.eval_every
        if d.save:
            trainer.save_last()
        if d.paused is not None:
            self.paused = d.paused
        if d.stop:
            self.paused = False
            trainer.request_stop("stopped", finish_epoch=False)
        for cmd in self._pending_done:
            cmd.applied_step = trainer.step
            cmd.done.set()
        self._pending_done = []

    def _collect(self, trainer: Trainer, wait: float) -> list[Command]:
        """The commands that arrived: the inbox (waiting up to ``wait`` s for the first),
        then the new complete lines of the control file."""
        got: list[Command] = []
        try:
            got.append(self._inbox.get(timeout=wait) if wait > 0 else self._inbox.get_nowait())
            while True:
                got.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        now = time.monotonic()
        if self._file is not None and (now >= self._next_poll or wait > 0):
            self._next_poll = now + FILE_POLL
            got += self._read_file(trainer)
        return got

    def _read_file(self, trainer: Trainer) -> list[Command]:
        try:
            size = self._file.stat().st_size
            if size <= self._offset:
                return []
            with open(self._file, "rb") as f:
                f.seek(self._offset)
                chunk = f.read(size - self._offset)
        except OSError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written waits for its end
        self._offset += len(complete)
        out = []
        for line in complete.splitlines():
            if not line.strip():
                continue
            try:
                out.append(parse_command(orjson.loads(line), source="cli"))
            except (orjson.JSONDecodeError, ConfigError) as e:
                trainer.event("control_refused", error=str(getattr(e, "message", e)),
                              line=line[:200].decode("utf-8", "replace"), source="file")
        return out


def _progress(trainer: Trainer, control: RunControl) -> dict[str, Any]:
    """What the status file says of the run right now (read from the heartbeat thread)."""
    return {"step": trainer.step, "epoch": trainer.epoch, "total_epochs": trainer.total_epochs,
            "elapsed": round(trainer.elapsed_now(), 3), "paused": control.paused,
            "world_size": trainer.world_size}


# -- the status file ---------------------------------------------------------------------------
def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks after boot (Linux ``/proc``), which
    tells a live process from a later one that reuses its pid; None where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text[text.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def boot_id() -> str | None:
    """This boot of the machine (pids start over at each boot); None where unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


class StatusFile:
    """``status.json``: who runs the run (``host``, ``boot``, ``pid``, ``pid_start``), when
    it ``started``, its last ``heartbeat`` and progress; ``ended`` once the process is done
    with it. A daemon thread rewrites it every :data:`HEARTBEAT` seconds."""

    def __init__(self, path: Path, progress: Any) -> None:
        self.path = path
        self.progress = progress
        pid = os.getpid()
        self.identity = {"pid": pid, "host": socket.gethostname(), "boot": boot_id(),
                         "pid_start": process_start(pid), "started": time.time()}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="danlu-heartbeat", daemon=True)

    def start(self) -> None:
        self.write()
        self._thread.start()

    def write(self, **extra: Any) -> None:
        from danlu.data._atomic import write_bytes_atomic

        doc = {**self.identity, **self.progress(), "heartbeat": time.time(), **extra}
        with self._lock, contextlib.suppress(OSError):  # a full disk must not stop training
            write_bytes_atomic(self.path, orjson.dumps(doc))

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            self.write()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.write(ended=time.time())


__all__ = ["RunControl", "Command", "Decision", "parse_command", "parse_assignment", "set_lr",
           "ACTIONS", "SETTABLE", "CONTROL_FILE", "STATUS_FILE", "StatusFile", "process_start",
           "boot_id"]
