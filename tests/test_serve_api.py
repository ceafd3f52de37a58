"""``danlu serve`` for real: a uvicorn server process on a free loopback port, checked with
httpx against the in-process Predictor (the oracle: the same model on the same decoded
image), including every kind of bad upload the issue lists."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from tests._data_fixtures import train_tiny_checkpoint  # noqa: E402
from tests._serve_fixtures import (  # noqa: E402
    encode,
    exif_rotated_jpeg,
    metric,
    png_claiming,
    same,
    scene,
)

THR = 0.05


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("serve_api"))


@pytest.fixture(scope="module")
def server(ckpt):
    from danlu.serve.launch import ServerProcess

    with ServerProcess(ckpt, ["--max-upload-mb", "1", "--max-pixels", "4000000"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def oracle(ckpt):
    from danlu import Predictor

    return Predictor(ckpt, device="cpu", score_threshold=THR)


def expected(oracle, data: bytes, threshold: float = THR) -> list[tuple]:
    from danlu.infer.images import read_image

    det = oracle.predict(read_image(data), score_threshold=threshold)
    return sorted((float(s), int(lab), *b.tolist())
                  for b, lab, s in zip(det.xyxy, det.labels, det.scores, strict=True))


def got(doc: dict) -> list[tuple]:
    return sorted((d["score"], d["label"], *d["box"]) for d in doc["detections"])


def test_health_ready_model_and_docs(client, ckpt):
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json() == {"status": "ready"}
    m = client.get("/v1/model").json()
    assert m["class_names"] and m["input_size"] == 64 and m["name"] == "fcos-tiny"
    import hashlib

    assert m["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    schema = client.get("/openapi.json").json()
    assert {"/v1/detect", "/v1/detect/batch", "/v1/model"} <= set(schema["paths"])
    docs = client.get("/docs").text
    assert "/static/swagger/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert client.get("/static/swagger/swagger-ui-bundle.js").status_code == 200


@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_detect_equals_the_predictor(client, oracle, how):
    data = encode(scene(seed=5))
    if how == "multipart":
        r = client.post("/v1/detect", params={"score_threshold": THR},
                        files={"image": ("a.jpg", data, "image/jpeg")})
    else:
        r = client.post("/v1/detect", params={"score_threshold": THR}, content=data,
                        headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["width"], doc["height"]) == (96, 80)
    assert doc["count"] == len(doc["detections"]) > 0
    assert same(got(doc), expected(oracle, data))
    assert set(doc["timings_ms"]) == {"queue", "decode", "infer", "post", "total"}
    assert doc["batch_size"] >= 1
    names = client.get("/v1/model").json()["class_names"]
    assert all(d["class_name"] == names[d["label"]] for d in doc["detections"])


def test_form_fields_carry_the_options(client):
    data = encode(scene(seed=6))
    r = client.post("/v1/detect", data={"score_threshold": "0.05", "max_detections": "2"},
                    files={"image": ("a.jpg", data, "image/jpeg")})
    assert r.status_code == 200 and r.json()["count"] <= 2


def test_options_filter_like_the_predictor(client, oracle):
    data = encode(scene(seed=7))
    full = expected(oracle, data)
    top = sorted(full, reverse=True)[:3]
    r = client.post("/v1/detect", params={"score_threshold": THR, "max_detections": 3},
                    content=data, headers={"content-type": "image/jpeg"})
    assert same(got(r.json()), sorted(top))
    label = full[0][1]
    names = client.get("/v1/model").json()["class_names"]
    r = client.post("/v1/detect", params={"score_threshold": THR, "classes": names[label]},
                    content=data, headers={"content-type": "image/jpeg"})
    assert same(got(r.json()), [t for t in full if t[1] == label])
    high = sorted(t[0] for t in full)[len(full) // 2]
    r = client.post("/v1/detect", params={"score_threshold": high}, content=data,
                    headers={"content-type": "image/jpeg"})
    assert same(got(r.json()), expected(oracle, data, high))


@pytest.mark.parametrize("params, word", [({"score_threshold": "2"}, "score_threshold"),
                                          ({"score_threshold": "x"}, "number"),
                                          ({"classes": "unicorn"}, "unicorn"),
                                          ({"max_detections": "0"}, "max_detections"),
                                          ({"slice": "big"}, "slice")])
def test_bad_options_are_422(client, params, word):
    r = client.post("/v1/detect", params=params, content=encode(scene()),
                    headers={"content-type": "image/jpeg"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_option"
    assert word in r.json()["error"]["message"]


def test_bad_uploads_get_clear_errors_and_the_server_lives(client):
    good = encode(scene())
    cases = {
        "truncated": (good[: len(good) // 2], 400, "bad_image", "truncated"),
        "empty": (b"", 400, "bad_image", "empty"),
        "bomb": (png_claiming(60_000, 60_000), 413, "too_large", "60000x60000"),
        "text": (b"this is not an image\n" * 10, 415, "unsupported_format", "not an image"),
        "ppm": (encode(scene(), "PPM"), 415, "unsupported_format", "PPM"),
    }
    for name, (data, status, code, word) in cases.items():
        r = client.post("/v1/detect", files={"image": (f"{name}.jpg", data, "image/jpeg")})
        assert r.status_code == status, (name, r.text)
        err = r.json()["error"]
        assert err["code"] == code and word in err["message"], (name, err)
    r = client.post("/v1/detect", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 415
    r = client.post("/v1/detect", content=b"x" * (2 * 2**20),
                    headers={"content-type": "image/jpeg"})
    assert r.status_code == 413 and r.json()["error"]["stage"] == "read"
    r = client.post("/v1/detect", files={"other": ("a.jpg", good, "image/jpeg")})
    assert r.status_code == 400 and "'image'" in r.json()["error"]["message"]
    assert client.get("/healthz").status_code == 200
    assert client.post("/v1/detect", content=good,
                       headers={"content-type": "image/jpeg"}).status_code == 200


def test_odd_but_valid_images_are_answered_correctly(client, oracle):
    from PIL import Image

    arr = scene(seed=8)
    one = encode(np.full((1, 1, 3), 200, np.uint8), "PNG")
    r = client.post("/v1/detect", params={"score_threshold": THR}, content=one,
                    headers={"content-type": "image/png"})
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (1, 1)

    gray16 = (arr[:, :, 0].astype(np.uint16) * 257)
    import io

    buf = io.BytesIO()
    Image.fromarray(gray16).save(buf, "PNG")
    data16 = buf.getvalue()
    r = client.post("/v1/detect", params={"score_threshold": THR}, content=data16,
                    headers={"content-type": "image/png"})
    assert r.status_code == 200 and same(got(r.json()), expected(oracle, data16))

    buf = io.BytesIO()
    Image.fromarray(arr).convert("CMYK").save(buf, "JPEG", quality=95)
    r = client.post("/v1/detect", params={"score_threshold": THR}, content=buf.getvalue(),
                    headers={"content-type": "image/jpeg"})
    assert r.status_code == 200 and same(got(r.json()), expected(oracle, buf.getvalue()))

    rotated = exif_rotated_jpeg(arr, 6)  # shown turned 90 degrees: 80 wide, 96 high
    r = client.post("/v1/detect", params={"score_threshold": THR}, content=rotated,
                    headers={"content-type": "image/jpeg"})
    doc = r.json()
    assert (doc["width"], doc["height"]) == (80, 96)
    assert same(got(doc), expected(oracle, rotated))


def test_batch_route_fails_one_image_alone(client, oracle):
    a, b = encode(scene(seed=9)), encode(scene(seed=10), "PNG")
    files = [("images", ("a.jpg", a, "image/jpeg")), ("images", ("bad.jpg", b"xx", "image/jpeg")),
             ("images", ("b.png", b, "image/png"))]
    r = client.post("/v1/detect/batch", params={"score_threshold": THR}, files=files)
    assert r.status_code == 200
    doc = r.json()
    assert doc["count"] == 3 and doc["failed"] == 1
    ra, bad, rb = doc["results"]
    assert [x["filename"] for x in doc["results"]] == ["a.jpg", "bad.jpg", "b.png"]
    assert bad["error"]["code"] == "unsupported_format"
    assert same(got(ra), expected(oracle, a)) and same(got(rb), expected(oracle, b))


def test_sliced_request_matches_sliced_predict(client, oracle):
    from danlu.infer.images import read_image
    from danlu.infer.slicing import sliced_predict

    big = np.concatenate([np.concatenate([scene(seed=s, size=(96, 96)) for s in row], 1)
                          for row in ((11, 12), (13, 14))], 0)
    data = encode(big, "PNG")
    r = client.post("/v1/detect", params={"score_threshold": THR, "slice": 96,
                                          "overlap": 0.1}, content=data,
                    headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["tiles"] == 9 and (doc["width"], doc["height"]) == (192, 192)
    det = sliced_predict(oracle, read_image(data), slice_size=96, overlap=0.1, workers=0)
    want = sorted((float(s), int(lab), *b.tolist())
                  for b, lab, s in zip(det.xyxy, det.labels, det.scores, strict=True))
    assert same(got(doc), want)


def test_metrics_count_what_happened(client):
    before = client.get("/metrics").text
    n0 = metric(before, "danlu_requests_total", route="/v1/detect", status="200")
    for _ in range(3):
        client.post("/v1/detect", content=encode(scene()), headers={"content-type": "image/jpeg"})
    client.post("/v1/detect", content=b"", headers={"content-type": "image/jpeg"})
    text = client.get("/metrics").text
    assert metric(text, "danlu_requests_total", route="/v1/detect", status="200") == n0 + 3
    assert metric(text, "danlu_requests_total", route="/v1/detect", status="400") >= 1
    assert metric(text, "danlu_rejected_total", reason="bad_image") >= 1
    assert metric(text, "danlu_batch_size_count") >= 3
    assert sum(metric(text, "danlu_batches_total", reason=r)
               for r in ("full", "timeout", "idle")) == metric(text, "danlu_batch_size_count")
    for stage in ("queue", "decode", "infer", "post"):
        assert metric(text, "danlu_stage_seconds_count", stage=stage) >= 3
    assert "danlu_queue_depth" in text and "danlu_request_seconds_bucket" in text
