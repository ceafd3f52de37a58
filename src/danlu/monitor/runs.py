"""The runs of a project folder: their status, numbers and history, and steering a live one.

A run's status comes from its files, in this order:

1. the last session's ``end`` line in ``history.jsonl`` (a session starts at ``start`` or
   ``resumed``): ``stopped`` when it ended by a stop command (reason ``stopped``),
   ``finished`` otherwise (``completed``, ``early_stopping``, ``time``, ``max_steps``);
2. an ``error`` line: ``crashed`` (its message is the detail); ``interrupted`` (Ctrl-C):
   ``stopped``;
3. ``status.json`` (:mod:`danlu.train.control`): ``running`` (``paused`` in the detail) while
   its process lives: on this machine, the pid exists and started when the file says (a pid
   reused by a later process does not count); on another machine, the heartbeat is younger
   than :data:`STALE` seconds. A run whose process is gone without an ``end`` was killed
   (SIGKILL, power loss, out of memory): ``crashed``.

Steering (:func:`control_run`): when the run serves a monitor (``monitor.json``, mode 0600,
with its address and a per-run secret) the command goes to its HTTP API and the answer says
when it was applied; otherwise it is appended to ``control.jsonl`` in the run folder, which
the trainer reads between two steps, and the answer is its ``control`` line in
``history.jsonl``.

Example:
    >>> import tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp()) / "exp"
    >>> run.mkdir()
    >>> lines = ['{"event": "start", "time": 1}', '{"event": "end", "reason": "completed"}']
    >>> _ = (run / "history.jsonl").write_text("\\n".join(lines) + "\\n")
    >>> run_status(run)
    ('finished', 'completed')
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from danlu.errors import ConfigError
from danlu.train.control import (
    CONTROL_FILE,
    STATUS_FILE,
    boot_id,
    parse_command,
    process_start,
)

MONITOR_FILE = "monitor.json"
#: seconds without a heartbeat after which a run on another machine counts as gone
STALE = 120.0
#: ``end`` reasons that mean "stopped on purpose"
STOPPED = ("stopped", "interrupted")


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The lines of ``history.jsonl`` (a line being written is skipped)."""
    path = Path(run_dir) / "history.jsonl"
    try:
        data = path.read_bytes()
    except OSError:
        return []
    out = []
    for line in data.splitlines():
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def read_results(run_dir: str | Path) -> list[dict[str, str]]:
    """The rows of the run's ``results.csv`` (read here with the csv module: listing runs
    imports no plotting or tensor library)."""
    import csv

    try:
        with open(Path(run_dir) / "results.csv", newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def last_session(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lines from the last ``start`` or ``resumed`` on."""
    for i in range(len(history) - 1, -1, -1):
        if history[i].get("event") in ("start", "resumed"):
            return history[i:]
    return history


def process_alive(status: dict[str, Any], stale: float = STALE) -> bool:
    """Whether the process ``status.json`` names still runs (see the module docstring)."""
    if status.get("ended"):
        return False
    pid = status.get("pid")
    if status.get("host") == socket.gethostname() and isinstance(pid, int):
        if status.get("boot") and boot_id() and status["boot"] != boot_id():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's live process
        started = status.get("pid_start")
        return started is None or process_start(pid) in (None, started)
    return time.time() - float(status.get("heartbeat") or 0) < stale


def run_status(run_dir: str | Path, history: list[dict[str, Any]] | None = None
               ) -> tuple[str, str]:
    """``(status, detail)``: ``running``, ``finished``, ``stopped`` or ``crashed`` (see the
    module docstring); ``unknown`` for a folder without a run's history."""
    run_dir = Path(run_dir)
    session = last_session(read_history(run_dir) if history is None else history)
    for rec in reversed(session):
        kind = rec.get("event")
        if kind == "end":
            reason = str(rec.get("reason", ""))
            if reason in STOPPED:
                return "stopped", "by a stop command" if reason == "stopped" else reason
            return "finished", reason
        if kind == "error":
            return "crashed", str(rec.get("error", ""))
        if kind == "interrupted":
            return "stopped", "interrupted"
    status = _read_json(run_dir / STATUS_FILE)
    if status is not None and process_alive(status):
        return "running", "paused" if status.get("paused") else ""
    if status is not None:
        return "crashed", "the process ended without finishing (killed?)"
    return ("crashed", "no status file") if session else ("unknown", "")


@dataclass
class RunInfo:
    """One run as ``danlu runs list`` shows it."""

    name: str
    path: str
    status: str
    detail: str = ""
    model: str | None = None
    started: float | None = None
    duration: float | None = None
    epochs: int = 0
    total_epochs: int | None = None
    steps: int = 0
    best_metric: str | None = None
    best: float | None = None
    monitor: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("config")
        return doc


def run_info(run_dir: str | Path) -> RunInfo:
    """What is known of the run in ``run_dir``."""
    run_dir = Path(run_dir)
    history = read_history(run_dir)
    status, detail = run_status(run_dir, history)
    info = RunInfo(run_dir.name, str(run_dir), status, detail)
    for rec in history:
        kind = rec.get("event")
        if kind == "start":
            info.started = info.started or rec.get("time")
            cfg = rec.get("config") or {}
            info.config, info.model = cfg, cfg.get("model")
            info.total_epochs = cfg.get("epochs")
        elif kind == "best":
            info.best, info.best_metric = rec.get("fitness"), rec.get("metric")
        elif kind in ("extended", "time_budget") and rec.get("epochs"):
            info.total_epochs = rec["epochs"]
        if isinstance(rec.get("step"), int):
            info.steps = max(info.steps, rec["step"])
    rows = read_results(run_dir)
    info.epochs = len(rows)
    st = _read_json(run_dir / STATUS_FILE) or {}
    if rows and rows[-1].get("elapsed"):
        info.duration = float(rows[-1]["elapsed"])
    if isinstance(st.get("elapsed"), (int, float)):
        info.duration = max(info.duration or 0.0, float(st["elapsed"]))
        info.steps = max(info.steps, int(st.get("step") or 0))
    saved = _read_config(run_dir / "config.yaml")  # rewritten by a resume that changed it
    if saved:
        info.config, info.model = saved, saved.get("model", info.model)
    if status == "running":
        mon = _read_json(run_dir / MONITOR_FILE)
        info.monitor = mon.get("url") if mon else None
    return info


def _read_config(path: Path) -> dict[str, Any] | None:
    """The run's ``config.yaml`` as a dict (None when it is missing or unreadable)."""
    from danlu.train.config import load_yaml

    try:
        return load_yaml(path) or None
    except ConfigError:
        return None


def list_runs(project: str | Path = "runs") -> list[RunInfo]:
    """Every run folder directly under ``project`` (one with a ``history.jsonl``), oldest
    first."""
    project = Path(project)
    if not project.is_dir():
        raise ConfigError(f"{project}: no such folder of runs",
                          hint="give the --project folder runs were written to")
    runs = [run_info(p) for p in sorted(project.iterdir())
            if p.is_dir() and (p / "history.jsonl").is_file()]
    return sorted(runs, key=lambda r: (r.started or 0.0, r.name))


# -- steering ------------------------------------------------------------------------------------
def control_run(run_dir: str | Path, docs: list[dict[str, Any]], wait: float = 30.0
                ) -> list[dict[str, Any]]:
    """Send commands (``{"action": ..., "key": ..., "value": ...}``) to a running run, in
    order; returns, per command, ``{"command", "applied", "step", "via"}``. Raises
    :class:`ConfigError` when the run is not running or a command is malformed."""
    run_dir = Path(run_dir)
    commands = [parse_command({**d, "source": "cli"}) for d in docs]
    status, detail = run_status(run_dir)
    if status != "running":
        raise ConfigError(f"{run_dir}: the run is not running ({status}"
                          + (f": {detail}" if detail else "") + ")",
                          hint=f"continue it with danlu train --resume {run_dir}"
                          if status in ("stopped", "crashed") else None)
    mon = _read_json(run_dir / MONITOR_FILE)
    results = []
    for cmd in commands:
        answer = _via_monitor(mon, cmd, wait) if mon else None
        if answer is None:
            answer = _via_file(run_dir, cmd, wait)
        results.append(answer)
    return results


def _via_monitor(mon: dict[str, Any], cmd: Any, wait: float) -> dict[str, Any] | None:
    """POST the command to the run's monitor; None when it cannot be reached."""
    from danlu.monitor.http import json_body, request

    url, secret = mon.get("url"), mon.get("secret")
    if not url or not secret:
        return None
    body, headers = json_body({**cmd.to_dict(), "wait": wait})
    headers["Authorization"] = f"Bearer {secret}"
    try:
        resp = request("POST", url.rstrip("/") + "/api/control", data=body, headers=headers,
                       timeout=wait + 5.0)
    except OSError:
        return None
    doc = resp.json() or {}
    if resp.status >= 400:
        err = doc.get("error") or {}
        raise ConfigError(f"the monitor refused {cmd.action}: {err.get('message', resp.status)}",
                          hint=err.get("hint"))
    return {"command": cmd.to_dict(), "applied": bool(doc.get("applied")),
            "step": doc.get("step"), "via": "monitor"}


def _via_file(run_dir: Path, cmd: Any, wait: float) -> dict[str, Any]:
    """Append the command to ``control.jsonl``; wait for its ``control`` line."""
    history = run_dir / "history.jsonl"
    try:
        offset = history.stat().st_size
    except OSError:
        offset = 0
    line = orjson.dumps({**cmd.to_dict(), "time": time.time()}) + b"\n"
    fd = os.open(run_dir / CONTROL_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)  # one write of one line: whole even beside another writer
    finally:
        os.close(fd)
    deadline = time.monotonic() + wait
    while True:
        step = _applied(history, offset, cmd.id)
        if step is not None or time.monotonic() >= deadline:
            return {"command": cmd.to_dict(), "applied": step is not None, "step": step,
                    "via": "file"}
        time.sleep(0.1)


def _applied(history: Path, offset: int, command_id: str) -> int | None:
    """The step of the ``control`` line of ``command_id`` written after ``offset``."""
    try:
        with open(history, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return None
    for line in data.splitlines():
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if rec.get("event") == "control" and rec.get("id") == command_id:
            return int(rec.get("step", 0))
    return None


__all__ = ["RunInfo", "run_info", "run_status", "list_runs", "read_history", "read_results",
           "control_run",
           "process_alive", "last_session", "STALE"]
