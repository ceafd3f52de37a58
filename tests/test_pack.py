"""The pack cache: exact round trip of pixels and boxes, memory mapping, DataLoader use."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from danlu.data.pack import PackedDataset, pack_dataset, resize_image, resized_shape
from danlu.data.synth import synthesize
from danlu.errors import DatasetError
from danlu.structures import Dataset, Detections, Sample


def _jpeg(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_round_trip_equals_decode_and_resize(tmp_path):
    ds = synthesize("shapes", 4, seed=0, image_size=(80, 48), scale_range=(10, 20))
    path = pack_dataset(ds, tmp_path / "a.pack", img_size=40)
    pk = PackedDataset(path)
    assert len(pk) == 4 and pk.class_names == ds.class_names and pk.ids == [s.id for s in ds]
    for i, s in enumerate(ds):
        img, det = pk[i]
        # the peer path: PIL decode, convert, bilinear resize, letterbox
        with Image.open(io.BytesIO(s.image)) as im:
            ref = np.asarray(im.convert("RGB").resize((40, 24), Image.BILINEAR))
        assert np.array_equal(img[:24], ref) and (img[24:] == 114).all()
        assert img.flags.writeable
        assert np.allclose(det.xyxy, s.detections.xyxy * 0.5, atol=1e-5)
        assert np.array_equal(det.labels, s.detections.labels)
    assert pk.sizes.tolist() == [[80, 48]] * 4
    assert np.allclose(pk.scales, 0.5)
    assert pk[-1][0].shape == (40, 40, 3)
    with pytest.raises(IndexError):
        pk[4]


def test_resize_mode_polygons_flags_and_empty(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (30, 60, 3), dtype=np.uint8)
    poly = np.array([[[10, 5], [20, 5], [20, 15], [10, 15]]], np.float32)
    s1 = Sample(_jpeg(arr), 60, 30, Detections(None, [1], polygons=poly,
                                               flags={"difficult": [True]}), id=1)
    s2 = Sample(arr[:, :20], 20, 30, Detections.empty(oriented=True), id=2)
    path = pack_dataset(Dataset([s1, s2], ["a", "b"]), tmp_path / "b.pack", 32, mode="resize")
    pk = PackedDataset(path)
    img, det = pk[0]
    ref, (sx, sy) = resize_image(s1.load_image(), 32, "resize")
    assert np.array_equal(img, ref) and (sx, sy) == (32 / 60, 32 / 30)
    assert np.allclose(det.polygons, poly * [sx, sy]) and det.flags["difficult"].tolist() == [True]
    assert np.allclose(det.xyxy, [[10 * sx, 5 * sy, 20 * sx, 15 * sy]])
    img2, det2 = pk[1]
    assert len(det2) == 0 and det2.polygons.shape == (0, 4, 2)
    assert pk.ids == [1, 2]
    empty = pack_dataset(Dataset([], ["a"]), tmp_path / "e.pack", 16)
    assert len(PackedDataset(empty)) == 0


def test_resized_shape():
    assert resized_shape(640, 480, 320) == (320, 240)
    assert resized_shape(10, 1000, 100) == (1, 100)
    assert resized_shape(33, 33, 64, "resize") == (64, 64)


def test_pickle_and_dataloader(tmp_path):
    torch = pytest.importorskip("torch")
    ds = synthesize("shapes", 6, seed=1, image_size=(32, 32), scale_range=(8, 12))
    pk = PackedDataset(pack_dataset(ds, tmp_path / "c.pack", 32))
    clone = pickle.loads(pickle.dumps(pk))
    assert np.array_equal(clone[3][0], pk[3][0])
    loader = torch.utils.data.DataLoader(pk, batch_size=4, shuffle=True,
                                         generator=torch.Generator().manual_seed(0),
                                         collate_fn=lambda b: tuple(zip(*b, strict=True)))
    seen = sum(len(images) for images, _ in loader)
    assert seen == 6


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.pack"
    bad.write_bytes(b"not a pack at all")
    with pytest.raises(DatasetError, match="not a danlu pack"):
        PackedDataset(bad)
    ds = synthesize("shapes", 2, seed=1, image_size=(32, 32), scale_range=(8, 12))
    path = pack_dataset(ds, tmp_path / "t.pack", 32)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="truncated"):
        PackedDataset(path)
    with pytest.raises(DatasetError, match="cannot read"):
        PackedDataset(tmp_path / "missing.pack")
    assert not list(tmp_path.glob(".*.tmp"))
