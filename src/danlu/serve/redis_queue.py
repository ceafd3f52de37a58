"""What ``danlu serve --redis`` (the web side) and ``danlu worker`` agree on: the key names and
their lifetimes, a job's fields, an answer's JSON, and the script that answers a job once.

Keys (``P`` is ``--redis-prefix``, default ``danlu``; every key expires):

=====================  ==========  ===========================================================
key                    type        lifetime and use
=====================  ==========  ===========================================================
``P:jobs``             stream      the jobs not yet done (XLEN: the backlog); consumer group
                                   ``workers``; EXPIRE :data:`STREAM_TTL_S`, refreshed
``P:dead``             stream      dead-lettered jobs with their error (at most ~1,000);
                                   EXPIRE :data:`DEAD_TTL_S`, refreshed
``P:reply:ID``         list        one job's answer, LPUSHed by a worker, BLPOPed by the web;
                                   EXPIRE :data:`REPLY_TTL_S`
``P:done:ID``          string      "this job is answered" (SET NX: the answer is written once);
                                   EXPIRE :data:`DONE_TTL_S`
``P:worker:NAME``      string      a worker's heartbeat (JSON); EX :data:`HEARTBEAT_TTL_S`,
                                   written every :data:`HEARTBEAT_S`
``P:workers``          set         the names of workers that sent a heartbeat (the dead are
                                   removed by the web side); EXPIRE :data:`STATS_TTL_S`
``P:model``            string      the model description of ``GET /v1/model`` (JSON);
                                   EX :data:`MODEL_TTL_S`, written with each heartbeat
``P:stats``            hash        counters the workers HINCRBY (replies, duplicates,
                                   reclaimed, dead_lettered, batches...); EXPIRE
                                   :data:`STATS_TTL_S`, refreshed
=====================  ==========  ===========================================================

A job (one stream entry, ``XADD P:jobs *``): ``id`` (32 hex digits, the web's), ``image``
(the uploaded bytes, as sent), ``opts`` (the validated options, JSON) and ``budget`` (the
seconds left of the request's deadline when it was added; the entry's ID gives Redis's clock
at that moment, so the worker needs no clock in common with the web).

With a Redis Cluster, give the prefix a hash tag (``--redis-prefix '{danlu}'``): every key then
lives in one slot, as the answering script (several keys) needs.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import orjson

from danlu.serve.engine import DetectOptions, Outcome
from danlu.serve.problems import RequestProblem
from danlu.structures import Detections

#: the consumer group every worker reads the job stream with
GROUP = "workers"
#: lifetimes, in seconds (module doc)
STREAM_TTL_S = 24 * 3600
DEAD_TTL_S = 7 * 24 * 3600
REPLY_TTL_S = 120
DONE_TTL_S = 900
HEARTBEAT_S = 1.0
HEARTBEAT_TTL_S = 5
MODEL_TTL_S = 30
STATS_TTL_S = 7 * 24 * 3600
#: the dead-letter stream keeps about this many jobs (XADD MAXLEN ~)
DEAD_MAXLEN = 1000


@dataclass(frozen=True)
class Keys:
    """The key names under one prefix (module doc)."""

    prefix: str = "danlu"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def model(self) -> str:
        return f"{self.prefix}:model"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    def reply(self, job_id: str) -> str:
        return f"{self.prefix}:reply:{job_id}"

    def done(self, job_id: str) -> str:
        return f"{self.prefix}:done:{job_id}"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"


# -- connections -----------------------------------------------------------------------------
def connect(url: str, *, max_connections: int = 32, retries: int = 1,
            read_timeout_s: float | None = 10.0) -> Any:
    """A ``redis.asyncio.Redis`` for ``url`` (redis-py is imported here, on first use).

    Args:
        url: ``redis://[:password@]host:port/db``, ``rediss://...`` or ``unix://...``.
        max_connections: the pool's size; a command finding every connection busy waits for
            one (a blocking pool: redis-py's plain pool would fail it as "too many
            connections", which reads as Redis being down).
        retries: how many times a command is sent again after a dropped connection (a pooled
            connection left stale by a Redis restart fails once, then reconnects). 0 for the
            blocking reads whose job a restarted Redis has forgotten: they fail at once.
        read_timeout_s: the socket timeout (None: none; for BLPOP, whose own timeout bounds
            the wait).
    """
    import redis.asyncio as aioredis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kwargs: dict[str, Any] = {"socket_timeout": read_timeout_s, "socket_connect_timeout": 2.0,
                              "retry": Retry(NoBackoff(), retries), "socket_keepalive": True}
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections,
                                                    timeout=None, **kwargs)
    return aioredis.Redis.from_pool(pool)


def check_url(url: str) -> str:
    """``url`` if redis-py can parse it; ConfigError otherwise."""
    from danlu.errors import ConfigError

    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"--redis {redact(url)!r}: expected redis://host:port/db, "
                          "rediss://... or unix:///path.sock")
    return url


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for logs and pages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def is_down(error: BaseException) -> bool:
    """Whether ``error`` means Redis cannot be reached (or is loading its data) now."""
    import redis.exceptions as rex

    return isinstance(error, (rex.ConnectionError, rex.TimeoutError, rex.BusyLoadingError,
                              OSError))


def backend_unavailable(error: BaseException | str, stage: str = "queue") -> RequestProblem:
    """The 503 of a request whose work cannot reach (or come back from) Redis."""
    return RequestProblem(503, "backend_unavailable", f"the job queue (Redis) is not "
                          f"reachable ({error}); retry later", stage=stage,
                          headers={"Retry-After": "1"})


def default_worker_name() -> str:
    """``host-pid``: unique among live workers."""
    return f"{socket.gethostname()}-{os.getpid()}"


# -- a job -----------------------------------------------------------------------------------
def options_doc(options: DetectOptions) -> dict[str, Any]:
    """:class:`DetectOptions` -> JSON-ready dict (:func:`options_from_doc` reads it back)."""
    return {"score_threshold": options.score_threshold,
            "labels": None if options.labels is None else sorted(options.labels),
            "max_detections": options.max_detections, "slice_size": options.slice_size,
            "overlap": options.overlap}


def options_from_doc(doc: dict[str, Any]) -> DetectOptions:
    labels = doc.get("labels")
    return DetectOptions(float(doc["score_threshold"]),
                         None if labels is None else frozenset(int(x) for x in labels),
                         doc.get("max_detections"), doc.get("slice_size"),
                         float(doc.get("overlap", 0.2)))


def job_fields(job_id: str, image: bytes, options: DetectOptions, budget_s: float
               ) -> dict[str, bytes]:
    """The fields of one job's stream entry (module doc)."""
    return {"id": job_id.encode(), "image": image, "opts": orjson.dumps(options_doc(options)),
            "budget": f"{max(0.0, budget_s):.3f}".encode()}


@dataclass
class Job:
    """One job as a worker reads it."""

    entry: str  # the stream entry ID (``ms-seq``, Redis's clock)
    id: str
    image: bytes
    options: DetectOptions
    budget_s: float  # what was left of the request's deadline when it was added
    expires_ms: float  # when that is up, on Redis's clock (milliseconds)

    @classmethod
    def parse(cls, entry: bytes | str, fields: dict[bytes, bytes]) -> Job:
        """A job from its stream entry; RequestProblem 400 ``bad_request`` when malformed
        (then ``id`` may be unknown: the caller answers by ``fields.get(b"id")``)."""
        entry = entry.decode() if isinstance(entry, bytes) else entry
        try:
            budget = float(fields[b"budget"])
            added_ms = float(entry.split("-")[0])
            return cls(entry, fields[b"id"].decode(), fields[b"image"],
                       options_from_doc(orjson.loads(fields[b"opts"])), budget,
                       added_ms + 1e3 * budget)
        except (KeyError, ValueError, TypeError, orjson.JSONDecodeError) as e:
            raise RequestProblem(400, "bad_request", f"a malformed job ({e!r})",
                                 stage="queue") from e


# -- an answer -------------------------------------------------------------------------------
def outcome_reply(outcome: Outcome, width: int, height: int, decode_s: float, size: int,
                  reason: str, worker: str, busy_s: float) -> bytes:
    """A job's 200 answer: its detections (arrays) and what the worker measured."""
    d = outcome.detections
    doc = {"status": 200, "width": width, "height": height,
           "xyxy": d.xyxy.astype(np.float32), "labels": d.labels.astype(np.int64),
           "scores": None if d.scores is None else d.scores.astype(np.float32),
           "polygons": None if d.polygons is None else d.polygons.astype(np.float32),
           "decode_s": decode_s, "infer_s": outcome.infer_s, "post_s": outcome.post_s,
           "busy_s": busy_s, "batch_size": size, "reason": reason, "worker": worker,
           "extra": outcome.extra}
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def problem_reply(problem: RequestProblem, worker: str) -> bytes:
    """A job's error answer (the API's error shape, plus the worker's name)."""
    return orjson.dumps({**problem.body(), "worker": worker})


@dataclass
class Reply:
    """An answer as the web side reads it."""

    outcome: Outcome
    width: int
    height: int
    decode_s: float
    busy_s: float
    batch_size: int
    reason: str
    worker: str


def parse_reply(raw: bytes) -> Reply:
    """A 200 answer -> :class:`Reply`; an error answer raises its RequestProblem."""
    doc = orjson.loads(raw)
    err = doc.get("error")
    if err is not None:
        raise RequestProblem(int(err["status"]), err["code"], err["message"],
                             stage=err.get("stage"))
    xyxy = np.asarray(doc["xyxy"], np.float32).reshape(-1, 4)
    polys = doc.get("polygons")
    det = Detections(xyxy, np.asarray(doc["labels"], np.int64),
                     scores=None if doc["scores"] is None
                     else np.asarray(doc["scores"], np.float32),
                     polygons=None if polys is None
                     else np.asarray(polys, np.float32).reshape(-1, 4, 2))
    extra = dict(doc.get("extra") or {})
    extra["worker"] = doc["worker"]
    outcome = Outcome(det, float(doc["infer_s"]), float(doc["post_s"]), extra)
    return Reply(outcome, int(doc["width"]), int(doc["height"]), float(doc["decode_s"]),
                 float(doc["busy_s"]), int(doc["batch_size"]), str(doc["reason"]),
                 str(doc["worker"]))


#: answer one job, once, atomically (one round trip; safe to run again: idempotent).
#: KEYS: done, reply, jobs, dead, stats. ARGV: entry ID, group, answer, reply TTL, done TTL,
#: worker, dead-letter error ('' for none), deliveries, dead-letter max length, dead TTL.
#: The done marker (SET NX) makes a job answered twice (a reclaimed job whose first worker was
#: only slow) write one reply; XACK / XDEL run whatever (pcall: a Redis that lost the group
#: since the job was read must not stop the answer).
FINISH_LUA = """
local first = redis.call('SET', KEYS[1], ARGV[6], 'NX', 'EX', tonumber(ARGV[5]))
if first then
  redis.call('LPUSH', KEYS[2], ARGV[3])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
  redis.call('HINCRBY', KEYS[5], 'replies', 1)
  if ARGV[7] ~= '' then
    local found = redis.pcall('XRANGE', KEYS[3], ARGV[1], ARGV[1])
    local fields = {}
    if type(found) == 'table' and found[1] then fields = found[1][2] end
    table.insert(fields, 'error'); table.insert(fields, ARGV[7])
    table.insert(fields, 'deliveries'); table.insert(fields, ARGV[8])
    table.insert(fields, 'worker'); table.insert(fields, ARGV[6])
    table.insert(fields, 'entry'); table.insert(fields, ARGV[1])
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[9], '*', unpack(fields))
    redis.call('EXPIRE', KEYS[4], tonumber(ARGV[10]))
    redis.call('HINCRBY', KEYS[5], 'dead_lettered', 1)
  end
else
  redis.call('HINCRBY', KEYS[5], 'duplicates', 1)
end
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[10]))
redis.pcall('XACK', KEYS[3], ARGV[2], ARGV[1])
redis.pcall('XDEL', KEYS[3], ARGV[1])
if first then return 1 end
return 0
"""


def finish_args(keys: Keys, entry: str, job_id: str, answer: bytes, worker: str,
                dead_error: str = "", deliveries: int = 1) -> tuple[list[str], list[Any]]:
    """``(KEYS, ARGV)`` of :data:`FINISH_LUA` for one job."""
    return ([keys.done(job_id), keys.reply(job_id), keys.jobs, keys.dead, keys.stats],
            [entry, GROUP, answer, REPLY_TTL_S, DONE_TTL_S, worker, dead_error, deliveries,
             DEAD_MAXLEN, max(DEAD_TTL_S, STATS_TTL_S)])


__all__ = ["Keys", "Job", "Reply", "connect", "check_url", "redact", "is_down",
           "backend_unavailable", "job_fields", "outcome_reply", "problem_reply",
           "parse_reply", "FINISH_LUA", "finish_args", "GROUP", "default_worker_name"]
