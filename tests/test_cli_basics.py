"""The command line: version, help, errors, doctor, bench."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from danlu.cli.main import main
from danlu.doctor import cpu_path_works, run_checks


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "danlu.cli.main", *args],
                          capture_output=True, text=True, timeout=600)


def test_version_and_help():
    r = _run("--version")
    assert r.returncode == 0 and r.stdout.startswith("danlu ")
    r = _run("--help")
    assert r.returncode == 0 and "doctor" in r.stdout and "bench" in r.stdout


def test_unknown_command_is_usage_error():
    r = _run("no-such-command")
    assert r.returncode == 2


def test_danlu_error_is_one_line_exit_2_and_debug_shows_traceback():
    r = _run("bench", "no-such-benchmark")
    assert r.returncode == 2
    assert r.stderr.startswith("error: no benchmark named 'no-such-benchmark'")
    assert "Traceback" not in r.stderr
    r = _run("--debug", "bench", "no-such-benchmark")
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_doctor_json_checks_for_real():
    r = _run("doctor", "--json")
    assert r.returncode == 0, r.stderr
    doc = orjson.loads(r.stdout)
    names = {c["name"]: c for c in doc["checks"]}
    assert doc["cpu_path_works"] is True
    for name in ("python", "torch", "torchvision", "kornia", "cuda", "cpu threads",
                 "conv cpu", "redis-server", "chromium"):
        assert name in names
    assert names["conv cpu"]["data"]["seconds"] > 0
    for c in doc["checks"]:
        if c["status"] in ("warn", "fail"):
            assert c["hint"], c


def test_doctor_reports_a_broken_cpu_path(monkeypatch):
    import danlu.doctor as doctor

    def broken(device: str) -> float:
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(doctor, "conv_smoke", broken)
    checks = run_checks()
    conv = next(c for c in checks if c.name == "conv cpu")
    assert conv.status == "fail" and conv.hint
    assert not cpu_path_works(checks)
    with pytest.raises(SystemExit) as exc:
        sys.exit(main(["doctor"]))
    assert exc.value.code == 1


def test_bench_lists_benchmarks():
    r = _run("bench")
    assert r.returncode == 0
    assert "boxes" in r.stdout.split()
