"""LabelMe JSON: read files as LabelMe 5 writes them, round trips, errors and fuzzing."""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _data_fixtures import make_dataset, png_bytes
from danlu.data import io as data_io
from danlu.data.formats._common import ReadContext
from danlu.data.formats.labelme import is_labelme, read_labelme, write_labelme
from danlu.errors import DatasetError
from danlu.structures import Dataset, Detections, Sample
from test_bad_input import OPS, _mutate

# -- a folder as LabelMe 5 writes it -------------------------------------------------------
# a.json: float coordinates, a rectangle drawn from bottom-right to top-left, a 4-point
# polygon (an oriented box), a point (not a box), a 5-point polygon, a difficult flag
A_JSON = b"""{
  "version": "5.4.1",
  "flags": {
    "blurry": true
  },
  "shapes": [
    {
      "label": "cat",
      "points": [
        [
          40.5,
          30.25
        ],
        [
          10.0,
          5.75
        ]
      ],
      "group_id": null,
      "description": "",
      "shape_type": "rectangle",
      "flags": {
        "difficult": true
      },
      "mask": null
    },
    {
      "label": "dog",
      "points": [[20.0, 10.0], [30.0, 14.0], [26.0, 24.0], [16.0, 20.0]],
      "group_id": 3,
      "description": "rotated",
      "shape_type": "polygon",
      "flags": {},
      "mask": null
    },
    {
      "label": "cat",
      "points": [[50.0, 40.0]],
      "group_id": null,
      "description": "",
      "shape_type": "point",
      "flags": {},
      "mask": null
    },
    {
      "label": "bird",
      "points": [[2.0, 2.0], [8.0, 3.0], [9.5, 9.0], [4.0, 12.0], [1.0, 7.0]],
      "group_id": null,
      "description": "",
      "shape_type": "polygon",
      "flags": {
        "difficult": false
      },
      "mask": null
    }
  ],
  "imagePath": "a.png",
  "imageData": null,
  "imageHeight": 48,
  "imageWidth": 64
}
"""
# b.json: LabelMe 4 (no description), saved on Windows with the image elsewhere
B_JSON = b"""{
  "version": "4.5.6",
  "flags": {},
  "shapes": [
    {"label": "dog", "points": [[0, 0], [12, 8]], "group_id": null,
     "shape_type": "rectangle", "flags": {}},
    {"label": "dog", "points": [[1.0, 1.0], [3.0, 3.0], [5.0, 1.0]], "group_id": null,
     "shape_type": "linestrip", "flags": {}}
  ],
  "imagePath": "..\\\\photos\\\\b.png",
  "imageData": null,
  "imageHeight": 30,
  "imageWidth": 40
}
"""
C_PNG = png_bytes(20, 10)


def c_json() -> bytes:
    """c.json: the image only embedded in imageData (the file it names is gone)."""
    doc = {"version": "5.0.1", "flags": {}, "shapes": [
        {"label": "cat", "points": [[1, 1], [5, 5]], "group_id": None, "description": "",
         "shape_type": "rectangle", "flags": {}}],
        "imagePath": "gone.png", "imageData": base64.b64encode(C_PNG).decode(),
        "imageHeight": 10, "imageWidth": 20}
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


def handwritten(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "a.json").write_bytes(A_JSON)
    (root / "a.png").write_bytes(png_bytes(64, 48))
    (root / "b.json").write_bytes(B_JSON)
    (root / "b.png").write_bytes(png_bytes(40, 30))
    (root / "c.json").write_bytes(c_json())
    return root


def read(root: Path, **kw: object) -> Dataset:
    return read_labelme(root, ReadContext(**kw))  # type: ignore[arg-type]


@pytest.fixture
def registered() -> Iterator[None]:
    """``labelme`` in load_dataset's registry (the lead registers it in danlu.data.io; until
    then this test adds it and takes it out again)."""
    if "labelme" in data_io.FORMATS:
        yield
        return
    data_io.register_format(data_io.Format(
        "labelme", "LabelMe JSON folder", is_labelme, read_labelme, write_labelme))
    try:
        yield
    finally:
        data_io.FORMATS.pop("labelme", None)


