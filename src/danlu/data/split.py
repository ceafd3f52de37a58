"""Split a dataset into train / val / test with exact sizes, stratified by class presence.

Example:
    >>> import numpy as np
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> samples = [Sample(None, 8, 8, Detections(np.zeros((1, 4)), [i % 3]), id=i)
    ...            for i in range(10)]
    >>> parts = split_dataset(Dataset(samples, ["a", "b", "c"]), (0.8, 0.1, 0.1), seed=0)
    >>> {k: len(v) for k, v in parts.items()}
    {'train': 8, 'val': 1, 'test': 1}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from danlu.errors import ConfigError
from danlu.structures import Dataset

#: split names that mean "validation" in the datasets people have (Roboflow writes ``valid``)
VAL_SPLIT_NAMES = ("val", "valid", "validation")

_DEFAULT_NAMES = {1: ("all",), 2: ("train", "val"), 3: ("train", "val", "test")}


def split_sizes(n: int, ratios: Sequence[float]) -> list[int]:
    """Exact part sizes summing to ``n``: largest-remainder rounding of ``n * ratio``.

    Ratios are normalised to sum to 1; ties in the remainders go to the earlier part.

    Example:
        >>> split_sizes(10, (0.8, 0.1, 0.1)), split_sizes(7, (1, 1, 1))
        ([8, 1, 1], [3, 2, 2])
    """
    r = np.asarray(ratios, np.float64)
    if r.ndim != 1 or len(r) == 0 or (r < 0).any() or r.sum() <= 0:
        raise ConfigError(f"ratios must be non-negative with a positive sum, got {list(ratios)}")
    raw = n * r / r.sum()
    sizes = np.floor(raw + 1e-9).astype(np.int64)
    rest = n - int(sizes.sum())
    order = np.argsort(-(raw - sizes), kind="stable")
    sizes[order[:rest]] += 1
    return sizes.tolist()


def _class_image_counts(ds: Dataset) -> tuple[list[np.ndarray], np.ndarray]:
    """Per image, its distinct labels; per class, the number of images containing it."""
    present = [np.unique(s.detections.labels) for s in ds]
    ncls = max([len(ds.class_names)] + [int(p.max()) + 1 for p in present if len(p)])
    freq = np.zeros(ncls, np.int64)
    for p in present:
        freq[p] += 1
    return present, freq


def stratum_keys(ds: Dataset) -> np.ndarray:
    """Each image's stratum: its rarest class (fewest images containing it), -1 when empty.

    Ties between equally rare classes go to the lower label.

    Example:
        >>> import numpy as np
        >>> from danlu.structures import Dataset, Detections, Sample
        >>> labels = [[0], [0, 1], [1, 2], []]
        >>> ds = Dataset([Sample(None, 4, 4, Detections(np.zeros((len(x), 4)), x)) for x in labels],
        ...              ["a", "b", "c"])
        >>> stratum_keys(ds).tolist()
        [0, 0, 2, -1]
    """
    present, freq = _class_image_counts(ds)
    keys = np.full(len(ds), -1, np.int64)
    for i, p in enumerate(present):
        if len(p):
            keys[i] = p[np.lexsort((p, freq[p]))[0]]
    return keys


def split_dataset(
    ds: Dataset,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    *,
    stratify: bool = True,
    names: Sequence[str] | None = None,
) -> dict[str, Dataset]:
    """Partition ``ds`` into parts of exact sizes, spreading each stratum over the parts.

    Sizes are :func:`split_sizes` (largest remainder, summing to ``len(ds)``). With
    ``stratify``, images are grouped by :func:`stratum_keys` (each image's rarest class),
    shuffled within their group, and dealt group by group, rarest class first, each to the
    part that is furthest below its share so far — each stratum is
    divided in the given ratios up to rounding. Without it, one shuffle is dealt the same
    way. Within each part, samples keep their original order.

    Args:
        ds: the dataset to split.
        ratios: relative part sizes (normalised to sum to 1).
        seed: seed of the shuffle; the same seed gives the same split.
        stratify: stratify by class presence (True) or split at random (False).
        names: part names; default ``train, val`` for 2 ratios, ``train, val, test`` for 3,
            else ``split0, split1, ...``.

    Returns:
        ``{name: Dataset}`` in the order of ``ratios``; every sample appears in exactly one
        part. Each part's ``meta["split"]`` holds its name, the seed and the ratios.
    """
    r = list(ratios)
    if names is None:
        names = _DEFAULT_NAMES.get(len(r), tuple(f"split{i}" for i in range(len(r))))
    if len(names) != len(r) or len(set(names)) != len(names):
        raise ConfigError(f"need {len(r)} distinct split names, got {list(names)}")
    sizes = split_sizes(len(ds), r)
    rng = np.random.default_rng(seed)
    n = len(ds)
    if stratify:
        keys = stratum_keys(ds)
        freq = _class_image_counts(ds)[1]
        rarity = np.where(keys >= 0, freq[np.maximum(keys, 0)], np.iinfo(np.int64).max)
    else:
        keys = rarity = np.zeros(n, np.int64)
    # groups from the rarest class to the most common (images without boxes last), each
    # group in random order; dealt in one pass so every group is split in the ratios.
    order = np.lexsort((rng.permutation(n), keys, rarity))
    share = np.asarray(sizes, np.float64) / max(n, 1)
    counts = np.zeros(len(sizes), np.int64)
    part = np.empty(n, np.int64)
    for step, i in enumerate(order):
        deficit = share * (step + 1) - counts
        deficit[counts >= sizes] = -np.inf
        k = int(np.argmax(deficit))
        part[i] = k
        counts[k] += 1
    out = {}
    for k, name in enumerate(names):
        sub = ds.subset(np.flatnonzero(part == k))
        sub.meta["split"] = {"name": name, "seed": int(seed), "ratios": [float(x) for x in r]}
        out[name] = sub
    return out


__all__ = ["split_dataset", "split_sizes", "stratum_keys", "VAL_SPLIT_NAMES"]
