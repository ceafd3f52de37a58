"""Chat control against loopback fakes of the Telegram Bot API and the Slack Web API (issue 16).

The fakes are written from the public API documents and check the shape of every request
(method, path, token, content type, field names and types); a request that breaks the
contract is answered with the service's error and recorded, and the test fails on it.

* Telegram, end to end: ``danlu train --chat telegram`` steered by messages from an
  allow-listed user (status, set lr, plot, stop) while a stranger's command is refused and
  logged, and a command sent before the run started is skipped.
* Slack: the bot (Web API polling, see danlu.monitor.slack) against a stub run: mentions,
  bare words and ``!``, a direct message, the stranger, the bot's own and system messages.
"""

from __future__ import annotations

import email.parser
import email.policy
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from danlu.data.io import save_dataset
from danlu.data.synth import synthesize
from danlu.monitor.chat import Message, parse_chat_command
from danlu.monitor.slack import SlackBot

PNG = b"\x89PNG\r\n\x1a\n"


class FakeAPI:
    """A loopback HTTP server; ``route(method, path, headers, body) -> (status, doc|bytes)``."""

    def __init__(self, route: Callable[..., tuple[int, Any]]) -> None:
        self.route = route
        self.calls: list[tuple[str, Any]] = []
        self.errors: list[str] = []
        self.lock = threading.Condition()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    status, doc = api.route(self.path, self.headers, body)
                except ShapeError as e:
                    with api.lock:
                        api.errors.append(f"{self.path}: {e}")
                    status, doc = 400, {"ok": False, "description": str(e), "error": str(e)}
                data = doc if isinstance(doc, bytes) else orjson.dumps(doc)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def record(self, method: str, doc: Any) -> None:
        with self.lock:
            self.calls.append((method, doc))
            self.lock.notify_all()

    def wait(self, predicate: Callable[[], Any], timeout: float = 120.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                found = predicate()
                if found:
                    return found
                left = deadline - time.monotonic()
                assert left > 0, f"timed out waiting for {what}; calls: {self.calls[-5:]}"
                self.lock.wait(min(left, 0.5))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ShapeError(Exception):
    """A request that breaks the documented contract."""


def need(cond: bool, why: str) -> None:
    if not cond:
        raise ShapeError(why)


def json_of(headers: Any, body: bytes) -> dict[str, Any]:
    need(headers.get("Content-Type", "").startswith("application/json"), "expected JSON")
    doc = orjson.loads(body)
    need(isinstance(doc, dict), "the body is not an object")
    return doc


def form_of(headers: Any, body: bytes) -> dict[str, str]:
    need(headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"),
         "expected a form")
    return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}


def multipart_of(headers: Any, body: bytes) -> dict[str, tuple[str | None, str, bytes]]:
    """``name -> (filename, content type, bytes)`` of a multipart/form-data body."""
    ctype = headers.get("Content-Type", "")
    need(ctype.startswith("multipart/form-data; boundary="), "expected multipart/form-data")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {ctype}\r\n\r\n".encode() + body)
    need(msg.is_multipart(), "not multipart")
    parts = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        parts[name] = (part.get_filename(), part.get_content_type(),
                       part.get_payload(decode=True))
    return parts


# -- Telegram -------------------------------------------------------------------------------------
TOKEN = "123456:TEST-token"
ALLOWED, STRANGER = 111, 999


