"""The training loop, with seams instead of forks.

:class:`Trainer` runs epochs of optimizer steps over a :class:`~danlu.structures.Dataset`,
evaluates the EMA weights on a validation set, writes ``last.pt`` / ``best.pt`` and calls its
callbacks. What a later feature needs to change is a method or a callback, not a copy of the loop:

* **callbacks** (:class:`~danlu.train.callbacks.Callback`): ``on_train_start``,
  ``on_epoch_start``, ``on_step``, ``on_epoch_end``, ``on_eval``, ``on_checkpoint``,
  ``on_train_end``; a callback stops training with :meth:`Trainer.request_stop` and keeps
  resumable state through ``state_dict`` / ``load_state_dict`` (saved in ``last.pt``);
* **the loss** — :meth:`Trainer.compute_loss` (or ``loss_fn=``) gets the device batch and returns
  a dict of named loss tensors; hard-example mining or missing-label remedies replace it;
* **the batch** — :meth:`Trainer.preprocess` (device move, augmentation) and
  :meth:`Trainer.build_sampler` (the order of samples; must be restorable for exact resume);
* **distribution** — :meth:`Trainer.wrap_model` (e.g. DDP), ``rank`` / ``world_size``; only
  rank 0 writes files.

Exact resume: the batch order depends only on ``(seed, epoch)``, augmentation draws from a
generator seeded by ``(seed, step)``, and ``last.pt`` stores model, EMA, optimizer, scheduler,
scaler, RNG states, the epoch and the batch index inside it. A resumed run therefore ends with the
same weights as one that was never interrupted (bitwise on CPU in deterministic mode).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from torch import nn

from danlu.errors import ConfigError, DatasetError
from danlu.structures import Dataset
from danlu.train.callbacks import Callback
from danlu.train.checkpoint import (
    FORMAT,
    VERSION,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from danlu.train.config import TrainConfig
from danlu.train.data import DetectionDataset, EpochBatchSampler, make_loader
from danlu.train.device import resolve_device
from danlu.train.ema import ModelEMA
from danlu.train.schedule import LRSchedule

LossFn = Callable[["Trainer", torch.Tensor, list[dict[str, torch.Tensor]], dict[str, Any]],
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
        best_fitness: the best validation AP seen during training (None without validation).
    """

    run_dir: Path
    best: Path
    last: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    epochs: int = 0
    steps: int = 0
    stop_reason: str = "completed"
    best_fitness: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "best": str(self.best), "last": str(self.last),
                "metrics": self.metrics, "epochs": self.epochs, "steps": self.steps,
                "stop_reason": self.stop_reason, "best_fitness": self.best_fitness}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - libraries may draw from the global RNG
    torch.manual_seed(seed)


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count after the block. Numba's OpenMP kernels (used by
    the metrics) set the shared OpenMP runtime's thread count, which changes torch's too, and
    with it the order of float reductions: training after an evaluation would then differ
    bitwise from training resumed in a fresh process."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


