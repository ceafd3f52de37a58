"""Write the command pages of the site (docs/commands/*.md) from the commands' own ``--help``.

    python docs/commands/generate.py

Each page is an introduction (written here: edit it here, not in the page) and, per command,
its usage line, help text, arguments, options with their defaults and the examples of its
``--help``. ``tests/test_docs_site.py`` checks that the pages are what this script writes
now: run it when a command changes. mkdocs does not copy this file into the site.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePath
from typing import Any

import typer

from danlu.cli.bench import available as available_benchmarks
from danlu.cli.main import register_commands

HERE = Path(__file__).resolve().parent
ROOT_COMMAND = typer.main.get_command(register_commands())
NOTE = ("*Generated from each command's `--help` by `python docs/commands/generate.py`; "
        "edit that script, not this page.*")


def _find(path: list[str]) -> tuple[Any, typer.Context]:
    """The command at ``path`` (``["data", "convert"]``) and a context to render it in."""
    cmd = ROOT_COMMAND
    ctx = typer.Context(cmd, info_name="danlu")
    for name in path:
        cmd = cmd.commands[name]
        ctx = typer.Context(cmd, info_name=name, parent=ctx)
    return cmd, ctx


def _md(text: str) -> str:
    """Help text as table-safe Markdown, option names as code."""
    text = text.replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")
    return re.sub(r"(?<![\w`-])(--[a-z][a-z0-9-]*)", r"`\1`", text)


def _default(p: Any) -> str:
    if p.required:
        return "required"
    if p.is_flag:
        if p.secondary_opts:
            return f"`{p.opts[0] if p.default else p.secondary_opts[0]}`"
        return "on" if p.default else "off"
    d = p.default
    if d is None or d == "" or d == ():
        return ""
    if isinstance(d, PurePath):
        d = str(d)
    if isinstance(d, (list, tuple)):
        d = ",".join(map(str, d))
    return f"`{d}`"


def _names(p: Any) -> str:
    names = ", ".join(f"`{o}`" for o in p.opts)
    if p.secondary_opts:
        names += " / " + ", ".join(f"`{o}`" for o in p.secondary_opts)
    return names


def commands_of(path: list[str]) -> list[str]:
    """The visible sub-commands of a group, in ``--help`` order."""
    cmd, ctx = _find(path)
    return [n for n in cmd.list_commands(ctx) if not cmd.commands[n].hidden]


def summary(path: list[str]) -> str:
    """The first paragraph of a command's help."""
    cmd, _ = _find(path)
    return _md((cmd.help or "").split("\n\n")[0].replace("\n", " "))


def section(path: list[str]) -> str:
    """The Markdown section of one command."""
    cmd, ctx = _find(path)
    full = "danlu " + " ".join(path)
    out = [f"## `{full}`", "", "```", f"{full} {' '.join(cmd.collect_usage_pieces(ctx))}", "```",
           ""]
    text, examples, after = [], [], []
    for para in (cmd.help or "").split("\n\n"):
        if not para.startswith("Example"):
            text.append(_md(para.replace("\n", " ")))
            continue
        head, *rest = para.splitlines()
        m = re.match(r"Examples?( \((.*)\))?:\s*(danlu .*)?$", head)
        if m and m.group(3):
            examples.append(m.group(3))
        if m and m.group(2):  # "Example (then open ...):" -> a sentence after the block
            after.append(m.group(2)[0].upper() + m.group(2)[1:] + ".")
        examples += [line.strip() for line in rest if line.strip()]
    out += ["\n\n".join(text), ""]
    args = [p for p in cmd.params if p.param_type_name == "argument"]
    if args:
        out += ["| argument | description |", "| --- | --- |"]
        for a in args:
            name = (a.metavar or a.name.upper()) + ("..." if a.nargs != 1 else "")
            optional = "" if a.required else " (optional)"
            out.append(f"| `{name}`{optional} | {_md(a.help or '')} |")
        out.append("")
    opts = [p for p in cmd.params if p.param_type_name == "option" and not p.hidden]
    if opts:
        out += ["| option | default | description |", "| --- | --- | --- |"]
        out += [f"| {_names(p)} | {_default(p)} | {_md(p.help or '')} |" for p in opts]
        out.append("")
    if examples:
        out += ["```bash", *examples, "```", ""]
    out += [*after, ""] if after else []
    return "\n".join(out)


