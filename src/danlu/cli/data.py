"""``danlu data ...``: the dataset commands.

``convert`` and ``stats`` live here; the other data commands (synth, show, split, tile, crop,
...) are attached to the same group by :func:`danlu.cli.data_prep.register`. Every command is
a thin wrapper over a library call in :mod:`danlu.data`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from danlu.cli._common import (
    IMAGE_DIR_HELP,
    console,
    info,
    print_json,
    print_losses,
    print_notices,
    track,
)

data_app = typer.Typer(
    name="data",
    help="Prepare datasets: convert between VOC, COCO, YOLO, YOLO OBB, DOTA, LabelMe and CVAT, "
         "statistics, and more."
    "\n\nExample: danlu data convert shapes shapes-coco --to coco",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_FORMATS = "voc, coco, yolo, yolo-obb, dota, labelme or cvat"


def _warnings_report(dst: Path, warnings: list[str]) -> Path:
    """Write the skipped-item warnings beside (or inside) the output; return the path."""
    from danlu.data._atomic import write_text_atomic

    report = (dst.with_name(dst.stem + ".warnings.txt") if dst.suffix.lower() == ".json"
              else dst / "danlu-warnings.txt")
    write_text_atomic(report, "".join(f"{w}\n" for w in warnings))
    return report


def register_convert(app: typer.Typer) -> None:
    @app.command("convert")
    def convert(
        src: Path = typer.Argument(..., help="The dataset to read (folder, or COCO .json)."),
        dst: Path = typer.Argument(..., help="The folder to write (or a COCO .json file)."),
        to: str = typer.Option(..., "--to", help=f"Output format: {_FORMATS}."),
        from_: str = typer.Option(None, "--format", "-f", help="Format of SRC (detected when "
                                  "omitted)."),
        from_old: str = typer.Option(None, "--from", hidden=True),
        split: str = typer.Option(None, "--split", help="Read only this split (VOC ImageSets/"
                                  "Main name, YOLO data.yaml key, COCO instances_<split>)."),
        skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip bad boxes, "
                                          "files and images; list them in a report file."),
        images: str = typer.Option("copy", "--images", help="copy, symlink or none (annotations "
                                   "only: SRC's images need not be on disk)."),
        image_dir: Path = typer.Option(None, "--image-dir", help=IMAGE_DIR_HELP),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty DST."),
    ) -> None:
        """Convert a dataset between VOC, COCO, YOLO, YOLO OBB, DOTA, LabelMe and CVAT.

        Boxes, class names and the flags both formats hold survive the round trip; what the
        output format cannot hold (a flag, scores, orientation, spaces in class names) is
        named in a warning with its count. Nothing is half-written: DST appears complete or
        not at all. With --skip-invalid, the skipped
        items are listed in DST/danlu-warnings.txt.

        Example: danlu data convert shapes shapes-coco --to coco --images symlink
        """
        from danlu.cli._common import renamed_option
        from danlu.data.io import load_dataset, save_dataset

        from_ = renamed_option(from_, from_old, "--from", "--format")
        ds = load_dataset(src, from_, split=split, skip_invalid=skip_invalid,
                          check_images="warn" if images == "none" else True,
                          image_dir=image_dir, progress=track)
        print_notices(ds)
        warnings = ds.meta.get("warnings", [])
        print_losses(ds, to)
        save_dataset(ds, dst, to, images=images, overwrite=overwrite, progress=track)
        info(f"converted {len(ds)} images, {ds.num_boxes} boxes, {len(ds.class_names)} classes:"
             f" {src} ({ds.meta.get('format')}) -> {dst} ({to})")
        if warnings:
            report = _warnings_report(dst, warnings)
            console.print(f"skipped {len(warnings)} invalid items; see {report}",
                          highlight=False)


def register_stats(app: typer.Typer) -> None:
    @app.command("stats")
    def stats(
        dataset: Path = typer.Argument(..., help="The dataset (folder, or COCO .json)."),
        format: str = typer.Option(None, "--format", "-f", help=f"{_FORMATS} (detected when "
                                   "omitted)."),
        split: str = typer.Option(None, "--split", help="Read only this split."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
        plot: Path = typer.Option(None, "--plot", help="Also draw the histograms as a PNG."),
        skip_invalid: bool = typer.Option(False, "--skip-invalid",
                                          help="Skip bad items instead of stopping."),
        image_dir: Path = typer.Option(None, "--image-dir", help=IMAGE_DIR_HELP),
        check_images: bool = typer.Option(False, "--check-images", help="Also decode every "
                                          "image and list the broken ones (truncated, not an "
                                          "image, a size other than the annotation's)."),
    ) -> None:
        """Count images, boxes and classes, with histograms and box-quality checks.

        Histograms of boxes per image, box sizes and aspect ratios; COCO small/medium/large;
        empty images; duplicate, degenerate and out-of-bounds boxes.

        Example: danlu data stats shapes --json --plot shapes-stats.png
        """
        from danlu.data.io import load_dataset
        from danlu.data.stats import dataset_stats, plot_stats

        # the counts need no pixels: images that are not on disk are counted, not fatal
        ds = load_dataset(dataset, format, split=split, skip_invalid=skip_invalid,
                          check_images=True if check_images else "warn", image_dir=image_dir,
                          progress=track)
        st = dataset_stats(ds)
        st["format"] = ds.meta.get("format")
        if check_images:
            st["broken_images"] = broken_images(ds)
        if plot is not None:
            plot_stats(st, plot)
            info(f"plot written to {plot}")
        if as_json:
            print_json(st)
        else:
            _print_table(st)
        print_notices(ds)
        if st["warnings"]:
            from danlu.data.io import skipped_report

            console.print(skipped_report(ds.meta.get("warnings") or [], limit=20),
                          highlight=False, soft_wrap=True)
        if check_images:
            bad = st["broken_images"]
            for b in bad[:20]:
                console.print(f"broken image: {b['error']}", highlight=False, soft_wrap=True)
            console.print(f"checked {len(ds)} images: {len(bad)} broken"
                          + (" (the first 20 listed; all in --json)" if len(bad) > 20 else ""),
                          highlight=False)


def broken_images(ds) -> list[dict]:  # noqa: ANN001 - a Dataset
    """Decode every image of ``ds``: ``[{"id", "image", "error"}]`` for those that fail or
    whose decoded size differs from the annotation's."""
    from danlu.infer.images import try_read_image

    bad = []
    for s in track(ds.samples, "decoding images", total=len(ds)):
        source = s.image if isinstance(s.image, (bytes, bytearray)) else str(s.image)
        where = str(s.id if isinstance(s.image, (bytes, bytearray)) else s.image)
        arr, err = try_read_image(source)
        if err is None and s.width and s.height and arr.shape[:2] != (s.height, s.width):
            err = (f"{where}: decoded {arr.shape[1]}x{arr.shape[0]}, the annotation says "
                   f"{s.width}x{s.height}")
        if err is not None:
            bad.append({"id": s.id, "image": where, "error": err})
    return bad


