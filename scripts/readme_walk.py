"""Walk through README.md as a new user would: every ```bash and ```python block, verbatim,
in order, in one scratch folder, with the venv's ``danlu`` on PATH. ``.ci/run`` calls it after
``make test`` (``make readme-walk``), so the README cannot drift from the tool.

What it does besides running the blocks, and why:

* The first block's ``make test`` is not run again (``.ci/run`` has just run it); its
  ``make demo`` runs in the repository, as a new user types it.
* The README names a user's own files as placeholders: ``photos/`` (a folder of pictures),
  ``photo.jpg`` and ``scene.tif`` (a huge image). They are made in the scratch folder first,
  from danlu's synthetic scenes, before any block runs.
* A server started in a block gets a free loopback port in place of the README's ``8000``,
  and whatever a block leaves running is stopped when the block ends.

A block fails the walk when it exits non-zero; the walk prints the block and its output.

Usage: ``python scripts/readme_walk.py [--readme README.md] [--keep]``
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.M | re.S)


def blocks(readme: Path) -> list[tuple[str, str]]:
    """The ``(language, code)`` of every bash and python block, in order."""
    return [(m[1], m[2]) for m in BLOCK.finditer(readme.read_text(encoding="utf-8"))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _placeholders(scratch: Path, env: dict[str, str]) -> None:
    """The user's own files the README names: photos/, photo.jpg, scene.tif."""
    code = f"""
import numpy as np, tifffile
from PIL import Image
from danlu.data.synth import synthesize
from pathlib import Path
out = Path({str(scratch)!r})
ds = synthesize("shapes", num_images=4, seed=7, encode=False)
(out / "photos").mkdir()
for i, s in enumerate(ds.samples):
    Image.fromarray(s.load_image()).save(out / "photos" / f"photo{{i}}.jpg", quality=90)
Image.fromarray(ds.samples[0].load_image()).save(out / "photo.jpg", quality=90)
tile = np.concatenate([s.load_image() for s in ds.samples], axis=1)   # 256 x 1024
scene = np.tile(tile, (12, 3, 1))                                     # 3072 x 3072
tifffile.imwrite(out / "scene.tif", scene, tile=(512, 512), photometric="rgb")
"""
    subprocess.run([env["WALK_PYTHON"], "-c", code], check=True, env=env, cwd=scratch)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[int, float]:
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        code = proc.wait()
    try:  # whatever the block left running (a server started with &) stops with it
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    return code, time.perf_counter() - start


def walk(readme: Path, scratch: Path) -> int:
    """Run every block of ``readme``; 0 when all pass, 1 at the first that fails."""
    venv_bin = ROOT / ".venv" / "bin"
    env = dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
               VIRTUAL_ENV=str(ROOT / ".venv"), WALK_PYTHON=str(venv_bin / "python"))
    env.pop("PYTHONPATH", None)
    _placeholders(scratch, env)
    found = blocks(readme)
    if not found:
        print(f"readme walk: no bash or python block in {readme}", file=sys.stderr)
        return 1
    for i, (lang, code) in enumerate(found, 1):
        cwd = scratch
        if lang == "bash" and re.search(r"^make (demo|test)\b", code, re.M):
            code = "\n".join(line for line in code.splitlines()
                             if not line.startswith("make test"))
            cwd = ROOT
        if lang == "bash":
            code = code.replace("8000", str(_free_port()))
            script = scratch / f".block{i}.sh"
            script.write_text(code)
            cmd = ["bash", "-e", "-o", "pipefail", str(script)]
        else:
            script = scratch / f".block{i}.py"
            script.write_text(code)
            cmd = [env["WALK_PYTHON"], str(script)]
        first = code.strip().splitlines()[0] if code.strip() else ""
        code_rc, seconds = _run(cmd, cwd, env, scratch / f".block{i}.log")
        print(f"readme walk: block {i}/{len(found)} ({lang}) {'ok' if code_rc == 0 else 'FAILED'}"
              f" in {seconds:.1f} s: {first[:70]}", flush=True)
        if code_rc != 0:
            print(f"--- block {i} ---\n{code}\n--- its output (tail) ---", file=sys.stderr)
            print((scratch / f".block{i}.log").read_text()[-6000:], file=sys.stderr)
            return 1
    print(f"readme walk: all {len(found)} blocks of {readme.name} ran", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="danlu-readme-"))
    try:
        return walk(args.readme.resolve(), scratch)
    finally:
        if args.keep:
            print(f"readme walk: scratch folder kept at {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
