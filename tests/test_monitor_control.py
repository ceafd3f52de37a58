"""Steering a real training run through the monitor's HTTP API (issue 16).

A tiny run trains in a thread of this process while the test talks to its monitor over
loopback HTTP: ``set lr`` changes the optimizer's learning rate at the next step, ``pause``
stops the steps until ``resume``, ``save`` writes ``last.pt`` where it is, ``stop`` ends the
run with a mid-epoch ``last.pt``; every action is in ``history.jsonl`` with its source, the
changed lr and eval interval survive a resume, and a stopped run resumes exactly (every
tensor equal to the uninterrupted run's, as in tests/test_resume_sigkill.py).
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import torch

import danlu
from danlu.data.synth import synthesize
from danlu.errors import ConfigError
from danlu.monitor import Monitor
from danlu.train.callbacks import Callback
from danlu.train.checkpoint import load_checkpoint
from danlu.train.control import Decision, parse_command, set_lr
from danlu.train.schedule import LRSchedule

TINY = dict(model="fcos-tiny", batch=4, img_size=64, device="cpu", plots=False,
            verbose=False, progress=False, augment="none", workers=0)


def _shapes(n: int = 12, seed: int = 2):
    return synthesize("shapes", num_images=n, seed=seed, image_size=(64, 64),
                      scale_range=(12, 28), encode=False)


def _history(run: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (run / "history.jsonl").read_bytes().splitlines()]


class Recorder(Callback):
    """The learning rate of every step, as the optimizer held it."""

    def __init__(self) -> None:
        self.lrs: dict[int, float] = {}

    def on_step(self, trainer, logs):
        group = trainer.optimizer.param_groups[0]
        self.lrs[trainer.step] = group["lr"] / group.get("lr_scale", 1.0)


class Background:
    """``danlu.train`` in a thread; ``result`` / ``error`` once it ends."""

    def __init__(self, **kwargs: Any) -> None:
        self.result = self.error = None
        self.thread = threading.Thread(target=self._run, kwargs=kwargs, daemon=True)
        self.thread.start()

    def _run(self, **kwargs: Any) -> None:
        try:
            self.result = danlu.train(**kwargs)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def join(self, timeout: float = 300) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not end"
        if self.error is not None:
            raise self.error
        return self.result


def post(url: str, doc: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(url + "api/control", json=doc, headers=headers, timeout=60)


def state(url: str) -> dict[str, Any]:
    return httpx.get(url + "api/state", timeout=30).json()["state"]


def wait_for(predicate, timeout: float = 120.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_http_api_steers_a_real_run_and_the_changes_survive_a_resume(tmp_path):
    out = tmp_path / "run"
    rec = Recorder()
    mon = Monitor(port=0).start()
    url = mon.url
    bg = Background(data=_shapes(), epochs=60, out=out, val_split=0.25, schedule="constant",
                    warmup_epochs=0, lr=2e-3, final_eval=False, callbacks=[mon, rec], **TINY)
    try:
        wait_for(lambda: state(url).get("step", 0) >= 2, what="two steps")
        assert (out / "monitor.json").stat().st_mode & 0o777 == 0o600
        # the run's batch size stays the batch size once steps arrive (a step used to
        # overwrite it with the batch's index in its epoch)
        s = state(url)
        assert s["batch"] == TINY["batch"] and 1 <= s["batch_in_epoch"] <= s["step"]

        # set lr: the next step runs at the new rate, the steps before at the old one
        r = post(url, {"action": "set", "key": "lr", "value": 5e-4, "wait": 30})
        assert r.status_code == 200, r.text
        k = r.json()["step"]
        wait_for(lambda: k + 1 in rec.lrs, what="the step after the change")
        assert rec.lrs[k] == pytest.approx(2e-3) and rec.lrs[k + 1] == pytest.approx(5e-4)

        # pause: no step while paused; resume: steps again
        r = post(url, {"action": "pause", "wait": 30, "source": "page"})
        assert r.status_code == 200, r.text
        paused_at = r.json()["step"]
        time.sleep(1.5)
        s = state(url)
        assert s["step"] == paused_at and s["status"] == "paused"
        assert max(rec.lrs) <= paused_at
        r = post(url, {"action": "resume", "wait": 30})
        assert r.status_code == 200, r.text
        wait_for(lambda: state(url)["step"] > paused_at + 1, what="steps after resume")

        # eval interval and an immediate checkpoint
        r = post(url, {"action": "set", "key": "eval_every", "value": 3, "wait": 30})
        assert r.status_code == 200 and state(url)["eval_every"] == 3
        r = post(url, {"action": "save", "wait": 30})
        assert r.status_code == 200, r.text
        saved_at = r.json()["step"]

        # stop after the current step, with last.pt written there
        r = post(url, {"action": "stop", "wait": 30})
        assert r.status_code == 200, r.text
        stopped_at = r.json()["step"]
        result = bg.join()
    finally:
        mon.close()
    assert result.stop_reason == "stopped" and result.steps == stopped_at
    assert not (out / "monitor.json").exists()

    events = _history(out)
    controls = [(e["action"], e.get("key"), e["source"], e["step"]) for e in events
                if e["event"] == "control"]
    assert controls == [("set", "lr", "api", k), ("pause", None, "page", paused_at),
                        ("resume", None, "api", paused_at), ("set", "eval_every", "api",
                                                             controls[3][3]),
                        ("save", None, "api", saved_at), ("stop", None, "api", stopped_at)]
    saves = [e for e in events if e["event"] == "checkpoint" and e["step"] == saved_at
             and e["path"] == "last.pt"]
    assert saves, "save wrote no last.pt at its step"
    assert events[-1]["event"] == "end" and events[-1]["reason"] == "stopped"

    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["train"]["step"] == stopped_at
    assert ckpt["train"]["eval_every"] == 3
    assert ckpt["train"]["scheduler"]["base_lr"] == pytest.approx(5e-4)

    # resumed: the changed lr and eval interval hold from the first step on
    rec2 = Recorder()
    res = danlu.train(_shapes(), resume=out, max_steps=stopped_at + 2, callbacks=[rec2],
                      verbose=False, progress=False)
    assert res.steps == stopped_at + 2
    assert rec2.lrs[stopped_at + 1] == pytest.approx(5e-4)
    assert load_checkpoint(out / "last.pt")["train"]["eval_every"] == 3


class StopAt(Callback):
    """Sends ``stop`` through the HTTP API from inside step ``step`` (a deterministic moment:
    the command is then applied right after that step)."""

    def __init__(self, monitor: Monitor, step: int) -> None:
        self.monitor, self.step = monitor, step

    def on_step(self, trainer, logs):
        if trainer.step == self.step:
            r = post(self.monitor.url, {"action": "stop"})
            assert r.status_code == 202, r.text


def _same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"tensors differ at {where}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")


def test_a_run_stopped_mid_epoch_resumes_exactly(tmp_path):
    data = _shapes(16, seed=3)  # 12 training images, batch 4: 3 steps an epoch
    options = dict(epochs=2, val_split=0.25, seed=1, deterministic=True, final_eval=False,
                   **TINY)
    danlu.train(data, out=tmp_path / "full", **options)

    mon = Monitor(port=0).start()
    try:
        stopped = danlu.train(data, out=tmp_path / "part", callbacks=[mon, StopAt(mon, 2)],
                              **options)
    finally:
        mon.close()
    assert stopped.stop_reason == "stopped" and stopped.steps == 2
    part = load_checkpoint(tmp_path / "part" / "last.pt")
    assert part["train"]["batch_in_epoch"] == 2 and part["train"]["epoch"] == 0
    assert not (tmp_path / "part" / "results.csv").exists() or \
        len((tmp_path / "part" / "results.csv").read_text().splitlines()) <= 1

    danlu.train(data, resume=tmp_path / "part", verbose=False, progress=False)
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    resumed = load_checkpoint(tmp_path / "part" / "last.pt")
    assert resumed["train"]["step"] == full["train"]["step"] == 6
    for key in ("model", "ema", "optimizer", "scheduler", "sampler"):
        _same(full["train"][key], resumed["train"][key], key)
    _same(full["model"], resumed["model"], "model")

    def rows(run):
        lines = (run / "results.csv").read_text().splitlines()
        header = lines[0].split(",")
        drop = {header.index(k) for k in ("epoch_time", "val_time", "elapsed")}
        return [[v for i, v in enumerate(line.split(",")) if i not in drop] for line in lines]

    assert rows(tmp_path / "full") == rows(tmp_path / "part")


def test_commands_are_checked_and_access_is_guarded():
    mon = Monitor(port=0).start()
    try:
        url = mon.url
        r = post(url, {"action": "stop"})
        assert r.status_code == 409 and "not started" in r.json()["error"]["message"]
        for bad in ({"action": "explode"}, {"action": "set", "key": "lr", "value": -1},
                    {"action": "set", "key": "batch", "value": 8},
                    {"action": "stop", "source": "somebody else"}):
            r = post(url, bad)
            assert r.status_code == 400, (bad, r.text)
        r = httpx.post(url + "api/control", content=b"action=stop", timeout=30,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 415  # a cross-site form cannot send JSON
        r = httpx.get(url + "api/state", headers={"Host": "evil.example:80"}, timeout=30)
        assert r.status_code == 401  # DNS rebinding: another name for the loopback address
        assert httpx.get(url + "api/state", timeout=30).status_code == 200
    finally:
        mon.close()

    mon = Monitor(port=0, token="s3cret").start()
    try:
        url = mon.url
        assert httpx.get(url, timeout=30).status_code == 200  # the page itself
        assert httpx.get(url + "api/state", timeout=30).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert httpx.get(url + "api/state", headers=ok, timeout=30).status_code == 200
        assert post(url, {"action": "stop"}).status_code == 401
        assert post(url, {"action": "stop"}, Authorization="Bearer wrong").status_code == 401
        assert post(url, {"action": "stop"}, **ok).status_code == 409
        own = {"Authorization": f"Bearer {mon.secret}"}  # what danlu runs control sends
        assert httpx.get(url + "api/state", headers=own, timeout=30).status_code == 200
        login = httpx.post(url + "api/login", json={"token": "s3cret"}, timeout=30)
        assert login.status_code == 200 and "HttpOnly" in login.headers["set-cookie"]
        cookie = login.headers["set-cookie"].split(";")[0]
        assert httpx.get(url + "api/state", headers={"Cookie": cookie},
                         timeout=30).status_code == 200
        assert httpx.post(url + "api/login", json={"token": "nope"},
                          timeout=30).status_code == 401
    finally:
        mon.close()


def test_a_public_address_needs_a_token():
    with pytest.raises(ConfigError, match="monitor-token"):
        Monitor(port=0, host="0.0.0.0")
    Monitor(port=0, host="0.0.0.0", token="t").close()  # with one it is fine


def test_set_lr_makes_the_next_step_run_at_that_rate_and_keeps_the_shape():
    class T:
        step = 30
        schedule = LRSchedule(1e-2, total_steps=100, warmup_steps=10, kind="cosine",
                              min_lr_ratio=0.05)

    t = T()
    before = [t.schedule.lr(s) for s in (30, 60, 90)]
    set_lr(t, 1e-3)
    assert t.schedule.lr(30) == pytest.approx(1e-3)
    after = [t.schedule.lr(s) for s in (30, 60, 90)]
    for a, b in zip(before, after, strict=True):
        assert b / a == pytest.approx(after[0] / before[0])  # the same curve, scaled


def test_decisions_travel_as_five_numbers_and_commands_are_parsed():
    d = Decision()
    for doc in ({"action": "set", "key": "lr", "value": "1e-4"}, {"action": "pause"},
                {"action": "set", "key": "eval_every", "value": 2.0}, {"action": "resume"},
                {"action": "save"}):
        d.fold(parse_command(doc))
    back = Decision.from_list(d.to_list())
    assert back == d and back.paused is False and back.lr == 1e-4 and back.eval_every == 2
    empty = Decision.from_list(Decision().to_list())
    assert empty == Decision() and math.isnan(Decision().to_list()[3])
    with pytest.raises(ConfigError):
        parse_command({"action": "set", "key": "eval_every", "value": 1.5})
    assert parse_command({"action": "stop"}, source="chat:42").source == "chat:42"
