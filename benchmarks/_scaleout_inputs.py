"""The measured inputs of the scale-out worked out on paper in docs/deploy.md ("Scale-out on
paper"): ``python -m benchmarks._scaleout_inputs [--quick]`` prints each symbol's value on this
machine, with how it was measured.

* **t_0, t_1** (model time of a batch of b: t_0 + b·t_1): ``danlu.Predictor`` on the CPU, the
  serve benchmark's model and JPEGs (``benchmarks/serve.py``), the median of calls at b = 1 and
  b = 16 (letterbox, forward, decoding, NMS; no JPEG decode);
* **t_dec**: ``danlu.infer.images.read_image`` of one JPEG;
* **P, A**: the mean upload (the JPEG, as the job carries it) and the mean JSON answer of
  ``danlu serve --redis`` for those JPEGs;
* **r**: the mean of 2,000 sequential PINGs to a ``redis-server`` on loopback;
* **Redis time per command** (the inverse of its rate; redis-benchmark, 16 pipelined, 50
  clients): XADD of a P-byte job, XLEN, LPUSH + LPOP of an A-byte reply (BLPOP on a ready list
  costs an LPOP), the worker's answering script sent as EVAL (its body every time) and as
  EVALSHA;
* **b̄, c_req, Redis per request**: ``danlu serve --redis`` with one worker under 16
  closed-loop clients: the mean batch the answers report, the web process's CPU seconds
  (``/proc``) per answer, and from Redis's own ``INFO commandstats`` (reset before the
  measured run) the commands and the microseconds of command execution per answer (this
  leaves out Redis's network reading and writing, which the redis-benchmark rates include),
  and the ``redis-server`` process's own CPU time per answer (``/proc``: all of it).

The figures depend on this machine (2 cores shared by Redis, the clients and the servers):
docs/deploy.md says which are portable.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmarks import _serve_load as load
from benchmarks import _serve_peers as peers
from benchmarks import serve as base


def model_times(ckpt: Path, jpegs: list[bytes], quick: bool) -> dict[str, float]:
    """t_0, t_1 and t_dec in seconds, from the serve benchmark's model-alone measurement
    (``benchmarks/serve.py``: batch 1 and batch 16)."""
    _, m = base.model_alone_rows(ckpt, jpegs, quick)
    t_1 = (m["t16"] - m["t1"]) / (base.MAX_BATCH - 1)
    return {"t_0": m["t1"] - t_1, "t_1": t_1, "t(1)": m["t1"], "t(16)": m["t16"],
            "t_dec": m["decode"]}


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[int, int]]:
    """A ``redis-server`` on a free loopback port: ``(port, pid)``."""
    proc, port = peers.start_redis()
    try:
        yield port, proc.pid
    finally:
        peers.stop(proc)


def round_trip(port: int, n: int = 2000) -> float:
    import redis

    r = redis.Redis(port=port)
    r.ping()
    t0 = time.perf_counter()
    for _ in range(n):
        r.ping()
    return (time.perf_counter() - t0) / n


def _bench(port: int, n: int, *command: str) -> float:
    """redis-benchmark's rate (requests/s) for one command, 16 pipelined."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        raise SystemExit("redis-benchmark is not on PATH (Debian: redis-tools)")
    out = subprocess.run([exe, "-p", str(port), "-n", str(n), "-P", "16", "-r", "1000000",
                          "-q", *command], capture_output=True, text=True, check=True).stdout
    rates = re.findall(r"([\d.]+) requests per second", out)
    return float(rates[-1])