def test_read_handwritten(tmp_path: Path) -> None:
    root = handwritten(tmp_path / "lm")
    ctx = ReadContext()
    ds = read_labelme(root, ctx)
    assert ds.meta["format"] == "labelme" and ctx.warnings == []
    assert ds.class_names == ["bird", "cat", "dog"]  # the labels found, sorted
    a, b, c = ds.samples
    assert [s.id for s in ds.samples] == ["a", "b", "c"]
    assert (a.width, a.height, b.width, b.height, c.width, c.height) == (64, 48, 40, 30, 20, 10)
    # by hand: the rectangle's corners sorted, the 4-point polygon's and the 5-point
    # polygon's enclosing boxes
    np.testing.assert_array_equal(a.detections.xyxy, [[10, 5.75, 40.5, 30.25],
                                                      [16, 10, 30, 24], [1, 2, 9.5, 12]])
    assert [ds.class_names[i] for i in a.detections.labels] == ["cat", "dog", "bird"]
    # a 4-point polygon is kept as written; so every box has a polygon (rectangles: corners)
    np.testing.assert_array_equal(a.detections.polygons[1],
                                  [[20, 10], [30, 14], [26, 24], [16, 20]])
    np.testing.assert_array_equal(a.detections.polygons[0],
                                  [[10, 5.75], [40.5, 5.75], [40.5, 30.25], [10, 30.25]])
    np.testing.assert_array_equal(a.detections.flag("difficult"), [True, False, False])
    assert a.detections.extra["group_id"].tolist() == [-1, 3, -1]
    assert a.detections.extra["description"].tolist() == ["", "rotated", ""]
    assert a.meta["image_flags"] == {"blurry": True}
    np.testing.assert_array_equal(b.detections.xyxy, [[0, 0, 12, 8]])
    assert b.detections.flag("difficult").tolist() == [False]
    # images: by imagePath; by its last part beside the JSON file; embedded
    assert a.image == str(root / "a.png") and a.meta["image_found_by"] == "imagePath"
    assert b.image == str(root / "b.png") and b.meta["image_found_by"] == "imagePath name"
    assert c.image == C_PNG and c.meta["image_found_by"] == "imageData"
    assert ds.meta["image_lookup"] == {"imagePath": 1, "imagePath name": 1, "imageData": 1}
    assert ctx.notices == [
        "1 polygons with other than 4 points read as their enclosing boxes",
        "1 linestrip shapes are not boxes: not read",
        "1 point shapes are not boxes: not read",
        "1 of 3 images found by imagePath's last part beside the JSON file, not by imagePath",
        "1 of 3 images found nowhere on disk: read from the embedded imageData",
    ]


def test_axis_aligned_only_has_no_polygons(tmp_path: Path) -> None:
    root = tmp_path / "lm"
    root.mkdir()
    (root / "b.json").write_bytes(B_JSON)
    (root / "b.jpg").write_bytes(png_bytes(40, 30))
    ds = read(root)
    assert ds[0].detections.polygons is None and ds[0].detections.extra == {}
    assert ds[0].meta["image_found_by"] == "json stem"  # b.* beside the JSON file


def test_class_file_and_class_names(tmp_path: Path) -> None:
    root = handwritten(tmp_path / "lm")
    # LabelMe's --labels file: __ignore__ and _background_ are no classes
    (root / "labels.txt").write_text("__ignore__\n_background_\ndog\ncat\nbird\nfish\n")
    ds = read(root)
    assert ds.class_names == ["dog", "cat", "bird", "fish"]
    assert [ds.class_names[i] for i in ds[0].detections.labels] == ["cat", "dog", "bird"]
    with pytest.raises(DatasetError, match=r"a\.json: shapes\[0\]\.label: unknown class name "
                                           r"'cat' \(known: dog, bird\)"):
        read(root, class_names=["dog", "bird"])
    ctx = ReadContext(class_names=["dog", "bird"], skip_invalid=True)
    ds = read_labelme(root, ctx)
    assert ds.num_boxes == 3 and len(ctx.warnings) == 2  # a's cat and c's cat