@contextlib.contextmanager
def algorithms(deterministic: bool, device: torch.device) -> Iterator[None]:
    """Deterministic algorithms (no cuDNN autotuning) or, on CUDA, cuDNN autotuning, for the
    duration of the block; torch's global flags are restored afterwards."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: a few CUDA kernels (e.g. upsampling backward) have no deterministic
        # version; CPU training is bitwise reproducible either way.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]


class Trainer:
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
        self.bad_epochs = 0
        self.stop_reason: str | None = None
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

    def request_stop(self, reason: str) -> None:
        """Stop after the current step (the epoch is then evaluated and saved)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.event("stop_requested", reason=reason)

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def elapsed_now(self) -> float:
        """Training seconds so far, resumed sessions included."""
        return self._elapsed_at_start + (time.monotonic() - self._session_start)

    # -- building blocks (override to change) -----------------------------------------------
    def build_model(self) -> nn.Module:
        """The model from :func:`danlu.models.build_model` (seeded: same init every run)."""
        from danlu.models import build_model

        cfg = self.config
        self.model_config = {"name": cfg.model, "num_classes": len(self.class_names),
                             "img_size": cfg.img_size, "weights": cfg.weights}
        sizes = self.anchor_sizes()
        if sizes is not None:
            self.model_config["anchor_sizes"] = sizes
        model = build_model(**self.model_config)
        described = getattr(model, "config", None)
        if isinstance(described, dict):  # the builder's own full description wins
            self.model_config = dict(described)
        if cfg.ohem or cfg.soft_sampling:
            from danlu.train.heads import install_mining

            install_mining(model, ohem=cfg.ohem, ohem_batch=cfg.ohem_batch,
                           ohem_nms=cfg.ohem_nms_iou if cfg.ohem_nms else None,
                           neg_ratio=cfg.ohem_neg_ratio, soft_sampling=cfg.soft_sampling)
        return model

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """Hook for DDP and friends: the module the loss is computed with. In a distributed
        run (``world_size > 1``), DistributedDataParallel (with SyncBatchNorm on CUDA when
        ``sync_bn``)."""
        if self.world_size <= 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.config.sync_bn and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    @property
    def unwrapped_model(self) -> nn.Module:
        return getattr(self.model, "module", self.model)

    def anchor_sizes(self) -> list[float] | list[list[float]] | None:
        """The anchor sizes to build the model with: a resumed run's own, else (``anchors:
        auto``, random init, an anchor-based model) sizes fitted to the training boxes."""
        from danlu.models import anchor_sizes_for, uses_anchors

        cfg = self.config
        if self._resume_ckpt is not None:
            saved = self._resume_ckpt.get("model_config", {})
            return saved.get("anchor_sizes") if uses_anchors(cfg.model) else None
        if cfg.anchors != "auto" or cfg.weights is not None or not uses_anchors(cfg.model):
            return None
        from danlu.train.data import training_box_sizes

        wh = training_box_sizes(self.train_data, cfg.img_size, cfg.resize)
        if not (wh > 0).all(axis=1).any():
            return None  # no box to fit: the family's defaults
        sizes = anchor_sizes_for(cfg.model, wh)
        self.event("anchors", sizes=list(sizes), boxes=len(wh))
        return list(sizes)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """AdamW (or SGD) with no weight decay on biases and normalisation weights."""
        cfg = self.config
        decay, no_decay = [], []
        for _, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.ndim > 1 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))

    def build_dataset(self) -> DetectionDataset:
        return DetectionDataset(self.train_data, self.config.img_size, self.config.resize,
                                train=True)

    def build_sampler(self, dataset: DetectionDataset) -> EpochBatchSampler:
        """The batch order; a replacement must offer ``set_epoch(epoch, start_batch)``,
        ``batches_per_epoch()`` and depend only on its state for exact resume."""
        return EpochBatchSampler(len(dataset), self.per_rank_batch(), self.config.seed,
                                 rank=self.rank, world_size=self.world_size)

    def per_rank_batch(self) -> int:
        """``batch`` is the global batch: each of ``world_size`` ranks loads its share."""
        if self.config.batch % self.world_size:
            raise ConfigError(f"batch {self.config.batch} does not split over "
                              f"{self.world_size} processes",
                              hint="make --batch a multiple of the number of processes")
        return self.config.batch // self.world_size

    def augment_generator(self) -> torch.Generator:
        """A CPU generator seeded by ``(seed, step)`` (and the rank in a distributed run):
        augmentation is resume-exact."""
        rank = self.rank * 104_729 if self.world_size > 1 else 0
        return torch.Generator().manual_seed(
            (self.config.seed * 1_000_003 + self.step * 7919 + 17 + rank) % (2**63))

    def preprocess(self, batch: dict[str, Any]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Move to the device, scale to ``[0, 1]`` float and augment."""
        images = batch["images"].to(self.device, non_blocking=True).float().div_(255.0)
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()}
                   for t in batch["targets"]]
        if self.config.augment != "none":
            from danlu.train.augment import augment_batch

            images, targets = augment_batch(images, targets, self.config.augment,
                                            self.augment_generator())
        return images, targets

    def compute_loss(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]],
                     batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Named loss tensors for one batch; their sum is minimised. ``batch["indices"]``
        says which samples these are (for per-sample mining)."""
        if self.loss_fn is not None:
            return self.loss_fn(self, images, targets, batch)
        return self.model(list(images), targets)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.amp and self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

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
            "best_fitness": self.best_fitness, "bad_epochs": self.bad_epochs,
            "epoch_losses": dict(self.epoch_losses), "epoch_batches": self.epoch_batches,
            "lr": self.lr, "rng": rng_state(),
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks
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
        self.bad_epochs = int(st["bad_epochs"])
        self.epoch_losses = dict(st.get("epoch_losses", {}))
        self.epoch_batches = int(st.get("epoch_batches", 0))
        self.lr = float(st.get("lr", 0.0))
        self.metrics = dict(ckpt.get("metrics", {}))
        set_rng_state(st["rng"])
        saved = st.get("callbacks", {})
        for cb in self.callbacks:
            if type(cb).__name__ in saved:
                cb.load_state_dict(saved[type(cb).__name__])
        self.event("resumed", checkpoint=str(self.resume_from))

    def checkpoint(self, *, with_train_state: bool = True) -> dict[str, Any]:
        """A checkpoint dict: what ``Predictor`` needs, plus the training state."""
        weights = (self.ema.module if self.ema is not None else self.unwrapped_model)
        ckpt: dict[str, Any] = {
            "format": FORMAT, "version": VERSION,
            "model_config": dict(self.model_config),
            "class_names": list(self.class_names),
            "img_size": self.config.img_size, "resize": self.config.resize,
            "model": weights.state_dict(),
            "config": self.config.to_dict(),
            "metrics": _plain_metrics(self.metrics),
            "epoch": self.epoch, "step": self.step,
        }
        if with_train_state:
            ckpt["train"] = self.state_dict()
        return ckpt

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
        """Make rank 0's decisions everyone's: stop reason, epochs planned, schedule length,
        best fitness and evaluations without improvement (no-op in a single process)."""
        if self.world_size <= 1:
            return
        from danlu.train.distributed import broadcast_object

        total_steps = self.schedule.total_steps if self.schedule is not None else None
        state = broadcast_object((self.stop_reason, self.total_epochs, total_steps,
                                  self.best_fitness, self.bad_epochs))
        self.stop_reason, self.total_epochs, total_steps, self.best_fitness, \
            self.bad_epochs = state
        if self.schedule is not None and total_steps is not None:
            self.schedule.total_steps = total_steps

    def train_epoch(self) -> None:
        cfg = self.config
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        self.model.train()
        self._call("on_epoch_start")
        for batch in self.loader:
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
            if cfg.save_every_steps and self.step % cfg.save_every_steps == 0:
                self.save_last()
            if cfg.max_steps and self.step >= cfg.max_steps:
                self.request_stop("max_steps")
            self.sync_control()
            if self.stop_reason is not None:
                break

    def validate(self) -> dict[str, Any]:
        """Evaluate the EMA (else current) weights on the validation set; {} without one.
        In a distributed run rank 0 evaluates and every rank gets its numbers."""
        if self.world_size > 1:
            from danlu.train.distributed import broadcast_object

            return broadcast_object(self._validate() if self.is_main else None)
        return self._validate()

    def _validate(self) -> dict[str, Any]:
        if self.val_data is None or len(self.val_data) == 0:
            return {}
        with keep_torch_threads():  # evaluation kernels may reset the OpenMP thread count
            return self._evaluate_val()

    def _evaluate_val(self) -> dict[str, Any]:
        from danlu.evaluate.api import evaluate
        from danlu.infer.predictor import Predictor

        model = self.ema.module if self.ema is not None else self.unwrapped_model
        predictor = Predictor(model, device=self.device, class_names=self.class_names,
                              img_size=self.config.img_size, resize=self.config.resize,
                              score_threshold=self.config.score_threshold,
                              batch_size=max(self.config.batch, 8))
        preds = predictor.predict_dataset(self.val_data)
        result = evaluate(self.val_data, preds, protocol="coco")
        self.last_eval = result
        self._call("on_eval", result)
        return {k: float(v) for k, v in result.metrics.items()}

    def end_epoch(self, epoch_start: float) -> None:
        cfg = self.config
        last_epoch = self.epoch + 1 >= self.total_epochs or self.stop_reason is not None
        metrics: dict[str, Any] = {}
        val_start = time.monotonic()
        if (self.epoch + 1) % cfg.eval_every == 0 or last_epoch:
            metrics = self.validate()
        val_time = time.monotonic() - val_start
        improved = False
        if metrics:
            self.metrics = metrics
            fitness = float(metrics.get("AP", float("nan")))
            if math.isfinite(fitness) and (self.best_fitness is None
                                           or fitness > self.best_fitness):
                self.best_fitness, self.bad_epochs, improved = fitness, 0, True
            else:
                self.bad_epochs += 1
        n = max(self.epoch_batches, 1)
        row: dict[str, Any] = {"epoch": self.epoch + 1}
        row.update({k: v / n for k, v in self.epoch_losses.items()})
        row["lr"] = self.lr
        row["AP50"] = metrics.get("AP50", float("nan"))
        row["AP"] = metrics.get("AP", float("nan"))
        row["epoch_time"] = time.monotonic() - epoch_start
        row["val_time"] = val_time
        row["elapsed"] = self.elapsed_now()
        # results.csv, early stopping and the time budget act here, before last.pt is written
        self._call("on_epoch_end", row)
        self.sync_control()
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_losses, self.epoch_batches = {}, 0
        if improved or (self.val_data is None):
            self.save_best()
            if improved:
                self.event("best", fitness=self.best_fitness)
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
                raise
            except Exception as e:
                self.event("error", error=f"{type(e).__name__}: {e}")
                raise

    def _fit(self) -> TrainResult:
        self.setup()
        self._session_start = time.monotonic()
        self._elapsed_at_start = self.elapsed
        if self.resume_from is None:
            self.event("start", config=self.config.to_dict(), device=str(self.device),
                       model_config=self.model_config)
        self._call("on_train_start")
        while self.epoch < self.total_epochs and self.stop_reason is None:
            epoch_start = time.monotonic()
            self.train_epoch()
            self.end_epoch(epoch_start)
        reason = self.stop_reason or "completed"
        if not self.best_path.exists():
            self.save_best()
        result = TrainResult(self.run_dir, self.best_path, self.last_path, {}, self.epoch,
                             self.step, reason, self.best_fitness)
        if self.config.final_eval and self.val_data is not None and self.is_main:
            result.metrics = self.final_evaluation()
        if self.world_size > 1:
            from danlu.train.distributed import broadcast_object

            result.metrics = broadcast_object(result.metrics)
        self.event("end", reason=reason, metrics=result.metrics)
        self._call("on_train_end", result)
        return result

    def final_evaluation(self) -> dict[str, Any]:
        """Evaluate ``best.pt`` (loaded as a user would) into ``eval/``; returns its metrics."""
        from danlu.train.report import write_evaluation

        with keep_torch_threads():
            result = write_evaluation(self.best_path, self.val_data, self.run_dir / "eval",
                                      device=self.device,
                                      score_threshold=self.config.score_threshold)
        self.last_eval = result
        return {k: float(v) for k, v in result.metrics.items()}


def _plain_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


__all__ = ["Trainer", "TrainResult", "seed_everything", "algorithms", "keep_torch_threads"]