def page(title: str, intro: str, paths: list[list[str]], outro: str = "") -> str:
    body = [f"# {title}", "", intro.strip(), "", NOTE, ""]
    body += [section(p).rstrip() + "\n" for p in paths]
    if outro:
        body += [outro.strip(), ""]
    return "\n".join(body).rstrip() + "\n"


#: The page of each top-level command (tests/test_docs_site.py keeps the same map).
PAGES = {"doctor": "misc.md#danlu-doctor", "train": "train.md#danlu-train", "runs": "runs.md",
         "pseudo-label": "train.md#danlu-pseudo-label", "predict": "predict.md",
         "export": "export.md", "serve": "serve.md#danlu-serve",
         "worker": "serve.md#danlu-worker", "demo": "misc.md#danlu-demo",
         "eval": "eval.md", "bench": "bench.md", "data": "data.md"}


def pages() -> dict[str, str]:
    """File name -> Markdown text of every command page."""
    top = commands_of([])
    unplaced = sorted(set(top) - set(PAGES))
    if unplaced:
        raise SystemExit(f"no page for: {unplaced}; add them to PAGES")
    rows = "\n".join(f"| [`danlu {c}`]({PAGES[c]}) | {summary([c])} |" for c in top)
    data = commands_of(["data"])
    table = "\n".join(f"| [`{c}`](#danlu-data-{c}) | {summary(['data', c])} |" for c in data)
    serve = page("danlu serve", SERVE, [["serve"], ["worker"]]).replace(
        "Then open http://127.0.0.1:8000/, or curl -F image=@shapes/JPEGImages/shapes_000000.png "
        "http://127.0.0.1:8000/v1/detect.",
        "Then open `http://127.0.0.1:8000/`, or\n"
        "`curl -F image=@shapes/JPEGImages/shapes_000000.png http://127.0.0.1:8000/v1/detect`.")
    names = ", ".join(f"`{n}`" for n in available_benchmarks())
    return {
        "index.md": INDEX.format(rows=rows),
        "data.md": page("danlu data", DATA + table, [["data", c] for c in data]),
        "train.md": page("danlu train", TRAIN, [["train"], ["pseudo-label"]]),
        "runs.md": page("danlu runs", RUNS, [["runs", c] for c in commands_of(["runs"])]),
        "eval.md": page("danlu eval", EVAL, [["eval"]]),
        "predict.md": page("danlu predict", PREDICT, [["predict"]]),
        "serve.md": serve,
        "export.md": page("danlu export", EXPORT, [["export"]]),
        "bench.md": page("danlu bench", BENCH, [["bench"]], outro=(
            "## The benchmarks\n\n`danlu bench` with no name lists them; each is one script in "
            f"`benchmarks/` (so the command runs from a source checkout):\n\n{names}.")),
        "misc.md": page("Other commands", MISC, [["doctor"], ["demo"]]),
    }


def main() -> None:
    for name, text in pages().items():
        (HERE / name).write_text(text, encoding="utf-8")


INDEX = """# Commands

`danlu --help` lists the commands and every command has `--help`, with an example that runs
as written against what `danlu data synth --out shapes` writes. These pages list each
command's arguments and options as `--help` shows them.

| command | what it does |
| --- | --- |
{rows}

## Global options

`danlu --version` prints the version. `--debug` (a traceback on errors) and `--quiet` / `-q`
(no progress bars or info text) work anywhere on the command line: `danlu train ... --debug`.

## Conventions

- Inputs are arguments, options are `--kebab-case`. A command that produces files takes
  `--out`; a command that reports takes `--json` and then prints exactly one JSON document on
  stdout. Human-facing text and progress bars go to stderr, and disappear when stderr is not a
  terminal or with `--quiet`.
- `--format` / `-f` is always the format of the dataset a command reads (detected when
  omitted); `--to` is the format a command writes. The old names still work, hidden: `--from`,
  `--data-format`, `--gt-format`, and `--format` for `--to` in `predict`, `export` and
  `data synth`.
- `--device auto` picks CUDA, then MPS, then the CPU.
- `danlu train --config run.yaml` reads its options from YAML, one key per option; options on
  the command line win, and every run writes the resolved `config.yaml` beside its results.
- **Exit codes**: 0 done; 1 it ran and the answer is "no" (`danlu doctor` found the CPU path
  broken); 2 bad usage or bad input: one line `error: ...` and a `hint: ...`, the traceback
  only with `--debug`.
"""

