"""Where the monitor's tokens and signing secrets come from: the environment or a file, never
the command line (``ps`` shows it to every user) nor the run folder (it gets copied around).

Names (environment variables, and the keys of a ``--notify-secrets`` file):

==========================  =============================================================
``DANLU_MONITOR_TOKEN``     the bearer token of the live page and its API
``DANLU_TELEGRAM_TOKEN``    the Telegram bot token (chat control and Telegram notices)
``DANLU_SLACK_TOKEN``       the Slack bot token (``xoxb-...``, chat control)
``DANLU_DINGTALK_SECRET``   the DingTalk robot's signing secret (``SEC...``)
``DANLU_FEISHU_SECRET``     the Feishu / Lark robot's signing secret
``DANLU_NTFY_TOKEN``        an ntfy access token (``tk_...``) for a protected topic
==========================  =============================================================

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "secrets")
    >>> _ = open(path, "w").write("# robots\\nDANLU_FEISHU_SECRET = abc\\n")
    >>> Secrets(path, environ={}).get("DANLU_FEISHU_SECRET")
    'abc'
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

from danlu.errors import ConfigError

NAMES = ("DANLU_MONITOR_TOKEN", "DANLU_TELEGRAM_TOKEN", "DANLU_SLACK_TOKEN",
         "DANLU_DINGTALK_SECRET", "DANLU_FEISHU_SECRET", "DANLU_NTFY_TOKEN")


def _read(path: str | Path) -> str:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from e
    if os.name == "posix" and mode & (stat.S_IRGRP | stat.S_IROTH):
        print(f"warning: {path} is readable by other users (chmod 600 {path})",
              file=sys.stderr, flush=True)
    return text


def read_token_file(path: str | Path) -> str:
    """The token a file holds: its first non-empty line, stripped."""
    for line in _read(path).splitlines():
        if line.strip():
            return line.strip()
    raise ConfigError(f"{path}: holds no token")


class Secrets:
    """Secrets by name: a file of ``NAME=value`` lines (``#`` comments; given explicitly, it
    wins), then the environment."""

    def __init__(self, path: str | Path | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self.values: dict[str, str] = {}
        if path is not None:
            for number, line in enumerate(_read(path).splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                name, sep, value = line.partition("=")
                if not sep:
                    raise ConfigError(f"{path}:{number}: expected NAME=value")
                self.values[name.strip()] = value.strip().strip("'\"")

    def get(self, name: str) -> str | None:
        """The secret ``name``: the file's value, else the environment's, else None."""
        return self.values.get(name) or self.environ.get(name) or None


__all__ = ["Secrets", "read_token_file", "NAMES"]