def _print_table(st: dict) -> None:
    from rich.table import Table

    t = Table(title=f"{st['num_images']} images, {st['num_boxes']} boxes, "
              f"{st['num_classes']} classes ({st.get('format')})")
    t.add_column("class")
    t.add_column("boxes", justify="right")
    t.add_column("images", justify="right")
    for name, c in st["per_class"].items():
        t.add_row(name, str(c["boxes"]), str(c["images"]))
    console.print(t)
    bpi = st["boxes_per_image"]
    area = st["coco_area"]
    lines = [
        f"boxes per image: mean {_f(bpi['mean'])}, median {_f(bpi['median'])}, "
        f"max {_f(bpi['max'])}; empty images: {st['empty_images']}",
        f"COCO sizes: small {area['small']}, medium {area['medium']}, large {area['large']}",
        f"duplicate boxes: {st['duplicate_boxes']}, degenerate: {st['degenerate_boxes']}, "
        f"out of bounds: {st['out_of_bounds_boxes']}",
    ]
    for line in lines:
        console.print(line, highlight=False)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def register(app: typer.Typer) -> None:
    """Add the ``data`` group (convert, stats, and the other data commands) to ``app``."""
    from danlu.cli import data_prep

    register_convert(data_app)
    register_stats(data_app)
    data_prep.register(data_app)
    app.add_typer(data_app, name="data")