def test_load_dataset_and_detection(tmp_path: Path, registered: None) -> None:
    root = handwritten(tmp_path / "lm")
    assert data_io.detect_format(root) == "labelme"
    ds = data_io.load_dataset(root)
    assert ds.meta["format"] == "labelme" and len(ds) == 3 and ds.num_boxes == 5
    assert ds.meta["warnings"] == [] and len(ds.meta["notices"]) == 5
    # COCO folders and files stay COCO
    coco = tmp_path / "coco"
    coco.mkdir()
    (coco / "annotations.json").write_bytes(
        b'{"images": [], "annotations": [], "categories": []}')
    shutil.copy(root / "a.json", coco / "a.json")
    assert not is_labelme(coco) and data_io.detect_format(coco) == "coco"
    assert not is_labelme(root / "a.json") and data_io.detect_format(root / "a.json") == "coco"
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.json").write_bytes(b'{"images": []}')
    assert not is_labelme(other) and not is_labelme(tmp_path / "nothing")


def test_split_sub_folders(tmp_path: Path) -> None:
    handwritten(tmp_path / "lm" / "train")
    ds = read(tmp_path / "lm", split="train")
    assert len(ds) == 3 and ds.meta["split"] == "train" and ds[0].meta["split"] == "train"
    with pytest.raises(DatasetError, match=r"split 'val' not found"):
        read(tmp_path / "lm", split="val")
    with pytest.raises(DatasetError, match=r"no LabelMe \.json files") as e:
        read(tmp_path / "lm")
    assert "--split" in (e.value.hint or "")


# -- round trips ---------------------------------------------------------------------------
def assert_same(a: Dataset, b: Dataset) -> None:
    assert b.class_names == a.class_names and len(a) == len(b)
    for s, t in zip(a.samples, b.samples, strict=True):
        assert (s.width, s.height) == (t.width, t.height)
        assert s.detections.allclose(t.detections, atol=0), (s.id, s.detections, t.detections)


def test_roundtrip_boxes_labels_flags(tmp_path: Path) -> None:
    ds0 = make_dataset(7, seed=3, integer=False, flags=("difficult", "truncated"))
    ds0.class_names.append("unused")  # kept by labels.txt
    write_labelme(ds0, tmp_path / "out")
    back = read(tmp_path / "out")
    assert_same(ds0, back)  # float32 coordinates exactly: atol=0
    for s0, s1 in zip(ds0.samples, back.samples, strict=True):
        assert Path(s1.image).read_bytes() == s0.image and s1.id == s0.id
    # no flags in, no flags out
    ds1 = make_dataset(3, seed=4, integer=False)
    write_labelme(ds1, tmp_path / "out1", images="none")
    assert_same(ds1, read(tmp_path / "out1", check_images=False))