class FakeTelegram(FakeAPI):
    """getMe, getUpdates (offset / timeout / allowed_updates), sendMessage, sendPhoto."""

    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []
        self.next_id = 1
        super().__init__(self.handle)

    def say(self, user: int, text: str, chat: int | None = None) -> None:
        with self.lock:
            self.updates.append({"update_id": self.next_id, "message": {
                "message_id": self.next_id, "date": int(time.time()), "text": text,
                "from": {"id": user, "is_bot": False, "first_name": "u"},
                "chat": {"id": chat or user, "type": "private"}}})
            self.next_id += 1
            self.lock.notify_all()

    def handle(self, path: str, headers: Any, body: bytes) -> tuple[int, Any]:
        prefix = f"/bot{TOKEN}/"
        if not path.startswith(prefix):
            return 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
        method = path[len(prefix):]
        if method == "sendPhoto":
            parts = multipart_of(headers, body)
            need(set(parts) <= {"chat_id", "caption", "photo"} and "photo" in parts,
                 f"sendPhoto fields {sorted(parts)}")
            filename, ctype, data = parts["photo"]
            need(bool(filename) and ctype == "image/png" and data[:8] == PNG, "photo not a PNG")
            need(parts["chat_id"][2].decode().lstrip("-").isdigit(), "chat_id")
            self.record(method, {"chat_id": int(parts["chat_id"][2]), "png": len(data),
                                 "caption": parts.get("caption", (0, 0, b""))[2].decode()})
            return 200, {"ok": True, "result": {"message_id": 1}}
        doc = json_of(headers, body)
        self.record(method, doc)
        if method == "getMe":
            return 200, {"ok": True, "result": {"id": 42, "is_bot": True, "first_name": "d",
                                                "username": "danlu_bot"}}
        if method == "getUpdates":
            need(set(doc) <= {"offset", "timeout", "allowed_updates", "limit"}, f"{set(doc)}")
            need(isinstance(doc.get("timeout", 0), int), "timeout must be an integer")
            offset = doc.get("offset")
            need(offset is None or isinstance(offset, int), "offset must be an integer")
            deadline = time.monotonic() + min(doc.get("timeout", 0), 0.5)
            with self.lock:
                while True:
                    if offset == -1:
                        found = self.updates[-1:]
                    else:
                        found = [u for u in self.updates if u["update_id"] >= (offset or 0)]
                    if found or time.monotonic() >= deadline:
                        break
                    self.lock.wait(0.05)
            return 200, {"ok": True, "result": found}
        if method == "sendMessage":
            need(isinstance(doc.get("chat_id"), int), "chat_id must be the chat's integer id")
            need(isinstance(doc.get("text"), str) and 0 < len(doc["text"]) <= 4096, "text")
            return 200, {"ok": True, "result": {"message_id": 2}}
        raise ShapeError(f"unknown method {method}")

    def replies(self, chat: int) -> list[str]:
        return [d["text"] for m, d in self.calls if m == "sendMessage" and d["chat_id"] == chat]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = synthesize("shapes", num_images=12, seed=3, image_size=(64, 64), scale_range=(12, 28))
    return save_dataset(ds, tmp_path_factory.mktemp("chatdata") / "shapes", "coco")


