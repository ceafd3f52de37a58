"""CVAT for images 1.1 (XML): a file as CVAT 2.x exports it, read against numbers computed by
hand; rotated boxes against shapely; lossless round trips both ways; errors naming the file
and the element; skip_invalid; detection; and the fuzzing every parser gets."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely import affinity

from _data_fixtures import make_dataset, png_bytes
from danlu.boxes.convert import cxcywha_to_polygon
from danlu.data import io
from danlu.data.formats._common import ReadContext
from danlu.data.formats.cvat import is_cvat, read_cvat, write_cvat
from danlu.errors import DatasetError
from danlu.structures import Dataset, Detections, Sample
from test_bad_input import TOKENS, _mutate

# As CVAT 2.x exports a job ("CVAT for images 1.1"): meta/job/labels with a checkbox and a
# select attribute, a skeleton label and its point sub-label; a rotated box, a 4-point and a
# 5-point polygon, points, a polyline, a skeleton, a tag, an image in a sub-folder, an empty
# image and a label that is not declared.
FIXTURE = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <job>
      <id>7</id>
      <size>4</size>
      <mode>annotation</mode>
      <overlap>0</overlap>
      <bugtracker></bugtracker>
      <created>2024-05-02 10:11:12.345678+00:00</created>
      <updated>2024-05-02 11:12:13.456789+00:00</updated>
      <subset>default</subset>
      <start_frame>0</start_frame>
      <stop_frame>3</stop_frame>
      <frame_filter></frame_filter>
      <segments>
        <segment>
          <id>7</id>
          <start>0</start>
          <stop>3</stop>
          <url>https://app.cvat.ai/api/jobs/7</url>
        </segment>
      </segments>
      <owner>
        <username>alice</username>
        <email>alice@example.com</email>
      </owner>
      <assignee></assignee>
      <labels>
        <label>
          <name>cat</name>
          <color>#fa3253</color>
          <type>any</type>
          <attributes>
            <attribute>
              <name>difficult</name>
              <mutable>False</mutable>
              <input_type>checkbox</input_type>
              <default_value>false</default_value>
              <values>false</values>
            </attribute>
            <attribute>
              <name>color</name>
              <mutable>False</mutable>
              <input_type>select</input_type>
              <default_value>black</default_value>
              <values>black
white</values>
            </attribute>
          </attributes>
        </label>
        <label>
          <name>dog</name>
          <color>#33ddff</color>
          <type>polygon</type>
          <attributes>
          </attributes>
        </label>
        <label>
          <name>person</name>
          <color>#b83df5</color>
          <type>skeleton</type>
          <attributes>
          </attributes>
          <svg>&lt;circle r="0.75" cx="30" cy="30" data-type="element node" data-element-id="1" \
data-node-id="1" data-label-name="1"&gt;&lt;/circle&gt;</svg>
        </label>
        <label>
          <name>1</name>
          <color>#d12345</color>
          <type>points</type>
          <attributes>
          </attributes>
          <parent>person</parent>
        </label>
      </labels>
    </job>
    <dumped>2024-05-02 12:00:00.123456+00:00</dumped>
  </meta>
  <image id="0" name="a.jpg" width="64" height="48">
    <box label="cat" source="manual" occluded="0" xtl="10.50" ytl="20.00" xbr="30.00" ybr="40.25" \
z_order="0">
      <attribute name="difficult">true</attribute>
      <attribute name="color">black</attribute>
    </box>
    <box label="cat" source="manual" occluded="1" xtl="20.00" ytl="10.00" xbr="40.00" ybr="20.00" \
rotation="30.00" z_order="0">
      <attribute name="difficult">false</attribute>
      <attribute name="color">white</attribute>
    </box>
  </image>
  <image id="1" name="sub/b.png" width="50" height="40">
    <polygon label="dog" source="manual" occluded="0" \
points="5.00,5.00;25.00,6.00;24.00,20.00;4.00,19.00" z_order="0">
    </polygon>
    <polygon label="dog" source="manual" occluded="0" \
points="1.00,1.00;9.00,1.00;9.00,9.00;5.00,12.00;1.00,9.00" z_order="0">
    </polygon>
    <points label="dog" source="manual" occluded="0" points="3.00,3.00" z_order="0">
    </points>
    <polyline label="dog" source="manual" occluded="0" points="1.00,1.00;20.00,20.00" z_order="0">
    </polyline>
    <skeleton label="person" source="manual" z_order="0">
      <points label="1" source="manual" outside="0" occluded="0" points="10.00,10.00">
      </points>
    </skeleton>
    <tag label="cat" source="manual">
    </tag>
  </image>
  <image id="2" name="c.jpg" width="32" height="32">
  </image>
  <image id="3" name="d.jpg" width="32" height="32">
    <box label="bird" source="auto" occluded="0" xtl="1.00" ytl="1.00" xbr="5.00" ybr="5.00" \
z_order="1">
    </box>
  </image>
</annotations>
"""
SIZES = {"a.jpg": (64, 48), "sub/b.png": (50, 40), "c.jpg": (32, 32), "d.jpg": (32, 32)}

