"""``danlu data convert`` and ``danlu data stats`` through the real entry point."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from _data_fixtures import make_dataset, png_bytes
from danlu.cli.main import main
from danlu.data import load_dataset, save_dataset


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    save_dataset(make_dataset(5), tmp_path / "voc", "voc")
    return tmp_path / "voc"


def test_convert_every_format(voc: Path, tmp_path: Path) -> None:
    for fmt in ("coco", "yolo", "dota", "voc"):
        out = tmp_path / f"out-{fmt}"
        assert main(["data", "convert", str(voc), str(out), "--to", fmt]) == 0
        ds = load_dataset(out)
        assert ds.meta["format"] == fmt and len(ds) == 5


def test_convert_options(voc: Path, tmp_path: Path) -> None:
    out = tmp_path / "y"
    assert main(["data", "convert", str(voc), str(out), "--to", "yolo", "--format", "voc",
                 "--images", "symlink"]) == 0
    assert all(p.is_symlink() for p in (out / "images" / "train").iterdir())
    # an existing output is refused (exit 2, one line), then replaced with --overwrite
    assert main(["data", "convert", str(voc), str(out), "--to", "yolo"]) == 2
    assert main(["data", "convert", str(voc), str(out), "--to", "yolo", "--overwrite"]) == 0
    assert main(["data", "convert", str(voc), str(tmp_path / "c.json"), "--to", "coco"]) == 0
    assert len(load_dataset(tmp_path / "c.json")) == 5


def test_convert_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    for stem in ("a", "b"):
        (root / "images" / f"{stem}.png").write_bytes(png_bytes(20, 20))
    (root / "labelTxt" / "a.txt").write_text("1 1 5 1 5 5 1 5 car 0\n")
    (root / "labelTxt" / "b.txt").write_text("1 1 5 1 5 car 0\n")
    assert main(["data", "convert", str(root), str(tmp_path / "out"), "--to", "coco"]) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "error:" in err and "b.txt: line 1: expected 'x1 y1" in err
    assert not (tmp_path / "out").exists()
    assert main(["data", "convert", str(root), str(tmp_path / "out"), "--to", "coco",
                 "--skip-invalid"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "skipped 1 invalid items" in err
    report = (tmp_path / "out" / "danlu-warnings.txt").read_text()
    assert "b.txt: line 1" in report
    assert len(load_dataset(tmp_path / "out")) == 1


def test_convert_unknown_format(voc: Path, tmp_path: Path) -> None:
    assert main(["data", "convert", str(voc), str(tmp_path / "x"), "--to", "pascal-xml"]) == 2
    assert not (tmp_path / "x").exists()


def test_stats_json_and_plot(voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                             ) -> None:
    capsys.readouterr()
    plot = tmp_path / "s.png"
    assert main(["data", "stats", str(voc), "--json", "--plot", str(plot)]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["num_images"] == 5 and doc["num_boxes"] == load_dataset(voc).num_boxes
    for key in ("per_class", "boxes_per_image", "box_size", "aspect_ratio", "coco_area",
                "empty_images", "duplicate_boxes", "degenerate_boxes", "out_of_bounds_boxes"):
        assert key in doc
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_table(voc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["data", "stats", str(voc)]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "boxes per image" in out.err and "traffic-light" in out.err


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("convert", "stats"):
        assert main(["data", cmd, "--help"]) == 0
        assert "Example: danlu data" in capsys.readouterr().out
