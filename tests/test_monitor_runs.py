"""``danlu runs list | show | control`` against real ``danlu train`` processes (issue 16).

* with ``--monitor`` (no port: a free one), ``runs control`` finds the monitor through
  ``monitor.json`` and its commands are applied and written to the history with source cli;
* without a monitor, the commands travel through the run's ``control.jsonl``;
* a stopped run exits 0 and lists as stopped, a finished one as finished, and one killed with
  SIGKILL as crashed, not as running forever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from danlu.data.io import save_dataset
from danlu.data.synth import synthesize

TRAIN = ["--model", "fcos-tiny", "--batch", "4", "--img-size", "64", "--device", "cpu",
         "--val-split", "0.25", "--no-plots", "--no-final-eval", "--workers", "0"]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def danlu(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "danlu", *map(str, args)], env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def start(project: Path, name: str, data: Path, *extra: str) -> subprocess.Popen:
    log = open(project.parent / f"{name}.log", "w")  # noqa: SIM115 - the process owns it
    return subprocess.Popen([sys.executable, "-m", "danlu", "--quiet", "train", "--data",
                             str(data), "--project", str(project), "--name", name, *TRAIN,
                             *extra], env=_env(), stdout=log, stderr=subprocess.STDOUT)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert proc.poll() is None, f"the run ended early ({proc.returncode}) waiting for {what}"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def listed(project: Path) -> dict[str, dict]:
    r = danlu("runs", "list", project, "--json")
    assert r.returncode == 0, r.stderr
    return {run["name"]: run for run in orjson.loads(r.stdout)}


def epochs_done(run: Path) -> int:
    path = run / "results.csv"
    return len(path.read_text().splitlines()) - 1 if path.is_file() else 0


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = synthesize("shapes", num_images=12, seed=3, image_size=(64, 64), scale_range=(12, 28))
    return save_dataset(ds, tmp_path_factory.mktemp("runsdata") / "shapes", "coco")


def test_runs_control_through_the_monitor_then_list_and_show(tmp_path, data):
    project = tmp_path / "runs"
    run = project / "live"
    proc = start(project, "live", data, "--epochs", "500", "--monitor")
    try:
        wait_for(lambda: (run / "monitor.json").is_file() and epochs_done(run) >= 1, proc,
                 what="the monitor and a first epoch")
        assert (run / "monitor.json").stat().st_mode & 0o777 == 0o600
        live = listed(project)["live"]
        assert live["status"] == "running" and live["monitor"].startswith("http://127.0.0.1:")

        r = danlu("runs", "control", run, "--set", "lr=0.001", "--pause", "--json")
        assert r.returncode == 0, r.stderr
        answers = orjson.loads(r.stdout)
        assert [a["via"] for a in answers] == ["monitor", "monitor"]
        assert all(a["applied"] for a in answers)
        assert listed(project)["live"]["detail"] == "paused"

        r = danlu("runs", "control", run, "--resume", "--stop")
        assert r.returncode == 0, r.stderr
        assert "stop: applied after step" in r.stderr
        assert proc.wait(timeout=240) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (run / "monitor.json").exists()
    assert listed(project)["live"]["status"] == "stopped"

    plot = tmp_path / "curves.png"
    r = danlu("runs", "show", run, "--plot", plot, "--json")
    assert r.returncode == 0, r.stderr
    shown = orjson.loads(r.stdout)
    assert shown["status"] == "stopped" and shown["config"]["model"] == "fcos-tiny"
    controls = [(h["action"], h["source"]) for h in shown["history"] if h["event"] == "control"]
    assert controls == [("set", "cli"), ("pause", "cli"), ("resume", "cli"), ("stop", "cli")]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = danlu("runs", "show", run)
    assert r.returncode == 0 and "stopped" in r.stderr and "history" in r.stderr
    r = danlu("runs", "control", run, "--stop")
    assert r.returncode == 2 and "not running" in r.stderr


def test_without_a_monitor_commands_go_through_the_control_file(tmp_path, data):
    project = tmp_path / "runs"
    run = project / "quiet"
    proc = start(project, "quiet", data, "--epochs", "500")
    try:
        wait_for(lambda: (run / "status.json").is_file() and epochs_done(run) >= 1, proc,
                 what="a first epoch")
        r = danlu("runs", "control", run, "--pause", "--json")
        assert r.returncode == 0, r.stderr
        assert orjson.loads(r.stdout)[0]["via"] == "file"
        r = danlu("runs", "control", run, "--set", "eval_every=2", "--resume", "--stop")
        assert r.returncode == 0, r.stderr
        assert proc.wait(timeout=240) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert listed(project)["quiet"]["status"] == "stopped"
    history = [orjson.loads(line) for line in (run / "history.jsonl").read_bytes().splitlines()]
    assert [h["action"] for h in history if h["event"] == "control"] == \
        ["pause", "set", "resume", "stop"]


def test_a_killed_run_lists_as_crashed_and_a_finished_one_as_finished(tmp_path, data):
    project = tmp_path / "runs"
    r = danlu("--quiet", "train", "--data", data, "--project", project, "--name", "done",
              *TRAIN, "--epochs", "1", "--max-steps", "2")
    assert r.returncode == 0, r.stderr
    run = project / "doomed"
    proc = start(project, "doomed", data, "--epochs", "500")
    try:
        wait_for(lambda: (run / "status.json").is_file(), proc, what="the status file")
        assert listed(project)["doomed"]["status"] == "running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    runs = listed(project)
    assert runs["done"]["status"] == "finished" and runs["done"]["detail"] == "max_steps"
    assert runs["doomed"]["status"] == "crashed"
    r = danlu("runs", "list", project)
    assert r.returncode == 0 and "crashed" in r.stderr and "finished" in r.stderr
    r = danlu("runs", "control", run, "--pause")
    assert r.returncode == 2 and "crashed" in r.stderr and "--resume" in r.stderr


def test_a_public_monitor_without_a_token_is_refused_before_training(tmp_path, data):
    env = {k: v for k, v in _env().items() if k != "DANLU_MONITOR_TOKEN"}
    project = tmp_path / "runs"
    args = [sys.executable, "-m", "danlu", "train", "--data", str(data), "--project",
            str(project), "--name", "x", *TRAIN, "--monitor", "--monitor-host", "0.0.0.0"]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "needs --monitor-token" in r.stderr, r.stderr
    assert not project.exists()  # nothing started
    r = subprocess.run([*args[:-3], "--notify-every", "5"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "--notify-every needs --notify" in r.stderr, r.stderr


def test_the_config_shown_is_the_one_a_resume_rewrote(tmp_path):
    """``danlu train --resume RUN --epochs 8`` rewrites config.yaml; history.jsonl keeps the
    first session's ``start`` (epochs 30), which ``runs show`` used to print."""
    import orjson

    from danlu.monitor.runs import run_info
    from danlu.train.config import TrainConfig

    run = tmp_path / "run"
    run.mkdir()
    first = TrainConfig(epochs=30, batch=4)
    lines = [{"time": 1.0, "event": "start", "epoch": 0, "step": 0, "config": first.to_dict()},
             {"time": 2.0, "event": "resumed", "epoch": 3, "step": 119},
             {"time": 2.0, "event": "extended", "epoch": 3, "step": 119, "epochs": 8, "was": 30}]
    (run / "history.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    assert run_info(run).config["epochs"] == 30  # no config.yaml: the start event's
    first.merged({"epochs": 8}).save(run / "config.yaml")
    info = run_info(run)
    assert info.config["epochs"] == 8 and info.config["batch"] == 4 and info.total_epochs == 8
    (run / "config.yaml").write_text("{not: yaml: at all")
    assert run_info(run).config["epochs"] == 30  # unreadable: the start event's again


def test_runs_list_to_a_pipe_is_not_cut_to_80_columns(tmp_path):
    import orjson

    from danlu.train.config import TrainConfig

    run = tmp_path / "runs" / "a-run-with-a-long-name"
    run.mkdir(parents=True)
    start_event = {"time": 1.8e9, "event": "start", "epoch": 0, "step": 0,
                   "config": TrainConfig(model="fcos-resnet50-fpn").to_dict()}
    (run / "history.jsonl").write_bytes(orjson.dumps(start_event) + b"\n")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    r = subprocess.run([sys.executable, "-m", "danlu", "runs", "list", str(tmp_path / "runs")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "a-run-with-a-long-name" in r.stderr and "fcos-resnet50-fpn" in r.stderr
    assert "…" not in r.stderr
