"""Predictions are paired with ground-truth images by file name or by id, never by position
(issue 12): integer ids against a VOC ground truth stop with an error, names and ids pair
whatever the order of the file, classes map by name where the file has names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from tests._cli import danlu

from danlu.data.formats._common import ReadContext
from danlu.data.formats.pairing import describe_pairing, pair_images
from danlu.data.io import load_dataset, load_predictions, save_dataset
from danlu.data.synth import synthesize
from danlu.errors import DatasetError
from danlu.evaluate import evaluate
from danlu.structures import Dataset, Detections, Sample


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``gt/``: a VOC dataset of 6 images."""
    tmp = tmp_path_factory.mktemp("pairing")
    ds = synthesize("shapes", num_images=6, seed=3, image_size=(96, 96),
                    objects_per_image=(2, 4), scale_range=(16, 36))
    save_dataset(ds, tmp / "gt", "voc")
    return tmp


@pytest.fixture(scope="module")
def gt(root: Path) -> Dataset:
    return load_dataset(root / "gt")


@pytest.fixture(scope="module")
def preds(gt: Dataset) -> Dataset:
    """Predictions of ``gt`` (noisy boxes, a miss, false alarms, a wrong class), in order."""
    rng = np.random.default_rng(0)
    samples = []
    for i, s in enumerate(gt):
        d = s.detections
        # boxes on a half-pixel grid: exact in float32 and float64, the same IoUs either way
        boxes = np.round((d.xyxy + rng.normal(0, 2, d.xyxy.shape)) * 2) / 2
        labels = d.labels.copy()
        if i == 1:
            boxes, labels = boxes[1:], labels[1:]  # a miss
        if i == 2:
            labels[0] = (labels[0] + 1) % len(gt.class_names)  # a wrong class
        boxes = np.concatenate([boxes, [[4, 4, 30.5, 30]]])  # a false alarm per image
        labels = np.concatenate([labels, [i % len(gt.class_names)]])
        scores = np.round(rng.uniform(0.05, 1, len(labels)), 3)
        samples.append(Sample(s.image, s.width, s.height,
                              Detections(boxes, labels, scores=scores), id=s.id))
    return Dataset(samples, gt.class_names)


def expected_ap(gt: Dataset, preds: Dataset) -> float:
    return float(evaluate(gt, preds).metrics["AP"])


