"""Shared helpers for the benchmark scripts: timing and the one result table.

Every benchmark prints, in one run, our time and each peer's time on the same input, the ratio
(ours / peer: below 1.0 means we are faster) and whether the outputs agree.
"""

from __future__ import annotations

import gc
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import orjson
from rich.console import Console
from rich.table import Table


def measure(fn: Callable[[], object], *, repeat: int = 5, warmup: int = 1,
            max_seconds: float = 60.0) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs after ``warmup`` runs.

    Stops early (with at least one timed run) once ``max_seconds`` of timed runs have passed,
    so a slow peer does not hold a benchmark for minutes.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if spent > max_seconds:
            break
    return statistics.median(times)


@dataclass
class Row:
    """One comparison: our time against one peer's time on the same input."""

    case: str
    ours_s: float
    peer: str
    peer_s: float
    agree: bool
    goal: str = ""

    @property
    def ratio(self) -> float:
        """ours / peer; below 1.0 means ours is faster."""
        return self.ours_s / self.peer_s if self.peer_s > 0 else float("inf")

    @property
    def speedup(self) -> float:
        """peer / ours; above 1.0 means ours is faster."""
        return self.peer_s / self.ours_s if self.ours_s > 0 else float("inf")

    @property
    def met(self) -> bool | None:
        """Whether the row reaches its goal, when the goal is one this reads (None if not)."""
        return goal_met(self.goal, self.ours_s, self.ratio, self.speedup)


_GOAL = re.compile(r"\s*(<=|>=)\s*([0-9]*\.?[0-9]+)\s*(x|ms|s)?\b")


def goal_met(goal: str, ours_s: float, ratio: float, speedup: float) -> bool | None:
    """Read a goal's leading comparison and judge it: ``>= 20x`` (speed-up, peer / ours),
    ``<= 1.2x`` or ``<= 0.5`` (ours / peer), ``<= 200 ms`` or ``<= 1.0 s`` (our time).
    None when the goal does not start with one of these."""
    m = _GOAL.match(goal or "")
    if not m:
        return None
    op, value, unit = m.group(1), float(m.group(2)), m.group(3)
    if unit in ("ms", "s"):
        measured = ours_s * (1000.0 if unit == "ms" else 1.0)
    else:
        measured = speedup if op == ">=" else ratio
    return measured >= value if op == ">=" else measured <= value


def goal_text(goal: str, met: bool | None) -> str:
    """The goal as the table shows it: with ``met`` or ``MISSED`` when it was judged."""
    if met is None:
        return goal
    return f"{goal} — {'met' if met else 'MISSED'}"


def machine() -> str:
    """A one-line description of the machine the benchmark ran on."""
    import os

    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def report(title: str, rows: list[Row], *, as_json: bool = False) -> None:
    """Print the table (or one JSON document with ``as_json``)."""
    if as_json:
        doc = {"benchmark": title, "machine": machine(),
               "rows": [asdict(r) | {"ratio": r.ratio, "speedup": r.speedup, "met": r.met}
                        for r in rows]}
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title=f"{title} — {machine()}")
    for col in ("case", "ours", "peer", "peer time", "ours/peer", "speed-up", "agree", "goal"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.case, _fmt(r.ours_s), r.peer, _fmt(r.peer_s), f"{r.ratio:.3f}",
                      f"{r.speedup:.1f}x", "yes" if r.agree else "NO", goal_text(r.goal, r.met))
    _console().print(table)


def _console() -> Console:
    # Piped output (logs, docs) gets a wide table instead of rich's 80-column fallback.
    import sys

    return Console() if sys.stdout.isatty() else Console(width=200)


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.2f} ms"


# -- accuracy comparisons ------------------------------------------------------------------------
@dataclass
class MetricRow:
    """One method's accuracy on a held-out set (for benchmarks that compare quality, not time).

    ``metrics`` maps a metric name (``AP50``, ``AP`` ...) to its value; ``seconds`` is the time
    the method took (e.g. training); ``reference`` marks the row the others are compared with.
    """

    case: str
    method: str
    metrics: dict[str, float]
    seconds: float = float("nan")
    note: str = ""
    reference: bool = False


def report_metrics(title: str, rows: list[MetricRow], *, as_json: bool = False) -> None:
    """Print a table of metrics per method, with each metric's difference to the reference
    row of the same case (or one JSON document with ``as_json``)."""
    if as_json:
        doc = {"benchmark": title, "machine": machine(), "rows": [asdict(r) for r in rows]}
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
        return
    names: list[str] = []
    for r in rows:
        names += [k for k in r.metrics if k not in names]
    refs = {r.case: r for r in rows if r.reference}
    cases = list(dict.fromkeys(r.case for r in rows))
    one_case = len(cases) == 1
    table = Table(title=f"{title}\n{cases[0] + chr(10) if one_case else ''}{machine()}")
    columns = ["method", *names, *(f"Δ{n}" for n in names), "time", "note"]
    for col in ([] if one_case else ["case"]) + columns:
        table.add_column(col)
    for r in rows:
        ref = refs.get(r.case)
        deltas = ["" if ref is None or r is ref or n not in ref.metrics or n not in r.metrics
                  else f"{r.metrics[n] - ref.metrics[n]:+.3f}" for n in names]
        values = [f"{r.metrics[n]:.3f}" if n in r.metrics else "" for n in names]
        time_s = "" if r.seconds != r.seconds else _fmt(r.seconds)
        cells = [r.method, *values, *deltas, time_s, r.note]
        table.add_row(*(cells if one_case else [r.case, *cells]))
    _console().print(table)


def shapes_train_test(settings: dict) -> tuple:
    """The training and held-out test scenes of the model benchmarks: generated shapes at
    ``settings["size"]`` px, ``n_train`` (seed 0) and ``n_test`` (seed 1) images."""
    from danlu.data.synth import synthesize

    size = settings["size"]
    kw = {"image_size": (size, size), "scale_range": (max(10, size // 8), size // 2),
          "encode": False}
    return (synthesize("shapes", num_images=settings["n_train"], seed=0, **kw),
            synthesize("shapes", num_images=settings["n_test"], seed=1, **kw))
