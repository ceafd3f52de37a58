"""Run the tutorial pages of docs/tutorials/ as a reader would: every ```bash and ```python
block, verbatim, in order, in one scratch folder per page, with the venv's ``danlu`` on PATH.
With ``--record`` it also writes what the blocks printed into the page and copies the pictures
the page shows into docs/tutorials/img/.

The page format (plain Markdown; the markers are HTML comments, invisible on the site):

* A ```bash or ```python block is a step. Each runs in its own process (``bash -e -o
  pipefail`` or the venv's python), so a python block does not see an earlier block's
  variables; files in the scratch folder are what carries over.
* ``<!-- output -->`` followed by a fenced block (```text) is the output of the step just
  above it. ``<!-- output: last 8 -->``, ``first 8``, ``grep REGEX`` (lines that match) and
  ``drop REGEX`` (lines that do not) choose the lines kept, applied left to right when
  separated by ``;`` (``<!-- output: grep ^epoch; last 3 -->``).
* ``<!-- image: PATH -->`` on the line before ``![alt](img/NAME.png)``: the step above wrote
  PATH (relative to the scratch folder); ``--record`` copies it to img/NAME.png, at most 900 px
  wide (``<!-- image: PATH x2 -->`` first enlarges a small picture 2 times, pixel for pixel).
  PATH may be a glob (``report/gallery/00_*.png``): the first match, by name, is taken. A
  picture over 200 KB as a PNG is stored with 256 colours. Without ``--record`` the run only
  checks that PATH was written.

As in scripts/readme_walk.py, a server a block starts listens on a free loopback port in place
of the page's ``8000`` (one port per page, so later blocks reach it); what the blocks leave
running is stopped when the page ends. Recorded output shows ``8000`` and paths relative to
the scratch folder.

A block fails the page when it exits non-zero; the runner prints the block and its output.

Usage: ``python scripts/tutorials.py [PAGE ...] [--record] [--keep]`` (PAGE: ``data``,
``sliced.md`` ...; default: every page docs/tutorials/index.md links, in its order).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_walk import ROOT, _free_port  # noqa: E402

PAGES = ROOT / "docs" / "tutorials"
IMG = PAGES / "img"
MAX_WIDTH = 900
SMALL = 200_000  # bytes: a picture larger than this as a PNG is stored with 256 colours
CODE = re.compile(r"^```(bash|python)\s*$")
FENCE = re.compile(r"^```")
OUTPUT = re.compile(r"^<!--\s*output(?::\s*(.*?))?\s*-->\s*$")
IMAGE = re.compile(r"^<!--\s*image:\s*(\S+)(?:\s+x([1-4]))?\s*-->\s*$")
SHOWN = re.compile(r"!\[[^\]]*\]\((img/[^)\s]+)\)")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclasses.dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence


@dataclasses.dataclass
class Output:
    block: int  # index of the block whose output this is
    spec: str
    start: int  # 0-based index of the first content line
    end: int  # 0-based index of the closing fence


@dataclasses.dataclass
class Picture:
    block: int  # index of the block after which PATH must exist
    src: str
    dst: str  # img/NAME.png
    zoom: int = 1  # enlarge this many times (nearest pixel) before the width limit


@dataclasses.dataclass
class Page:
    path: Path
    lines: list[str]
    blocks: list[Block]
    outputs: list[Output]
    pictures: list[Picture]


def _closing(lines: list[str], i: int, path: Path) -> int:
    """The index of the fence that closes the one opened at line ``i``."""
    for j in range(i + 1, len(lines)):
        if FENCE.match(lines[j]):
            return j
    raise SystemExit(f"{path.name}:{i + 1}: a fence that is never closed")


def parse(path: Path) -> Page:
    """The steps, output blocks and pictures of one page, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    outputs: list[Output] = []
    pictures: list[Picture] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := CODE.match(line):
            end = _closing(lines, i, path)
            blocks.append(Block(m[1], "\n".join(lines[i + 1:end]) + "\n", i + 1))
            i = end + 1
            continue
        if m := OUTPUT.match(line):
            j = i + 1
            if j >= len(lines) or not FENCE.match(lines[j]):
                raise SystemExit(f"{path.name}:{i + 1}: <!-- output --> must be followed by a "
                                 "fenced block")
            if not blocks:
                raise SystemExit(f"{path.name}:{i + 1}: an output block before any step")
            end = _closing(lines, j, path)
            outputs.append(Output(len(blocks) - 1, (m[1] or "").strip(), j + 1, end))
            i = end + 1
            continue
        if m := IMAGE.match(line):
            shown = SHOWN.search(lines[i + 1]) if i + 1 < len(lines) else None
            if shown is None:
                raise SystemExit(f"{path.name}:{i + 1}: <!-- image: ... --> must be followed "
                                 "by a line that shows ![...](img/NAME.png)")
            if not blocks:
                raise SystemExit(f"{path.name}:{i + 1}: a picture before any step")
            pictures.append(Picture(len(blocks) - 1, m[1], shown[1], int(m[2] or 1)))
            i += 2
            continue
        if FENCE.match(line):  # another language (json, yaml, text): skip it whole
            i = _closing(lines, i, path) + 1
            continue
        for shown in SHOWN.findall(line):
            raise SystemExit(f"{path.name}:{i + 1}: {shown} is shown without an "
                             "<!-- image: PATH --> line above it")
        i += 1
    return Page(path, lines, blocks, outputs, pictures)


