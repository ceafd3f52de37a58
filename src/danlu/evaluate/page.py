"""The one HTML page writer of danlu's reports (evaluation, training runs, the demo): a
self-contained page with one style sheet, written atomically.

Example:
    >>> import tempfile, pathlib
    >>> p = write_html_page(pathlib.Path(tempfile.mkdtemp()) / "r.html", "A & B", "<p>hi</p>")
    >>> text = p.read_text(encoding="utf-8")
    >>> "<title>A &amp; B</title>" in text and "<p>hi</p>" in text
    True
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9rem;margin:1em 2em 1em 0;display:inline-table;
vertical-align:top}td,th{padding:.25rem .7rem;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafafa}.bar{display:inline-block;height:.7rem;
background:#4a7fc1;vertical-align:middle}img{max-width:100%;margin:.5em 0}
.tile{margin:1rem 0}.tile p{margin:.2rem 0;color:#555;font-size:.9rem}
.metrics td{font-variant-numeric:tabular-nums}.grid img{width:32%;margin:.3%}
"""


def number(v: Any) -> str:
    """A metric as text: four decimals, ``n/a`` for None or NaN."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def html_page(title: str, body: str) -> str:
    """A whole page: ``title`` (escaped) and ``body`` (HTML, inserted as is)."""
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n{body}\n"
            "</body></html>\n")


def write_html_page(path: str | Path, title: str, body: str) -> Path:
    """Write :func:`html_page` to ``path`` atomically; returns the path."""
    from danlu.data._atomic import write_text_atomic

    write_text_atomic(path, html_page(title, body))
    return Path(path)


def metrics_table(result: Any) -> str:
    """HTML tables of an :class:`~danlu.evaluate.result.EvalResult`'s named metrics and its
    per-class AP with ground-truth counts."""
    e = html.escape
    rows = "".join(f"<tr><td>{e(k)}</td><td>{number(v)}</td></tr>"
                   for k, v in result.metrics.items())
    per = "".join(f"<tr><td>{e(k)}</td><td>{number(v)}</td>"
                  f"<td>{result.num_gt.get(k, '')}</td></tr>"
                  for k, v in result.per_class.items())
    return (f"<table class='metrics'><tr><th>metric</th><th>value</th></tr>{rows}</table>"
            f"<table><tr><th>class</th><th>AP</th><th>ground truth</th></tr>{per}</table>")


def write_html_report(path: str | Path, title: str, result: Any | None = None, *,
                      images: Sequence[str] = (),
                      sections: Sequence[tuple[str, str]] = ()) -> Path:
    """A page of a title, ``result``'s :func:`metrics_table`, ``images`` (linked relative to
    ``path``) and ``(heading, html)`` sections."""
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    if result is not None:
        body.append(metrics_table(result))
    body += [f'<div><img src="{e(im)}" alt="{e(im)}"></div>' for im in images]
    body += [f"<h2>{e(heading)}</h2>{content}" for heading, content in sections]
    return write_html_page(path, title, "".join(body))


__all__ = ["write_html_page", "write_html_report", "html_page", "metrics_table", "number", "CSS"]
