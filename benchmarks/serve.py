"""Benchmark: ``danlu serve`` under load, against LitServe and a poll-based Flask + Redis
service, all serving the same model on the same machine in one run.

The model: ``fcos-tiny`` at 256 px, the checkpoint of ``danlu bench predict``
(``benchmarks/_predict_scene.model_checkpoint``, cached in ``~/.cache/danlu/bench-predict/``),
on the CPU, score threshold 0.25 everywhere. The inputs: 32 synthetic ``shapes`` scenes of
256 x 256 (1-6 objects of 16-80 px) encoded as JPEG (quality 90, 17-24 KB), each sent as a
``multipart/form-data`` upload with one file field ``image`` (built once, before any timing).

The load generator (``benchmarks/_serve_load.py``) runs in this benchmark's own process, on the
same cores as the servers (nothing is pinned): async ``httpx`` on loopback, HTTP/1.1
keep-alive, one ``httpx.AsyncClient`` and one connection per client (a shared pool costs the
client CPU in proportion to its connections on every request: ``_serve_load._client``). Each
server, once started, first gets 48 requests from 8 clients (``--quick``: 24), not counted:
danlu's NMS makes 16 small calls in numpy before it loads its numba kernel (about 0.6 s, once
per process), and every server here runs that NMS. **Closed loop**: N clients each sending
requests back to back from the shared pool of bodies; ``2 N`` warm-up requests (at least 4) are
not counted; each measured run stops at 1,000 requests or 15 s, whichever comes first
(``--quick``: 16 requests, 3 s). Throughput is successful answers per second over the measured
window; latency runs from the send to the end of the body; the mean batch size is what each 200
body reports (``batch_size``: ours, and the peers here, say how many requests rode in the
batch). **Open loop** (the overload case): arrivals evenly spaced at a fixed rate, each its own
request whatever the server's state, over 64 keep-alive connections opened beforehand; latency
from the scheduled arrival (no coordinated omission), a refusal's from its send.

Rows (the load table):

* **model alone**: in-process ``danlu.Predictor(ckpt, device="cpu")`` on the decoded JPEGs
  (``predict_arrays``: letterbox, forward, decoding, NMS, boxes mapped back; no JPEG decode,
  no HTTP): the median of 30 one-image calls (the batch-1 latency) and of 10 calls on 16 images
  (the one-batch latency; 16 / it is the model's batched throughput, **the limit**). The JPEG
  decode time per image (``danlu.infer.images.read_image``) is in the note.
* **ours**: ``danlu serve CKPT --max-batch 16 --max-wait-ms 5 --score-threshold 0.25
  --device cpu --drain-s 5`` (``danlu.serve.launch.ServerProcess``: a child process on a free
  port), ``POST /v1/detect``, at 1, 16 and 64 clients (``--quick``: 1 and 4).
* **LitServe** (``benchmarks/_serve_peers.py``): a ``LitAPI`` around the same Predictor
  (decode with the same ``read_image`` per request, one ``predict_arrays`` call per batch, the
  same JSON), ``max_batch_size=8, batch_timeout=0.005`` (the issue's setting) and
  ``max_batch_size=16, batch_timeout=0.005`` (our max batch), one inference worker; the
  comparison takes, at each concurrency, the one with the higher throughput and names it
  (``--quick``: batch 8 only).
* **Flask + Redis**: the poll-based design written from its description (a Flask app on
  werkzeug's threaded server RPUSH-es each base64 image onto a Redis list and polls GET of its
  result every 0.25 s; a model process takes LRANGE 0 31 + LTRIM 32 -1 every 0.25 s, runs the
  Predictor on them as one batch and SETs each result); a real ``redis-server`` on a free
  loopback port (``--save "" --appendonly no``). The design has no timeout: the benchmark caps
  a request at 60 s (answered 504). Skipped, with a note, when ``redis-server`` is missing.
* **overload** (also run a third time with ``--max-queue 16 --model-nice 10``: the model thread
  at a lower CPU priority, so the HTTP work that refuses requests never waits behind it): a
  fresh ``danlu serve`` with ``--max-queue 16`` (one max batch; ours counts
  every admitted request, decoding, queued or running, so an admitted request waits for at
  most the running batch, then rides the next), then one with ``--max-queue 32`` (2 x the max
  batch: up to two batches ahead), open-loop arrivals at 2 x the saturation throughput
  measured above, for 5 s (``--quick``: ``--max-queue 16`` only, 1.5 s): the 503 share, the
  503s' latency (p50 / p99, from the send) and the admitted requests' latency.

The goals table (each ``met`` / ``MISSED``, from the rows of this run):

* saturation (ours, the best throughput over the concurrencies above 1) >= 90% of the model's
  batched throughput;
* ours at one client: p50 <= the model's batch-1 latency + 5 ms;
* at 16 and 64 clients (``--quick``: 4): >= 1.2 x LitServe's throughput (its better setting)
  at an equal or lower p99;
* overload at 2 x capacity, for each ``--max-queue``: the 503s answered in <= 5 ms (their
  p99; not met when nothing was refused), the admitted requests' p99 <= 2 x the one-batch
  latency (the model alone on 16 images);
* ours at one client: p50 >= 10 x lower than Flask + Redis's (the ratio at every concurrency is
  in the note).

A server that fails to start or crashes gives a row marked ``FAILED`` (ours: its goals
``MISSED``); a peer that cannot run here (litserve not installed, no ``redis-server``) a row
marked skipped (its goals ``SKIPPED``). A run's first answer other than 200 / 503 is quoted in
its row's note.

Run: ``danlu bench serve`` (about 5 minutes on 2 cores; ``--quick``: a smoke run of about
45 s whose numbers mean little; ``--json`` for one document).

**Over Redis and Ray Serve** (``--redis``, ``--ray``): the same model, bodies and load
generator for the scale-out backends, in ``benchmarks/_serve_scaleout.py`` (its doc says
what each row is).
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmarks import _serve_load as load
from benchmarks import _serve_peers as peers
from benchmarks._common import measure

TITLE = "serve: danlu serve vs LitServe vs Flask + Redis, same model, loopback HTTP"
SCORE = 0.25
MAX_BATCH = 16
MAX_WAIT_MS = 5
LITSERVE_SETTINGS = ((8, 0.005), (16, 0.005))
OURS = "ours (danlu serve)"
FLASK = "Flask + Redis (poll 0.25 s)"
MODEL = "model alone (in-process)"
#: the table's title by the servers in its rows (the scale-out backends')
BACKEND_TITLES = {
    "ours over Redis": "serve --redis: Redis Streams workers vs the in-process batcher, same model",
    "ours over Ray Serve": "serve --ray: Ray Serve replicas vs the in-process batcher, same model",
}

_T0 = [time.perf_counter()]


def _say(msg: str) -> None:
    print(f"[bench serve {time.perf_counter() - _T0[0]:6.0f} s] {msg}", file=sys.stderr,
          flush=True)


@dataclass
class LoadRow:
    """One load run (or one model-alone measurement); times in seconds."""

    case: str
    server: str
    concurrency: str
    requests: int = 0
    ok: int = 0
    rps: float = float("nan")
    p50: float = float("nan")
    p90: float = float("nan")
    p99: float = float("nan")
    errors: dict[str, int] = field(default_factory=dict)
    mean_batch: float | None = None
    seconds: float = float("nan")
    note: str = ""
    skipped: str = ""
    #: the non-200 answers' latency percentiles, by status (from their send)
    error_latency: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class GoalRow:
    """One goal of the issue, judged on this run's rows."""

    goal: str
    measured: str
    target: str
    met: bool | None  # None: a figure the issue asks for without a target ("reported")
    note: str = ""
    skipped: str = ""


