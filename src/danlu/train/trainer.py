"""The training loop, with seams instead of forks.

:class:`Trainer` runs epochs of optimizer steps over a :class:`~danlu.structures.Dataset`,
evaluates the EMA weights on a validation set, writes ``last.pt`` / ``best.pt`` and calls its
callbacks. What a later feature needs to change is a method or a callback, not a copy of the loop:

* **callbacks** (:class:`~danlu.train.callbacks.Callback`): ``on_train_start``,
  ``on_epoch_start``, ``on_step``, ``on_epoch_end``, ``on_eval``, ``on_checkpoint``,
  ``on_train_end``, ``on_event``; a callback stops training with
  :meth:`Trainer.request_stop` and keeps resumable state through ``state_dict`` /
  ``load_state_dict`` (saved in ``last.pt``);
* **the loss** — :meth:`Trainer.compute_loss` (or ``loss_fn=``) gets the device batch and returns
  a dict of named loss tensors; hard-example mining or missing-label remedies replace it;
* **the batch** — :meth:`Trainer.preprocess` (device move, augmentation) and
  :meth:`Trainer.build_sampler` (the order of samples; must be restorable for exact resume);
* **distribution** — :meth:`Trainer.wrap_model` (e.g. DDP), ``rank`` / ``world_size``; only
  rank 0 writes files;
* **judging** — :meth:`Trainer.build_validator` (the protocol follows the data: DOTA for
  oriented boxes, else COCO; ``val_protocol`` overrides) and :meth:`Trainer.build_best_rule`
  (which number makes ``best.pt``; ``best_metric`` / ``best_mode``);
* **planning** — :meth:`Trainer.replan` changes the run's length (the time budget uses it);
* **control** — ``trainer.control`` (:class:`~danlu.train.control.RunControl`) applies stop,
  pause, resume, save and ``set lr`` / ``eval_every`` commands between two steps.

Exact resume: the batch order depends only on ``(seed, epoch)``, augmentation draws from a
generator seeded by ``(seed, step)``, and ``last.pt`` stores model, EMA, optimizer, scheduler,
scaler, RNG states, the epoch and the batch index inside it. A resumed run therefore ends with the
same weights as one that was never interrupted (bitwise on CPU in deterministic mode).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import torch
from torch import nn

from danlu.errors import DatasetError
from danlu.models.device import resolve_device
from danlu.structures import Dataset
from danlu.targets import Target
from danlu.train.callbacks import Callback
from danlu.train.checkpoint import (
    load_checkpoint,
    save_checkpoint,
)
from danlu.train.config import TrainConfig
from danlu.train.control import RunControl
from danlu.train.data import EpochBatchSampler, make_loader
from danlu.train.ema import ModelEMA
from danlu.train.runtime import algorithms, keep_torch_threads, seed_everything
from danlu.train.schedule import LRSchedule
from danlu.train.seams import TrainerSeams
from danlu.train.state import ResumableState

LossFn = Callable[["Trainer", torch.Tensor, list[Target], dict[str, Any]],
                  dict[str, torch.Tensor]]


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        run_dir: the run folder.
        best / last: checkpoint paths (``best`` is ``last``'s weights when there is no
            validation set).
        metrics: the final evaluation of ``best.pt`` on the validation set (``AP``, ``AP50``,
            ... ; empty without validation).
        epochs: epochs completed; steps: optimizer steps done.
        stop_reason: ``completed``, ``early_stopping``, ``time``, ``max_steps`` or a
            callback's reason.
        best_fitness: the best value of the best-checkpoint number (``best_rule``, validation
            AP for COCO) seen during training (None without validation).
    """

    run_dir: Path
    best: Path
    last: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    epochs: int = 0
    steps: int = 0
    stop_reason: str = "completed"
    best_fitness: float | None = None
    skipped_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "best": str(self.best), "last": str(self.last),
                "metrics": self.metrics, "epochs": self.epochs, "steps": self.steps,
                "stop_reason": self.stop_reason, "best_fitness": self.best_fitness,
                "skipped_images": self.skipped_images}


