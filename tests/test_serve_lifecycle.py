"""``danlu serve`` limits and life, for real (uvicorn processes on loopback): the token, CORS,
the bounded queue (503 + Retry-After), the deadline (504 naming the stage), a client that
goes away, draining on SIGTERM, several workers behind one port, and the CLI's errors.

A long request holds the model thread where a test needs one: a sliced prediction of a big
image with small tiles. Tests wait on the server's own metrics (in-flight count), never on
a clock."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from tests._data_fixtures import train_tiny_checkpoint  # noqa: E402
from tests._serve_fixtures import encode, metric, scene  # noqa: E402

from danlu.serve.launch import ServerProcess  # noqa: E402

JPEG = {"content-type": "image/jpeg"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("serve_life"))


@pytest.fixture(scope="module")
def big_png():
    """A 2048 x 2048 image: sliced at 64 px (1,600 tiles) it keeps the model thread busy
    for seconds."""
    return encode(np.tile(scene(seed=1, size=(128, 128)), (16, 16, 1)), "PNG")


def hold(url: str, big_png: bytes, results: list, headers: dict | None = None
         ) -> threading.Thread:
    """Start a long sliced request in a thread; its response lands in ``results``."""
    def go() -> None:
        r = httpx.post(url + "/v1/detect", params={"slice": 64, "score_threshold": 0.1},
                       content=big_png, headers={"content-type": "image/png", **(headers or {})},
                       timeout=600)  # as the servers' --timeout-s: load must not decide
        results.append(r)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def wait_metric(url: str, name: str, at_least: float, headers: dict | None = None,
                **labels: str) -> None:
    for _ in range(2000):
        if metric(httpx.get(url + "/metrics", headers=headers).text, name, **labels) >= at_least:
            return
        time.sleep(0.01)
    raise AssertionError(f"{name} never reached {at_least}")


def test_token_guards_every_route_but_health_and_the_page(ckpt):
    with ServerProcess(ckpt, ["--token", "s3cret", "--cors-origin", "http://app.example"]) as srv:
        u = srv.url
        assert httpx.get(u + "/healthz").status_code == 200
        assert httpx.get(u + "/").status_code == 200
        for path in ("/v1/model", "/metrics", "/readyz", "/docs", "/openapi.json"):
            r = httpx.get(u + path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", path
        r = httpx.post(u + "/v1/detect", content=encode(scene()), headers=JPEG)
        assert r.status_code == 401
        wrong = {"Authorization": "Bearer s3cres"}
        assert httpx.get(u + "/v1/model", headers=wrong).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert httpx.get(u + "/v1/model", headers=ok).status_code == 200
        r = httpx.post(u + "/v1/detect", content=encode(scene()), headers={**JPEG, **ok})
        assert r.status_code == 200
        r = httpx.get(u + "/healthz", headers={"Origin": "http://app.example"})
        assert r.headers.get("access-control-allow-origin") == "http://app.example"
        r = httpx.get(u + "/healthz", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        text = httpx.get(u + "/metrics", headers=ok).text
        assert metric(text, "danlu_rejected_total", reason="unauthorized") >= 7


def test_cors_is_off_by_default(ckpt):
    with ServerProcess(ckpt) as srv:
        r = httpx.get(srv.url + "/healthz", headers={"Origin": "http://app.example"})
        assert "access-control-allow-origin" not in r.headers


def _raw_request(url: str, body: bytes) -> socket.socket:
    """Send a whole /v1/detect request on a raw socket and leave it waiting."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return s


def test_full_queue_answers_503_and_a_gone_client_is_dropped(ckpt, big_png):
    # the long request must not meet the default 30 s deadline on a loaded CI machine
    with ServerProcess(ckpt, ["--max-queue", "2", "--timeout-s", "600"]) as srv:
        u = srv.url
        results: list = []
        t = hold(u, big_png, results)
        wait_metric(u, "danlu_model_busy", 1)  # the slicing holds the model
        waiting = _raw_request(u, encode(scene()))  # admitted, queued behind the slicing
        wait_metric(u, "danlu_in_flight", 2)
        r = httpx.post(u + "/v1/detect", content=encode(scene()), headers=JPEG)
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
        assert int(r.headers["retry-after"]) >= 1
        waiting.close()  # the client gives up while queued
        wait_metric(u, "danlu_rejected_total", 1, reason="client_closed")
        t.join(600)
        assert results and results[0].status_code == 200
        text = httpx.get(u + "/metrics").text
        assert metric(text, "danlu_batch_size_count") == 0  # the dropped request never ran
        assert metric(text, "danlu_rejected_total", reason="queue_full") == 1
        assert httpx.post(u + "/v1/detect", content=encode(scene()),
                          headers=JPEG).status_code == 200


