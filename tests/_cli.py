"""The console script as a user runs it, for the CLI tests: ``python -m danlu ARGS`` in a
folder, its output captured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def danlu(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``danlu ARGS`` in ``cwd`` (text stdout and stderr captured; ``timeout`` is a
    safety bound on a hung process, not a speed check)."""
    return subprocess.run([sys.executable, "-m", "danlu", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
