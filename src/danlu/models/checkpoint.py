"""Checkpoint files: written atomically, read with ``torch.load(weights_only=True)``, and the
model they describe rebuilt (:func:`build_model_from_checkpoint`).

This is the model room's half of checkpoints: what prediction, export and the service need.
The training state inside a checkpoint (RNG states for exact resume) is written by
:mod:`danlu.train.checkpoint`.

A checkpoint is a plain dict of tensors and primitive containers (no pickled classes), so
loading never runs code from the file. Keys:

* ``format`` (``"danlu-checkpoint"``), ``version``;
* ``model_config``: the keyword arguments of :func:`danlu.models.build_model` that rebuild the
  model; ``class_names``; ``img_size``; ``resize`` (``letterbox`` or ``stretch``);
* ``model``: the weights to predict with (the EMA weights when EMA is on);
* ``train`` (absent in a weights-only export): ``model`` (raw weights), ``ema``, ``optimizer``,
  ``scaler``, ``scheduler``, ``epoch``, ``step``, ``batch_in_epoch``, ``rng`` (python, numpy,
  torch, cuda), ``sampler``, ``best_fitness``, ``bad_epochs``, ``elapsed``, ``callbacks``;
* ``config``: the resolved :class:`~danlu.train.config.TrainConfig` as a dict;
* ``metrics``: the latest validation numbers (may be empty).

Example:
    >>> import tempfile, pathlib, torch
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.pt"
    >>> save_checkpoint({"format": FORMAT, "version": VERSION, "model": {"w": torch.ones(2)},
    ...                  "model_config": {"name": "x", "num_classes": 1},
    ...                  "class_names": ["a"], "img_size": 64}, p)
    >>> load_checkpoint(p)["model"]["w"].tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.errors import ModelError

FORMAT = "danlu-checkpoint"
VERSION = 1


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Write ``checkpoint`` to ``path`` atomically (temporary sibling, fsync, ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from danlu.data._atomic import temp_sibling

    fd, tmp = temp_sibling(path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


#: the hint of every "not a danlu checkpoint" error
WHAT_A_CHECKPOINT_IS = (
    "a danlu checkpoint is the best.pt / last.pt a `danlu train` run writes: the model config, "
    "class names, input size and weights. It is read with torch.load(weights_only=True): "
    "danlu never unpickles arbitrary Python objects. For an .onnx or .torchscript export, "
    "keep its suffix.")


def _why_unreadable(e: Exception) -> str:
    """A short reason a file is not a loadable checkpoint, without torch's advice."""
    text = str(e)
    if "Unsupported global" in text:  # the weights-only unpickler met a class
        return "it holds Python objects beyond tensors and plain data"
    if type(e).__name__ == "UnpicklingError" or isinstance(e, (EOFError, IndexError)) \
            or "zip" in text.lower() or "magic number" in text:
        return "not a PyTorch file, or a truncated one"
    return f"PyTorch cannot read it: {type(e).__name__}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Read a danlu checkpoint safely (``weights_only=True``) and check its format."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise ModelError(f"{path}: no best.pt or last.pt in this folder")
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/zip error means a bad file
        # torch's own text may advise weights_only=False: never pass that on
        raise ModelError(f"{path}: not a danlu checkpoint ({_why_unreadable(e)})",
                         hint=WHAT_A_CHECKPOINT_IS) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        kind = "a dict without format='danlu-checkpoint'" if isinstance(ckpt, dict) \
            else f"a {type(ckpt).__name__}"
        raise ModelError(f"{path}: not a danlu checkpoint (a PyTorch file holding {kind})",
                         hint=WHAT_A_CHECKPOINT_IS)
    if int(ckpt.get("version", 0)) > VERSION:
        raise ModelError(f"{path}: checkpoint version {ckpt.get('version')} is newer than "
                         f"this danlu reads ({VERSION})", hint="upgrade danlu")
    for key in ("model_config", "class_names", "img_size", "model"):
        if key not in ckpt:
            raise ModelError(f"{path}: checkpoint lacks {key!r}")
    return ckpt


def build_model_from_checkpoint(ckpt: dict[str, Any], *, weights: str = "model") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights.

    Args:
        ckpt: a dict from :func:`load_checkpoint`.
        weights: ``"model"`` (the weights to predict with: the EMA weights when EMA was on),
            or a key of ``ckpt["train"]`` (``"model"`` for the raw weights, ``"ema"``).

    Returns:
        The model, in train mode, on the CPU; pretrained weights are never fetched.
    """
    from danlu.models.builder import build_model

    config = dict(ckpt["model_config"])
    config["weights"] = None  # the checkpoint carries the weights; never fetch pretrained ones
    try:
        model = build_model(**config)
    except TypeError as e:
        raise ModelError(f"cannot rebuild model from checkpoint config {config}: {e}") from e
    state = ckpt["model"] if weights == "model" else ckpt["train"][weights]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"checkpoint weights do not fit model {config.get('name')!r}: "
                         f"{str(e).splitlines()[0]}") from e
    return model


__all__ = ["FORMAT", "VERSION", "save_checkpoint", "load_checkpoint",
           "build_model_from_checkpoint"]