def settings(quick: bool) -> dict:
    """How much load each run gets (module doc)."""
    if quick:
        return {"concurrencies": (1, 4), "max_requests": 16, "max_seconds": 3.0,
                "litserve": LITSERVE_SETTINGS[:1], "overload_s": 1.5, "queues": ((MAX_BATCH, ()),),
                "images": 8, "repeat1": 8, "repeat16": 3}
    return {"concurrencies": (1, 16, 64), "max_requests": 1000, "max_seconds": 15.0,
            "litserve": LITSERVE_SETTINGS, "overload_s": 5.0,
            "queues": ((MAX_BATCH, ()), (2 * MAX_BATCH, ()),
                       (MAX_BATCH, ("--model-nice", "10"))),
            "images": 32, "repeat1": 30, "repeat16": 10}


# -- the model alone -------------------------------------------------------------------------
def model_alone_rows(ckpt: Path, jpegs: list[bytes], quick: bool) -> tuple[list[LoadRow], dict]:
    """The in-process limits: batch-1 latency and batch-16 throughput (module doc)."""
    import torch

    import danlu
    from danlu.infer.images import read_image

    s = settings(quick)
    torch.set_num_threads(os.cpu_count() or 1)
    t_dec = measure(lambda: [read_image(j) for j in jpegs], repeat=3) / len(jpegs)
    arrays = [read_image(j) for j in jpegs]
    pred = danlu.Predictor(ckpt, device="cpu", score_threshold=SCORE)
    turn = itertools.cycle(range(len(arrays)))

    def one() -> None:
        i = next(turn)
        list(pred.predict_arrays(arrays[i:i + 1], batch_size=1))

    batch = [arrays[i % len(arrays)] for i in range(MAX_BATCH)]
    _say("model alone: batch 1 and batch 16")
    t1 = measure(one, repeat=s["repeat1"], warmup=20)  # 20: past the NMS's numba load
    t16 = measure(lambda: list(pred.predict_arrays(batch, batch_size=MAX_BATCH)),
                  repeat=s["repeat16"], warmup=1)
    note = f"JPEG decode (read_image) {t_dec * 1e3:.2f} ms per image, not included"
    rows = [LoadRow("model alone, batch 1 (latency)", MODEL, "-", s["repeat1"], s["repeat1"],
                    1.0 / t1, t1, mean_batch=1.0, note=note),
            LoadRow(f"model alone, batch {MAX_BATCH} (the limit)", MODEL, "-", s["repeat16"],
                    s["repeat16"], MAX_BATCH / t16, t16, mean_batch=float(MAX_BATCH),
                    note="p50: the one-batch latency; req/s: images/s")]
    return rows, {"t1": t1, "t16": t16, "decode": t_dec, "limit": MAX_BATCH / t16}


