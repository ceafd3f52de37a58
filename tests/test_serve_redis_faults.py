"""``danlu serve --redis`` when things break, for real: workers SIGKILLed in the middle of a
batch, Redis restarted under load, a rolling restart, a poison image, jobs taken over from a
dead worker and dead-lettered after too many deliveries.

Each test counts what the clients saw (accepted, answered, lost) and what the workers wrote
(``replies`` in ``P:stats``: one per answered job, thanks to the done marker; ``duplicates``:
answers suppressed because a job was done twice), and prints one line with the counts. Counts
are bounded; the only timeouts are safety bounds.
"""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from tests._data_fixtures import train_tiny_checkpoint  # noqa: E402
from tests._redis_fixtures import redis_server_or_skip  # noqa: E402
from tests._serve_fixtures import encode, same, scene  # noqa: E402

THR = 0.05
GROUP = "workers"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("serve_redis_faults"))


@pytest.fixture(scope="module")
def images():
    return [encode(scene(seed=s)) for s in (21, 22, 23, 24)]


@pytest.fixture(scope="module")
def expected(ckpt, images):
    from danlu import Predictor
    from danlu.infer.images import read_image

    oracle = Predictor(ckpt, device="cpu", score_threshold=THR)
    return [rows(oracle.predict(read_image(d), score_threshold=THR)) for d in images]


@pytest.fixture
def redis_server():
    server = redis_server_or_skip()
    yield server
    server.close()


def rows(det) -> list[tuple]:
    return sorted((float(s), int(lab), *b.tolist())
                  for b, lab, s in zip(det.xyxy, det.labels, det.scores, strict=True))


def got(doc: dict) -> list[tuple]:
    return sorted((d["score"], d["label"], *d["box"]) for d in doc["detections"])


def web(ckpt, url: str, prefix: str, *extra: str):
    from danlu.serve.launch import ServerProcess

    return ServerProcess(ckpt, ["--redis", url, "--redis-prefix", prefix, *extra])


def worker(ckpt, url: str, prefix: str, name: str, *extra: str, faults: str = ""):
    from danlu.serve.launch import WorkerProcess

    env = {"DANLU_WORKER_FAULTS": faults} if faults else None
    return WorkerProcess(ckpt, url, ["--redis-prefix", prefix, "--name", name, *extra], env=env)


def until(check, what: str, polls: int = 2400, every: float = 0.05):
    """Poll ``check()`` until it is truthy (a bounded count of polls); its value."""
    for _ in range(polls):
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"never happened: {what}")


def held_by(db, prefix: str, name: str) -> int:
    """How many jobs consumer ``name`` holds (delivered, not acked)."""
    try:
        return len(db.xpending_range(f"{prefix}:jobs", GROUP, "-", "+", 1000,
                                     consumername=name))
    except Exception:  # noqa: BLE001 - no group yet
        return 0


def stats(db, prefix: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in db.hgetall(f"{prefix}:stats").items()}


class Load:
    """``total`` requests from ``clients`` threads (images in turn), each recorded as
    ``(image index, status, JSON)``; each client pauses ``pause_s`` between requests (so a
    worker starting meanwhile gets some CPU); stops early when :attr:`stop` is set."""

    def __init__(self, url: str, images: list[bytes], total: int, clients: int,
                 timeout_s: float = 120.0, pause_s: float = 0.0) -> None:
        self.url, self.images, self.total, self.pause_s = url, images, total, pause_s
        self.results: list[tuple[int, int | str, dict]] = []
        self.stop = threading.Event()
        self._next = iter(range(total))
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(clients)
        self._futures = [self._pool.submit(self._client, timeout_s) for _ in range(clients)]

    def _client(self, timeout_s: float) -> None:
        with httpx.Client(base_url=self.url, timeout=timeout_s) as c:
            while not self.stop.is_set():
                with self._lock:
                    i = next(self._next, None)
                if i is None:
                    return
                k = i % len(self.images)
                try:
                    r = c.post("/v1/detect", params={"score_threshold": THR},
                               content=self.images[k], headers={"content-type": "image/jpeg"})
                    out = (k, r.status_code, r.json())
                except Exception as e:  # noqa: BLE001 - a lost request: counted
                    out = (k, f"{type(e).__name__}", {})
                with self._lock:
                    self.results.append(out)
                time.sleep(self.pause_s)

    def answered(self) -> int:
        with self._lock:
            return sum(1 for _, s, _ in self.results if s == 200)

    def join(self) -> list[tuple[int, int | str, dict]]:
        for f in self._futures:
            f.result(timeout=600)
        self._pool.shutdown()
        return self.results