# The rotated box by hand: centre (30, 15), half sizes (10, 5), turned 30 degrees clockwise on
# screen: corner (dx, dy) -> (cx + dx cos - dy sin, cy + dx sin + dy cos), cos 30 = sqrt(3)/2.
C, S = math.sqrt(3) / 2, 0.5
ROTATED = [[30 + dx * C - dy * S, 15 + dx * S + dy * C]
           for dx, dy in ((-10, -5), (10, -5), (10, 5), (-10, 5))]


def cvat_root(root: Path, xml: str | bytes = FIXTURE, sizes: dict | None = None) -> Path:
    (root / "images").mkdir(parents=True)
    data = xml.encode() if isinstance(xml, str) else xml
    (root / "annotations.xml").write_bytes(data)
    for name, (w, h) in (SIZES if sizes is None else sizes).items():
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / name).write_bytes(png_bytes(w, h))
    return root


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cvat`` in the format registry, before ``yolo`` (a CVAT folder has ``images/``), as
    danlu.data.io registers it; left as it is when io.py already has it."""
    if "cvat" in io.FORMATS:
        return
    fmt = io.Format("cvat", "CVAT for images 1.1 XML", is_cvat, read_cvat, write_cvat)
    formats = {}
    for name, f in io.FORMATS.items():
        if name == "yolo":
            formats["cvat"] = fmt
        formats[name] = f
    formats.setdefault("cvat", fmt)
    monkeypatch.setattr(io, "FORMATS", formats)


# -- reading ---------------------------------------------------------------------------------
def test_reads_a_cvat_2_export(tmp_path: Path) -> None:
    root = cvat_root(tmp_path / "ds")
    ctx = ReadContext()
    ds = read_cvat(root, ctx)
    # declared labels in order, the skeleton's point label left out, 'bird' added at the end
    assert ds.class_names == ["cat", "dog", "person", "bird"]
    assert [s.id for s in ds] == ["a", "sub/b", "c", "d"]
    assert [Path(s.image) for s in ds] == [root / "images" / n for n in SIZES]
    assert [(s.width, s.height) for s in ds] == list(SIZES.values())
    assert [s.meta["cvat_name"] for s in ds] == list(SIZES)
    assert [s.meta["cvat_id"] for s in ds] == [0, 1, 2, 3]
    a, b, c, d = (s.detections for s in ds)
    # a rotated box makes the dataset oriented: every sample has polygons
    assert all(s.detections.polygons is not None for s in ds)
    np.testing.assert_allclose(a.xyxy[0], [10.5, 20, 30, 40.25])
    np.testing.assert_allclose(a.polygons[0], [[10.5, 20], [30, 20], [30, 40.25], [10.5, 40.25]])
    np.testing.assert_allclose(a.polygons[1], ROTATED, atol=1e-5)
    xs, ys = [p[0] for p in ROTATED], [p[1] for p in ROTATED]
    np.testing.assert_allclose(a.xyxy[1], [min(xs), min(ys), max(xs), max(ys)], atol=1e-5)
    assert a.labels.tolist() == [0, 0]
    assert a.flags["difficult"].tolist() == [True, False]
    assert a.flags["occluded"].tolist() == [False, True]
    # the 4-point polygon as written; the 5-point one as its enclosing box
    np.testing.assert_array_equal(b.polygons[0], [[5, 5], [25, 6], [24, 20], [4, 19]])
    np.testing.assert_array_equal(b.xyxy, [[4, 5, 25, 20], [1, 1, 9, 12]])
    np.testing.assert_array_equal(b.polygons[1], [[1, 1], [9, 1], [9, 12], [1, 12]])
    assert b.labels.tolist() == [1, 1]
    assert len(c) == 0 and set(c.flags) == {"difficult", "occluded"}  # background kept
    assert d.labels.tolist() == [3] and d.scores is None
    notes = "\n".join(ctx.notices)
    for part in ("labels used but not declared in <meta>, added as the last classes: bird",
                 "skipped 1 <points> element ",
                 "skipped 1 <polyline>", "skipped 1 <skeleton>", "skipped 1 <tag>",
                 "read 1 polygons of other than 4 points as their enclosing boxes",
                 "attributes not kept: color (2)"):
        assert part in notes, part
    assert all(n.startswith(str(root / "annotations.xml")) for n in ctx.notices)
    assert ctx.warnings == []


def test_rotation_matches_shapely(tmp_path: Path) -> None:
    """CVAT's rotation (degrees, clockwise on screen about the centre) is shapely's rotate of
    the rectangle by the same angle in image coordinates (y down), for any angle."""
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(40):
        x1, y1 = rng.uniform(20, 100, 2).tolist()
        x2, y2 = x1 + float(rng.uniform(1, 60)), y1 + float(rng.uniform(1, 60))
        deg = float(rng.choice([15.0, 90.0, 180.0, 270.0, 359.5, -30.0, rng.uniform(0, 360)]))
        boxes.append((x1, y1, x2, y2, deg))
    shapes = "".join(f'<box label="a" occluded="0" xtl="{x1!r}" ytl="{y1!r}" xbr="{x2!r}" '
                     f'ybr="{y2!r}" rotation="{deg!r}"/>' for x1, y1, x2, y2, deg in boxes)
    xml = (f'<annotations><version>1.1</version><image id="0" name="a.png" width="200" '
           f'height="200">{shapes}</image></annotations>')
    det = read_cvat(cvat_root(tmp_path / "ds", xml, {"a.png": (200, 200)}), ReadContext())[0] \
        .detections
    for (x1, y1, x2, y2, deg), poly, xyxy in zip(boxes, det.polygons, det.xyxy, strict=True):
        want = affinity.rotate(shapely.box(x1, y1, x2, y2), deg, origin="center")
        got = shapely.Polygon(poly)
        assert shapely.area(shapely.symmetric_difference(want, got)) < 1e-3
        # the first corner is the box's top-left corner, turned
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        corner = affinity.rotate(shapely.Point(x1, y1), deg, origin=(cx, cy))
        np.testing.assert_allclose(poly[0], [corner.x, corner.y], atol=1e-4)
        np.testing.assert_allclose(xyxy, want.bounds, atol=1e-4)


def test_axis_aligned_file_has_no_polygons_and_reads_the_xml_alone(tmp_path: Path) -> None:
    xml = ('<?xml version="1.0"?><annotations><version>1.1</version><meta><project><labels>'
           '<label><name>b</name></label><label><name>a</name></label></labels></project>'
           '</meta><image id="5" name="x.jpg" width="10" height="10" subset="Train">'
           '<box label="a" occluded="0" xtl="1" ytl="1" xbr="4" ybr="4" rotation="0.00"/>'
           '<box label="a" occluded="0" xtl="1" ytl="1" xbr="4" ybr="4" rotation="360"/>'
           '</image><image id="6" name="y.jpg" width="10" height="10" subset="Validation"/>'
           "</annotations>")
    f = tmp_path / "export.xml"
    f.write_text(xml)
    (tmp_path / "x.jpg").write_bytes(png_bytes(10, 10))  # beside the XML, no images/
    (tmp_path / "y.jpg").write_bytes(png_bytes(10, 10))
    ds = read_cvat(f, ReadContext())
    assert ds.class_names == ["b", "a"]  # the project's label order, not sorted
    assert ds[0].detections.polygons is None
    assert ds[0].image == str(tmp_path / "x.jpg")
    assert [s.meta["split"] for s in ds] == ["Train", "Validation"]
    val = read_cvat(f, ReadContext(split="val"))
    assert [s.id for s in val] == ["y"] and val.meta["split"] == "val"
    with pytest.raises(DatasetError, match=r"split 'test' not found \(subsets: Train, "
                                           r"Validation\)"):
        read_cvat(f, ReadContext(split="test"))


def test_class_names_and_scores(tmp_path: Path) -> None:
    xml = ('<annotations><image id="0" name="a.png" width="20" height="20">'
           '<box label="dog" occluded="0" xtl="1" ytl="1" xbr="4" ybr="4">'
           '<attribute name="score">0.25</attribute></box>'
           '<box label="cat" occluded="0" xtl="1" ytl="1" xbr="4" ybr="4"/></image></annotations>')
    root = cvat_root(tmp_path / "ds", xml, {"a.png": (20, 20)})
    ctx = ReadContext()
    ds = read_cvat(root, ctx)
    assert ds.class_names == ["cat", "dog"]  # no <meta>: the names used, sorted
    assert "labels used but not declared in <meta>, added as the last classes: cat, dog" \
        in ctx.notices[0]
    assert ds[0].detections.scores.tolist() == [0.25, 1.0]
    ds = read_cvat(root, ReadContext(class_names=["dog", "cat"]))
    assert ds[0].detections.labels.tolist() == [0, 1]
    with pytest.raises(DatasetError, match=r"image\[0\]/box\[1\]: unknown class name 'cat'"):
        read_cvat(root, ReadContext(class_names=["dog"]))


# -- writing and round trips -----------------------------------------------------------------
def assert_same(a: Dataset, b: Dataset, atol: float = 0.0) -> None:
    assert a.class_names == b.class_names and len(a) == len(b)
    for s, t in zip(a, b, strict=True):
        assert (s.width, s.height) == (t.width, t.height)
        da, db = s.detections, t.detections
        assert da.labels.tolist() == db.labels.tolist()
        np.testing.assert_allclose(da.xyxy, db.xyxy, atol=atol, rtol=0)
        assert (da.polygons is None) == (db.polygons is None)
        if da.polygons is not None:
            np.testing.assert_allclose(da.polygons, db.polygons, atol=atol, rtol=0)
        for k in set(da.flags) | set(db.flags):  # a flag one side lacks is all False
            np.testing.assert_array_equal(da.flag(k), db.flag(k), err_msg=k)
        if da.scores is not None or db.scores is not None:
            np.testing.assert_array_equal(da.scores, db.scores)


def test_cvat_danlu_cvat_is_lossless(tmp_path: Path) -> None:
    ds = read_cvat(cvat_root(tmp_path / "ds"), ReadContext())
    write_cvat(ds, tmp_path / "out", images="copy")
    xml = (tmp_path / "out" / "annotations.xml").read_text()
    assert "<version>1.1</version>" in xml and 'rotation="30"' in xml
    assert xml.count("<polygon ") == 1  # the 4-point one; the 5-point one is now a box
    assert (tmp_path / "out" / "images" / "sub" / "b.png").is_file()  # names kept
    back = read_cvat(tmp_path / "out", ReadContext())
    assert_same(ds, back, atol=1e-4)
    assert [s.meta for s in back] == [s.meta for s in ds]
    write_cvat(back, tmp_path / "again", images="none")
    assert (tmp_path / "again" / "annotations.xml").read_text() == xml
    assert not (tmp_path / "again" / "images").exists()


def test_danlu_cvat_danlu_is_lossless(tmp_path: Path) -> None:
    ds = make_dataset(8, seed=3, integer=False, flags=("difficult", "truncated", "occluded"))
    ds.class_names = ["cat", "dog & <fox>", 'say "hi"']
    write_cvat(ds, tmp_path / "out")
    back = read_cvat(tmp_path / "out", ReadContext())
    assert_same(ds, back, atol=1e-4)  # 4 decimals in the file
    assert set(back[0].detections.flags) == {"difficult", "truncated", "occluded"}
    assert [Path(s.image).name for s in back] == [f"img{i:03d}.png" for i in range(8)]


def _oriented(seed: int, scale: float = 1.0) -> Dataset:
    """Rotated rectangles (DOTA order), free quadrilaterals and axis-aligned boxes, mixed, in
    images of 100 x 100 pixels times ``scale``."""
    rng = np.random.default_rng(seed)
    samples, kinds = [], np.zeros(3, int)
    for i in range(5):
        k = int(rng.integers(0, 6))
        rect = cxcywha_to_polygon(np.stack([rng.uniform(20, 80, k), rng.uniform(20, 80, k),
                                            rng.uniform(2, 30, k), rng.uniform(2, 30, k),
                                            rng.uniform(-np.pi, np.pi, k)], 1))
        quad = rng.uniform(0, 100, (k, 4, 2))
        x1, y1 = rng.uniform(0, 50, (2, k))
        x2, y2 = x1 + rng.uniform(1, 40, k), y1 + rng.uniform(1, 40, k)
        axis = np.stack([x1, y1, x2, y1, x2, y2, x1, y2], 1).reshape(k, 4, 2)
        pick = rng.permutation(np.arange(k) % 3)
        kinds += np.bincount(pick, minlength=3)
        polys = np.where(pick[:, None, None] == 0, rect, np.where(pick[:, None, None] == 1,
                                                                  quad, axis))
        det = Detections(None, rng.integers(0, 2, k), polygons=polys * scale,
                         flags={"difficult": rng.random(k) < 0.5})
        size = int(100 * scale)
        samples.append(Sample(png_bytes(100, 100), size, size, det, id=f"o{i}"))
    return Dataset(samples, ["plane", "ship"], {"kinds": kinds.tolist()})


@pytest.mark.parametrize(("seed", "scale"), [(0, 1.0), (1, 1.0), (2, 1.0), (3, 80.0)])
def test_oriented_round_trip_chooses_the_lossless_shape(tmp_path: Path, seed: int,
                                                        scale: float) -> None:
    ds = _oriented(seed, scale)  # scale 80: DOTA-sized images, float32 rounding of 5e-4 px
    write_cvat(ds, tmp_path / "out", images="none")
    xml = (tmp_path / "out" / "annotations.xml").read_text()
    back = read_cvat(tmp_path / "out", ReadContext(check_images=False))
    assert_same(ds, back, atol=2e-4 * max(1.0, scale / 8))  # 4 decimals; float32 at 8000 px
    rects, quads, boxes = ds.meta["kinds"]
    assert rects and quads and boxes
    # a rectangle in DOTA order: a rotated <box>; a free quadrilateral: a <polygon>
    assert xml.count("rotation=") == rects and xml.count("<polygon ") == quads
    assert xml.count("<box ") == rects + boxes


def test_writer_refuses_what_xml_cannot_hold(tmp_path: Path) -> None:
    ds = make_dataset(2, classes=("a\x01b",))
    with pytest.raises(DatasetError, match="class name .* XML cannot carry"):
        write_cvat(ds, tmp_path / "out", images="none")


NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Cn", "Zs", "Zl",
                                                                   "Zp")),
                min_size=1, max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(NAMES, min_size=1, max_size=4, unique=True), seed=st.integers(0, 10**6),
       oriented=st.booleans(), scores=st.booleans())
def test_round_trip_property(names: list[str], seed: int, oriented: bool,
                             scores: bool) -> None:
    rng = np.random.default_rng(seed)
    base = _oriented(seed) if oriented else make_dataset(4, seed=seed, integer=False,
                                                         flags=("difficult",))
    samples = []
    for s in base:
        d = s.detections
        labels = rng.integers(0, len(names), len(d))
        sc = rng.random(len(d)).astype(np.float32) if scores else None
        samples.append(Sample(s.image, s.width, s.height, Detections(
            d.xyxy, labels, scores=sc, polygons=d.polygons, flags=d.flags), id=s.id))
    ds = Dataset(samples, names)
    tmp = Path(tempfile.mkdtemp())
    try:
        write_cvat(ds, tmp / "out", images="none")
        back = read_cvat(tmp / "out", ReadContext(check_images=False))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if oriented and not any(s.detections.polygons is not None and len(s.detections)
                            for s in ds):
        return  # no box at all: nothing says the dataset was oriented
    assert_same(ds, back, atol=2e-4)


def test_load_and_save_through_the_registry(tmp_path: Path, registered: None) -> None:
    root = cvat_root(tmp_path / "ds")
    assert io.detect_format(root) == "cvat"  # before yolo, which claims any images/ folder
    assert io.detect_format(root / "annotations.xml") == "cvat"
    ds = io.load_dataset(root)
    assert ds.meta["format"] == "cvat" and any("bird" in n for n in ds.meta["notices"])
    out = io.save_dataset(ds, tmp_path / "out", "cvat", images="symlink")
    assert (out / "images" / "sub" / "b.png").is_symlink()
    assert_same(ds, io.load_dataset(out), atol=1e-4)
    voc = io.save_dataset(make_dataset(2), tmp_path / "voc", "voc")
    yolo = io.save_dataset(make_dataset(2), tmp_path / "yolo", "yolo")
    assert (io.detect_format(voc), io.detect_format(yolo)) == ("voc", "yolo")


def test_is_cvat(tmp_path: Path) -> None:
    root = cvat_root(tmp_path / "ds")
    assert is_cvat(root) and is_cvat(root / "annotations.xml")
    voc = io.save_dataset(make_dataset(2), tmp_path / "voc", "voc")
    assert not is_cvat(voc)
    assert not is_cvat(next((voc / "Annotations").glob("*.xml")))  # root <annotation>
    (voc / "annotations.xml").write_text(FIXTURE)
    assert not is_cvat(voc)  # a VOC folder stays VOC
    (tmp_path / "other.xml").write_text("<?xml version='1.0'?>\n<!-- c -->\n<annotationsx/>")
    assert not is_cvat(tmp_path / "other.xml") and not is_cvat(tmp_path)
    (tmp_path / "bom.xml").write_bytes(b"\xef\xbb\xbf<?xml version='1.0'?>\n<annotations>")
    assert is_cvat(tmp_path / "bom.xml")
    assert not is_cvat(tmp_path / "missing.xml")


# -- errors ----------------------------------------------------------------------------------
def _box(attrs: str) -> str:
    return f'<box label="cat" occluded="0" {attrs}/>'


GOOD = _box('xtl="1" ytl="1" xbr="5" ybr="5"')


def _file(*images: str) -> str:
    return "<annotations><version>1.1</version>" + "".join(
        f'<image id="{i}" name="a.png" width="30" height="20">{body}</image>'
        for i, body in enumerate(images)) + "</annotations>"


# (shapes of image[2], message, boxes left with skip_invalid)
SHAPE_ERRORS = [
    (_box('ytl="1" xbr="5" ybr="5"'), r"image\[2\]/box\[0\]: missing xtl", 2),
    (GOOD + _box('xtl="a" ytl="1" xbr="5" ybr="5"'), r"image\[2\]/box\[1\]: xtl: expected a "
                                                     r"finite number, got 'a'", 3),
    (_box('xtl="5" ytl="1" xbr="1" ybr="5"'), r"image\[2\]/box\[0\]: negative box size", 2),
    (_box('xtl="1" ytl="1" xbr="50" ybr="5"'), r"image\[2\]/box\[0\]: box lies outside", 2),
    (_box('xtl="1" ytl="1" xbr="5" ybr="5" rotation="nan"'),
     r"image\[2\]/box\[0\]: rotation: expected a finite number", 2),
    (_box('xtl="100" ytl="100" xbr="110" ybr="110" rotation="45"'),
     r"image\[2\]/box\[0\]: rotated box lies entirely outside the image \(30x20\)", 2),
    ('<polygon label="cat" points="1,1;2,2"/>', r"image\[2\]/polygon\[0\]: points: expected", 2),
    ('<polygon label="cat" points="1,1;2,2,3;4,4"/>', r"image\[2\]/polygon\[0\]: points", 2),
    ('<polygon label="cat" points="40,40;50,40;50,50"/>',
     r"image\[2\]/polygon\[0\]: polygon lies entirely outside", 2),
    ('<box occluded="0" xtl="1" ytl="1" xbr="5" ybr="5"/>', r"image\[2\]/box\[0\]: missing "
                                                           r"label", 2),
    (_box('xtl="1" ytl="1" xbr="5" ybr="5" occluded="2"').replace('occluded="0" ', ""),
     r"image\[2\]/box\[0\]: occluded: expected 0 or 1, got '2'", 2),
    ('<box label="a" occluded="0" xtl="1" ytl="1" xbr="5" ybr="5"><attribute name="difficult">'
     "maybe</attribute></box>", r"image\[2\]/box\[0\]/attribute\[difficult\]: expected true "
                                r"or false", 2),
    ('<box label="a" occluded="0" xtl="1" ytl="1" xbr="5" ybr="5"><attribute name="score">'
     "high</attribute></box>", r"image\[2\]/box\[0\]/attribute\[score\]: expected a number", 2),
]


@pytest.mark.parametrize(("shapes", "pattern", "left"), SHAPE_ERRORS,
                         ids=[str(i) for i in range(len(SHAPE_ERRORS))])
def test_bad_shape_names_file_and_element(tmp_path: Path, shapes: str, pattern: str,
                                          left: int) -> None:
    root = cvat_root(tmp_path / "ds", _file(GOOD, GOOD, shapes), {"a.png": (30, 20)})
    with pytest.raises(DatasetError, match=r"annotations\.xml: " + pattern) as e:
        read_cvat(root, ReadContext())
    assert "skip_invalid" in (e.value.hint or "")
    ctx = ReadContext(skip_invalid=True)
    ds = read_cvat(root, ctx)
    assert (len(ds), ds.num_boxes) == (3, left)
    assert len(ctx.warnings) == 1 and "image[2]/" in ctx.warnings[0]


IMAGE_ERRORS = [
    ('<image id="0" width="30" height="20"/>', r"image\[1\]: missing name"),
    ('<image id="0" name="a.png" width="-3" height="20"/>',
     r"image\[1\]: width: expected a positive integer, got '-3'"),
    ('<image id="0" name="a.png" width="30"/>', r"image\[1\]: height: expected a positive "
                                                r"integer, got nothing"),
    ('<image id="0" name="gone.png" width="30" height="20"/>',
     r"image\[1\]: image file 'gone.png' not found"),
    ('<image id="0" name="" width="30" height="20"/>', r"image\[1\]: missing name"),
]


@pytest.mark.parametrize(("image", "pattern"), IMAGE_ERRORS,
                         ids=[str(i) for i in range(len(IMAGE_ERRORS))])
def test_bad_image_is_named_and_skipped(tmp_path: Path, image: str, pattern: str) -> None:
    xml = _file(GOOD).replace("</annotations>", image + "</annotations>")
    root = cvat_root(tmp_path / "ds", xml, {"a.png": (30, 20)})
    with pytest.raises(DatasetError, match=r"annotations\.xml: " + pattern):
        read_cvat(root, ReadContext())
    ctx = ReadContext(skip_invalid=True)
    assert len(read_cvat(root, ctx)) == 1 and len(ctx.warnings) == 1


def test_missing_images_read_with_check_images_off(tmp_path: Path) -> None:
    root = cvat_root(tmp_path / "ds", _file(GOOD), {})
    with pytest.raises(DatasetError, match="not found") as e:
        read_cvat(root, ReadContext())
    assert "--images none" in e.value.hint
    ds = read_cvat(root, ReadContext(check_images=False))
    assert ds[0].image == str(root / "images" / "a.png") and ds.num_boxes == 1


FILE_ERRORS = [
    (FIXTURE.replace("</image>\n  <image id=\"1\"", "</imag>\n  <image id=\"1\"", 1),
     r"annotations\.xml: line 89: malformed XML \(mismatched tag\)"),
    (b"\xff\xfe<annotations/>", r"annotations\.xml: line 1: malformed XML"),
    ('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>\n'
     "<annotations>&lol2;</annotations>", r"annotations\.xml: XML entities or DTDs are not"),
    ('<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
     "<annotations>&x;</annotations>", r"annotations\.xml: XML entities or DTDs are not"),
    ('<?xml version="1.0" encoding="EUC-JP"?><annotations/>', r"annotations\.xml: cannot read "
                                                              r"as XML"),
    ("<annotation><filename>a.png</filename></annotation>",
     r"expected root element <annotations> \(CVAT for images 1.1\), got <annotation>"),
    ('<annotations><version>1.1</version><track id="0" label="cat"><box frame="0" xtl="1" '
     'ytl="1" xbr="2" ybr="2" outside="0" occluded="0" keyframe="1"/></track></annotations>',
     r"holds <track> elements \(CVAT for video 1.1\)"),
]


@pytest.mark.parametrize(("xml", "pattern"), FILE_ERRORS,
                         ids=[str(i) for i in range(len(FILE_ERRORS))])
def test_bad_file_names_the_file(tmp_path: Path, xml: str | bytes, pattern: str) -> None:
    root = cvat_root(tmp_path / "ds", xml)
    for skip in (False, True):
        with pytest.raises(DatasetError, match=pattern):
            read_cvat(root, ReadContext(skip_invalid=skip))


def test_no_annotations_xml(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"annotations\.xml: cannot read") as e:
        read_cvat(tmp_path, ReadContext())
    assert "CVAT for images 1.1" in e.value.hint


# -- fuzzing ---------------------------------------------------------------------------------
VALID = FIXTURE.encode()
CVAT_TOKENS = st.sampled_from([b'xtl="', b'rotation="', b'points="', b";", b",", b"<box ",
                               b"<polygon ", b"<image ", b'label="', b'name="', b'width="',
                               b'<attribute name="difficult">', b'occluded="', b'subset="',
                               b"</image>", b"/>", b"<track>", b"<meta>", b"<labels>"])
OPS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10**6),
                         st.one_of(TOKENS, CVAT_TOKENS, st.binary(min_size=1, max_size=8))),
               max_size=6)
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _read(data: bytes) -> None:
    tmp = Path(tempfile.mkdtemp())
    try:
        root = cvat_root(tmp / "ds", data)
        for skip in (False, True):
            try:
                assert isinstance(read_cvat(root, ReadContext(skip_invalid=skip)), Dataset)
            except DatasetError as e:
                assert e.message
        is_cvat(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@FUZZ
@given(ops=OPS)
def test_fuzz_mutations(ops: list) -> None:
    _read(_mutate(VALID, ops))


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    _read(data)


@FUZZ
@given(prefix=st.sampled_from([b"", b"<annotations>", b'<annotations><image id="0" name="a.jpg"'
                               b' width="64" height="48">']), data=st.binary(max_size=200))
def test_fuzz_after_a_valid_start(prefix: bytes, data: bytes) -> None:
    _read(prefix + data)
