"""The load generator of ``danlu bench serve`` (see benchmarks/serve.py): async httpx on
loopback, in the benchmark's own process.

* **Bodies** (:func:`jpeg_bodies`): synthetic ``shapes`` scenes encoded as JPEG (quality 90),
  each wrapped once, up front, as a ``multipart/form-data`` body with one file field
  ``image`` (the form every server of the benchmark accepts), so the client spends no time
  building bodies while it measures.
* **Closed loop** (:func:`closed_loop`): ``concurrency`` client tasks, each with its own
  ``httpx.AsyncClient`` holding one HTTP/1.1 keep-alive connection (:func:`_client` says why
  not one shared pool), each sending requests back to back, taking bodies round-robin from the
  shared pool. First ``warmup`` requests (not counted), then the measured phase, bounded both
  by ``max_requests`` (requests started) and by ``max_seconds`` (no request starts after it;
  the ones in flight finish). Latency: from just before the request is sent to the end of
  reading its body. Throughput: successful responses over the measured window (first send to
  last answer).
* **Open loop** (:func:`open_loop`): arrivals at a fixed rate (evenly spaced) for ``seconds``,
  each one its own task, whatever the server's state (no client waits for the previous answer).
  Latency is measured from the **scheduled** arrival time, so a client that falls behind its
  schedule cannot hide the server's queueing (coordinated omission); the refusals' latency
  (:attr:`LoadResult.error_latency`) runs from the actual send, what the server controls. Each
  arrival takes an idle client (one connection) or opens a new one; ``warm_url`` opens 64
  before the first arrival.

* **Paired** (:func:`paired_latency`): one client per server, each request sent to every
  server in turn, one at a time, with the same body (the next body for the next turn): the
  servers see the same load at the same moments, so the difference of their latencies is not
  the drift of a machine shared with other work.

Every response is classified by status (a transport error or a client timeout as
``"timeout"`` / ``"error"``); a 200's JSON ``batch_size`` (ours, and the peers of this
benchmark, report the size of the batch the request rode in) feeds the mean batch size.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

BOUNDARY = "danlubenchserveboundary7d1e"


# -- bodies ----------------------------------------------------------------------------------
def jpeg_images(n: int = 32, size: int = 256, seed: int = 5, quality: int = 90) -> list[bytes]:
    """``n`` synthetic ``shapes`` scenes (``size`` x ``size``, 1-6 objects of 16-80 px) as
    JPEG files (quality 90)."""
    from PIL import Image

    from danlu.data.synth import synthesize

    ds = synthesize("shapes", num_images=n, seed=seed, image_size=(size, size),
                    scale_range=(16, min(80, size)), encode=False)
    out = []
    for s in ds.samples:
        buf = io.BytesIO()
        Image.fromarray(s.load_image()).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def multipart_body(jpeg: bytes, field_name: str = "image", filename: str = "scene.jpg"
                   ) -> bytes:
    """One ``multipart/form-data`` body (boundary :data:`BOUNDARY`) holding ``jpeg`` as the
    file field ``field_name``."""
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field_name}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    return head + jpeg + f"\r\n--{BOUNDARY}--\r\n".encode()


MULTIPART_HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def jpeg_bodies(n: int = 32, size: int = 256, seed: int = 5) -> list[bytes]:
    """:func:`jpeg_images` wrapped as multipart bodies (:func:`multipart_body`)."""
    return [multipart_body(j) for j in jpeg_images(n, size, seed)]


# -- results ---------------------------------------------------------------------------------
@dataclass
class Sample:
    """One request: when it started (perf_counter s: its scheduled arrival in the open loop,
    its send otherwise), its latency from then (s), its status (an int, or ``"timeout"`` /
    ``"error"``), the batch size its 200 reported, and how late it was sent (``lag``: the
    send minus the scheduled arrival, 0 in the closed loop)."""

    start: float
    latency: float
    status: int | str
    batch_size: int | None = None
    lag: float = 0.0
    #: the start of the body of an answer other than 200 / 503 (or the exception)
    detail: str = ""


@dataclass
class LoadResult:
    """What one load run measured (times in seconds)."""

    mode: str
    concurrency: int | None
    rate: float | None
    requests: int
    ok: int
    seconds: float
    throughput: float
    p50: float
    p90: float
    p99: float
    errors: dict[str, int] = field(default_factory=dict)
    mean_batch: float | None = None
    #: latency percentiles (from the send) of the answers of each non-200 status, e.g.
    #: {"503": {"p50": ..., "p99": ...}}
    error_latency: dict[str, dict[str, float]] = field(default_factory=dict)
    #: the first answer other than 200 / 503: its status and the start of its body
    first_error: str = ""
    #: every request, in order (kept by :func:`paired_latency` only)
    samples: list[Sample] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100, linear interpolation); NaN for no values."""
    if not values:
        return math.nan
    return float(np.percentile(np.asarray(values, np.float64), q))


