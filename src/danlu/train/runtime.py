"""Process-wide switches a training run sets and restores: seeds, torch's thread count, and
deterministic algorithms.

Example:
    >>> import torch
    >>> seed_everything(0); a = torch.rand(1); seed_everything(0)
    >>> bool(torch.rand(1) == a)
    True
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch


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


__all__ = ["seed_everything", "keep_torch_threads", "algorithms"]
