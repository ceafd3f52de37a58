"""Data-parallel training across processes: PyTorch DDP launched by ``torchrun``.

``torchrun`` starts one process per device and tells each its place through environment
variables: ``RANK`` (0 .. WORLD_SIZE-1, over all machines), ``LOCAL_RANK`` (on this machine),
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` (where rank 0 listens). :func:`setup`
reads them and joins the process group (backend ``nccl`` on CUDA, ``gloo`` on CPU).

What the trainer does with it (see :class:`~danlu.train.trainer.Trainer`):

* every rank builds the same model (same seed) and DDP wraps it: gradients are averaged over
  ranks in the backward pass, so every rank takes the same optimizer step;
* ``--batch`` is the **global** batch: each rank loads ``batch / world_size`` images of the
  same permutation (rank ``r`` takes positions ``r, r + W, ...``), so the union of the ranks'
  batches at step ``k`` is exactly the single-process batch ``k``;
* only rank 0 writes files (checkpoints, ``results.csv``, ``history.jsonl``, plots) and
  evaluates; its validation result, stop decisions (early stopping, time budget) and the
  logged losses (averaged with :func:`all_reduce_mean`) are shared with every rank.

Example (two processes on one machine; ``--distributed`` is implied under ``torchrun``):

.. code-block:: bash

    torchrun --nproc-per-node 2 -m danlu train --data data/shapes --batch 16 --distributed

The library calls below are safe to use in a single process: they then do nothing.

    >>> all_reduce_mean({"loss": 1.5})
    {'loss': 1.5}
    >>> broadcast_object({"AP": 0.5})
    {'AP': 0.5}
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from danlu.errors import ConfigError

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` (global), ``local_rank`` (on this machine),
    ``world_size``, the ``backend`` and whether :func:`setup` created the process group
    (and so should destroy it)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun's environment variables say there is more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment.

    Args:
        device: the ``--device`` option: ``nccl`` is used when it resolves to CUDA (each rank
            then uses ``cuda:LOCAL_RANK``), ``gloo`` otherwise.

    Returns:
        A :class:`DistInfo`; ``world_size == 1`` (nothing initialised) when the environment
        holds no multi-process launch.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")),
                        dist.get_world_size(), dist.get_backend(), owns_group=False)
    if not launched_by_torchrun():
        return DistInfo()
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise ConfigError("distributed training: environment lacks " + ", ".join(missing),
                          hint="launch with torchrun --nproc-per-node N -m danlu train ...")
    if not dist.is_available():  # pragma: no cover - torch built without distributed
        raise ConfigError("this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    from danlu.models.device import resolve_device

    use_cuda = resolve_device(device).type == "cuda"
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), backend,
                    owns_group=True)


def teardown(info: DistInfo, *, succeeded: bool = True) -> None:
    """Leave the process group if :func:`setup` created it.

    After a run that succeeded on this rank, every rank first meets at a barrier (no rank
    tears its connections down while a peer is still sending), then the objects that hold the
    group (a DDP wrapper's reducer, often inside reference cycles) are collected while the
    interpreter is whole. Left to interpreter exit, gloo's C++ state is destroyed during
    finalisation, and a rank could abort ("terminate called without an active exception")
    after training had finished. After a failure there is no barrier: the peers may never
    reach it.
    """
    if not (info.owns_group and dist.is_initialized()):
        return
    if succeeded:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()
    gc.collect()


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """The mean over ranks of each value (same keys on every rank, in any order)."""
    if not active() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def all_true(flag: bool) -> bool:
    """True when ``flag`` is true on every rank (e.g. "my loss is finite")."""
    if not active():
        return bool(flag)
    t = torch.tensor([0 if flag else 1], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item()) == 0


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable values; the ranks' own are ignored)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_collective_device())
    return box[0]


def broadcast_floats(values: list[float], src: int = 0) -> list[float]:
    """Rank ``src``'s numbers on every rank, as one small float64 tensor (cheaper than
    :func:`broadcast_object`: no pickling, one collective)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.broadcast(t, src=src)
    return t.tolist()


def barrier() -> None:
    """Wait until every rank reaches this point."""
    if active():
        dist.barrier()


__all__ = ["DistInfo", "setup", "teardown", "active", "launched_by_torchrun",
           "all_reduce_mean", "all_true", "broadcast_object", "broadcast_floats", "barrier"]
