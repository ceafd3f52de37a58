"""Broken input: every error names the file and where in it, and says what was expected.

The corpus in ``tests/corpus/`` holds one small broken file per case; each test builds a
dataset folder around it. The parsers are also fuzzed: random bytes and mutations of valid
files must give a Dataset or a DatasetError, never another exception (the readers are called
directly, without load_dataset's last-resort translation of unexpected errors).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _data_fixtures import png_bytes
from danlu.data import FORMATS, load_dataset, load_predictions
from danlu.data.formats._common import ReadContext
from danlu.errors import DatasetError
from danlu.structures import Dataset

CORPUS = Path(__file__).parent / "corpus"


def voc_root(root: Path, xml: bytes) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "Annotations" / "a.xml").write_bytes(xml)
    (root / "JPEGImages" / "a.jpg").write_bytes(png_bytes(50, 40))
    return root


def coco_root(root: Path, doc: bytes) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(png_bytes(30, 20))
    (root / "annotations.json").write_bytes(doc)
    return root


def yolo_root(root: Path, labels: bytes, yaml: bytes = b"train: images\nnames: [a, b]\n"
              ) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "images" / "a.png").write_bytes(png_bytes(30, 20))
    (root / "labels" / "a.txt").write_bytes(labels)
    (root / "data.yaml").write_bytes(yaml)
    return root


def dota_root(root: Path, text: bytes) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    (root / "images" / "a.png").write_bytes(png_bytes(64, 64))
    (root / "labelTxt" / "a.txt").write_bytes(text)
    return root


BUILD = {"voc": voc_root, "coco": coco_root, "yolo": yolo_root, "dota": dota_root}

# (corpus file, format, message pattern, loads with skip_invalid: (images, boxes) or None)
CASES = [
    ("voc_malformed.xml", "voc", r"a\.xml: line 5: malformed XML", (0, 0)),
    ("voc_billion_laughs.xml", "voc", r"a\.xml: XML entities or DTDs are not allowed", (0, 0)),
    ("voc_external_entity.xml", "voc", r"a\.xml: XML entities or DTDs are not allowed", (0, 0)),
    ("voc_bad_coords.xml", "voc", r"a\.xml: object\[0\]\.bndbox: expected numbers", (1, 0)),
    ("voc_negative_size.xml", "voc", r"a\.xml: object\[1\]: negative box size", (1, 1)),
    ("voc_outside.xml", "voc", r"a\.xml: object\[0\]: box lies outside the image", (1, 0)),
    ("voc_escape_filename.xml", "voc", r"a\.xml: <filename>: .* escapes the dataset folder",
     (0, 0)),
    ("voc_bad_flag.xml", "voc", r"a\.xml: object\[0\]\.difficult: expected 0 or 1", (1, 0)),
    # (a <filename> naming no file is found by the XML stem now: tests/test_layouts.py)
    ("coco_truncated.json", "coco", r"annotations\.json: line 1 column \d+: malformed JSON",
     None),
    ("coco_bad_bbox.json", "coco", r"annotations\[1\]\.bbox: expected 4 numbers", (1, 1)),
    ("coco_negative_wh.json", "coco", r"annotations\[0\]\.bbox: negative width or height",
     (1, 0)),
    ("coco_outside.json", "coco", r"annotations\[1\]\.bbox: box lies outside the image", (1, 1)),
    # names going up or absolute are read, as globox reads them (only writers refuse them)
    ("coco_escape.json", "coco", r"images\[0\]\.file_name: image file .*secret\.png not found",
     (0, 0)),
    ("coco_absolute.json", "coco", r"images\[0\]\.file_name: image file .*absent\.png not found",
     (0, 0)),
    ("coco_unknown_category.json", "coco", r"annotations\[0\]\.category_id: unknown category",
     (1, 0)),
    ("coco_unknown_image.json", "coco", r"annotations\[0\]\.image_id: unknown image id 2",
     (1, 0)),
    ("coco_negative_image_size.json", "coco", r"images\[0\]: expected a positive size", (0, 0)),
    ("coco_missing_image.json", "coco", r"images\[0\]\.file_name: image file .* not found",
     (0, 0)),
    ("coco_results_list.json", "coco", r"expected a JSON object .* got list", None),
    ("yolo_short_line.txt", "yolo", r"a\.txt: line 2: expected 5 values", (0, 0)),
    ("yolo_not_number.txt", "yolo", r"a\.txt: line 2: expected numbers", (0, 0)),
    ("yolo_outside.txt", "yolo", r"a\.txt: line 2: box lies outside the image", (1, 1)),
    ("yolo_fractional_class.txt", "yolo", r"a\.txt: line 1: expected an integer class", (0, 0)),
    ("dota_short_line.txt", "dota", r"a\.txt: line 3: expected 'x1 y1 x2 y2", (0, 0)),
    ("dota_bad_difficult.txt", "dota", r"a\.txt: line 1: difficult: expected 0 or 1", (0, 0)),
    ("dota_not_utf8.txt", "dota", r"a\.txt: line 1: not UTF-8 text", (0, 0)),
    ("dota_bad_gsd.txt", "dota", r"a\.txt: line 1: gsd: expected a number or null", (0, 0)),
]


@pytest.mark.parametrize(("name", "fmt", "pattern", "skipped"), CASES,
                         ids=[c[0] for c in CASES])
def test_corpus(tmp_path: Path, name: str, fmt: str, pattern: str,
                skipped: tuple[int, int] | None) -> None:
    root = BUILD[fmt](tmp_path / "ds", (CORPUS / name).read_bytes())
    with pytest.raises(DatasetError, match=pattern):
        load_dataset(root, fmt)
    if skipped is None:
        with pytest.raises(DatasetError):
            load_dataset(root, fmt, skip_invalid=True)
        return
    ds = load_dataset(root, fmt, skip_invalid=True)
    assert (len(ds), ds.num_boxes) == skipped
    assert ds.meta["warnings"] and all(isinstance(w, str) for w in ds.meta["warnings"])
    assert any("a." in w or "annotations" in w for w in ds.meta["warnings"])


def test_yaml_errors(tmp_path: Path) -> None:
    root = yolo_root(tmp_path / "a", b"", (CORPUS / "yolo_malformed.yaml").read_bytes())
    with pytest.raises(DatasetError, match=r"data\.yaml: line \d+: malformed YAML"):
        load_dataset(root)
    root = yolo_root(tmp_path / "b", b"", (CORPUS / "yolo_escape.yaml").read_bytes())
    with pytest.raises(DatasetError, match=r"data\.yaml: train: .* escapes the dataset folder"):
        load_dataset(root)


def test_unknown_format_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot tell the dataset format"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="unknown dataset format 'pascal'"):
        load_dataset(tmp_path, "pascal")


def test_predictions_bad_results(tmp_path: Path) -> None:
    gt = Dataset([], ["a"])
    (tmp_path / "r.json").write_bytes(b'[{"image_id": 1, "category_id": 1, "bbox": [1, 2]}]')
    with pytest.raises(DatasetError, match=r"r\.json: \[0\]\.bbox: expected 4 numbers"):
        load_predictions(tmp_path / "r.json", gt)


# -- fuzzing ---------------------------------------------------------------------------------
VALID = {
    "voc": (CORPUS.parent / "corpus" / "voc_negative_size.xml").read_bytes().replace(
        b"<xmin>20</xmin>", b"<xmin>2</xmin>"),
    "coco": (CORPUS / "coco_outside.json").read_bytes().replace(b"[25, 1, 50, 5]",
                                                                 b"[2, 1, 5, 5]"),
    "yolo": b"0 0.5 0.5 0.2 0.2\n1 0.25 0.5 0.1 0.3\n",
    "yolo-obb": b"0 0.1 0.1 0.5 0.2 0.4 0.6 0.05 0.5\n1 0.2 0.2 0.3 0.2 0.3 0.3 0.2 0.3\n",
    "dota": b"imagesource:x\ngsd:0.5\n10 10 30 12 28 30 8 28 plane 0\n1 1 5 1 5 5 1 5 car\n",
}
YAML = b"train: images\nnames: [a, b]\n"


def _mutate(data: bytes, ops: list[tuple[int, int, bytes]]) -> bytes:
    b = bytearray(data)
    for kind, pos, chunk in ops:
        if not b:
            b.extend(chunk)
            continue
        pos %= len(b)
        if kind == 0:
            b[pos:pos + len(chunk)] = chunk  # overwrite
        elif kind == 1:
            b[pos:pos] = chunk  # insert
        else:
            del b[pos:pos + max(1, len(chunk))]  # delete
    return bytes(b)


TOKENS = st.sampled_from([b"<", b">", b"</", b"&", b"&amp;", b'"', b"\x00", b"\xff", b"-1",
                          b"1e308", b"nan", b"inf", b" ", b"\n", b"[", b"]", b"{", b"}", b",",
                          b":", b"null", b"../", b"/", b"0", b"9999999999999999999999",
                          b"<object>", b"<name>", b"<!--", b"<![CDATA[", b"<!DOCTYPE a>",
                          b'"bbox"', b'"image_id"', b"true", b"1.5"])
OPS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10**6),
                         st.one_of(TOKENS, st.binary(min_size=1, max_size=8))), max_size=6)


def _read(fmt: str, data: bytes, yaml: bytes = YAML) -> None:
    tmp = Path(tempfile.mkdtemp())
    try:
        root = (BUILD[fmt](tmp / "ds", data) if not fmt.startswith("yolo")
                else yolo_root(tmp / "ds", data, yaml))
        for skip in (False, True):
            try:
                ds = FORMATS[fmt].read(root, ReadContext(skip_invalid=skip))
                assert isinstance(ds, Dataset)
            except DatasetError as e:
                assert e.message
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("fmt", ["voc", "coco", "yolo", "yolo-obb", "dota"])
@FUZZ
@given(ops=OPS)
def test_fuzz_mutations(fmt: str, ops: list) -> None:
    _read(fmt, _mutate(VALID[fmt], ops))


@pytest.mark.parametrize("fmt", ["voc", "coco", "yolo", "yolo-obb", "dota"])
@FUZZ
@given(data=st.binary(max_size=200))
def test_fuzz_random_bytes(fmt: str, data: bytes) -> None:
    _read(fmt, data)


@FUZZ
@given(ops=OPS)
def test_fuzz_yaml(ops: list) -> None:
    _read("yolo", VALID["yolo"], _mutate(YAML, ops))