def report(name: str, results, db, prefix: str) -> dict[str, int]:
    """The counts of one run (printed: ``pytest -s`` shows them)."""
    s = stats(db, prefix)
    ok = sum(1 for _, status, _ in results if status == 200)
    accepted = sum(1 for _, status, _ in results if status != 503)
    counts = {"sent": len(results), "accepted": accepted, "answered": ok,
              "lost": accepted - ok, "replies written": s.get("replies", 0),
              "duplicates suppressed": s.get("duplicates", 0),
              "reclaimed": s.get("reclaimed", 0), "dead-lettered": s.get("dead_lettered", 0),
              "unread replies": sum(1 for _ in db.scan_iter(f"{prefix}:reply:*"))}
    print(f"\n{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


def test_sigkill_in_the_middle_of_a_batch_loses_nothing(ckpt, images, expected,
                                                        redis_server):
    db, url, p = redis_server.client(), redis_server.url, "kill"
    fast = ("--reclaim-after-s", "2", "--max-batch", "4")
    with web(ckpt, url, p, "--timeout-s", "120") as srv, \
            worker(ckpt, url, p, "a", *fast, faults="delay_s=0.05") as a, \
            worker(ckpt, url, p, "b", *fast, faults="delay_s=0.05"):
        load = Load(srv.url, images, total=160, clients=8)
        until(lambda: load.answered() >= 30 and held_by(db, p, "a") > 0,
              "worker a holds jobs under load")
        a.kill()  # SIGKILL: its batch in hand is neither finished nor handed back
        results = load.join()
        after = stats(db, p)
    c = report("SIGKILL under load", results, db, p)
    assert c["accepted"] == 160 and c["lost"] == 0, [r for r in results if r[1] != 200][:3]
    assert c["replies written"] == 160  # one reply per job: none answered twice
    assert c["unread replies"] == 0 and after.get("reclaimed", 0) >= 1
    for k, _, doc in results:
        assert same(got(doc), expected[k])
    assert db.xlen(f"{p}:jobs") == 0


def test_redis_restart_under_load_is_503_then_recovers(ckpt, images, expected, redis_server):
    db, url, p = redis_server.client(), redis_server.url, "restart"
    with web(ckpt, url, p) as srv, worker(ckpt, url, p, "r") as w:
        load = Load(srv.url, images, total=2000, clients=4)
        until(lambda: load.answered() >= 20, "answers before the restart")
        redis_server.restart()  # the same port, empty: every job in it is gone
        restarted_at = len(load.results)

        def answered_since() -> int:
            return sum(1 for _, status, _ in load.results[restarted_at:] if status == 200)

        until(lambda: answered_since() >= 20, "answers after the restart")
        load.stop.set()
        results = load.join()
        assert w.proc.poll() is None and srv.proc.poll() is None  # nobody died
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert until(lambda: c.get("/readyz").status_code == 200, "ready again")
    refused = [doc for _, s, doc in results if s == 503]
    other = [(s, doc) for _, s, doc in results if s not in (200, 503)]
    print(f"\nRedis restart under load: sent {len(results)}, answered "
          f"{len(results) - len(refused) - len(other)}, 503 {len(refused)}, other {len(other)}")
    assert refused, "no request was in flight or arriving while Redis restarted"
    assert other == []
    for doc in refused:
        assert doc["error"]["code"] == "backend_unavailable", doc
        assert "Redis" in doc["error"]["message"]
    for k, s, doc in results:
        if s == 200:
            assert same(got(doc), expected[k])
    assert db.ping()


def test_rolling_restart_loses_nothing(ckpt, images, expected, redis_server):
    db, url, p = redis_server.client(), redis_server.url, "roll"
    opts = ("--max-batch", "4")
    with web(ckpt, url, p, "--timeout-s", "120") as srv:
        old = [worker(ckpt, url, p, n, *opts, faults="delay_s=0.02").start() for n in "ab"]
        new = []
        try:
            load = Load(srv.url, images, total=200, clients=4, pause_s=0.02)
            until(lambda: load.answered() >= 20, "answers before the restart")
            for i, w in enumerate(old):
                new.append(worker(ckpt, url, p, f"{w.name}2", *opts,
                                  faults="delay_s=0.02").start())
                until(lambda w=w: held_by(db, p, w.name) > 0 or load.stop.is_set()
                      or len(load.results) >= load.total, f"{w.name} holds jobs")
                assert w.stop() == 0, "".join(w.lines[-10:])  # SIGTERM: finish, then exit 0
                assert held_by(db, p, w.name) == 0
                until(lambda i=i: load.answered() >= 20 * (i + 2) or len(load.results) >= 200,
                      "answers after a restart")
            results = load.join()
        finally:
            for w in old + new:
                w.stop()
    c = report("rolling restart", results, db, p)
    assert c["accepted"] == 200 and c["lost"] == 0
    assert c["replies written"] == 200 and c["unread replies"] == 0
    for k, _, doc in results:
        assert same(got(doc), expected[k])


def test_a_poison_image_is_dead_lettered_and_the_stream_flows(ckpt, images, expected,
                                                              redis_server):
    from PIL import Image

    db, url, p = redis_server.client(), redis_server.url, "poison"
    buf = io.BytesIO()
    Image.fromarray(scene(seed=30)).resize((70, 50)).save(buf, "JPEG")
    poison = buf.getvalue()
    with web(ckpt, url, p) as srv, worker(ckpt, url, p, "x", faults="poison=70x50"), \
            httpx.Client(base_url=srv.url, timeout=60) as c:
        until(lambda: c.get("/readyz").status_code == 200, "ready")
        files = [("images", (f"{i}.jpg", d, "image/jpeg")) for i, d in enumerate(images)]
        files.insert(2, ("images", ("poison.jpg", poison, "image/jpeg")))
        r = c.post("/v1/detect/batch", params={"score_threshold": THR}, files=files)
        assert r.status_code == 200
        doc = r.json()
        assert doc["failed"] == 1
        bad = doc["results"].pop(2)
        assert bad["error"]["status"] == 500 and bad["error"]["code"] == "model_error"
        assert "poison" in bad["error"]["message"]
        for k, res in enumerate(doc["results"]):  # its batch mates: answered as usual
            assert same(got(res), expected[k])
        for k, data in enumerate(images):  # the stream keeps flowing
            r = c.post("/v1/detect", params={"score_threshold": THR}, content=data,
                       headers={"content-type": "image/jpeg"})
            assert r.status_code == 200 and same(got(r.json()), expected[k])
    (entry,) = db.xrange(f"{p}:dead")
    fields = entry[1]
    assert b"poison" in fields[b"error"] and fields[b"image"] == poison
    s = stats(db, p)
    assert s["dead_lettered"] == 1 and s["replies"] == 5 + len(images)
    assert db.xlen(f"{p}:jobs") == 0


def test_a_dead_workers_job_is_reclaimed_then_dead_lettered(ckpt, images, expected,
                                                           redis_server):
    """X and Y are held by workers that die (a model call that never ends, then SIGKILL):
    X three times, Y twice; a worker with --max-deliveries 2 answers Y (reclaimed) and
    dead-letters X (answered 500 max_deliveries)."""
    db, url, p = redis_server.client(), redis_server.url, "reclaim"
    hang = "delay_s=3600"
    with web(ckpt, url, p, "--timeout-s", "300") as srv:
        pool = ThreadPoolExecutor(2)

        def send(data: bytes) -> httpx.Response:
            with httpx.Client(base_url=srv.url, timeout=300) as c:
                return c.post("/v1/detect", params={"score_threshold": THR}, content=data,
                              headers={"content-type": "image/jpeg"})

        with worker(ckpt, url, p, "a1", "--reclaim-after-s", "1", faults=hang) as a1:
            x = pool.submit(send, images[0])
            until(lambda: held_by(db, p, "a1") == 1, "a1 holds X")
            a1.kill()
        with worker(ckpt, url, p, "a2", "--reclaim-after-s", "1", faults=hang) as a2:
            y = pool.submit(send, images[1])
            until(lambda: held_by(db, p, "a2") == 2, "a2 holds X (reclaimed) and Y")
            a2.kill()
        with worker(ckpt, url, p, "b", "--reclaim-after-s", "1", "--max-deliveries", "2"):
            rx, ry = x.result(timeout=600), y.result(timeout=600)
        pool.shutdown()
    assert ry.status_code == 200, ry.text
    assert ry.json()["worker"] == "b" and same(got(ry.json()), expected[1])
    assert rx.status_code == 500, rx.text
    assert rx.json()["error"]["code"] == "max_deliveries"
    (entry,) = db.xrange(f"{p}:dead")
    assert entry[1][b"deliveries"] == b"3" and entry[1][b"image"] == images[0]
    s = stats(db, p)
    print(f"\nreclaim: {s}")
    assert s["reclaimed"] == 3 and s["dead_lettered"] == 1 and s["replies"] == 2
    assert s.get("duplicates", 0) == 0 and db.xlen(f"{p}:jobs") == 0
