"""``danlu bench``: a missing optional dependency is one line naming what to install, exit 2,
before any work; the tables mark each goal they can judge met or MISSED."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from danlu.cli import bench as cli_bench
from danlu.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _without(monkeypatch, *modules: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in modules else real(name, *a))


def test_missing_extra_is_one_line_before_any_work(monkeypatch, capsys):
    _without(monkeypatch, "ensemble_boxes")
    monkeypatch.setattr(cli_bench, "_load", lambda *a: pytest.fail("work started"))
    assert main(["bench", "boxes", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "ensemble_boxes" in err and "danlu[bench]" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 2  # error + hint


def test_every_benchmark_names_what_it_needs(monkeypatch):
    _without(monkeypatch, *cli_bench.OPTIONAL_MODULES)
    needs = {b: cli_bench.missing_for(b.replace("-", "_")) for b in cli_bench.available()}
    assert "ensemble_boxes" in needs["boxes"] and "pycocotools" in needs["eval"]
    assert "ultralytics" in needs["train"] and "sahi" in needs["predict"]
    assert all(hint.startswith("pip install") for n in needs.values() for hint in n.values())


def test_nothing_missing_in_the_dev_environment():
    pytest.importorskip("ensemble_boxes")
    assert cli_bench.missing_for("boxes") == {}


@pytest.mark.parametrize("goal, ours, ratio, speedup, met", [
    (">= 20x", 1.0, 1 / 3.6, 3.6, False), (">= 20x", 1.0, 1 / 25, 25.0, True),
    ("<= 1.0", 1.0, 0.8, 1.25, True), ("<= 1.2x hotcoco", 1.0, 1.67, 0.6, False),
    ("<= 200 ms", 0.0187, 0.04, 25.0, True), ("<= 1.0 s", 1.2, 1.0, 1.0, False),
    (">= 2x images/s (ours/peer <= 0.5)", 1.0, 0.65, 1.54, False),
    ("", 1.0, 1.0, 1.0, None), ("the same boxes", 1.0, 1.0, 1.0, None),
])
def test_goals_are_judged(goal, ours, ratio, speedup, met):
    from benchmarks._common import goal_met

    assert goal_met(goal, ours, ratio, speedup) is met


def test_report_marks_a_missed_goal(capsys):
    from benchmarks._common import Row, report

    report("t", [Row("soft-NMS", 1.0, "peer", 3.6, True, ">= 20x"),
                 Row("NMS", 0.01, "peer", 1.0, True, ">= 20x")])
    out = capsys.readouterr().out
    assert ">= 20x — MISSED" in out and ">= 20x — met" in out
