"""``danlu predict``: run a checkpoint on images; write predictions and drawn pictures."""

from __future__ import annotations

from pathlib import Path

import typer

from danlu.cli._common import info, print_json, track

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def image_paths(inputs: list[Path]) -> list[Path]:
    """Files as given; folders expand to the images directly inside them, sorted."""
    from danlu.errors import DatasetError

    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise DatasetError(f"{p}: no such image or folder")
    if not out:
        raise DatasetError("no images found", hint="pass image files or folders of images")
    return out


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict_cmd(
        checkpoint: Path = typer.Argument(..., help="A danlu checkpoint (best.pt) or run "
                                          "folder."),
        images: list[Path] = typer.Argument(..., help="Image files or folders of images."),
        out: Path = typer.Option(..., "--out", help="Output folder: predictions.json and "
                                 "drawn PNGs."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, mps."),
        score_threshold: float = typer.Option(0.25, "--score-threshold",
                                              help="Keep detections scoring at least this."),
        batch: int = typer.Option(8, "--batch", help="Images per forward pass."),
        draw: bool = typer.Option(True, "--draw/--no-draw", help="Write drawn PNGs."),
        nms: str = typer.Option("hard", "--nms", help="Suppression: hard (class-aware, "
                                "default), agnostic, soft-linear, soft-gaussian, wbf, nmm, "
                                "greedy-nmm, iou-guided, none."),
        iou: float = typer.Option(None, "--iou", help="IoU threshold of the suppression "
                                  "(default: the model's own, usually 0.5)."),
        max_det: int = typer.Option(None, "--max-det", help="Detections per image (default: "
                                    "the model's own cap)."),
        as_json: bool = typer.Option(False, "--json", help="Print predictions.json's "
                                     "document on stdout."),
    ) -> None:
        """Detect objects in images with a trained checkpoint.

        Writes OUT/predictions.json ({"class_names", "checkpoint", "images": [{"path",
        "width", "height", "detections": {"xyxy", "labels", "scores"}}]}, boxes in image
        pixels) and OUT/images/*.png with the boxes drawn.

        Example: danlu predict runs/exp/best.pt photos/ --out preds --nms soft-gaussian
        """
        from danlu.infer.predictor import predict_files

        doc = predict_files(checkpoint, image_paths(images), out, device=device,
                            score_threshold=score_threshold, batch_size=batch, draw=draw,
                            progress=lambda xs: track(xs, "predict"), nms=nms, iou=iou,
                            max_detections=max_det)
        n = sum(len(im["detections"]["labels"]) for im in doc["images"])
        if n == 0:  # said even with --json or --quiet: a run that found nothing is news
            import sys

            print(f"warning: 0 detections in {len(doc['images'])} images at score >= "
                  f"{score_threshold:g}; try a lower --score-threshold", file=sys.stderr)
        if as_json:
            print_json(doc)
        else:
            info(f"{n} detections in {len(doc['images'])} images -> {out}")
