"""Input and output plumbing shared by the NMS family (numpy in, numpy out; torch in, torch out).

The kernels run on contiguous numpy arrays. These helpers turn whatever the caller passed into
such arrays with as little copying as possible, remember where the input lived, and put results
back there. Private: the public functions document the conventions.

torch is never imported here: nothing can be a tensor before the caller has imported torch, so
:func:`_is_tensor` asks ``sys.modules`` and ``import danlu.boxes`` stays free of torch's import
time (about a second).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def _torch() -> Any:
    """The torch module; only called once a tensor has been seen, so it is already imported."""
    return sys.modules["torch"]


def _is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _device_of(*xs: Any) -> torch.device | None:
    """The device of the first tensor among ``xs`` (None when none is a tensor)."""
    for x in xs:
        if _is_tensor(x):
            return x.device
    return None


def _np(x: Any) -> np.ndarray:
    """``x`` as a numpy array; a CPU tensor is shared, not copied."""
    if _is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _float_boxes(x: Any, last: int = 4, name: str = "boxes") -> np.ndarray:
    """Contiguous ``[N, last]`` float array: float64 stays float64, everything else is float32.

    float32 is what torchvision computes in for float32 inputs; we keep the same arithmetic so
    that IoU values compare with the threshold exactly as there.
    """
    a = _np(x)
    if a.ndim == 1 and a.size == 0:
        a = a.reshape(0, last)
    if a.ndim != 2 or a.shape[1] != last:
        raise ValueError(f"{name} must have shape [N, {last}], got {list(a.shape)}")
    dtype = np.float64 if a.dtype == np.float64 else np.float32
    return np.ascontiguousarray(a, dtype=dtype)


def _vector(x: Any, n: int, name: str, dtype: Any = None) -> np.ndarray:
    """A contiguous 1-D array of length ``n`` (optionally cast)."""
    a = _np(x).reshape(-1)
    if a.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {list(_np(x).shape)}")
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    return np.ascontiguousarray(a)


def _scores(x: Any, n: int, name: str = "scores") -> np.ndarray:
    """Scores as float32 or float64 (other dtypes become float64, which orders them exactly)."""
    a = _vector(x, n, name)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return a


def _labels(x: Any, n: int, name: str = "labels") -> np.ndarray:
    a = _vector(x, n, name)
    if a.dtype.kind not in "iub":
        if a.dtype.kind == "f" and np.all(a == np.round(a)):
            return a.astype(np.int64)
        raise ValueError(f"{name} must be integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _rank_order(scores: np.ndarray) -> np.ndarray:
    """Indices sorting ``scores`` by decreasing value, ties broken by lower index first.

    NaN counts as the largest value (as in torch.sort) and -0.0 equals 0.0. For float32 scores
    the (score, index) pair is packed into one uint64 key so a plain sort gives the stable order
    several times faster than a stable argsort.
    """
    n = scores.shape[0]
    s = scores + scores.dtype.type(0)  # a copy with -0.0 turned into +0.0
    nan = np.isnan(s)
    if nan.any():
        s[nan] = np.nan  # one canonical (positive) NaN, which sorts above +inf below
    if scores.dtype == np.float32 and n < 2**32:
        u = s.view(np.uint32).astype(np.uint64)
        # order-preserving map float32 -> uint32, then complemented for descending order
        neg = (u >> np.uint64(31)).astype(bool)
        u = np.where(neg, u ^ np.uint64(0xFFFFFFFF), u | np.uint64(0x80000000))
        key = ((np.uint64(0xFFFFFFFF) - u) << np.uint64(32)) | np.arange(n, dtype=np.uint64)
        key.sort()
        return (key & np.uint64(0xFFFFFFFF)).astype(np.int64)
    order = np.argsort(-s, kind="stable")
    if nan.any():
        # argsort puts NaN last; move those (still in index order) to the front
        order = np.concatenate([order[nan[order]], order[~nan[order]]])
    return order.astype(np.int64, copy=False)


def _group_order(order: np.ndarray, labels: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The kernels' processing order: ``order`` regrouped stably by label.

    Returns ``(perm, sub, starts)``: ``perm = order[sub]`` lists the boxes group by group
    (labels increasing), each group in ``order``'s order; group ``g`` is
    ``perm[starts[g]:starts[g + 1]]``. Without labels there is one group and ``sub`` is None.
    """
    if labels is None:
        return order, None, np.array([0, order.shape[0]], dtype=np.int64)
    from danlu.boxes._grid import group_by_label  # numba, imported on first use

    sub, starts = group_by_label(labels[order])
    return order[sub], sub, starts


def _index_out(idx: np.ndarray, like: Any) -> Any:
    """int64 indices as a numpy array, or as a tensor on ``like``'s device when it is one."""
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    device = _device_of(like) if not isinstance(like, tuple) else _device_of(*like)
    if device is None:
        return idx
    return _torch().from_numpy(idx).to(device)


def _values_out(values: np.ndarray, like: Any, dtype: Any = None) -> Any:
    """Values as numpy, or as a tensor on ``like``'s device (optionally cast to ``dtype``)."""
    device = _device_of(like)
    if device is None:
        return values if dtype is None else values.astype(dtype, copy=False)
    t = _torch().from_numpy(np.ascontiguousarray(values))
    if dtype is not None:
        t = t.to(dtype)
    return t.to(device)
