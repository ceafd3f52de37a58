"""Where the images and the label files of a YOLO dataset are, in the layouts people have.

Layouts read (the first that fits, in this order)::

    data.yaml (Ultralytics)  train: images/train   ->  labels/train/<stem>.txt
    data.yaml (Roboflow)     train: ../train/images ->  train/labels/<stem>.txt
    obj.data / obj.names     train = data/train.txt, obj_train_data/<stem>.jpg + <stem>.txt
      (CVAT "YOLO 1.1", darknet)
    <split>/images/ + <split>/labels/      (Roboflow folders, no YAML)
    images/<split>/ or images/             (no YAML)
    <stem>.jpg + <stem>.txt + classes.txt  (LabelImg: a flat folder)

Paths in a YAML stay inside the dataset folder; a Roboflow ``../train/images`` is read as
``train/images``, as Ultralytics reads it, and a ``test`` split whose folder the export left
out is a notice, not an error. Lines of a darknet list (``data/obj_train_data/a.jpg``,
written for darknet's working folder) are found under the dataset folder by their longest
tail that names a file there.

The label file of an image is the first that exists of: the Ultralytics rule (the last
``images`` folder of its path replaced by ``labels``), the same with the split's other
validation name (``val``, ``valid``, ``validation``: Roboflow writes ``valid``), and
``<stem>.txt`` beside the image. :class:`LabelFinder` keeps the images it found none for and
where it looked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from danlu.data.formats._common import IMAGE_EXTENSIONS, FileIndex, ReadContext, safe_join
from danlu.data.split import VAL_SPLIT_NAMES
from danlu.errors import DatasetError

SPLITS = ("train", "val", "test")

Items = list[tuple[str | None, Path]]


def same_split(name: str, wanted: str) -> bool:
    """``name`` is the split ``wanted``: equal, or both names of the validation split."""
    return name == wanted or (name in VAL_SPLIT_NAMES and wanted in VAL_SPLIT_NAMES)


def find_yaml(path: Path) -> Path | None:
    """The dataset YAML of a YOLO folder (``data.yaml``, ``dataset.yaml``, else the one
    ``*.yaml`` with ``names``), or ``path`` itself when it is a YAML file."""
    if path.is_file():
        return path if path.suffix.lower() in (".yaml", ".yml") else None
    for name in ("data.yaml", "dataset.yaml", "data.yml"):
        if (path / name).is_file():
            return path / name
    if path.is_dir():
        cands = [p for p in sorted(path.glob("*.y*ml")) if b"names" in _head(p)]
        if len(cands) == 1:
            return cands[0]
    return None


def _head(p: Path) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(65536)
    except OSError:
        return b""


def is_yolo_folder(path: Path) -> bool:
    """True for a folder in one of the YOLO layouts above (YAML files aside)."""
    if not path.is_dir():
        return False
    if (path / "images").is_dir() or (path / "obj.data").is_file() \
            or (path / "obj.names").is_file():
        return True
    if any((path / s / "images").is_dir() for s in (*SPLITS, *VAL_SPLIT_NAMES)):
        return True
    return (path / "classes.txt").is_file() and any(_images_in(path))


def _images_in(folder: Path) -> Iterable[str]:
    with os.scandir(folder) as it:
        for e in it:
            if e.name.lower().endswith(IMAGE_EXTENSIONS) and not e.name.startswith("."):
                yield e.name


def load_yaml(p: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{p}: cannot read as UTF-8 text ({e})") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise DatasetError(f"{p}: {line}malformed YAML ({getattr(e, 'problem', e)})") from e
    if not isinstance(doc, dict):
        raise DatasetError(f"{p}: expected a mapping with names and train/val/test")
    return doc


def yaml_names(doc: dict[str, Any], where: str) -> list[str] | None:
    names = doc.get("names")
    if names is None:
        nc = doc.get("nc")
        return [str(i) for i in range(nc)] if isinstance(nc, int) and 0 <= nc < 10**6 else None
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict):
        if not all(isinstance(k, int) and 0 <= k < 10**6 for k in names):
            raise DatasetError(f"{where}: names: expected integer keys 0..K-1")
        out = [str(i) for i in range(max(names) + 1 if names else 0)]
        for k, v in names.items():
            out[k] = str(v)
        return out
    raise DatasetError(f"{where}: names: expected a list or a mapping, got "
                       f"{type(names).__name__}")


def list_images(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        out.extend(Path(dirpath) / f for f in sorted(filenames)
                   if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    return out


def _yaml_path(base: Path, entry: str, where: str) -> Path:
    """``base / entry`` inside ``base``; a Roboflow ``../x`` is ``base/x`` (what Ultralytics
    reads when ``base/../x`` is missing; outside ``base`` is never read)."""
    try:
        return safe_join(base, entry, where)
    except DatasetError:
        if entry.startswith(("../", "..\\")):
            try:
                return safe_join(base, entry[3:], where)
            except DatasetError:
                pass
        raise


def _split_images(base: Path, entry: Any, where: str, notices: list[str] | None) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    out: list[Path] = []
    for e in entries:
        if not isinstance(e, str):
            raise DatasetError(f"{where}: expected a folder or .txt path, got {e!r}")
        p = _yaml_path(base, e, where)
        if p.suffix == ".txt" and p.is_file():
            for lineno, line in enumerate(p.read_text(encoding="utf-8",
                                                      errors="replace").splitlines(), 1):
                line = line.strip()
                if line:
                    out.append(safe_join(p.parent, line, f"{p}: line {lineno}"))
        elif p.is_dir():
            out.extend(list_images(p))
        elif notices is not None and not p.exists() and where.endswith(": test"):
            notices.append(f"{where}: {p} does not exist; the split is not read")
        else:
            raise DatasetError(f"{where}: {p} is neither a folder nor a .txt list")
    return out


def _from_yaml(yml: Path, ctx: ReadContext) -> tuple[Items, list[str] | None, Path]:
    doc = load_yaml(yml)
    names = yaml_names(doc, str(yml))
    base = yml.parent
    if isinstance(doc.get("path"), str) and doc["path"]:
        base = (yml.parent / doc["path"]).resolve()
        if not base.is_dir():
            base = yml.parent
    present = [s for s in SPLITS if doc.get(s)]
    if ctx.split:
        key = next((s for s in (ctx.split, *present) if doc.get(s)
                    and same_split(s, ctx.split)), None)
        if key is None:
            raise DatasetError(f"{yml}: split {ctx.split!r} not found",
                               hint=f"splits in the file: {', '.join(present) or 'none'}")
        wanted = [key]
    else:
        wanted = present
    out: Items = []
    seen: set[Path] = set()
    missing: list[str] = []  # a split the YAML names but the export left out (Roboflow: test)
    for s in wanted:
        for p in _split_images(base, doc[s], f"{yml}: {s}", None if ctx.split else missing):
            if p not in seen:
                seen.add(p)
                out.append((s, p))
    if missing and not out:
        raise DatasetError(missing[0])
    ctx.notices.extend(missing)
    return out, names, base


def _read_lines(p: Path) -> list[str]:
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DatasetError(f"{p}: cannot read ({e.strerror or e})") from e
    return text.splitlines()


def _names_file(p: Path) -> list[str]:
    return [ln.strip() for ln in _read_lines(p) if ln.strip()]


def _locate(root: Path, entry: str) -> Path | None:
    """The file a darknet list line names, under ``root``: its longest tail naming a file
    there (``data/obj_train_data/a.jpg`` -> ``root/obj_train_data/a.jpg``), else an absolute
    path that exists."""
    parts = [p for p in entry.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." not in parts:
        for k in range(len(parts)):
            cand = root.joinpath(*parts[k:])
            if cand.is_file():
                return cand
    p = Path(entry)
    return p if p.is_absolute() and p.is_file() else None


def _darknet(root: Path, ctx: ReadContext) -> tuple[Items, list[str] | None, Path]:
    """CVAT's "YOLO 1.1" / darknet: ``obj.data`` (``train = data/train.txt``,
    ``names = data/obj.names``), list files of image paths, ``obj_<split>_data/`` folders."""
    keys: dict[str, str] = {}
    if (root / "obj.data").is_file():
        for line in _read_lines(root / "obj.data"):
            k, sep, v = line.partition("=")
            if sep:
                keys[k.strip()] = v.strip()
    names = None
    names_file = _locate(root, keys["names"]) if keys.get("names") else None
    names_file = names_file or (root / "obj.names" if (root / "obj.names").is_file() else None)
    if names_file is not None:
        names = _names_file(names_file)
    lists: dict[str, Path] = {}
    for split in ("train", "valid", "test"):
        listed = _locate(root, keys[split]) if keys.get(split) else None
        if listed is None and (root / f"{split}.txt").is_file():
            listed = root / f"{split}.txt"
        if listed is not None:
            lists[split] = listed
    out: Items = []
    if lists:
        for split, listed in lists.items():
            if ctx.split and not same_split(split, ctx.split):
                continue
            for lineno, line in enumerate(_read_lines(listed), 1):
                if not line.strip():
                    continue
                img = _locate(root, line.strip())
                if img is None:
                    ctx.fail(f"{listed}: line {lineno}: image {line.strip()!r} not found under "
                             f"{root}")
                    continue
                out.append((split, img))
    else:
        for d in sorted(root.glob("obj_*_data")):
            split = d.name[len("obj_"):-len("_data")]
            if d.is_dir() and (not ctx.split or same_split(split, ctx.split)):
                out.extend((split, p) for p in list_images(d))
    if ctx.split and not out:
        raise DatasetError(f"{root}: split {ctx.split!r} not found",
                           hint=f"splits found: {', '.join(lists) or 'none'}")
    return out, names, root


def find_items(path: Path, ctx: ReadContext) -> tuple[Items, list[str] | None, Path]:
    """The images of the YOLO dataset at ``path`` with their split, the class names when the
    dataset names them, and the dataset folder (label paths in messages are relative to it)."""
    yml = find_yaml(path)
    if yml is not None:
        return _from_yaml(yml, ctx)
    root = path
    if (root / "obj.data").is_file() or (root / "obj.names").is_file():
        return _darknet(root, ctx)
    names = None
    for fname in ("classes.txt", "labels.txt"):
        if (root / fname).is_file():
            names = _names_file(root / fname)
            break
    if not (root / "images").is_dir():
        split_dirs = [d for d in sorted(root.iterdir()) if (d / "images").is_dir()] \
            if root.is_dir() else []
        if split_dirs:  # Roboflow folders: train/images, valid/images ...
            if ctx.split:
                split_dirs = [d for d in split_dirs if same_split(d.name, ctx.split)]
                if not split_dirs:
                    raise DatasetError(f"{root}: split {ctx.split!r} not found")
            return ([(d.name, p) for d in split_dirs for p in list_images(d / "images")],
                    names, root)
        if root.is_dir() and names is not None and any(_images_in(root)):  # LabelImg
            if ctx.split:
                raise DatasetError(f"{root}: split {ctx.split!r} not found (a flat folder of "
                                   "images has no splits)")
            return [(None, root / n) for n in sorted(_images_in(root))], names, root
        raise DatasetError(f"{path}: not a YOLO dataset (no data.yaml and no images/ folder)")
    subdirs = sorted(p for p in (root / "images").iterdir() if p.is_dir())
    if ctx.split:
        subdirs = [p for p in subdirs if same_split(p.name, ctx.split)]
        if not subdirs:
            raise DatasetError(f"{root / 'images'}: split {ctx.split!r} not found")
    if subdirs:
        return [(d.name, p) for d in subdirs for p in list_images(d)], names, root
    return [(None, p) for p in list_images(root / "images")], names, root


class LabelFinder:
    """The label file of each image (see the module docstring for the rules), remembering
    the images without one and the folders looked in for them."""

    def __init__(self, base: Path | str | None = None) -> None:
        # the Ultralytics rule looks for an images/ folder inside the dataset folder only
        self._base = os.fspath(base) if base is not None else ""
        self._files = FileIndex()
        self._dirs: dict[str, list[str]] = {}
        self.missing: list[str] = []
        # folders looked in for the missing, in order: True for the images' own folder
        self.looked: dict[str, bool] = {}

    def candidates(self, image_dir: str) -> list[str]:
        """The folders that may hold the label files of the images in ``image_dir``."""
        dirs = self._dirs.get(image_dir)
        if dirs is None:
            dirs = []
            sa = f"{os.sep}images{os.sep}"
            s = image_dir + os.sep
            inside = bool(self._base) and s.startswith(self._base.rstrip(os.sep) + os.sep)
            cut = len(self._base.rstrip(os.sep)) if inside else 0
            if sa in s[cut:]:
                head, tail = s.rsplit(sa, 1)
                first, _, rest = tail.partition(os.sep)
                alts = [first] + [n for n in VAL_SPLIT_NAMES
                                  if first in VAL_SPLIT_NAMES and n != first]
                dirs = [os.path.join(head, "labels", a, rest).rstrip(os.sep) for a in alts]
            dirs.append(image_dir)
            self._dirs[image_dir] = dirs
        return dirs

    def find(self, image: Path | str) -> str | None:
        """The label file of ``image``, or None (then it is counted as missing)."""
        image_dir, name = os.path.split(os.fspath(image))
        label = os.path.splitext(name)[0] + ".txt"
        dirs = self.candidates(image_dir)
        for d in dirs:
            if label in self._files.names(d):
                return os.path.join(d, label)
        self.missing.append(os.fspath(image))
        for d in dirs:
            self.looked.setdefault(d, d == image_dir)
        return None

    def report(self, total: int, base: Path) -> str:
        """``"3 of 120 images have no label file (looked in: ...)"``."""
        def rel(d: str) -> str:
            try:
                r = Path(d).relative_to(base).as_posix()
            except ValueError:
                r = d
            return r if r != "." else "the dataset folder"

        shown = [rel(d) + (" (beside the images)" if beside else "")
                 for d, beside in list(self.looked.items())[:6]]
        more = f" and {len(self.looked) - 6} more folders" if len(self.looked) > 6 else ""
        return (f"{len(self.missing)} of {total} images have no label file (looked in: "
                f"{', '.join(shown)}{more}), e.g. {self.missing[0]}")


__all__ = ["find_items", "find_yaml", "is_yolo_folder", "LabelFinder", "SPLITS",
           "same_split", "load_yaml", "yaml_names", "list_images"]
