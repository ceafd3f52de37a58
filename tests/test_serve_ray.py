"""The Ray Serve backend (``danlu serve --ray``): through replicas on a local Ray instance, a
request gets what the in-process Engine answers (detections, errors, the model document),
concurrent requests ride in shared batches, two replicas both answer, an autoscaled
deployment adds a replica under load, and a killed replica is replaced without a request
going unanswered.

One local Ray instance (2 CPUs, no dashboard) serves the module; the tests that need no Ray
(the deployment settings, the lazy import, a replica's work, the web side's handling of what
comes back) run without it. Timeouts here are safety bounds only.
"""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
import time

import pytest
from tests._data_fixtures import train_tiny_checkpoint
from tests._serve_fixtures import encode, metric, png_claiming, rows, same, scene

from danlu.serve.config import ServeConfig
from danlu.serve.dispatch import ModelFailure
from danlu.serve.engine import Engine
from danlu.serve.metrics import Metrics
from danlu.serve.problems import RequestProblem
from danlu.serve.ray_backend import RayDispatcher
from danlu.serve.ray_replica import (
    APP_NAME,
    ProblemDoc,
    RayOptions,
    RemoteOutcome,
    ReplicaCore,
    deployment_options,
    replica_config,
)

NO_RAY = ("the Ray Serve backend needs Ray: pip install 'danlu[ray]' (ray[serve]); these "
          "tests run it on a local instance")
#: a bound on how long a test waits for Ray to start or replace a replica (not a timing check)
SAFETY_S = 300.0
BAD = {"empty": b"", "text": b"this is not an image", "truncated": None, "bomb": None}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("serve_ray"))


@pytest.fixture(scope="module")
def config(ckpt):
    # a long wait: concurrent requests surely share a batch, whatever the machine's load
    return ServeConfig(str(ckpt), device="cpu", score_threshold=0.05, max_batch=8,
                       max_wait_ms=100, drain_s=2)


@pytest.fixture(scope="module")
def engine(config):
    return Engine(config)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason=NO_RAY)
    serve = pytest.importorskip("ray.serve", reason=NO_RAY)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 2**20)  # "local": a new instance, whatever runs
    try:
        yield ray
    finally:
        serve.shutdown()
        ray.shutdown()


def _started(config: ServeConfig, options: RayOptions) -> RayDispatcher:
    d = RayDispatcher(config, Metrics(), options)
    asyncio.run(d.start())
    return d


@pytest.fixture(scope="module")
def dispatcher(ray_local, config):
    d = _started(config, RayOptions(replicas=2, replica_cpus=0.5))
    try:
        yield d
    finally:
        asyncio.run(d.stop())


def _images(n: int) -> list[bytes]:
    return [encode(scene(seed=s, size=(90 + 10 * (s % 4), 70))) for s in range(n)]


def _bad(name: str) -> bytes:
    if name == "truncated":
        return encode(scene(seed=1))[:300]
    return png_claiming(40000, 40000) if name == "bomb" else BAD[name]


def _submit_all(d: RayDispatcher, datas: list[bytes], opts) -> list[tuple]:
    """Each upload as the routes send it (header checked here, then submitted): ``(outcome,
    info, item)``."""
    async def go() -> list[tuple]:
        items = [d.front.prepare(x, opts) for x in datas]
        answers = await asyncio.gather(*(d.submit(it) for it in items))
        return [(out, info, it) for (out, info), it in zip(answers, items, strict=True)]

    return asyncio.run(go())


def _problem(fn) -> RequestProblem:
    with pytest.raises(RequestProblem) as e:
        fn()
    return e.value


class _Handle:
    """A stand-in deployment handle: ``detect.remote`` answers from ``answers`` in turn (an
    exception instance is raised)."""

    def __init__(self, answers: list) -> None:
        self.answers = answers
        self.detect = self

    def remote(self, data, options):
        async def answer():
            got = self.answers.pop(0)
            if isinstance(got, BaseException):
                raise got
            return got

        return answer()


# -- without Ray -----------------------------------------------------------------------------
def test_deployment_options_fixed_and_autoscaled():
    config = ServeConfig("m.pt", max_batch=8)
    fixed = deployment_options(config, RayOptions(replicas=3, replica_cpus=2))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 2}
    # every request the web side admits (--max-queue 64): past it Ray's router backs off
    assert fixed["max_ongoing_requests"] == 64
    small_queue = ServeConfig("m.pt", max_batch=8, max_queue=10)
    assert deployment_options(small_queue, RayOptions())["max_ongoing_requests"] == 16  # and
    # at least a running batch and a filling one
    auto = deployment_options(config, RayOptions(replicas=4, autoscale=True, replica_gpus=1))
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4,
                                          "target_ongoing_requests": 8.0}
    assert auto["ray_actor_options"]["num_gpus"] == 1


