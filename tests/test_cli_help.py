"""``--help`` as a new user reads it (issue 11): every option described, no ``<bool>`` beside a
flag, paragraphs reflowed, ``--model`` naming the models, one name per format flag, and every
example runnable, in order, against what ``danlu data synth`` writes."""

from __future__ import annotations

import functools
import re
import shlex

import pytest
import typer.main
from tests._cli import danlu as run_danlu

from danlu.cli.main import app, reflow_help, register_commands

danlu = functools.partial(run_danlu, timeout=900)  # trains or runs many commands


def _commands() -> dict[str, object]:
    register_commands()
    found: dict[str, object] = {}

    def walk(cmd, path):  # noqa: ANN001
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        else:
            found[" ".join(path)] = cmd

    walk(typer.main.get_command(app), [])
    return found


def examples(help_text: str) -> list[str]:
    """The example command lines of a help text (``Example: danlu ...`` or an indented
    ``danlu ...`` line under ``Examples:``)."""
    lines = []
    for line in help_text.splitlines():
        line = re.sub(r"^Examples?[^:]*:\s*", "", line.strip())
        if line.startswith("danlu "):
            lines.append(line)
    return lines


def test_every_option_is_described_and_every_command_has_an_example():
    for name, cmd in _commands().items():
        for p in cmd.params:
            if p.param_type_name == "option" and not p.hidden:
                assert p.help, f"danlu {name} {p.opts[0]} has no description"
        assert examples(cmd.help or ""), f"danlu {name} --help has no example"


def test_no_type_beside_flags_and_arguments_in_capitals(tmp_path):
    text = danlu("eval", "--help", cwd=tmp_path).stdout
    assert "<bool>" not in text and "[OPTIONS] [MODEL]" in text
    text = danlu("train", "--help", cwd=tmp_path).stdout
    assert "<bool>" not in text and "--amp" in text
    assert "MODEL SOURCES..." in danlu("predict", "--help", cwd=tmp_path).stdout


def test_paragraphs_are_reflowed():
    assert reflow_help("a\nb\n\nExamples:\n  danlu x\n  danlu y") == \
        "a b\n\nExamples:\n  danlu x\n  danlu y"
    train = _commands()["train"].help
    assert "best.pt, plots/, eval/" in train  # one paragraph, not a line per source line


def test_model_option_lists_every_model():
    from danlu.cli.train import MODEL_NAMES
    from danlu.models import available_models

    assert sorted(MODEL_NAMES) == available_models()
    model = next(p for p in _commands()["train"].params if p.name == "model")
    assert all(name in model.help for name in MODEL_NAMES)


def test_one_name_per_format_flag():
    """--format / -f is the format of the dataset a command reads; --to the one it writes."""
    old = {"--data-format", "--gt-format", "--from"}
    for name, cmd in _commands().items():
        for p in cmd.params:
            if p.param_type_name != "option" or p.hidden:
                continue
            assert not old & set(p.opts), f"danlu {name}: {p.opts}"
            if "--format" in p.opts:
                assert "-f" in p.opts or name in ("predict",), f"danlu {name} --format"


def test_old_flag_names_still_work_with_a_note(tmp_path):
    r = danlu("data", "synth", "--out", "d", "--num-images", "2", "--image-size", "64",
              "--format", "coco", cwd=tmp_path)
    assert r.returncode == 0 and "--format is now --to" in r.stderr
    assert (tmp_path / "d" / "annotations.json").is_file() or \
        list((tmp_path / "d").rglob("*.json"))
    r = danlu("data", "stats", "d", "--format", "coco", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = danlu("train", "--data", "d", "--format", "voc", "--data-format", "coco", cwd=tmp_path)
    assert r.returncode == 2 and "disagree" in r.stderr


#: commands whose example is not run here, and why
NOT_RUN = {"train": "trains for minutes (the fixture trains a short run in its place)",
           "serve": "starts a server (the README walk runs one)",
           "worker": "runs until stopped and needs a Redis (tests/test_serve_redis.py runs one)",
           "demo": "trains for minutes (make demo runs it)",
           "bench": "measures for minutes (danlu bench is its own command)",
           "runs control": "steers a running run (tests/test_monitor_runs.py does)"}

#: the order a new user would run the examples in: data first, then a model, then the rest
ORDER = ["data synth", "data split", "data stats", "data convert", "data show", "data tile",
         "data crop", "data drop-labels", "data filter-small", "data whitebalance",
         "data pack", "predict", "runs list", "runs show", "eval", "export", "pseudo-label",
         "doctor"]


def test_every_example_runs_against_synth_output(tmp_path):
    by_command = {name: examples(cmd.help or "") for name, cmd in _commands().items()}
    assert set(by_command) == set(ORDER) | set(NOT_RUN), "a new command: place it in ORDER"
    for name in ORDER:
        if name == "predict":  # what the examples call runs/shapes/best.pt: a short run
            r = danlu("train", "--data", "parts/train", "--val", "parts/val", "--epochs", "1",
                      "--img-size", "64", "--max-steps", "4", "--name", "shapes", cwd=tmp_path)
            assert r.returncode == 0, r.stderr
        for line in by_command[name]:
            args = shlex.split(line, comments=True)
            assert args[0] == "danlu"
            r = danlu(*args[1:], cwd=tmp_path)
            assert r.returncode == 0, f"{line}\n{r.stderr[-2000:]}"
    for name in NOT_RUN:  # their inputs exist all the same
        for line in by_command[name]:
            args = shlex.split(line, comments=True)
            for before, arg in zip(args[1:], args[2:], strict=False):
                if "/" in arg and before != "--out" and \
                        not arg.startswith(("http", "-", "redis://")):
                    assert (tmp_path / arg).exists(), f"{line}: {arg}"


@pytest.mark.parametrize("text, lines", [
    ("Example: danlu doctor --json", ["danlu doctor --json"]),
    ("Examples:\n  danlu a b\n  danlu c  # a note", ["danlu a b", "danlu c  # a note"]),
    ("No example here.", []),
])
def test_examples_are_found(text, lines):
    assert examples(text) == lines
