"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

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
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from danlu.errors import ModelError

FORMAT = "danlu-checkpoint"
VERSION = 1


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Write ``checkpoint`` to ``path`` atomically (temporary sibling, fsync, ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
        raise ModelError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})",
                         hint="checkpoints load with weights_only=True; only danlu "
                         "checkpoints are accepted") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ModelError(f"{path}: not a danlu checkpoint (missing format={FORMAT!r})")
    if int(ckpt.get("version", 0)) > VERSION:
        raise ModelError(f"{path}: checkpoint version {ckpt.get('version')} is newer than "
                         f"this danlu reads ({VERSION})", hint="upgrade danlu")
    for key in ("model_config", "class_names", "img_size", "model"):
        if key not in ckpt:
            raise ModelError(f"{path}: checkpoint lacks {key!r}")
    return ckpt


# -- random number generator state -----------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The global RNG states (python, numpy, torch, cuda) as checkpoint-safe values."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002 - the global state, saved for resume
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np_state = ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                n["cached_gaussian"])
    np.random.set_state(np_state)  # noqa: NPY002
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


__all__ = ["FORMAT", "VERSION", "save_checkpoint", "load_checkpoint", "rng_state",
           "set_rng_state"]
