"""Assertions for tests that compare detections (ours, a user's, or an oracle's)."""

from __future__ import annotations

from danlu.structures import Detections, compare_detections


def assert_detections_close(actual: Detections, expected: Detections, *,
                            atol: float = 1e-4) -> None:
    """Raise ``AssertionError`` naming the first difference between two ``Detections``.

    Example:
        >>> import numpy as np
        >>> d = Detections(np.array([[0, 0, 1, 1]]), np.array([3]))
        >>> assert_detections_close(d, d[np.array([0])])
    """
    problem = compare_detections(actual, expected, atol=atol)
    if problem is not None:
        raise AssertionError(f"Detections differ: {problem}")