# -- load runs -------------------------------------------------------------------------------
#: requests (from WARM_CLIENTS clients) each server gets once started, not counted: more than
#: danlu's NMS makes before it loads its numba kernel (``danlu.boxes.nms.SWEEP_CALLS``, 16
#: small calls; ~0.6 s once per process), which every server here runs (``--quick``: 24)
WARM_REQUESTS = 48
WARM_CLIENTS = 8


def warm(url: str, bodies: list[bytes], quick: bool = False) -> None:
    """Warm a freshly started server (:data:`WARM_REQUESTS`, not counted)."""
    n = min(WARM_REQUESTS, 24) if quick else WARM_REQUESTS
    load.closed_loop(url, bodies, WARM_CLIENTS, max_requests=n, max_seconds=60, warmup=0)


def _row(case: str, server: str, res: load.LoadResult, note: str = "") -> LoadRow:
    conc = str(res.concurrency) if res.mode == "closed" else f"open {res.rate:.0f}/s"
    if res.first_error:
        note = "; ".join(x for x in (note, f"first error: {res.first_error}") if x)
    return LoadRow(case, server, conc, res.requests, res.ok, res.throughput, res.p50, res.p90,
                   res.p99, res.errors, res.mean_batch, res.seconds, note,
                   error_latency=res.error_latency)