def test_telegram_steers_a_run_and_refuses_a_stranger(tmp_path, data):
    fake = FakeTelegram()
    fake.say(ALLOWED, "/stop")  # sent before the run: must not stop it
    env = dict(os.environ, OMP_NUM_THREADS="1", DANLU_TELEGRAM_TOKEN=TOKEN)
    run = tmp_path / "runs" / "chat"
    proc = subprocess.Popen(
        [sys.executable, "-m", "danlu", "--quiet", "train", "--data", str(data), "--project",
         str(tmp_path / "runs"), "--name", "chat", "--model", "fcos-tiny", "--batch", "4",
         "--img-size", "64", "--device", "cpu", "--val-split", "0.25", "--no-plots",
         "--no-final-eval", "--epochs", "500", "--chat", "telegram", "--chat-allow",
         str(ALLOWED), "--chat-api", fake.url], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        fake.wait(lambda: any(m == "getUpdates" and d.get("offset") == 2 for m, d in fake.calls),
                  what="the bot to skip the old update")
        assert proc.poll() is None, "the old /stop stopped the run"
        fake.wait(lambda: (run / "history.jsonl").is_file() and b'"checkpoint"' in
                  (run / "history.jsonl").read_bytes(), what="a first epoch")

        fake.say(STRANGER, "/stop")
        refusal = fake.wait(lambda: fake.replies(STRANGER), what="the refusal")[0]
        assert "refused" in refusal and f"--chat-allow {STRANGER}" in refusal
        fake.say(ALLOWED, "/status")
        status = fake.wait(lambda: fake.replies(ALLOWED), what="the status")[0]
        assert "chat: running" in status and "epoch" in status and "loss" in status
        fake.say(ALLOWED, "/set lr 0.0005")
        fake.wait(lambda: len(fake.replies(ALLOWED)) >= 2, what="the set answer")
        assert fake.replies(ALLOWED)[1].startswith("set lr=0.0005: ")
        fake.say(ALLOWED, "/plot")
        photo = fake.wait(lambda: [d for m, d in fake.calls if m == "sendPhoto"], what="plot")
        assert photo[0]["chat_id"] == ALLOWED and photo[0]["png"] > 1000
        fake.say(ALLOWED, "/stop@danlu_bot")
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        fake.close()
    assert fake.errors == []
    history = [orjson.loads(line) for line in (run / "history.jsonl").read_bytes().splitlines()]
    refused = [h for h in history if h["event"] == "chat_refused"]
    assert len(refused) == 1 and refused[0]["user"] == str(STRANGER)
    controls = [(h["action"], h["source"]) for h in history if h["event"] == "control"]
    assert controls == [("set", f"chat:{ALLOWED}"), ("stop", f"chat:{ALLOWED}")]
    assert history[-1]["event"] == "end" and history[-1]["reason"] == "stopped"


# -- Slack ----------------------------------------------------------------------------------------
SLACK_TOKEN = "xoxb-test-token"
BOT, FRIEND, STRANGER_U = "UBOT", "UFRIEND", "USTRANGER"


class FakeSlack(FakeAPI):
    """auth.test, users.conversations, conversations.history, chat.postMessage,
    files.getUploadURLExternal, the upload URL, files.completeUploadExternal."""

    FORM = ("auth.test", "users.conversations", "conversations.history",
            "files.getUploadURLExternal")
    JSON = ("chat.postMessage", "files.completeUploadExternal")

    def __init__(self) -> None:
        self.channels: dict[str, list[dict[str, Any]]] = {"C1": [], "D9": []}
        self.uploads: dict[str, int] = {}
        self.clock = time.time() - 100
        super().__init__(self.handle)

    def say(self, channel: str, user: str, text: str, **extra: Any) -> None:
        with self.lock:
            self.clock = max(self.clock + 0.001, time.time())
            self.channels[channel].append({"type": "message", "user": user, "text": text,
                                           "ts": f"{self.clock:.6f}", **extra})
            self.lock.notify_all()

    def handle(self, path: str, headers: Any, body: bytes) -> tuple[int, Any]:
        if path.startswith("/upload/"):
            parts = multipart_of(headers, body)
            need("filename" in parts and parts["filename"][2][:8] == PNG, "upload: no PNG")
            file_id = path.rsplit("/", 1)[1]
            need(self.uploads.get(file_id) == len(parts["filename"][2]), "upload: wrong length")
            self.record("upload", {"file": file_id})
            return 200, b"OK - 1"
        need(path.startswith("/api/"), f"unknown path {path}")
        method = path[5:]
        if headers.get("Authorization") != f"Bearer {SLACK_TOKEN}":
            return 200, {"ok": False, "error": "invalid_auth"}
        if method in self.FORM:
            doc: dict[str, Any] = form_of(headers, body)
        else:
            need(method in self.JSON, f"unknown method {method}")
            need(headers.get("Content-Type") == "application/json; charset=utf-8",
                 "JSON needs charset=utf-8")
            doc = json_of(headers, body)
        self.record(method, doc)
        if method == "auth.test":
            return 200, {"ok": True, "user_id": BOT, "bot_id": "B1", "team_id": "T1"}
        if method == "users.conversations":
            need("im" in doc.get("types", "").split(","), "types must include im")
            return 200, {"ok": True, "channels": [{"id": c} for c in self.channels],
                         "response_metadata": {"next_cursor": ""}}
        if method == "conversations.history":
            need(doc.get("channel") in self.channels, "unknown channel")
            oldest = float(doc.get("oldest", 0))
            with self.lock:
                msgs = [m for m in self.channels[doc["channel"]] if float(m["ts"]) > oldest]
            return 200, {"ok": True, "messages": msgs[::-1], "has_more": False}
        if method == "chat.postMessage":
            need(isinstance(doc.get("channel"), str) and isinstance(doc.get("text"), str),
                 "channel and text")
            return 200, {"ok": True, "channel": doc["channel"], "ts": "1.0"}
        if method == "files.getUploadURLExternal":
            need(doc.get("filename", "").endswith(".png") and doc.get("length", "").isdigit(),
                 "filename and length")
            file_id = f"F{len(self.uploads) + 1}"
            self.uploads[file_id] = int(doc["length"])
            return 200, {"ok": True, "upload_url": f"{self.url}/upload/{file_id}",
                         "file_id": file_id}
        files = doc.get("files")
        need(isinstance(files, list) and files and files[0].get("id") in self.uploads,
             "files: [{id, title}]")
        need(isinstance(doc.get("channel_id"), str), "channel_id")
        return 200, {"ok": True, "files": [{"id": files[0]["id"]}]}

    def posts(self, channel: str) -> list[str]:
        return [d["text"] for m, d in self.calls if m == "chat.postMessage"
                and d["channel"] == channel]


class StubRun:
    """What a bot steers (the ChatTarget protocol), recording what it is asked."""

    def __init__(self) -> None:
        self.controls: list[tuple[dict[str, Any], str]] = []
        self.logged: list[tuple[str, dict[str, Any]]] = []

    def status_text(self) -> str:
        return "stub: running, epoch 1/3"

    def control(self, doc: dict[str, Any], source: str, wait: float) -> str:
        self.controls.append((doc, source))
        return f"{doc['action']}: done after step 7"

    def plot_png(self) -> bytes:
        from danlu.monitor.pictures import loss_curve_png

        return loss_curve_png([{"step": s, "losses": {"loss": 1 / s}} for s in range(1, 9)])

    def log(self, kind: str, **data: Any) -> None:
        self.logged.append((kind, data))


def test_slack_bot_polls_the_web_api_and_answers_only_the_allowed():
    fake = FakeSlack()
    fake.say("C1", FRIEND, "stop")  # before the bot started: skipped
    run = StubRun()
    bot = SlackBot(SLACK_TOKEN, [FRIEND], api=fake.url + "/api", interval=0.05)
    try:
        bot.start(run)
        fake.wait(lambda: sum(m == "conversations.history" for m, _ in fake.calls) >= 2,
                  what="polling")
        fake.say("C1", STRANGER_U, "stop")
        refusal = fake.wait(lambda: fake.posts("C1"), what="the refusal")[0]
        assert "refused" in refusal and STRANGER_U in refusal
        fake.say("C1", FRIEND, f"<@{BOT}> status")
        fake.say("C1", FRIEND, "hello, nothing for the bot")
        fake.say("C1", BOT, "stop")  # its own message
        fake.say("C1", FRIEND, "stop", subtype="message_changed")
        fake.say("C1", FRIEND, "!set lr 0.001")
        fake.say("D9", FRIEND, "/pause")
        fake.say("C1", FRIEND, "plot")
        fake.wait(lambda: fake.uploads and any(m == "files.completeUploadExternal"
                                                for m, _ in fake.calls), what="the plot")
        fake.wait(lambda: len(fake.posts("C1")) >= 3 and fake.posts("D9"), what="answers")
    finally:
        bot.close()
        fake.close()
    assert fake.errors == []
    assert fake.posts("C1")[1:] == ["stub: running, epoch 1/3", "set: done after step 7"]
    assert fake.posts("D9") == ["pause: done after step 7"]
    assert run.controls == [({"action": "set", "key": "lr", "value": 0.001}, f"chat:{FRIEND}"),
                            ({"action": "pause"}, f"chat:{FRIEND}")]
    assert run.logged == [("chat_refused", {"service": "slack", "chat": "C1",
                                            "user": STRANGER_U, "command": "stop"})]
    complete = next(d for m, d in fake.calls if m == "files.completeUploadExternal")
    assert complete["channel_id"] == "C1" and complete["initial_comment"] == "loss curve"
    assert [m for m, _ in fake.calls].count("upload") == 1


def test_commands_are_parsed_and_allowlisted_by_chat_or_user():
    assert parse_chat_command("/status") == ("status", "")
    assert parse_chat_command("status") is None  # Telegram wants the slash
    assert parse_chat_command("stop please", slash=False) == ("stop", "please")
    assert parse_chat_command("stopping now", slash=False) is None
    bot = SlackBot("xoxb-1", ["C7", "U5"])
    assert bot.allowed(Message("C7", "U1", "x")) and bot.allowed(Message("D1", "U5", "x"))
    assert not bot.allowed(Message("D1", "U1", "x"))
    run = StubRun()
    bot.target = run
    reply = bot.handle(Message("C7", "U1", "set lr banana"))
    assert "lr" in reply.text and run.controls == []
    assert "unknown command" in bot.handle(Message("C7", "U1", "/dance")).text
