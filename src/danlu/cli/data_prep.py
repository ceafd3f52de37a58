"""``danlu data synth|show|split|tile|crop|drop-labels|filter-small|whitebalance|pack``.

Thin wrappers: each command loads a dataset, calls one library function from ``danlu.data``
and writes the result. ``register(data_app)`` adds them to the ``danlu data`` group.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import typer

from danlu.cli._common import IMAGE_DIR_HELP, SPLIT_HELP, info, print_json, track
from danlu.errors import ConfigError

T = TypeVar("T")

_FORMAT_HELP = ("Input format: voc, coco, yolo, dota, labelme or cvat (detected when "
                "omitted).")
_TO_HELP = "Output format (default: the input's format)."
_OVERWRITE_HELP = "Replace an existing non-empty output folder."


def _progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """The ``progress(items, description, total)`` wrapper that load/save_dataset take."""
    return track(items, description, total)


def _bar(description: str):  # noqa: ANN202 - a one-argument progress wrapper
    return lambda items: track(items, description)


def _load(path: Path, fmt: str | None, split: str | None = None,  # noqa: ANN202 - a Dataset
          image_dir: Path | None = None):
    from danlu.cli._common import print_notices
    from danlu.data.io import load_dataset

    ds = load_dataset(path, fmt, split=split, image_dir=image_dir, progress=_progress)
    print_notices(ds)
    return ds


def _save(ds: Any, out: Path, fmt: str, overwrite: bool) -> Path:
    from danlu.cli._common import print_losses
    from danlu.data.io import save_dataset

    print_losses(ds, fmt)
    return save_dataset(ds, out, fmt, overwrite=overwrite, progress=_progress)


def _out_format(ds: Any, to: str | None) -> str:
    fmt = to or ds.meta.get("format")
    if not fmt:
        raise ConfigError("cannot tell the output format", hint="pass --to voc|coco|yolo|dota")
    return str(fmt)


def _floats(text: str, name: str, n: int | None = None) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ConfigError(f"{name}: expected comma-separated numbers, got {text!r}") from e
    if not values or (n is not None and len(values) != n):
        raise ConfigError(f"{name}: expected {n or 'some'} comma-separated numbers, got {text!r}")
    return values


def default_scale(size: tuple[int, int]) -> tuple[int, int]:
    """``--scale`` when not given: 16-80 px, capped at half the shorter image side (so
    ``--image-size 64`` works without a ``--scale``)."""
    hi = max(1, min(80, min(size) // 2))
    return min(16, max(1, hi // 2)), hi


def _image_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError as e:
        raise ConfigError(f"--image-size: expected N or WxH, got {text!r}") from e
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) <= 0:
        raise ConfigError(f"--image-size: expected N or WxH with positive sizes, got {text!r}")
    return sizes[0], sizes[1]


def _write_json(path: Path, document: Any) -> None:
    from danlu.data._atomic import write_bytes_atomic

    write_bytes_atomic(path, orjson.dumps(document, option=orjson.OPT_INDENT_2
                                          | orjson.OPT_NON_STR_KEYS))


def _record_path(out: Path, name: str) -> Path:
    """Where a side record goes: inside the output folder, or beside an output file."""
    return out / name if out.is_dir() else out.with_name(f"{out.stem}.{name}")


def register(data_app: typer.Typer) -> None:
    """Add the data preparation commands to the ``danlu data`` group."""

    @data_app.command("synth")
    def synth(
        out: Path = typer.Option(..., "--out", "-o", help="Output dataset folder."),
        preset: str = typer.Option("shapes", "--preset", help="shapes | digits."),
        num_images: int = typer.Option(100, "--num-images", "-n", help="Number of images."),
        seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same bytes)."),
        fmt: str = typer.Option(None, "--to", help="Format to write: voc (default), coco, "
                                "yolo, yolo-obb, dota, labelme or cvat.", show_default=False),
        fmt_old: str = typer.Option(None, "--format", "-f", hidden=True),
        image_size: str = typer.Option("256", "--image-size", help="N or WxH pixels."),
        objects: str = typer.Option("1,6", "--objects", help="Min,max objects per image."),
        scale: str = typer.Option(None, "--scale", help="Min,max object size in pixels "
                                  "(default 16,80, capped at half the image's shorter side)."),
        rotation: float = typer.Option(None, "--rotation", help="Max rotation in degrees "
                                       "(default: 180 shapes, 15 digits)."),
        color_jitter: float = typer.Option(0.15, "--color-jitter", help="Brightness and "
                                           "saturation jitter of objects."),
        max_overlap: float = typer.Option(0.0, "--max-overlap", help="Allowed max(IoU, IoS) "
                                          "between objects; 0 = no overlap."),
        overwrite: bool = typer.Option(False, "--overwrite", help=_OVERWRITE_HELP),
    ) -> None:
        """Generate a synthetic detection dataset (copy-paste scenes) and write it.

        Example: danlu data synth --preset shapes --num-images 100 --seed 0 --to voc
        --out shapes
        """
        from danlu.cli._common import renamed_option
        from danlu.data.synth import synthesize

        fmt = renamed_option(fmt, fmt_old, "--format", "--to") or "voc"

        lo, hi = _floats(objects, "--objects", 2)
        size = _image_size(image_size)
        smin, smax = (_floats(scale, "--scale", 2) if scale is not None
                      else default_scale(size))
        ds = synthesize(preset, num_images, seed, image_size=size,
                        objects_per_image=(int(lo), int(hi)), scale_range=(int(smin), int(smax)),
                        rotation=rotation, color_jitter=color_jitter, max_overlap=max_overlap,
                        progress=_bar(f"synth {preset}"))
        _save(ds, out, fmt, overwrite)
        info(f"wrote {len(ds)} images, {ds.num_boxes} boxes ({fmt}) to {out}")

    @data_app.command("show")
    def show(
        dataset: Path = typer.Argument(..., help="Dataset folder or file."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder for PNGs and "
                                 "index.html."),
        limit: int = typer.Option(None, "--limit", help="At most this many images, the first "
                                  "ones (default 50; 0 for every image).", show_default=False),
        all_images: bool = typer.Option(False, "--all", help="Every image (--limit 0); the "
                                        "page embeds each one, so it can be large."),
        classes: str = typer.Option(None, "--classes", help="Only these classes, "
                                    "comma-separated (and images containing them); the legend "
                                    "lists only the classes drawn."),
        fmt: str = typer.Option(None, "--format", "-f", help=_FORMAT_HELP),
        split: str = typer.Option(None, "--split", help=SPLIT_HELP),
        image_dir: Path = typer.Option(None, "--image-dir", help=IMAGE_DIR_HELP),
    ) -> None:
        """Draw the boxes on the first 50 images and write a self-contained HTML gallery.

        Prints how many images it showed of how many; --limit N or --all shows more.

        Example: danlu data show shapes --out shapes_show --limit 20 --classes star,circle
        """
        from danlu.data.show import DEFAULT_LIMIT, select_samples, show_dataset, shown_text

        ds = _load(dataset, fmt, split, image_dir)
        names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
        n = 0 if all_images else (DEFAULT_LIMIT if limit is None else limit)
        sel = select_samples(ds, limit=n, classes=names)  # the counts show_dataset uses
        page = show_dataset(ds, out, limit=n, classes=names, progress=_bar("drawing"))
        more = (f": the first {len(sel.indices)}; --limit N shows N, --all shows all "
                f"{sel.matching}" if sel.truncated else "")
        info(f"showed {shown_text(len(sel.indices), sel.matching, len(ds), names)}{more}")
        info(f"wrote {page}")

    @data_app.command("split")
    def split(
        dataset: Path = typer.Argument(..., help="Dataset folder or file."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: one dataset per "
                                 "split in OUT/<name>."),
        ratios: str = typer.Option("0.8,0.1,0.1", "--ratios", help="Relative split sizes."),
        names: str = typer.Option(None, "--names", help="Split names, comma-separated "
                                  "(default train,val[,test])."),
        seed: int = typer.Option(0, "--seed", help="Random seed."),
        stratify: bool = typer.Option(True, "--stratify/--no-stratify",
                                      help="Stratify by each image's rarest class."),
        fmt: str = typer.Option(None, "--format", "-f", help=_FORMAT_HELP),
        split: str = typer.Option(None, "--split", help=SPLIT_HELP),
        image_dir: Path = typer.Option(None, "--image-dir", help=IMAGE_DIR_HELP),
        to: str = typer.Option(None, "--to", help=_TO_HELP),
        overwrite: bool = typer.Option(False, "--overwrite", help=_OVERWRITE_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print the split sizes as JSON."),
    ) -> None:
        """Split a dataset into parts of exact sizes, stratified by class presence.

        Example: danlu data split shapes --ratios 0.8,0.2 --seed 0 --out parts
        """
        from danlu.data.split import split_dataset

        ds = _load(dataset, fmt, split, image_dir)
        name_list = [n.strip() for n in names.split(",")] if names else None
        parts = split_dataset(ds, _floats(ratios, "--ratios"), seed, stratify=stratify,
                              names=name_list)
        out_fmt = _out_format(ds, to)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise ConfigError(f"{out}: folder exists and is not empty",
                              hint="choose another --out or pass --overwrite")
        for name, part in parts.items():
            _save(part, out / name, out_fmt, overwrite)
        sizes = {name: len(part) for name, part in parts.items()}
        if as_json:
            print_json({"out": str(out), "format": out_fmt, "sizes": sizes})
        else:
            info(", ".join(f"{k}: {v}" for k, v in sizes.items()) + f" -> {out}")

    @data_app.command("tile")
    def tile(
        dataset: Path = typer.Argument(..., help="Dataset folder or file."),
        out: Path = typer.Option(..., "--out", "-o", help="Output dataset folder."),
        tile_size: int = typer.Option(1024, "--tile-size", help="Tile side in pixels."),
        gap: int = typer.Option(200, "--gap", help="Overlap of neighbouring tiles in pixels."),
        rate: float = typer.Option(1.0, "--rate", help="Rescale images by this factor first."),
        min_kept: float = typer.Option(0.7, "--min-kept", help="Objects clipped below this "
                                       "fraction of their area are partial."),
        keep_partial: str = typer.Option("difficult", "--keep-partial",
                                         help="difficult (flag them) | drop."),
        fmt: str = typer.Option(None, "--format", "-f", help=_FORMAT_HELP),
        split: str = typer.Option(None, "--split", help=SPLIT_HELP),
        image_dir: Path = typer.Option(None, "--image-dir", help=IMAGE_DIR_HELP),
        to: str = typer.Option(None, "--to", help=_TO_HELP),
        overwrite: bool = typer.Option(False, "--overwrite", help=_OVERWRITE_HELP),
    ) -> None:
        """Cut large images into overlapping tiles (DOTA_devkit ImgSplit rules).

        Tile origins are written in each tile's id, {id}__{rate}__{x}___{y}.

        Example: danlu data tile shapes --tile-size 128 --gap 32 --out shapes_tiles
        """
        from danlu.data.tile import tile_dataset

        ds = _load(dataset, fmt, split, image_dir)
        tiles = tile_dataset(ds, tile_size, gap, rate=rate, min_kept_fraction=min_kept,
                             keep_partial=keep_partial, encode=True, progress=_bar("tiling"))
        out_fmt = _out_format(ds, to)
        _save(tiles, out, out_fmt, overwrite)
        info(f"wrote {len(tiles)} tiles from {len(ds)} images, {tiles.num_boxes} boxes to {out}")

    @data_app.command("crop")
    def crop(
        dataset: Path = typer.Argument(..., help="Dataset folder or file."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
        fmt: str = typer.Option(None, "--format", "-f", help=_FORMAT_HELP),
        split: str = typer.Option(None, "--split", help=SPLIT_HELP),
        image_dir: Path = typer.Option(None, "--image-dir", help=IMAGE_DIR_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
    ) -> None:
        """Cut every object out, one folder per class, and black them out of the backgrounds.

        Writes OUT/objects/<class>/<id>_<k>.png and OUT/backgrounds/<id>.png.

        Example: danlu data crop shapes --out shapes_crops
        """
        from danlu.data.crop import crop_objects

        ds = _load(dataset, fmt, split, image_dir)
        summary = crop_objects(ds, out, progress=_bar("cropping"))
        if as_json:
            print_json(summary)
        else:
            info(f"wrote {summary['objects']} objects and {summary['backgrounds']} "
                 f"backgrounds to {out}")

    @data_app.command("drop-labels")
    def drop_labels_command(
        dataset: Path = typer.Argument(..., help="Dataset folder or file."),
        out: Path = typer.Option(..., "--out", "-o", help="Output dataset folder."),
        rate: float = typer.Option(..., "--rate", help="Fraction of boxes to drop, 0..1."),
        seed: int = typer.Option(0, "--seed", help="Random seed."),
        per_class: bool = typer.Option(True, "--per-class/--overall", help="Drop the fraction "
                                       "of each class (default) or of all boxes together."),
        fmt: str = typer.Option(None, "--format", "-f", help=_FORMAT_HELP),
        split: str = typer.Option(None, "--split", help=SPLIT_HELP),
        image_dir: Path = typer.Option(None, "--image-dir", help=IMAGE_DIR_HELP),
        to: str = typer.Option(None, "--to", help=_TO_HELP),
        overwrite: bool = typer.Option(False, "--overwrite", help=_OVERWRITE_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
    ) -> None:
        """Drop a random fraction of each class's boxes to simulate missing labels.

        Exactly round(rate * n) boxes of each class go; the record of which ones (and the
        images left without boxes) is written to OUT/dropped.json.

        Example: danlu data drop-labels shapes --rate 0.3 --seed 0 --out shapes_missing
        """
        from danlu.data.labels import drop_labels

        ds = _load(dataset, fmt, split, image_dir)
        result = drop_labels(ds, rate, seed, per_class=per_class)
        out_path = _save(result, out, _out_format(ds, to), overwrite)
        record = result.meta["dropped"]
        _write_json(_record_path(out_path, "dropped.json"), record)
        if as_json:
            print_json(record)
        else:
            info(f"dropped {ds.num_boxes - result.num_boxes} of {ds.num_boxes} boxes; "
                 f"{len(record['emptied'])} images left without boxes -> {out}")

    @data_app.command("filter-small")
    def filter_small_command(
        dataset: Path = typer.Argument(..., help="Dataset folder or file."),
        out: Path = typer.Option(..., "--out", "-o", help="Output dataset folder."),
        min_area: float = typer.Option(None, "--min-area", help="Area threshold in pixels "
                                       "(default: the mean box area)."),
        fmt: str = typer.Option(None, "--format", "-f", help=_FORMAT_HELP),
        split: str = typer.Option(None, "--split", help=SPLIT_HELP),
        image_dir: Path = typer.Option(None, "--image-dir", help=IMAGE_DIR_HELP),
        to: str = typer.Option(None, "--to", help=_TO_HELP),
        overwrite: bool = typer.Option(False, "--overwrite", help=_OVERWRITE_HELP),
    ) -> None:
        """Remove boxes smaller than an area (default: the dataset's mean box area).

        Example: danlu data filter-small shapes --out shapes_large
        """
        from danlu.data.labels import filter_small

        ds = _load(dataset, fmt, split, image_dir)
        result = filter_small(ds, min_area)
        _save(result, out, _out_format(ds, to), overwrite)
        m = result.meta["filter_small"]
        info(f"removed {m['removed']} of {ds.num_boxes} boxes below {m['min_area']:.1f} px² "
             f"-> {out}")

    @data_app.command("whitebalance")
    def whitebalance(
        dataset: Path = typer.Argument(..., help="Dataset folder or file."),
        out: Path = typer.Option(..., "--out", "-o", help="Output dataset folder."),
        percent: float = typer.Option(5.0, "--percent", help="Share of brightest pixels (by "
                                      "luminance) taken as the reference white."),
        fmt: str = typer.Option(None, "--format", "-f", help=_FORMAT_HELP),
        split: str = typer.Option(None, "--split", help=SPLIT_HELP),
        image_dir: Path = typer.Option(None, "--image-dir", help=IMAGE_DIR_HELP),
        to: str = typer.Option(None, "--to", help=_TO_HELP),
        overwrite: bool = typer.Option(False, "--overwrite", help=_OVERWRITE_HELP),
    ) -> None:
        """Colour-correct every image so that its brightest pixels become neutral white.

        The brightest --percent of pixels by luminance are the reference white; each channel
        is scaled so that their average is 255. Images are written as PNG, boxes unchanged.

        Example: danlu data whitebalance shapes --out shapes_wb
        """
        from danlu.data.whitebalance import white_balance_dataset

        ds = _load(dataset, fmt, split, image_dir)
        result = white_balance_dataset(ds, percent, progress=_bar("white balance"))
        _save(result, out, _out_format(ds, to), overwrite)
        info(f"wrote {len(result)} corrected images to {out}")

    @data_app.command("pack")
    def pack(
        dataset: Path = typer.Argument(..., help="Dataset folder or file."),
        out: Path = typer.Option(..., "--out", "-o", help="The pack file to write."),
        img_size: int = typer.Option(640, "--img-size", help="Side of the stored images."),
        mode: str = typer.Option("letterbox", "--mode", help="letterbox (keep aspect, pad "
                                 "bottom/right) | resize (stretch)."),
        fmt: str = typer.Option(None, "--format", "-f", help=_FORMAT_HELP),
        split: str = typer.Option(None, "--split", help=SPLIT_HELP),
        image_dir: Path = typer.Option(None, "--image-dir", help=IMAGE_DIR_HELP),
    ) -> None:
        """Decode and resize every image once into one memory-mappable cache file.

        Read it with danlu.data.pack.PackedDataset(path).

        Example: danlu data pack shapes --img-size 256 --out shapes.pack
        """
        from danlu.data.pack import pack_dataset

        ds = _load(dataset, fmt, split, image_dir)
        path = pack_dataset(ds, out, img_size, mode=mode, progress=_bar("packing"))
        info(f"packed {len(ds)} images at {img_size}px ({path.stat().st_size / 2**20:.1f} MiB) "
             f"-> {path}")


__all__ = ["register"]