class Trainer(TrainerSeams, ResumableState):
    """Train a detector; see the module docstring for the seams.

    Args:
        config: the options (``config.data`` / ``config.val`` are ignored here: pass datasets).
        train_data: the training :class:`Dataset` (or a packed dataset with ``class_names``).
        val_data: the validation :class:`Dataset` (None: no evaluation; best = last).
        run_dir: the run folder (created).
        callbacks: extra callbacks, called after the built-in ones.
        loss_fn: replaces :meth:`compute_loss`: ``loss_fn(trainer, images, targets, batch)``.
        resume_from: a ``last.pt`` to continue from.
        progress: show a progress bar on stderr (default: when stderr is a terminal).
        verbose: print a one-line summary per epoch on stderr.
        rank / world_size: this process in a distributed run (only rank 0 writes files).
        local_rank: this process's index on its machine (its GPU under DDP on CUDA).
    """

    def __init__(self, config: TrainConfig, train_data: Any, val_data: Dataset | None = None,
                 *, run_dir: str | Path, callbacks: Sequence[Callback] = (),
                 loss_fn: LossFn | None = None, resume_from: str | Path | None = None,
                 progress: bool | None = None, verbose: bool = True,
                 rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        self.config = config
        self.train_data = train_data
        self.val_data = val_data
        self.class_names: list[str] = list(getattr(train_data, "class_names", []))
        if not self.class_names:
            raise DatasetError("training data has no class names")
        if len(train_data) == 0:
            raise DatasetError("training data is empty")
        if val_data is not None and list(val_data.class_names) != self.class_names:
            raise DatasetError(f"validation classes {val_data.class_names} differ from "
                               f"training classes {self.class_names}")
        self.run_dir = Path(run_dir)
        self.loss_fn = loss_fn
        self.resume_from = Path(resume_from) if resume_from is not None else None
        self._resume_ckpt: dict[str, Any] | None = None
        self.rank, self.world_size = int(rank), int(world_size)
        self.local_rank = int(local_rank)
        self.is_main = self.rank == 0
        self.progress = progress
        self.verbose = verbose
        self.skipped_images: dict[int, str] = {}  # index -> why it could not be decoded
        from danlu.train.callbacks import default_callbacks

        self.callbacks: list[Callback] = default_callbacks(self) + list(callbacks)

        # state (filled by setup / resume)
        self.device = torch.device("cpu")
        self.model: nn.Module = nn.Identity()
        self.model_config: dict[str, Any] = {}
        self.ema: ModelEMA | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.schedule: LRSchedule | None = None
        self.sampler: EpochBatchSampler | None = None
        self.loader: torch.utils.data.DataLoader | None = None
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps done
        self.batch_in_epoch = 0  # batches of the current epoch done
        self.total_epochs = config.epochs
        self.batches_per_epoch = 0
        self.elapsed = 0.0  # training seconds, summed over resumed sessions
        self.best_fitness: float | None = None
        self.evaluated = False  # this epoch ran a validation (read by on_epoch_end callbacks)
        self.improved = False  # ... and it improved best_fitness
        self.validator = self.build_validator()
        self.best_rule = self.build_best_rule()
        self.stop_reason: str | None = None
        self.finish_epoch = True  # False: a stop leaves mid-epoch, with last.pt written there
        self.eval_every = config.eval_every  # a control command may change it
        self.control = RunControl()
        self.metrics: dict[str, Any] = {}
        self.last_eval: Any = None
        self.epoch_losses: dict[str, float] = {}
        self.epoch_batches = 0
        self.lr = 0.0
        self._session_start = 0.0
        self._elapsed_at_start = 0.0

    # -- paths and events ---------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    def event(self, kind: str, **data: Any) -> None:
        """Append one line to ``history.jsonl`` (every control action and notable event)."""
        if not self.is_main:
            return
        record = {"time": time.time(), "event": kind, "epoch": self.epoch, "step": self.step,
                  **data}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "history.jsonl", "ab") as f:
            f.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY
                                 | orjson.OPT_NON_STR_KEYS) + b"\n")
        self._call("on_event", record)

    def request_stop(self, reason: str, *, finish_epoch: bool = True) -> None:
        """Stop after the current step: the epoch is then evaluated and saved, or, with
        ``finish_epoch=False``, ``last.pt`` is written mid-epoch (a resume continues there)."""
        if self.stop_reason is None:
            self.stop_reason, self.finish_epoch = reason, finish_epoch
            self.event("stop_requested", reason=reason)

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def elapsed_now(self) -> float:
        """Training seconds so far, resumed sessions included."""
        return self._elapsed_at_start + (time.monotonic() - self._session_start)

    def discount_time(self, seconds: float) -> None:
        """``seconds`` that were not training (a pause): :meth:`elapsed_now` leaves them out."""
        self._session_start += seconds

    # -- set-up and resume ------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.config
        if self.device.type == "cpu" or self.world_size <= 1:
            self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        # read once: the model is built from it (anchor sizes) and its state restored at the end
        self._resume_ckpt = (load_checkpoint(self.resume_from, map_location=self.device)
                             if self.resume_from is not None else None)
        model = self.build_model().to(self.device)
        self.ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau) if cfg.ema else None
        self.optimizer = self.build_optimizer(model)
        self.model = self.wrap_model(model)
        fp16 = (cfg.amp and self.device.type == "cuda"
                and not torch.cuda.is_bf16_supported())
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        dataset = self.build_dataset()
        self.sampler = self.build_sampler(dataset)
        self.batches_per_epoch = self.sampler.batches_per_epoch()
        if self.batches_per_epoch == 0:
            raise DatasetError("not one batch of training data",
                               hint=f"{len(dataset)} images, batch {cfg.batch}")
        self.loader = make_loader(dataset, self.sampler, cfg.workers,
                                  pin_memory=self.device.type == "cuda")
        warmup = round(cfg.warmup_epochs * self.batches_per_epoch)
        self.schedule = LRSchedule(cfg.lr, cfg.epochs * self.batches_per_epoch, warmup,
                                   kind=cfg.schedule, min_lr_ratio=cfg.min_lr_ratio,
                                   milestones=cfg.step_milestones, gamma=cfg.step_gamma)
        if self._resume_ckpt is not None:
            self.load_state(self._resume_ckpt)
            self._resume_ckpt = None  # its tensors are copied into the model and optimizer
            if self.resume_epochs is not None and self.resume_epochs != self.total_epochs:
                self._extend(int(self.resume_epochs))

    def save_last(self) -> None:
        if not self.is_main:
            return
        save_checkpoint(self.checkpoint(), self.last_path)
        self.event("checkpoint", path="last.pt", batch_in_epoch=self.batch_in_epoch)
        self._call("on_checkpoint", self.last_path)

    def save_best(self) -> None:
        if not self.is_main:
            return
        save_checkpoint(self.checkpoint(with_train_state=False), self.best_path)
        self.event("checkpoint", path="best.pt", fitness=self.best_fitness)
        self._call("on_checkpoint", self.best_path)

    # -- the loop ----------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimizer step; returns the losses as floats (``loss`` is their sum)."""
        cfg = self.config
        images, targets = self.preprocess(batch)
        with self.autocast():
            losses = self.compute_loss(images, targets, batch)
        loss = sum(losses.values())
        logs = {"loss": float(loss.detach())}
        logs.update({k: float(v.detach()) for k, v in losses.items()})
        if not self._all_finite(math.isfinite(logs["loss"])):
            self.optimizer.zero_grad(set_to_none=True)
            self.event("nonfinite_loss", losses=logs)
            return logs
        self.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.unwrapped_model.parameters(),
                                                  cfg.grad_clip)
            logs["grad_norm"] = float(norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.unwrapped_model)
        return logs

    def _all_finite(self, finite: bool) -> bool:
        """Every rank skips the step when any rank's loss is not finite (DDP's backward
        needs all of them)."""
        if self.world_size <= 1:
            return finite
        from danlu.train.distributed import all_true

        return all_true(finite)

    def sync_logs(self, logs: dict[str, float]) -> dict[str, float]:
        """The logged losses averaged over ranks (unchanged in a single process)."""
        if self.world_size <= 1:
            return logs
        from danlu.train.distributed import all_reduce_mean

        return all_reduce_mean(logs)

    def sync_control(self) -> None:
        """Make rank 0's decisions everyone's: stop reason (and whether the epoch is
        finished), epochs planned, schedule length and best fitness (no-op in one process)."""
        if self.world_size <= 1:
            return
        from danlu.train.distributed import broadcast_object

        total_steps = self.schedule.total_steps if self.schedule is not None else None
        state = broadcast_object((self.stop_reason, self.finish_epoch, self.total_epochs,
                                  total_steps, self.best_fitness))
        (self.stop_reason, self.finish_epoch, self.total_epochs, total_steps,
         self.best_fitness) = state
        if self.schedule is not None and total_steps is not None:
            self.schedule.total_steps = total_steps

    def replan(self, total_steps: int, total_epochs: int, *, reason: str = "replan",
               **why: Any) -> None:
        """Change the run's length: ``total_steps`` optimizer steps (the learning-rate
        schedule is stretched or shrunk to end there) in ``total_epochs`` epochs (the last may
        be cut short). Written to ``history.jsonl`` as ``reason`` with ``why``; takes effect
        at the next step; rank 0's plan is shared by :meth:`sync_control`."""
        total_steps, total_epochs = int(total_steps), int(total_epochs)
        if (total_epochs, total_steps) == (self.total_epochs, self.schedule.total_steps):
            return
        self.event(reason, epochs=total_epochs, steps=total_steps, was=self.total_epochs, **why)
        self.total_epochs = total_epochs
        self.schedule.total_steps = total_steps

    def train_epoch(self) -> None:
        cfg = self.config
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        self.model.train()
        self._call("on_epoch_start")
        for batch in self.loader:
            if batch.get("skipped"):
                self.note_skipped(batch["skipped"])
            self.lr = self.schedule.apply(self.optimizer, self.step)
            logs = self.sync_logs(self.train_step(batch))
            self.step += 1
            self.batch_in_epoch += 1
            self.epoch_batches += 1
            for k, v in logs.items():
                if k != "grad_norm":
                    self.epoch_losses[k] = self.epoch_losses.get(k, 0.0) + v
            logs["lr"] = self.lr
            self._call("on_step", logs)
            self.control.after_step(self)  # stop, pause, save, set lr / eval_every
            if cfg.save_every_steps and self.step % cfg.save_every_steps == 0:
                self.save_last()
            if cfg.max_steps and self.step >= cfg.max_steps:
                self.request_stop("max_steps")
            self.sync_control()
            if self.stop_reason is not None:
                break

    def validate(self) -> dict[str, Any]:
        """Evaluate the EMA (else current) weights with the validator; {} without one.
        In a distributed run rank 0 evaluates and every rank gets its numbers."""
        if self.world_size > 1:
            from danlu.train.distributed import broadcast_object

            return broadcast_object(self._validate() if self.is_main else None)
        return self._validate()

    def _validate(self) -> dict[str, Any]:
        if self.validator is None:
            return {}
        model = self.ema.module if self.ema is not None else self.unwrapped_model
        with keep_torch_threads():  # evaluation kernels may reset the OpenMP thread count
            result = self.validator(model, self.device)
        self.last_eval = result
        self._call("on_eval", result)
        return {k: float(v) for k, v in result.metrics.items()}

    def row_metrics(self) -> tuple[str, ...]:
        """The validation numbers ``results.csv`` records (COCO: ``AP50``, ``AP``; else the
        protocol's headline), plus the best-checkpoint number."""
        names = ("AP50", "AP") if self.val_protocol == "coco" else ("mAP",)
        return names if self.best_rule.metric in names else (*names, self.best_rule.metric)

    def end_epoch(self, epoch_start: float) -> None:
        last_epoch = self.epoch + 1 >= self.total_epochs or self.stop_reason is not None
        metrics: dict[str, Any] = {}
        val_start = time.monotonic()
        if (self.epoch + 1) % self.eval_every == 0 or last_epoch:
            metrics = self.validate()
        val_time = time.monotonic() - val_start
        self.evaluated, self.improved = bool(metrics), False
        if metrics:
            self.metrics = metrics
            fitness = self.best_rule.value(metrics)
            if self.best_rule.improves(fitness, self.best_fitness):
                self.best_fitness, self.improved = fitness, True
        n = max(self.epoch_batches, 1)
        row: dict[str, Any] = {"epoch": self.epoch + 1}
        row.update({k: v / n for k, v in self.epoch_losses.items()})
        row["lr"] = self.lr
        row.update({k: metrics.get(k, float("nan")) for k in self.row_metrics()})
        row["epoch_time"] = time.monotonic() - epoch_start
        row["val_time"] = val_time
        row["elapsed"] = self.elapsed_now()
        # results.csv, early stopping and the time budget act here, before last.pt is written
        self._call("on_epoch_end", row)
        self.sync_control()
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_losses, self.epoch_batches = {}, 0
        if self.improved or (self.val_data is None):
            self.save_best()
            if self.improved:
                self.event("best", fitness=self.best_fitness, metric=self.best_rule.metric)
        self.save_last()

    def fit(self) -> TrainResult:
        """Set up (or resume), train, evaluate ``best.pt``, and return the :class:`TrainResult`."""
        self.device = resolve_device(self.config.device)
        if self.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.local_rank)
        with algorithms(self.config.deterministic, self.device):
            try:
                return self._fit()
            except KeyboardInterrupt:
                self.event("interrupted")
                if self.is_main:
                    self._say_how_to_resume()
                raise
            except Exception as e:
                self.event("error", error=f"{type(e).__name__}: {e}")
                raise
            finally:
                self.control.close(self)

    def _fit(self) -> TrainResult:
        self.setup()
        self._session_start = time.monotonic()
        self._elapsed_at_start = self.elapsed
        if self.resume_from is None:
            self.event("start", config=self.config.to_dict(), device=str(self.device),
                       model_config=self.model_config)
        self.control.begin(self)
        self._call("on_train_start")
        while self.epoch < self.total_epochs and self.stop_reason is None:
            epoch_start = time.monotonic()
            self.train_epoch()
            if self.stop_reason is not None and not self.finish_epoch:
                self.save_last()  # mid-epoch: a resume continues from this very step
                break
            self.end_epoch(epoch_start)
        reason = self.stop_reason or "completed"
        if not self.best_path.exists():
            self.save_best()
        result = TrainResult(self.run_dir, self.best_path, self.last_path, {}, self.epoch,
                             self.step, reason, self.best_fitness, len(self.skipped_images))
        if (self.config.final_eval and self.val_data is not None and self.is_main
                and self.finish_epoch):
            result.metrics = self.final_evaluation()
        if self.world_size > 1:
            from danlu.train.distributed import broadcast_object

            result.metrics = broadcast_object(result.metrics)
        self.event("end", reason=reason, metrics=result.metrics)
        self._call("on_train_end", result)
        return result

    def final_evaluation(self) -> dict[str, Any]:
        """Evaluate ``best.pt`` (loaded as a user would) into ``eval/`` under the validator's
        protocol; returns its metrics."""
        from danlu.train.report import write_evaluation

        with keep_torch_threads():
            result = write_evaluation(self.best_path, self.val_data, self.run_dir / "eval",
                                      device=self.device,
                                      score_threshold=self.config.score_threshold,
                                      protocol=self.val_protocol)
        self.last_eval = result
        return {k: float(v) for k, v in result.metrics.items()}

    def close(self) -> None:
        """Drop the model wrapper, optimizer and data loader (a DDP wrapper holds the process
        group; freeing it here, not at interpreter exit, lets the group be torn down
        cleanly). The trainer cannot train afterwards."""
        self.model = self.unwrapped_model
        self.optimizer = None
        self.loader = None
        self.sampler = None


__all__ = ["Trainer", "TrainResult", "LossFn"]
