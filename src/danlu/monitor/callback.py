"""The :class:`Monitor` callback: a run's live page, its control API, chat bot and notices.

The training thread only publishes into the :class:`~danlu.monitor.events.EventBuffer` (a few
microseconds a step) and hands commands to ``trainer.control``
(:class:`~danlu.train.control.RunControl`), which applies them between two steps. Serving,
chatting, drawing pictures and posting notices happen in other threads, from the buffer.

Only rank 0 of a distributed run serves, listens and notifies; every rank applies its
decisions (see :mod:`danlu.train.control`).

While it serves, the run folder holds ``monitor.json`` (mode 0600: the page's ``url``, the
``pid`` and a per-run ``secret`` that ``danlu runs control`` sends as its bearer token); it is
removed when the run ends.

Example:
    >>> import danlu                                                   # doctest: +SKIP
    >>> from danlu.monitor import Monitor                              # doctest: +SKIP
    >>> mon = Monitor(port=0, notify=["https://ntfy.sh/my-runs"])      # doctest: +SKIP
    >>> danlu.train("shapes", epochs=10, callbacks=[mon.start()])      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets as _secrets
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from danlu.errors import ConfigError
from danlu.monitor.events import EventBuffer
from danlu.monitor.notify import Notifier, parse_every
from danlu.monitor.payloads import Notice, Target, check_target, parse_target
from danlu.monitor.runs import MONITOR_FILE, STOPPED
from danlu.monitor.secrets import Secrets
from danlu.monitor.stats import (
    MEMORY_EVERY,
    Divergence,
    Speed,
    evaluations_left,
    gpu_memory,
    process_memory,
)
from danlu.train.callbacks import Callback
from danlu.train.control import parse_command

if TYPE_CHECKING:
    from danlu.monitor.chat import ChatBot
    from danlu.train.trainer import Trainer, TrainResult

SAMPLE_THRESHOLD = 0.3  # the sample pictures show predictions scoring at least this


class Monitor(Callback):
    """Watch and steer a run: see the module docstring and ``docs/monitor.md``.

    Args:
        port: the live page's port (0: a free one; None: no page, only chat and notices).
        host: the address it listens on (not loopback: ``token`` is required).
        token: the bearer token of the page and its API.
        chat: a chat bot (:func:`danlu.monitor.options.make_bot`) that takes commands.
        notify: notification targets, ``[KIND:]URL`` (:mod:`danlu.monitor.payloads`).
        notify_every: ``"N"`` epochs or ``"Nm"`` minutes between progress notices.
        secrets: where notification tokens and signing secrets are read.
        samples: validation images drawn with the model's predictions after each validation
            (0: none; each costs one forward pass of one image).
    """

    def __init__(self, port: int | None = 0, host: str = "127.0.0.1", *,
                 token: str | None = None, chat: ChatBot | None = None,
                 notify: Sequence[str | Target] = (), notify_every: str | None = None,
                 secrets: Secrets | None = None, samples: int = 4) -> None:
        self.buffer = EventBuffer()
        self.secret = _secrets.token_urlsafe(24)
        self.server = None
        if port is not None:
            from danlu.monitor.server import MonitorServer

            self.server = MonitorServer(self, host, port, token=token, secret=self.secret)
        self.bot = chat
        self.secrets = secrets or Secrets()
        self.targets = [t if isinstance(t, Target) else parse_target(t) for t in notify]
        for t in self.targets:
            check_target(t, self.secrets)
        self.every = parse_every(notify_every)
        self.samples = max(int(samples), 0)
        self.notifier: Notifier | None = None
        self.trainer: Trainer | None = None
        self.started = self.closed = False
        self.speed = Speed(1)
        self.divergence = Divergence()
        self._lock = threading.Lock()
        self._sample_data: tuple[list[Any], list[Any], list[str]] | None = None
        self._sample_png: bytes | None = None
        self._val_seconds = 0.0
        self._memory_at = -MEMORY_EVERY
        self._progress_at = time.monotonic()

    # -- life ----------------------------------------------------------------------------------
    @property
    def url(self) -> str | None:
        """The live page's address once serving."""
        return self.server.url if self.server is not None and self.started else None

    def start(self) -> Monitor:
        """Listen (raising :class:`ConfigError` on a taken port) and connect the chat bot,
        before training starts. Does nothing on a non-zero rank of a torchrun launch."""
        if self.started or self.closed or os.environ.get("RANK", "0") != "0":
            return self
        if self.server is not None:
            self.server.start()
        try:
            if self.bot is not None:
                self.bot.start(self)
        except BaseException:
            if self.server is not None:
                self.server.close()
            raise
        if self.targets:
            self.notifier = Notifier(self.targets, self.secrets, on_failure=self._notify_failed)
        self.started = True
        return self

    def close(self) -> None:
        """Send the last notices (waiting a few seconds at most), stop serving and polling,
        remove ``monitor.json``. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        if self.bot is not None:
            self.bot.close()
        if self.notifier is not None:
            self.notifier.close()
        self.buffer.close()
        if self.server is not None:
            self.server.close()
        if self.trainer is not None:
            path = self.trainer.run_dir / MONITOR_FILE
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                if orjson.loads(path.read_bytes()).get("secret") == self.secret:
                    path.unlink()

    @property
    def active(self) -> bool:
        return self.trainer is not None and not self.closed

    # -- hooks (training thread) ---------------------------------------------------------------
    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.is_main or self.closed:
            return
        self.start()
        self.trainer = trainer
        cfg = trainer.config
        self.speed = Speed(cfg.batch)
        info = {"status": "running", "run": trainer.run_dir.name, "run_dir": str(trainer.run_dir),
                "model": trainer.model_config.get("name", cfg.model), "device": str(trainer.device),
                "world_size": trainer.world_size, "batch": cfg.batch, "img_size": cfg.img_size,
                "epoch": trainer.epoch, "total_epochs": trainer.total_epochs,
                "step": trainer.step, "batches_per_epoch": trainer.batches_per_epoch,
                "total_steps": trainer.schedule.total_steps,
                "eval_every": trainer.eval_every, "classes": list(trainer.class_names),
                "resumed": trainer.resume_from is not None, "paused": False,
                "base_lr": trainer.schedule.base_lr}
        self.buffer.publish("state", info, state=info)
        if self.server is not None and self.started:
            self._write_monitor_file(trainer.run_dir)
        what = "resumed" if trainer.resume_from is not None else "started"
        self.notice("start", f"{what}: {info['model']} on {info['device']}, "
                    f"{len(trainer.train_data)} images, {trainer.total_epochs} epochs")

    def on_step(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if not self.active:
            return
        elapsed = trainer.elapsed_now()
        self.speed.tick(elapsed, first_of_epoch=trainer.batch_in_epoch == 1)
        eta = self.speed.eta(trainer.schedule.total_steps - trainer.step,
                             evaluations_left(trainer.epoch, trainer.total_epochs,
                                              trainer.eval_every) if trainer.validator else 0,
                             self._val_seconds)
        ips = self.speed.images_per_second
        data = {"step": trainer.step, "epoch": trainer.epoch + 1, "batch": trainer.batch_in_epoch,
                "lr": logs.get("lr"), "t": round(elapsed, 3),
                "losses": {k: v for k, v in logs.items() if k not in ("lr", "grad_norm")},
                "eta": None if eta is None else round(eta, 1),
                "ips": None if ips is None else round(ips, 2)}
        state = {"step": data["step"], "epoch": data["epoch"], "batch_in_epoch": data["batch"],
                 "lr": data["lr"], "loss": logs.get("loss"), "eta": data["eta"],
                 "ips": data["ips"], "elapsed": data["t"], "total_epochs": trainer.total_epochs,
                 "total_steps": trainer.schedule.total_steps}
        self.buffer.publish("step", data, state=state)
        now = time.monotonic()
        if now - self._memory_at >= MEMORY_EVERY:
            self._memory_at = now
            mem = {"cpu": process_memory(), "gpu": gpu_memory(trainer.device)}
            self.buffer.publish("state", {"memory": mem}, state={"memory": mem})
        alarm = self.divergence.check(float(logs.get("loss", math.nan)))
        if alarm == "nonfinite":
            self.notice("nonfinite", f"loss is {logs.get('loss')} at step {trainer.step}: the "
                        "step was skipped")
        elif alarm == "diverging":
            self.notice("diverging", f"loss {logs['loss']:.4g} at step {trainer.step} is "
                        f"{logs['loss'] / max(self.divergence.average or 1e-12, 1e-12):.0f}x "
                        "its running average: diverging?")
        if self.every and self.every[0] == "minutes" and now - self._progress_at >= \
                self.every[1] * 60:
            self._progress_at = now
            self.notice("progress", self.status_text())

    def on_eval(self, trainer: Trainer, result: Any) -> None:
        if not self.active:
            return
        table = {"epoch": trainer.epoch + 1, "step": trainer.step,
                 "protocol": getattr(result, "protocol", None),
                 "metrics": {k: float(v) for k, v in getattr(result, "metrics", {}).items()},
                 "per_class": dict(getattr(result, "per_class", {}) or {}),
                 "num_gt": dict(getattr(result, "num_gt", {}) or {})}
        table["samples"] = self._predict_samples(trainer)
        self.buffer.publish("eval", table)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if not self.active:
            return
        if trainer.evaluated:
            self._val_seconds = float(row.get("val_time", 0.0))
        self.buffer.publish("epoch", {**row, "step": trainer.step})
        if self.every and self.every[0] == "epochs" and (trainer.epoch + 1) % self.every[1] == 0:
            self._progress_at = time.monotonic()
            self.notice("progress", self.status_text())

    def on_event(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if not self.active:
            return
        kind = record.get("event")
        state: dict[str, Any] = {}
        if kind == "control":
            if record.get("action") in ("pause", "resume"):
                state["paused"] = record["action"] == "pause"
                state["status"] = "paused" if state["paused"] else "running"
            elif record.get("action") == "set":
                state[record["key"]] = record["value"]
                if record["key"] == "lr":
                    state["base_lr"] = trainer.schedule.base_lr
            elif record.get("action") == "stop":
                state["status"] = "stopping"
        elif kind == "end":
            state["status"] = "stopped" if record.get("reason") in STOPPED else "finished"
        elif kind in ("error", "interrupted"):
            state["status"] = "crashed" if kind == "error" else "stopped"
        self.buffer.publish("control" if kind == "control" else "event", record)
        if kind in ("extended", "time_budget"):
            state["total_epochs"], state["total_steps"] = record["epochs"], record["steps"]
        if state:
            self.buffer.publish("state", state, state=state)
        if kind == "best":
            self.notice("best", f"new best {record.get('metric')} {record.get('fitness'):.4f} "
                        f"at epoch {trainer.epoch + 1}")
        elif kind == "error":
            self.notice("crash", f"crashed at step {trainer.step}: {record.get('error')}")
            self.close()
        elif kind == "interrupted":
            self.notice("end", f"interrupted at step {trainer.step} (Ctrl-C)")
            self.close()

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        if not self.active:
            return
        from danlu.train.callbacks import val_text

        tail = f"; best.pt {val_text(result.metrics)}" if val_text(result.metrics) else ""
        self.notice("end", f"{result.stop_reason} after {result.epochs} epochs, "
                    f"{result.steps} steps{tail}")
        self.close()

    # -- for the server and the bots (other threads) -------------------------------------------
    def control_api(self, doc: Any, source: str, wait: float) -> tuple[int, dict[str, Any]]:
        """Queue a command for the trainer; ``(HTTP status, answer)``: 200 applied within
        ``wait`` s, 202 queued, 400 bad command, 409 no run to steer."""
        try:
            cmd = parse_command(doc, source=source)
        except ConfigError as e:
            return 400, {"error": {"code": "bad_command", "message": e.message,
                                   "hint": e.hint}}
        trainer = self.trainer
        if trainer is None or self.closed:
            why = "the run has not started yet" if trainer is None else "the run is over"
            return 409, {"error": {"code": "not_running", "message": why}}
        trainer.control.submit(cmd)
        applied = cmd.done.wait(wait) if wait > 0 else False
        return (200 if applied else 202), {"id": cmd.id, "applied": applied,
                                           "step": cmd.applied_step, "command": cmd.to_dict()}

    def control(self, doc: dict[str, Any], source: str, wait: float) -> str:
        """A chat command's answer."""
        status, answer = self.control_api({**doc, "source": source}, source, wait)
        what = doc["action"] + (f" {doc['key']}={doc['value']}" if doc.get("key") else "")
        if status == 200:
            return f"{what}: done after step {answer['step']}"
        if status == 202:
            return f"{what}: queued, it applies after the current step"
        return f"{what}: {answer['error']['message']}"

    def status_text(self) -> str:
        """One paragraph on the run now (``/status``, progress notices)."""
        s = self.buffer.snapshot()["state"]
        parts = [f"{s.get('run', '?')}: {s.get('status')}",
                 f"epoch {s.get('epoch', 0)}/{s.get('total_epochs', '?')}",
                 f"step {s.get('step', 0)}/{s.get('total_steps', '?')}"]
        if s.get("loss") is not None:
            parts.append(f"loss {s['loss']:.4g}")
        if s.get("lr") is not None:
            parts.append(f"lr {s['lr']:.3g}")
        if s.get("ips"):
            parts.append(f"{s['ips']:.1f} img/s")
        if s.get("eta") is not None:
            parts.append(f"ETA {_duration(s['eta'])}")
        val = self.buffer.validation
        if val and val.get("metrics"):
            from danlu.train.callbacks import val_text

            parts.append(f"{val_text(val['metrics'])} (epoch {val['epoch']})")
        return ", ".join(parts)

    def plot_png(self) -> bytes | None:
        snap = self.buffer.snapshot()
        if not snap["curve"]:
            return None
        from danlu.monitor.pictures import loss_curve_png

        return loss_curve_png(snap["curve"], snap["epochs"], title=snap["state"].get("run", ""))

    def samples_png(self) -> bytes | None:
        with self._lock:
            if self._sample_png is None and self._sample_data is not None:
                from danlu.monitor.pictures import samples_png

                self._sample_png = samples_png(*self._sample_data)
            return self._sample_png

    def log(self, kind: str, **data: Any) -> None:
        """A line in ``history.jsonl`` (and on the page) from a thread other than training's:
        refused chat commands, failed notices."""
        trainer = self.trainer
        record = {"time": time.time(), "event": kind, **data}
        if trainer is not None:
            record.update(epoch=trainer.epoch, step=trainer.step)
            with self._lock, contextlib.suppress(OSError), \
                    open(trainer.run_dir / "history.jsonl", "ab") as f:
                f.write(orjson.dumps(record) + b"\n")  # one append: whole lines, any thread
        self.buffer.publish("event", record)

    # -- helpers -------------------------------------------------------------------------------
    def notice(self, event: str, text: str) -> None:
        """Queue a notification (returns at once; nothing without targets)."""
        if self.notifier is None:
            return
        t = self.trainer
        run = t.run_dir.name if t is not None else "?"
        fields: dict[str, Any] = {}
        if t is not None:
            fields = {"run_dir": str(t.run_dir), "epoch": t.epoch + 1, "step": t.step,
                      "total_epochs": t.total_epochs, "metrics": dict(t.metrics),
                      "best_fitness": t.best_fitness}
        self.notifier.send(Notice(event, run, f"danlu {run}: {text}", fields))

    def _notify_failed(self, target: Target, notice: Notice, why: str) -> None:
        self.log("notify_failed", kind=target.kind, host=target.host, notice=notice.event,
                 error=why)

    def _write_monitor_file(self, run_dir: Path) -> None:
        """``monitor.json`` with mode 0600 (it holds the run's secret)."""
        doc = {"url": self.server.local_url, "secret": self.secret, "pid": os.getpid(),
               "started": time.time()}
        path = run_dir / MONITOR_FILE
        tmp = path.with_name(f".{MONITOR_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(doc))
        os.replace(tmp, path)

    def _predict_samples(self, trainer: Trainer) -> int | None:
        """Predict a few validation images for the page (a failure only warns)."""
        data = trainer.val_data
        if not self.samples or data is None or not len(data):
            return None
        try:
            from danlu.infer.predictor import Predictor

            model = trainer.ema.module if trainer.ema is not None else trainer.unwrapped_model
            options = dict(trainer.validator.predictor_options) if trainer.validator else {}
            options.pop("multi_label", None)
            options["score_threshold"] = max(float(options.get("score_threshold", 0.0)),
                                             SAMPLE_THRESHOLD)
            predictor = Predictor(model, device=trainer.device, **options)
            n = min(self.samples, len(data))
            picks = sorted({round(i * (len(data) - 1) / max(n - 1, 1)) for i in range(n)})
            images = [data.samples[i].load_image() for i in picks]
            dets = predictor.predict(images)
        except Exception as e:  # noqa: BLE001 - pictures are a nicety, training goes on
            print(f"warning: monitor: no sample pictures ({type(e).__name__}: {e})",
                  file=sys.stderr, flush=True)
            self.samples = 0
            return None
        with self._lock:
            self._sample_data = (images, list(dets), list(trainer.class_names))
            self._sample_png = None
        return trainer.step


def _duration(seconds: float) -> str:
    """``3h 05m``, ``4m 10s``, ``12s``.

    Example:
        >>> _duration(11100), _duration(250), _duration(12.4)
        ('3h 05m', '4m 10s', '12s')
    """
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


__all__ = ["Monitor", "MONITOR_FILE"]
