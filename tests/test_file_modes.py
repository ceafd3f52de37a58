"""Files and folders danlu writes follow the umask, like any other tool's (0666 / 0777 less
the umask), not the 0600 / 0700 of the temporary files they are renamed from."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from danlu.data._atomic import atomic_dir, current_umask, write_bytes_atomic

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX modes")


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_current_umask_reads_without_changing_it():
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert current_umask() == 0o027
    finally:
        os.umask(old)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_bytes_atomic(tmp_path / "a.bin", b"x")
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "b.txt").write_text("y")
        from danlu.models.checkpoint import save_checkpoint

        save_checkpoint({"x": 1}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.bin") == 0o666 & ~umask
    assert _mode(tmp_path / "c.pt") == 0o666 & ~umask
    assert _mode(tmp_path / "out") == 0o777 & ~umask


def test_cli_outputs_are_readable_by_others(tmp_path):
    """``danlu data synth`` then ``danlu data convert`` under umask 022: every file 0644,
    every folder 0755."""
    env = {**os.environ}
    script = ("import os, sys; os.umask(0o022); from danlu.cli.main import main; "
              "sys.exit(main(sys.argv[1:]))")
    run = [sys.executable, "-c", script]
    synth = tmp_path / "synth"
    r = subprocess.run(run + ["data", "synth", "--preset", "shapes", "--out", str(synth),
                              "--num-images", "3", "--image-size", "128"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    coco = tmp_path / "coco"
    r = subprocess.run(run + ["data", "convert", str(synth), str(coco), "--to", "coco"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    paths = [p for root in (synth, coco) for p in [root, *root.rglob("*")]]
    assert any(p.is_file() for p in paths)
    for p in paths:
        assert _mode(p) == (0o755 if p.is_dir() else 0o644), (p, oct(_mode(p)))