def command_times(port: int, payload: int, answer: int, quick: bool) -> dict[str, float]:
    """Redis's time per command, in seconds (module doc)."""
    import redis

    from danlu.serve import redis_queue as rq

    n = 20_000 if quick else 200_000
    job, reply = "j" * payload, "a" * answer
    r = redis.Redis(port=port)
    sha = r.script_load(rq.FINISH_LUA)
    keys = ["d:__rand_int__", "r:__rand_int__", "jobs", "dead", "stats"]
    args = ["0-1", rq.GROUP, reply, "60", "600", "w1", "", "1", "1000", "3600"]
    times = {
        "XADD (P)": 1 / _bench(port, n, "XADD", "bench:jobs", "MAXLEN", "~", "100000", "*",
                               "image", job),
        "XLEN": 1 / _bench(port, n, "XLEN", "bench:jobs"),
        "LPUSH (A)": 1 / _bench(port, n, "LPUSH", "bench:reply", reply),
        "LPOP (A)": 1 / _bench(port, n, "LPOP", "bench:reply"),
        "EVAL finish": 1 / _bench(port, n, "EVAL", rq.FINISH_LUA, "5", *keys, *args),
        "EVALSHA finish": 1 / _bench(port, n, "EVALSHA", sha, "5", *keys, *args),
    }
    r.flushall()
    return times


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_figures(ckpt: Path, bodies: list[bytes], port: int, redis_pid: int,
                    quick: bool) -> dict:
    """b̄, c_req and A from ``danlu serve --redis`` with one worker (module doc)."""
    import httpx
    import redis

    from danlu.serve.launch import ServerProcess, WorkerProcess

    url = f"redis://127.0.0.1:{port}/0"
    args = ["--max-batch", str(base.MAX_BATCH), "--max-wait-ms", str(base.MAX_WAIT_MS),
            "--device", "cpu"]
    with ServerProcess(ckpt, ["--redis", url, "--score-threshold", str(base.SCORE)]) as web, \
            WorkerProcess(ckpt, url, args):
        for _ in range(600):
            r = httpx.get(web.url + "/readyz", timeout=10, trust_env=False)
            if r.status_code == 200 and r.json()["workers"]:
                break
            time.sleep(0.05)
        detect = web.url.rstrip("/") + "/v1/detect"
        answers = [len(httpx.post(detect, content=b, timeout=60, trust_env=False,
                                  headers=load.MULTIPART_HEADERS).content) for b in bodies]
        base.warm(detect, bodies, quick)
        assert web.pid is not None
        db = redis.Redis(port=port)
        db.config_resetstat()
        cpu0, redis0 = _cpu_seconds(web.pid), _cpu_seconds(redis_pid)
        res = load.closed_loop(detect, bodies, 16, max_requests=100 if quick else 1000,
                               max_seconds=5 if quick else 30)
        cpu, redis_cpu = _cpu_seconds(web.pid) - cpu0, _cpu_seconds(redis_pid) - redis0
        stats = db.info("commandstats")
    # one XADD per request, the load generator's warm-up included (res.ok leaves it out)
    sent = max(stats.get("cmdstat_xadd", {}).get("calls", 0), 1)
    per_command = {name.removeprefix("cmdstat_"): (v["calls"] / sent, v["usec"] / sent)
                   for name, v in stats.items() if name != "cmdstat_config|resetstat"}
    return {"A": statistics.mean(answers), "b_mean": res.mean_batch, "c_req": cpu / sent,
            "redis_cpu": redis_cpu / sent,
            "rps": res.throughput, "seconds": res.seconds, "per_command": per_command}


def main(quick: bool = False) -> None:
    from benchmarks import _predict_scene as scene_mod

    ckpt = scene_mod.model_checkpoint(quick)
    jpegs = load.jpeg_images(base.settings(quick)["images"])
    bodies = [load.multipart_body(j) for j in jpegs]
    payload = int(np.mean([len(j) for j in jpegs]))
    m = model_times(ckpt, jpegs, quick)
    with redis_server() as (port, pid):
        rtt = round_trip(port)
        svc = service_figures(ckpt, bodies, port, pid, quick)
        cmds = command_times(port, payload, int(svc["A"]), quick)
    print(f"t(1) = {m['t(1)'] * 1e3:.1f} ms, t(16) = {m['t(16)'] * 1e3:.1f} ms -> "
          f"t_0 = {m['t_0'] * 1e3:.1f} ms, t_1 = {m['t_1'] * 1e3:.2f} ms per image")
    print(f"t_dec = {m['t_dec'] * 1e3:.2f} ms per {base.settings(quick)['images']}-image mean")
    print(f"P = {payload / 1e3:.1f} KB (JPEG 256 x 256), A = {svc['A'] / 1e3:.2f} KB")
    print(f"r = {rtt * 1e3:.3f} ms (loopback, sequential PING)")
    print(f"b_mean = {svc['b_mean']:.1f} at 16 clients, one worker ({svc['rps']:.1f} req/s); "
          f"c_req = {svc['c_req'] * 1e3:.2f} ms of web CPU per request")
    for name, t in cmds.items():
        print(f"Redis {name:22} {t * 1e6:7.2f} us  ({1 / t:9,.0f} /s)")
    calls = sum(c for c, _ in svc["per_command"].values())
    usec = sum(u for _, u in svc["per_command"].values())
    print(f"Redis under the service's load, per answered request ({svc['seconds']:.0f} s, "
          f"heartbeats and monitors included): {calls:.2f} commands, {usec:.1f} us of "
          f"command execution; {svc['redis_cpu'] * 1e6:.0f} us of redis-server CPU (/proc: "
          "execution, network, the event loop)")
    for name, (c, u) in sorted(svc["per_command"].items(), key=lambda kv: -kv[1][1]):
        print(f"    {name:14} {c:6.3f} calls  {u:7.2f} us")

if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
