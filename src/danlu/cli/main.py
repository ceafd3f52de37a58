"""The ``danlu`` command: one thin typer app; every command is a plain library call.

Each command lives in its own module under :mod:`danlu.cli` and is registered only when it
runs (or when the help lists them all), so that ``danlu eval`` imports neither the training
nor the model code, nor torch: users start every command in a fresh process.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from importlib import import_module

import typer

from danlu import __version__
from danlu.cli._common import console, set_quiet
from danlu.errors import DanluError

#: command name -> the module of :mod:`danlu.cli` that registers it, in ``--help`` order.
COMMANDS = {"doctor": "doctor", "data": "data", "train": "train", "runs": "runs",
            "pseudo-label": "pseudo_label", "predict": "predict", "export": "export",
            "serve": "serve", "worker": "worker",
            "demo": "demo", "eval": "eval", "bench": "bench"}
_GLOBAL_FLAGS = ("--debug", "--quiet", "-q")
#: options whose value may be left out, and the value they then take (click has no such kind)
OPTIONAL_VALUES = {"--monitor": "0"}

app = typer.Typer(
    name="danlu",
    help="Object detection from data to service: prepare data, augment, train, evaluate, "
    "predict and serve.\n\nExample: danlu doctor",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"danlu {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show a traceback on errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or info text."),
) -> None:
    """Global options; see each command's --help."""
    set_quiet(quiet)


def _plain_help_names() -> None:
    """Two fixes to typer 0.29's help: no ``<bool>`` beside an on/off flag (it reads as if the
    flag took a value), and arguments in capitals as click writes them (``MODEL SOURCES...``,
    ``[MODEL]`` when optional) instead of ``{model} {sources}...``."""
    from typer.core import TyperArgument, TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: object) -> str | None:
        return None if self.is_flag and not self.count else shown(self, ctx)

    def display_name_raw(self: TyperArgument) -> str:
        return self.metavar if self.metavar is not None else str(self.name).upper()

    def usage_name(self: TyperArgument) -> str:
        name = self.display_name_raw + ("..." if self.nargs != 1 else "")
        return name if self.required else f"[{name}]"

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]
    TyperArgument.display_name_raw = property(display_name_raw)  # type: ignore[assignment]
    TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]


_plain_help_names()
_registered: set[str] = set()


def register_commands(names: Iterable[str] | None = None) -> typer.Typer:
    """Register the commands ``names`` (every one when None) on :data:`app` and return it."""
    for name in COMMANDS if names is None else names:
        module = COMMANDS[name]
        if module not in _registered:
            import_module(f"danlu.cli.{module}").register(app)
            _registered.add(module)
    _reflow_helps(app)
    order = list(COMMANDS)  # the help lists them in COMMANDS order, however they came
    app.registered_commands.sort(key=lambda c: order.index(c.name) if c.name in order else 99)
    return app


def reflow_help(text: str) -> str:
    r"""A command's docstring as ``--help`` shows it: each paragraph's lines joined (rich keeps
    every line break, so wrapped source lines print as ragged half-lines), while an example
    line (one starting with ``danlu`` or indented) keeps a line of its own.

    Example:
        >>> reflow_help("Do it\nnow.\n\nExamples:\n  danlu a\n  danlu b")
        'Do it now.\n\nExamples:\n  danlu a\n  danlu b'
    """
    import inspect

    paragraphs = []
    for block in inspect.cleandoc(text).split("\n\n"):
        lines: list[str] = []
        for line in block.splitlines():
            if lines and not (line.startswith((" ", "danlu ")) or lines[-1].endswith(":")):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line.rstrip())
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _reflow_helps(typer_app: typer.Typer) -> None:
    import inspect

    for info in typer_app.registered_commands:
        doc = info.help or (inspect.getdoc(info.callback) if info.callback else None)
        if doc and not getattr(info, "_danlu_reflowed", False):
            info.help = reflow_help(doc)
            info._danlu_reflowed = True  # type: ignore[attr-defined]
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _reflow_helps(group.typer_instance)


def _command(args: list[str]) -> str | None:
    """The command ``args`` run, None when they ask for the help, the version or nothing
    known (then every command is registered: typer lists them or names the unknown one)."""
    for a in args:
        if a in _GLOBAL_FLAGS:
            continue
        return a if a in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: returns the exit status.

    ``DanluError`` prints one line (``error: ...`` plus ``hint: ...``) and exits 2; the
    traceback appears only with ``--debug``.
    """
    args = sys.argv[1:] if argv is None else argv
    try:
        return _run(args)
    finally:
        if argv is None:  # the process's own command line: it ends right after this
            _fast_exit()


def hoist_global_flags(args: list[str]) -> list[str]:
    """``--debug`` / ``--quiet`` / ``-q`` wherever they are (before a ``--``) moved to the
    front, where the root command reads them: ``danlu train ... --debug`` works too."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in _GLOBAL_FLAGS]
    return flags + [a for a in args[:end] if a not in _GLOBAL_FLAGS] + args[end:]


def fill_optional_values(args: list[str]) -> list[str]:
    """Give an option of :data:`OPTIONAL_VALUES` written without a value (last, or before
    another option) its default value: ``train --monitor --data d`` is ``--monitor 0``.

    Example:
        >>> fill_optional_values(["train", "--monitor", "--data", "d"])
        ['train', '--monitor', '0', '--data', 'd']
        >>> fill_optional_values(["train", "--monitor", "8080"])
        ['train', '--monitor', '8080']
    """
    end = args.index("--") if "--" in args else len(args)
    out: list[str] = []
    for i, a in enumerate(args):
        out.append(a)
        if i < end and a in OPTIONAL_VALUES and (i + 1 >= end or args[i + 1].startswith("-")):
            out.append(OPTIONAL_VALUES[a])
    return out


def _run(args: list[str]) -> int:
    args = fill_optional_values(hoist_global_flags(args))
    debug = "--debug" in args
    command = _command(args)
    try:
        register_commands(None if command is None else [command])
        app(args=args, prog_name="danlu")  # standalone: usage errors exit 2 via SystemExit
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except DanluError as e:
        from rich.markup import escape

        if debug:
            console.print_exception()
        console.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
        if e.hint:
            console.print(f"hint: {escape(e.hint)}", highlight=False, soft_wrap=True)
        return 2
    return 0


def _fast_exit() -> None:
    """Let the interpreter's shutdown skip its garbage collection: with numba loaded it walks
    hundreds of thousands of objects for 0.1-0.3 s, all of them freed by the OS anyway.
    Objects still die by reference count, files close and ``atexit`` handlers run."""
    import gc

    gc.freeze()

if __name__ == "__main__":
    sys.exit(main())
