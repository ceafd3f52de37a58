"""``danlu serve --redis`` + ``danlu worker`` for real: a real ``redis-server`` on a free
loopback port, the web side and the workers as child processes; every answer checked against
the in-process Predictor and against a local ``danlu serve`` on the same image."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from tests._data_fixtures import train_tiny_checkpoint  # noqa: E402
from tests._redis_fixtures import redis_server_or_skip, ttl_less_keys  # noqa: E402
from tests._serve_fixtures import encode, metric, png_claiming, same, scene  # noqa: E402

THR = 0.05
LIMITS = ["--max-upload-mb", "1", "--max-pixels", "4000000"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("serve_redis"))


@pytest.fixture(scope="module")
def redis_server():
    server = redis_server_or_skip()
    yield server
    server.close()


@pytest.fixture(scope="module")
def web(ckpt, redis_server):
    from danlu.serve.launch import ServerProcess

    with ServerProcess(ckpt, ["--redis", redis_server.url, *LIMITS]) as srv:
        yield srv


@pytest.fixture(scope="module")
def worker(ckpt, redis_server):
    from danlu.serve.launch import WorkerProcess

    with WorkerProcess(ckpt, redis_server.url, ["--name", "w-e2e", "--max-pixels",
                                                "4000000"]) as w:
        yield w


@pytest.fixture(scope="module")
def client(web, worker):
    with httpx.Client(base_url=web.url, timeout=60) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def local(ckpt):
    from danlu.serve.launch import ServerProcess

    with ServerProcess(ckpt, LIMITS) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def oracle(ckpt):
    from danlu import Predictor

    return Predictor(ckpt, device="cpu", score_threshold=THR)


def wait_ready(c, want: int = 200, polls: int = 600) -> dict:
    """Poll ``/readyz`` until it answers ``want`` (a bounded count of polls)."""
    for _ in range(polls):
        r = c.get("/readyz")
        if r.status_code == want:
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"/readyz never answered {want}: {r.status_code} {r.text}")


def expected(oracle, data: bytes, threshold: float = THR) -> list[tuple]:
    from danlu.infer.images import read_image

    det = oracle.predict(read_image(data), score_threshold=threshold)
    return sorted((float(s), int(lab), *b.tolist())
                  for b, lab, s in zip(det.xyxy, det.labels, det.scores, strict=True))


def got(doc: dict) -> list[tuple]:
    return sorted((d["score"], d["label"], *d["box"]) for d in doc["detections"])


def post(c, data: bytes, **params):
    return c.post("/v1/detect", params={"score_threshold": THR, **params}, content=data,
                  headers={"content-type": "image/jpeg"})


def test_the_web_side_loads_no_torch():
    code = ("import sys; from danlu.serve.config import ServeConfig; "
            "from danlu.serve.dispatch import RemoteFront, check_header; "
            "import danlu.serve.app, danlu.serve.redis_dispatch; "
            "f = RemoteFront(ServeConfig('x')); f.update({'class_names': ['a'], 'name': 'm'}); "
            "f.options(score_threshold='0.3', classes='a', slice_size='auto'); "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_remote_options_equal_the_engines(ckpt):
    """The web side's own option parser (torch-free) answers as Engine.options does."""
    from danlu.serve.config import ServeConfig
    from danlu.serve.dispatch import RemoteFront
    from danlu.serve.engine import Engine
    from danlu.serve.problems import RequestProblem

    engine = Engine(ServeConfig(str(ckpt), device="cpu"))
    front = RemoteFront(ServeConfig(str(ckpt)))
    front.update(engine.describe())
    cases = [{}, {"score_threshold": "0.4"}, {"score_threshold": "2"},
             {"score_threshold": "nan"}, {"classes": "circle,1"}, {"classes": "unicorn"},
             {"classes": " "}, {"max_detections": "0"}, {"max_detections": "5"},
             {"slice_size": "auto"}, {"slice_size": "AUTO"}, {"slice_size": "off"},
             {"slice_size": "0"}, {"slice_size": "16"}, {"slice_size": "640"},
             {"slice_size": "big"}, {"overlap": "0.95"}, {"overlap": "0.3"},
             {"max_detections": "x"}]
    for kw in cases:
        outs = []
        for side in (engine, front):
            try:
                outs.append(side.options(**kw))
            except RequestProblem as p:
                outs.append((p.status, p.code, p.message))
        assert outs[0] == outs[1], kw