def keep_lines(text: str, spec: str) -> str:
    """The lines of ``text`` that ``spec`` keeps (see the module docstring)."""
    lines = [ANSI.sub("", line).rstrip() for line in text.splitlines()]
    for part in (p.strip() for p in spec.split(";") if p.strip()):
        word, _, arg = part.partition(" ")
        arg = arg.strip()
        if word in ("first", "last") and arg.isdigit():
            n = int(arg)
            lines = lines[:n] if word == "first" else lines[-n:] if n else []
        elif word == "grep" and arg:
            lines = [line for line in lines if re.search(arg, line)]
        elif word == "drop" and arg:
            lines = [line for line in lines if not re.search(arg, line)]
        else:
            raise SystemExit(f"output spec {part!r}: expected first N, last N, grep REGEX or "
                             "drop REGEX")
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def pages(names: list[str]) -> list[Path]:
    """The pages named (``data``, ``data.md``, a path), or every page index.md links."""
    if names:
        found = []
        for name in names:
            path = Path(name)
            if not path.is_file():
                path = PAGES / (name if name.endswith(".md") else f"{name}.md")
            if not path.is_file():
                raise SystemExit(f"no tutorial page {name!r} in {PAGES}")
            found.append(path.resolve())
        return found
    index = (PAGES / "index.md").read_text(encoding="utf-8")
    linked = re.findall(r"\]\(([\w.-]+\.md)\)", index)
    return [PAGES / name for name in dict.fromkeys(linked) if (PAGES / name).is_file()]


def environment() -> dict[str, str]:
    venv_bin = ROOT / ".venv" / "bin"
    env = dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
               VIRTUAL_ENV=str(ROOT / ".venv"), COLUMNS="80",
               TUTORIAL_PYTHON=str(venv_bin / "python"))
    env.pop("PYTHONPATH", None)
    return env


