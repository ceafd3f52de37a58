"""Steering a run from a chat: the commands, who may send them, and the bot's polling thread.

Commands (Telegram wants the leading ``/``; in Slack, where ``/word`` is taken by Slack's own
slash commands, write them bare or with ``!``, optionally after a mention of the bot):

==============================  ===================================================
``/status``                     epoch, step, loss, lr, ETA, the latest validation
``/stop``                       stop after the current step (``last.pt`` resumes exactly)
``/pause``, ``/resume``         no step while paused
``/save``                       write ``last.pt`` now
``/set lr 0.001``               the next step's learning rate (also ``lr=0.001``)
``/set eval_every 2``           evaluate every 2 epochs from now on
``/plot``                       the loss curve as a picture
``/help``                       this list
==============================  ===================================================

A command is accepted only when its chat or its sender is allow-listed (``--chat-allow ID``);
any other is refused, answered with the ids to allow-list, and logged (``chat_refused`` in
``history.jsonl``). A bot skips what was sent before it started: a ``/stop`` meant for an
earlier run does not stop this one.

Example:
    >>> parse_chat_command("/set@danlu_bot lr 0.001")
    ('set', 'lr 0.001')
    >>> parse_chat_command("<@U0BOT> !stop", slash=False), parse_chat_command("hello", slash=False)
    (('stop', ''), None)
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from danlu.errors import ConfigError

COMMANDS = ("status", "stop", "pause", "resume", "save", "set", "plot", "help")
HELP = ("commands: /status, /stop, /pause, /resume, /save, /set lr 0.001, "
        "/set eval_every 2, /plot, /help")
#: seconds a command's answer waits for it to be applied (then it says "queued")
APPLY_WAIT = 5.0
_MENTION = re.compile(r"^\s*<@[\w.-]+>\s*")


def parse_chat_command(text: str, *, slash: bool = True) -> tuple[str, str] | None:
    """``(command, arguments)`` of a chat message, or None when it is not a command.
    ``slash=False`` (Slack) also reads ``stop`` and ``!stop``, after a bot mention."""
    text = _MENTION.sub("", str(text or "")).strip()
    prefixed = text.startswith("/") or (not slash and text.startswith("!"))
    if prefixed:
        text = text[1:]
    elif slash:
        return None
    word, _, rest = text.partition(" ")
    name = word.split("@", 1)[0].lower()
    if prefixed or name in COMMANDS:  # a bare word only when it is a command's name
        return (name, rest.strip()) if name else None
    return None


@dataclass
class Message:
    """A chat message: the conversation (``chat``), its sender (``user``) and ``text``."""

    chat: str
    user: str
    text: str


@dataclass
class Reply:
    """An answer: ``text``, and a PNG picture (``photo``) when there is one."""

    text: str
    photo: bytes | None = None


class ChatTarget(Protocol):
    """What a bot needs from the run it steers (:class:`~danlu.monitor.callback.Monitor`)."""

    def status_text(self) -> str: ...

    def control(self, doc: dict[str, Any], source: str, wait: float) -> str: ...

    def plot_png(self) -> bytes | None: ...

    def log(self, kind: str, **data: Any) -> None: ...


class ChatBot:
    """The polling thread and the command logic; subclasses talk to one service
    (:meth:`skip_pending`, :meth:`poll`, :meth:`send_text`, :meth:`send_photo`).

    Args:
        allow: chat and user ids whose commands are accepted.
        slash: commands need a leading ``/`` (False: also bare words, for Slack).
    """

    name = "chat"
    slash = True

    def __init__(self, allow: Iterable[str | int] = ()) -> None:
        self.allow = {str(a).strip() for a in allow if str(a).strip()}
        self.target: ChatTarget | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    # -- the service (subclasses) --------------------------------------------------------------
    def connect(self) -> None:
        """Check the token and forget messages sent before now; raise on failure."""

    def poll(self) -> list[Message]:
        """The new messages (may block for the service's long-poll time)."""
        raise NotImplementedError

    def send_text(self, chat: str, text: str) -> None:
        raise NotImplementedError

    def send_photo(self, chat: str, png: bytes, caption: str) -> None:
        raise NotImplementedError

    # -- the logic -------------------------------------------------------------------------------
    def allowed(self, msg: Message) -> bool:
        return msg.chat in self.allow or msg.user in self.allow

    def handle(self, msg: Message) -> Reply | None:
        """The answer to one message (None: not a command, nothing to answer)."""
        parsed = parse_chat_command(msg.text, slash=self.slash)
        if parsed is None or self.target is None:
            return None
        name, args = parsed
        if not self.allowed(msg):
            self.target.log("chat_refused", service=self.name, chat=msg.chat, user=msg.user,
                            command=name)
            return Reply(f"refused: this chat ({msg.chat}) and user ({msg.user}) are not "
                         f"allowed to steer the run; its owner can add --chat-allow {msg.user}")
        source = f"chat:{msg.user}"
        if name == "status":
            return Reply(self.target.status_text())
        if name == "plot":
            png = self.target.plot_png()
            return Reply("loss curve", png) if png else Reply("no loss curve yet")
        if name in ("stop", "pause", "resume", "save"):
            return Reply(self.target.control({"action": name}, source, APPLY_WAIT))
        if name == "set":
            from danlu.train.control import parse_assignment

            try:
                key, value = parse_assignment(args)
            except ConfigError as e:
                return Reply(f"{e.message} ({e.hint})" if e.hint else e.message)
            return Reply(self.target.control({"action": "set", "key": key, "value": value},
                                             source, APPLY_WAIT))
        if name == "help":
            return Reply(HELP)
        return Reply(f"unknown command /{name}; {HELP}")

    def answer(self, msg: Message, reply: Reply) -> None:
        if reply.photo is not None:
            self.send_photo(msg.chat, reply.photo, reply.text)
        else:
            self.send_text(msg.chat, reply.text)

    # -- the thread ----------------------------------------------------------------------------
    def start(self, target: ChatTarget) -> None:
        """Connect (raising on a bad token or API) and start polling in a daemon thread."""
        self.target = target
        self.connect()
        self._thread = threading.Thread(target=self._run, name=f"danlu-chat-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pause = 1.0
        while not self._stop.is_set():
            try:
                for msg in self.poll():
                    reply = self.handle(msg)
                    if reply is not None and not self._stop.is_set():
                        self.answer(msg, reply)
                pause = 1.0
            except Exception as e:  # noqa: BLE001 - the bot must outlive a flaky network
                self.errors += 1
                if self.errors == 1 or self.errors % 20 == 0:
                    print(f"warning: {self.name} bot: {self.describe(e)} (retrying)",
                          file=sys.stderr, flush=True)
                self._stop.wait(pause)
                pause = min(pause * 2, 30.0)

    def describe(self, error: Exception) -> str:
        """An error as a warning may print it (subclasses remove their token)."""
        return f"{type(error).__name__}: {error}"

    def close(self, timeout: float = 1.0) -> None:
        """Stop polling (a long poll in flight is abandoned: the thread is a daemon)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


__all__ = ["ChatBot", "ChatTarget", "Message", "Reply", "parse_chat_command", "COMMANDS",
           "HELP"]
