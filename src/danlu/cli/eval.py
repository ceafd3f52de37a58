"""``danlu eval``: score predictions against ground truth (COCO, VOC07/12, DOTA task 1/2)."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from danlu.cli._common import (
    IMAGE_DIR_HELP,
    SPLIT_KINDS,
    console,
    info,
    prepare_numba,
    print_json,
    print_notices,
)
from danlu.errors import ConfigError

_PROTOCOLS = ("coco", "voc07", "voc12", "dota", "dota-hbb")


def _fmt(v: float) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:.4f}"


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        model: str = typer.Argument(None, show_default=False,
                                    help="A model to predict the ground truth with first (a "
                                    "checkpoint, run folder, .onnx export or haar:NAME); "
                                    "instead of --pred."),
        gt: Path = typer.Option(..., "--gt", help="Ground truth: a dataset folder in any format "
                                "(voc, coco, yolo, dota) or a COCO instances JSON file."),
        pred: Path = typer.Option(None, "--pred", help="Predictions: a COCO results JSON, the "
                                  "folder danlu predict wrote, a folder of YOLO txt files, or "
                                  "any dataset danlu writes."),
        device: str = typer.Option("auto", "--device", help="With MODEL: cpu, cuda, cuda:N, "
                                   "mps or auto."),
        batch: int = typer.Option(8, "--batch", help="With MODEL: images per forward pass."),
        score_threshold: float = typer.Option(None, "--score-threshold", help="With MODEL: "
                                              "keep predictions scoring at least this "
                                              "(default 0.05, as training validation).",
                                              show_default=False),
        protocol: str = typer.Option("coco", "--protocol", "-p",
                                     help="coco | voc07 | voc12 | dota | dota-hbb."),
        iou: float = typer.Option(None, "--iou", help="Match IoU for voc/dota (default 0.5); "
                                  "for coco: evaluate at this one IoU instead of .50:.95."),
        match: str = typer.Option(None, "--match", help="voc/dota threshold rule: '>=' (VOC "
                                  "devkit, voc default) or '>' (py-faster-rcnn, DOTA_devkit)."),
        max_dets: str = typer.Option("1,10,100", "--max-dets",
                                     help="coco: detections per image, comma-separated."),
        all_point: bool = typer.Option(False, "--all-point",
                                       help="dota: all-point AP instead of VOC07 11-point."),
        gt_format: str = typer.Option(None, "--format", "-f", help="Format of --gt: voc, "
                                      "coco, yolo or dota (detected when omitted)."),
        gt_format_old: str = typer.Option(None, "--gt-format", hidden=True),
        split: str = typer.Option(None, "--split", help="Read only this split of --gt: "
                                  f"{SPLIT_KINDS}."),
        image_dir: Path = typer.Option(None, "--image-dir", help=IMAGE_DIR_HELP),
        pred_format: str = typer.Option(None, "--pred-format", help="Predictions format "
                                        "(detected when omitted)."),
        report: Path = typer.Option(None, "--report", help="Write an HTML report, PR curves, "
                                    "confusion matrix and error gallery into this folder."),
        score: float = typer.Option(0.25, "--score", help="Report: score threshold of the "
                                    "confusion matrix and gallery."),
        skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip invalid "
                                          "annotations and predictions (each named) instead "
                                          "of stopping at the first."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document: 'stats' "
                                     "(COCO: the 12 numbers in pycocotools' order), the named "
                                     "metrics beside it, per-class AP."),
    ) -> None:
        """Evaluate predictions (--pred), or a model (MODEL), against ground truth and print
        the metrics.

        Examples:
          danlu eval runs/shapes/best.pt --gt parts/val
          danlu eval --gt parts/val --pred preds --protocol voc07 --report report
        """
        from danlu.cli._common import renamed_option
        from danlu.data.io import load_with_predictions
        from danlu.evaluate.api import evaluate

        gt_format = renamed_option(gt_format, gt_format_old, "--gt-format", "--format")
        if (model is None) == (pred is None):
            raise ConfigError("give either MODEL or --pred" if model is None else
                              "MODEL and --pred both given",
                              hint="danlu eval MODEL --gt DATA predicts first; "
                              "danlu eval --gt DATA --pred PREDICTIONS scores a file")
        if protocol not in _PROTOCOLS:
            raise ConfigError(f"unknown protocol {protocol!r}",
                              hint="choose one of " + ", ".join(_PROTOCOLS))
        options: dict = {}
        if protocol == "coco":
            try:
                options["max_dets"] = [int(v) for v in max_dets.split(",") if v.strip()]
            except ValueError as e:
                raise ConfigError(f"--max-dets: {max_dets!r} is not a list of integers") from e
            if len(options["max_dets"]) != 3:
                raise ConfigError("--max-dets needs three numbers, e.g. 1,10,100")
            if iou is not None:
                options["iou_thresholds"] = [iou]
            if match is not None:
                raise ConfigError("--match applies to voc and dota protocols only")
        else:
            if iou is not None:
                options["iou"] = iou
            if match is not None:
                options["match"] = match
            if protocol.startswith("dota"):
                options["eleven_point"] = not all_point
        prepare_numba()  # the readers and the evaluation run numba kernels
        if model is not None:
            gt_ds, preds = _predicted(model, gt, gt_format, skip_invalid, split, image_dir,
                                      device=device,
                                      batch=batch, score_threshold=score_threshold)
        else:
            info(f"reading ground truth {gt} and predictions {pred}")
            gt_ds, preds = load_with_predictions(gt, pred, gt_format=gt_format,
                                                 pred_format=pred_format,
                                                 # the metrics need no pixels, the report does
                                                 check_images=True if report else "warn",
                                                 skip_invalid=skip_invalid, split=split,
                                                 image_dir=image_dir)
            print_notices(gt_ds)
            if preds.meta.get("pairing"):
                from danlu.data.formats.pairing import describe_pairing

                info(describe_pairing(preds.meta["pairing"]))
        from danlu.data.io import skipped_report

        for what, ds in (("ground truth", gt_ds), ("predictions", preds)):
            skipped = skipped_report(ds.meta.get("warnings") or [], what)
            if skipped:
                console.print(skipped, highlight=False, soft_wrap=True)
        _warn_unpredicted(gt_ds, preds)
        result = evaluate(gt_ds, preds, protocol=protocol, **options)
        report_path = None
        if report is not None:
            from danlu.evaluate.report import write_report

            report_path = write_report(result, gt_ds, preds, report,
                                       iou=iou if iou is not None else 0.5, score=score)
        if as_json:
            doc = result.to_dict()
            if preds.meta.get("pairing"):
                doc["pairing"] = preds.meta["pairing"]
            if report_path is not None:
                doc["report"] = str(report_path)
            print_json(doc)
            return
        _print_tables(result)
        if report_path is not None:
            console.print(f"report: {report_path}")


def _predicted(model: str, gt: Path, gt_format: str | None, skip_invalid: bool,
               split: str | None, image_dir: Path | None, **options: object) -> tuple:
    """The ground truth read with its images, and ``model``'s predictions of them."""
    from danlu.cli._common import track
    from danlu.cli._eval_model import predict_ground_truth
    from danlu.data.io import load_dataset

    info(f"reading ground truth {gt}")
    gt_ds = load_dataset(gt, gt_format, split=split, skip_invalid=skip_invalid,
                         image_dir=image_dir)
    print_notices(gt_ds)
    if len(gt_ds) == 0:
        from danlu.errors import DatasetError

        raise DatasetError(f"{gt} holds no images to predict")
    preds, foreign = predict_ground_truth(
        model, gt_ds, progress=lambda items: track(items, "predict", len(gt_ds)), **options)
    if foreign:
        console.print(f"[bold yellow]warning:[/] the model's classes {', '.join(foreign)} are "
                      "not in the ground truth: their predictions are not scored",
                      highlight=False, soft_wrap=True)
    return gt_ds, preds