def _stop(groups: list[int]) -> None:
    """SIGTERM what the page's blocks left running, then SIGKILL what is still there."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 0.0)):
        alive = []
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
                alive.append(pgid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [g for g in alive if _group_alive(g)]
        if not alive:
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _resize(pictures: list[tuple[Path, Path, int]], env: dict[str, str]) -> None:
    """Copy each picture as a PNG, enlarged ``zoom`` times, at most MAX_WIDTH wide, in 256
    colours when it is large (with the venv's Pillow)."""
    code = f"""
import json, os, sys
from PIL import Image
for src, dst, zoom in json.loads(sys.argv[1]):
    im = Image.open(src)
    im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    if zoom > 1:
        im = im.resize((im.width * zoom, im.height * zoom), Image.NEAREST)
    if im.width > {MAX_WIDTH}:
        im = im.resize(({MAX_WIDTH}, round(im.height * {MAX_WIDTH} / im.width)), Image.LANCZOS)
    im.save(dst, "PNG", optimize=True)
    if os.path.getsize(dst) > {SMALL} and im.mode == "RGB":  # noisy pictures: 256 colours
        im.quantize(256, method=Image.Quantize.FASTOCTREE).save(dst, "PNG", optimize=True)
"""
    subprocess.run([env["TUTORIAL_PYTHON"], "-c", code,
                    json.dumps([[str(s), str(d), z] for s, d, z in pictures])],
                   check=True, env=env)


def run_page(page: Page, scratch: Path, record: bool) -> tuple[bool, float]:
    """Run every block of ``page`` in ``scratch``; with ``record`` rewrite its output blocks
    and pictures. Returns (all passed, seconds)."""
    env = environment()
    port = str(_free_port())
    name = page.path.stem
    outputs: dict[int, str] = {}
    groups: list[int] = []
    snapshots: list[tuple[Path, Path, int]] = []
    shots = scratch / ".pictures"
    shots.mkdir()
    started = time.perf_counter()
    try:
        for i, block in enumerate(page.blocks):
            code = re.sub(r"(?<!\d)8000(?!\d)", port, block.code)
            script = scratch / f".block{i + 1}.{'sh' if block.lang == 'bash' else 'py'}"
            script.write_text(code, encoding="utf-8")
            cmd = (["bash", "-e", "-o", "pipefail", str(script)] if block.lang == "bash"
                   else [env["TUTORIAL_PYTHON"], str(script)])
            log = scratch / f".block{i + 1}.log"
            t0 = time.perf_counter()
            with log.open("w") as out:
                proc = subprocess.Popen(cmd, cwd=scratch, env=env, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                try:
                    rc = proc.wait()
                finally:
                    if _group_alive(proc.pid):  # it left something running (a server)
                        groups.append(proc.pid)
            seconds = time.perf_counter() - t0
            first = code.strip().splitlines()[0] if code.strip() else ""
            print(f"{name}: block {i + 1}/{len(page.blocks)} ({block.lang}, line {block.line}) "
                  f"{'ok' if rc == 0 else 'FAILED'} in {seconds:.1f} s: {first[:60]}",
                  flush=True)
            text = log.read_text(encoding="utf-8", errors="replace")
            if rc != 0:
                print(f"--- {page.path.name}, block {i + 1} (line {block.line}) ---\n{code}"
                      f"--- its output (exit {rc}, tail) ---\n{text[-6000:]}", file=sys.stderr)
                return False, time.perf_counter() - started
            text = text.replace(str(scratch) + os.sep, "").replace(str(scratch), ".")
            outputs[i] = re.sub(rf"(?<!\d){port}(?!\d)", "8000", text)
            for pic in (p for p in page.pictures if p.block == i):
                matches = sorted(scratch.glob(pic.src)) if glob.has_magic(pic.src) else []
                src = matches[0] if matches else scratch / pic.src
                if not src.is_file():
                    print(f"{name}: {pic.src} (shown as {pic.dst}) was not written by block "
                          f"{i + 1} (line {block.line})", file=sys.stderr)
                    return False, time.perf_counter() - started
                snap = shots / f"{len(snapshots)}{src.suffix}"
                shutil.copyfile(src, snap)
                snapshots.append((snap, PAGES / pic.dst, pic.zoom))
    finally:
        _stop(groups)
    seconds = time.perf_counter() - started
    kept = {}
    for out in page.outputs:
        kept[id(out)] = keep_lines(outputs[out.block], out.spec)
        if not kept[id(out)]:
            print(f"{name}: the output block at line {out.start} kept nothing of block "
                  f"{out.block + 1}'s output (spec {out.spec!r})", file=sys.stderr)
            return False, seconds
    if record:
        lines = list(page.lines)
        for out in sorted(page.outputs, key=lambda o: o.start, reverse=True):
            lines[out.start:out.end] = kept[id(out)].splitlines()
        page.path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        IMG.mkdir(exist_ok=True)
        _resize(snapshots, env)
        shown = {dst.name for _, dst, _ in snapshots}
        for old in IMG.glob(f"{name}-*.png"):  # this page's pictures it no longer shows
            if old.name not in shown:
                old.unlink()
        print(f"{name}: recorded {len(page.outputs)} outputs and {len(snapshots)} pictures",
              flush=True)
    return True, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", help="data, train-eval, ... (default: all)")
    parser.add_argument("--record", action="store_true",
                        help="write the real output and pictures into the pages")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folders")
    args = parser.parse_args()
    chosen = pages(args.pages)
    if not chosen:
        print(f"tutorials: no page found in {PAGES}", file=sys.stderr)
        return 1
    parsed = [parse(path) for path in chosen]  # every page parses before any runs
    times = []
    for page in parsed:
        scratch = Path(tempfile.mkdtemp(prefix=f"danlu-tutorial-{page.path.stem}-"))
        try:
            ok, seconds = run_page(page, scratch, args.record)
        finally:
            if args.keep:
                print(f"{page.path.stem}: scratch folder kept at {scratch}")
            else:
                shutil.rmtree(scratch, ignore_errors=True)
        times.append(f"{page.path.stem} {seconds:.0f} s")
        if not ok:
            print(f"tutorials: {page.path.name} FAILED", file=sys.stderr)
            return 1
    print(f"tutorials: all {len(parsed)} pages ran ({', '.join(times)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
