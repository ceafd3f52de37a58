"""COCO *results* files, read into columns: a JSON list of ``{"image_id", "category_id",
"bbox": [x, y, w, h], "score"}``, hundreds of thousands of them; a result may name its image
by ``"file_name"`` (its path or file name) instead of, or beside, ``image_id`` (then every
result must, and the images are paired by name: :mod:`danlu.data.formats.pairing`).

Parsing the whole list at once makes one Python dict, list and several numbers per detection
(about half a kilobyte each: 200 MB for COCO's 450k). A file of the common shape is read by
a numba scanner straight into the columns, a few MB of bytes at a time
(:mod:`danlu.data.formats._results_scan`). Any other file (one with ``file_name`` too) is
parsed in pieces of about 1 MB: the bytes are cut after a ``},`` and each piece, wrapped in
``[`` ``]``, parsed by orjson and turned into numpy columns before the next one. A cut
inside a string or a nested object leaves a piece that is not valid JSON (an open string or
bracket), so when every piece parses the cuts were between elements and the pieces hold
exactly the list's elements; when one does not, the whole file is parsed at once instead
(and a malformed file is reported with its line and column).

A piece whose elements are all plainly valid (objects; ``image_id`` an integer or a string,
or a non-empty ``file_name`` string in every one; ``category_id`` an integer, ``bbox`` 4
numbers with ``w, h >= 0``, ``score`` a number or absent, meaning 1.0) becomes columns by a
few vectorised steps; any other piece goes through :func:`parse_results`, item by item,
which names the bad ones by their index in the file (``[i].bbox: ...``). The columns are the
same either way.

Example:
    >>> import tempfile, pathlib
    >>> from danlu.data.formats._common import ReadContext
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "r.json"
    >>> _ = f.write_text('[{"image_id": 5, "category_id": 1, "bbox": [1, 2, 10, 20], '
    ...                  '"score": 0.5}, {"image_id": "x", "category_id": 2, '
    ...                  '"bbox": [0, 0, 1, 1]}]')
    >>> cols = read_results(f, ReadContext())
    >>> cols.keys, cols.key_index.tolist(), cols.bbox.tolist()[0], cols.score.tolist()
    (['5', 'x'], [0, 1], [1.0, 2.0, 10.0, 20.0], [0.5, 1.0])
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from operator import itemgetter, methodcaller
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from danlu.data.formats._common import ReadContext, make_detections
from danlu.data.formats.coco import category_ids, load_json
from danlu.data.formats.pairing import PredictedImages, pair_images
from danlu.errors import DatasetError
from danlu.structures import Dataset

_PIECE = 1 << 20  # bytes per parsed piece: ~10k detections, ~5 MB of Python objects at once
_BLOCK = 4 << 20  # bytes per block the scanner reads
_LONGEST_OBJECT = 256 << 10  # a longer object sends the file to the general reader
# A piece holding one of these literals takes the checking path: orjson gives bools for them,
# which numpy would silently turn into numbers.
_LITERALS = (b"true", b"false", b"null")


@dataclass
class ResultColumns:
    """The rows of a results file that passed the checks, in file order.

    ``keys`` are the distinct image ids as strings (``str(image_id)``, or the ``file_name``
    when ``named``; in order of first appearance) and ``key_index[i]`` the one of row ``i``;
    ``integer[k]`` is True when key ``k`` was an integer ``image_id`` in every row naming it;
    ``position[i]`` is the row's index in the JSON list (rows skipped with ``skip_invalid``
    leave gaps), None when row ``i`` is item ``i`` (nothing skipped).
    """

    keys: list[str]
    key_index: np.ndarray  # [N] int64
    category: np.ndarray  # [N] int64
    bbox: np.ndarray  # [N, 4] float64 xywh, as in the file
    score: np.ndarray  # [N] float64
    position: np.ndarray | None  # [N] int64
    integer: np.ndarray | None = None  # [len(keys)] bool; None: every key an integer id
    named: bool = False  # the keys are file names (every result has a file_name)

    def image_keys(self) -> list[Any]:
        """The keys to pair images by: ``int`` for integer ids, ``str`` otherwise."""
        if self.named:
            return list(self.keys)
        flags = self.integer.tolist() if self.integer is not None else [True] * len(self.keys)
        return [int(k) if f else k for k, f in zip(self.keys, flags, strict=True)]

    def __len__(self) -> int:
        return len(self.category)


def _is_num(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _hashable(v: Any) -> bool:
    return isinstance(v, (int, str, float)) and not isinstance(v, bool)


def parse_results(doc: Any, src: str, ctx: ReadContext, *, offset: int = 0
                  ) -> list[tuple[Any, int, list, float]]:
    """Check a COCO results list item by item: ``(image_id, category_id, [x, y, w, h],
    score)`` for each valid one (``score`` 1.0 when absent; the ``file_name`` instead of the
    ``image_id`` when it has one); a bad one is named ``[offset + i]`` and raises, or is
    skipped with ``ctx.skip_invalid``."""
    if not isinstance(doc, list):
        raise DatasetError(f"{src}: expected a JSON list of results, got {type(doc).__name__}")
    return [row[1:5] for row in _check_rows(doc, src, ctx, offset)]


def _check_rows(doc: list, src: str, ctx: ReadContext, offset: int
                ) -> list[tuple[int, Any, int, list, float, bool]]:
    """:func:`parse_results` with each valid row's index in the file first and whether it
    named its image by ``file_name`` last."""
    out = []
    for i, r in enumerate(doc, offset):
        loc = f"{src}: [{i}]"
        if not isinstance(r, dict):
            ctx.fail(f"{loc}: expected an object")
            continue
        b, sc, cid = r.get("bbox"), r.get("score", 1.0), r.get("category_id")
        named = "file_name" in r
        key = r["file_name"] if named else r.get("image_id")
        if named and not (isinstance(key, str) and key.strip()):
            ctx.fail(f"{loc}.file_name: expected the image's file name, got {key!r}"[:300])
            continue
        if not _hashable(key) or not isinstance(cid, int) or isinstance(cid, bool):
            ctx.fail(f"{loc}: expected image_id and an integer category_id")
            continue
        if not (isinstance(b, list) and len(b) == 4 and all(_is_num(v) for v in b)):
            ctx.fail(f"{loc}.bbox: expected 4 numbers (x, y, width, height), got {b!r}"[:300])
            continue
        if b[2] < 0 or b[3] < 0:
            ctx.fail(f"{loc}.bbox: negative width or height {b!r}")
            continue
        if not _is_num(sc):
            ctx.fail(f"{loc}.score: expected a number, got {sc!r}")
            continue
        out.append((i, key, cid, b, float(sc), named))
    return out


@dataclass
class _Piece:
    """The columns of one parsed piece; ``ids`` an int64 array or a list of strings;
    ``integer`` (per row) whether the id was an integer (None: all were), ``named`` (per
    row) whether it was a ``file_name`` (None: none was)."""

    ids: Any
    category: np.ndarray
    bbox: np.ndarray
    score: np.ndarray
    position: np.ndarray
    integer: np.ndarray | None = None
    named: np.ndarray | None = None


def _fast_piece(items: list, start: int) -> _Piece | None:
    """Columns of a piece whose items are all plainly valid, else None (check them one by
    one). ``items`` holds no booleans or nulls (see ``_LITERALS``)."""
    n = len(items)
    try:
        if any(type(r) is not dict for r in items):
            return None
        named = sum("file_name" in r for r in items)
        if named and named != n:
            return None
        ids = list(map(itemgetter("file_name" if named else "image_id"), items))
        if named and any(type(i) is not str or not i.strip() for i in ids):
            return None
        cats = np.array(list(map(itemgetter("category_id"), items)))
        bbox = np.array(list(map(itemgetter("bbox"), items)))
        score = np.array(list(map(methodcaller("get", "score", 1.0), items)))
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if (cats.shape != (n,) or (n and cats.dtype.kind not in "iu")
            or bbox.shape != (n, 4) or (n and bbox.dtype.kind not in "iuf")
            or score.shape != (n,) or (n and score.dtype.kind not in "iuf")):
        return None
    bbox = bbox.astype(np.float64)
    if n and ((bbox[:, 2] < 0) | (bbox[:, 3] < 0)).any():
        return None
    types = set(map(type, ids))
    integer = None
    if types <= {int}:
        try:
            id_col: Any = np.array(ids, np.int64)
        except OverflowError:
            id_col = list(map(str, ids))
    elif types <= {int, str}:
        id_col = list(map(str, ids))
        integer = np.fromiter((type(i) is int for i in ids), bool, n)
    else:
        return None
    return _Piece(id_col, cats.astype(np.int64), bbox, score.astype(np.float64),
                  np.arange(start, start + n, dtype=np.int64), integer,
                  np.ones(n, bool) if named else None)


def _checked_piece(items: list, start: int, src: str, ctx: ReadContext) -> _Piece:
    """Columns of the valid items of a piece, each checked by :func:`parse_results`."""
    rows = _check_rows(items, src, ctx, start)
    return _Piece([str(r[1]) for r in rows], np.array([r[2] for r in rows], np.int64),
                  np.array([r[3] for r in rows], np.float64).reshape(-1, 4),
                  np.array([r[4] for r in rows], np.float64),
                  np.array([r[0] for r in rows], np.int64),
                  np.array([type(r[1]) is int and not r[5] for r in rows], bool),
                  np.array([r[5] for r in rows], bool))


def _cuts(data: bytes) -> list[tuple[int, int]] | None:
    """``(start, end)`` byte ranges of the list's pieces (without the separating commas), or
    None when ``data`` is not ``[`` ... ``]`` around its whitespace."""
    lo, hi = 0, len(data)
    while lo < hi and data[lo] in b" \t\r\n":
        lo += 1
    while hi > lo and data[hi - 1] in b" \t\r\n":
        hi -= 1
    if hi - lo < 2 or data[lo] != 0x5B or data[hi - 1] != 0x5D:  # "[" and "]"
        return None
    lo, hi = lo + 1, hi - 1
    if not data[lo:hi].strip():
        return []
    out = []
    while lo < hi:
        cut = data.find(b"},", min(lo + _PIECE, hi), hi)
        end = hi if cut < 0 else cut + 1
        out.append((lo, end))
        lo = end + 1
    return out


def _parse_pieces(data: bytes, cuts: list[tuple[int, int]], src: str, ctx: ReadContext
                  ) -> list[_Piece] | None:
    """Every piece as columns, or None when a piece is not valid JSON."""
    pieces: list[_Piece] = []
    start = 0
    for lo, hi in cuts:
        chunk = data[lo:hi]
        try:
            items = orjson.loads(b"[" + chunk + b"]")
        except orjson.JSONDecodeError:
            return None
        literal = any(word in chunk for word in _LITERALS)
        piece = None if literal else _fast_piece(items, start)
        pieces.append(piece if piece is not None else _checked_piece(items, start, src, ctx))
        start += len(items)
    return pieces


def read_results(path: str | Path, ctx: ReadContext) -> ResultColumns:
    """Read a COCO results file into :class:`ResultColumns` (see the module docstring).

    Raises:
        DatasetError: the file cannot be read, is not valid JSON (line and column named), is
            not a list, or holds a bad item (its index named; skipped with
            ``ctx.skip_invalid``).
    """
    path = Path(path)
    src = str(path)
    try:
        fast = _scanned(path)
        if fast is not None:
            return fast
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from e
    cuts = _cuts(data)
    noted = len(ctx.warnings)
    pieces = None if cuts is None else _parse_pieces(data, cuts, src, ctx)
    if pieces is None:  # not a plain list, or cut badly: parse it whole (errors named there)
        del ctx.warnings[noted:]  # the pieces' warnings come again from the whole

        doc = load_json(path)
        del data
        if not isinstance(doc, list):
            raise DatasetError(f"{src}: expected a JSON list of results, got "
                               f"{type(doc).__name__}")
        pieces = [_checked_piece(doc, 0, src, ctx)]
    return _join(pieces, src)


def _scanned(path: Path) -> ResultColumns | None:
    """The columns by the numba scanner (:mod:`._results_scan`), reading the file in blocks
    of a few MB, or None when the file is outside the subset it reads (or holds a number
    that is not finite)."""
    from danlu.data.formats import _results_scan as scan

    cap = path.stat().st_size // scan.MIN_OBJECT + 1
    # Allocated for the most objects the file can hold; only the pages written are used.
    ids, category = np.empty(cap, np.int64), np.empty(cap, np.int64)
    bbox, score = np.empty((cap, 4)), np.empty(cap)
    names: dict[int, str] = {}
    state, rows, carry = scan.BEFORE_LIST, 0, b""
    with open(path, "rb") as f:
        while True:
            block = f.read(_BLOCK)
            final = len(block) < _BLOCK
            buf = carry + block if carry else block
            limit = len(buf) if final else max(len(buf) - _LONGEST_OBJECT, 0)
            outcome, pos, state, rows, strings, hard = scan.scan_block(
                np.frombuffer(buf, np.uint8), limit, final, state, rows, ids, category, bbox,
                score)
            if outcome == scan.GAVE_UP or not _resolve(buf, hard, strings, bbox, score, names):
                return None
            if outcome == scan.FINISHED:
                break
            carry = buf[pos:]
    bbox, score = bbox[:rows], score[:rows]
    integer = None
    if names:
        keys, key_index = _string_keys([names[r] if r in names else str(v)
                                        for r, v in enumerate(ids[:rows].tolist())])
        is_int = np.ones(rows, bool)
        is_int[list(names)] = False
        integer = _per_key(is_int, key_index, len(keys))
    else:
        keys, key_index = _integer_keys(ids[:rows])
    return ResultColumns(keys, key_index, category[:rows], bbox, score, None, integer)


def _resolve(buf: bytes, hard: np.ndarray, strings: np.ndarray, bbox: np.ndarray,
             score: np.ndarray, names: dict[int, str]) -> bool:
    """Fill in a block's hard numbers (by Python's ``float``) and string image ids; False
    when a number is not finite or makes a box side negative."""
    from danlu.data.formats._results_scan import SCORE_COLUMN

    for row, col, lo, hi in hard.tolist():
        value = float(buf[lo:hi])
        if not np.isfinite(value) or (col in (2, 3) and value < 0):
            return False
        if col == SCORE_COLUMN:
            score[row] = value
        else:
            bbox[row, col] = value
    for row, lo, hi in strings.tolist():
        names[row] = buf[lo:hi].decode("ascii")
    return True


def _integer_keys(ids: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Distinct ids as strings, in order of first appearance, and each row's index in them."""
    if len(ids) and ids.min() >= 0 and ids.max() < 8 * len(ids) + (1 << 20):
        from danlu.data.formats._results_scan import first_appearance

        distinct, index = first_appearance(ids, 0, int(ids.max()))
        return [str(k) for k in distinct.tolist()], index
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return [str(k) for k in uniq[order].tolist()], rank[inverse.reshape(-1)]


