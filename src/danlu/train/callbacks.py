"""Callbacks: what happens around the loop without changing it.

Subclass :class:`Callback` and pass instances to :func:`danlu.train` / :class:`Trainer`. Every
hook receives the trainer (its ``epoch``, ``step``, ``model``, ``ema``, ``metrics``, ``run_dir``
...). ``trainer.request_stop(reason)`` ends training after the current step; ``state_dict`` /
``load_state_dict`` carry a callback's state through ``last.pt``.

Built in (added by :func:`default_callbacks`): a rich progress bar, a one-line summary per epoch,
``results.csv``, TensorBoard events (when ``torch.utils.tensorboard`` can be imported), early
stopping on the best-checkpoint number, the time budget (which re-plans the run through
``trainer.replan``), and plots at the end. A callback's state is saved under
:func:`state_keys` (set ``state_key`` on an instance to name it yourself).

Example:
    >>> class PrintLoss(Callback):
    ...     def on_step(self, trainer, logs):
    ...         if trainer.step % 100 == 0:
    ...             print(trainer.step, logs["loss"])
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from danlu.train.results import append_result, keep_epochs

if TYPE_CHECKING:
    from danlu.train.trainer import Trainer, TrainResult


class Callback:
    """Hooks called by :class:`~danlu.train.trainer.Trainer`; all do nothing by default."""

    def on_train_start(self, trainer: Trainer) -> None:
        """After set-up (and resume), before the first step."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        """Before the first batch of an epoch (``trainer.batch_in_epoch`` > 0 when resumed)."""

    def on_step(self, trainer: Trainer, logs: dict[str, float]) -> None:
        """After every optimizer step; ``logs`` holds the losses and ``lr``."""

    def on_eval(self, trainer: Trainer, result: Any) -> None:
        """After a validation (``result`` is an :class:`~danlu.evaluate.result.EvalResult`)."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """After an epoch and its validation; ``row`` is the ``results.csv`` row. Called before
        ``last.pt`` is written, with ``trainer.epoch`` still the 0-based index of this epoch."""

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        """After ``last.pt`` or ``best.pt`` was written."""

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        """After the final evaluation."""

    def on_event(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After rank 0 wrote a line of ``history.jsonl`` (``record["event"]`` names it:
        ``start``, ``control``, ``checkpoint``, ``best``, ``nonfinite_loss``, ``error``,
        ``end`` ...). Must not call ``trainer.event`` itself."""

    def state_dict(self) -> dict[str, Any] | None:
        """Resumable state (checkpoint-safe values), or None."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


# -- progress and console ---------------------------------------------------------------------
class ProgressBar(Callback):
    """A rich progress bar per epoch on stderr: loss, lr, it/s, ETA."""

    def __init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None

    def on_epoch_start(self, trainer: Trainer) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e}"),
            _SpeedColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True)
        self._progress.start()
        self._task = self._progress.add_task(
            "train", total=trainer.batches_per_epoch, completed=trainer.batch_in_epoch,
            epoch=f"{trainer.epoch + 1}/{trainer.total_epochs}", loss=float("nan"), lr=0.0)

    def on_step(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, loss=logs["loss"], lr=logs["lr"])

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        self._stop()

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _speed_column_class() -> type:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class SpeedColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-- it/s" if speed is None else f"{speed:.2f} it/s")

    return SpeedColumn


def _SpeedColumn() -> Any:  # noqa: N802 - a column factory, used like a class
    return _speed_column_class()()



def val_text(metrics: dict[str, Any]) -> str:
    """The validation numbers of an epoch row or a result, three decimals: ``val AP50 0.512
    AP 0.301`` (COCO), ``val mAP 0.688`` (VOC, DOTA); empty when there are none.

    Example:
        >>> val_text({"mAP": 1.0000000000000002}), val_text({"AP": float("nan")})
        ('val mAP 1.000', '')
    """
    if not _nan(metrics.get("AP")):
        return f"val AP50 {metrics.get('AP50', math.nan):.3f} AP {metrics['AP']:.3f}"
    if not _nan(metrics.get("mAP")):
        return f"val mAP {metrics['mAP']:.3f}"
    return ""

class ConsoleSummary(Callback):
    """One line per epoch on stderr: epoch, mean loss, lr, val AP50/AP, time."""

    def on_train_start(self, trainer: Trainer) -> None:
        what = "resuming" if trainer.resume_from is not None else "training"
        _err(f"{what} {trainer.model_config.get('name', '?')} on {trainer.device}: "
             f"{len(trainer.train_data)} images, {trainer.batches_per_epoch} batches/epoch, "
             f"{trainer.total_epochs} epochs -> {trainer.run_dir}")

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        ap = f"  {val_text(row)}" if val_text(row) else ""
        _err(f"epoch {row['epoch']}/{trainer.total_epochs}  loss {row.get('loss', math.nan):.4f}"
             f"  lr {row['lr']:.2e}{ap}  {row['epoch_time']:.1f}s")

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        m = result.metrics
        tail = f", best.pt {val_text(m)}" if val_text(m or {}) else ""
        _err(f"done ({result.stop_reason}) after {result.epochs} epochs, {result.steps} steps"
             f"{tail}: {trainer.run_dir}")
        if result.skipped_images:
            _err(f"skipped {result.skipped_images} training image(s) that cannot be decoded "
                 "(each named above and in history.jsonl; --strict stops at the first)")


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# -- files ------------------------------------------------------------------------------------
class CSVLogger(Callback):
    """``results.csv`` (see :mod:`danlu.train.results`): one row per epoch.

    On resume, rows of epochs the checkpoint had not finished are dropped first.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        if trainer.resume_from is None:
            self.path.unlink(missing_ok=True)
        else:
            keep_epochs(self.path, trainer.epoch)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if trainer.is_main:
            append_result(self.path, row)