def summarize(samples: list[Sample], window: float, mode: str, concurrency: int | None,
              rate: float | None) -> LoadResult:
    """Reduce per-request samples to a :class:`LoadResult` (``window``: the measured
    seconds)."""
    ok = [s for s in samples if s.status == 200]
    lat = [s.latency for s in ok]
    errors = Counter(str(s.status) for s in samples if s.status != 200)
    by_status: dict[str, list[float]] = {}
    for s in samples:
        if s.status != 200:
            by_status.setdefault(str(s.status), []).append(s.latency - s.lag)
    batches = [s.batch_size for s in ok if s.batch_size is not None]
    odd = [s for s in samples if s.status not in (200, 503)]
    return LoadResult(
        mode=mode, concurrency=concurrency, rate=rate, requests=len(samples), ok=len(ok),
        seconds=window, throughput=len(ok) / window if window > 0 else 0.0,
        p50=percentile(lat, 50), p90=percentile(lat, 90), p99=percentile(lat, 99),
        errors=dict(sorted(errors.items())),
        mean_batch=float(np.mean(batches)) if batches else None,
        error_latency={k: {"p50": percentile(v, 50), "p99": percentile(v, 99)}
                       for k, v in sorted(by_status.items())},
        first_error=f"{odd[0].status}: {odd[0].detail}" if odd else "")


# -- the client ------------------------------------------------------------------------------
def _client(timeout_s: float):  # noqa: ANN202 - httpx.AsyncClient
    """One simulated client: an ``httpx.AsyncClient`` holding one keep-alive connection.

    One client per connection, not one shared pool: httpx's pool does work in proportion to
    its connections on every request (here 2.4 ms of client CPU per request at 16 connections
    in one pool, 11.5 ms at 128, against 1.3 ms at any count with one client each), and that
    CPU is taken from the servers on these shared cores.
    """
    import httpx

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1,
                          keepalive_expiry=60.0)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout_s), http1=True,
                             http2=False, trust_env=False)


async def _one(client, url: str, body: bytes, t_ref: float | None = None) -> Sample:
    """Send one request; latency from ``t_ref`` (the scheduled time) when given, else from
    the send."""
    import httpx
    import orjson

    t0 = time.perf_counter()
    start = t0 if t_ref is None else t_ref
    batch = None
    detail = ""
    try:
        r = await client.post(url, content=body, headers=MULTIPART_HEADERS)
        status: int | str = r.status_code
        if status == 200:
            try:
                batch = orjson.loads(r.content).get("batch_size")
            except (orjson.JSONDecodeError, AttributeError):
                status = "bad_json"
                detail = r.text[:200]
        elif status != 503:
            detail = r.text[:200]
    except httpx.TimeoutException as e:
        status, detail = "timeout", f"{type(e).__name__}: {e}"[:200]
    except httpx.HTTPError as e:
        status, detail = "error", f"{type(e).__name__}: {e}"[:200]
    return Sample(start, time.perf_counter() - start, status,
                  int(batch) if isinstance(batch, (int, float)) else None, t0 - start, detail)


async def _closed(url: str, bodies: list[bytes], concurrency: int, max_requests: int,
                  max_seconds: float, warmup: int, timeout_s: float) -> LoadResult:
    clients = [_client(timeout_s) for _ in range(concurrency)]
    counter = [0]

    async def worker(client, limit: int, deadline: float, out: list[Sample]) -> None:  # noqa: ANN001
        while counter[0] < limit and time.perf_counter() < deadline:
            i = counter[0]
            counter[0] += 1
            out.append(await _one(client, url, bodies[i % len(bodies)]))

    try:
        if warmup:
            junk: list[Sample] = []
            deadline = time.perf_counter() + max(max_seconds, 30.0)
            await asyncio.gather(*(worker(c, warmup, deadline, junk)
                                   for c in clients[:min(concurrency, warmup)]))
        counter[0] = 0
        samples: list[Sample] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c, max_requests, t0 + max_seconds, samples)
                               for c in clients))
        t1 = time.perf_counter()
    finally:
        for c in clients:
            await c.aclose()
    return summarize(samples, t1 - t0, "closed", concurrency, None)