def test_replicas_get_no_token_and_an_absolute_model(ckpt, monkeypatch):
    monkeypatch.chdir(ckpt.parent)
    doc = replica_config(ServeConfig(ckpt.name, token="secret", workers=3))
    assert doc["token"] is None and doc["workers"] == 1
    assert doc["model"] == str(ckpt.resolve())


def test_importing_the_backend_does_not_import_ray_or_torch():
    code = ("import sys, danlu.serve.ray_backend; "
            "print([m for m in ('ray', 'torch') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_a_replica_without_ray_answers_refuses_and_isolates(config, engine):
    core = ReplicaCore(replica_config(config), threads=2)
    datas, opts = _images(3), engine.options()
    try:
        out = asyncio.run(core.detect(datas[0], opts))
        assert isinstance(out, RemoteOutcome) and out.batch.reason == "idle"
        local = engine.run_batch([engine.prepare(datas[0], opts)])[0]
        assert same(rows(out.detections), rows(local.detections), box_tol=0.02)
        bad = asyncio.run(core.detect(_bad("truncated"), opts))
        assert isinstance(bad, ProblemDoc)  # it crosses to the web side whole:
        again = pickle.loads(pickle.dumps(bad)).problem()
        assert again.body() == _problem(lambda: engine.prepare(_bad("truncated"), opts)).body()
        # the model raises on one image of a batch: only that one fails
        items = [engine.prepare(x, opts) for x in datas]
        run = core.engine.run_batch

        def picky(batch):
            if any(it is items[1] for it in batch):
                raise RuntimeError("this image breaks the model")
            return run(batch)

        core.engine.run_batch = picky
        got = asyncio.run(core.run_batch([(it, time.perf_counter()) for it in items]))
        assert isinstance(got[1], ModelFailure) and "breaks the model" in got[1].error
        assert all(isinstance(g, RemoteOutcome) for g in (got[0], got[2]))
    finally:
        core.engine.thread.shutdown()
        core.pool.shutdown()


def test_the_web_side_resends_lost_requests_and_maps_failures(config, engine):
    ActorDiedError = type("ActorDiedError", (Exception,), {})  # Ray's, by name
    d = RayDispatcher(config, Metrics(), RayOptions(retries=2))
    d.front.update(engine.describe())
    opts = d.front.options()
    ok = RemoteOutcome(engine.run_batch([engine.prepare(_images(1)[0], opts)])[0].detections,
                       0.01, 0.0, width=90, height=70, batch_id="r/1")
    d.handle = _Handle([ActorDiedError("gone"), ActorDiedError("gone"), ok])
    assert asyncio.run(d.call(b"jpeg", opts)) is ok and d.resent == 2
    d.handle = _Handle([ActorDiedError("gone")] * 3)
    p = _problem(lambda: asyncio.run(d.call(b"jpeg", opts)))
    assert (p.status, p.code) == (503, "backend_unavailable")
    d.handle = _Handle([ModelFailure(RuntimeError("boom"))])
    p = _problem(lambda: asyncio.run(d.call(b"jpeg", opts)))
    assert (p.status, p.code) == (500, "model_error")
    d.handle = _Handle([ValueError("a bug")])  # anything else is not the request's to hide
    with pytest.raises(ValueError):
        asyncio.run(d.call(b"jpeg", opts))


# -- through Ray -----------------------------------------------------------------------------
def test_danlu_serve_ray_over_http(ckpt, engine):
    """The whole path: ``danlu serve --ray`` (its own local Ray; before this module's starts)."""
    pytest.importorskip("ray", reason=NO_RAY)
    httpx = pytest.importorskip("httpx")
    from danlu.serve.launch import ServerProcess

    data = _images(1)[0]
    args = ["--ray", "--replicas", "1", "--replica-cpus", "1", "--device", "cpu",
            "--score-threshold", "0.05", "--max-batch", "8", "--max-wait-ms", "100"]
    with ServerProcess(ckpt, args, ready_timeout_s=SAFETY_S) as srv:
        r = httpx.post(srv.url + "/v1/detect", content=data, timeout=SAFETY_S,
                       headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        got = [(d["score"], d["label"], *d["box"]) for d in r.json()["detections"]]
        local = engine.run_batch([engine.prepare(data, engine.options())])[0]
        assert same(got, rows(local.detections))
        bad = httpx.post(srv.url + "/v1/detect", content=_bad("truncated"), timeout=SAFETY_S,
                         headers={"content-type": "image/jpeg"})
        expected = _problem(lambda: engine.prepare(_bad("truncated"), engine.options()))
        assert bad.status_code == expected.status and bad.json() == expected.body()
        model = httpx.get(srv.url + "/v1/model", timeout=SAFETY_S).json()
        assert model["class_names"] == engine.class_names and model["dispatch"] == "ray"
        assert httpx.get(srv.url + "/readyz", timeout=SAFETY_S).status_code == 200


def test_same_answer_as_the_local_engine(dispatcher, engine):
    from danlu import Predictor
    from danlu.infer.images import read_image

    found = 0
    for i, data in enumerate(_images(4)):
        ask = {"score_threshold": 0.05 + 0.02 * (i % 2), "max_detections": None if i < 2 else 3}
        opts = dispatcher.front.options(**ask)
        assert opts == engine.options(**ask)
        (out, info, item), = _submit_all(dispatcher, [data], opts)
        local_item = engine.prepare(data, opts)
        local = engine.run_batch([local_item])[0]
        assert same(rows(out.detections), rows(local.detections), box_tol=0.02)
        assert (item.width, item.height) == (local_item.width, local_item.height)
        assert info.size >= 1 and item.decode_s > 0
        if opts.max_detections is None:
            alone = Predictor(engine.config.model, device="cpu",
                              score_threshold=opts.score_threshold).predict(read_image(data))
            assert same(rows(out.detections), rows(alone), box_tol=0.02)
        found += len(out.detections)
    assert found > 0  # the comparison compared boxes


def test_concurrent_submits_are_batched(dispatcher, engine):
    datas, opts = _images(16), engine.options()
    before = metric(dispatcher.metrics.render()[0].decode(), "danlu_batch_size_sum")
    answers = _submit_all(dispatcher, datas, opts)
    sizes = [info.size for _, info, _ in answers]
    assert max(sizes) > 1 and all(1 <= s <= 8 for s in sizes)
    after = metric(dispatcher.metrics.render()[0].decode(), "danlu_batch_size_sum")
    assert after - before == 16  # each batch counted once
    for data, (out, _, _) in zip(datas, answers, strict=True):
        local = engine.run_batch([engine.prepare(data, opts)])[0]
        assert same(rows(out.detections), rows(local.detections))


def test_cancelled_submits_leave_the_rest_answered(dispatcher, engine):
    opts = engine.options()

    async def go() -> list:
        items = [dispatcher.front.prepare(x, opts) for x in _images(8)]
        tasks = [asyncio.ensure_future(dispatcher.submit(it)) for it in items]
        await asyncio.sleep(0.01)
        for t in tasks[::2]:  # gone while queued or decoding (a client that went away)
            t.cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    got = asyncio.run(go())
    assert all(isinstance(g, tuple) for g in got[1::2])
    assert all(isinstance(g, (tuple, asyncio.CancelledError)) for g in got[::2])
    (out, _, _), = _submit_all(dispatcher, _images(1), opts)  # and it keeps answering
    assert isinstance(out, RemoteOutcome)


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_image_gets_the_local_error(dispatcher, engine, name):
    data, opts = _bad(name), engine.options()
    local = _problem(lambda: engine.prepare(data, opts))
    # as the routes send it (the header checked here), and as a replica finds it
    routed = _problem(lambda: _submit_all(dispatcher, [data], opts))
    on_replica = _problem(lambda: asyncio.run(dispatcher.call(data, opts)))
    assert routed.body() == on_replica.body() == local.body()
    assert routed.headers == on_replica.headers == local.headers


def test_a_sliced_request_is_the_local_one(dispatcher, engine):
    data = encode(scene(seed=7, size=(200, 150)))
    opts = engine.options(slice_size="64", overlap="0.25")
    (out, info, _), = _submit_all(dispatcher, [data], opts)
    local = engine.run_sliced(engine.prepare(data, opts))
    assert info.reason == "sliced" and out.extra == local.extra and out.extra["tiles"] > 1
    assert same(rows(out.detections), rows(local.detections), box_tol=0.02)


def test_describe_readiness_and_metrics(dispatcher, engine):
    assert asyncio.run(dispatcher.describe()) == {**engine.describe(), "dispatch": "ray"}
    assert dispatcher.front.class_names == engine.class_names
    assert dispatcher.front.name == engine.name
    doc, ready = asyncio.run(dispatcher.readiness())
    assert ready and doc == {"status": "ready", "backend": "ray", "replicas": 2}
    text = asyncio.run(dispatcher.metrics_text()).decode()
    assert metric(text, "danlu_ray_replicas") == 2


def test_two_replicas_both_serve(dispatcher, engine):
    assert dispatcher.alive() == 2
    seen: set[str] = set()
    datas = _images(8)
    for _ in range(50):  # routing is random: bursts until both answered (a safety bound)
        seen |= {out.replica for out, _, _ in _submit_all(dispatcher, datas, engine.options())}
        if len(seen) == 2:
            break
    assert len(seen) == 2


def test_a_second_web_side_attaches_to_the_deployed_application(dispatcher, config, engine):
    """``--ray-attach``: a second web side uses the replicas deployed by another (as a
    KubeRay RayService deploys them), and leaves them running when it stops."""
    from dataclasses import replace

    from ray import serve

    from danlu.errors import ServeError

    attached = RayDispatcher(replace(config, ray=True, ray_app=APP_NAME), Metrics())
    assert attached.options.deploy is False and attached.options.app_name == APP_NAME
    asyncio.run(attached.start())
    try:
        data, opts = _images(1)[0], engine.options()
        (out, _, _), = _submit_all(attached, [data], opts)
        local = engine.run_batch([engine.prepare(data, opts)])[0]
        assert same(rows(out.detections), rows(local.detections), box_tol=0.02)
        assert attached.alive() == 2
    finally:
        asyncio.run(attached.stop())
    assert APP_NAME in serve.status().applications  # not deleted by the one that attached
    (out, _, _), = _submit_all(dispatcher, [data], opts)  # the deployer's still answers
    assert out.detections is not None
    missing = RayDispatcher(replace(config, ray=True, ray_app="no-such-app"), Metrics())
    with pytest.raises(ServeError, match="cannot attach.*no-such-app"):
        asyncio.run(missing.start())


@pytest.mark.filterwarnings("ignore:The `metrics_interval_s`:DeprecationWarning")
def test_autoscaling_adds_a_replica_under_load(ray_local, config, engine):
    from ray import serve

    # its own application beside the module's; scaling up at once, on 2 ongoing requests
    options = RayOptions(replicas=2, autoscale=True, target_ongoing=2, replica_cpus=0.5,
                         app_name="danlu-autoscaled",
                         autoscaling={"upscale_delay_s": 0, "metrics_interval_s": 0.5,
                                      "look_back_period_s": 1})
    d = _started(config, options)
    try:
        assert d.alive() == 1
        datas = _images(16)
        deadline = time.monotonic() + SAFETY_S  # a safety bound, not a timing check
        while d.alive() < 2 and time.monotonic() < deadline:
            _submit_all(d, datas, engine.options())  # 16 ongoing on one replica
        assert d.alive() == 2
    finally:
        asyncio.run(d.stop())
    assert "danlu-autoscaled" not in serve.status().applications


def test_a_killed_replica_is_replaced(dispatcher, engine, ray_local):
    datas, opts = _images(4), engine.options()
    before = set(dispatcher.replica_names())
    assert len(before) == 2
    victim = sorted(before)[0]

    async def burst_with_a_kill() -> list[tuple]:
        # killed while a burst is in flight: what it held is sent to the other replica
        items = [dispatcher.front.prepare(x, opts) for x in datas * 4]
        tasks = [asyncio.ensure_future(dispatcher.submit(it)) for it in items]
        await asyncio.sleep(0.05)
        ray_local.kill(ray_local.get_actor(victim, namespace="serve"), no_restart=True)
        return await asyncio.gather(*tasks)

    answers = asyncio.run(burst_with_a_kill())
    assert len(answers) == 16 and all(isinstance(o, RemoteOutcome) for o, _ in answers)
    for data in datas * 2:  # each one answered, by the replica left or the new one
        (out, _, _), = _submit_all(dispatcher, [data], opts)
        assert out.replica != victim
    deadline = time.monotonic() + SAFETY_S  # a safety bound, not a timing check
    while time.monotonic() < deadline and not set(dispatcher.replica_names()) - before:
        time.sleep(0.5)
    fresh = set(dispatcher.replica_names()) - before
    assert victim not in dispatcher.replica_names() and len(fresh) == 1
    seen: set[str] = set()
    while time.monotonic() < deadline and not seen & fresh:  # until the new one answers
        seen |= {out.replica for out, _, _ in _submit_all(dispatcher, datas * 2, opts)}
    assert seen & fresh and victim not in seen
    assert dispatcher.alive() == 2
