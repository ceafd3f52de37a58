"""The documentation site (issue 17): ``mkdocs build --strict`` of mkdocs.yml, offline.

The build must pass with no warning (broken links and anchors, pages missing from the nav and
docstrings griffe cannot parse all fail it); every page of the nav becomes HTML; the API pages
carry rendered signatures; no page loads an asset from another host (fonts, CDNs); the search
index is written; every Markdown file under docs/ is in the nav; and the command pages are
what docs/commands/generate.py writes from ``--help``, with every command and option on them.
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIG = ROOT / "mkdocs.yml"

_NEEDED = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
_MISSING = [m for m in _NEEDED if importlib.util.find_spec(m.split(".")[0]) is None
            or importlib.util.find_spec(m) is None]
needs_mkdocs = pytest.mark.skipif(
    bool(_MISSING), reason=f"{', '.join(_MISSING)} not installed: the docs extra "
    "(pip install -e '.[docs]': mkdocs, mkdocs-material, mkdocstrings[python])")

#: Markdown files under docs/ that are deliberately not pages of the nav, with the reason.
NOT_IN_NAV: dict[str, str] = {}

#: The command page of each top-level command (default: commands/<name>.md).
COMMAND_PAGE = {"pseudo-label": "train.md", "doctor": "misc.md", "demo": "misc.md",
                "worker": "serve.md"}


def nav_pages(nav: object) -> list[str]:
    """Every Markdown path of a mkdocs ``nav`` (nested lists and ``{title: path}`` maps)."""
    if isinstance(nav, str):
        return [nav] if nav.endswith(".md") else []
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in nav_pages(v)]
    if isinstance(nav, list):
        return [p for v in nav for p in nav_pages(v)]
    return []


def _nav() -> list[str]:
    return nav_pages(yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["nav"])


def _html_of(page: str, site: Path) -> Path:
    """Where mkdocs (``use_directory_urls``) writes the HTML of ``page``."""
    stem = page[: -len(".md")]
    if stem == "index" or stem.endswith("/index"):
        return site / stem[: -len("index")] / "index.html"
    return site / stem / "index.html"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    if _MISSING:
        pytest.skip(f"{', '.join(_MISSING)} not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    # Offline: a download would go to a closed local port and fail the build.
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "http_proxy": closed,
           "https_proxy": closed, "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "no_proxy": "",
           "NO_PROXY": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(CONFIG), "-d", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return proc, out


@needs_mkdocs
def test_the_strict_build_passes_without_a_warning(site):
    proc, _ = site
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "WARNING" not in log, log[-4000:]


@needs_mkdocs
def test_every_nav_page_is_built(site):
    _, out = site
    missing = [p for p in _nav() if not _html_of(p, out).is_file()]
    assert not missing, f"no HTML for: {missing}"


def _signatures(page: Path) -> str:
    """The text of every rendered signature block of an API page, tags stripped."""
    text = page.read_text(encoding="utf-8")
    blocks = re.findall(r'<div class="doc-signature[^"]*">(.*?)</div>', text, re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", "\n".join(blocks)))


@needs_mkdocs
@pytest.mark.parametrize(("page", "anchor", "signature"), [
    ("api/structures.md", "danlu.structures.Detections", r"Detections\(\s*xyxy"),
    ("api/structures.md", "danlu.structures.Dataset", r"Dataset\(\s*samples"),
    ("api/boxes.md", "danlu.boxes.iou.box_iou", r"box_iou\(boxes1: Array, boxes2: Array\)"),
    ("api/boxes.md", "danlu.boxes.nms.batched_nms", r"batched_nms\(\s*boxes"),
    ("api/evaluate.md", "danlu.evaluate.api.evaluate", r"evaluate\(\s*gt"),
    ("api/infer.md", "danlu.infer.predictor.Predictor", r"Predictor\(\s*model"),
    ("api/data.md", "danlu.data.io.load_dataset", r"load_dataset\(\s*path"),
])
def test_api_pages_render_signatures(site, page, anchor, signature):
    _, out = site
    built = _html_of(page, out)
    assert f'id="{anchor}"' in built.read_text(encoding="utf-8"), f"{page}: no {anchor}"
    assert re.search(signature, _signatures(built)), f"{page}: no signature {signature!r}"


@needs_mkdocs
def test_docstring_examples_render_as_code(site):
    """Doctests are code blocks, not Markdown quotes; Sphinx roles are gone."""
    _, out = site
    text = _html_of("api/boxes.md", out).read_text(encoding="utf-8")
    assert "<blockquote>" not in text
    assert ":func:" not in text and ":class:" not in text
    assert re.search(r'<span class="gp">&gt;&gt;&gt; </span>', text)


class _Assets(HTMLParser):
    """The URLs a page loads by itself (scripts, styles, images, frames, media), not links."""

    LOADS = {"script": "src", "img": "src", "iframe": "src", "source": "src", "video": "src",
             "audio": "src", "embed": "src", "object": "data", "track": "src", "input": "src"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in self.LOADS and a.get(self.LOADS[tag]):
            self.urls.append(a[self.LOADS[tag]] or "")
        if tag == "link" and a.get("href"):  # stylesheets, icons, preconnect, preload ...
            self.urls.append(a["href"] or "")
        for part in (a.get("srcset") or "").split(","):
            if part.strip():
                self.urls.append(part.split()[0])
        self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", a.get("style") or "")


_EXTERNAL = re.compile(r"^(https?:)?//", re.I)


@needs_mkdocs
def test_no_page_loads_anything_from_another_host(site):
    _, out = site
    found = []
    for page in out.rglob("*.html"):
        parser = _Assets()
        text = page.read_text(encoding="utf-8")
        parser.feed(text)
        found += [f"{page.relative_to(out)}: {u}" for u in parser.urls if _EXTERNAL.match(u)]
        found += [f"{page.relative_to(out)}: {u}" for u in re.findall(
            r"@import\s+(?:url\()?['\"]?((?:https?:)?//[^'\")\s]+)", text)]
    for css in out.rglob("*.css"):
        for u in re.findall(r"(?:url\(\s*['\"]?|@import\s+['\"])((?:https?:)?//[^'\")\s]+)",
                            css.read_text(encoding="utf-8")):
            found.append(f"{css.relative_to(out)}: {u}")
    assert not found, "external assets:\n" + "\n".join(found[:20])


@needs_mkdocs
def test_the_search_index_is_written(site):
    _, out = site
    index = json.loads((out / "search" / "search_index.json").read_text(encoding="utf-8"))
    locations = {d["location"].split("#")[0] for d in index["docs"]}
    assert {"conventions/", "api/structures/", "commands/data/"} <= locations


def test_every_markdown_file_is_in_the_nav():
    """No orphan pages: each docs/**/*.md is in mkdocs.yml's nav (or in NOT_IN_NAV)."""
    nav = set(_nav())
    files = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    orphans = sorted(files - nav - set(NOT_IN_NAV))
    assert not orphans, f"not in the nav of mkdocs.yml: {orphans}"
    gone = sorted(nav - files)
    assert not gone, f"in the nav but not under docs/: {gone}"


