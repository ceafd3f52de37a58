"""``danlu runs list|show|control``: the runs of a project, one run's record, steering a live
run. Thin wrappers over :mod:`danlu.monitor.runs`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from danlu.cli._common import console, info, print_json

runs_app = typer.Typer(
    name="runs",
    help="The runs of a project: their status (running, finished, stopped, crashed), "
         "numbers and history; steer a running one.\n\nExample: danlu runs list runs",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

#: history lines ``danlu runs show`` leaves out unless asked (one per checkpoint written)
QUIET_EVENTS = ("checkpoint",)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _best(r: Any) -> str:
    return "-" if r.best is None else f"{r.best_metric} {r.best:.3f}"


def register(app: typer.Typer) -> None:
    @runs_app.command("list")
    def list_cmd(
        project: Path = typer.Argument(Path("runs"), help="The folder of runs (--project of "
                                       "danlu train)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ) -> None:
        """List the runs of a project: status, epochs, best validation number, duration.

        A run is running while its process lives (its pid on this machine, else its
        heartbeat); one killed without finishing shows as crashed.

        Example: danlu runs list runs
        """
        from danlu.monitor.runs import list_runs

        runs = list_runs(project)
        if as_json:
            print_json([r.to_dict() for r in runs])
            return
        if not runs:
            info(f"no runs in {project}")
            return
        from rich.table import Table

        table = Table(title=f"runs in {project}")
        for col in ("run", "status", "epochs", "steps", "best", "duration", "started", "model"):
            table.add_column(col, justify="right" if col in ("epochs", "steps") else "left")
        for r in runs:
            status = r.status + (f" ({r.detail})" if r.detail and r.status == "running" else "")
            table.add_row(r.name, status, f"{r.epochs}/{r.total_epochs or '?'}", str(r.steps),
                          _best(r), _duration(r.duration), _when(r.started), r.model or "-")
        console.print(table)

    @runs_app.command("show")
    def show_cmd(
        run: Path = typer.Argument(..., help="The run folder (PROJECT/NAME)."),
        plot: Path = typer.Option(None, "--plot", help="Also draw the loss and validation "
                                  "curves per epoch as a PNG."),
        tail: int = typer.Option(30, "--tail", help="History lines shown, newest last (0: "
                                 "all); checkpoint lines only with --all."),
        show_all: bool = typer.Option(False, "--all", help="Show checkpoint lines too."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ) -> None:
        """Show one run: its status, config, the numbers of every epoch and its history
        (control actions with who sent them, checkpoints, best, errors).

        Example: danlu runs show runs/shapes --plot shapes-curves.png
        """
        from danlu.errors import ConfigError
        from danlu.monitor.runs import read_history, read_results, run_info

        if not (run / "history.jsonl").is_file():
            raise ConfigError(f"{run}: not a run folder (no history.jsonl)")
        r = run_info(run)
        rows = read_results(run)
        history = read_history(run)
        if plot is not None:
            if not rows:
                raise ConfigError(f"{run}: no finished epoch to plot yet")
            from danlu.train.results import plot_losses

            plot_losses(run / "results.csv", plot)
        if as_json:
            print_json({**r.to_dict(), "config": r.config, "epochs_table": rows,
                        "history": history, "plot": str(plot) if plot else None})
            return
        _print_run(r, rows, history, tail, show_all)
        if plot is not None:
            info(f"curves: {plot}")

    @runs_app.command("control")
    def control_cmd(
        run: Path = typer.Argument(..., help="The running run's folder (PROJECT/NAME)."),
        stop: bool = typer.Option(False, "--stop", help="Stop after the current step; "
                                  "last.pt then resumes exactly (danlu train --resume RUN)."),
        pause: bool = typer.Option(False, "--pause", help="Pause: no step until --resume."),
        resume: bool = typer.Option(False, "--resume", help="Resume a paused run."),
        save: bool = typer.Option(False, "--save", help="Write last.pt now."),
        assign: list[str] = typer.Option(None, "--set", help="KEY=VALUE, from the next step: "
                                         "lr=0.001 or eval_every=2 (repeatable)."),
        wait: float = typer.Option(30.0, "--wait", help="Seconds to wait for each command to "
                                   "be applied (it applies after the current step)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ) -> None:
        """Steer a running run: stop, pause, resume, save, or set lr / eval_every.

        The command goes to the run's monitor when it serves one (RUN/monitor.json), else
        into RUN/control.jsonl, which the trainer reads between two steps; either way it is
        written to the run's history.jsonl with source cli. Exit status 1 when a command was
        not applied within --wait seconds (it stays queued).

        Example: danlu runs control runs/shapes --set lr=0.0005
        """
        from danlu.errors import ConfigError
        from danlu.monitor.runs import control_run
        from danlu.train.control import parse_assignment

        docs: list[dict[str, Any]] = []
        for text in assign or ():
            key, value = parse_assignment(text)
            docs.append({"action": "set", "key": key, "value": value})
        docs += [{"action": a} for a, on in (("save", save), ("resume", resume),
                                             ("pause", pause), ("stop", stop)) if on]
        if not docs:
            raise ConfigError("nothing to do", hint="give --stop, --pause, --resume, --save "
                              "or --set KEY=VALUE")
        results = control_run(run, docs, wait=max(wait, 0.0))
        if as_json:
            print_json(results)
        else:
            for res in results:
                cmd = res["command"]
                what = cmd["action"] + (f" {cmd['key']}={cmd['value']}"
                                        if cmd["action"] == "set" else "")
                if res["applied"]:
                    info(f"{what}: applied after step {res['step']} (via {res['via']})")
                else:
                    info(f"{what}: sent (via {res['via']}), not applied within {wait:g} s: "
                         "it applies after the current step")
        if not all(res["applied"] for res in results):
            raise typer.Exit(1)

    app.add_typer(runs_app, name="runs")


def _print_run(r: Any, rows: list[dict[str, str]], history: list[dict[str, Any]], tail: int,
               show_all: bool) -> None:
    """The human view of ``danlu runs show`` (on stderr, like all of danlu's prose)."""
    import yaml
    from rich.table import Table

    lines = [f"run {r.path}: {r.status}" + (f" ({r.detail})" if r.detail else ""),
             f"  model {r.model or '?'}, epochs {r.epochs}/{r.total_epochs or '?'}, "
             f"steps {r.steps}, best {_best(r)}, duration {_duration(r.duration)}, "
             f"started {_when(r.started)}"]
    if r.monitor:
        lines.append(f"  monitor: {r.monitor}")
    info("\n".join(lines))
    if r.config:
        from danlu.train.config import TrainConfig

        defaults = TrainConfig().to_dict()
        changed = {k: v for k, v in r.config.items() if defaults.get(k, object()) != v}
        info("config (the options that differ from the defaults; --json shows all):\n"
             + "\n".join("  " + line for line in
                          yaml.safe_dump(changed, sort_keys=False).splitlines()))
    if rows:
        cols = [c for c in rows[0] if c not in ("val_time",)]
        table = Table(title="epochs (results.csv)")
        for c in cols:
            table.add_column(c, justify="right")
        for row in rows:
            table.add_row(*[row.get(c) or "-" for c in cols])
        console.print(table)
    shown = [h for h in history if show_all or h.get("event") not in QUIET_EVENTS]
    if tail:
        shown = shown[-tail:]
    table = Table(title="history (history.jsonl)")
    for c in ("time", "step", "event", "details"):
        table.add_column(c)
    for h in shown:
        details = ", ".join(f"{k}={v}" for k, v in h.items()
                            if k not in ("time", "event", "epoch", "step", "config",
                                         "model_config", "id") and v is not None)
        table.add_row(_when(h.get("time")), str(h.get("step", "")), str(h.get("event")),
                      details[:160])
    console.print(table)
