"""The one HTML page writer of danlu's reports (evaluation, training runs, the demo): a
self-contained page with one style sheet, written atomically, and the one way they write
numbers: metrics with four decimals (:func:`number`), parameters as a person writes them
(:func:`short_number`, :func:`param_text`: ``0.9`` not ``0.8999999999999999``, an area bound of
``1e10`` as no limit).

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
.metrics td{font-variant-numeric:tabular-nums}.params td:last-child{text-align:left}
.grid img{width:32%;margin:.3%}
"""


#: An area bound at or above this is "no limit" (COCO's ``1e5 ** 2`` for the ``all`` range).
NO_LIMIT_AREA = 1e10


def number(v: Any) -> str:
    """A metric as text: four decimals, ``n/a`` for None or NaN."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def short_number(v: Any) -> str:
    """A parameter as a person writes it, the one number formatter of every page: 4
    significant digits below 1, 4 decimals above, trailing zeros trimmed (the shortest text
    that reads back as the rounded value); ``∞`` for infinity, ``n/a`` for NaN, integers as is.

    Example:
        >>> [short_number(v) for v in (0.8999999999999999, 1024.0, 0.05, 1e-05, 3, 2.5e7)]
        ['0.9', '1024', '0.05', '1e-05', '3', '2.5e+07']
    """
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return str(int(v))
    x = float(v)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    r = float(f"{x:.4g}") if abs(x) < 1 else round(x, 4)
    if r == 0:
        return "0"
    if abs(r) >= 1e6:
        return f"{r:.4g}"
    text = repr(r)
    return text[:-2] if text.endswith(".0") else text


def area_range_text(bounds: Sequence[float]) -> str:
    """An area range ``[lo, hi]`` in px²; a bound of :data:`NO_LIMIT_AREA` or more is no limit.

    Example:
        >>> [area_range_text(r) for r in ([0, 1e10], [0, 1024.0], [1024, 9216], [9216, 1e10])]
        ['any size', '< 1024 px²', '1024–9216 px²', '≥ 9216 px² (no upper limit)']
    """
    lo, hi = (float(b) for b in bounds)
    open_top = hi >= NO_LIMIT_AREA
    if lo <= 0:
        return "any size" if open_top else f"< {short_number(hi)} px²"
    if open_top:
        return f"≥ {short_number(lo)} px² (no upper limit)"
    return f"{short_number(lo)}–{short_number(hi)} px²"


def param_text(value: Any, key: str = "") -> str:
    """A parameter's value as plain text (not escaped): numbers by :func:`short_number`,
    lists joined by commas, mappings as ``name: value``; ``area_range(s)`` keys by
    :func:`area_range_text`.

    Example:
        >>> param_text({"all": [0.0, 1e10], "small": [0.0, 1024.0]}, "area_ranges")
        'all: any size; small: < 1024 px²'
        >>> param_text([0.5, 0.55, 0.8999999999999999]), param_text(False), param_text(None)
        ('0.5, 0.55, 0.9', 'false', 'none')
    """
    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return short_number(value)
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {param_text(v, key if key.startswith('area_range') else '')}"
                         for k, v in value.items())
    if isinstance(value, (Sequence, np.ndarray)):
        items = list(np.asarray(value).tolist() if isinstance(value, np.ndarray) else value)
        if key.startswith("area_range") and len(items) == 2:
            return area_range_text(items)
        return ", ".join(f"[{param_text(v)}]" if isinstance(v, (list, tuple, np.ndarray))
                         else param_text(v) for v in items)
    return str(value)


def params_table(params: Mapping[str, Any]) -> str:
    """An HTML table of an evaluation's parameters, each value by :func:`param_text`."""
    e = html.escape
    rows = "".join(f"<tr><td>{e(str(k))}</td><td>{e(param_text(v, str(k)))}</td></tr>"
                   for k, v in params.items())
    return f"<table class='params'><tr><th>parameter</th><th>value</th></tr>{rows}</table>"


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


__all__ = ["write_html_page", "write_html_report", "html_page", "metrics_table", "number",
           "short_number", "param_text", "area_range_text", "params_table", "NO_LIMIT_AREA",
           "CSS"]