def _string_keys(names: list[str]) -> tuple[list[str], np.ndarray]:
    """:func:`_integer_keys` for string ids."""
    index: dict[str, int] = {}
    key_index = np.fromiter((index.setdefault(k, len(index)) for k in names), np.int64,
                            len(names))
    return list(index), key_index


def _per_key(row_flag: np.ndarray, key_index: np.ndarray, num_keys: int) -> np.ndarray:
    """For each key, whether ``row_flag`` holds for every row of it."""
    return np.bincount(key_index, weights=~row_flag, minlength=num_keys) == 0


def _join(pieces: list[_Piece], src: str) -> ResultColumns:
    """One set of columns; the image ids become indices into their distinct strings.

    Raises:
        DatasetError: some results name their image by ``file_name`` and others do not.
    """
    if pieces and all(isinstance(p.ids, np.ndarray) for p in pieces):
        keys, key_index = _integer_keys(np.concatenate([p.ids for p in pieces]))
    else:
        keys, key_index = _string_keys([k for p in pieces for k in (
            map(str, p.ids.tolist()) if isinstance(p.ids, np.ndarray) else p.ids)])

    def cat(name: str, empty: np.ndarray) -> np.ndarray:
        parts = [getattr(p, name) for p in pieces]
        return np.concatenate(parts) if parts else empty

    def flags(name: str, default: bool) -> np.ndarray:
        parts = [getattr(p, name) if getattr(p, name) is not None
                 else np.full(len(p.category), default) for p in pieces]
        return np.concatenate(parts) if parts else np.zeros(0, bool)

    named = flags("named", False)
    position = cat("position", np.zeros(0, np.int64))
    if named.any() and not named.all():
        odd = int(position[np.argmin(named) if named[0] else np.argmax(named)])
        raise DatasetError(f"{src}: [{odd}]: some results name their image by file_name and "
                           "others by image_id only: pairing them would be a guess",
                           hint="give every result a file_name, or none")
    integer = None
    if any(p.integer is not None for p in pieces) or named.any():
        integer = _per_key(flags("integer", True) & ~named, key_index, len(keys))
    return ResultColumns(keys, key_index, cat("category", np.zeros(0, np.int64)),
                         cat("bbox", np.zeros((0, 4))), cat("score", np.zeros(0)), position,
                         integer, bool(len(named)) and bool(named.all()))


