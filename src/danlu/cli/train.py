"""``danlu train``: a thin wrapper over :func:`danlu.train.api.train`.

Every option mirrors a :class:`~danlu.train.config.TrainConfig` field; ``--config run.yaml``
holds the same keys, and options given on the command line win over the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from danlu.cli import _common
from danlu.cli._common import info, print_json, show_progress
from danlu.train.config import TrainConfig, load_yaml

_D = TrainConfig()

#: the names ``--model`` takes, as :func:`danlu.models.available_models` lists them (written
#: here so that the help imports no torch; a test keeps the two equal)
MODEL_NAMES = (
    "fcos-tiny", "fcos-resnet18", "fcos-resnet34", "fcos-resnet50", "fcos-mobilenet_v3_large",
    "retinanet-tiny", "retinanet-resnet18", "retinanet-resnet34", "retinanet-resnet50",
    "fasterrcnn-tiny", "fasterrcnn-resnet50", "fasterrcnn-mobilenet_v3_large",
    "fasterrcnn-mobilenet_v3_large_320_fpn", "ssdlite-mobilenet_v3_large",
)


def _explicit(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave on the command line (or through the environment)."""
    from typer._click.core import ParameterSource

    given = {}
    for name, value in values.items():
        source = ctx.get_parameter_source(name)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            given[name] = value
    return given


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        ctx: typer.Context,
        data: str = typer.Option(None, "--data", help="Training dataset (VOC/COCO/YOLO/DOTA "
                                 "folder or file, or a .pack file)."),
        data_format: str = typer.Option(None, "--format", "-f", help="Format of --data and "
                                        "--val: voc, coco, yolo, yolo-obb, dota, labelme or "
                                        "cvat (default: detected)."),
        data_format_old: str = typer.Option(None, "--data-format", hidden=True),
        model: str = typer.Option(_D.model, "--model", help="The detector to build: "
                                  + ", ".join(MODEL_NAMES) + "."),
        weights: str = typer.Option(None, "--weights", help="Initial weights for the model "
                                    "builder."),
        anchors: str = typer.Option(_D.anchors, "--anchors", help="auto (fit the anchor "
                                    "sizes of RetinaNet / Faster R-CNN to the training boxes "
                                    "when training from scratch) or default."),
        epochs: int = typer.Option(_D.epochs, "--epochs", help="Passes over the data."),
        device: str = typer.Option(_D.device, "--device", help="auto (cuda > mps > cpu), cpu, "
                                   "cuda, cuda:N, mps."),
        batch: int = typer.Option(_D.batch, "--batch", help="Images per step."),
        img_size: str = typer.Option(str(_D.img_size), "--img-size", help="Input side in "
                                     "pixels, or auto (the training images' median longer "
                                     "side, rounded to 32, within 128-1024)."),
        resize: str = typer.Option(_D.resize, "--resize", help="letterbox or resize (stretch)."),
        optimizer: str = typer.Option(_D.optimizer, "--optimizer", help="adamw or sgd."),
        lr: float = typer.Option(_D.lr, "--lr", help="Peak learning rate."),
        momentum: float = typer.Option(_D.momentum, "--momentum", help="SGD momentum."),
        weight_decay: float = typer.Option(_D.weight_decay, "--weight-decay", help="Decoupled "
                                           "weight decay (not on norms and biases)."),
        warmup_epochs: float = typer.Option(_D.warmup_epochs, "--warmup-epochs", help="Linear "
                                            "learning-rate warmup, in epochs (fractions "
                                            "allowed)."),
        schedule: str = typer.Option(_D.schedule, "--schedule", help="cosine, step or "
                                     "constant (after warmup)."),
        min_lr_ratio: float = typer.Option(_D.min_lr_ratio, "--min-lr-ratio",
                                           help="Cosine ends at lr * this."),
        step_milestones: str = typer.Option(",".join(map(str, _D.step_milestones)),
                                            "--step-milestones",
                                            help="Step schedule: fractions of the run."),
        step_gamma: float = typer.Option(_D.step_gamma, "--step-gamma", help="Step schedule: "
                                         "the lr is multiplied by this at each milestone."),
        grad_clip: float = typer.Option(_D.grad_clip, "--grad-clip", help="Max gradient norm "
                                        "(0: off)."),
        workers: int = typer.Option(_D.workers, "--workers", help="DataLoader processes."),
        name: str = typer.Option(None, "--name", help="Run name (default exp, exp2, ...)."),
        project: str = typer.Option(_D.project, "--project", help="Folder of runs."),
        resume: str = typer.Option(None, "--resume", help="Continue runs/NAME exactly."),
        time: float = typer.Option(None, "--time", help="Training time budget in minutes "
                                   "(without --epochs: train until it is spent)."),
        seed: int = typer.Option(_D.seed, "--seed", help="Seed of every random choice (data "
                                 "order, augmentation, initialisation)."),
        deterministic: bool = typer.Option(_D.deterministic, "--deterministic/"
                                           "--no-deterministic",
                                           help="Reproducible algorithms."),
        skip_invalid: bool = typer.Option(_D.skip_invalid, "--skip-invalid/--no-skip-invalid",
                                          help="Skip invalid annotations (each named) instead "
                                          "of stopping at the first."),
        image_dir: str = typer.Option(_D.image_dir, "--image-dir",
                                      help=_common.IMAGE_DIR_HELP),
        strict: bool = typer.Option(_D.strict, "--strict/--no-strict", help="Stop at the first "
                                    "training image that cannot be decoded (default: skip it "
                                    "with a warning and count it)."),
        ema: bool = typer.Option(_D.ema, "--ema/--no-ema", help="Average the weights."),
        ema_decay: float = typer.Option(_D.ema_decay, "--ema-decay", help="EMA: the decay "
                                        "the average reaches (in (0, 1))."),
        ema_tau: float = typer.Option(_D.ema_tau, "--ema-tau", help="EMA: steps over which "
                                      "the decay ramps up to --ema-decay."),
        amp: bool = typer.Option(_D.amp, "--amp/--no-amp", help="Mixed precision on CUDA."),
        patience: int = typer.Option(_D.patience, "--patience", help="Stop after N evaluations "
                                     "without a better val AP (0: never)."),
        val: str = typer.Option(None, "--val", help="Validation dataset."),
        val_split: float = typer.Option(_D.val_split, "--val-split", help="Fraction of --data "
                                        "held out for validation when no --val."),
        augment: str = typer.Option(_D.augment, "--augment", help="flips, default or none."),
        eval_every: int = typer.Option(_D.eval_every, "--eval-every", help="Evaluate every N "
                                       "epochs."),
        val_protocol: str = typer.Option(_D.val_protocol, "--val-protocol", help="What judges "
                                         "validation: auto (DOTA for oriented boxes, else "
                                         "COCO), coco, voc07, voc12, dota, dota-hbb."),
        best_metric: str = typer.Option(_D.best_metric, "--best-metric", help="The validation "
                                        "number that picks best.pt (auto: AP for COCO, mAP "
                                        "otherwise; or AP50, AP75 ...)."),
        best_mode: str = typer.Option(_D.best_mode, "--best-mode", help="max (higher is "
                                      "better) or min."),
        save_every_steps: int = typer.Option(_D.save_every_steps, "--save-every-steps",
                                             help="Also write last.pt every N steps."),
        score_threshold: float = typer.Option(_D.score_threshold, "--score-threshold",
                                              help="Validation: keep predictions scoring at "
                                              "least this."),
        max_steps: int = typer.Option(_D.max_steps, "--max-steps", help="Stop after N steps "
                                      "(0: no limit)."),
        plots: bool = typer.Option(_D.plots, "--plots/--no-plots", help="Write the loss, PR "
                                   "and per-class AP plots into the run's plots/."),
        final_eval: bool = typer.Option(_D.final_eval, "--final-eval/--no-final-eval",
                                        help="Evaluate best.pt into eval/ at the end."),
        ohem: bool = typer.Option(_D.ohem, "--ohem/--no-ohem", help="Online hard example "
                                  "mining (Faster R-CNN RoIs; RetinaNet negatives)."),
        ohem_batch: int = typer.Option(_D.ohem_batch, "--ohem-batch", help="OHEM: RoIs "
                                       "back-propagated per image."),
        ohem_nms: bool = typer.Option(_D.ohem_nms, "--ohem-nms/--no-ohem-nms",
                                      help="OHEM: NMS over the loss-ranked RoIs."),
        ohem_nms_iou: float = typer.Option(_D.ohem_nms_iou, "--ohem-nms-iou",
                                           help="OHEM: that NMS's IoU threshold."),
        ohem_neg_ratio: float = typer.Option(_D.ohem_neg_ratio, "--ohem-neg-ratio",
                                             help="OHEM for RetinaNet: negatives per "
                                             "positive."),
        soft_sampling: str = typer.Option(None, "--soft-sampling", help="Down-weight "
                                          "background far from labelled boxes: '0.5', "
                                          "'0:0.25,0.5:1' or 'gompertz'."),
        distributed: bool = typer.Option(_D.distributed, "--distributed/--no-distributed",
                                         help="DDP over the processes torchrun started "
                                         "(--batch is the global batch)."),
        sync_bn: bool = typer.Option(_D.sync_bn, "--sync-bn/--no-sync-bn",
                                     help="DDP on CUDA: synchronise BatchNorm."),
        monitor: str = typer.Option(None, "--monitor", metavar="[PORT]", help="Serve a live "
                                    "page of the run and its control API on this port (no "
                                    "value or 0: a free one); the URL is printed on stderr."),
        monitor_host: str = typer.Option("127.0.0.1", "--monitor-host", help="Address the "
                                         "monitor listens on; any but a loopback address "
                                         "needs --monitor-token."),
        monitor_token: str = typer.Option(None, "--monitor-token", envvar="DANLU_MONITOR_TOKEN",
                                          show_envvar=False, help="Bearer token the monitor's "
                                          "page and API ask for (default: "
                                          "$DANLU_MONITOR_TOKEN)."),
        chat: str = typer.Option(None, "--chat", help="Steer the run from a chat: telegram "
                                 "(token in $DANLU_TELEGRAM_TOKEN) or slack "
                                 "($DANLU_SLACK_TOKEN)."),
        chat_allow: list[str] = typer.Option(None, "--chat-allow", help="A chat or user id "
                                             "whose commands are accepted (repeatable); any "
                                             "other is refused and logged."),
        chat_token_file: Path = typer.Option(None, "--chat-token-file", help="Read the chat "
                                             "bot's token from this file."),
        chat_api: str = typer.Option(None, "--chat-api", help="Base URL of the chat service's "
                                     "API (default: the public one)."),
        notify: list[str] = typer.Option(None, "--notify", help="Post start, progress, new "
                                         "best, NaN, end and crash to [KIND:]URL (repeatable; "
                                         "KIND json, slack, discord, telegram, ntfy, "
                                         "dingtalk, wecom or feishu; default: from the "
                                         "host)."),
        notify_every: str = typer.Option(None, "--notify-every", help="Also post progress "
                                         "every N epochs, or every N minutes with Nm."),
        notify_secrets: Path = typer.Option(None, "--notify-secrets", help="File of NAME=value "
                                            "lines (DANLU_DINGTALK_SECRET, "
                                            "DANLU_FEISHU_SECRET, DANLU_NTFY_TOKEN ...) read "
                                            "besides the environment."),
        config: Path = typer.Option(None, "--config", help="YAML file of these options."),
        exist_ok: bool = typer.Option(False, "--exist-ok", help="Reuse an existing run "
                                      "folder (its run files are replaced)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ) -> None:
        """Train a detector on a dataset folder (any format) or a pack.

        The run lands in PROJECT/NAME (config.yaml, results.csv, last.pt, best.pt, plots/,
        eval/, history.jsonl, TensorBoard events). --monitor serves a live page to watch and
        steer it, --chat takes commands from Telegram or Slack, --notify posts its events
        (see docs/monitor.md); danlu runs control steers it from another shell.

        Example: danlu train --data shapes --model fcos-tiny --epochs 10 --name shapes
        """
        from danlu.train.api import train

        monitor_options = {k: v for k, v in locals().items() if k in MONITOR_OPTIONS}
        values = {k: v for k, v in locals().items()
                  if k not in ("ctx", "config", "exist_ok", "as_json", "train",
                               "data_format_old", "monitor_options", *MONITOR_OPTIONS)}
        given = _explicit(ctx, values)
        if data_format_old is not None:
            given["data_format"] = _common.renamed_option(data_format, data_format_old,
                                                          "--data-format", "--format")
        if "img_size" in given:
            given["img_size"] = _img_size(given["img_size"])
        if "step_milestones" in given:
            given["step_milestones"] = _floats(given["step_milestones"], "--step-milestones")
        run_kwargs: dict[str, Any] = {"progress": show_progress(),
                                      "verbose": not _common._quiet["on"]}
        monitor_cb = _start_monitor(monitor_options)
        if monitor_cb is not None:
            run_kwargs["callbacks"] = [monitor_cb]
        try:
            result = _run(train, resume, given, config, exist_ok, run_kwargs)
        finally:
            if monitor_cb is not None:
                monitor_cb.close()
        if as_json:
            print_json(result.to_dict())
        else:
            _where_it_went(result)


#: the options of danlu train that configure the monitor, not the training
MONITOR_OPTIONS = ("monitor", "monitor_host", "monitor_token", "chat", "chat_allow",
                   "chat_token_file", "chat_api", "notify", "notify_every", "notify_secrets")


def _start_monitor(options: dict[str, Any]) -> Any:
    """The run's :class:`~danlu.monitor.Monitor` (None without monitor options), listening
    before training starts, its address on stderr."""
    import sys

    from danlu.monitor.options import build_monitor

    mon = build_monitor(**options)
    if mon is None:
        return None
    mon.start()
    if mon.url:  # also with --quiet: the user asked for it
        print(f"monitor: {mon.url}", file=sys.stderr, flush=True)
    return mon


def _run(train: Any, resume: str | None, given: dict[str, Any], config: Path | None,
         exist_ok: bool, run_kwargs: dict[str, Any]) -> Any:
    """Resume, or start a run from the options (and the YAML file of them)."""
    if resume:
        given.pop("resume")
        return train(resume=resume, **given, **run_kwargs)
    file_values = load_yaml(config) if config is not None else {}
    if given.get("time") and "epochs" not in given and "epochs" not in file_values:
        # a time budget alone trains for the budget, not for the default 10 epochs
        given["epochs"] = TIME_ONLY_EPOCHS
        info(f"--time {given['time']:g} without --epochs: training until the budget "
             "is spent")
    cfg = TrainConfig.from_dict(file_values, source=str(config)).merged(given) \
        if config is not None else TrainConfig.from_dict(given, source="options")
    if not cfg.data:
        from danlu.errors import ConfigError

        raise ConfigError("no training data", hint="pass --data PATH (or data: in "
                          "--config)")
    return train(config=cfg, exist_ok=exist_ok, **run_kwargs)


#: the epochs cap of a run given ``--time`` but no ``--epochs`` (the budget ends it first)
TIME_ONLY_EPOCHS = 100_000


def _where_it_went(result) -> None:  # noqa: ANN001 - a TrainResult
    """Where the run's files are, what to do next, and the per-class AP of best.pt."""
    import orjson

    run = result.run_dir
    lines = [f"run folder: {run}",
             f"  weights:   {result.best} (best), {result.last} (last)",
             f"  per epoch: {run / 'results.csv'}" + (f", curves in {run / 'plots'}/"
                                                       if (run / "plots").is_dir() else "")]
    report = run / "eval" / "report.html"
    if report.is_file():
        lines.append(f"  report:    {report} (the evaluation of best.pt)")
    lines += [f"  events:    {run / 'history.jsonl'}; TensorBoard: tensorboard --logdir {run}",
              f"next: danlu predict {result.best} IMAGES --out preds   "
              f"(or danlu serve {result.best})"]
    info("\n".join(lines))
    metrics = run / "eval" / "metrics.json"
    if not metrics.is_file():
        return
    doc = orjson.loads(metrics.read_bytes())
    per_class, num_gt = doc.get("per_class") or {}, doc.get("num_gt") or {}
    if not per_class:
        return
    from rich.table import Table

    table = Table(title=f"best.pt on the validation set ({doc.get('protocol')})")
    for col in ("class", "AP", "GT boxes"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, ap in per_class.items():
        table.add_row(name, "-" if ap is None else f"{ap:.3f}", str(num_gt.get(name, 0)))
    from danlu.cli._common import console

    if not _common._quiet["on"]:
        console.print(table)


def _floats(text: str, option: str) -> list[float]:
    from danlu.errors import ConfigError

    try:
        return [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError as e:
        raise ConfigError(f"{option}: expected comma-separated numbers, got {text!r}") from e


def _img_size(text: str) -> int | str:
    from danlu.errors import ConfigError

    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError as e:
        raise ConfigError(f"--img-size: expected a number of pixels or auto, got {text!r}") \
            from e
