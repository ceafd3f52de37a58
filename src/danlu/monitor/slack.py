"""The Slack bot: the Web API only (HTTPS out, no public address, no WebSocket library).

Why this variant: the Events API needs an address Slack can reach, and Socket Mode needs a
WebSocket client; reading the conversations the bot is in with plain Web API calls needs
neither, works behind any firewall that lets HTTPS out, and is what a loopback test double
can check call by call. The cost is a poll every :data:`INTERVAL` seconds per conversation
(``conversations.history`` allows about 50 calls a minute).

Calls (``{api}/{method}``, ``Authorization: Bearer xoxb-...``; reads form-encoded, writes
JSON): ``auth.test`` (the token, and the bot's own user id, whose messages are skipped);
``users.conversations`` (the channels and direct messages the bot is a member of, refreshed
every :data:`REFRESH` s); ``conversations.history`` with ``oldest`` (the messages since the
last poll; what was sent before the run started is skipped); ``chat.postMessage``
(``channel``, ``text``); for a picture ``files.getUploadURLExternal`` (``filename``,
``length``), a POST of the file to the ``upload_url`` it returns, then
``files.completeUploadExternal`` (``files``, ``channel_id``, ``initial_comment``). A 429
answer waits its ``Retry-After``. Scopes: ``channels:history``, ``groups:history``,
``im:history``, ``channels:read``, ``groups:read``, ``im:read``, ``chat:write``,
``files:write``.

Example:
    >>> SlackBot("xoxb-1", ["U1"], api="http://127.0.0.1:9/api").url("auth.test")
    'http://127.0.0.1:9/api/auth.test'
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from danlu.errors import ConfigError
from danlu.monitor.chat import ChatBot, Message
from danlu.monitor.http import form_body, json_body, multipart_body, redact, request

API = "https://slack.com/api"
INTERVAL = 3.0  # seconds between two polls
REFRESH = 60.0  # seconds between two looks at the bot's conversations
TIMEOUT = 10.0
TYPES = "public_channel,private_channel,im,mpim"


class SlackError(OSError):
    """A Web API call answered ``ok: false`` (or no JSON)."""


class SlackBot(ChatBot):
    """A :class:`~danlu.monitor.chat.ChatBot` on the Slack Web API (see the module docstring).

    Args:
        token: the bot token (``xoxb-...``, from ``DANLU_SLACK_TOKEN`` or a file).
        allow: channel ids (``C...``, ``G...``, ``D...``) and user ids (``U...``) whose
            commands are accepted.
        api: the Web API base URL.
        interval: seconds between two polls.
    """

    name = "slack"
    slash = False

    def __init__(self, token: str, allow: Iterable[str] = (), *, api: str | None = None,
                 interval: float = INTERVAL) -> None:
        super().__init__(allow)
        if not token:
            raise ConfigError("--chat slack: no bot token",
                              hint="set DANLU_SLACK_TOKEN or give --chat-token-file")
        self.token = token
        self.api = (api or os.environ.get("DANLU_SLACK_API") or API).rstrip("/")
        self.interval = float(interval)
        self.bot_user: str | None = None
        self.oldest: dict[str, str] = {}  # conversation -> ts of the last message read
        self._refreshed = -REFRESH

    def url(self, method: str) -> str:
        return f"{self.api}/{method}"

    def describe(self, error: Exception) -> str:
        return redact(super().describe(error), self.token)

    def call(self, method: str, fields: dict[str, Any] | None = None, *,
             as_json: bool = False) -> dict[str, Any]:
        """One Web API call; returns the answer, raises :class:`SlackError`."""
        body, headers = json_body(fields or {}) if as_json else form_body(fields or {})
        headers["Authorization"] = f"Bearer {self.token}"
        resp = request("POST", self.url(method), data=body, headers=headers, timeout=TIMEOUT)
        if resp.status == 429:
            wait = float(resp.headers.get("retry-after", "5") or 5)
            self._stop.wait(min(wait, 60.0))
            raise SlackError(f"{method}: rate limited for {wait:g} s")
        doc = resp.json()
        if not isinstance(doc, dict) or not doc.get("ok"):
            why = doc.get("error") if isinstance(doc, dict) else resp.body[:200]
            raise SlackError(f"{method}: HTTP {resp.status}: {why}")
        return doc

    def connect(self) -> None:
        try:
            self.bot_user = self.call("auth.test").get("user_id")
            self._refresh(force=True)
        except OSError as e:
            raise ConfigError(f"--chat slack: {self.describe(e)}",
                              hint="check the token, its scopes and --chat-api") from None

    def _refresh(self, force: bool = False) -> None:
        """Learn the conversations the bot is in; a new one is read from now on."""
        now = time.monotonic()
        if not force and now - self._refreshed < REFRESH:
            return
        self._refreshed = now
        ids, cursor = [], None
        while True:
            doc = self.call("users.conversations", {"types": TYPES, "exclude_archived": "true",
                                                    "limit": 200, "cursor": cursor})
            ids += [c["id"] for c in doc.get("channels", []) if c.get("id")]
            cursor = (doc.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                break
        start = f"{time.time():.6f}"
        self.oldest = {c: self.oldest.get(c, start) for c in ids}

    def poll(self) -> list[Message]:
        if self._stop.wait(self.interval):
            return []
        self._refresh()
        out = []
        for channel, oldest in list(self.oldest.items()):
            doc = self.call("conversations.history", {"channel": channel, "oldest": oldest,
                                                      "limit": 100})
            for m in reversed(doc.get("messages", [])):  # Slack lists the newest first
                ts = str(m.get("ts", oldest))
                if float(ts) > float(self.oldest[channel]):
                    self.oldest[channel] = ts
                if m.get("subtype") or m.get("bot_id") or m.get("user") == self.bot_user:
                    continue  # joins, edits, bots (this one too)
                if m.get("text") and m.get("user"):
                    out.append(Message(channel, str(m["user"]), str(m["text"])))
        return out

    def send_text(self, chat: str, text: str) -> None:
        self.call("chat.postMessage", {"channel": chat, "text": text}, as_json=True)

    def send_photo(self, chat: str, png: bytes, caption: str) -> None:
        up = self.call("files.getUploadURLExternal", {"filename": "loss.png",
                                                      "length": len(png)})
        body, ctype = multipart_body({}, {"filename": ("loss.png", png, "image/png")})
        resp = request("POST", up["upload_url"], data=body, headers={"Content-Type": ctype},
                       timeout=TIMEOUT)
        if not resp.ok:
            raise SlackError(f"file upload: HTTP {resp.status}")
        self.call("files.completeUploadExternal",
                  {"files": [{"id": up["file_id"], "title": caption}], "channel_id": chat,
                   "initial_comment": caption}, as_json=True)


__all__ = ["SlackBot", "SlackError", "API"]