def test_roundtrip_oriented_and_extras(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(4):
        c = rng.uniform(20, 40, (3, 1, 2))
        ang = rng.uniform(0, np.pi, (3, 1))
        u = np.stack([np.cos(ang), np.sin(ang)], -1) * 6
        v = np.stack([-np.sin(ang), np.cos(ang)], -1) * 3
        poly = np.concatenate([c - u - v, c + u - v, c + u + v, c - u + v], 1)
        det = Detections(None, rng.integers(0, 2, 3), polygons=poly,
                         flags={"difficult": rng.random(3) < 0.5},
                         extra={"group_id": [1, -1, 7], "description": ["a", "", "ü"]})
        samples.append(Sample(png_bytes(64, 64), 64, 64, det, id=f"o{i}",
                              meta={"image_flags": {"night": bool(i % 2)}}))
    ds0 = Dataset(samples, ["plane", "ship"])
    write_labelme(ds0, tmp_path / "out")
    back = read(tmp_path / "out")
    assert_same(ds0, back)
    for s0, s1 in zip(ds0.samples, back.samples, strict=True):
        for k in ("group_id", "description"):
            assert s1.detections.extra[k].tolist() == s0.detections.extra[k].tolist()
        assert s1.meta["image_flags"] == s0.meta["image_flags"]


def test_labelme_to_danlu_to_labelme(tmp_path: Path) -> None:
    """Rectangles come back as LabelMe wrote them (corners sorted); the rest as read."""
    root = handwritten(tmp_path / "lm")
    ds = read(root)
    write_labelme(ds, tmp_path / "out")
    again = read(tmp_path / "out")
    assert_same(ds, again)
    doc = orjson.loads((tmp_path / "out" / "b.json").read_bytes())
    assert doc["imagePath"] == "b.png" and doc["imageData"] is None
    assert (doc["imageWidth"], doc["imageHeight"]) == (40, 30)
    only_rects = tmp_path / "rects"
    only_rects.mkdir()
    (only_rects / "b.json").write_bytes(B_JSON)
    (only_rects / "b.png").write_bytes(png_bytes(40, 30))
    write_labelme(read(only_rects), tmp_path / "out2")
    shape = orjson.loads((tmp_path / "out2" / "b.json").read_bytes())["shapes"][0]
    assert shape == {"label": "dog", "points": [[0.0, 0.0], [12.0, 8.0]], "group_id": None,
                     "description": "", "shape_type": "rectangle", "flags": {}}
    assert (tmp_path / "out2" / "labels.txt").read_text() == "dog\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.floats(0, 63), st.floats(0, 47), st.floats(0, 63),
                          st.floats(0, 47), st.integers(0, 2), st.booleans()), max_size=6))
def test_roundtrip_property(boxes: list) -> None:
    xyxy = np.array([[min(a, c), min(b, d), max(a, c), max(b, d)] for a, b, c, d, _, _ in boxes],
                    np.float32).reshape(-1, 4)
    # (a flag on no box at all is no information: not written, not read)
    flags = {"difficult": [t[5] for t in boxes]} if boxes else {}
    det = Detections(xyxy, [t[4] for t in boxes], flags=flags)
    ds0 = Dataset([Sample(None, 64, 48, det, id="x")], ["a", "b", "c"])
    tmp = Path(tempfile.mkdtemp())
    try:
        write_labelme(ds0, tmp / "out", images="none")
        assert_same(ds0, read(tmp / "out", check_images=False))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_save_and_load_dataset(tmp_path: Path, registered: None) -> None:
    ds0 = make_dataset(4, seed=5, integer=False, flags=("difficult",))
    data_io.save_dataset(ds0, tmp_path / "out", "labelme")
    assert data_io.detect_format(tmp_path / "out") == "labelme"
    assert_same(ds0, data_io.load_dataset(tmp_path / "out"))
    data_io.save_dataset(ds0, tmp_path / "links", "labelme", images="symlink")
    assert (tmp_path / "links" / "img000.png").is_symlink() is False  # bytes are written
    voc = tmp_path / "voc"
    data_io.save_dataset(ds0, voc, "voc")
    data_io.save_dataset(data_io.load_dataset(voc), tmp_path / "from-voc", "labelme",
                         images="symlink")
    assert (tmp_path / "from-voc" / "img000.png").is_symlink()
    back = data_io.load_dataset(tmp_path / "from-voc")
    np.testing.assert_allclose(back[0].detections.xyxy, ds0[0].detections.xyxy, atol=1e-4)


# -- errors --------------------------------------------------------------------------------
def one_file(root: Path, doc: bytes | dict, name: str = "a.json") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(doc if isinstance(doc, bytes) else orjson.dumps(doc))
    if not (root / "a.png").exists():
        (root / "a.png").write_bytes(png_bytes(64, 48))
    return root


