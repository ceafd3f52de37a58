"""``danlu doctor``: what works on this machine, each line checked for real."""

from __future__ import annotations

import typer
from rich.table import Table

from danlu.cli._common import console, print_json

_STYLE = {"ok": "green", "info": "cyan", "warn": "yellow", "fail": "bold red"}


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor(
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ) -> None:
        """Check this machine for deep learning, each line for real.

        Python, torch/torchvision/kornia, CUDA, cuDNN, GPUs, the driver, MPS, CPU threads, a
        tiny conv forward + backward on every device, redis-server and chromium.

        Exits 0 when the CPU path works, 1 when it does not.

        Example: danlu doctor --json
        """
        from danlu.doctor import cpu_path_works, run_checks

        checks = run_checks()
        works = cpu_path_works(checks)
        if as_json:
            print_json({"cpu_path_works": works, "checks": [c.to_dict() for c in checks]})
        else:
            table = Table(title="danlu doctor")
            for col in ("check", "status", "value", "hint"):
                table.add_column(col)
            for c in checks:
                hint = c.hint if c.status in ("warn", "fail", "info") else ""
                table.add_row(c.name, f"[{_STYLE[c.status]}]{c.status}[/]", c.value, hint)
            console.print(table)
            console.print("CPU path works." if works else "[bold red]CPU path is broken.[/]")
        if not works:
            raise typer.Exit(1)