DATA = """
`danlu data VERB` prepares datasets: it reads VOC, COCO, YOLO, DOTA, LabelMe and CVAT folders
(the format is detected; `--format` / `-f` names it), converts between them, counts and draws
what is there, and writes new datasets (splits, tiles, crops, fewer labels). Commands that write
take `--out`; a dataset is never half-written: it appears complete or not at all. The layouts
each format is read from, and how images are found, are in the [data guide](../data.md).

| command | what it does |
| --- | --- |
"""

TRAIN = """
`danlu train` trains a detector on a dataset folder in any format (or a `.pack` cache from
[`danlu data pack`](data.md#danlu-data-pack)) and writes a run folder:
`runs/NAME/` with `config.yaml`, `results.csv`, `last.pt`, `best.pt`, plots, TensorBoard events,
`eval/` and `history.jsonl`. `--config run.yaml` reads the options from YAML (the command line
wins). The models are described on the [Models](../models.md) page; hard examples, missing
labels and pseudo-labels in the [harder training guide](../harder-training.md); many processes
in the [DDP guide](../distributed.md). `--monitor`, `--chat` and `--notify` watch and steer a
run while it trains, from a live page, a chat or a webhook: see the
[monitor guide](../monitor.md) and [`danlu runs`](runs.md).
"""

RUNS = """
`danlu runs` reads the runs of a project folder: their status (running, finished, stopped or
crashed: a run killed without finishing is not shown as running forever), epochs, best
validation number and duration; one run's config, numbers per epoch and history; and steers a
running run (stop, pause, resume, save, set lr or eval_every) through its monitor or its
control file. How status is recorded, the control paths and the live page are in the
[monitor guide](../monitor.md).
"""

EVAL = """
`danlu eval` scores predictions against ground truth: a predictions file or folder
(`--pred`), or a model that predicts the ground truth's images first (`MODEL`). What each
protocol counts is on the [Evaluation protocols](../protocols.md) page; which prediction file
pairs with which image in the [data guide](../data.md) (section "Predictions: which image is
which").
"""

PREDICT = """
`danlu predict` detects objects with a checkpoint, an `.onnx` / `.torchscript` export or an
OpenCV Haar cascade (`haar:NAME`), on images, folders, globs and videos, and writes
`predictions.json`, pictures with the boxes drawn, and the formats `--to` names. `--slice`
predicts huge images tile by tile. The [prediction guide](../predict.md) describes the
sources, the suppression methods, one label per box, sliced inference and its memory rule.
"""

SERVE = """
`danlu serve` runs a model as an HTTP service: `POST /v1/detect`, a web page at `/`, API docs
at `/docs`, Prometheus metrics at `/metrics`. It needs `pip install 'danlu[serve]'`. The API,
the limits and how a request travels are in the [serving guide](../serve.md).
"""

EXPORT = """
`danlu export` writes a trained FCOS, RetinaNet or SSDLite checkpoint as one ONNX or
TorchScript file; `danlu predict`, `danlu serve` and `Predictor` take the file in place of the
checkpoint. ONNX needs `pip install 'danlu[onnx]'`. What the file computes and its metadata are
in the [export guide](../export.md).
"""

BENCH = """
`danlu bench NAME` times our implementation against each peer library on the same input, in one
run, and checks that the outputs agree; `danlu bench` alone lists the names. The peers are
installed by `make test` (the `bench` extra); the training comparison also needs
`pip install -e '.[bench-train]'`. The latest figures, and the machine they were measured on,
are on the [Benchmarks](../benchmarks.md) page.
"""

MISC = """
`danlu doctor` checks the machine; `danlu demo` runs the embedded default job (`make demo`).
"""


if __name__ == "__main__":
    main()