def doc_with(*shapes: object, **top: object) -> dict:
    doc = {"version": "5.5.0", "flags": {}, "shapes": list(shapes), "imagePath": "a.png",
           "imageData": None, "imageHeight": 48, "imageWidth": 64}
    doc.update(top)
    return doc


def rect(label: str = "cat", points: object = ((1, 2), (10, 20)), **kw: object) -> dict:
    shape = {"label": label, "points": [list(p) for p in points], "group_id": None,
             "description": "", "shape_type": "rectangle", "flags": {}}  # type: ignore[union-attr]
    shape.update(kw)
    return shape


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    bad = A_JSON.replace(b'"flags": {\n    "blurry"', b'"flags": {\n    blurry', 1)
    root = one_file(tmp_path / "lm", bad)
    with pytest.raises(DatasetError, match=r"a\.json: line 4 column 5: malformed JSON") as e:
        read(root)
    assert (e.value.hint or "").count("--skip-invalid") == 1
    # with skip_invalid the file is skipped, the next one read
    one_file(root, B_JSON, "b.json")
    (root / "b.png").write_bytes(png_bytes(40, 30))
    ctx = ReadContext(skip_invalid=True)
    ds = read_labelme(root, ctx)
    assert [s.id for s in ds.samples] == ["b"] and len(ctx.warnings) == 1
    assert "a.json: line 4" in ctx.warnings[0]


def test_shape_without_points_names_json_path(tmp_path: Path) -> None:
    nopoints = {k: v for k, v in rect().items() if k != "points"}
    root = one_file(tmp_path / "lm", doc_with(rect(), rect("dog"), nopoints, rect("bird")))
    with pytest.raises(DatasetError, match=r"a\.json: shapes\[2\]\.points: expected a list "
                                           r"of \[x, y\] points, got nothing") as e:
        read(root)
    assert (e.value.hint or "").count("--skip-invalid") == 1
    ctx = ReadContext(skip_invalid=True)
    ds = read_labelme(root, ctx)
    assert ds.num_boxes == 3 and ds.class_names == ["bird", "cat", "dog"]
    assert len(ctx.warnings) == 1 and "shapes[2].points" in ctx.warnings[0]


CASES = [
    (doc_with(rect(points=[(1, 2), ("3", 4)])), r"shapes\[0\]\.points\[1\]: expected \[x, y\]"),
    (doc_with(rect(points=[(1, 2), (3, 4, 5)])), r"shapes\[0\]\.points\[1\]: expected \[x, y\]"),
    (doc_with(rect(points=[(1, 2), (3, 4), (5, 6)])), r"shapes\[0\]\.points: a rectangle is 2"),
    (doc_with(rect(points=[(1, 2), (3, 4)], shape_type="polygon")),
     r"shapes\[0\]\.points: a polygon has at least 3 points"),
    (doc_with(rect(points=[(1, 2), (3, 4)], shape_type="oriented_rectangle")),
     r"shapes\[0\]\.points: an oriented_rectangle is 4 corners"),
    (doc_with(rect(), rect(label=5)), r"shapes\[1\]\.label: expected a class name, got 5"),
    (doc_with(rect(shape_type=3)), r"shapes\[0\]\.shape_type: expected a string"),
    (doc_with(rect(flags={"difficult": "yes"})),
     r'shapes\[0\]\.flags\.difficult: expected true or false, got "yes"'),
    (doc_with(rect(flags=[1])), r"shapes\[0\]\.flags: expected an object"),
    (doc_with(rect(group_id="a")), r"shapes\[0\]\.group_id: expected an integer or null"),
    (doc_with(rect(description=1)), r"shapes\[0\]\.description: expected a string"),
    (doc_with(rect(points=[(1, 2), (70, 20)])),
     r"shapes\[0\]: box lies outside the image \(box xyxy \[1, 2, 70, 20\], image 64x48\)"),
    (doc_with(rect(points=[(70, 50), (80, 60), (90, 50), (80, 40)], shape_type="polygon")),
     r"shapes\[0\]: box lies entirely outside the image"),
    (doc_with([1, 2]), r"shapes\[0\]: expected an object with label and points"),
]


