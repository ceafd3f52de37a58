"""Notifications (issue 16): each service's payload, the robots' signatures checked against an
independent HMAC computation, delivery with retries, the events of a real run (start, new
best, NaN within one step, progress, end, crash), and a hanging endpoint that does not slow
the training steps.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

import danlu
from danlu.data.synth import synthesize
from danlu.errors import ConfigError
from danlu.monitor import Monitor
from danlu.monitor.notify import Notifier, parse_every
from danlu.monitor.payloads import Notice, build_request, check_target, parse_target
from danlu.monitor.secrets import Secrets
from danlu.train.callbacks import Callback

NOTICE = Notice("best", "exp3", "danlu exp3: new best AP 0.5123 at epoch 4",
                {"epoch": 4, "step": 120, "metrics": {"AP": 0.5123}})
NOW = 1_700_000_000.25
SECRETS = Secrets(environ={"DANLU_TELEGRAM_TOKEN": "123:tok", "DANLU_NTFY_TOKEN": "tk_abc",
                           "DANLU_DINGTALK_SECRET": "SECdingtalk", "DANLU_FEISHU_SECRET": "fs"})


def _request(target: str):
    return build_request(parse_target(target), NOTICE, SECRETS, now=NOW)


@pytest.mark.parametrize(("url", "kind"), [
    ("https://hooks.slack.com/services/T/B/X", "slack"),
    ("https://discord.com/api/webhooks/1/abc", "discord"),
    ("https://discordapp.com/api/webhooks/1/abc", "discord"),
    ("https://api.telegram.org/?chat_id=5", "telegram"),
    ("https://ntfy.sh/my-runs", "ntfy"),
    ("https://oapi.dingtalk.com/robot/send?access_token=t", "dingtalk"),
    ("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k", "wecom"),
    ("https://open.feishu.cn/open-apis/bot/v2/hook/h", "feishu"),
    ("https://open.larksuite.com/open-apis/bot/v2/hook/h", "feishu"),
    ("https://example.com/hook", "json"),
    ("feishu:https://proxy.example/feishu", "feishu"),
    ("NTFY:http://10.0.0.2/topic", "ntfy"),
])
def test_the_kind_follows_the_host_or_the_prefix(url, kind):
    assert parse_target(url).kind == kind


def test_bad_targets_are_refused_before_training():
    for bad in ("ftp://x/y", "hooks.slack.com/x", "carrier-pigeon:https://x"):
        with pytest.raises(ConfigError):
            parse_target(bad)
    with pytest.raises(ConfigError, match="chat_id"):
        check_target(parse_target("telegram:https://api.telegram.org/"), SECRETS)
    with pytest.raises(ConfigError, match="token"):
        check_target(parse_target("https://api.telegram.org/?chat_id=1"), Secrets(environ={}))
    with pytest.raises(ConfigError, match="--notify-every"):
        parse_every("soon")
    assert parse_every("2") == ("epochs", 2.0) and parse_every("1.5m") == ("minutes", 1.5)


def test_payloads_of_each_service():
    generic = _request("https://example.com/hook")
    assert generic.headers["Content-Type"].startswith("application/json")
    assert orjson.loads(generic.body) == {"source": "danlu", "event": "best", "run": "exp3",
                                          "text": NOTICE.text, **NOTICE.fields}
    assert orjson.loads(_request("https://hooks.slack.com/services/T/B/X").body) == \
        {"text": NOTICE.text}
    assert orjson.loads(_request("https://discord.com/api/webhooks/1/abc").body) == \
        {"content": NOTICE.text, "username": "danlu"}
    long = build_request(parse_target("https://discord.com/api/webhooks/1/a"),
                         Notice("end", "r", "x" * 3000), SECRETS)
    assert len(orjson.loads(long.body)["content"]) == 2000

    tg = _request("https://api.telegram.org/?chat_id=-1005")
    assert tg.url == "https://api.telegram.org/bot123:tok/sendMessage"
    assert orjson.loads(tg.body) == {"chat_id": -1005, "text": NOTICE.text}

    ntfy = _request("https://ntfy.sh/my-runs")
    assert ntfy.url == "https://ntfy.sh/my-runs" and ntfy.body == NOTICE.text.encode()
    assert ntfy.headers["Title"] == "danlu exp3: best" and ntfy.headers["Priority"] == "3"
    assert ntfy.headers["Authorization"] == "Bearer tk_abc"
    urgent = build_request(parse_target("https://ntfy.sh/t"), Notice("crash", "r", "x"), SECRETS)
    assert urgent.headers["Priority"] == "4" and urgent.headers["Tags"] == "warning"

    wecom = _request("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k")
    assert orjson.loads(wecom.body) == {"msgtype": "text", "text": {"content": NOTICE.text}}
    assert wecom.url.endswith("?key=k")


def test_dingtalk_signature_matches_an_independent_computation():
    req = _request("https://oapi.dingtalk.com/robot/send?access_token=t")
    assert orjson.loads(req.body) == {"msgtype": "text", "text": {"content": NOTICE.text}}
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(req.url).query)
    assert query["access_token"] == ["t"]
    timestamp = query["timestamp"][0]
    assert timestamp == str(int(NOW * 1000))  # milliseconds
    expected = base64.b64encode(hmac.new(b"SECdingtalk", f"{timestamp}\nSECdingtalk".encode(),
                                         hashlib.sha256).digest()).decode()
    assert query["sign"] == [expected]  # parse_qs undid the URL encoding of + / =
    assert "%2B" in req.url or "+" not in expected  # ... which the URL carries


def test_feishu_signature_matches_an_independent_computation():
    body = orjson.loads(_request("https://open.feishu.cn/open-apis/bot/v2/hook/h").body)
    assert body["msg_type"] == "text" and body["content"] == {"text": NOTICE.text}
    assert body["timestamp"] == str(int(NOW))  # seconds, as a string
    key = f"{body['timestamp']}\nfs".encode()
    assert body["sign"] == base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    unsigned = build_request(parse_target("https://open.feishu.cn/open-apis/bot/v2/hook/h"),
                             NOTICE, Secrets(environ={}))
    assert set(orjson.loads(unsigned.body)) == {"msg_type", "content"}


def test_secrets_come_from_a_file_or_the_environment(tmp_path, capsys):
    path = tmp_path / "secrets"
    path.write_text("# robots\nDANLU_FEISHU_SECRET = 'abc'\n\nDANLU_NTFY_TOKEN=tk_1\n")
    path.chmod(0o644)
    s = Secrets(path, environ={"DANLU_NTFY_TOKEN": "env", "DANLU_SLACK_TOKEN": "xoxb"})
    assert "readable by other users" in capsys.readouterr().err
    assert s.get("DANLU_FEISHU_SECRET") == "abc" and s.get("DANLU_NTFY_TOKEN") == "tk_1"
    assert s.get("DANLU_SLACK_TOKEN") == "xoxb" and s.get("DANLU_DINGTALK_SECRET") is None
    path.write_text("no equals sign\n")
    with pytest.raises(ConfigError, match=":1:"):
        Secrets(path)


class Recorder:
    """A loopback webhook: answers ``statuses`` in turn (then 200), records each body."""

    def __init__(self, statuses: tuple[int, ...] = ()) -> None:
        self.statuses = list(statuses)
        self.bodies: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with rec.cond:
                    status = rec.statuses.pop(0) if rec.statuses else 200
                    rec.bodies.append((self.path, body))
                    rec.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def docs(self) -> list[dict[str, Any]]:
        with self.cond:
            return [orjson.loads(b) for _, b in self.bodies]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_delivery_retries_server_errors_and_gives_up_on_client_errors(capsys):
    flaky, broken = Recorder((500, 503)), Recorder((400,))
    failures = []
    n = Notifier([flaky.url, f"slack:{broken.url}"], Secrets(environ={}), backoff=0.01,
                 on_failure=lambda t, notice, why: failures.append((t.kind, why)))
    try:
        n.send(NOTICE)
        assert n.flush(60)
        n.close()
    finally:
        flaky.close()
        broken.close()
    assert len(flaky.bodies) == 3 and flaky.docs()[-1]["event"] == "best"  # third try
    assert len(broken.bodies) == 1 and failures == [("slack", "HTTP 400")]
    assert n.stats()["json:127.0.0.1"] == {"sent": 1, "failed": 0, "dropped": 0}
    assert "notification to 127.0.0.1 (slack) failed: HTTP 400" in capsys.readouterr().err


def _shapes(n: int = 12):
    return synthesize("shapes", num_images=n, seed=2, image_size=(64, 64),
                      scale_range=(12, 28), encode=False)


TINY = dict(model="fcos-tiny", batch=4, img_size=64, device="cpu", plots=False,
            verbose=False, progress=False, augment="none", workers=0, final_eval=False)


def nan_at_step_3(trainer, images, targets, batch):
    losses = trainer.model(list(images), targets)
    if trainer.step == 2:  # the third step
        losses = {k: v * float("nan") for k, v in losses.items()}
    return losses


def test_a_run_notifies_start_progress_best_nan_and_end(tmp_path):
    hook = Recorder()
    mon = Monitor(port=None, notify=[hook.url], notify_every="1")
    try:
        danlu.train(_shapes(), epochs=2, out=tmp_path / "run", val_split=0.25,
                    loss_fn=nan_at_step_3, callbacks=[mon.start()], **TINY)
    finally:
        mon.close()
        hook.close()
    docs = hook.docs()
    events = [d["event"] for d in docs]
    assert events[0] == "start" and events[-1] == "end", events
    assert {"nonfinite", "best", "progress"} <= set(events), events
    nan = next(d for d in docs if d["event"] == "nonfinite")
    assert nan["step"] == 3 and "step 3" in nan["text"]  # within the step it happened
    best = next(d for d in docs if d["event"] == "best")
    assert "new best AP" in best["text"] and best["run"] == "run"
    assert all(d["source"] == "danlu" and d["text"].startswith("danlu run: ") for d in docs)


def boom_at_step_2(trainer, images, targets, batch):
    if trainer.step == 1:
        raise RuntimeError("boom")
    return trainer.model(list(images), targets)


def test_a_crash_is_notified_with_the_last_line_of_its_traceback(tmp_path):
    hook = Recorder()
    mon = Monitor(port=None, notify=[f"slack:{hook.url}"])
    try:
        with pytest.raises(RuntimeError, match="boom"):
            danlu.train(_shapes(), epochs=2, out=tmp_path / "run", val_split=0,
                        loss_fn=boom_at_step_2, callbacks=[mon.start()], **TINY)
    finally:
        mon.close()
        hook.close()
    texts = [d["text"] for d in hook.docs()]
    assert texts[0].startswith("danlu run: started") and "crashed at step 1: " \
        "RuntimeError: boom" in texts[-1], texts


class StepTimes(Callback):
    def __init__(self) -> None:
        self.t: list[float] = []

    def on_step(self, trainer, logs):
        self.t.append(time.perf_counter())

    def durations(self) -> list[float]:
        return [b - a for a, b in zip(self.t, self.t[1:], strict=False)]


def hanging_server() -> tuple[socket.socket, list[socket.socket]]:
    """A port that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return srv, held


