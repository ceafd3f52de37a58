"""The live page's HTTP server: the standard library's ``ThreadingHTTPServer`` in a daemon
thread, reading only from the run's :class:`~danlu.monitor.events.EventBuffer` (the training
thread never waits for it).

Routes:

=========================  ==================================================================
``GET /``                  the page (``static/``: HTML, CSS and JS served from here, no CDN)
``GET /api/state``         everything to draw the run now (curve, epochs, validation, history)
``GET /api/events``        server-sent events after ``?since=N`` (or ``Last-Event-ID``):
                           ``step``, ``epoch``, ``eval``, ``control``, ``event``, ``state``;
                           ``reset`` when the reader fell behind the ring (reload the state)
``GET /api/plot.png``      the loss curve
``GET /api/samples.png``   the latest sample predictions on validation images (404 before)
``POST /api/control``      ``{"action": "stop"|"pause"|"resume"|"save"|"set", "key", "value",
                           "source", "wait"}``: 200 once applied (within ``wait`` s), else 202
``POST /api/login``        ``{"token"}``: a session cookie for the page (EventSource and
                           ``<img>`` cannot send an Authorization header)
=========================  ==================================================================

Access: with a token every ``/api`` route needs ``Authorization: Bearer TOKEN`` (or the session
cookie from ``/api/login``, or the run's own secret from ``monitor.json``, which the CLI uses).
Without a token (loopback only) the Host header must name a loopback address, so that a web
page elsewhere cannot reach the monitor through DNS rebinding; a POST must be JSON, which a
cross-site form cannot send.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Protocol

import orjson

from danlu.errors import ConfigError
from danlu.monitor.events import EventBuffer
from danlu.monitor.http import is_loopback

PING = 15.0  # seconds between two keep-alive comments of an idle event stream
MAX_STREAMS = 16  # event streams at once (each holds a thread)
MAX_BODY = 64 * 1024
COOKIE = "danlu_monitor"
STATIC = {"index.html": "text/html; charset=utf-8", "monitor.js": "text/javascript; charset=utf-8",
          "monitor.css": "text/css; charset=utf-8"}
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
_JSON = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class Backend(Protocol):
    """What the server serves (:class:`~danlu.monitor.callback.Monitor` is one)."""

    buffer: EventBuffer

    def control_api(self, doc: Any, source: str, wait: float) -> tuple[int, dict[str, Any]]: ...

    def plot_png(self) -> bytes | None: ...

    def samples_png(self) -> bytes | None: ...


def static_files() -> dict[str, bytes]:
    """The page's files, read once from the package."""
    folder = resources.files("danlu.monitor") / "static"
    try:
        return {name: (folder / name).read_bytes() for name in STATIC}
    except OSError as e:
        raise ConfigError(f"the monitor's page is missing from this installation ({e})",
                          hint="reinstall danlu: its package data includes monitor/static/*"
                          ) from None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MonitorServer:
    """Serve ``backend`` on ``host:port`` (0: a free port) in a daemon thread.

    Args:
        backend: the run's buffer and actions.
        host / port: where to listen (a non-loopback host needs ``token``).
        token: the bearer token of every ``/api`` route (None: open, loopback only).
        secret: the run's own secret (``monitor.json``), always accepted as a bearer token.
    """

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 0, *,
                 token: str | None = None, secret: str | None = None) -> None:
        if not is_loopback(host) and not token:
            raise ConfigError(f"--monitor-host {host} lets other machines steer the run: it "
                              "needs --monitor-token (or $DANLU_MONITOR_TOKEN)",
                              hint="or keep the default 127.0.0.1 and reach it through an "
                              "SSH tunnel")
        self.backend, self.host, self.port = backend, host, int(port)
        self.token, self.secret = token or None, secret or None
        self.sessions: set[str] = set()
        self.files = static_files()
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)
        self.closing = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address (a wildcard host is shown as this machine's name)."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    @property
    def local_url(self) -> str:
        """The address to reach the page from this machine (a wildcard host is loopback)."""
        if self.host in ("0.0.0.0", ""):
            return f"http://127.0.0.1:{self.port}/"
        if self.host == "::":
            return f"http://[::1]:{self.port}/"
        return self.url

    def start(self) -> MonitorServer:
        """Listen and serve (raises :class:`ConfigError` when the port is taken)."""
        cls = _Server6 if ":" in self.host else _Server
        try:
            httpd = cls((self.host, self.port), _Handler)
        except OSError as e:
            raise ConfigError(f"--monitor: cannot listen on {self.host}:{self.port} "
                              f"({e.strerror or e})", hint="choose another port, or 0") from None
        httpd.monitor = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="danlu-monitor", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving; open event streams end at their next wake-up."""
        self.closing.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # -- access ------------------------------------------------------------------------------
    def bearer(self, header: str | None) -> str | None:
        """Who a bearer token is: ``cli`` (the run's secret), ``api`` (the token), or None."""
        if not header or not header.startswith("Bearer "):
            return None
        given = header[7:].strip().encode()
        if self.secret and hmac.compare_digest(given, self.secret.encode()):
            return "cli"
        if self.token and hmac.compare_digest(given, self.token.encode()):
            return "api"
        return None

    def login(self, token: Any) -> str | None:
        """A new session id for the right token, else None."""
        if not self.token or not isinstance(token, str) or not hmac.compare_digest(
                token.encode(), self.token.encode()):
            return None
        session = secrets.token_urlsafe(24)
        self.sessions.add(session)
        return session


class _Handler(BaseHTTPRequestHandler):
    server_version = "danlu-monitor"
    protocol_version = "HTTP/1.0"  # one request per connection; an event stream ends at close

    @property
    def mon(self) -> MonitorServer:
        return self.server.monitor  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Quiet: a request per step would flood the training's stderr."""

    # -- answers -----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: Any, **headers: str) -> None:
        self._send(status, orjson.dumps(doc, option=_JSON), "application/json", **headers)

    def _error(self, status: int, code: str, message: str) -> None:
        self._json(status, {"error": {"code": code, "message": message}})

    # -- access ------------------------------------------------------------------------------
    def _who(self) -> str | None:
        """``cli`` / ``api`` / ``page`` for an allowed request, None otherwise."""
        who = self.mon.bearer(self.headers.get("Authorization"))
        if who is not None:
            return who
        cookie = self.headers.get("Cookie", "")
        for part in cookie.split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and value in self.mon.sessions:
                return "page"
        if self.mon.token is None and self._host_ok():
            return "api"
        return None

    def _host_ok(self) -> bool:
        host = urllib.parse.urlsplit("//" + self.headers.get("Host", "")).hostname or ""
        return is_loopback(host) or host == self.mon.host

    def _guard(self) -> str | None:
        who = self._who()
        if who is None:
            self._error(401, "unauthorized", "this monitor needs its token "
                        "(Authorization: Bearer TOKEN)")
        return who

    # -- routes ------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - the base's name
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        if path in ("/", "/index.html"):
            return self._send(200, self.mon.files["index.html"], STATIC["index.html"])
        if path.startswith("/static/") and path[8:] in STATIC and path[8:] != "index.html":
            return self._send(200, self.mon.files[path[8:]], STATIC[path[8:]])
        if path == "/healthz":
            return self._json(200, {"ok": True})
        if not path.startswith("/api/"):
            return self._error(404, "not_found", f"no page {path}")
        if self._guard() is None:
            return None
        backend = self.mon.backend
        if path == "/api/state":
            return self._json(200, {**backend.buffer.snapshot(),
                                    "auth": self.mon.token is not None})
        if path == "/api/events":
            query = urllib.parse.parse_qs(url.query)
            since = self.headers.get("Last-Event-ID") or (query.get("since") or ["0"])[0]
            return self._stream(int(since) if str(since).isdigit() else 0)
        if path in ("/api/plot.png", "/api/samples.png"):
            png = backend.plot_png() if path == "/api/plot.png" else backend.samples_png()
            if png is None:
                return self._error(404, "not_yet", "no picture yet")
            return self._send(200, png, "image/png")
        return self._error(404, "not_found", f"no route {path}")

    do_HEAD = do_GET  # noqa: N815

    def do_POST(self) -> None:  # noqa: N802
        path = urllib.parse.urlsplit(self.path).path
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            return self._error(415, "json_only", "send Content-Type: application/json")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._error(413, "too_large", "the body is too large")
        try:
            doc = orjson.loads(self.rfile.read(length) or b"{}")
        except orjson.JSONDecodeError as e:
            return self._error(400, "bad_json", str(e))
        if path == "/api/login":
            session = self.mon.login(doc.get("token") if isinstance(doc, dict) else None)
            if session is None:
                return self._error(401, "unauthorized", "wrong token")
            return self._json(200, {"ok": True}, Set_Cookie=f"{COOKIE}={session}; HttpOnly; "
                              "SameSite=Strict; Path=/")
        if path != "/api/control":
            return self._error(404, "not_found", f"no route {path}")
        who = self._guard()
        if who is None:
            return None
        wait = 0.0
        if isinstance(doc, dict):
            with contextlib.suppress(TypeError, ValueError):
                wait = min(max(float(doc.pop("wait", 0) or 0), 0.0), 60.0)
        status, answer = self.mon.backend.control_api(doc, "cli" if who == "cli" else "api",
                                                      wait)
        return self._json(status, answer)

    # -- server-sent events ------------------------------------------------------------------
    def _stream(self, since: int) -> None:
        mon = self.mon
        if not mon.streams.acquire(blocking=False):
            return self._error(503, "busy", "too many open event streams")
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            self.wfile.write(b"retry: 2000\n\n")
            self.wfile.flush()
            self._pump(mon.backend.buffer, since)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the reader went away
        finally:
            mon.streams.release()

    def _pump(self, buffer: EventBuffer, seq: int) -> None:
        """Write events as they come; at the end, the last ones (the run's ``end``) and an
        ``end`` event of the stream's own."""
        last_write = time.monotonic()
        while True:
            closing = self.mon.closing.is_set() or buffer.closed
            events, gap = buffer.since(seq, timeout=0.0 if closing else 1.0)
            if gap:
                self.wfile.write(b"event: reset\ndata: {}\n\n")
                self.wfile.flush()
                return
            if events:
                chunks = [b"id: %d\nevent: %s\ndata: %s\n\n"
                          % (n, kind.encode(), orjson.dumps(data, option=_JSON))
                          for n, kind, data in events]
                self.wfile.write(b"".join(chunks))
                self.wfile.flush()
                seq, last_write = events[-1][0], time.monotonic()
            elif closing:
                self.wfile.write(b"event: end\ndata: {}\n\n")
                self.wfile.flush()
                return
            elif time.monotonic() - last_write >= PING:
                self.wfile.write(b": ping\n\n")
                self.wfile.flush()
                last_write = time.monotonic()


__all__ = ["MonitorServer", "Backend", "static_files"]