@pytest.mark.parametrize(("doc", "pattern"), CASES, ids=[c[1][:40] for c in CASES])
def test_bad_shapes(tmp_path: Path, doc: dict, pattern: str) -> None:
    root = one_file(tmp_path / "lm", doc)
    with pytest.raises(DatasetError, match=r"a\.json: " + pattern):
        read(root)
    ctx = ReadContext(skip_invalid=True)
    ds = read_labelme(root, ctx)  # the bad shape skipped, the file kept
    assert len(ds) == 1 and len(ctx.warnings) == 1 and "a.json: shapes[" in ctx.warnings[0]
    assert ds.num_boxes == len(doc["shapes"]) - 1


FILE_CASES = [
    (b"[]", r"q\.json: expected a JSON object, got list"),
    (orjson.dumps(doc_with(shapes={"a": 1})), r"q\.json: shapes: expected a list of shapes"),
    (orjson.dumps(doc_with(imageWidth=-3)), r"q\.json: imageWidth: expected a positive integer"),
    (orjson.dumps(doc_with(imageHeight="48")), r"q\.json: imageHeight: expected a positive"),
    (orjson.dumps(doc_with(imagePath=7)), r"q\.json: imagePath: expected a file name"),
    (orjson.dumps(doc_with(imagePath="x.png")),
     r"q\.json: image file .*x\.png not found, nor an image q\.\* beside the JSON file"),
    (orjson.dumps(doc_with(imagePath="x.png", imageData="aGVsbG8=")),
     r"q\.json: imageData: not an encoded image"),
    (orjson.dumps(doc_with(imagePath="x.png", imageData=5)),
     r"q\.json: imageData: expected base64 text"),
    (orjson.dumps(doc_with(flags={"night": 2})), r"q\.json: flags\.night: expected true or"),
    (orjson.dumps(doc_with(imagePath="a\x00.png")), r"q\.json: imagePath: expected a file name"),
]


@pytest.mark.parametrize(("data", "pattern"), FILE_CASES, ids=[c[1][:40] for c in FILE_CASES])
def test_bad_files(tmp_path: Path, data: bytes, pattern: str) -> None:
    root = tmp_path / "lm"
    root.mkdir()
    (root / "q.json").write_bytes(data)
    (root / "a.png").write_bytes(png_bytes(64, 48))  # no q.* image beside q.json
    with pytest.raises(DatasetError, match=pattern):
        read(root)
    ctx = ReadContext(skip_invalid=True)
    assert len(read_labelme(root, ctx)) == 0 and len(ctx.warnings) == 1


def test_missing_size_is_measured_and_images_unchecked(tmp_path: Path) -> None:
    doc = doc_with(rect())
    del doc["imageWidth"], doc["imageHeight"]
    ds = read(one_file(tmp_path / "a", doc))
    assert (ds[0].width, ds[0].height) == (64, 48)
    root = tmp_path / "b"
    root.mkdir()
    (root / "a.json").write_bytes(orjson.dumps(doc_with(rect(), imagePath="sub/x.png")))
    ds = read(root, check_images=False)
    assert ds[0].image == str(root / "sub" / "x.png")
    assert ds.meta["image_lookup"] == {"unchecked": 1}