def coco_rows(preds: Dataset, image_key) -> list[dict]:  # noqa: ANN001 - sample -> value
    rows = []
    for s in preds:
        d = s.detections
        for b, c, sc in zip(d.xyxy.tolist(), d.labels.tolist(), d.scores.tolist(), strict=True):
            rows.append({**image_key(s), "category_id": c + 1,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": sc})
    return rows


def write_json(path: Path, doc: object) -> Path:
    path.write_bytes(orjson.dumps(doc))
    return path


def danlu_doc(preds: Dataset, class_names: list[str], order: list[int] | None = None) -> dict:
    """``danlu predict``'s predictions.json of ``preds``, classes named ``class_names``."""
    to_doc = {c: i for i, c in enumerate(class_names)}
    images = []
    for s in preds:
        d = s.detections
        labels = [to_doc[preds.class_names[k]] for k in d.labels.tolist()]
        images.append({"path": str(s.image), "width": s.width, "height": s.height,
                       "detections": {"xyxy": d.xyxy.tolist(), "labels": labels,
                                      "scores": d.scores.tolist()}})
    if order is not None:
        images = [images[i] for i in order]
    return {"class_names": class_names, "model": "test", "images": images}


def test_integer_ids_against_voc_stop_with_a_hint(root: Path, gt: Dataset, preds: Dataset
                                                  ) -> None:
    # ids 1..6 in an order of someone's own COCO conversion: by position, AP 0 and exit 0
    order = {s.id: 6 - i for i, s in enumerate(gt)}
    write_json(root / "ids.json", coco_rows(preds, lambda s: {"image_id": order[s.id]}))
    r = danlu("eval", "--gt", "gt", "--pred", "ids.json", cwd=root)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "integer id" in r.stderr and "guess" in r.stderr
    hint = next(ln for ln in r.stderr.splitlines() if ln.startswith("hint:"))
    assert "file_name" in hint and "--gt" in hint
    assert "Traceback" not in r.stderr
    with pytest.raises(DatasetError, match="integer id"):  # skip_invalid does not hide it
        load_predictions(root / "ids.json", gt, skip_invalid=True)


def test_file_names_match_danlu_predictions_and_pycocotools(root: Path, gt: Dataset,
                                                            preds: Dataset) -> None:
    want = expected_ap(gt, preds)
    assert 0.2 < want < 0.95  # the misses, alarms and noise count
    names = write_json(root / "names.json", coco_rows(
        preds, lambda s: {"file_name": Path(s.image).name, "image_id": 0}))
    ours = danlu_doc(preds, gt.class_names)
    write_json(root / "ours.json", ours)
    for pred in ("names.json", "ours.json"):
        r = danlu("eval", "--gt", "gt", "--pred", pred, "--json", cwd=root)
        assert r.returncode == 0, r.stderr
        doc = orjson.loads(r.stdout)  # stdout holds the JSON document alone
        assert doc["AP"] == pytest.approx(want, abs=1e-12), pred
        assert doc["pairing"]["images"] == "file name" and doc["pairing"]["paired"] == 6
        classes = "category id" if pred == "names.json" else "classes by name"
        assert "paired 6 predicted images by file name" in r.stderr
        assert classes in r.stderr
    # the independent oracle: pycocotools on the COCO conversion of the same ground truth
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    save_dataset(gt, root / "gt.json", "coco", images="none")
    coco = COCO(str(root / "gt.json"))
    ids = {im["file_name"].rsplit("/", 1)[-1]: im["id"] for im in coco.dataset["images"]}
    rows = orjson.loads(names.read_bytes())
    for row in rows:
        row["image_id"] = ids[row.pop("file_name")]
    e = COCOeval(coco, coco.loadRes(rows), "bbox")
    e.evaluate()
    e.accumulate()
    e.summarize()
    assert want == pytest.approx(e.stats[0], abs=1e-9)


def test_ids_against_a_coco_ground_truth_in_any_order(root: Path, gt: Dataset,
                                                      preds: Dataset) -> None:
    save_dataset(gt, root / "gt_ids.json", "coco", images="none")
    coco_gt = load_dataset(root / "gt_ids.json", check_images=False)
    by_name = {Path(s.image).name: s.id for s in coco_gt}
    rows = coco_rows(preds, lambda s: {"image_id": by_name[Path(s.image).name]})
    want = expected_ap(gt, preds)
    rng = np.random.default_rng(1)
    for k, rows_k in enumerate([rows, [rows[i] for i in rng.permutation(len(rows))]]):
        p = load_predictions(write_json(root / f"by_id{k}.json", rows_k), coco_gt)
        assert p.meta["pairing"]["images"] == "id" and p.meta["pairing"]["classes"] == "id"
        assert expected_ap(coco_gt, p) == pytest.approx(want, abs=1e-12)


def test_shuffled_predictions_pair_the_same(root: Path, gt: Dataset, preds: Dataset) -> None:
    want = expected_ap(gt, preds)
    rows = coco_rows(preds, lambda s: {"file_name": f"JPEGImages/{Path(s.image).name}"})
    rng = np.random.default_rng(2)
    shuffled = write_json(root / "shuffled.json", [rows[i] for i in rng.permutation(len(rows))])
    p = load_predictions(shuffled, gt)
    assert p.meta["pairing"]["levels"] == {"path": 6}
    assert expected_ap(gt, p) == pytest.approx(want, abs=1e-12)
    order = rng.permutation(len(preds)).tolist()
    ours = write_json(root / "ours_shuffled.json", danlu_doc(preds, gt.class_names, order))
    assert expected_ap(gt, load_predictions(ours, gt)) == pytest.approx(want, abs=1e-12)


def test_a_name_not_in_the_ground_truth_is_named(root: Path, gt: Dataset,
                                                 preds: Dataset) -> None:
    rows = coco_rows(preds, lambda s: {"file_name": Path(s.image).name})
    rows[0]["file_name"] = "nowhere.png"
    f = write_json(root / "unknown.json", rows)
    with pytest.raises(DatasetError, match="nowhere.png") as e:
        load_predictions(f, gt)
    assert e.value.hint and "shapes_" in e.value.hint
    p = load_predictions(f, gt, skip_invalid=True)
    assert len(p.meta["warnings"]) == 1 and "1 images" in p.meta["warnings"][0]
    r = danlu("eval", "--gt", "gt", "--pred", "unknown.json", cwd=root)
    assert r.returncode == 2 and "nowhere.png" in r.stderr


def test_class_names_in_another_order_map_by_name(root: Path, gt: Dataset,
                                                  preds: Dataset) -> None:
    shuffled = list(reversed(gt.class_names))
    f = write_json(root / "reversed.json", danlu_doc(preds, shuffled))
    p = load_predictions(f, gt)
    assert p.meta["pairing"]["classes"] == "name"
    for a, b in zip(preds, p, strict=True):
        assert a.detections.labels.tolist() == b.detections.labels.tolist()
    assert expected_ap(gt, p) == pytest.approx(expected_ap(gt, preds), abs=1e-12)
    assert describe_pairing(p.meta["pairing"]) == \
        "paired 6 predicted images by file name, classes by name"


@pytest.mark.parametrize("task", [1, 2])
def test_dota_result_files_pair_by_stem(root: Path, gt: Dataset, preds: Dataset,
                                        task: int) -> None:
    folder = root / f"task{task}"
    folder.mkdir()
    lines: dict[str, list[str]] = {c: [] for c in reversed(gt.class_names)}
    for s in preds:
        d = s.detections
        for b, c, sc in zip(d.xyxy.tolist(), d.labels.tolist(), d.scores.tolist(), strict=True):
            x1, y1, x2, y2 = b
            coords = [x1, y1, x2, y1, x2, y2, x1, y2] if task == 1 else b
            lines[gt.class_names[c]].append(
                f"{Path(s.image).stem} {sc} " + " ".join(map(str, coords)))
    for c, rows in lines.items():
        (folder / f"Task{task}_{c}.txt").write_text("".join(r + "\n" for r in rows))
    p = load_predictions(folder, gt)
    assert p.meta["format"] == f"dota-task{task}"
    assert p.meta["pairing"]["levels"] == {"stem": 6}
    assert expected_ap(gt, p) == pytest.approx(expected_ap(gt, preds), abs=1e-12)


def test_mixed_file_name_and_id_is_an_error(root: Path, gt: Dataset, preds: Dataset) -> None:
    rows = coco_rows(preds, lambda s: {"file_name": Path(s.image).name})
    del rows[3]["file_name"]
    rows[3]["image_id"] = 1
    with pytest.raises(DatasetError, match=r"\[3\].*file_name"):
        load_predictions(write_json(root / "mixed.json", rows), gt)


def test_the_rule_on_its_own() -> None:
    ctx = ReadContext()
    gt = Dataset([Sample("/d/a/x.png", 8, 8, id="x"), Sample("/d/b/x.png", 8, 8, id="x"),
                  Sample("/d/b/y.jpg", 8, 8, id="y")], ["cat"])
    # a whole path decides between two equal base names; a base name, then a stem
    got = pair_images(["a/x.png", "/d/b/x.png", "y.jpg"], "name", gt, "p", ctx)
    assert got.index == [0, 1, 2] and got.how == {"path": 2, "file name": 1}
    assert pair_images(["y"], "name", gt, "p", ctx).how == {"stem": 1}
    for key in ("x.png", "x"):  # ambiguous: an error naming it, never the first one
        with pytest.raises(DatasetError, match=f"'{key}'"):
            pair_images([key], "name", gt, "p", ctx)
    skip = ReadContext(skip_invalid=True)
    assert pair_images(["x.png", "y.jpg"], "name", gt, "p", skip).index == [-1, 2]
    assert len(skip.warnings) == 1
    # two names for one image: the second is an error
    with pytest.raises(DatasetError, match="twice"):
        pair_images(["y.jpg", "b/y.jpg"], "name", gt, "p", ctx)
    # an unknown image without detections is no error
    assert pair_images(["z.png"], "name", gt, "p", ctx, nonempty=[False]).index == [-1]
    # ids: only against integer ids of the ground truth's own
    with pytest.raises(DatasetError, match="integer id"):
        pair_images([1], "id", gt, "p", ctx)
    coco = Dataset([Sample("/d/a.png", 8, 8, id=7), Sample("/d/b.png", 8, 8, id=3)], ["cat"])
    assert pair_images([3, 7], "id", coco, "p", ctx).index == [1, 0]
    with pytest.raises(DatasetError, match="not in the ground truth"):
        pair_images([5], "id", coco, "p", ctx)
    # a string image_id: a string id first (VOC's ids are stems), then a name
    assert pair_images(["y"], "id", gt, "p", ctx).how == {"id": 1}
    assert pair_images(["a"], "id", coco, "p", ctx).how == {"stem": 1}


def test_file_names_read_alike_by_every_reader(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from danlu.data.formats import coco_results

    rows = [{"image_id": 9, "file_name": f"d/{i % 3}.png", "category_id": 1,
             "bbox": [0, 0, 1, 1], "score": i / 10} for i in range(10)]
    whole = write_json(tmp_path / "r.json", rows)
    rows[4]["extra"] = None  # a literal: that piece is checked item by item
    checked = write_json(tmp_path / "c.json", rows)
    got = [coco_results.read_results(whole, ReadContext()),
           coco_results.read_results(checked, ReadContext())]
    monkeypatch.setattr(coco_results, "_PIECE", 30)  # many pieces
    got += [coco_results.read_results(f, ReadContext()) for f in (whole, checked)]
    for c in got:
        assert c.named and c.keys == ["d/0.png", "d/1.png", "d/2.png"]
        assert c.image_keys() == c.keys
        assert c.key_index.tolist() == [i % 3 for i in range(10)]


def test_a_folder_of_yolo_labels_pairs_by_stem_classes_by_index(root: Path, gt: Dataset,
                                                                preds: Dataset) -> None:
    folder = root / "yolo_labels"
    folder.mkdir()
    for s in preds:
        d = s.detections
        lines = []
        for (x1, y1, x2, y2), c, sc in zip(d.xyxy.tolist(), d.labels.tolist(),
                                           d.scores.tolist(), strict=True):
            lines.append(f"{c} {(x1 + x2) / 2 / s.width} {(y1 + y2) / 2 / s.height} "
                         f"{(x2 - x1) / s.width} {(y2 - y1) / s.height} {sc}")
        (folder / f"{Path(s.image).stem}.txt").write_text("\n".join(lines) + "\n")
    p = load_predictions(folder, gt)
    assert p.meta["pairing"] == {"images": "file name", "classes": "index", "paired": 6,
                                 "levels": {"stem": 6}}
    for a, b in zip(preds, p, strict=True):
        np.testing.assert_allclose(a.detections.xyxy, b.detections.xyxy, atol=1e-3)
