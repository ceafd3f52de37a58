"""A trainer's resumable state: what ``last.pt`` holds beside the weights, and how a run
continues from it exactly (model, EMA, optimizer, scaler, schedule, sampler, counters, RNG
states and each callback's state under its :func:`~danlu.train.callbacks.state_keys` key).

Example:
    >>> from danlu.train.trainer import Trainer                          # doctest: +SKIP
    >>> trainer.load_state(load_checkpoint("runs/exp/last.pt"))          # doctest: +SKIP
"""

from __future__ import annotations

import sys
from typing import Any

from danlu.errors import ConfigError, DatasetError
from danlu.models.checkpoint import FORMAT, VERSION
from danlu.models.transform import InputTransform
from danlu.train.callbacks import state_keys
from danlu.train.checkpoint import rng_state, set_rng_state


class ResumableState:
    """Checkpoint contents of a :class:`~danlu.train.trainer.Trainer` (mixed into it)."""

    def state_dict(self) -> dict[str, Any]:
        """The resumable training state (checkpoint-safe values only)."""
        return {
            "model": self.unwrapped_model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "scheduler": self.schedule.state_dict() if self.schedule else None,
            "sampler": self.sampler.state_dict() if hasattr(self.sampler, "state_dict")
            else None,
            "epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch,
            "total_epochs": self.total_epochs, "elapsed": self.elapsed_now(),
            "best_fitness": self.best_fitness,
            "epoch_losses": dict(self.epoch_losses), "epoch_batches": self.epoch_batches,
            "lr": self.lr, "eval_every": self.eval_every, "rng": rng_state(),
            "callbacks": {key: cb.state_dict() for key, cb in
                          zip(state_keys(self.callbacks), self.callbacks, strict=True)
                          if cb.state_dict() is not None},
        }

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Continue from a ``last.pt``."""
        if "train" not in ckpt:
            raise ConfigError("cannot resume from a checkpoint without training state",
                              hint="resume from last.pt (best.pt holds only weights)")
        if list(ckpt["class_names"]) != self.class_names:
            raise DatasetError(f"resume: checkpoint classes {ckpt['class_names']} differ from "
                               f"the data's {self.class_names}")
        st = ckpt["train"]
        self.unwrapped_model.load_state_dict(st["model"])
        if self.ema is not None and st.get("ema") is not None:
            self.ema.load_state_dict(st["ema"])
        self.optimizer.load_state_dict(st["optimizer"])
        if st.get("scaler") is not None and self.scaler is not None:
            self.scaler.load_state_dict(st["scaler"])
        self.schedule.load_state_dict(st["scheduler"])
        if st.get("sampler") is not None and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(st["sampler"])
        self.epoch, self.step = int(st["epoch"]), int(st["step"])
        self.batch_in_epoch = int(st["batch_in_epoch"])
        self.total_epochs = int(st["total_epochs"])
        self.elapsed = float(st["elapsed"])
        self.best_fitness = st["best_fitness"]
        self.epoch_losses = dict(st.get("epoch_losses", {}))
        self.epoch_batches = int(st.get("epoch_batches", 0))
        self.lr = float(st.get("lr", 0.0))
        self.eval_every = int(st.get("eval_every", self.config.eval_every))
        self.metrics = dict(ckpt.get("metrics", {}))
        set_rng_state(st["rng"])
        saved = st.get("callbacks", {})
        for key, cb in zip(state_keys(self.callbacks), self.callbacks, strict=True):
            if key in saved:
                cb.load_state_dict(saved[key])
        self.event("resumed", checkpoint=str(self.resume_from))

    #: set by ``danlu.train(resume=..., epochs=N)``: the run's new length in epochs
    resume_epochs: int | None = None

    def _extend(self, epochs: int) -> None:
        """Resume to ``epochs`` epochs in all (more, to extend a finished run; fewer, to end
        sooner): the learning-rate schedule is stretched or shrunk to end there."""
        done = self.epoch + (1 if self.batch_in_epoch else 0)
        if epochs < max(done, 1):
            raise ConfigError(f"--epochs {epochs}: the run has done {self.epoch} epochs "
                              f"already (of {self.total_epochs})",
                              hint=f"give --epochs above {self.epoch} to train more")
        self.replan(epochs * self.batches_per_epoch, epochs, reason="extended",
                    asked_epochs=epochs)

    def _say_how_to_resume(self) -> None:
        if self.last_path.exists():
            print(f"\ninterrupted at epoch {self.epoch + 1}, step {self.step}; the last "
                  f"checkpoint is {self.last_path}\ncontinue with: danlu train --resume "
                  f"{self.run_dir}", file=sys.stderr, flush=True)
        else:
            print("\ninterrupted before the first checkpoint: nothing to resume",
                  file=sys.stderr, flush=True)

    def note_skipped(self, skipped: list[tuple[int, str]]) -> None:
        """Warn once about each training image that could not be decoded (and stood in for
        by another), and count it in :attr:`skipped_images`."""
        for index, reason in skipped:
            if index in self.skipped_images:
                continue
            self.skipped_images[index] = reason
            self.event("image_skipped", index=int(index), error=reason)
            if self.is_main:
                print(f"warning: skipped a training image that cannot be decoded: {reason}",
                      file=sys.stderr, flush=True)

    def checkpoint(self, *, with_train_state: bool = True) -> dict[str, Any]:
        """A checkpoint dict: what ``Predictor`` needs, plus the training state."""
        weights = (self.ema.module if self.ema is not None else self.unwrapped_model)
        ckpt: dict[str, Any] = {
            "format": FORMAT, "version": VERSION,
            "model_config": dict(self.model_config),
            "class_names": list(self.class_names),
            **InputTransform(self.config.img_size, self.config.resize).to_dict(),
            "model": weights.state_dict(),
            "config": self.config.to_dict(),
            "metrics": _plain_metrics(self.metrics),
            "epoch": self.epoch, "step": self.step,
        }
        if with_train_state:
            ckpt["train"] = self.state_dict()
        return ckpt


def _plain_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


__all__ = ["ResumableState"]
