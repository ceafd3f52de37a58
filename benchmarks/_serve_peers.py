"""The servers of ``danlu bench serve`` (see benchmarks/serve.py), each one started as child
processes on a free loopback port and stopped at the end whatever happens.

* **Ours** (:func:`ours_server`): ``danlu serve CKPT`` through
  :class:`danlu.serve.launch.ServerProcess`.
* **LitServe** (:func:`litserve_server`): a ``litserve.LitAPI`` (:func:`__getattr__` builds
  ``DanluLitAPI`` on first use, so this module imports without litserve) whose ``setup``
  builds ``danlu.Predictor(ckpt, device="cpu", score_threshold=...)``; ``decode_request``
  reads the multipart file field ``image`` (LitServe 0.2 hands a ``Request``-typed API the
  parsed form: a starlette ``FormData`` whose ``UploadFile`` it keeps in memory) and decodes
  it with ``danlu.infer.images.read_image`` (our server's decoder); ``batch`` keeps the
  decoded arrays as one list; ``predict`` runs them through ``Predictor.predict_arrays`` as one
  batch; ``unbatch`` / ``encode_response`` give the same JSON as ours (``width``, ``height``,
  ``count``, ``detections`` [``box``, ``label``, ``class_name``, ``score``], ``batch_size``).
  Served by ``LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)``,
  ``run(host="127.0.0.1", port=...)``: its default one API-server process (uvicorn) in front
  of one inference worker process, at ``POST /predict``.
* **Flask + Redis** (:func:`flask_redis_server`), the poll-based design written here from its
  description: a ``redis-server`` (``--save "" --appendonly no``); a Flask app on werkzeug's
  threaded server whose ``POST /v1/detect`` reads the same multipart upload, base64-encodes
  it, ``RPUSH``-es ``{"id", "image"}`` JSON onto a Redis list, then polls ``GET`` of its result
  key every 0.25 s (the description has no timeout: here a 60 s cap answers 504 so a run
  cannot hang); a model process that every 0.25 s takes ``LRANGE 0 31`` + ``LTRIM 32 -1``
  (one ``MULTI``), decodes each image, runs the same Predictor on them as one batch and
  ``SET``-s each result (the same JSON as ours).

Run as a script (``python -c 'from benchmarks._serve_peers import main; main()' ROLE ...``)
for the child processes: ``litserve``, ``flask-web``, ``redis-worker``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: the poll-based design's constants (its description)
POLL_S = 0.25
REDIS_BATCH = 32
QUEUE_KEY = "danlu:images"
RESULT_KEY = "danlu:result:"
READY_KEY = "danlu:worker-ready"
#: the benchmark's cap on the baseline's result polling (the design itself has none)
FLASK_CAP_S = 60.0


class PeerUnavailable(RuntimeError):
    """A peer cannot run here (a missing program or package); the message says why."""


# -- the shared pieces -----------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def detections_json(det: Any, class_names: list[str], width: int, height: int,
                    batch_size: int) -> dict[str, Any]:
    """The 200 body of ``/v1/detect`` for ``det``, as the peers send it: the detections as
    danlu serve writes them (its own function), so every server answers the same JSON."""
    from danlu.serve.engine import detections_json as api_detections

    dets = api_detections(det, class_names)
    return {"width": int(width), "height": int(height), "count": len(dets),
            "detections": dets, "batch_size": int(batch_size)}


def _child_cmd(*args: str) -> list[str]:
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            "from benchmarks._serve_peers import main; main()")
    return [sys.executable, "-c", code, *args]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"),
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def start(cmd: list[str], log: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so :func:`stop` reaches its children too), output
    to ``log`` (or discarded)."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with proc
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=_child_env(),
                                start_new_session=True)
    finally:
        if log:
            out.close()


def stop(proc: subprocess.Popen | None, grace_s: float = 10.0) -> None:
    """SIGTERM to the process group of ``proc``, SIGKILL after ``grace_s``."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # the group's other members (LitServe's workers) may outlive the leader briefly
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _tail(log: Path | None, n: int = 15) -> str:
    if log is None or not log.is_file():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def _wait(url: str, proc: subprocess.Popen, timeout_s: float, log: Path | None) -> None:
    from benchmarks._serve_load import wait_ready

    try:
        wait_ready(url, timeout_s, proc)
    except RuntimeError as e:
        raise RuntimeError(f"{e}\n{_tail(log)}") from None


def _log_path(name: str) -> Path:
    """Where a child's output goes (removed after a clean run, kept after a failure)."""
    d = Path(os.environ.get("TMPDIR", "/tmp")) / "danlu-bench-serve"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{name}-{os.getpid()}.log"