# -- per image -----------------------------------------------------------------------------
def results_by_image(p: Path, gt: Dataset, ctx: ReadContext,
                     cols: ResultColumns | None = None) -> PredictedImages:
    """A COCO results file, one ``Detections`` per image (file order kept within an image),
    paired with ``gt``'s samples (:func:`~danlu.data.formats.pairing.pair_images`: by
    ``file_name`` when the results have one, else by ``image_id``) and built from its columns
    (:func:`read_results`, or ``cols`` already read): no object per detection. Each also
    keeps the file's float64 ``[x, y, w, h]`` in ``extra["coco_bbox"]``. Classes are mapped
    by category id (``gt.meta["coco_category_ids"]``, else 1..K); an unknown one is an error
    (skipped with ``ctx.skip_invalid``)."""
    if cols is None:
        cols = read_results(p, ctx)
    cids = category_ids(gt)
    label = _category_labels(cols.category, cids)
    ok = label >= 0
    sizes = np.bincount(cols.key_index[ok], minlength=len(cols.keys))
    keys = cols.image_keys()
    pairing = pair_images(keys, "name" if cols.named else "id", gt, str(p), ctx,
                          nonempty=(sizes > 0).tolist())
    for i in np.flatnonzero(~ok).tolist():
        where = i if cols.position is None else int(cols.position[i])
        ctx.fail(f"{p}: [{where}].category_id: unknown category id "
                 f"{int(cols.category[i])} (known: {cids[:20]})")
    key_index, bbox, score = cols.key_index, cols.bbox, cols.score
    del cols  # the columns are copied once, in image order, below
    if not ok.all():
        key_index, label, bbox, score = key_index[ok], label[ok], bbox[ok], score[ok]
    # Image by image, the images in the order of the samples they go to (so that the
    # evaluation can read the columns in sample order without copying them); a file written
    # in that order is taken as it is. Images paired with no sample come after, in order.
    block = np.asarray(pairing.index, np.int64).reshape(-1)
    block = np.where(block >= 0, block, len(gt) + np.arange(len(keys)))
    row_block = block[key_index]
    del key_index
    if len(row_block) > 1 and (row_block[1:] < row_block[:-1]).any():
        order = np.argsort(row_block, kind="stable")
        bbox, label, score = bbox.take(order, axis=0), label.take(order), score.take(order)
        del order
    del row_block
    labels, scores = label, score.astype(np.float32)
    del label, score
    by_block = np.argsort(block, kind="stable")
    starts = np.empty(len(keys), np.int64)
    starts[by_block] = np.cumsum(sizes[by_block]) - sizes[by_block]
    xyxy = np.empty((len(bbox), 4), np.float32)
    xyxy[:, :2] = bbox[:, :2]
    np.add(bbox[:, :2], bbox[:, 2:], out=xyxy[:, 2:], casting="same_kind")
    spans = zip(starts.tolist(), (starts + sizes).tolist(), strict=True)
    dets = [make_detections(xyxy[a:b], labels[a:b], scores=scores[a:b],
                            extra={"coco_bbox": bbox[a:b]}) if b > a else None
            for a, b in spans]
    own = "coco_category_ids" in gt.meta and category_ids(gt) == gt.meta["coco_category_ids"]
    return PredictedImages(keys, dets, pairing.by, "id", pairing,
                           {"category_ids": "ground truth" if own else "1..K"})


def _category_labels(category: np.ndarray, cids: list[int]) -> np.ndarray:
    """The label of each COCO category id (its position in ``cids``), -1 for unknown ids."""
    ids = np.asarray(cids, np.int64)
    if not len(ids):
        return np.full(len(category), -1, np.int64)
    if ids.min() >= 0 and ids.max() < 1 << 20:  # a lookup table (with a slot for "unknown")
        table = np.full(int(ids.max()) + 2, -1, np.int64)
        table[ids] = np.arange(len(ids))
        outside = (category < 0) | (category > ids.max())
        return table[np.where(outside, len(table) - 1, category)]
    by_id = np.argsort(ids, kind="stable")
    pos = np.clip(np.searchsorted(ids[by_id], category), 0, len(ids) - 1)
    return np.where(ids[by_id][pos] == category, by_id[pos], -1).astype(np.int64)


__all__ = ["ResultColumns", "read_results", "parse_results", "results_by_image"]