def unpredicted_classes(gt, preds) -> list[str]:  # noqa: ANN001 - two Datasets
    """Classes with ground-truth boxes but not one prediction (their AP is 0 by default)."""
    import numpy as np

    def labels(ds) -> set[int]:  # noqa: ANN001
        seen = [s.detections.labels for s in ds.samples if len(s.detections)]
        return set(np.concatenate(seen).tolist()) if seen else set()

    have, asked = labels(preds), labels(gt)
    return [gt.class_names[i] for i in sorted(asked - have) if 0 <= i < len(gt.class_names)]


def _warn_unpredicted(gt, preds) -> None:  # noqa: ANN001 - two Datasets
    missing = unpredicted_classes(gt, preds)
    if not missing:
        return
    total = sum(len(s.detections) for s in preds.samples)
    if total == 0:
        console.print("[bold yellow]warning:[/] the predictions hold no boxes at all "
                      f"({len(preds)} images): every AP is 0", highlight=False)
    else:
        console.print(f"[bold yellow]warning:[/] no predictions for {len(missing)} of "
                      f"{len(gt.class_names)} classes with ground truth ({', '.join(missing)}): "
                      "their AP is 0", highlight=False, soft_wrap=True)


def _print_tables(result) -> None:  # noqa: ANN001 - an EvalResult
    from rich.table import Table

    table = Table(title=f"danlu eval — {result.protocol}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.metrics.items():
        table.add_row(k, _fmt(v))
    console.print(table)
    per_class = Table(title="per-class AP")
    per_class.add_column("class")
    per_class.add_column("AP", justify="right")
    per_class.add_column("GT", justify="right")
    for name in result.class_names:
        per_class.add_row(name, _fmt(result.per_class.get(name, math.nan)),
                          str(result.num_gt.get(name, 0)))
    console.print(per_class)