# -- ours ------------------------------------------------------------------------------------
@contextlib.contextmanager
def ours_server(ckpt: Path, args: list[str]) -> Iterator[str]:
    """``danlu serve ckpt ARGS`` on a free port; yields its base URL."""
    from danlu.serve.launch import ServerProcess

    with ServerProcess(str(ckpt), list(args)) as srv:
        yield srv.url.rstrip("/")


# -- LitServe --------------------------------------------------------------------------------
_LITAPI: list[type] = []


def _litapi_class() -> type:
    if _LITAPI:
        return _LITAPI[0]
    import litserve as ls

    class DanluLitAPI(ls.LitAPI):
        """danlu's Predictor behind LitServe's batching (module doc)."""

        def __init__(self, ckpt: str, score: float, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.ckpt, self.score = ckpt, float(score)

        def setup(self, device: str) -> None:
            import numpy as np

            import danlu

            self.predictor = danlu.Predictor(self.ckpt, device="cpu",
                                             score_threshold=self.score)
            self.names = list(self.predictor.class_names)
            list(self.predictor.predict_arrays([np.zeros((256, 256, 3), np.uint8)] * 2))

        # unannotated: LitServe passes the parsed form to a `Request`-typed (or untyped) API
        def decode_request(self, request):  # noqa: ANN001, ANN202
            from danlu.infer.images import read_image

            up = request["image"]
            data = up.file.read() if hasattr(up, "file") else bytes(up)
            return read_image(data)

        def batch(self, inputs: list[Any]) -> list[Any]:
            return list(inputs)

        def predict(self, x: list[Any]) -> list[dict[str, Any]]:
            dets = list(self.predictor.predict_arrays(x, batch_size=len(x)))
            return [detections_json(d, self.names, a.shape[1], a.shape[0], len(x))
                    for d, a in zip(dets, x, strict=True)]

        def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return list(output)

        def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
            return output

    DanluLitAPI.__module__ = __name__
    DanluLitAPI.__qualname__ = "DanluLitAPI"
    _LITAPI.append(DanluLitAPI)
    return DanluLitAPI


def __getattr__(name: str) -> Any:
    # pickle finds the LitAPI class (LitServe spawns its worker) by this module's attribute
    if name == "DanluLitAPI":
        return _litapi_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _run_litserve(ckpt: str, port: int, max_batch: int, batch_timeout: float,
                  score: float) -> None:
    import litserve as ls

    api = _litapi_class()(ckpt, score, max_batch_size=max_batch, batch_timeout=batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


def litserve_version() -> str:
    from importlib.metadata import version

    return version("litserve")


@contextlib.contextmanager
def litserve_server(ckpt: Path, max_batch: int, batch_timeout: float, score: float,
                    timeout_s: float = 180.0) -> Iterator[str]:
    """LitServe serving the Predictor (module doc); yields the ``/predict`` URL."""
    try:
        import litserve  # noqa: F401
    except ImportError as e:
        raise PeerUnavailable(f"litserve is not installed ({e})") from None
    port = free_port()
    log = _log_path(f"litserve-{max_batch}")
    proc = start(_child_cmd("litserve", str(ckpt), str(port), str(max_batch),
                            repr(float(batch_timeout)), repr(float(score))), log)
    try:
        _wait(f"http://127.0.0.1:{port}/health", proc, timeout_s, log)
        yield f"http://127.0.0.1:{port}/predict"
    finally:
        stop(proc)
    log.unlink(missing_ok=True)  # kept when something failed


# -- Flask + Redis ---------------------------------------------------------------------------
def _redis(port: int) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)


def _flask_app(redis_port: int, cap_s: float) -> Any:
    from flask import Flask, Response, request

    app = Flask("danlu-bench-flask-redis")
    db = _redis(redis_port)

    @app.get("/ready")
    def ready() -> Any:
        ok = bool(db.exists(READY_KEY))
        return Response("ready" if ok else "loading", status=200 if ok else 503)

    @app.post("/v1/detect")
    def detect() -> Any:
        up = request.files.get("image")
        if up is None:
            return Response('{"error": "no image field"}', 400, mimetype="application/json")
        job_id = uuid.uuid4().hex
        db.rpush(QUEUE_KEY, json.dumps({"id": job_id,
                                        "image": base64.b64encode(up.read()).decode()}))
        key = RESULT_KEY + job_id
        t_end = time.monotonic() + cap_s
        while time.monotonic() < t_end:
            out = db.get(key)
            if out is not None:
                db.delete(key)
                status = 400 if out.startswith(b'{"error"') else 200
                return Response(out, status, mimetype="application/json")
            time.sleep(POLL_S)
        return Response('{"error": "no result within the cap"}', 504,
                        mimetype="application/json")

    return app


def _run_flask(port: int, redis_port: int, cap_s: float) -> None:
    import logging

    from werkzeug.serving import run_simple

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    run_simple("127.0.0.1", port, _flask_app(redis_port, cap_s), threaded=True)


def _run_redis_worker(redis_port: int, ckpt: str, score: float) -> None:
    import numpy as np

    import danlu
    from danlu.infer.images import read_image

    db = _redis(redis_port)
    predictor = danlu.Predictor(ckpt, device="cpu", score_threshold=score)
    names = list(predictor.class_names)
    list(predictor.predict_arrays([np.zeros((256, 256, 3), np.uint8)] * 2))
    db.set(READY_KEY, "1")
    while True:
        with db.pipeline(transaction=True) as p:
            p.lrange(QUEUE_KEY, 0, REDIS_BATCH - 1)
            p.ltrim(QUEUE_KEY, REDIS_BATCH, -1)
            items, _ = p.execute()
        if items:
            jobs, arrays, results = [], [], {}
            for raw in items:
                job = json.loads(raw)
                try:
                    arrays.append(read_image(base64.b64decode(job["image"])))
                    jobs.append(job["id"])
                except Exception as e:  # noqa: BLE001 - the answer carries it
                    results[job["id"]] = json.dumps({"error": str(e)})
            if arrays:
                dets = predictor.predict_arrays(arrays, batch_size=len(arrays))
                for job_id, det, a in zip(jobs, dets, arrays, strict=True):
                    results[job_id] = json.dumps(detections_json(
                        det, names, a.shape[1], a.shape[0], len(arrays)))
            with db.pipeline(transaction=False) as p:
                for job_id, body in results.items():
                    p.set(RESULT_KEY + job_id, body)
                p.execute()
        time.sleep(POLL_S)


def redis_server_path() -> str | None:
    """``redis-server`` on PATH (None when missing)."""
    return shutil.which("redis-server")


def start_redis(log: Path | None = None) -> tuple[subprocess.Popen, int]:
    """A throwaway ``redis-server`` (no persistence) on a free loopback port: ``(process,
    port)``; :class:`PeerUnavailable` where ``redis-server`` is missing. Stop it with
    :func:`stop`."""
    exe = redis_server_path()
    if exe is None:
        raise PeerUnavailable("redis-server is not on PATH (Debian: apt-get install "
                              "redis-server)")
    port = free_port()
    proc = start([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--daemonize", "no"], log)
    return proc, port


@contextlib.contextmanager
def flask_redis_server(ckpt: Path, score: float, cap_s: float = FLASK_CAP_S,
                       timeout_s: float = 180.0) -> Iterator[str]:
    """The poll-based baseline (module doc); yields its ``/v1/detect`` URL."""
    if redis_server_path() is None:
        raise PeerUnavailable("redis-server is not on PATH (Debian: apt-get install "
                              "redis-server)")
    try:
        import flask  # noqa: F401
        import redis  # noqa: F401
    except ImportError as e:
        raise PeerUnavailable(f"flask / redis (the client) not installed ({e})") from None
    web_port = free_port()
    procs: list[subprocess.Popen] = []
    logs = [_log_path(n) for n in ("redis", "flask-web", "redis-worker")]
    try:
        proc, redis_port = start_redis(logs[0])
        procs.append(proc)
        db = _redis(redis_port)
        t_end = time.monotonic() + 30
        while True:
            try:
                db.ping()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if procs[0].poll() is not None or time.monotonic() > t_end:
                    raise RuntimeError(f"redis-server did not start\n{_tail(logs[0])}"
                                       ) from None
                time.sleep(0.1)
        procs.append(start(_child_cmd("redis-worker", str(redis_port), str(ckpt),
                                      repr(float(score))), logs[2]))
        procs.append(start(_child_cmd("flask-web", str(web_port), str(redis_port),
                                      repr(float(cap_s))), logs[1]))
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end and not db.exists(READY_KEY):
            if procs[1].poll() is not None:
                raise RuntimeError(f"the model process exited\n{_tail(logs[2])}")
            time.sleep(0.2)
        _wait(f"http://127.0.0.1:{web_port}/ready", procs[2],
              max(5.0, t_end - time.monotonic()), logs[1])
        yield f"http://127.0.0.1:{web_port}/v1/detect"
    finally:
        for p in reversed(procs):
            stop(p, grace_s=5.0)
    for log in logs:  # kept when something failed
        log.unlink(missing_ok=True)


# -- the child processes ---------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """Entry of the child processes (module doc)."""
    args = list(sys.argv[1:] if argv is None else argv)
    role = args.pop(0)
    if role == "litserve":
        _run_litserve(args[0], int(args[1]), int(args[2]), float(args[3]), float(args[4]))
    elif role == "flask-web":
        _run_flask(int(args[0]), int(args[1]), float(args[2]))
    elif role == "redis-worker":
        _run_redis_worker(int(args[0]), args[1], float(args[2]))
    else:
        raise SystemExit(f"unknown role {role!r}")
