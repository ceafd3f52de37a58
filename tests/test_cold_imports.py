"""Cold start: the data and eval commands, run in a fresh process, import no heavy room.

Each command runs through the real entry point (``danlu.cli.main.main``, as the console script
calls it) in a new interpreter, which then reports what it imported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from _data_fixtures import make_dataset
from danlu.data.io import save_dataset, save_predictions
from danlu.structures import Dataset, Detections, Sample

HEAVY = ("torch", "torchvision", "kornia", "matplotlib", "tensorboard", "PIL", "scipy.linalg",
         "danlu.train.trainer", "danlu.models", "danlu.infer")

# Runs the command as the console script does, then prints the heavy modules it imported.
_WRAPPER = """
import sys
from danlu.cli.main import main
code = main(sys.argv[2:])
heavy = [m for m in sys.argv[1].split(",") if m in sys.modules]
print("\\nIMPORTED " + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def _imported(*args: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", _WRAPPER, ",".join(HEAVY), *args],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("IMPORTED")
    return [m for m in line.removeprefix("IMPORTED").strip().split(",") if m]


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("cold")
    ds = make_dataset(5)
    gt = save_dataset(ds, tmp / "gt.json", "coco")
    rng = np.random.default_rng(0)
    preds = Dataset([Sample(s.image, s.width, s.height, Detections(
        s.detections.xyxy, s.detections.labels, scores=rng.random(len(s.detections))),
        id=s.id) for s in ds], ds.class_names)
    return gt, save_predictions(preds, tmp / "preds.json")


def test_eval_imports_no_heavy_room(coco_files: tuple[Path, Path]) -> None:
    gt, pred = coco_files
    assert _imported("eval", "--gt", str(gt), "--pred", str(pred), "--json") == []


def test_eval_voc_protocol_imports_no_heavy_room(coco_files: tuple[Path, Path]) -> None:
    gt, pred = coco_files
    assert _imported("eval", "--gt", str(gt), "--pred", str(pred), "-p", "voc12",
                     "--json") == []


def test_data_stats_imports_no_heavy_room(tmp_path: Path) -> None:
    voc = save_dataset(make_dataset(4), tmp_path / "voc", "voc")
    assert _imported("data", "stats", str(voc), "--json") == []
    coco = save_dataset(make_dataset(4), tmp_path / "coco", "coco")
    assert _imported("data", "stats", str(coco), "--json") == []


def test_help_still_lists_every_command() -> None:
    r = subprocess.run([sys.executable, "-m", "danlu", "--help"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    from danlu.cli.main import COMMANDS

    for name in COMMANDS:
        assert name in r.stdout


def test_eval_json_is_one_document(coco_files: tuple[Path, Path]) -> None:
    gt, pred = coco_files
    r = subprocess.run([sys.executable, "-m", "danlu", "eval", "--gt", str(gt), "--pred",
                        str(pred), "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert len(orjson.loads(r.stdout)["stats"]) == 12