def closed_rows(case: str, server: str, url: str, bodies: list[bytes], quick: bool,
                concurrencies: tuple[int, ...] | None = None, note: str = "") -> list[LoadRow]:
    """Closed-loop runs at each concurrency against ``url``."""
    s = settings(quick)
    rows = []
    warm(url, bodies, quick)
    for c in concurrencies or s["concurrencies"]:
        _say(f"{server}: {c} client(s)")
        res = load.closed_loop(url, bodies, c, max_requests=s["max_requests"],
                               max_seconds=s["max_seconds"])
        rows.append(_row(case, server, res, note))
    return rows


def _skipped(case: str, server: str, why: str) -> list[LoadRow]:
    _say(f"{server}: skipped ({why.splitlines()[0] if why else ''})")
    return [LoadRow(case, server, "-", note=f"skipped: {why}", skipped=why)]


def _guarded(case: str, server: str, body: Callable[[], list[LoadRow]]) -> list[LoadRow]:
    try:
        return body()
    except peers.PeerUnavailable as e:
        return _skipped(case, server, str(e))
    except Exception as e:  # noqa: BLE001 - a peer that fails to start or crashes: a row
        return _skipped(case, server, f"FAILED: {type(e).__name__}: {e}")


def ours_args(max_queue: int | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """The options ``danlu serve`` runs with here (module doc)."""
    args = ["--max-batch", str(MAX_BATCH), "--max-wait-ms", str(MAX_WAIT_MS),
            "--score-threshold", str(SCORE), "--device", "cpu", "--drain-s", "5"]
    return args + (["--max-queue", str(max_queue)] if max_queue else []) + list(extra)


def ours_rows(ckpt: Path, bodies: list[bytes], quick: bool,
              concurrencies: tuple[int, ...] | None = None) -> list[LoadRow]:
    """Ours at each concurrency (a crash is a row marked FAILED, not an exception)."""
    case = f"closed loop, max batch {MAX_BATCH}, wait {MAX_WAIT_MS} ms"

    def body() -> list[LoadRow]:
        _say("ours: starting danlu serve")
        with peers.ours_server(ckpt, ours_args()) as url:
            return closed_rows(case, OURS, url + "/v1/detect", bodies, quick, concurrencies)

    return _guarded(case, OURS, body)


def litserve_rows(ckpt: Path, bodies: list[bytes], quick: bool,
                  concurrencies: tuple[int, ...] | None = None,
                  configs: tuple[tuple[int, float], ...] | None = None) -> list[LoadRow]:
    """LitServe at each of its settings and concurrencies."""
    rows = []
    for max_batch, timeout in configs or settings(quick)["litserve"]:
        case = f"closed loop, max batch {max_batch}, wait {timeout * 1e3:g} ms"
        try:
            server = f"LitServe {peers.litserve_version()} (batch {max_batch})"
        except Exception:  # noqa: BLE001 - not installed: the row says so
            server = f"LitServe (batch {max_batch})"

        def body(max_batch: int = max_batch, timeout: float = timeout, case: str = case,
                 server: str = server) -> list[LoadRow]:
            _say(f"{server}: starting")
            with peers.litserve_server(ckpt, max_batch, timeout, SCORE) as url:
                return closed_rows(case, server, url, bodies, quick, concurrencies)

        rows += _guarded(case, server, body)
    return rows


def flask_rows(ckpt: Path, bodies: list[bytes], quick: bool,
               concurrencies: tuple[int, ...] | None = None) -> list[LoadRow]:
    """The poll-based baseline at each concurrency (skipped without redis-server)."""
    case = f"closed loop, Redis list, batches of {peers.REDIS_BATCH}"

    def body() -> list[LoadRow]:
        _say("Flask + Redis: starting redis-server, the model process and Flask")
        with peers.flask_redis_server(ckpt, SCORE) as url:
            return closed_rows(case, FLASK, url, bodies, quick, concurrencies,
                               note=f"each request capped at {peers.FLASK_CAP_S:.0f} s (504)")

    return _guarded(case, FLASK, body)


def overload_rows(ckpt: Path, bodies: list[bytes], rate: float, seconds: float,
                  max_queue: int = MAX_BATCH, quick: bool = True,
                  extra: tuple[str, ...] = ()) -> list[LoadRow]:
    """Open-loop arrivals at ``rate`` against ours with a small ``--max-queue`` (and the
    ``extra`` options, named in the case)."""
    case = " ".join(("overload: open loop at 2x saturation, --max-queue", str(max_queue),
                     *extra))
    server = OURS

    def body() -> list[LoadRow]:
        _say(f"overload: ours, {rate:.0f} req/s for {seconds:g} s")
        with peers.ours_server(ckpt, ours_args(max_queue, extra)) as url:
            warm(url + "/v1/detect", bodies, quick)
            res = load.open_loop(url + "/v1/detect", bodies, rate, seconds,
                                 warm_url=url + "/healthz")
        refused = res.errors.get("503", 0)
        lat = res.error_latency.get("503", {})
        note = (f"{rate * seconds:.0f} arrivals; 503: {refused} "
                f"({100 * refused / max(res.requests, 1):.0f}%), answered in p50 "
                f"{_fmt(lat.get('p50'))} / p99 {_fmt(lat.get('p99'))} (from the send); "
                f"latency of the 200s from their scheduled arrival")
        return [_row(case, server, res, note)]

    return _guarded(case, server, body)


# -- goals -----------------------------------------------------------------------------------
def _ok_rows(rows: list[LoadRow], server_prefix: str) -> list[LoadRow]:
    return [r for r in rows if r.server.startswith(server_prefix) and not r.skipped
            and r.case.startswith("closed") and r.ok > 0]


def _at(rows: list[LoadRow], server_prefix: str, conc: int) -> list[LoadRow]:
    return [r for r in _ok_rows(rows, server_prefix) if r.concurrency == str(conc)]


def goal_rows(rows: list[LoadRow], info: dict, concurrencies: tuple[int, ...]) -> list[GoalRow]:
    """Judge every goal (module doc) on this run's rows; ``info``: the model-alone times."""
    goals = []
    ours = _ok_rows(rows, OURS)
    # ours not running is a miss (with the reason), a peer not running a skipped comparison
    failed = [r.skipped for r in rows if r.server == OURS and r.skipped]
    down = "ours did not run" + (f": {failed[0]}" if failed else "")
    busy = [r for r in ours if r.concurrency != "1"]
    limit = info["limit"]
    g = "saturation >= 90% of the model's batched throughput"
    if busy:
        best = max(busy, key=lambda r: r.rps)
        goals.append(GoalRow(g, f"{best.rps:.1f} req/s ({best.concurrency} clients)",
                             f">= {0.9 * limit:.1f} req/s (90% of {limit:.1f} images/s)",
                             bool(best.rps >= 0.9 * limit),
                             f"{100 * best.rps / limit:.0f}% of the limit"))
    else:
        goals.append(GoalRow(g, "-", f">= {0.9 * limit:.1f} req/s", False, down))

    one = _at(rows, OURS, 1)
    t1 = info["t1"]
    g = "p50 with one client <= model's one-image time + 5 ms"
    if one:
        goals.append(GoalRow(g, _fmt(one[0].p50), f"<= {_fmt(t1 + 0.005)} "
                             f"({_fmt(t1)} + 5 ms)", bool(one[0].p50 <= t1 + 0.005),
                             f"{_fmt(one[0].p50 - t1)} over the model alone"))
    else:
        goals.append(GoalRow(g, "-", f"<= {_fmt(t1 + 0.005)}", False, down))

    for c in [c for c in concurrencies if c > 1]:
        g = f">= 1.2x LitServe's throughput at <= its p99, {c} clients"
        mine, theirs = _at(rows, OURS, c), _at(rows, "LitServe", c)
        if not mine:
            goals.append(GoalRow(g, "-", "-", False, down))
            continue
        if not theirs:
            why = [r.skipped for r in rows if r.server.startswith("LitServe") and r.skipped]
            goals.append(GoalRow(g, "-", "-", False,
                                 skipped=why[0] if why else "LitServe did not run"))
            continue
        m, lit = mine[0], max(theirs, key=lambda r: r.rps)
        met = bool(m.rps >= 1.2 * lit.rps and m.p99 <= lit.p99)
        goals.append(GoalRow(g, f"{m.rps:.1f} req/s, p99 {_fmt(m.p99)}",
                             f">= {1.2 * lit.rps:.1f} req/s, p99 <= {_fmt(lit.p99)}", met,
                             f"vs {lit.server}: {lit.rps:.1f} req/s, p50 {_fmt(lit.p50)}, "
                             f"{m.rps / lit.rps:.2f}x"))

    over = [r for r in rows if r.case.startswith("overload") and r.server == OURS]
    t16 = info["t16"]
    for o in over or [LoadRow("overload", OURS, "-", skipped="not run")]:
        q = o.case.rsplit("--max-queue ", 1)[-1] if "--max-queue" in o.case else "?"
        g1 = f"at 2x capacity (--max-queue {q}): overflow answered 503 in <= 5 ms (p99)"
        g2 = f"at 2x capacity (--max-queue {q}): admitted p99 <= 2x the one-batch latency"
        if o.skipped:
            why = f"ours did not run: {o.skipped}"
            goals += [GoalRow(g1, "-", "<= 5 ms", False, why),
                      GoalRow(g2, "-", f"<= {_fmt(2 * t16)}", False, why)]
            continue
        refused = o.errors.get("503", 0)
        p99_503 = o.error_latency.get("503", {}).get("p99", float("nan"))
        goals.append(GoalRow(g1, f"p99 {_fmt(p99_503)} ({refused} of {o.requests} refused)",
                             "<= 5 ms", bool(refused > 0 and p99_503 <= 0.005),
                             "" if refused else "nothing was refused: not overloaded"))
        goals.append(GoalRow(g2, f"p99 {_fmt(o.p99)} ({o.ok} admitted)",
                             f"<= {_fmt(2 * t16)} (2 x {_fmt(t16)})",
                             bool(o.ok > 0 and o.p99 <= 2 * t16),
                             f"other statuses: {o.errors}" if set(o.errors) - {"503"} else ""))

    g = ">= 10x lower p50 than Flask + Redis (one client)"
    flask1, flask_all = _at(rows, FLASK, 1), _ok_rows(rows, FLASK)
    if one and flask1:
        ratios = [f"{r.concurrency}: {r.p50 / m.p50:.1f}x" for r in flask_all
                  for m in _at(rows, OURS, int(r.concurrency)) if m.p50 > 0]
        goals.append(GoalRow(g, f"{_fmt(one[0].p50)} vs {_fmt(flask1[0].p50)}",
                             f"<= {_fmt(flask1[0].p50 / 10)}",
                             bool(one[0].p50 * 10 <= flask1[0].p50),
                             "p50 ratio (theirs / ours) by clients: " + ", ".join(ratios)))
    elif not one:
        goals.append(GoalRow(g, "-", "-", False, down))
    else:
        skipped = [r.skipped for r in rows if r.server == FLASK and r.skipped]
        goals.append(GoalRow(g, "-", "-", False,
                             skipped=skipped[0] if skipped else "Flask + Redis did not run"))
    return goals


# -- the run and the report ------------------------------------------------------------------
def run(quick: bool = False, redis: bool = False, ray: bool = False) -> list:
    """All rows: the load table (LoadRow) then the goals (GoalRow); ``redis`` / ``ray``: the
    scale-out backends instead (``benchmarks/_serve_scaleout.py``)."""
    from benchmarks import _predict_scene as scene_mod

    if redis or ray:
        from benchmarks import _serve_scaleout as scaleout

        return scaleout.run_backend("redis" if redis else "ray", quick)
    _T0[0] = time.perf_counter()
    s = settings(quick)
    ckpt = scene_mod.model_checkpoint(quick)
    jpegs = load.jpeg_images(s["images"])
    bodies = [load.multipart_body(j) for j in jpegs]
    _say(f"model {ckpt}; {len(jpegs)} JPEGs of 256x256, "
         f"{np.mean([len(j) for j in jpegs]) / 1e3:.1f} KB on average")
    rows, info = model_alone_rows(ckpt, jpegs, quick)
    rows += ours_rows(ckpt, bodies, quick)
    rows += litserve_rows(ckpt, bodies, quick)
    rows += flask_rows(ckpt, bodies, quick)
    busy = [r.rps for r in _ok_rows(rows, OURS) if r.concurrency != "1"]
    saturation = max(busy) if busy else info["limit"]
    for q, extra in s["queues"]:
        rows += overload_rows(ckpt, bodies, 2 * saturation, s["overload_s"], q, quick, extra)
    goals = goal_rows(rows, info, s["concurrencies"])
    _say(f"done in {time.perf_counter() - _T0[0]:.0f} s")
    return rows + goals


def _fmt(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 0.01:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds * 1e3:.1f} ms"


def report(rows: list, *, as_json: bool = False) -> None:
    """The load table and the goals table (or one JSON document with ``as_json``)."""
    from rich.table import Table

    from benchmarks._common import _console, machine

    loads = [r for r in rows if isinstance(r, LoadRow)]
    goals = [r for r in rows if isinstance(r, GoalRow)]
    title = next((t for prefix, t in BACKEND_TITLES.items()
                  if any(r.server.startswith(prefix) for r in loads)), TITLE)
    if as_json:
        import orjson

        doc = {"benchmark": title, "machine": machine(), "rows": [asdict(r) for r in loads],
               "goals": [asdict(r) for r in goals]}
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
              .decode())
        return
    table = Table(title=f"{title} — {machine()}")
    for col in ("case", "server", "clients", "requests", "req/s", "p50", "p90", "p99",
                "errors", "mean batch", "note"):
        table.add_column(col)
    for r in loads:
        errors = ", ".join(f"{k}: {v}" for k, v in r.errors.items()) or "0"
        table.add_row(r.case, r.server, r.concurrency, str(r.requests) if r.requests else "-",
                      "-" if r.rps != r.rps else f"{r.rps:.1f}", _fmt(r.p50), _fmt(r.p90),
                      _fmt(r.p99), "-" if r.skipped else errors,
                      "-" if r.mean_batch is None else f"{r.mean_batch:.1f}", r.note)
    _console().print(table)
    if goals:
        table = Table(title="serve: the goals (same model, same run)")
        for col in ("goal", "measured", "target", "met?", "note"):
            table.add_column(col)
        for g in goals:
            verdict = ("reported" if g.met is None else "met" if g.met else "MISSED")
            table.add_row(g.goal, g.measured, g.target,
                          f"SKIPPED ({g.skipped})" if g.skipped else verdict, g.note)
        _console().print(table)


REPORT = report

if __name__ == "__main__":
    report(run(quick="--quick" in sys.argv, redis="--redis" in sys.argv,
               ray="--ray" in sys.argv),
           as_json="--json" in sys.argv)
