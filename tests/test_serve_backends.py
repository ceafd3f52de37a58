"""``danlu serve`` with the other kinds of MODEL: an ONNX export and a Haar cascade, each
answering what the in-process Predictor answers for the same model and image."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from tests._data_fixtures import train_tiny_checkpoint  # noqa: E402
from tests._serve_fixtures import encode, rows, same, scene  # noqa: E402

from danlu.serve.launch import ServerProcess  # noqa: E402


def _served(model: str, data: bytes, threshold: float) -> dict:
    with ServerProcess(model, ["--score-threshold", str(threshold)]) as srv:
        r = httpx.post(srv.url + "/v1/detect", content=data,
                       headers={"content-type": "image/jpeg"}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()


def _oracle(model: str, data: bytes, threshold: float) -> list[tuple]:
    from danlu import Predictor
    from danlu.infer.images import read_image

    return rows(Predictor(model, device="cpu", score_threshold=threshold).predict(
        read_image(data)))


def _got(doc: dict) -> list[tuple]:
    return [(d["score"], d["label"], *d["box"]) for d in doc["detections"]]


def test_onnx_export_is_served(tmp_path):
    pytest.importorskip("onnxruntime")
    from danlu.models.export import export_model

    ckpt = train_tiny_checkpoint(tmp_path)
    onnx = export_model(ckpt, tmp_path / "model.onnx", "onnx")
    data = encode(scene(seed=4, size=(120, 90)))
    doc = _served(str(onnx), data, 0.05)
    assert doc["count"] > 0 and same(_got(doc), _oracle(str(onnx), data, 0.05))


def test_haar_cascade_is_served():
    pytest.importorskip("cv2")
    skimage_data = pytest.importorskip("skimage.data")
    data = encode(skimage_data.astronaut())  # a photograph with one face
    doc = _served("haar:frontalface_default", data, 0.0)
    assert doc["count"] >= 1 and {d["class_name"] for d in doc["detections"]} == {"face"}
    assert same(_got(doc), _oracle("haar:frontalface_default", data, 0.0))
