"""The building blocks of a training run, each a method a :class:`~danlu.train.trainer.Trainer`
subclass overrides to change one thing: the model, its wrapper (DDP), the optimizer, the data
and its order, the batch's preprocessing and augmentation, the loss, what judges the model
(the validator and the best-checkpoint rule).

Example:
    >>> from danlu.train.trainer import Trainer
    >>> class SGDTrainer(Trainer):
    ...     def build_optimizer(self, model):
    ...         import torch
    ...         return torch.optim.SGD(model.parameters(), lr=self.config.lr)
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from danlu.errors import ConfigError
from danlu.targets import Target, target_to
from danlu.train.data import DetectionDataset, EpochBatchSampler
from danlu.train.validation import BestRule, Validator


class TrainerSeams:
    """The overridable building blocks; mixed into :class:`~danlu.train.trainer.Trainer`
    (which provides ``config``, ``class_names``, ``train_data``, ``val_data``, ``device``,
    ``rank``, ``world_size``, ``step``, ``model``, ``loss_fn`` and ``event``)."""

    config: Any
    validator: Validator | None
    _resume_ckpt: dict[str, Any] | None

    def build_validator(self) -> Validator | None:
        """What judges the model on ``val_data`` (None without validation data)."""
        if self.val_data is None or len(self.val_data) == 0:
            return None
        cfg = self.config
        return Validator(self.val_data, cfg.val_protocol, class_names=self.class_names,
                         img_size=cfg.img_size, resize=cfg.resize,
                         score_threshold=cfg.score_threshold, batch_size=max(cfg.batch, 8))

    def build_best_rule(self) -> BestRule:
        """Which validation number makes a checkpoint ``best.pt`` (the protocol's headline,
        higher is better, unless ``best_metric`` / ``best_mode`` say otherwise)."""
        return BestRule.for_protocol(self.val_protocol, self.config.best_metric,
                                     self.config.best_mode)

    @property
    def val_protocol(self) -> str:
        """The protocol validation runs under (``coco`` when there is no validation data)."""
        return self.validator.protocol if self.validator is not None else "coco"

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
                                train=True, strict=self.config.strict)

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

    def preprocess(self, batch: dict[str, Any]) -> tuple[torch.Tensor, list[Target]]:
        """Move to the device, scale to ``[0, 1]`` float and augment."""
        images = batch["images"].to(self.device, non_blocking=True).float().div_(255.0)
        targets = [target_to(t, self.device, non_blocking=True) for t in batch["targets"]]
        if self.config.augment != "none":
            from danlu.train.augment import augment_batch

            images, targets = augment_batch(images, targets, self.config.augment,
                                            self.augment_generator())
        return images, targets

    def compute_loss(self, images: torch.Tensor, targets: list[Target],
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


__all__ = ["TrainerSeams"]
