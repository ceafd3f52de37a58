"""The monitor as ``danlu train`` configures it: options in, a :class:`Monitor` (or None) out,
every mistake a :class:`ConfigError` before training starts.

Example:
    >>> build_monitor() is None
    True
    >>> build_monitor(monitor="0").server.port
    0
    >>> try:
    ...     build_monitor(monitor="0", monitor_host="0.0.0.0")
    ... except ConfigError as e:
    ...     print(e.message.split(":")[0])
    --monitor-host 0.0.0.0 lets other machines steer the run
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from danlu.errors import ConfigError
from danlu.monitor.callback import Monitor
from danlu.monitor.chat import ChatBot
from danlu.monitor.secrets import Secrets, read_token_file

#: where each chat service's token is read when no --chat-token-file is given
CHAT_TOKENS = {"telegram": "DANLU_TELEGRAM_TOKEN", "slack": "DANLU_SLACK_TOKEN"}


def parse_port(text: str | int) -> int:
    """``--monitor PORT``: 0 (a free port) to 65535."""
    try:
        port = int(str(text).strip())
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"--monitor {text!r}: expected a port number (0: a free one)")
    return port


def make_bot(kind: str, token: str, allow: Sequence[str], api: str | None = None) -> ChatBot:
    """A chat bot for ``kind`` (``telegram`` or ``slack``)."""
    if kind == "telegram":
        from danlu.monitor.telegram import TelegramBot

        return TelegramBot(token, allow, api=api)
    if kind == "slack":
        from danlu.monitor.slack import SlackBot

        return SlackBot(token, allow, api=api)
    raise ConfigError(f"--chat {kind!r}: expected telegram or slack")


def build_monitor(*, monitor: str | int | None = None, monitor_host: str = "127.0.0.1",
                  monitor_token: str | None = None, chat: str | None = None,
                  chat_allow: Sequence[str] = (), chat_token_file: str | Path | None = None,
                  chat_api: str | None = None, notify: Sequence[str] = (),
                  notify_every: str | None = None,
                  notify_secrets: str | Path | None = None) -> Monitor | None:
    """A :class:`Monitor` for ``danlu train``'s monitor options (None when none is given)."""
    if monitor is None and not chat and not notify:
        if notify_every:
            raise ConfigError("--notify-every needs --notify URL")
        return None
    secrets = Secrets(notify_secrets)
    bot = None
    if chat:
        kind = str(chat).lower()
        if kind not in CHAT_TOKENS:
            raise ConfigError(f"--chat {chat!r}: expected telegram or slack")
        token = (read_token_file(chat_token_file) if chat_token_file is not None
                 else secrets.get(CHAT_TOKENS[kind]))
        if not token:
            raise ConfigError(f"--chat {kind}: no bot token",
                              hint=f"set {CHAT_TOKENS[kind]} or give --chat-token-file FILE")
        bot = make_bot(kind, token, list(chat_allow or ()), api=chat_api)
        if not chat_allow:
            print(f"warning: --chat {kind} without --chat-allow: every command is refused "
                  "(the bot answers with the ids to allow)", file=sys.stderr, flush=True)
    port = None if monitor is None else parse_port(monitor)
    token = monitor_token or secrets.get("DANLU_MONITOR_TOKEN")
    return Monitor(port=port, host=monitor_host, token=token, chat=bot, notify=list(notify or ()),
                   notify_every=notify_every, secrets=secrets)


__all__ = ["build_monitor", "make_bot", "parse_port", "CHAT_TOKENS"]
