"""``danlu bench NAME``: run one benchmark script from ``benchmarks/`` and print its table."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import typer

from danlu.errors import ConfigError


def benchmarks_dir() -> Path:
    """The ``benchmarks/`` folder: the current directory's, else the source checkout's."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (root / "benchmarks" / "_common.py").is_file():
            return root / "benchmarks"
    raise ConfigError("cannot find the benchmarks/ folder",
                      hint="run `danlu bench` from the root of a danlu source checkout")


def available() -> list[str]:
    """Names `danlu bench` accepts (one per script in benchmarks/, '_' shown as '-')."""
    return sorted(p.stem.replace("_", "-") for p in benchmarks_dir().glob("*.py")
                  if not p.stem.startswith("_") and "\ndef run(" in p.read_text())


def _load(module_name: str):  # noqa: ANN202 - a benchmark module
    root = str(benchmarks_dir().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(f"benchmarks.{module_name}")


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        name: str = typer.Argument(None, help="Benchmark to run, e.g. 'boxes'. Omit to list."),
        quick: bool = typer.Option(False, "--quick", help="Small inputs: a smoke run."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ) -> None:
        """Time ours against each peer on the same input, in one run, and check outputs agree.

        Prints our time, the peer's time, their ratio (ours/peer: below 1 is faster) and
        whether the outputs agree. Example: danlu bench boxes
        """
        _bench(name, quick, as_json)


def _bench(name: str | None = None, quick: bool = False, as_json: bool = False) -> None:
    if not name:
        for n in available():
            print(n)
        return
    module_name = name.replace("-", "_")
    if name not in available():
        raise ConfigError(f"no benchmark named {name!r}",
                          hint="available: " + ", ".join(available()))
    module = _load(module_name)
    common = _load("_common")
    rows = module.run(quick=quick)
    custom = getattr(module, "REPORT", None)  # a benchmark with its own table (e.g. cold)
    if custom is not None:
        custom(rows, as_json=as_json)
    elif getattr(module, "METRICS", False):  # an accuracy comparison (MetricRow)
        common.report_metrics(getattr(module, "TITLE", name), rows, as_json=as_json)
    else:
        common.report(getattr(module, "TITLE", name), rows, as_json=as_json)
