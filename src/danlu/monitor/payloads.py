"""Notification targets and the request each service expects, with the robots' signatures.

A target is ``[KIND:]URL``; without a kind it is chosen by the URL's host (:data:`HOSTS`),
else it is the generic JSON webhook. What is sent (one text message per notice):

============  ======================================================================
``json``      ``{"source": "danlu", "event", "run", "text", "epoch", "step", ...}``
``slack``     an incoming webhook: ``{"text"}``
``discord``   a channel webhook: ``{"content", "username"}`` (content cut at 2000)
``telegram``  Bot API ``sendMessage``: ``{"chat_id", "text"}``; the URL is the API base with
              ``?chat_id=ID``, the token comes from ``DANLU_TELEGRAM_TOKEN``
``ntfy``      the text as the body, ``Title`` / ``Priority`` / ``Tags`` headers; an access
              token from ``DANLU_NTFY_TOKEN`` when set
``dingtalk``  a custom robot: ``{"msgtype": "text", "text": {"content"}}``; with
              ``DANLU_DINGTALK_SECRET``, ``timestamp`` (ms) and ``sign`` are added to the URL
``wecom``     a group robot (企业微信): ``{"msgtype": "text", "text": {"content"}}``
``feishu``    a custom bot (飞书 / Lark): ``{"msg_type": "text", "content": {"text"}}``; with
              ``DANLU_FEISHU_SECRET``, ``timestamp`` (s) and ``sign`` in the body
============  ======================================================================

Signatures: DingTalk signs ``"{timestamp}\\n{secret}"`` with HMAC-SHA256 keyed by the secret;
Feishu computes HMAC-SHA256 keyed by ``"{timestamp}\\n{secret}"`` over an empty message; both
send the digest in base64 (DingTalk URL-encoded in the query).

Example:
    >>> parse_target("https://oapi.dingtalk.com/robot/send?access_token=x").kind
    'dingtalk'
    >>> parse_target("feishu:https://example.com/hook").kind
    'feishu'
    >>> dingtalk_sign("SECabc", 1700000000000)
    'jcUpW0QmtKduN03n4JqQ0PBosVjqnM8gU7fIIvsDmCM='
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from danlu.errors import ConfigError
from danlu.monitor.http import Response, json_body
from danlu.monitor.secrets import Secrets

KINDS = ("json", "slack", "discord", "telegram", "ntfy", "dingtalk", "wecom", "feishu")
HOSTS = {"hooks.slack.com": "slack", "discord.com": "discord", "discordapp.com": "discord",
         "ptb.discord.com": "discord", "canary.discord.com": "discord",
         "api.telegram.org": "telegram", "ntfy.sh": "ntfy", "oapi.dingtalk.com": "dingtalk",
         "qyapi.weixin.qq.com": "wecom", "open.feishu.cn": "feishu",
         "open.larksuite.com": "feishu"}
#: notices that ask for attention (ntfy priority 4, a warning tag)
URGENT = ("nonfinite", "diverging", "crash")
DISCORD_LIMIT = 2000


@dataclass(frozen=True)
class Target:
    """Where notices go: the service ``kind`` and its ``url``."""

    kind: str
    url: str

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or "?"


@dataclass
class Notice:
    """One notification: ``event`` (``start``, ``progress``, ``best``, ``nonfinite``,
    ``diverging``, ``end``, ``crash``), the ``run`` name, a human ``text`` and the numbers
    behind it (``fields``: epoch, step, metrics ...)."""

    event: str
    run: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"danlu {self.run}: {self.event}"


@dataclass
class OutRequest:
    """The HTTP request of one notice to one target."""

    url: str
    body: bytes
    headers: dict[str, str]
    method: str = "POST"


def parse_target(text: str) -> Target:
    """``[KIND:]URL`` -> :class:`Target` (the kind from the host when not given)."""
    text = str(text).strip()
    kind, sep, rest = text.partition(":")
    if sep and kind.lower() in KINDS:
        kind, url = kind.lower(), rest
    else:
        kind, url = "", text
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--notify {text!r}: expected [KIND:]http(s)://HOST/...",
                          hint="KIND is one of " + ", ".join(KINDS))
    return Target(kind or HOSTS.get(parts.hostname.lower(), "json"), url)


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's ``sign``: base64 HMAC-SHA256 of ``"{timestamp}\\n{secret}"`` keyed by the
    secret (before URL encoding)."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(),
                      hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """Feishu's ``sign``: base64 HMAC-SHA256 keyed by ``"{timestamp}\\n{secret}"`` over an
    empty message."""
    digest = hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _with_query(url: str, **params: Any) -> str:
    parts = urllib.parse.urlsplit(url)
    query = parts.query + ("&" if parts.query else "") + urllib.parse.urlencode(params)
    return urllib.parse.urlunsplit(parts._replace(query=query))


def check_target(target: Target, secrets: Secrets) -> None:
    """Raise :class:`ConfigError` when ``target`` cannot work (before training starts)."""
    if target.kind == "telegram":
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target.url).query)
        if "chat_id" not in query:
            raise ConfigError(f"--notify {target.url}: a Telegram target needs ?chat_id=ID")
        if "/bot" not in target.url and not secrets.get("DANLU_TELEGRAM_TOKEN"):
            raise ConfigError("--notify telegram: no bot token",
                              hint="set DANLU_TELEGRAM_TOKEN (or put it in --notify-secrets)")


def build_request(target: Target, notice: Notice, secrets: Secrets,
                  now: float | None = None) -> OutRequest:
    """The request that delivers ``notice`` to ``target`` (signed where the service signs)."""
    now = time.time() if now is None else now
    text, kind = notice.text, target.kind
    if kind == "ntfy":
        headers = {"Title": notice.title.encode("ascii", "replace").decode(),
                   "Priority": "4" if notice.event in URGENT else "3",
                   "Tags": "warning" if notice.event in URGENT else "chart_with_upwards_trend",
                   "Content-Type": "text/plain; charset=utf-8"}
        token = secrets.get("DANLU_NTFY_TOKEN")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return OutRequest(target.url, text.encode(), headers)
    url = target.url
    if kind == "json":
        doc: dict[str, Any] = {"source": "danlu", "event": notice.event, "run": notice.run,
                               "text": text, **notice.fields}
    elif kind == "slack":
        doc = {"text": text}
    elif kind == "discord":
        doc = {"content": text[:DISCORD_LIMIT], "username": "danlu"}
    elif kind == "telegram":
        url, doc = _telegram(target, text, secrets)
    elif kind == "dingtalk":
        doc = {"msgtype": "text", "text": {"content": text}}
        secret = secrets.get("DANLU_DINGTALK_SECRET")
        if secret:
            ts = int(now * 1000)
            url = _with_query(url, timestamp=ts, sign=dingtalk_sign(secret, ts))
    elif kind == "wecom":
        doc = {"msgtype": "text", "text": {"content": text}}
    else:  # feishu
        doc = {"msg_type": "text", "content": {"text": text}}
        secret = secrets.get("DANLU_FEISHU_SECRET")
        if secret:
            ts = int(now)
            doc = {"timestamp": str(ts), "sign": feishu_sign(secret, ts), **doc}
    body, headers = json_body(doc)
    return OutRequest(url, body, headers)


def _telegram(target: Target, text: str, secrets: Secrets) -> tuple[str, dict[str, Any]]:
    parts = urllib.parse.urlsplit(target.url)
    chat_id = urllib.parse.parse_qs(parts.query)["chat_id"][0]
    base = urllib.parse.urlunsplit(parts._replace(query="", fragment="")).rstrip("/")
    if "/bot" not in parts.path:
        base += f"/bot{secrets.get('DANLU_TELEGRAM_TOKEN')}"
    if not base.endswith("/sendMessage"):
        base += "/sendMessage"
    return base, {"chat_id": int(chat_id) if chat_id.lstrip("-").isdigit() else chat_id,
                  "text": text}


def delivered(kind: str, resp: Response) -> tuple[bool, bool, str]:
    """``(ok, worth retrying, why)`` for a service's answer: 2xx (and, for the robots, an
    ``errcode`` / ``code`` of 0 in the body); 429 and 5xx are worth another try."""
    if resp.status == 429 or resp.status >= 500:
        return False, True, f"HTTP {resp.status}"
    if not resp.ok:
        return False, False, f"HTTP {resp.status}"
    doc = resp.json() if kind in ("dingtalk", "wecom", "feishu", "telegram") else None
    if isinstance(doc, dict):
        if kind in ("dingtalk", "wecom") and doc.get("errcode", 0) != 0:
            return False, False, f"errcode {doc.get('errcode')}: {doc.get('errmsg')}"
        code = doc.get("code", doc.get("StatusCode", 0))
        if kind == "feishu" and code != 0:
            return False, False, f"code {code}: {doc.get('msg')}"
        if kind == "telegram" and doc.get("ok") is False:
            return False, False, str(doc.get("description"))
    return True, False, "ok"


__all__ = ["KINDS", "HOSTS", "Target", "Notice", "OutRequest", "parse_target", "dingtalk_sign",
           "feishu_sign", "check_target", "build_request", "delivered"]
