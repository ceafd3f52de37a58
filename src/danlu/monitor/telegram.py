"""The Telegram bot: the Bot API over HTTPS, long polling, no public address needed.

Calls (``{api}/bot{token}/{method}``, JSON bodies, ``sendPhoto`` as multipart/form-data):
``getMe`` checks the token; ``getUpdates`` with ``offset`` / ``timeout`` / ``allowed_updates``
long-polls for messages (an ``offset`` of ``-1`` first, to skip what was sent before the run
started); ``sendMessage`` (``chat_id``, ``text``) and ``sendPhoto`` (``chat_id``, ``caption``,
``photo``) answer. ``api`` defaults to ``https://api.telegram.org`` (``--chat-api`` or
``DANLU_TELEGRAM_API`` change it: a proxy, a local Bot API server, a test double).

Example:
    >>> bot = TelegramBot("123:ABC", ["42"], api="http://127.0.0.1:9")
    >>> bot.url("getMe")
    'http://127.0.0.1:9/bot123:ABC/getMe'
    >>> bot.describe(OSError("cannot reach http://127.0.0.1:9/bot123:ABC/getMe"))
    'OSError: cannot reach http://127.0.0.1:9/bot***/getMe'
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from danlu.errors import ConfigError
from danlu.monitor.chat import ChatBot, Message
from danlu.monitor.http import json_body, multipart_body, redact, request

API = "https://api.telegram.org"
LONG_POLL = 25  # seconds the server may hold getUpdates
TIMEOUT = 10.0  # seconds for every other call (and added to the long poll)


class TelegramError(OSError):
    """A Bot API call answered ``ok: false`` (or no JSON)."""


class TelegramBot(ChatBot):
    """A :class:`~danlu.monitor.chat.ChatBot` on the Telegram Bot API.

    Args:
        token: the bot token (from ``DANLU_TELEGRAM_TOKEN`` or ``--chat-token-file``).
        allow: chat ids and user ids whose commands are accepted.
        api: the Bot API base URL.
        long_poll: seconds ``getUpdates`` may wait for a message.
    """

    name = "telegram"
    slash = True

    def __init__(self, token: str, allow: Iterable[str | int] = (), *, api: str | None = None,
                 long_poll: int = LONG_POLL) -> None:
        super().__init__(allow)
        if not token:
            raise ConfigError("--chat telegram: no bot token",
                              hint="set DANLU_TELEGRAM_TOKEN or give --chat-token-file")
        self.token = token
        self.api = (api or os.environ.get("DANLU_TELEGRAM_API") or API).rstrip("/")
        self.long_poll = int(long_poll)
        self.offset: int | None = None
        self.me: dict[str, Any] = {}

    def url(self, method: str) -> str:
        return f"{self.api}/bot{self.token}/{method}"

    def describe(self, error: Exception) -> str:
        return redact(super().describe(error), self.token)

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             files: dict[str, tuple[str, bytes, str]] | None = None,
             timeout: float = TIMEOUT) -> Any:
        """One Bot API call; returns its ``result``, raises :class:`TelegramError`."""
        if files:
            body, ctype = multipart_body(params or {}, files)
            headers = {"Content-Type": ctype}
        else:
            body, headers = json_body(params or {})
        resp = request("POST", self.url(method), data=body, headers=headers, timeout=timeout)
        doc = resp.json()
        if not isinstance(doc, dict) or not doc.get("ok"):
            why = doc.get("description") if isinstance(doc, dict) else resp.body[:200]
            raise TelegramError(f"{method}: HTTP {resp.status}: {why}")
        return doc.get("result")

    def connect(self) -> None:
        try:
            self.me = self.call("getMe") or {}
            pending = self.call("getUpdates", {"offset": -1, "timeout": 0}) or []
        except OSError as e:
            raise ConfigError(f"--chat telegram: {self.describe(e)}",
                              hint="check the token and --chat-api") from None
        if pending:
            self.offset = int(pending[-1]["update_id"]) + 1

    def poll(self) -> list[Message]:
        params: dict[str, Any] = {"timeout": self.long_poll, "allowed_updates": ["message"]}
        if self.offset is not None:
            params["offset"] = self.offset
        updates = self.call("getUpdates", params, timeout=self.long_poll + TIMEOUT) or []
        out = []
        for u in updates:
            self.offset = max(self.offset or 0, int(u["update_id"]) + 1)
            m = u.get("message") or {}
            text = m.get("text")
            if not text:
                continue
            chat, sender = m.get("chat") or {}, m.get("from") or {}
            out.append(Message(str(chat.get("id", "")), str(sender.get("id", "")), text))
        return out

    def send_text(self, chat: str, text: str) -> None:
        self.call("sendMessage", {"chat_id": _chat_id(chat), "text": text[:4096]})

    def send_photo(self, chat: str, png: bytes, caption: str) -> None:
        self.call("sendPhoto", {"chat_id": chat, "caption": caption[:1024]},
                  files={"photo": ("loss.png", png, "image/png")})


def _chat_id(chat: str) -> int | str:
    return int(chat) if chat.lstrip("-").isdigit() else chat


__all__ = ["TelegramBot", "TelegramError", "API"]
