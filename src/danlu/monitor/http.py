"""A small HTTP client on the standard library, for webhooks, chat APIs and ``danlu runs
control``: every call has a timeout, an HTTP error status is an answer (not an exception), and
only a failure to get any answer raises :class:`OSError` (``TimeoutError`` among them).

Loopback addresses never go through a proxy (``http_proxy`` would otherwise catch
``127.0.0.1``); other hosts follow the usual proxy environment variables.

Example:
    >>> body, headers = json_body({"text": "hi"})
    >>> body, headers["Content-Type"]
    (b'{"text":"hi"}', 'application/json; charset=utf-8')
    >>> data, ctype = multipart_body({"chat_id": "1"}, {"photo": ("a.png", b"PNG", "image/png")},
    ...                              boundary="XX")
    >>> ctype, data.count(b"--XX")
    ('multipart/form-data; boundary=XX', 3)
"""

from __future__ import annotations

import ipaddress
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

#: the User-Agent of every request
USER_AGENT = "danlu-monitor/1"


@dataclass
class Response:
    """An HTTP answer: ``status``, ``headers`` (lower-case names), ``body``."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON (None when it is not JSON)."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``).

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
        (True, True, False)
    """
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _opener(url: str) -> urllib.request.OpenerDirector:
    host = urllib.parse.urlsplit(url).hostname or ""
    if is_loopback(host):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def request(method: str, url: str, *, data: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 2.0) -> Response:
    """Send one request and read the whole answer within ``timeout`` seconds per socket
    operation; raises ``OSError`` when no answer came (refused, unreachable, timed out)."""
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"User-Agent": USER_AGENT, **(headers or {})})
    try:
        with _opener(url).open(req, timeout=timeout) as resp:
            return Response(resp.status, resp.read(), _lower(resp.headers.items()))
    except urllib.error.HTTPError as e:
        with e:
            return Response(e.code, e.read() or b"", _lower(e.headers.items() if e.headers
                                                           else []))
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, OSError):
            raise reason from None
        raise OSError(str(reason)) from None
    except TimeoutError as e:
        raise TimeoutError(f"no answer within {timeout:g} s") from e


def _lower(items: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}


def json_body(doc: Any) -> tuple[bytes, dict[str, str]]:
    """``doc`` as a JSON request body and its headers."""
    return orjson.dumps(doc), {"Content-Type": "application/json; charset=utf-8"}


def form_body(fields: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """``fields`` as an ``application/x-www-form-urlencoded`` body and its headers."""
    data = urllib.parse.urlencode({k: v for k, v in fields.items() if v is not None}).encode()
    return data, {"Content-Type": "application/x-www-form-urlencoded"}


def multipart_body(fields: dict[str, Any], files: dict[str, tuple[str, bytes, str]],
                   boundary: str | None = None) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of text ``fields`` and ``files`` (``name -> (filename,
    bytes, content type)``), and its Content-Type."""
    boundary = boundary or uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        if value is None:
            continue
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     .encode() + str(value).encode() + b"\r\n")
    for name, (filename, content, ctype) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{filename}"\r\nContent-Type: {ctype}\r\n\r\n'.encode()
                     + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every secret replaced by ``***`` (for error messages that may quote a
    URL holding a token)."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


__all__ = ["Response", "request", "json_body", "form_body", "multipart_body", "is_loopback",
           "redact", "USER_AGENT"]
