"""The training half of a checkpoint: the global RNG states that exact resume restores.

Reading and writing checkpoint files lives with the model (:mod:`danlu.models.checkpoint`);
its two functions are re-exported here for the training code and its users.

Example:
    >>> import random
    >>> state = rng_state(); a = random.random(); set_rng_state(state)
    >>> random.random() == a
    True
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import numpy as np
import torch

from danlu.models.checkpoint import FORMAT, VERSION, load_checkpoint, save_checkpoint


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
