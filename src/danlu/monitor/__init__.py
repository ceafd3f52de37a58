"""Watching and steering a training run from anywhere, with no cloud account: a live page
(:class:`Monitor`, ``danlu train --monitor``), control from the page, the HTTP API, ``danlu runs
control`` and chat bots (Telegram, Slack), notifications to webhooks and robots, and the runs'
status (``danlu runs list``). See ``docs/monitor.md``.

Example:
    >>> from danlu.monitor import EventBuffer
    >>> EventBuffer().snapshot()["state"]
    {'status': 'starting'}
"""

from __future__ import annotations

from danlu._entry import lazy_attributes

_LAZY = {
    "Monitor": "danlu.monitor.callback",
    "EventBuffer": "danlu.monitor.events",
    "Notifier": "danlu.monitor.notify",
    "build_monitor": "danlu.monitor.options",
    "list_runs": "danlu.monitor.runs",
    "run_info": "danlu.monitor.runs",
    "control_run": "danlu.monitor.runs",
}

__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = list(_LAZY)