def _commands() -> list[tuple[list[str], object]]:
    """Every command (not group) of the CLI with its path, e.g. (["data", "convert"], cmd)."""
    import typer

    from danlu.cli.main import register_commands

    found = []

    def walk(cmd: object, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                if not getattr(sub, "hidden", False):
                    walk(sub, [*path, name])
        else:
            found.append((path, cmd))

    walk(typer.main.get_command(register_commands()), [])
    return found


def _section(text: str, heading: str) -> str:
    """The part of a Markdown page from ``heading`` to the next heading of its level."""
    start = text.index(heading)
    level = heading.split(" ")[0]
    rest = text[start + len(heading):]
    end = re.search(rf"^{level} ", rest, re.M)
    return rest[: end.start()] if end else rest


_COMMANDS = _commands()


@pytest.mark.parametrize(("path", "cmd"), _COMMANDS, ids=[" ".join(p) for p, _ in _COMMANDS])
def test_command_pages_list_every_option_of_the_help(path, cmd):
    page = DOCS / "commands" / COMMAND_PAGE.get(path[0], f"{path[0]}.md")
    assert page.is_file(), f"danlu {' '.join(path)}: no page {page.relative_to(ROOT)}"
    heading = f"## `danlu {' '.join(path)}`"
    text = page.read_text(encoding="utf-8")
    assert heading in text, f"{page.name}: no section {heading!r}"
    section = _section(text, heading)
    shown = [o for p in cmd.params if p.param_type_name == "option" and not p.hidden
             for o in (*p.opts, *p.secondary_opts)]
    missing = [o for o in shown if f"`{o}`" not in section]
    assert not missing, (f"{page.name}, {heading}: options of --help not listed: {missing} "
                         "(run: python docs/commands/generate.py)")


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_command_pages_are_what_the_generator_writes():
    """docs/commands/*.md come from ``--help``: a changed command needs
    ``python docs/commands/generate.py``."""
    generated = _load(DOCS / "commands" / "generate.py", "danlu_docs_generate").pages()
    stale = [name for name, text in generated.items()
             if (DOCS / "commands" / name).read_text(encoding="utf-8") != text]
    assert not stale, f"out of date: {stale}; run: python docs/commands/generate.py"
    on_disk = sorted(p.name for p in (DOCS / "commands").glob("*.md"))
    assert sorted(generated) == on_disk, f"pages the generator does not write: {on_disk}"


def _rewrite():
    if importlib.util.find_spec("griffe") is None:
        pytest.skip("griffe (mkdocstrings[python]) not installed")
    return _load(DOCS / "api" / "griffe_danlu.py", "griffe_danlu").rewrite


def test_docstring_rewrite_rules():
    rewrite = _rewrite()
    assert rewrite("Do it.\n\nExample:\n    >>> 1\n    1") == (
        "Do it.\n\nExamples:\n    >>> 1\n    1")  # griffe's own section: left to griffe
    assert rewrite("See :func:`~danlu.boxes.nms` and :class:`Detections`.") == (
        "See ``nms`` and ``Detections``.")
    assert rewrite("Layout::\n\n    ROOT/a") == "Layout:\n\n    ROOT/a"
    assert rewrite("Like this:\n>>> f(1)  # doctest: +SKIP\n2\n\nThen.") == (
        "Like this:\n\n```pycon\n>>> f(1)\n2\n```\n\nThen.")
    table = "=====  =====\n``a``  one\n``b``  two\n       more\n=====  =====\n"
    assert rewrite(table) == "|  |  |\n| --- | --- |\n| ``a`` | one |\n| ``b`` | two more |\n"
    headed = "===  ===\nx    y\n===  ===\n1    2\n===  ===\n"
    assert rewrite(headed) == "| x | y |\n| --- | --- |\n| 1 | 2 |\n"
    plain = "Nothing to change: a == b.\n"
    assert rewrite(plain) == plain


def test_the_models_page_names_every_model():
    """docs/models.md names each model `danlu train --model` accepts (its --help lists them)."""
    train = next(cmd for path, cmd in _COMMANDS if path == ["train"])
    help_ = next(p.help for p in train.params if "--model" in getattr(p, "opts", ()))
    names = re.findall(r"[a-z]+-[a-z0-9_]+", help_.split(":", 1)[1])
    assert len(names) >= 10, help_
    text = (DOCS / "models.md").read_text(encoding="utf-8")
    missing = [n for n in names if f"`{n}`" not in text]
    assert not missing, f"docs/models.md does not name: {missing}"
