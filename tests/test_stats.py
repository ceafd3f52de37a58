"""dataset_stats: counts checked by hand on a small fixed dataset; plot_stats writes a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from danlu.data import dataset_stats, plot_stats
from danlu.structures import Dataset, Detections, Sample


def fixed() -> Dataset:
    a = Detections(np.array([[0, 0, 10, 10],      # small
                             [0, 0, 10, 10],      # duplicate of the first
                             [0, 0, 40, 40],      # medium (1600 px)
                             [10, 10, 10, 30],    # degenerate (width 0)
                             [20, 10, 130, 110]]),  # large and out of bounds (image 120x100)
                   np.array([0, 0, 1, 1, 2]), flags={"difficult": [0, 0, 1, 0, 0]})
    b = Detections(np.array([[5, 5, 25, 10]]), np.array([2]))
    return Dataset([Sample(None, 120, 100, a, id="a"), Sample(None, 64, 48, b, id="b"),
                    Sample(None, 64, 48, id="c")], ["cat", "dog", "bird"])


def test_counts() -> None:
    s = dataset_stats(fixed())
    assert s["num_images"] == 3 and s["num_boxes"] == 6 and s["num_classes"] == 3
    assert s["per_class"] == {"cat": {"boxes": 2, "images": 1},
                              "dog": {"boxes": 2, "images": 1},
                              "bird": {"boxes": 2, "images": 2}}
    assert s["empty_images"] == 1
    assert s["duplicate_boxes"] == 1
    assert s["degenerate_boxes"] == 1
    assert s["out_of_bounds_boxes"] == 1
    assert s["coco_area"] == {"small": 4, "medium": 1, "large": 1}
    assert s["boxes_per_image"]["max"] == 5 and s["boxes_per_image"]["mean"] == 2
    assert sum(s["boxes_per_image"]["histogram"]["counts"]) == 3
    assert sum(s["box_size"]["histogram"]["counts"]) == 6
    assert sum(s["aspect_ratio"]["histogram"]["counts"]) == 5  # degenerate one left out
    assert s["image_sizes"]["most_common"] == {"64x48": 2, "120x100": 1}
    assert s["flags"] == {"difficult": 1}


def test_empty_dataset(tmp_path: Path) -> None:
    s = dataset_stats(Dataset([], ["a"]))
    assert s["num_boxes"] == 0 and s["boxes_per_image"]["mean"] is None
    plot_stats(s, tmp_path / "e.png")
    assert (tmp_path / "e.png").is_file()


def test_plot(tmp_path: Path) -> None:
    plot_stats(dataset_stats(fixed()), tmp_path / "p" / "s.png")
    assert (tmp_path / "p" / "s.png").read_bytes()[:4] == b"\x89PNG"