def test_readyz_and_model_follow_the_workers(ckpt, redis_server):
    """No worker: /readyz 503 and /v1/model 503; a worker: 200 with its heartbeat; after its
    SIGTERM (exit 0): 503 again."""
    from danlu.serve.launch import ServerProcess, WorkerProcess

    opts = ["--redis", redis_server.url, "--redis-prefix", "lonely"]
    with ServerProcess(ckpt, opts) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "no_workers"
        assert c.get("/v1/model").status_code == 503
        r = post(c, encode(scene()))
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_workers"
        w = WorkerProcess(ckpt, redis_server.url, ["--redis-prefix", "lonely", "--name", "solo"])
        with w:
            doc = wait_ready(c)
            (beat,) = doc["workers"]
            assert beat["name"] == "solo" and beat["model"] == "fcos-tiny"
            assert {"host", "pid", "sha256", "batches"} <= set(beat)
            import hashlib

            assert beat["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
            m = c.get("/v1/model").json()
            assert m["dispatch"] == "redis" and m["checkpoint_sha256"] == beat["sha256"]
            assert m["class_names"] and m["input_size"] == 64 and m["max_pixels"] == 89_478_485
            assert post(c, encode(scene())).status_code == 200
        assert w.proc.returncode == 0, "".join(w.lines[-10:])
        assert wait_ready(c, 503)["status"] == "no_workers"


@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_detect_equals_the_predictor_and_local_serve(client, local, oracle, how):
    for seed in (5, 6, 7):
        data = encode(scene(seed=seed))
        if how == "multipart":
            r = client.post("/v1/detect", params={"score_threshold": THR},
                            files={"image": ("a.jpg", data, "image/jpeg")})
        else:
            r = post(client, data)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert (doc["width"], doc["height"]) == (96, 80) and doc["worker"] == "w-e2e"
        assert doc["count"] == len(doc["detections"]) > 0
        assert same(got(doc), expected(oracle, data))
        assert doc["detections"] == post(local, data).json()["detections"]  # the same JSON
        assert set(doc["timings_ms"]) == {"queue", "decode", "infer", "post", "total"}
        assert doc["batch_size"] >= 1 and doc["model"] == "fcos-tiny"


def test_options_travel_with_the_job(client, local):
    data = encode(scene(seed=7))
    names = client.get("/v1/model").json()["class_names"]
    for params in ({"max_detections": 3}, {"classes": names[1]}, {"score_threshold": 0.12},
                   {"classes": "0,2", "max_detections": 2}):
        r = post(client, data, **params)
        assert r.status_code == 200, r.text
        assert r.json()["detections"] == post(local, data, **params).json()["detections"]
    r = post(client, data, classes="unicorn")
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_option"


def test_bad_uploads_answer_as_the_local_service(client, local):
    """Header problems are found on the web side; a truncated image (a good header) by the
    worker's decoder: either way the status, code and stage the local service gives."""
    good = encode(scene())
    cases = {"truncated": good[: len(good) // 2], "empty": b"",
             "bomb": png_claiming(60_000, 60_000), "text": b"this is not an image\n" * 10,
             "ppm": encode(scene(), "PPM"), "too big": b"x" * (2 * 2**20)}
    for name, data in cases.items():
        mine, theirs = post(client, data), post(local, data)
        assert mine.status_code == theirs.status_code, (name, mine.text, theirs.text)
        e1, e2 = mine.json()["error"], theirs.json()["error"]
        assert (e1["code"], e1.get("stage")) == (e2["code"], e2.get("stage")), name
        if name == "truncated":  # the worker's own 400, in the one error shape
            assert e1["code"] == "bad_image" and "truncated" in e1["message"]
    assert post(client, good).status_code == 200


def test_batch_route_fails_one_image_alone(client, oracle):
    a, b = encode(scene(seed=9)), encode(scene(seed=10), "PNG")
    cut = a[: len(a) // 2]
    files = [("images", ("a.jpg", a, "image/jpeg")), ("images", ("bad.jpg", b"xx", "image/jpeg")),
             ("images", ("cut.jpg", cut, "image/jpeg")), ("images", ("b.png", b, "image/png"))]
    r = client.post("/v1/detect/batch", params={"score_threshold": THR}, files=files)
    assert r.status_code == 200
    doc = r.json()
    assert doc["count"] == 4 and doc["failed"] == 2
    ra, bad, cut_doc, rb = doc["results"]
    assert bad["error"]["code"] == "unsupported_format"  # the web side's header check
    assert cut_doc["error"]["code"] == "bad_image"  # the worker's decoder
    assert same(got(ra), expected(oracle, a)) and same(got(rb), expected(oracle, b))


def test_sliced_request_matches_sliced_predict(client, oracle):
    from danlu.infer.images import read_image
    from danlu.infer.slicing import sliced_predict

    big = np.concatenate([np.concatenate([scene(seed=s, size=(96, 96)) for s in row], 1)
                          for row in ((11, 12), (13, 14))], 0)
    data = encode(big, "PNG")
    r = client.post("/v1/detect", params={"score_threshold": THR, "slice": 96, "overlap": 0.1},
                    content=data, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["tiles"] == 9 and (doc["width"], doc["height"]) == (192, 192)
    det = sliced_predict(oracle, read_image(data), slice_size=96, overlap=0.1, workers=0)
    want = sorted((float(s), int(lab), *b.tolist())
                  for b, lab, s in zip(det.xyxy, det.labels, det.scores, strict=True))
    assert same(got(doc), want)


def test_metrics_add_the_queue(client):
    before = client.get("/metrics").text
    n0 = metric(before, "danlu_requests_total", route="/v1/detect", status="200")
    r0 = metric(before, "danlu_redis_replies_total")
    for _ in range(3):
        assert post(client, encode(scene())).status_code == 200
    text = client.get("/metrics").text
    assert metric(text, "danlu_requests_total", route="/v1/detect", status="200") == n0 + 3
    assert metric(text, "danlu_redis_replies_total") == r0 + 3
    assert metric(text, "danlu_redis_up") == 1 and metric(text, "danlu_redis_workers") == 1
    assert metric(text, "danlu_redis_backlog") == 0 and metric(text, "danlu_redis_pending") == 0
    for name in ("reclaimed", "dead_lettered", "duplicates", "batch_images"):
        assert f"danlu_redis_{name}_total" in text
    assert metric(text, "danlu_redis_batches_total") >= 3
    for stage in ("queue", "decode", "infer", "post"):
        assert metric(text, "danlu_stage_seconds_count", stage=stage) >= 3


def test_a_full_backlog_is_503_with_retry_after(ckpt, redis_server):
    """--max-backlog 2 and two jobs no worker takes: the next request is refused at
    admission (its body is never read)."""
    from danlu.serve.launch import ServerProcess

    db = redis_server.client()
    for i in range(2):
        db.xadd("full:jobs", {"id": f"fake{i}", "image": b"", "opts": b"{}", "budget": b"0"})
    opts = ["--redis", redis_server.url, "--redis-prefix", "full", "--max-backlog", "2"]
    with ServerProcess(ckpt, opts) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        r = post(c, encode(scene()))
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
        assert int(r.headers["retry-after"]) >= 1 and "backlog" in r.json()["error"]["message"]
        assert metric(c.get("/metrics").text, "danlu_rejected_total", reason="backlog_full") == 1
        db.xtrim("full:jobs", maxlen=1, approximate=False)
        assert post(c, encode(scene())).json()["error"]["code"] == "no_workers"  # admitted
    db.delete("full:jobs")


def test_every_key_expires(client, redis_server):
    assert post(client, encode(scene())).status_code == 200
    assert ttl_less_keys(redis_server.client()) == []


def test_a_request_that_gives_up_takes_its_job_back(ckpt, client, redis_server):
    """No worker reads prefix ``gone`` (its model description is there, as if one had just
    stopped): the request ends at its deadline (504) and its job leaves the stream."""
    import orjson

    from danlu.serve.launch import ServerProcess

    db = redis_server.client()
    db.set("gone:model", orjson.dumps(client.get("/v1/model").json()), ex=600)
    opts = ["--redis", redis_server.url, "--redis-prefix", "gone", "--timeout-s", "1"]
    with ServerProcess(ckpt, opts) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        r = post(c, encode(scene()))
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline"
        for _ in range(200):  # the XDEL runs just after the answer
            if db.xlen("gone:jobs") == 0:
                break
            time.sleep(0.05)
        assert db.xlen("gone:jobs") == 0
    db.delete("gone:model", "gone:jobs")


def test_more_concurrent_requests_than_pooled_connections(client, web):
    """48 requests at once (the short-command pool holds 32 connections): each waits for a
    connection, none is refused."""
    import asyncio

    data = encode(scene(seed=8))

    async def main() -> list[int]:
        async with httpx.AsyncClient(base_url=web.url, timeout=120,
                                     limits=httpx.Limits(max_connections=64)) as c:
            rs = await asyncio.gather(*(c.post("/v1/detect", content=data,
                                               headers={"content-type": "image/jpeg"})
                                        for _ in range(48)))
        return [r.status_code for r in rs]

    assert asyncio.run(main()) == [200] * 48


def test_the_web_side_drains_on_sigterm(ckpt, client, redis_server):
    """A second web process on the same stream: SIGTERM while its request waits on a worker
    (a sliced image, seconds of work): readiness 503 at once, new requests 503 ``draining``,
    the request in flight answered, exit 0."""
    import signal
    import threading

    from danlu.serve.launch import ServerProcess

    big = encode(np.tile(scene(seed=2, size=(128, 128)), (4, 4, 1)), "PNG")  # 512 x 512
    db = redis_server.client()
    with ServerProcess(ckpt, ["--redis", redis_server.url, "--drain-s", "300"]) as srv:
        results: list = []

        def go() -> None:
            results.append(httpx.post(srv.url + "/v1/detect", params={"slice": 64},
                                      content=big, headers={"content-type": "image/png"},
                                      timeout=300))

        t = threading.Thread(target=go, daemon=True)
        t.start()
        for _ in range(2000):  # until the worker holds the sliced job
            if db.xpending("danlu:jobs", "workers")["pending"] > 0:
                break
            time.sleep(0.01)
        srv.proc.send_signal(signal.SIGTERM)
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert wait_ready(c, 503)["status"] == "draining"
            r = post(c, encode(scene()))
            assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
        t.join(300)
        assert results[0].status_code == 200 and results[0].json()["tiles"] > 1
        assert srv.proc.wait(120) == 0
