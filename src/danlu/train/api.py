"""The library call behind ``danlu train``: :func:`train`.

Example:
    >>> import danlu                                                      # doctest: +SKIP
    >>> from danlu.data.synth import synthesize                           # doctest: +SKIP
    >>> ds = synthesize("shapes", num_images=200, seed=0)                 # doctest: +SKIP
    >>> result = danlu.train(ds, model="fcos-tiny", epochs=5, out="runs/shapes")  # doctest: +SKIP
    >>> result.best, result.metrics["AP50"]                               # doctest: +SKIP
    >>> danlu.train(ds, resume="runs/shapes")  # continue exactly  # doctest: +SKIP

Under ``torchrun`` (or with ``distributed=True``) every process calls :func:`train` with the same
arguments; they train one model with DDP and rank 0 writes the run (see
:mod:`danlu.train.distributed`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from danlu.data.split import VAL_SPLIT_NAMES
from danlu.errors import ConfigError, DatasetError
from danlu.structures import Dataset
from danlu.train.callbacks import Callback
from danlu.train.config import TrainConfig
from danlu.train.trainer import LossFn, Trainer, TrainResult

#: Options that may change when resuming (the rest must match the checkpoint's run).
RESUME_OVERRIDABLE = frozenset({"device", "workers", "epochs", "time", "patience", "data",
                                "val", "resume", "final_eval", "plots", "data_format",
                                "distributed", "max_steps", "strict", "skip_invalid",
                                "image_dir"})
_RUN_FILES = ("last.pt", "best.pt", "results.csv", "history.jsonl", "config.yaml",
              "status.json", "control.jsonl", "monitor.json")


def _load(data: Any, fmt: str | None, what: str, skip_invalid: bool = False,
          image_dir: str | None = None) -> Any:
    if isinstance(data, (str, Path)):
        if str(data).endswith(".pack"):
            from danlu.data.pack import PackedDataset

            return PackedDataset(data)
        import sys

        from danlu.data.io import dataset_notices, load_dataset, skipped_report

        ds = load_dataset(data, format=fmt, skip_invalid=skip_invalid, image_dir=image_dir)
        for note in dataset_notices(ds):
            print(f"note: {what}: {note}", file=sys.stderr, flush=True)
        report = skipped_report(ds.meta.get("warnings") or [], what)
        if report:  # named, so that nothing is dropped unseen
            print(f"warning: {report}", file=sys.stderr, flush=True)
        return ds
    if data is None:
        raise ConfigError(f"no {what} given", hint="pass a Dataset or --data PATH")
    return data


def next_run_dir(project: str | Path, name: str | None) -> Path:
    """``project/name``, or the first free ``project/exp``, ``exp2``, ``exp3`` ..."""
    project = Path(project)
    if name:
        return project / name
    for i in range(1, 100000):
        candidate = project / ("exp" if i == 1 else f"exp{i}")
        if not candidate.exists():
            return candidate
    raise ConfigError(f"{project}: no free run name")  # pragma: no cover


def resolve_resume(resume: str | Path) -> Path:
    """A run folder or a ``.pt`` file -> the ``last.pt`` to resume from."""
    p = Path(resume)
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file():
        raise ConfigError(f"cannot resume: {p} not found",
                          hint="pass the run folder (runs/NAME) or its last.pt")
    return p


def train(data: Dataset | str | Path | Any | None = None, model: str | None = None,
          epochs: int | None = None, out: str | Path | None = None, *,
          val: Dataset | str | Path | None = None, config: TrainConfig | str | Path | None = None,
          resume: str | Path | None = None, callbacks: Sequence[Callback] = (),
          loss_fn: LossFn | None = None, progress: bool | None = None, verbose: bool = True,
          exist_ok: bool = False, trainer_cls: type[Trainer] = Trainer,
          **options: Any) -> TrainResult:
    """Train a detector and return where its checkpoints are and how good ``best.pt`` is.

    Args:
        data: the training :class:`Dataset`, a dataset path (read with
            :func:`danlu.data.io.load_dataset`), or a packed dataset (a
            :class:`~danlu.data.pack.PackedDataset` or a ``.pack`` path); None takes
            ``config.data`` (or, when resuming, the run's data path).
        model: a :func:`danlu.models.build_model` name (default ``fcos-tiny``).
        epochs: passes over the training data.
        out: the run folder; default ``{project}/{name}`` (``runs/exp``, ``runs/exp2`` ...).
        val: a validation :class:`Dataset` or path; default: ``val_split`` of ``data``.
        config: a :class:`TrainConfig` or a YAML file of options; keyword options win.
        resume: a run folder or ``last.pt``: continue exactly (same data order, optimizer,
            scheduler, EMA and RNG state); the run's saved options are used.
        callbacks: extra :class:`~danlu.train.callbacks.Callback` instances.
        loss_fn: replaces the loss computation (see :meth:`Trainer.compute_loss`).
        progress: progress bar on stderr (default: when stderr is a terminal).
        verbose: one summary line per epoch on stderr.
        exist_ok: reuse an existing run folder (its old run files are removed first).
        trainer_cls: a :class:`Trainer` subclass that overrides some of its seams.
        **options: any other :class:`TrainConfig` field (``batch``, ``img_size``, ``lr``,
            ``device``, ``seed``, ``deterministic``, ``time`` ...).

    Returns:
        :class:`TrainResult` (``best``, ``last``, ``metrics`` of ``best.pt`` on validation).
    """
    from danlu.train import distributed

    wants_ddp = bool(options.get("distributed")) or distributed.launched_by_torchrun()
    if not wants_ddp and isinstance(config, TrainConfig):
        wants_ddp = config.distributed
    info = distributed.setup(options.get("device") or getattr(config, "device", "auto")
                             or "auto") if wants_ddp else distributed.DistInfo()
    succeeded = False
    try:
        result = _train(data, model, epochs, out, val=val, config=config, resume=resume,
                        callbacks=callbacks, loss_fn=loss_fn, progress=progress,
                        verbose=verbose, exist_ok=exist_ok, trainer_cls=trainer_cls,
                        dist_info=info, **options)
        succeeded = True
        return result
    finally:
        distributed.teardown(info, succeeded=succeeded)


def _train(data: Any, model: str | None, epochs: int | None, out: str | Path | None, *,
           val: Any, config: Any, resume: Any, callbacks: Sequence[Callback],
           loss_fn: LossFn | None, progress: bool | None, verbose: bool, exist_ok: bool,
           trainer_cls: type[Trainer], dist_info: Any, **options: Any) -> TrainResult:
    from danlu.train.distributed import broadcast_object

    main = dist_info.is_main
    given = dict(options)
    if model is not None:
        given["model"] = model
    if epochs is not None:
        given["epochs"] = epochs
    if isinstance(data, (str, Path)):
        given["data"] = str(data)
    if isinstance(val, (str, Path)):
        given["val"] = str(val)

    resume_from: Path | None = None
    if resume is not None:
        resume_from = resolve_resume(resume)
        from danlu.train.checkpoint import load_checkpoint

        saved = load_checkpoint(resume_from)
        if "train" not in saved:
            raise ConfigError(f"{resume_from}: holds no training state to resume from")
        base = TrainConfig.from_dict(saved["config"], source=str(resume_from))
        changed = sorted(k for k, v in given.items()
                         if k not in RESUME_OVERRIDABLE and getattr(base, k, v) != v)
        if changed:
            raise ConfigError("cannot change " + ", ".join(changed) + " when resuming",
                              hint="resume continues the saved run; start a new run instead")
        cfg = base.merged({**given, "resume": str(resume)})
        run_dir = resume_from.parent
    else:
        if isinstance(config, (str, Path)):
            config = TrainConfig.load(config)
        cfg = (config or TrainConfig()).merged(given)
        shared: Any = None
        if main:
            try:
                shared = _prepare_run_dir(cfg, out, exist_ok)
            except ConfigError as e:
                shared = (e.message, e.hint)
        shared = broadcast_object(shared)
        if isinstance(shared, tuple):  # rank 0's refusal, raised on every rank
            raise ConfigError(shared[0], hint=shared[1])
        run_dir = shared
        cfg = cfg.merged({"name": run_dir.name, "project": str(run_dir.parent)})

    train_data, val_data = _datasets(data, val, cfg)
    if cfg.img_size == "auto":  # resolved once; the run's config records the number
        from danlu.train.data import input_size_for

        cfg = cfg.merged({"img_size": input_size_for(train_data)})
    created = main and not run_dir.exists()
    made_parent = main and not run_dir.parent.exists()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
    trainer = None
    try:
        trainer = trainer_cls(cfg, train_data, val_data, run_dir=run_dir, callbacks=callbacks,
                              loss_fn=loss_fn, resume_from=resume_from, progress=progress,
                              verbose=verbose and main, rank=dist_info.rank,
                              world_size=dist_info.world_size, local_rank=dist_info.local_rank)
        if resume_from is not None and "epochs" in given:  # extend (or shorten) the run
            trainer.resume_epochs = int(given["epochs"])
        return trainer.fit()
    except BaseException:
        # a run that failed before its first checkpoint (a bad --model, no CUDA) leaves no
        # folder behind; one with a checkpoint stays, to be resumed
        if created and not (run_dir / "last.pt").exists():
            if trainer is not None:
                trainer.close()
                trainer = None
            shutil.rmtree(run_dir, ignore_errors=True)
            if made_parent:
                with contextlib.suppress(OSError):  # only when empty
                    run_dir.parent.rmdir()
        raise
    finally:
        if trainer is not None:
            trainer.close()


def _prepare_run_dir(cfg: TrainConfig, out: str | Path | None,
                     exist_ok: bool) -> Path:
    """The new run's folder, emptied of an old run's files when ``exist_ok``."""
    run_dir = Path(out) if out is not None else next_run_dir(cfg.project, cfg.name)
    if (run_dir / "last.pt").exists() or (run_dir / "results.csv").exists():
        if not exist_ok:
            raise ConfigError(f"{run_dir}: a run already exists there",
                               hint=f"continue it with --resume {run_dir}, choose another "
                               "--name, or pass --exist-ok to replace it")
        for name in _RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        for events in run_dir.glob("events.out.tfevents.*"):
            events.unlink(missing_ok=True)
        for sub in ("eval", "plots"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
    return run_dir


def declared_splits(data: Any, with_val: bool) -> tuple[Any, Any, str | None]:
    """The declared ``train`` split of ``data`` and, unless ``with_val`` (a validation set was
    given apart), its declared validation split, with a sentence saying which is used for
    what; ``(data, None, None)`` when ``data`` declares no train split beside others.

    Splits are the readers' ``Sample.meta["split"]`` (a YOLO ``data.yaml``'s ``train:`` /
    ``val:``, ``images/<split>/`` folders). Merging them and cutting a random validation
    split would train on the user's validation images; a ``test`` split is never trained on.
    """
    if not isinstance(data, Dataset) or not len(data):
        return data, None, None
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(data.samples):
        split = s.meta.get("split") if isinstance(s.meta, dict) else None
        if split is None:
            return data, None, None
        groups.setdefault(str(split), []).append(i)
    if "train" not in groups or len(groups) < 2:
        return data, None, None
    train = data.subset(groups["train"])
    val_name = next((n for n in VAL_SPLIT_NAMES if n in groups), None)
    val = data.subset(groups[val_name]) if val_name and not with_val else None
    used = {"train"} | ({val_name} if val is not None else set())
    unused = ", ".join(f"{n!r} ({len(groups[n])})" for n in groups if n not in used)
    said = f"data: training on split 'train' ({len(train)} images)"
    if val is not None:
        said += f", validating on split {val_name!r} ({len(val)} images)"
    if unused:
        said += f"; not used: {unused}"
    return train, val, said


def _datasets(data: Any, val: Any, cfg: TrainConfig) -> tuple[Any, Any]:
    """The training and validation data: the declared splits of ``data`` when it has them,
    else the validation split cut off when no ``val``."""
    train_data = _load(data if data is not None else cfg.data, cfg.data_format, "training data",
                       cfg.skip_invalid, cfg.image_dir)
    with_val = val is not None or bool(cfg.val)
    train_data, declared_val, said = declared_splits(train_data, with_val)
    if said:
        import sys

        print(said, file=sys.stderr, flush=True)
    val_data = declared_val
    if with_val:
        val_data = _load(val if val is not None else cfg.val, cfg.data_format,
                         "validation data", cfg.skip_invalid, cfg.image_dir)
    elif val_data is None and cfg.val_split > 0:
        if not isinstance(train_data, Dataset):
            raise ConfigError("val_split needs a Dataset; pass val= for packed data")
        from danlu.data.split import split_dataset

        if len(train_data) < 2:
            raise DatasetError("too few images to hold out a validation split",
                               hint="pass --val-split 0 or a --val dataset")
        parts = split_dataset(train_data, (1 - cfg.val_split, cfg.val_split), seed=cfg.seed,
                              names=("train", "val"))
        train_data, val_data = parts["train"], parts["val"]
        if len(val_data) == 0:
            val_data = None
    return train_data, val_data


__all__ = ["train", "next_run_dir", "resolve_resume", "RESUME_OVERRIDABLE"]
