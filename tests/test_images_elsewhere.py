"""Annotation-only datasets from the command line (issue 12): a COCO json or a VOC folder
whose images are elsewhere or absent is read where no pixels are needed (stats, eval,
convert --images none) with a note counting the missing images, ``--image-dir`` finds them,
and the error where pixels are needed names what a command can do (not a library argument)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests._cli import danlu

from danlu.data.images_elsewhere import missing_images, relocate_images
from danlu.structures import Dataset, Sample


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("elsewhere")
    for args in (("data", "synth", "--num-images", "6", "--image-size", "64", "--scale",
                  "12,28", "--out", "shapes"),
                 ("data", "convert", "shapes", "ann", "--to", "coco", "--images", "none")):
        r = danlu(*args, cwd=root)
        assert r.returncode == 0, r.stderr
    shutil.copytree(root / "shapes" / "Annotations", root / "vocann" / "Annotations")
    return root


@pytest.mark.parametrize("dataset", ["ann", "vocann"])
def test_stats_and_convert_read_annotations_alone(root, dataset):
    r = danlu("data", "stats", dataset, "--json", cwd=root)
    assert r.returncode == 0, r.stderr
    assert "6 of 6 images are not on disk" in r.stderr and '"boxes"' in r.stdout
    out = f"{dataset}-yolo-none"
    r = danlu("data", "convert", dataset, out, "--to", "dota", "--images", "none", cwd=root)
    assert r.returncode == 0 and "6 of 6 images are not on disk" in r.stderr, r.stderr


def test_where_pixels_are_needed_the_error_names_image_dir(root):
    r = danlu("data", "convert", "ann", "copy", "--to", "voc", cwd=root)
    assert r.returncode == 2 and "--image-dir" in r.stderr and "check_images" not in r.stderr
    r = danlu("data", "convert", "ann", "copy", "--to", "voc", "--image-dir", "shapes",
              cwd=root)
    assert r.returncode == 0 and "6 of 6 images found in shapes" in r.stderr, r.stderr
    r = danlu("data", "show", "ann", "--image-dir", "shapes", "--out", "show", cwd=root)
    assert r.returncode == 0 and (root / "show" / "index.html").is_file(), r.stderr


def test_eval_needs_no_images_but_its_report_does(root):
    r = danlu("eval", "--gt", "ann", "--pred", "shapes", "--json", cwd=root)  # gt as preds
    assert r.returncode == 0 and "6 of 6 images are not on disk" in r.stderr, r.stderr
    r = danlu("eval", "--gt", "ann", "--pred", "shapes", "--report", "rep", cwd=root)
    assert r.returncode == 2 and "--image-dir" in r.stderr
    r = danlu("eval", "--gt", "ann", "--pred", "shapes", "--report", "rep", "--image-dir",
              "shapes", cwd=root)
    assert r.returncode == 0 and (root / "rep" / "report.html").is_file(), r.stderr


def test_relocation_by_name_then_stem_and_never_a_guess(tmp_path):
    for rel in ("a/x.png", "b/x.png", "c/y.png", "z.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    ds = Dataset([Sample(f"/gone/{n}", 8, 8) for n in ("x.png", "y.jpg", "z.jpg", "w.jpg")],
                 ["cat"])
    moved, found = relocate_images(ds, tmp_path)
    names = [Path(s.image).relative_to("/") if str(s.image).startswith("/gone") else
             Path(s.image).relative_to(tmp_path) for s in moved.samples]
    assert found == 2 and names[1] == Path("c/y.png") and names[2] == Path("z.jpg")
    assert [Path(s.image).name for s in missing_images(moved)] == ["x.png", "w.jpg"]


def test_train_finds_the_images_with_image_dir(root):
    base = ("train", "--data", "ann", "--epochs", "1", "--img-size", "64", "--batch", "2",
            "--project", "runs", "--no-final-eval")
    r = danlu(*base, "--name", "no-dir", cwd=root)
    assert r.returncode == 2 and "--image-dir" in r.stderr and "check_images" not in r.stderr
    r = danlu(*base, "--name", "dir", "--image-dir", "shapes", "--json", cwd=root)
    assert r.returncode == 0, r.stderr
    assert "6 of 6 images found in shapes" in r.stderr
    assert (root / "runs" / "dir" / "best.pt").is_file()
    assert "image_dir: shapes" in (root / "runs" / "dir" / "config.yaml").read_text()
