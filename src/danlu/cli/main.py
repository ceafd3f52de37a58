"""The ``danlu`` command: one thin typer app; every command is a plain library call."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from danlu import __version__
from danlu.cli import bench, data, doctor
from danlu.cli import demo as demo_cli
from danlu.cli import eval as eval_cli
from danlu.cli import predict as predict_cli
from danlu.cli import pseudo_label as pseudo_label_cli
from danlu.cli import train as train_cli
from danlu.cli._common import console, set_quiet
from danlu.errors import DanluError

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


doctor.register(app)
data.register(app)
train_cli.register(app)
pseudo_label_cli.register(app)
predict_cli.register(app)
demo_cli.register(app)
eval_cli.register(app)
bench.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: returns the exit status.

    ``DanluError`` prints one line (``error: ...`` plus ``hint: ...``) and exits 2; the
    traceback appears only with ``--debug``.
    """
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        app(args=args, prog_name="danlu")  # standalone: usage errors exit 2 via SystemExit
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except DanluError as e:
        if debug:
            console.print_exception()
        console.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
        if e.hint:
            console.print(f"hint: {escape(e.hint)}", highlight=False, soft_wrap=True)
        return 2
    return 0

if __name__ == "__main__":
    sys.exit(main())
