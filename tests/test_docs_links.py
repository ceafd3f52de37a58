"""Every relative link of the README and docs/ points at a file inside the repository (issue
11: a link to ``../shared/DESIGN.md`` broke in every clone)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    """The link targets of a Markdown text that are paths (no URL, no bare anchor)."""
    return [t.split("#")[0] for t in LINK.findall(text)
            if not re.match(r"^[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_stay_in_the_repository(page):
    for target in relative_links(page.read_text(encoding="utf-8")):
        path = (page.parent / target).resolve()
        assert path.is_relative_to(ROOT), f"{page.name}: {target} leaves the repository"
        assert path.exists(), f"{page.name}: {target} does not exist"


def test_links_are_found():
    text = "[a](docs/x.md) [b](https://x.org) [c](#top) [d](../shared/D.md#s)"
    assert relative_links(text) == ["docs/x.md", "../shared/D.md"]