def test_image_in_a_sibling_folder(tmp_path: Path) -> None:
    """LabelMe writes imagePath relative to the JSON file, going up where it must."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png_bytes(64, 48))
    root = tmp_path / "json"
    root.mkdir()
    (root / "a.json").write_bytes(orjson.dumps(doc_with(rect(), imagePath="../images/a.png")))
    ds = read(root)
    assert ds[0].image == str(tmp_path / "images" / "a.png")
    assert ds[0].meta["image_found_by"] == "imagePath"


def test_foreign_json_and_empty_folder(tmp_path: Path) -> None:
    root = one_file(tmp_path / "lm", doc_with(rect()))
    (root / "meta.json").write_bytes(b'{"info": "exported by a tool"}')
    ctx = ReadContext()
    assert len(read_labelme(root, ctx)) == 1
    assert ctx.notices == ["1 .json files are not LabelMe files (no shapes, no imagePath): "
                           "not read (meta.json)"]
    (root / "a.json").unlink()
    with pytest.raises(DatasetError, match=r"lm: no LabelMe \.json files \(1 other"):
        read(root)
    with pytest.raises(DatasetError, match=r"no LabelMe \.json files"):
        read(tmp_path)


def test_unknown_shape_kinds_are_counted(tmp_path: Path) -> None:
    shapes = [rect(shape_type="circle"), rect(shape_type="circle"), rect(shape_type="cuboid"),
              rect(shape_type="mask", mask="iVBOR"), rect()]
    ctx = ReadContext()
    ds = read_labelme(one_file(tmp_path / "lm", doc_with(*shapes)), ctx)
    assert ds.num_boxes == 1
    assert ctx.notices == ["2 circle shapes are not boxes: not read",
                           "1 cuboid shapes are not boxes: not read",
                           "1 mask shapes are not boxes: not read"]


# -- fuzzing -------------------------------------------------------------------------------
VALID = orjson.dumps(doc_with(
    rect(flags={"difficult": True}, group_id=2),
    rect("dog", [(4, 4), (20, 5), (21, 15), (5, 14)], shape_type="polygon"),
    rect("dog", [(1, 1)], shape_type="point"), rect("bird", [(5, 5), (1, 1)])),
    option=orjson.OPT_INDENT_2)
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _read_bytes(data: bytes, image_data: bool = False) -> None:
    """Read a folder holding ``data`` as a.json: a Dataset or a DatasetError, nothing else."""
    tmp = Path(tempfile.mkdtemp())
    try:
        root = tmp / "lm"
        root.mkdir()
        (root / "a.json").write_bytes(data)
        if not image_data:
            (root / "a.png").write_bytes(png_bytes(64, 48))
        for skip in (False, True):
            try:
                assert isinstance(read_labelme(root, ReadContext(skip_invalid=skip)), Dataset)
            except DatasetError as e:
                assert e.message
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@FUZZ
@given(ops=OPS)
def test_fuzz_mutations(ops: list) -> None:
    _read_bytes(_mutate(VALID, ops))


@FUZZ
@given(data=st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    _read_bytes(data)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
                    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                        max_size=4),
                    max_leaves=8)
PLACES = [("shapes",), ("shapes", 0), ("shapes", 0, "points"), ("shapes", 0, "points", 1),
          ("shapes", 1, "points", 0, 0), ("shapes", 0, "label"), ("shapes", 1, "shape_type"),
          ("shapes", 0, "flags"), ("shapes", 0, "flags", "difficult"), ("shapes", 0, "group_id"),
          ("shapes", 1, "description"), ("imagePath",), ("imageData",), ("imageWidth",),
          ("imageHeight",), ("flags",), ("version",)]


@FUZZ
@given(place=st.sampled_from(PLACES), value=JSON, image_data=st.booleans())
def test_fuzz_structure(place: tuple, value: object, image_data: bool) -> None:
    """Any JSON value anywhere in a valid file (images embedded or beside)."""
    doc = orjson.loads(VALID)
    if image_data:
        doc["imageData"] = base64.b64encode(png_bytes(64, 48)).decode()
    node = doc
    for key in place[:-1]:
        node = node[key]
    node[place[-1]] = value
    _read_bytes(orjson.dumps(doc), image_data)