def test_deadline_answers_504_with_the_stage(ckpt, big_png):
    with ServerProcess(ckpt, ["--timeout-s", "0.3"]) as srv:
        results: list = []
        t = hold(srv.url, big_png, results)  # itself past the deadline, in the model
        t.join(600)
        r = results[0]
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "deadline"
        assert r.json()["error"]["stage"] in ("decode", "infer")
        r = httpx.post(srv.url + "/v1/detect", content=encode(scene()), headers=JPEG)
        assert r.status_code in (200, 504)  # the server lives on


def test_sigterm_drains_then_exits_0(ckpt, big_png):
    srv = ServerProcess(ckpt, ["--drain-s", "600", "--timeout-s", "600"]).start()
    try:
        u = srv.url
        results: list = []
        t = hold(u, big_png, results)
        wait_metric(u, "danlu_model_busy", 1)
        srv.proc.send_signal(signal.SIGTERM)
        for _ in range(500):  # readiness turns 503 "at once": within a few polls
            r = httpx.get(u + "/readyz")
            if r.status_code == 503:
                break
            time.sleep(0.01)
        assert r.status_code == 503 and r.json()["status"] == "draining"
        r = httpx.post(u + "/v1/detect", content=encode(scene()), headers=JPEG)
        assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
        assert httpx.get(u + "/healthz").status_code == 200
        t.join(600)
        assert results[0].status_code == 200  # the request in flight finished
        assert srv.proc.wait(120) == 0
    finally:
        srv.stop()


def test_two_workers_share_the_port_and_the_metrics(ckpt):
    with ServerProcess(ckpt, ["--workers", "2"]) as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            for _ in range(12):
                assert c.post("/v1/detect", content=encode(scene()), headers=JPEG
                              ).status_code == 200
        # new connections, so either worker may answer: each sums every worker's files
        for _ in range(4):
            text = httpx.get(srv.url + "/metrics").text
            assert metric(text, "danlu_requests_total", route="/v1/detect", status="200") == 12
            assert metric(text, "danlu_batch_size_count") == 12
        assert srv.stop() == 0


def test_cli_bad_model_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "danlu", "serve", str(tmp_path / "nope.pt"),
                        "--port", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("\n") <= 4 and "error:" in r.stderr and "Traceback" not in r.stderr


def test_cli_busy_port_is_one_line_exit_2(ckpt):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "danlu", "serve", str(ckpt), "--port",
                            str(port)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot listen" in r.stderr and "Traceback" not in r.stderr


def test_cli_missing_extra_names_it(monkeypatch):
    import importlib.util

    from danlu.cli import serve as cli_serve
    from danlu.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fastapi" else real(name, *a))
    with pytest.raises(ConfigError) as e:
        cli_serve.require_serve_extra()
    assert "fastapi" in e.value.message and "danlu[serve]" in e.value.hint


def test_missing_backend_modules_are_named_with_their_extra(monkeypatch):
    import importlib.util

    from danlu.cli._common import require_modules
    from danlu.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("ray", "redis", "prometheus_client")
                        else real(name, *a))
    with pytest.raises(ConfigError) as e:
        require_modules("--ray", ["ray"])
    assert e.value.message == "--ray needs ray[serve], which is not installed"
    assert e.value.hint == "pip install 'danlu[ray]'"
    with pytest.raises(ConfigError) as e:
        require_modules("danlu worker", ["redis", "prometheus_client"])
    assert "redis, prometheus-client, which are not" in e.value.message
    assert e.value.hint == "pip install 'danlu[serve]'"
    require_modules("danlu serve", ["fastapi"])  # installed: nothing raised