class TensorBoardLogger(Callback):
    """TensorBoard events in the run folder, when ``torch.utils.tensorboard`` imports
    (it needs the ``tensorboard`` package). Otherwise it notes that in ``history.jsonl``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            trainer.event("tensorboard_unavailable",
                          hint="pip install tensorboard to get events.* files")
            return
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=trainer.step or None)

    def on_step(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if self.writer is not None and trainer.step % 10 == 0:
            for k, v in logs.items():
                self.writer.add_scalar(f"train/{k}", v, trainer.step)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for k in ("AP", "AP50"):
            if not _nan(row.get(k)):
                self.writer.add_scalar(f"val/{k}", row[k], trainer.step)
        self.writer.flush()

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Plots(Callback):
    """At the end: ``plots/loss.png`` (loss curves and val AP), and from the evaluation of
    ``best.pt``: ``plots/pr_curves.png`` and ``plots/per_class_ap.png``."""

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        if not trainer.is_main:
            return
        from danlu.evaluate.report import plot_pr_curves
        from danlu.train.report import plot_per_class_ap
        from danlu.train.results import plot_losses

        plots = trainer.run_dir / "plots"
        plot_losses(trainer.run_dir / "results.csv", plots / "loss.png")
        if trainer.last_eval is not None:
            plot_pr_curves(trainer.last_eval, plots / "pr_curves.png")
            plot_per_class_ap(trainer.last_eval, plots / "per_class_ap.png")


# -- control ------------------------------------------------------------------------------------
class EarlyStopping(Callback):
    """Stop when ``patience`` evaluations in a row did not improve the best checkpoint's
    number (``trainer.best_rule``). The count is this callback's own and resumes with it."""

    def __init__(self, patience: int) -> None:
        self.patience = int(patience)
        self.bad_evaluations = 0

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if not trainer.evaluated:
            return
        self.bad_evaluations = 0 if trainer.improved else self.bad_evaluations + 1
        if self.patience and self.bad_evaluations >= self.patience:
            trainer.event("early_stopping", patience=self.patience, best=trainer.best_fitness)
            trainer.request_stop("early_stopping")

    def state_dict(self) -> dict[str, Any]:
        return {"bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bad_evaluations = int(state.get("bad_evaluations", 0))


def steps_that_fit(seconds: float, step_seconds: float, val_seconds: float,
                   steps_per_epoch: int) -> int:
    """How many more optimizer steps fit in ``seconds`` when every epoch (of
    ``steps_per_epoch`` steps, the last one possibly cut short) ends with a validation of
    ``val_seconds``.

    Example:
        >>> steps_that_fit(100.0, step_seconds=1.0, val_seconds=5.0, steps_per_epoch=20)
        80
        >>> steps_that_fit(3.0, 1.0, 5.0, 20)  # not even the validation fits
        0
    """
    step_seconds = max(float(step_seconds), 1e-9)
    val_seconds = max(float(val_seconds), 0.0)
    seconds = max(float(seconds), 0.0) + 1e-9  # what fits exactly, fits (despite rounding)
    epoch_seconds = steps_per_epoch * step_seconds + val_seconds
    full = int(seconds // epoch_seconds)
    left = seconds - full * epoch_seconds - val_seconds
    extra = min(int(left // step_seconds), steps_per_epoch - 1) if left > 0 else 0
    return full * steps_per_epoch + extra


class TimeBudget(Callback):
    """Stop when ``minutes`` of training are spent. After each epoch, plan the rest from the
    last epoch's step and validation times: the run (and its learning-rate schedule) is set to
    the steps that still fit, growing or shrinking it within ``epochs``; the last epoch may be
    cut short so that the budget is used, not left idle."""

    #: fraction of the remaining time planned, a margin for timing noise
    fill = 0.98

    def __init__(self, minutes: float) -> None:
        self.budget = float(minutes) * 60.0

    def on_step(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if trainer.elapsed_now() >= self.budget:
            trainer.request_stop("time")
        elif (trainer.step >= trainer.schedule.total_steps
              and trainer.batch_in_epoch < trainer.batches_per_epoch):
            trainer.request_stop("time")  # the planned partial last epoch is done

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if trainer.stop_reason is not None or trainer.epoch + 1 >= trainer.config.epochs:
            return  # stopping already, or every epoch asked for is done
        bpe = trainer.batches_per_epoch
        val_seconds = float(row.get("val_time", 0.0))
        step_seconds = (float(row["epoch_time"]) - val_seconds) / max(trainer.epoch_batches, 1)
        remaining = self.budget - trainer.elapsed_now()
        fit = steps_that_fit(remaining * self.fill, step_seconds, val_seconds, bpe)
        fit = min(fit, max(trainer.config.epochs * bpe - trainer.step, 0))
        if fit == 0:
            trainer.event("time_budget", steps=0, remaining=remaining)
            trainer.request_stop("time")
            return
        total_steps = trainer.step + fit
        total_epochs = trainer.epoch + 1 + -(-fit // bpe)
        trainer.replan(total_steps, total_epochs, reason="time_budget",
                       step_seconds=step_seconds, val_seconds=val_seconds, remaining=remaining)


def state_keys(callbacks: list[Callback]) -> list[str]:
    """The key each callback's state is saved under in ``last.pt``: its ``state_key``
    attribute when it has one, else its class name, with ``#2``, ``#3`` ... appended to the
    second and later callbacks of one key (so two instances of a class keep separate state).

    Example:
        >>> state_keys([EarlyStopping(3), EarlyStopping(5), TimeBudget(1.0)])
        ['EarlyStopping', 'EarlyStopping#2', 'TimeBudget']
    """
    seen: dict[str, int] = {}
    keys = []
    for cb in callbacks:
        base = str(getattr(cb, "state_key", None) or type(cb).__name__)
        seen[base] = seen.get(base, 0) + 1
        keys.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return keys


def default_callbacks(trainer: Trainer) -> list[Callback]:
    """The built-in callbacks for a trainer's config."""
    cfg = trainer.config
    cbs: list[Callback] = []
    show = trainer.progress if trainer.progress is not None else sys.stderr.isatty()
    if show and trainer.is_main:
        cbs.append(ProgressBar())
    if trainer.verbose and trainer.is_main:
        cbs.append(ConsoleSummary())
    cbs.append(EarlyStopping(cfg.patience))
    if cfg.time:
        cbs.append(TimeBudget(cfg.time))
    cbs.append(CSVLogger(trainer.run_dir / "results.csv"))
    cbs.append(TensorBoardLogger(trainer.run_dir))
    if cfg.plots:
        cbs.append(Plots())
    return cbs


__all__ = ["Callback", "ProgressBar", "ConsoleSummary", "CSVLogger", "TensorBoardLogger",
           "Plots", "EarlyStopping", "TimeBudget", "steps_that_fit", "default_callbacks",
           "state_keys"]