def test_a_hanging_endpoint_does_not_hold_training(tmp_path, monkeypatch):
    """Notices to an endpoint that accepts and never answers, each attempt allowed an hour:
    every step of the run happens while the first notice still waits for its answer. A send
    on the training thread would hold the run for that hour; the bound on the wait below is a
    safety net against a hung test, not a timing check."""
    import functools

    from danlu.monitor import callback

    monkeypatch.setattr(callback, "Notifier", functools.partial(Notifier, timeout=3600.0))
    srv, held = hanging_server()
    url = f"http://127.0.0.1:{srv.getsockname()[1]}/hook"
    data = _shapes(16)
    options = dict(epochs=3, val_split=0, batch=2, **{k: v for k, v in TINY.items()
                                                        if k != "batch"})
    steps = StepTimes()
    mon = Monitor(port=None, notify=[url, f"ntfy:{url}"], notify_every="1")
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = danlu.train(data, out=tmp_path / "hang",
                                            callbacks=[mon.start(), steps], **options)
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome["error"] = e

    trainer = threading.Thread(target=run, daemon=True)
    try:
        trainer.start()
        trainer.join(600)
        assert not trainer.is_alive(), "training waited on the hanging endpoint"
        assert "error" not in outcome, outcome.get("error")
        assert len(steps.t) == 3 * 8  # every step ran (16 images, batch 2, 3 epochs)
        assert held, "the notices never reached the hanging endpoint"
        busy = [w for w in mon.notifier._workers if not w.idle.is_set()]
        assert busy, "no notice is still waiting: the endpoint did not hang"
    finally:
        srv.close()
        for c in held:
            c.close()
        mon.close()
