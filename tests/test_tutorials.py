"""The tutorials of docs/tutorials/ (issue 17) run as written and show what they recorded.

Each page runs through ``scripts/tutorials.py`` (every block, verbatim, in a scratch folder;
a server a block starts is stopped afterwards), one test per page; these are the heavy tests:
each trains a small model on the CPU, about a minute. The cheap tests check what a reader
sees without running anything: every output block holds recorded output, every picture a
page shows is in docs/tutorials/img/ (and nothing else is), and every link resolves inside
docs/.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.test_docs_links import relative_links

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "tutorials.py"


def _load_runner():
    spec = importlib.util.spec_from_file_location("danlu_tutorials_runner", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


runner = _load_runner()
PAGES = runner.pages([])  # the pages index.md links, in its order


def test_index_links_every_page():
    on_disk = {p.name for p in runner.PAGES.glob("*.md")} - {"index.md"}
    assert PAGES and {p.name for p in PAGES} == on_disk


@pytest.mark.parametrize("page", [runner.PAGES / "index.md", *PAGES], ids=lambda p: p.stem)
def test_links_resolve_inside_docs(page):
    docs = ROOT / "docs"
    for target in relative_links(page.read_text(encoding="utf-8")):
        path = (page.parent / target).resolve()
        assert path.is_relative_to(docs), f"{page.name}: {target} is not a page of docs/"
        assert path.is_file(), f"{page.name}: {target} does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_page_shows_its_output_and_pictures(page):
    parsed = runner.parse(page)
    assert parsed.blocks and parsed.outputs, f"{page.name}: no steps or no output shown"
    for out in parsed.outputs:
        text = "\n".join(parsed.lines[out.start:out.end])
        assert text.strip(), (f"{page.name}:{out.start}: empty output block (run "
                              f"python scripts/tutorials.py --record {page.stem})")
    for pic in parsed.pictures:
        assert (runner.PAGES / pic.dst).is_file(), f"{page.name}: {pic.dst} is missing"
    assert parsed.pictures, f"{page.name} shows no picture"


def test_every_picture_in_img_is_shown():
    shown = {pic.dst for page in PAGES for pic in runner.parse(page).pictures}
    on_disk = {f"img/{p.name}" for p in runner.IMG.iterdir()}
    assert on_disk == shown


def test_output_specs_keep_the_lines_asked_for():
    text = "a 1\nb 2\n\x1b[1mc 3\x1b[0m\nd 4\n"
    assert runner.keep_lines(text, "") == "a 1\nb 2\nc 3\nd 4"
    assert runner.keep_lines(text, "last 2") == "c 3\nd 4"
    assert runner.keep_lines(text, "grep ^(a|c); first 1") == "a 1"
    assert runner.keep_lines(text, "drop [bd]") == "a 1\nc 3"


#: What a page needs besides danlu's core install: (what, found?).
NEEDS = {"serve": [("curl", lambda: shutil.which("curl") is not None),
                   ("the serve extra (fastapi, uvicorn, httpx)",
                    lambda: all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn",
                                                                      "httpx")))],
         "steer": [("curl", lambda: shutil.which("curl") is not None),
                   ("a Chromium on PATH", lambda: shutil.which("chromium") is not None),
                   ("Playwright", lambda: importlib.util.find_spec("playwright") is not None)]}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_tutorial_runs(page):
    for what, found in NEEDS.get(page.stem, []):
        if not found():
            pytest.skip(f"{page.name} needs {what}")
    env = dict(os.environ)
    if "PYTEST_XDIST_WORKER" in env:  # the other worker has the other core
        env.setdefault("OMP_NUM_THREADS", "1")
    r = subprocess.run([sys.executable, str(SCRIPT), page.stem], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
