"""``danlu pseudo-label``: a trained model adds the boxes a dataset's annotators missed."""

from __future__ import annotations

from pathlib import Path

import typer

from danlu.cli._common import SPLIT_KINDS, info, print_json


def register(app: typer.Typer) -> None:
    @app.command("pseudo-label")
    def pseudo_label_cmd(
        model: Path = typer.Option(..., "--model", help="The teacher: a checkpoint (.pt) or "
                                   "run folder."),
        data: Path = typer.Option(..., "--data", help="The dataset with missing labels."),
        out: Path = typer.Option(..., "--out", help="Output COCO dataset folder (pseudo "
                                 "annotations carry \"pseudo\": 1)."),
        score: float = typer.Option(0.7, "--score", help="Keep detections scoring at least "
                                    "this."),
        iou: float = typer.Option(0.5, "--iou", help="A detection is new when its IoU with "
                                  "every labelled box of its class is below this."),
        class_agnostic: bool = typer.Option(False, "--class-agnostic/--per-class",
                                            help="Compare with labelled boxes of any class."),
        data_format: str = typer.Option(None, "--format", "-f", help="Format of --data: voc, "
                                        "coco, yolo or dota (default: detected)."),
        data_format_old: str = typer.Option(None, "--data-format", hidden=True),
        split: str = typer.Option(None, "--split", help=f"Read only this split of --data: "
                                   f"{SPLIT_KINDS}."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps."),
        images: str = typer.Option("copy", "--images", help="copy, symlink or none."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ) -> None:
        """Add a teacher model's confident detections that match no existing label, marked
        as pseudo-labels; train the student on the result.

        Example: danlu pseudo-label --model runs/shapes/best.pt --data shapes_missing --score 0.5
        --out shapes_pseudo
        """
        from danlu.cli._common import print_notices, renamed_option
        from danlu.data.io import load_dataset
        from danlu.infer.predictor import Predictor
        from danlu.train.pseudo import pseudo_label, save_pseudo_labels

        data_format = renamed_option(data_format, data_format_old, "--data-format", "--format")
        ds = load_dataset(data, format=data_format, split=split)
        print_notices(ds)
        teacher = Predictor(model, device=device)
        result = pseudo_label(teacher, ds, score=score, iou=iou, class_agnostic=class_agnostic)
        save_pseudo_labels(result, out, images=images, overwrite=overwrite)
        summary = {"out": str(out), "images": len(result), "labelled": ds.num_boxes,
                   "pseudo": result.meta["pseudo_label"]["added"], "score": score, "iou": iou}
        if as_json:
            print_json(summary)
        else:
            info(f"{summary['pseudo']} pseudo-labels added to {summary['labelled']} labels "
                 f"on {len(result)} images -> {out}")