def closed_loop(url: str, bodies: list[bytes], concurrency: int, *, max_requests: int = 400,
                max_seconds: float = 15.0, warmup: int | None = None,
                timeout_s: float = 70.0) -> LoadResult:
    """``concurrency`` clients sending back to back (module doc); ``warmup`` requests first,
    not counted (default: 2 per client, at least 4)."""
    if warmup is None:
        warmup = max(4, 2 * concurrency)
    return asyncio.run(_closed(url, bodies, concurrency, max_requests, max_seconds, warmup,
                               timeout_s))


async def _open(url: str, bodies: list[bytes], rate: float, seconds: float,
                connections: int, timeout_s: float, warm_url: str | None,
                warm_connections: int) -> LoadResult:
    # idle clients (one connection each), a new one when none is idle, at most `connections`
    idle: list = []
    every: list = []
    slots = asyncio.Semaphore(connections)

    async def send(i: int, due: float) -> Sample:
        async with slots:
            if not idle:
                every.append(_client(timeout_s))
                idle.append(every[-1])
            client = idle.pop()
            try:
                return await _one(client, url, bodies[i % len(bodies)], due)
            finally:
                idle.append(client)

    try:
        if warm_url and warm_connections:
            # open the connections first, so the schedule's first second does not pay for
            # TCP set-up
            every.extend(_client(timeout_s) for _ in range(min(warm_connections, connections)))
            await asyncio.gather(*(c.get(warm_url) for c in every), return_exceptions=True)
            idle.extend(every)
        n = max(1, int(rate * seconds))
        tasks = []
        t0 = time.perf_counter()
        for i in range(n):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(i, due)))
        samples = list(await asyncio.gather(*tasks))
        t1 = max(s.start + s.latency for s in samples)
    finally:
        for c in every:
            await c.aclose()
    return summarize(samples, t1 - t0, "open", None, rate)


def open_loop(url: str, bodies: list[bytes], rate: float, seconds: float, *,
              connections: int = 256, timeout_s: float = 70.0, warm_url: str | None = None,
              warm_connections: int = 64) -> LoadResult:
    """Arrivals at ``rate`` per second for ``seconds`` (module doc); throughput counts the
    200s only. With ``warm_url`` (a cheap GET route), ``warm_connections`` keep-alive
    connections are opened before the first arrival."""
    return asyncio.run(_open(url, bodies, rate, seconds, connections, timeout_s, warm_url,
                             warm_connections))


async def _paired(urls: list[str], bodies: list[bytes], n: int, warmup: int,
                  timeout_s: float) -> list[list[Sample]]:
    clients = [_client(timeout_s) for _ in urls]
    out: list[list[Sample]] = [[] for _ in urls]
    try:
        for i in range(warmup + n):
            body = bodies[i % len(bodies)]
            for j, (client, url) in enumerate(zip(clients, urls, strict=True)):
                sample = await _one(client, url, body)
                if i >= warmup:
                    out[j].append(sample)
    finally:
        for c in clients:
            await c.aclose()
    return out


def paired_latency(urls: list[str], bodies: list[bytes], n: int = 300, *, warmup: int = 10,
                   timeout_s: float = 70.0) -> list[LoadResult]:
    """``n`` turns of one request to each of ``urls`` (module doc); one
    :class:`LoadResult` per URL (concurrency 1), with its :attr:`~LoadResult.samples`."""
    out = []
    for samples in asyncio.run(_paired(urls, bodies, n, warmup, timeout_s)):
        res = summarize(samples, sum(s.latency for s in samples), "closed", 1, None)
        res.samples = samples
        out.append(res)
    return out


def wait_ready(url: str, timeout_s: float = 120.0, proc=None) -> None:  # noqa: ANN001
    """Poll ``url`` with GET until it answers 200; raise ``RuntimeError`` when ``proc`` (a
    Popen) exits first or after ``timeout_s``."""
    import httpx

    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before it "
                               f"answered {url}")
        try:
            if httpx.get(url, timeout=2.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no 200 from {url} within {timeout_s:.0f} s")
