"""`danlu bench serve`: the load generator, each server and the goals run on tiny inputs and
give well-formed rows whose flags are real booleans (no timing is asserted)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("httpx")

from benchmarks import _serve_load as load  # noqa: E402
from benchmarks import _serve_peers as peers  # noqa: E402
from benchmarks import serve as bench  # noqa: E402
from benchmarks.serve import GoalRow, LoadRow  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from tests._data_fixtures import train_tiny_checkpoint

    return train_tiny_checkpoint(tmp_path_factory.mktemp("bench_serve"))


@pytest.fixture(scope="module")
def jpegs():
    return load.jpeg_images(3, size=96, seed=1)


@pytest.fixture(scope="module")
def bodies(jpegs):
    return [load.multipart_body(j) for j in jpegs]


@pytest.fixture(autouse=True)
def _few_warm_requests(monkeypatch):
    monkeypatch.setattr(bench, "WARM_REQUESTS", 4)
    monkeypatch.setattr(bench, "WARM_CLIENTS", 2)


def _check_rows(rows, *, server_prefix: str):
    assert rows and all(isinstance(r, LoadRow) for r in rows)
    for r in rows:
        assert r.server.startswith(server_prefix)
        assert not r.skipped, r.note
        assert r.ok > 0 and r.requests >= r.ok and r.rps > 0
        assert r.p50 <= r.p90 <= r.p99
        assert r.mean_batch is not None and r.mean_batch >= 1
        assert isinstance(r.errors, dict)


def test_bodies_are_jpeg_multipart_uploads(jpegs, bodies):
    assert all(j[:2] == b"\xff\xd8" for j in jpegs)
    b = bodies[0]
    assert b.startswith(f"--{load.BOUNDARY}\r\n".encode()) and b'name="image"' in b
    assert jpegs[0] in b and b.endswith(f"--{load.BOUNDARY}--\r\n".encode())
    assert "multipart/form-data" in load.MULTIPART_HEADERS["Content-Type"]


def test_summarize_counts_statuses_batches_and_refusals():
    samples = [load.Sample(0.0, 0.010, 200, 2), load.Sample(0.0, 0.030, 200, 4),
               load.Sample(0.0, 0.020, 503, lag=0.015), load.Sample(0.0, 0.5, "timeout")]
    res = load.summarize(samples, 2.0, "open", None, 10.0)
    assert res.ok == 2 and res.requests == 4 and res.throughput == 1.0
    assert res.errors == {"503": 1, "timeout": 1}
    assert res.mean_batch == 3.0
    assert res.p50 == pytest.approx(0.020)
    assert res.error_latency["503"]["p50"] == pytest.approx(0.005)  # from the send
    empty = load.summarize([], 1.0, "closed", 1, None)
    assert empty.ok == 0 and math.isnan(empty.p50) and empty.mean_batch is None


def test_model_alone_rows(ckpt, jpegs):
    rows, info = bench.model_alone_rows(ckpt, jpegs, quick=True)
    assert len(rows) == 2 and all(isinstance(r, LoadRow) for r in rows)
    assert info["t1"] > 0 and info["t16"] > 0 and info["limit"] > 0 and info["decode"] > 0
    assert rows[1].mean_batch == bench.MAX_BATCH


def test_litserve_peer_serves_the_same_json(ckpt, bodies):
    pytest.importorskip("litserve")
    import httpx

    with peers.litserve_server(ckpt, 4, 0.005, bench.SCORE) as url:
        r = httpx.post(url, content=bodies[0], headers=load.MULTIPART_HEADERS,
                       timeout=60, trust_env=False)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert {"width", "height", "count", "detections", "batch_size"} <= set(doc)
        assert doc["width"] == 96 and doc["count"] == len(doc["detections"])
        res = load.closed_loop(url, bodies, 2, max_requests=6, max_seconds=30, warmup=2)
        assert res.ok == 6 and res.errors == {}
        rows = bench.closed_rows("closed loop", "LitServe (batch 4)", url, bodies, quick=True,
                                 concurrencies=(1, 2))
    _check_rows(rows, server_prefix="LitServe")
    assert [r.concurrency for r in rows] == ["1", "2"]


def test_litserve_rows_name_each_setting(monkeypatch, ckpt, bodies):
    def unavailable(*args, **kwargs):
        raise peers.PeerUnavailable("litserve is not installed (test)")

    monkeypatch.setattr(peers, "litserve_server", unavailable)
    rows = bench.litserve_rows(ckpt, bodies, quick=False)
    assert [r.case for r in rows] == ["closed loop, max batch 8, wait 5 ms",
                                      "closed loop, max batch 16, wait 5 ms"]
    assert all(r.skipped and "(test)" in r.note and "LitServe" in r.server for r in rows)


def test_flask_redis_baseline(ckpt, bodies):
    pytest.importorskip("flask")
    pytest.importorskip("redis")
    if peers.redis_server_path() is None:
        pytest.skip("redis-server is not on PATH")
    rows = bench.flask_rows(ckpt, bodies, quick=True, concurrencies=(2,))
    _check_rows(rows, server_prefix="Flask")
    assert "60 s" in rows[0].note


def test_a_missing_peer_is_a_skipped_row(monkeypatch, ckpt, bodies):
    monkeypatch.setattr(peers, "redis_server_path", lambda: None)
    (row,) = bench.flask_rows(ckpt, bodies, quick=True)
    assert row.skipped and "redis-server" in row.note and row.ok == 0


def test_ours_closed_and_overload_rows(ckpt, bodies):
    pytest.importorskip("danlu.serve.launch")
    rows = bench.ours_rows(ckpt, bodies, quick=True, concurrencies=(1, 2))
    _check_rows(rows, server_prefix="ours")
    (over,) = bench.overload_rows(ckpt, bodies, rate=60.0, seconds=0.5, max_queue=2)
    assert not over.skipped, over.note
    assert over.concurrency.startswith("open") and over.requests == 30
    assert set(over.errors) <= {"503"} and over.ok + over.errors.get("503", 0) == 30


def _fake_rows() -> tuple[list[LoadRow], dict]:
    info = {"t1": 0.030, "t16": 0.25, "limit": 64.0, "decode": 0.001}

    def row(server, conc, rps, p50, p99, batch=4.0):
        return LoadRow("closed loop", server, str(conc), 100, 100, rps, p50, p50, p99,
                       mean_batch=batch)

    rows = [row(bench.OURS, 1, 30.0, 0.033, 0.040, 1.0), row(bench.OURS, 16, 60.0, 0.26, 0.30),
            row("LitServe 0.2.19 (batch 8)", 16, 45.0, 0.32, 0.46),
            row("LitServe 0.2.19 (batch 16)", 16, 48.0, 0.33, 0.50),
            row(bench.FLASK, 1, 3.6, 0.50, 0.52, 1.0), row(bench.FLASK, 16, 20.0, 0.8, 1.0),
            LoadRow("overload: open loop at 2x saturation, --max-queue 16", bench.OURS,
                    "open 120/s", 600, 300, 60.0, 0.2, 0.3, 0.45, {"503": 300}, 15.0,
                    error_latency={"503": {"p50": 0.002, "p99": 0.004}})]
    return rows, info


def test_goals_are_judged_with_real_booleans(capsys):
    rows, info = _fake_rows()
    goals = bench.goal_rows(rows, info, (1, 16))
    assert all(isinstance(g, GoalRow) and isinstance(g.met, bool) for g in goals)
    assert len(goals) == 6 and not any(g.skipped for g in goals)
    sat = next(g for g in goals if g.goal.startswith("saturation"))
    assert sat.met is True  # 60 >= 0.9 * 64
    lit = next(g for g in goals if "LitServe" in g.goal)
    assert lit.met is True and "batch 16" in lit.note  # the better LitServe is the one named
    p50 = next(g for g in goals if g.goal.startswith("p50 with one client"))
    assert p50.met is True  # 33 ms <= 30 + 5
    refused, admitted = [g for g in goals if "2x capacity" in g.goal]
    assert refused.met is True and admitted.met is True  # 4 ms; 450 ms <= 2 x 250
    flask = next(g for g in goals if "Flask" in g.goal)
    assert flask.met is True and "16:" in flask.note  # 33 ms * 10 <= 500 ms
    bench.report(rows + goals)
    bench.report(rows + goals, as_json=True)
    out = capsys.readouterr().out
    assert "MISSED" not in out.split('"goals"')[0] and "met" in out and '"goals"' in out


def test_missing_sides_give_skipped_goals():
    rows, info = _fake_rows()
    rows = [r for r in rows if not r.server.startswith(("LitServe", "Flask"))]
    rows.append(LoadRow("closed loop", bench.FLASK, "-", note="skipped: no redis-server",
                        skipped="redis-server is not on PATH"))
    goals = bench.goal_rows(rows, info, (1, 16))
    skipped = [g for g in goals if g.skipped]
    assert {("LitServe" in g.goal) or ("Flask" in g.goal) for g in skipped} == {True}
    assert any("redis-server" in g.skipped for g in skipped)
    assert all(g.met is False for g in skipped)


def test_ours_not_running_is_a_miss_not_a_skip():
    rows, info = _fake_rows()
    rows = [r for r in rows if r.server != bench.OURS]
    rows.append(LoadRow("closed loop", bench.OURS, "-", note="skipped: FAILED",
                        skipped="FAILED: ServeError: boom"))
    goals = bench.goal_rows(rows, info, (1, 16))
    assert all(g.met is False for g in goals)
    assert not any(g.skipped for g in goals)
    assert all("boom" in g.note or "not run" in g.note for g in goals)


# -- the scale-out variants (--redis, --ray) --------------------------------------------------
def _load_row(server, conc, rps, p50):
    return LoadRow("closed loop", server, str(conc), 100, 100, rps, p50, p50, p50)


def test_the_redis_goal_reads_its_rows(capsys):
    """``danlu bench serve --redis``: the goal and the throughput ratios from its rows."""
    from benchmarks import _serve_scaleout as scaleout

    b = scaleout.backends()["redis"]
    rows = [_load_row(bench.OURS, 1, 40.0, 0.0230), _load_row(b.first, 1, 39.0, 0.0245),
            _load_row(bench.OURS, 16, 70.0, 0.2), _load_row(b.first, 16, 66.0, 0.21),
            _load_row(b.one, 16, 50.0, 0.3), _load_row(b.two, 16, 80.0, 0.2)]
    (goal,) = scaleout.goal_rows(b, rows)
    assert goal.met is True and "+1.5 ms" in goal.measured
    assert "0.94x in-process" in goal.note and "1.60x" in goal.note
    rows[1] = _load_row(b.first, 1, 30.0, 0.0300)
    assert scaleout.goal_rows(b, rows)[0].met is False  # +7 ms
    bench.report(rows + [goal])
    assert "Redis Streams workers" in capsys.readouterr().out


def test_the_ray_figure_is_reported_not_judged(capsys):
    from benchmarks import _serve_scaleout as scaleout

    b = scaleout.backends()["ray"]
    assert b.added_p50_goal is None and b.two == "ours over Ray Serve (2 replicas, 1 CPU each)"
    rows = [_load_row(bench.OURS, 1, 40.0, 0.0230), _load_row(b.first, 1, 30.0, 0.0350)]
    (goal,) = scaleout.goal_rows(b, rows)
    assert goal.met is None and "+12 ms" in goal.measured and "reported" in goal.target
    bench.report(rows + [goal])
    out = capsys.readouterr().out
    assert "Ray Serve replicas" in out and "reported" in out and "MISSED" not in out
    skipped = [LoadRow("closed loop", b.first, "-", skipped="Ray Serve is not installed")]
    (goal,) = scaleout.goal_rows(b, skipped)
    assert goal.skipped == "Ray Serve is not installed" and goal.met is False


def test_the_variant_flags_belong_to_bench_serve(capsys):
    from danlu.cli.main import main

    assert main(["bench", "boxes", "--redis"]) == 2
    assert "no --redis variant" in capsys.readouterr().err
    assert main(["bench", "serve", "--redis", "--ray"]) == 2
    assert "choose one" in capsys.readouterr().err
