"""``danlu bench NAME``: run one benchmark script from ``benchmarks/`` and print its table."""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
from pathlib import Path

import typer

from danlu.cli._common import OPTIONAL_MODULES, missing_modules
from danlu.errors import ConfigError


def benchmarks_dir() -> Path:
    """The ``benchmarks/`` folder: the current directory's, else the source checkout's."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (root / "benchmarks" / "_common.py").is_file():
            return root / "benchmarks"
    raise ConfigError("cannot find the benchmarks/ folder",
                      hint="run `danlu bench` from the root of a danlu source checkout")


def _guarded(handler_types: list[ast.expr]) -> bool:
    names = {getattr(t, "id", getattr(t, "attr", "")) for t in handler_types}
    return bool(names & {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


def _required_imports(path: Path, *, top_level_only: bool = False
                      ) -> tuple[set[str], set[str]]:
    """Top-level module names ``path`` imports outside ``try: ... except ImportError`` (with
    ``top_level_only``, outside functions too: a helper's functions may go unused), and the
    ``benchmarks._x`` helpers it imports."""
    tree = ast.parse(path.read_text(), str(path))
    in_functions: list[tuple[int, int]] = []
    if top_level_only:
        in_functions = [(n.lineno, n.end_lineno or 0) for n in ast.walk(tree)
                        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    optional_spans: list[tuple[int, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            types: list[ast.expr] = []
            for h in node.handlers:
                if h.type is None:
                    types.append(ast.Name("BaseException"))
                elif isinstance(h.type, ast.Tuple):
                    types.extend(h.type.elts)
                else:
                    types.append(h.type)
            if _guarded(types) and node.body:
                optional_spans.append((node.body[0].lineno, node.body[-1].end_lineno or 0))
    mods, helpers = set(), set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if any(a <= node.lineno <= b for a, b in optional_spans + in_functions):
            continue
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""])
        for name in names:
            if name.startswith("benchmarks."):
                helpers.add(name.split(".")[1])
            elif name == "benchmarks" and isinstance(node, ast.ImportFrom):
                helpers.update(a.name for a in node.names)
            else:
                mods.add(name.split(".")[0])
    return mods, helpers


def missing_for(module_name: str) -> dict[str, str]:
    """The optional modules benchmark ``module_name`` (and its helpers) needs and this
    environment lacks, each with how to install it."""

    root = benchmarks_dir()
    seen, todo, needed = set(), [module_name], set()
    while todo:
        name = todo.pop()
        if name in seen or not (root / f"{name}.py").is_file():
            continue
        seen.add(name)
        mods, helpers = _required_imports(root / f"{name}.py",
                                          top_level_only=name != module_name)
        needed |= mods
        todo.extend(helpers)
    return missing_modules(sorted(needed))


def _missing_error(name: str, missing: dict[str, str]) -> ConfigError:
    hints = sorted(set(missing.values()))
    return ConfigError(f"danlu bench {name} needs {', '.join(missing)}, which "
                       f"{'is' if len(missing) == 1 else 'are'} not installed",
                       hint="; ".join(hints))


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
        redis: bool = typer.Option(False, "--redis", help="serve only: the Redis Streams "
                                   "backend (danlu serve --redis + danlu worker) instead."),
        ray: bool = typer.Option(False, "--ray", help="serve only: the Ray Serve backend "
                                 "(danlu serve --ray) instead."),
    ) -> None:
        """Time ours against each peer on the same input, in one run, and check outputs agree.

        Prints our time, the peer's time, their ratio (ours/peer: below 1 is faster) and
        whether the outputs agree.

        Examples:
          danlu bench boxes
          danlu bench serve --redis     (the scale-out over Redis vs the in-process batcher)
        """
        variant = {k: True for k, on in (("redis", redis), ("ray", ray)) if on}
        _bench(name, quick, as_json, variant)


def _variant_error(name: str, variant: dict[str, bool], run: object) -> ConfigError | None:
    """Why ``variant`` (``{"redis": True}``...) does not fit benchmark ``name``, or None."""
    if len(variant) > 1:
        return ConfigError("--redis and --ray are two benchmarks: choose one")
    params = inspect.signature(run).parameters  # type: ignore[arg-type]
    unknown = [k for k in variant if k not in params]
    if unknown:
        return ConfigError(f"danlu bench {name} has no --{unknown[0]} variant",
                           hint="--redis and --ray are variants of `danlu bench serve`")
    return None


def _bench(name: str | None = None, quick: bool = False, as_json: bool = False,
           variant: dict[str, bool] | None = None) -> None:
    if not name:
        for n in available():
            print(n)
        return
    module_name = name.replace("-", "_")
    if name not in available():
        raise ConfigError(f"no benchmark named {name!r}",
                          hint="available: " + ", ".join(available()))
    missing = missing_for(module_name)
    if missing:  # before any work starts
        raise _missing_error(name, missing)
    try:
        module = _load(module_name)
        common = _load("_common")
        why = _variant_error(name, variant or {}, module.run)
        if why is not None:
            raise why
        rows = module.run(quick=quick, **(variant or {}))
    except ModuleNotFoundError as e:  # one the scan could not see (a dynamic import)
        top = (e.name or "").split(".")[0]
        if top not in OPTIONAL_MODULES:
            raise
        raise _missing_error(name, {top: OPTIONAL_MODULES[top]}) from e
    custom = getattr(module, "REPORT", None)  # a benchmark with its own table (e.g. cold)
    if custom is not None:
        custom(rows, as_json=as_json)
    elif getattr(module, "METRICS", False):  # an accuracy comparison (MetricRow)
        common.report_metrics(getattr(module, "TITLE", name), rows, as_json=as_json)
    else:
        common.report(getattr(module, "TITLE", name), rows, as_json=as_json)
