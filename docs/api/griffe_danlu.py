"""A griffe extension for the API pages (mkdocs.yml loads it; mkdocs does not copy it).

danlu's docstrings are Google style with habits from Sphinx and reStructuredText that
griffe's parser and Markdown do not read; the source stays as it is (the docstrings also read
as plain text and run as doctests) and only the rendering changes:

* ``Example:`` as a section title: griffe knows only ``Examples:``, and renders ``Example:``
  as an admonition whose ``>>>`` lines come out as one run-on paragraph;
* Sphinx roles (``:func:`~danlu.boxes.nms```, ``:class:`Detections```): shown as code, the
  last dotted part when the target starts with ``~`` (as Sphinx shows it);
* doctest lines (``>>>`` and their output) outside an ``Examples:`` section: Markdown reads
  ``>>>`` as nested quotes, so each such doctest becomes a fenced ``pycon`` block, without its
  ``# doctest:`` flags;
* RST simple tables (``====  ====`` rules): shown as Markdown tables;
* the RST literal-block marker ``text::`` at the end of a line: shown as ``text:`` (the
  indented block after it is a code block in Markdown too).
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(\w)::[ \t]*$", re.MULTILINE)
_FLAGS = re.compile(r"\s*# doctest:.*$")


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    if match.group(1):
        target = target.rsplit(".", 1)[-1]
    return f"``{target}``"


def _fence_doctests(text: str) -> str:
    """Each run of doctest lines (``>>>`` up to the next blank or less indented line) outside
    an ``Examples:`` section (griffe reads those itself) as a fenced ``pycon`` block with blank
    lines around it."""
    lines = text.split("\n")
    out: list[str] = []
    section: int | None = None  # the indent of the Examples: title we are under
    i = 0
    while i < len(lines):
        line = lines[i]
        body = line.lstrip()
        depth = len(line) - len(body)
        if section is not None and body and depth <= section:
            section = None
        if section is None and re.fullmatch(r"Examples:\s*", body):
            section = depth
        if section is not None or not body.startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[:depth]
        block = []
        while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
            block.append(_FLAGS.sub("", lines[i][depth:]))
            i += 1
        if out and out[-1].strip():
            out.append("")
        out += [indent + "```pycon", *(indent + b for b in block), indent + "```"]
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


_RULE = re.compile(r"^(\s*)=+( +=+)+\s*$")


def _cells(line: str, starts: list[int]) -> list[str]:
    return [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]


def _rows(lines: list[str], starts: list[int]) -> list[list[str]]:
    """The rows of a table body; a line whose first cell is empty continues the row above."""
    rows: list[list[str]] = []
    for line in lines:
        cells = _cells(line, starts)
        if rows and not cells[0]:
            rows[-1] = [f"{x} {y}".strip() for x, y in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    return rows


def _tables(text: str) -> str:
    """RST simple tables (rows between two rules, or a header, a rule and rows between three)
    as Markdown tables."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        rule = _RULE.match(lines[i])
        ends = [j for j in range(i + 1, len(lines)) if _RULE.match(lines[j])][:2]
        if not rule or not ends or not all(line.strip() for line in lines[i + 1:ends[0]]):
            out.append(lines[i])
            i += 1
            continue
        starts = [m.start() for m in re.finditer(r"=+", lines[i])]
        first = lines[i + 1:ends[0]]
        second = lines[ends[0] + 1:ends[1]] if len(ends) == 2 else []
        if second and all(line.strip() for line in second):  # a header row, then the rows
            head = [" ".join(h) for h in zip(*_rows(first, starts), strict=True)]
            body, i = _rows(second, starts), ends[1] + 1
        else:
            head, body, i = [""] * len(starts), _rows(first, starts), ends[0] + 1
        indent = rule.group(1)
        out += [indent + "| " + " | ".join(head) + " |", indent + "|" + " --- |" * len(starts)]
        out += [indent + "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                for row in body]
    return "\n".join(out)


def rewrite(text: str) -> str:
    """The docstring ``text`` as griffe's Google parser and Markdown expect it (the tests in
    ``tests/test_docs_site.py`` show each rule)."""
    text = _tables(_fence_doctests(_EXAMPLE.sub(r"\1Examples:", text)))
    text = _ROLE.sub(_role, text)
    return _LITERAL.sub(r"\1:", text)


class DanluDocstrings(Extension):
    """Rewrite each object's docstring once the tree is loaded (see the module docstring)."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        doc = obj.docstring
        if doc is not None and not getattr(doc, "_danlu", False):  # an alias shares its target's
            doc.value = rewrite(doc.value)
            doc._danlu = True
