"""What a notebook shows for Sample, Dataset, Detections and EvalResult, without a notebook.

Pictures are checked by decoding the PNG bytes and comparing pixels with the source image;
HTML is read back with the standard library's parser (which also unescapes it), so the checks
compare values, not markup. Expected numbers come from the objects' own fields.
"""

from __future__ import annotations

import base64
import html
import io
import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import danlu
from danlu.data.synth import encode_png, synthesize
from danlu.evaluate.page import write_html_report
from danlu.evaluate.result import EvalResult
from danlu.structures import Dataset, Detections, Sample

TRICKY = ["<circle>", "sq&are", 'tri"angle', "star"]
BLOCKS = {"p", "div", "table", "tr", "td", "th", "figure", "figcaption", "details", "summary"}


class Page(HTMLParser):
    """The tables (rows of cell texts), embedded images and text of an HTML fragment."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.images: list[Image.Image] = []
        self.chunks: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    @property
    def text(self) -> str:
        """The text, blocks and cells separated by one space."""
        return " ".join("".join(self.chunks).split())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in BLOCKS:
            self.chunks.append(" ")
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            src = dict(attrs)["src"] or ""
            prefix = "data:image/png;base64,"
            assert src.startswith(prefix), src[:40]
            im = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True)))
            im.load()
            self.images.append(im)

    def handle_endtag(self, tag: str) -> None:
        if tag in BLOCKS:
            self.chunks.append(" ")
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)
        if self._cell is not None:
            self._cell.append(data)


def decode(png: bytes | None) -> np.ndarray:
    assert isinstance(png, bytes) and png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def noise(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def outline_points(box: tuple[int, int, int, int]) -> list[tuple[int, int]]:
    """``(x, y)`` of the middle of each edge of a continuous xyxy box with integer corners
    (the last covered pixel is x2 - 1, y2 - 1)."""
    x1, y1, x2, y2 = box
    xm, ym = (x1 + x2) // 2, (y1 + y2) // 2
    return [(x1, ym), (x2 - 1, ym), (xm, y1), (xm, y2 - 1)]


# -- Sample._repr_png_ ---------------------------------------------------------------------

def test_sample_png_draws_box_outlines_on_the_image() -> None:
    img = noise(64, 48)
    box = (10, 20, 40, 44)
    s = Sample(img.copy(), 64, 48, Detections(np.array([box]), np.array([2])))
    out = decode(s._repr_png_())
    assert out.shape == img.shape  # small: not scaled
    for x, y in outline_points(box):
        assert not np.array_equal(out[y, x], img[y, x]), (x, y)
    xm, ym = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
    assert np.array_equal(out[ym, xm], img[ym, xm])  # an outline, not a fill
    assert np.array_equal(out[46:, 50:], img[46:, 50:])  # away from the box and its caption
    assert np.array_equal(s.image, img)  # the source is not modified


def test_sample_without_boxes_differs_nowhere() -> None:
    img = noise(64, 48, seed=1)
    out = decode(Sample(img, 64, 48)._repr_png_())
    assert np.array_equal(out, img)


def test_large_images_are_scaled_down_with_their_boxes() -> None:
    grey = np.full((1000, 2000, 3), 90, np.uint8)  # uniform: any resampling filter keeps it
    s = Sample(grey, 2000, 1000, Detections(np.array([[500, 250, 1500, 750]]), np.array([0])))
    out = decode(s._repr_png_())
    assert out.shape == (400, 800, 3)  # longest side 800, aspect kept
    scaled = (200, 100, 600, 300)  # the box times 0.4
    for x, y in outline_points(scaled):
        assert (out[y, x] != 90).any(), (x, y)
    assert (out[200, 400] == 90).all()
    assert (out[350:, :] == 90).all()  # below the box nothing is drawn
    plain = decode(Sample(grey, 2000, 1000)._repr_png_())
    assert plain.shape == (400, 800, 3) and (plain == 90).all()


@pytest.mark.parametrize(("w", "h", "expected"), [(1000, 3000, (800, 267)), (800, 600, (600, 800)),
                                                  (801, 10, (10, 800))])
def test_display_size_keeps_the_aspect(w: int, h: int, expected: tuple[int, int]) -> None:
    out = decode(Sample(np.zeros((h, w, 3), np.uint8), w, h)._repr_png_())
    assert out.shape[:2] == expected


def test_every_image_reference_gives_the_same_picture(tmp_path: Path) -> None:
    img = noise(40, 30, seed=2)
    det = Detections(np.array([[3, 4, 30, 25]]), np.array([1]), scores=np.array([0.75]))
    path = tmp_path / "a.png"
    path.write_bytes(encode_png(img))
    pngs = [Sample(ref, 40, 30, det)._repr_png_() for ref in (img, encode_png(img), path,
                                                               str(path))]
    assert all(p == pngs[0] for p in pngs)
    gray = decode(Sample(img[..., 0].copy(), 40, 30)._repr_png_())  # an HxW array
    assert np.array_equal(gray, np.repeat(img[..., :1], 3, axis=2))


def test_an_unreadable_image_gives_none(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    det = Detections(np.array([[1, 1, 5, 5]]), np.array([0]))
    for ref in (tmp_path / "missing.png", tmp_path / "broken.png", b"\x89PNG garbage", None):
        assert Sample(ref, 10, 10, det)._repr_png_() is None


# -- Dataset._repr_html_ -------------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes() -> Dataset:
    ds = synthesize("shapes", 8, seed=3, image_size=(320, 200), scale_range=(24, 48))
    return Dataset(ds.samples, TRICKY)


def test_dataset_html_counts_and_escapes(shapes: Dataset) -> None:
    text = shapes._repr_html_()
    page = Page(text)
    labels = np.concatenate([s.detections.labels for s in shapes])
    assert f"8 images, {len(labels)} boxes, 4 classes" in page.text
    empty = sum(len(s.detections) == 0 for s in shapes)
    assert f"({empty} image{'s' * (empty != 1)} without boxes)" in page.text
    (table,) = page.tables
    assert table[0][1:] == ["class", "boxes", "images"]
    rows = {r[1]: (int(r[2]), int(r[3])) for r in table[1:]}
    assert list(rows) == TRICKY
    for k, name in enumerate(TRICKY):
        images = sum(bool((s.detections.labels == k).any()) for s in shapes)
        assert rows[name] == (int((labels == k).sum()), images)
    for name in TRICKY:
        assert html.escape(name) in text
    assert "<circle>" not in text and 'tri"angle' not in text and "sq&are" not in text


def test_dataset_html_embeds_thumbnails_of_the_first_samples(shapes: Dataset) -> None:
    page = Page(shapes._repr_html_())
    assert len(page.images) == 6
    assert "6 of 8 images" in page.text
    for im, s in zip(page.images, shapes, strict=False):
        assert im.format == "PNG" and im.size == (240, 150)  # 320x200 scaled to 240 wide
        k = len(s.detections)
        assert f"{s.id} — 320x200, {k} box{'es' * (k != 1)}" in page.text
    drawn = np.asarray(page.images[0].convert("RGB"))
    plain = Page(Dataset([Sample(shapes[0].image, 320, 200)], TRICKY)._repr_html_()).images[0]
    assert not np.array_equal(drawn, np.asarray(plain.convert("RGB")))  # boxes are drawn


def test_dataset_html_survives_missing_images_and_many_classes(tmp_path: Path) -> None:
    names = [f"c{i}" for i in range(25)]
    det = Detections(np.array([[1, 1, 5, 5], [2, 2, 8, 8]]), np.array([0, 24]))
    ds = Dataset([Sample(tmp_path / "gone.png", 10, 10, det),
                  Sample(np.zeros((10, 10, 3), np.uint8), 10, 10)], names)
    page = Page(ds._repr_html_())
    assert "2 images, 2 boxes, 25 classes" in page.text
    assert "image unavailable" in page.text and len(page.images) == 1
    assert len(page.tables[0]) == 1 + 20 and "... and 5 more classes" in page.text
    empty = Page(Dataset([], ["a"])._repr_html_())
    assert "0 images, 0 boxes, 1 class" in empty.text and not empty.images


# -- Detections ----------------------------------------------------------------------------

def test_detections_html_table() -> None:
    rng = np.random.default_rng(4)
    xyxy = rng.uniform(0, 100, (25, 4)).astype(np.float32)
    scores = rng.random(25).astype(np.float32)
    flags = {"difficult": np.arange(25) % 2 == 0}
    d = Detections(xyxy, np.arange(25) % 3, scores=scores, flags=flags)
    page = Page(d._repr_html_())
    assert "Detections: 25 boxes, with scores" in page.text
    (table,) = page.tables
    assert table[0] == ["#", "x1", "y1", "x2", "y2", "label", "score", "flags"]
    assert len(table) == 1 + 20 and "... and 5 more boxes" in page.text
    for i, row in enumerate(table[1:]):
        assert row[0] == str(i)
        assert [float(v) for v in row[1:5]] == pytest.approx(xyxy[i].tolist(), abs=0.05)
        assert row[5] == str(i % 3)
        assert row[6] == f"{scores[i]:.3f}"
        assert row[7] == ("difficult" if i % 2 == 0 else "")


def test_detections_html_without_scores_or_boxes() -> None:
    page = Page(Detections(np.array([[1, 2, 3, 4]]), np.array([7]))._repr_html_())
    assert page.tables[0] == [["#", "x1", "y1", "x2", "y2", "label"],
                              ["0", "1.0", "2.0", "3.0", "4.0", "7"]]
    assert "more" not in page.text
    empty = Page(Detections.empty(with_scores=True)._repr_html_())
    assert "Detections: 0 boxes, with scores" in empty.text and not empty.tables


def test_detections_show_draws_on_a_given_image(tmp_path: Path) -> None:
    img = noise(64, 48, seed=5)
    box = (8, 16, 50, 40)
    d = Detections(np.array([box]), np.array([0]), scores=np.array([0.5]))
    pic = d.show(img, ["cat"])
    assert isinstance(pic, Image.Image) and pic.size == (64, 48)
    out = np.asarray(pic)
    for x, y in outline_points(box):
        assert not np.array_equal(out[y, x], img[y, x])
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(img))
    for ref in (Image.fromarray(img), path, encode_png(img)):
        assert np.array_equal(np.asarray(d.show(ref, ["cat"])), out)
    assert np.array_equal(np.asarray(Detections.empty().show(img)), img)
    assert d.show(np.zeros((100, 1000, 3), np.uint8), max_side=500).size == (500, 50)
    assert d.show(np.zeros((100, 1000, 3), np.uint8), max_side=None).size == (1000, 100)


# -- EvalResult._repr_html_ ----------------------------------------------------------------

def report_number(v: float) -> str:
    """How the HTML report writes a metric (four decimals, ``n/a`` when undefined)."""
    return "n/a" if math.isnan(v) else f"{v:.4f}"


@pytest.fixture(scope="module")
def coco_result(shapes: Dataset) -> EvalResult:
    rng = np.random.default_rng(6)
    preds = [Detections(s.detections.xyxy + rng.normal(0, 3, s.detections.xyxy.shape),
                        s.detections.labels, scores=rng.random(len(s.detections)))
             for s in shapes]
    return danlu.evaluate(shapes, preds, protocol="coco")


def test_eval_result_html_has_the_metrics_as_the_report_writes_them(
        coco_result: EvalResult, tmp_path: Path) -> None:
    r = coco_result
    text = r._repr_html_()
    page = Page(text)
    metrics, per_class, params = page.tables
    assert metrics[0] == ["metric", "value"]
    assert metrics[1:] == [[k, report_number(float(v))] for k, v in r.metrics.items()]
    assert [row[0] for row in metrics[1:]][:3] == ["AP", "AP50", "AP75"]
    assert per_class[0] == ["class", "AP", "ground truth"]
    assert per_class[1:] == [[k, report_number(float(v)), str(r.num_gt[k])]
                             for k, v in r.per_class.items()]
    assert {row[0] for row in per_class[1:]} == set(TRICKY)  # read back unescaped ...
    assert "<circle>" not in text  # ... because it was escaped
    assert f"coco: AP {r.AP:.4f}, 4 classes" in page.text
    assert params[0] == ["parameter", "value"] and len(params) == 1 + len(r.params)
    report = Page(write_html_report(tmp_path / "r.html", "eval", r).read_text(encoding="utf-8"))
    assert report.tables[:2] == [metrics, per_class]  # the same tables as the report


def test_eval_result_html_undefined_and_voc() -> None:
    r = EvalResult("voc12", ["a<b", "empty"], stats=np.array([0.25]), metrics={"mAP": 0.25},
                   per_class={"a<b": 0.5, "empty": math.nan}, num_gt={"a<b": 3, "empty": 0})
    text = r._repr_html_()
    page = Page(text)
    assert page.tables[0][1:] == [["mAP", "0.2500"]]
    assert page.tables[1][1:] == [["a<b", "0.5000", "3"], ["empty", "n/a", "0"]]
    assert "a&lt;b" in text and "voc12: mAP 0.2500, 2 classes" in page.text
    assert len(page.tables) == 2  # no parameters, no parameter table


# -- IPython picks them up; the vocabulary stays cheap to import ---------------------------

def test_ipython_display_formatter_uses_the_reprs(shapes: Dataset,
                                                  coco_result: EvalResult) -> None:
    formatters = pytest.importorskip("IPython.core.formatters")
    fmt = formatters.DisplayFormatter()
    data, _ = fmt.format(shapes[0])
    assert decode(data["image/png"]).shape == (200, 320, 3) and "text/plain" in data
    data, _ = fmt.format(Sample("no/such/file.png", 10, 10))
    assert "image/png" not in data and "Sample(" in data["text/plain"]
    for obj, needle in ((shapes, "8 images"), (shapes[0].detections, "Detections:"),
                        (coco_result, "AP50")):
        data, _ = fmt.format(obj)
        assert needle in Page(data["text/html"]).text


def test_structures_import_and_text_reprs_stay_free_of_pil() -> None:
    code = ("import sys, numpy as np\n"
            "from danlu.structures import Dataset, Detections, Sample\n"
            "d = Detections(np.zeros((1, 4)), [0]); repr(Sample(None, 1, 1, d)); repr(d)\n"
            "print(','.join(m for m in ('PIL', 'danlu.data.notebook', 'danlu.data.show')\n"
            "               if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""
