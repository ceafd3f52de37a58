"""``danlu predict``: run a model on images, folders, globs or videos; write predictions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from danlu.cli._common import counter, info, print_json


def _class_thresholds(path: Path | None) -> dict[Any, float]:
    """A YAML / JSON mapping ``{class name or label id: min score}``."""
    if path is None:
        return {}
    import yaml

    from danlu.errors import ConfigError

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read per-class thresholds ({e})") from e
    if not isinstance(doc, dict) or not all(isinstance(v, (int, float)) for v in doc.values()):
        raise ConfigError(f"{path}: expected a mapping of class name (or id) to a score",
                          hint="e.g.  car: 0.4\n      person: 0.25")
    return {k: float(v) for k, v in doc.items()}


def _total(paths: list[Path], stride: int) -> int | None:
    """Images plus video frames to predict (None when a video does not say)."""
    from danlu.infer.sources import is_video, video_frame_count

    total = 0
    for p in paths:
        if is_video(p):
            n = video_frame_count(p, stride)
            if n is None:
                return None
            total += n
        else:
            total += 1
    return total


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict_cmd(
        model: str = typer.Argument(..., help="A danlu checkpoint (best.pt) or run folder, an "
                                    "exported .onnx / .torchscript file, or haar:NAME (an "
                                    "OpenCV cascade, e.g. haar:frontalface_default)."),
        sources: list[str] = typer.Argument(..., help="Images, folders, quoted globs "
                                            "('shots/**/*.jpg') or video files."),
        out: Path = typer.Option(None, "--out", help="Output folder (default: a new "
                                 "runs/predict/N, printed)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, mps."),
        score_threshold: float = typer.Option(0.25, "--score-threshold",
                                              help="Keep detections scoring at least this."),
        class_thresholds: Path = typer.Option(None, "--class-thresholds", help="YAML/JSON "
                                              "file: {class name or id: min score}."),
        batch: int = typer.Option(8, "--batch", help="Images (or tiles) per forward pass."),
        formats: list[str] = typer.Option(None, "--to", help="Also write: coco, voc, yolo, "
                                          "dota, dota-task1, dota-task2 (repeat or "
                                          "comma-separate); predictions.json (danlu) is "
                                          "always written.", show_default=False),
        formats_old: list[str] = typer.Option(None, "--format", hidden=True),
        save_images: bool = typer.Option(True, "--save-images/--no-save-images", "--draw/"
                                         "--no-draw", help="Write OUT/images/*.png with the "
                                         "boxes drawn (a shrunk copy for huge images)."),
        nms: str = typer.Option("hard", "--nms", help="Suppression: hard (class-aware, "
                                "default), agnostic, soft-linear, soft-gaussian, iou-guided, "
                                "wbf, nmm, greedy-nmm, none."),
        iou: float = typer.Option(None, "--iou", help="IoU threshold of the suppression "
                                  "(default: the model's own, usually 0.5)."),
        match: str = typer.Option("iou", "--match", help="iou or ios (intersection over "
                                  "the smaller box), for nmm / greedy-nmm."),
        multi_label: bool = typer.Option(False, "--multi-label", help="Keep every class "
                                         "above the threshold for a box (what mAP wants); "
                                         "default: one label per box, the best class of "
                                         "boxes overlapping above IoU 0.7."),
        max_det: int = typer.Option(None, "--max-det", help="Detections per image (default: "
                                    "the model's own cap; sliced images: no cap)."),
        slice_: str = typer.Option(None, "--slice", help="Sliced inference: a tile side in "
                                   "pixels, or 'auto' (tiles of the model's input side, for "
                                   "images larger than 1.5x it)."),
        overlap: float = typer.Option(0.2, "--overlap", help="Tile overlap fraction."),
        full_pass: bool = typer.Option(False, "--full-pass", help="With --slice: also "
                                       "predict the whole image shrunk (large objects)."),
        merge: str = typer.Option("default", "--merge", help="With --slice: 'default' (the "
                                  "--nms choice, one box per object at tile seams) or "
                                  "'dota' (DOTA devkit ResultMerge: per-class NMS at 0.3)."),
        tta: bool = typer.Option(False, "--tta", help="Test-time augmentation: flip and two "
                                 "scales, fused by WBF (about 4x the time)."),
        vid_stride: int = typer.Option(1, "--vid-stride", help="Videos: every N-th frame."),
        recursive: bool = typer.Option(False, "--recursive", "-r", help="Folders: images in "
                                       "sub-folders too."),
        strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable "
                                    "file (default: skip it, count it, go on)."),
        haar_scale_factor: float = typer.Option(1.1, "--haar-scale-factor",
                                                help="haar: models: the image pyramid step."),
        haar_min_neighbors: int = typer.Option(5, "--haar-min-neighbors",
                                               help="haar: models: detections to group."),
        haar_min_size: int = typer.Option(30, "--haar-min-size",
                                          help="haar: models: smallest object side, pixels."),
        as_json: bool = typer.Option(False, "--json", help="Print predictions.json's "
                                     "document on stdout."),
    ) -> None:
        """Detect objects with a trained, exported or classical model.

        Writes OUT (--out, or a new runs/predict/N): OUT/predictions.json ({"class_names",
        "model", "images": [{"path", "width", "height", "detections": {"xyxy", "labels",
        "scores"}}], "failed", "summary"}; boxes in image pixels), OUT/images/*.png with
        the boxes drawn, the --to files, and OUT/geojson/ for GeoTIFF inputs.
        Unreadable files are skipped and counted. A box gets one label (the best class)
        unless --multi-label.

        Examples:
          danlu predict runs/shapes/best.pt parts/val/JPEGImages --out preds --nms soft-gaussian
          danlu predict runs/shapes/best.pt 'parts/val/JPEGImages/*.png' --slice 128 --to coco
          danlu predict haar:frontalface_default parts/val/JPEGImages --out faces
          danlu predict runs/shapes/best.pt parts/val/JPEGImages --multi-label
        """
        from danlu.cli._common import renamed_option
        from danlu.infer.outputs import check_formats
        from danlu.infer.predictor import Predictor
        from danlu.infer.run import next_predict_dir, predict_sources
        from danlu.infer.slicing import dota_merge
        from danlu.infer.sources import expand_sources

        formats = renamed_option(formats or None, formats_old or None, "--format", "--to")
        fmts = check_formats(formats or ["danlu"])
        from danlu.infer.slicing import parse_slice_size

        tile = parse_slice_size(slice_)
        if merge not in ("default", "dota"):
            from danlu.errors import ConfigError

            raise ConfigError(f"--merge {merge!r}: expected default or dota")
        # walked once, before the model loads: a typo fails at once
        paths = expand_sources(sources, recursive=recursive)
        total = _total(paths, vid_stride)
        options: dict[str, Any] = {}
        if model.startswith("haar:"):
            options = {"scale_factor": haar_scale_factor, "min_neighbors": haar_min_neighbors,
                       "min_size": (haar_min_size, haar_min_size)}
        predictor = Predictor(model, device=device, score_threshold=score_threshold,
                              batch_size=batch, nms=nms, iou=iou, max_detections=max_det,
                              match=match, multi_label=multi_label,
                              class_thresholds=_class_thresholds(class_thresholds),
                              tta=tta, **options)
        merge_pp = None
        if merge == "dota":
            from dataclasses import replace

            merge_pp = replace(dota_merge(iou if iou is not None else 0.3),
                               multi_label=multi_label)
        auto_out = out is None
        if auto_out:  # made once the model has loaded: a run that cannot start leaves none
            out = next_predict_dir()
        try:
            with counter("predict", total) as advance:
                doc = predict_sources(predictor, paths, out, formats=fmts,
                                      save_images=save_images, progress=advance,
                                      slice_size=tile, overlap=overlap, full_pass=full_pass,
                                      merge=merge_pp, resolve_cuts=merge != "dota",
                                      vid_stride=vid_stride, recursive=recursive,
                                      strict=strict)
        except BaseException:
            if auto_out and not any(out.iterdir()):
                out.rmdir()
            raise
        s = doc["summary"]
        # said even with --json or --quiet: a run that found nothing, or skipped files, is news
        for bad in doc["failed"][:10]:
            print(f"warning: skipped {bad['error']}", file=sys.stderr)
        if len(doc["failed"]) > 10:
            print(f"warning: ... and {len(doc['failed']) - 10} more unreadable files "
                  "(listed in predictions.json)", file=sys.stderr)
        if s["images"] == 0:
            from danlu.errors import DatasetError

            raise DatasetError(f"none of the {s['failed']} inputs could be read",
                               hint="the warnings above say why")
        if s["detections"] == 0:
            print(f"warning: 0 detections in {s['images']} images at score >= "
                  f"{score_threshold:g}; try a lower --score-threshold", file=sys.stderr)
        if as_json:
            print_json(doc)
            if auto_out:  # where the files went, when the user did not say
                print(f"predictions in {out}", file=sys.stderr)
        else:
            skipped = f", {s['failed']} skipped" if s["failed"] else ""
            line = (f"{s['detections']} detections in {s['images']} images{skipped} "
                    f"({s['images_per_second']:.1f} img/s) -> {out}")
            if auto_out:  # said even with --quiet: the user did not choose the folder
                print(line, file=sys.stderr)
            else:
                info(line)
