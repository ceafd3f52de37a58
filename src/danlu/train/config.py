"""The training configuration: one dataclass whose fields mirror ``danlu train``'s options.

A YAML file holds the same keys (``--config run.yaml``); options given on the command line win
over the file, the file wins over the defaults. Every run writes the resolved configuration to
``runs/NAME/config.yaml``.

Example:
    >>> cfg = TrainConfig(epochs=3, batch=8)
    >>> cfg.merged({"lr": 1e-3}).lr
    0.001
    >>> TrainConfig.from_dict({"epochs": 2, "img_size": 128}).img_size
    128
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from danlu.errors import ConfigError

SCHEDULES = ("cosine", "step", "constant")
AUGMENTS = ("flips", "default", "none")
RESIZES = ("letterbox", "resize")
OPTIMIZERS = ("adamw", "sgd")
ANCHORS = ("auto", "default")
VAL_PROTOCOLS = ("auto", "coco", "voc07", "voc12", "dota", "dota-hbb")


#: ``img_size`` is a multiple of this (the coarsest pyramid level's stride) ...
IMG_SIZE_MULTIPLE = 32
#: ... within this range, pixels
IMG_SIZE_RANGE = (32, 4096)


@dataclass
class TrainConfig:
    """Every training option; field names are the CLI options with ``-`` as ``_``.

    Attributes:
        data: the training dataset (a path or folder ``load_dataset`` reads). The library call
            may pass a :class:`~danlu.structures.Dataset` instead; then this stays None.
        data_format: the dataset format (voc, coco, yolo, dota); None guesses.
        model: model name for :func:`danlu.models.build_model` (e.g. ``fcos-tiny``).
        weights: initial weights for the model builder (None: random init).
        anchors: ``auto`` derives the anchor sizes of anchor-based models (RetinaNet,
            Faster R-CNN) from the training boxes at ``img_size`` (see
            :func:`danlu.models.anchor_sizes_from_boxes`) when training from random init;
            ``default`` keeps the model family's. FCOS and SSD have no anchors to fit.
        epochs: number of passes over the training set.
        device: ``auto`` (cuda > mps > cpu), ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
        batch: images per step.
        img_size: input size; images are resized (``resize``) to ``img_size x img_size``.
            ``"auto"`` follows the training data (:func:`danlu.train.data.input_size_for`:
            the median longer image side, rounded to 32, within 128 ... 1024) and is replaced
            by that number in the run's config.
        resize: ``letterbox`` (keep the aspect ratio, pad right/bottom) or ``resize``
            (stretch to a square), as :mod:`danlu.data.pack` stores images.
        optimizer: ``adamw`` or ``sgd`` (momentum ``momentum``, Nesterov).
        lr: peak learning rate (after warmup).
        weight_decay: decoupled weight decay (not applied to norms and biases).
        warmup_epochs: linear warmup length in epochs (fractions allowed).
        schedule: ``cosine`` (to ``lr * min_lr_ratio``), ``step`` (x ``step_gamma`` at
            ``step_milestones`` fractions of the run) or ``constant``.
        grad_clip: clip the gradient norm to this value (0 disables).
        workers: DataLoader worker processes (0 decodes in the training process).
        name / project: the run folder is ``project/name``; the name defaults to ``exp``,
            ``exp2`` ... (the first free one).
        resume: a run folder (or its ``last.pt``) to continue exactly where it stopped.
        time: training time budget in minutes (None: no limit). The schedule is fitted to the
            budget after each epoch, and training stops when it is spent.
        seed: seed of every random choice (data order, augmentation, initialisation).
        deterministic: use deterministic algorithms (bitwise reproducible on CPU).
        strict: stop at the first training image that cannot be decoded (default: skip it,
            with a warning naming it, and count it in the summary).
        skip_invalid: skip invalid annotations (a box without coordinates, a label file that
            does not parse) while reading the datasets, each named in a warning, instead of
            stopping at the first.
        image_dir: a folder to find the images of ``data`` and ``val`` in when they are not
            where the annotations say (by file name, then by stem, in any sub-folder).
        ema / ema_decay / ema_tau: keep an exponential moving average of the weights, which is
            what is evaluated and saved as the model.
        amp: mixed precision on CUDA (ignored elsewhere).
        patience: stop after this many evaluations without a better val AP (0: never).
        val: a validation dataset path; else ``val_split`` of the training data is held out
            (0: no validation; then the last weights are the best).
        augment: ``flips`` (horizontal flips), ``default`` (flips, affine, colour, mosaic)
            or ``none``.
        eval_every: evaluate every N epochs (the last epoch is always evaluated).
        val_protocol: what judges validation: ``auto`` (DOTA task 1 when the validation
            boxes are oriented, else COCO), ``coco``, ``voc07``, ``voc12``, ``dota``,
            ``dota-hbb``.
        best_metric: the validation number that picks ``best.pt`` (``auto``: the protocol's
            headline, COCO ``AP`` or ``mAP``; or ``AP50``, ``AP75`` ...); early stopping
            counts evaluations that did not improve it.
        best_mode: ``max`` (higher is better) or ``min``.
        save_every_steps: also write ``last.pt`` every N optimizer steps (0: only per epoch).
        score_threshold: the detector's score threshold at evaluation.
        max_steps: stop after this many optimizer steps in total (0: no limit; for tests).
        plots: write loss/PR/per-class-AP plots.
        final_eval: evaluate ``best.pt`` into ``eval/`` at the end.
        ohem: online hard example mining (:mod:`danlu.train.heads`): Faster R-CNN's RoI head
            back-propagates only the ``ohem_batch`` highest-loss RoIs per image (after NMS at
            ``ohem_nms_iou`` when ``ohem_nms``); RetinaNet's classification keeps the positives
            and the ``ohem_neg_ratio`` x as many highest-loss negatives. FCOS: not applicable.
        soft_sampling: missing-label remedy (:mod:`danlu.train.sampling`): the weight of
            background samples as a function of their IoU with the nearest labelled box, e.g.
            ``"0.5"``, ``"0:0.25,0.5:1"`` or ``"gompertz"``; None: off.
        distributed: data-parallel training over the processes ``torchrun`` started (also
            on when ``torchrun`` launched more than one process); ``batch`` is the global batch.
        sync_bn: under DDP on CUDA, synchronise BatchNorm statistics over the ranks.
    """

    data: str | None = None
    data_format: str | None = None
    model: str = "fcos-tiny"
    weights: str | None = None
    anchors: str = "auto"
    epochs: int = 10
    device: str = "auto"
    batch: int = 16
    img_size: int | str = 256
    resize: str = "letterbox"
    optimizer: str = "adamw"
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.05
    step_milestones: list[float] = field(default_factory=lambda: [0.7, 0.9])
    step_gamma: float = 0.1
    grad_clip: float = 10.0
    workers: int = 0
    name: str | None = None
    project: str = "runs"
    resume: str | None = None
    time: float | None = None
    seed: int = 0
    deterministic: bool = False
    strict: bool = False
    skip_invalid: bool = False
    image_dir: str | None = None
    ema: bool = True
    ema_decay: float = 0.9998
    ema_tau: float = 200.0
    amp: bool = True
    patience: int = 0
    val: str | None = None
    val_split: float = 0.1
    augment: str = "flips"
    eval_every: int = 1
    val_protocol: str = "auto"
    best_metric: str = "auto"
    best_mode: str = "max"
    save_every_steps: int = 0
    score_threshold: float = 0.05
    max_steps: int = 0
    plots: bool = True
    final_eval: bool = True
    ohem: bool = False
    ohem_batch: int = 128
    ohem_nms: bool = True
    ohem_nms_iou: float = 0.7
    ohem_neg_ratio: float = 3.0
    soft_sampling: str | None = None
    distributed: bool = False
    sync_bn: bool = False

    # -- validation ----------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid option."""
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"option {name.replace('_', '-')}: {why} "
                               f"(got {getattr(self, name)!r})")

        for name in ("epochs", "batch", "img_size", "eval_every", "ohem_batch"):
            if name == "img_size" and self.img_size == "auto":
                continue
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "expected an integer >= 1" + (" or 'auto'" if name == "img_size"
                                                              else ""))
        if self.img_size != "auto" and (self.img_size % IMG_SIZE_MULTIPLE
                                        or not IMG_SIZE_RANGE[0] <= self.img_size
                                        <= IMG_SIZE_RANGE[1]):
            lo, hi = IMG_SIZE_RANGE
            raise bad("img_size", f"expected a multiple of {IMG_SIZE_MULTIPLE} from {lo} to "
                      f"{hi} (the detectors' coarsest feature map has stride "
                      f"{IMG_SIZE_MULTIPLE}: other sizes run padded or leave that map "
                      "under a pixel), or 'auto'")
        for name in ("workers", "patience", "save_every_steps", "max_steps", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise bad(name, "expected an integer >= 0")
        for name in ("lr", "weight_decay", "warmup_epochs", "grad_clip", "min_lr_ratio",
                     "momentum", "ema_tau", "step_gamma", "score_threshold",
                     "ohem_neg_ratio"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise bad(name, "expected a number >= 0")
        if not 0 <= self.val_split < 1:
            raise bad("val_split", "expected a fraction in [0, 1)")
        if not 0 < self.ema_decay < 1:
            raise bad("ema_decay", "expected a number in (0, 1)")
        family = str(self.model).split("-")[0]
        if self.ohem and family in ("fcos", "ssdlite"):
            raise bad("ohem", f"does not apply to {self.model} (FCOS has no sampling step and "
                      "its focal loss already down-weights easy negatives; SSD mines its own)")
        if self.soft_sampling is not None and family == "ssdlite":
            raise bad("soft_sampling", f"is not available for {self.model}")
        if not 0 <= self.ohem_nms_iou <= 1:
            raise bad("ohem_nms_iou", "expected an IoU in [0, 1]")
        if self.soft_sampling is not None:
            from danlu.train.sampling import parse_soft_sampling

            try:
                parse_soft_sampling(self.soft_sampling)
            except ConfigError as e:
                raise bad("soft_sampling", e.message) from None
        if self.time is not None and self.time <= 0:
            raise bad("time", "expected minutes > 0")
        for name, allowed in (("val_protocol", VAL_PROTOCOLS), ("best_mode", ("max", "min")),
                              ("schedule", SCHEDULES), ("augment", AUGMENTS),
                              ("resize", RESIZES), ("optimizer", OPTIMIZERS),
                              ("anchors", ANCHORS)):
            if getattr(self, name) not in allowed:
                raise bad(name, "expected one of " + ", ".join(allowed))

    # -- dict / YAML ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain values only (str, int, float, bool, None, lists): YAML and checkpoint safe."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build from a mapping; unknown keys raise :class:`ConfigError` naming ``source``."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping of option: value")
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}",
                              hint="keys mirror `danlu train` options, e.g. img_size or img-size")
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from e

    def merged(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with ``overrides`` applied (validated)."""
        return TrainConfig.from_dict(self.to_dict() | overrides)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a YAML file of options."""
        return cls.from_dict(load_yaml(path), source=str(path))

    def save(self, path: str | Path) -> None:
        """Write the options as YAML (atomically)."""
        import yaml

        from danlu.data._atomic import write_text_atomic

        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file and line."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from e
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from e
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value at the top level")
    return values


__all__ = ["TrainConfig", "load_yaml", "SCHEDULES", "AUGMENTS", "RESIZES", "OPTIMIZERS"]
