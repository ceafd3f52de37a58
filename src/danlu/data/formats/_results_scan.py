"""A numba scanner for the common shape of a COCO results file: straight from the bytes to
columns, with no Python object per detection.

The file is scanned block by block (a few MB at a time: the whole file is never in memory)
by :func:`scan_block`, which resumes where the previous block stopped. It accepts a subset
of JSON and gives up on anything else, leaving the file to the general reader
(:mod:`danlu.data.formats.coco_results`, orjson), which also names the errors. Accepted: a
top-level list of objects whose members are

* ``"image_id"``: an integer (at most 18 digits) or a string,
* ``"category_id"``: an integer (at most 18 digits),
* ``"bbox"``: a list of 4 numbers with ``w >= 0`` and ``h >= 0``,
* ``"score"``: a number (absent: 1.0),
* any other key but ``"file_name"``: a number, a string or a list of numbers (skipped),

each of the first three exactly once, the score at most once. Strings must be plain printable
ASCII (no escapes); numbers follow JSON's grammar strictly (no ``01``, ``1.``, ``.5``, ``+1``);
``true``, ``false``, ``null``, nested objects or lists, a ``"file_name"`` (the general reader
pairs such results by name), and anything after the closing ``]`` give up.

Numbers are converted exactly as a correctly rounded parser (orjson, Python's ``float``) does:
a decimal ``m * 10**e`` with ``m <= 2**53`` and ``|e| <= 22`` is one correctly rounded
multiplication or division of two exact doubles (Clinger's fast path); any other number is
recorded as "hard" (row, column, byte span) and converted afterwards by Python's ``float``. An
integer is a float of the same value (``-0`` is ``0.0``, as Python's ``float(int("-0"))``).
"""

from __future__ import annotations

import numba
import numpy as np

# Exact powers of ten as doubles (10**22 is the largest exact one).
_POW10 = np.array([10.0 ** k for k in range(23)])
_TWO53 = 1 << 53
_MAX_DIGITS = 18  # significant digits an int64 holds without overflow

# Byte values.
_SPACE, _TAB, _LF, _CR = 32, 9, 10, 13
_QUOTE, _BACKSLASH, _COMMA, _COLON = 34, 92, 44, 58
_LBRACKET, _RBRACKET, _LBRACE, _RBRACE = 91, 93, 123, 125
_MINUS, _PLUS, _DOT, _ZERO, _NINE, _E, _UPPER_E = 45, 43, 46, 48, 57, 101, 69

# The keys, as byte values.
_IMAGE_ID = np.frombuffer(b"image_id", np.uint8).copy()
_CATEGORY_ID = np.frombuffer(b"category_id", np.uint8).copy()
_BBOX = np.frombuffer(b"bbox", np.uint8).copy()
_SCORE = np.frombuffer(b"score", np.uint8).copy()
_FILE_NAME = np.frombuffer(b"file_name", np.uint8).copy()

#: Column codes of hard numbers: 0..3 the bbox's, 4 the score.
SCORE_COLUMN = 4
#: The smallest object the scanner accepts, ``{"image_id":0,"category_id":0,"bbox":[0,0,0,0]}``
#: (46 bytes): a file of ``size`` bytes holds at most ``size // MIN_OBJECT`` of them.
MIN_OBJECT = 46


@numba.njit(cache=True, nogil=True)
def _skip_ws(buf: np.ndarray, i: int) -> int:
    n = buf.shape[0]
    while i < n:
        c = buf[i]
        if c != _SPACE and c != _LF and c != _CR and c != _TAB:
            break
        i += 1
    return i


@numba.njit(cache=True, nogil=True)
def _string(buf: np.ndarray, i: int) -> int:
    """The index after the plain string starting at ``buf[i] == '"'``, -1 if not plain."""
    n = buf.shape[0]
    i += 1
    while i < n:
        c = buf[i]
        if c == _QUOTE:
            return i + 1
        if c == _BACKSLASH or c < 0x20 or c >= 0x7F:
            return -1
        i += 1
    return -1


@numba.njit(cache=True, nogil=True)
def _same(buf: np.ndarray, lo: int, hi: int, key: np.ndarray) -> bool:
    if hi - lo != key.shape[0]:
        return False
    for k in range(key.shape[0]):
        if buf[lo + k] != key[k]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _number(buf: np.ndarray, i: int) -> tuple[int, float, bool, bool, int]:
    """The JSON number at ``i``: ``(end, value, exact, is_integer, integer)``; ``end`` is -1
    when it is not a number. ``exact`` is False when the value needs a full parser;
    ``integer`` is its value when ``is_integer`` and it has at most 18 digits."""
    n = buf.shape[0]
    j = i
    negative = False
    if j < n and buf[j] == _MINUS:
        negative = True
        j += 1
    if j >= n or buf[j] < _ZERO or buf[j] > _NINE:
        return -1, 0.0, False, False, 0
    m = 0
    digits = 0  # significant digits in m
    frac = 0
    if buf[j] == _ZERO:
        j += 1
        if j < n and _ZERO <= buf[j] <= _NINE:
            return -1, 0.0, False, False, 0  # a leading zero
    else:
        while j < n and _ZERO <= buf[j] <= _NINE:
            if digits < _MAX_DIGITS:
                m = m * 10 + (buf[j] - _ZERO)
            if m > 0:
                digits += 1
            j += 1
    is_integer = True
    if j < n and buf[j] == _DOT:
        is_integer = False
        j += 1
        if j >= n or buf[j] < _ZERO or buf[j] > _NINE:
            return -1, 0.0, False, False, 0
        while j < n and _ZERO <= buf[j] <= _NINE:
            if digits < _MAX_DIGITS:
                m = m * 10 + (buf[j] - _ZERO)
                frac += 1
            if m > 0:
                digits += 1
            j += 1
    exponent = 0
    if j < n and (buf[j] == _E or buf[j] == _UPPER_E):
        is_integer = False
        j += 1
        sign = 1
        if j < n and (buf[j] == _PLUS or buf[j] == _MINUS):
            sign = -1 if buf[j] == _MINUS else 1
            j += 1
        if j >= n or buf[j] < _ZERO or buf[j] > _NINE:
            return -1, 0.0, False, False, 0
        while j < n and _ZERO <= buf[j] <= _NINE:
            if exponent < 100000:
                exponent = exponent * 10 + (buf[j] - _ZERO)
            j += 1
        exponent *= sign
    if digits > _MAX_DIGITS or m > _TWO53:
        return j, 0.0, False, is_integer, 0
    integer = -m if negative else m
    if m == 0:
        return j, (-0.0 if negative and not is_integer else 0.0), True, is_integer, 0
    e10 = exponent - frac
    if e10 == 0:
        value = float(m)
    elif 0 < e10 <= 22:
        value = float(m) * _POW10[e10]
    elif -22 <= e10 < 0:
        value = float(m) / _POW10[-e10]
    else:
        return j, 0.0, False, is_integer, integer
    return j, (-value if negative else value), True, is_integer, integer


@numba.njit(cache=True, nogil=True)
def _skip_value(buf: np.ndarray, i: int) -> int:
    """The index after a skipped member value (number, plain string, list of numbers); -1
    for anything else."""
    n = buf.shape[0]
    if i >= n:
        return -1
    c = buf[i]
    if c == _QUOTE:
        return _string(buf, i)
    if c != _LBRACKET:
        return _number(buf, i)[0]
    i = _skip_ws(buf, i + 1)
    if i < n and buf[i] == _RBRACKET:
        return i + 1
    while True:
        i = _number(buf, i)[0]
        if i < 0:
            return -1
        i = _skip_ws(buf, i)
        if i >= n:
            return -1
        if buf[i] == _RBRACKET:
            return i + 1
        if buf[i] != _COMMA:
            return -1
        i = _skip_ws(buf, i + 1)


# Where a block scan stands between two blocks.
BEFORE_LIST, FIRST, OBJECT, AFTER_OBJECT, DONE = 0, 1, 2, 3, 4
# How a block scan ended: it wants the next block, the list is complete, or it gave up.
MORE, FINISHED, GAVE_UP = 0, 1, 2


@numba.njit(cache=True, nogil=True)
def _member_number(buf: np.ndarray, i: int, r: int, col: int, bbox: np.ndarray,
                   score: np.ndarray, hard: np.ndarray, nh: int) -> tuple[int, int]:
    """The number at ``i`` into ``bbox[r, col]`` (``score[r]`` for the score column), a hard
    one recorded in ``hard[nh]`` as ``(column, start, end)``: ``(end, nh)``, end -1 if it is
    not a number."""
    end, value, exact, _, _ = _number(buf, i)
    if end < 0:
        return -1, nh
    if not exact:
        value = np.nan
        hard[nh, 0], hard[nh, 1], hard[nh, 2] = col, i, end
        nh += 1
    if col == SCORE_COLUMN:
        score[r] = value
    else:
        bbox[r, col] = value
    return end, nh


@numba.njit(cache=True, nogil=True)
def _bbox(buf: np.ndarray, i: int, r: int, bbox: np.ndarray, score: np.ndarray,
          hard: np.ndarray, nh: int) -> tuple[int, int]:
    """The list of 4 numbers at ``i`` into ``bbox[r]``: ``(end, nh)``, end -1 if it is not
    one (or a side is negative)."""
    n = buf.shape[0]
    if buf[i] != _LBRACKET:
        return -1, nh
    end = _skip_ws(buf, i + 1)
    for col in range(4):
        if col:
            if end >= n or buf[end] != _COMMA:
                return -1, nh
            end = _skip_ws(buf, end + 1)
        end, nh = _member_number(buf, end, r, col, bbox, score, hard, nh)
        if end < 0:
            return -1, nh
        end = _skip_ws(buf, end)
    if end >= n or buf[end] != _RBRACKET or bbox[r, 2] < 0.0 or bbox[r, 3] < 0.0:
        return -1, nh
    return end + 1, nh


@numba.njit(cache=True, nogil=True)
def _object(buf: np.ndarray, i: int, r: int, ids: np.ndarray, category: np.ndarray,
            bbox: np.ndarray, score: np.ndarray, hard: np.ndarray, span: np.ndarray
            ) -> tuple[int, int]:
    """The object at ``buf[i] == '{'`` into row ``r``: ``(end, hard numbers)``, end -1 when
    it is outside the accepted subset. A string image id leaves its span in ``span``
    (``span[0]`` -1 otherwise); hard numbers go to ``hard[:count]`` as ``(column, start,
    end)``."""
    n = buf.shape[0]
    nh = 0
    span[0] = -1
    seen_image = seen_category = seen_bbox = seen_score = False
    score[r] = 1.0
    i = _skip_ws(buf, i + 1)
    while True:  # members
        if i >= n or buf[i] != _QUOTE:
            return -1, nh
        key_end = _string(buf, i)
        if key_end < 0:
            return -1, nh
        k_lo, k_hi = i + 1, key_end - 1
        i = _skip_ws(buf, key_end)
        if i >= n or buf[i] != _COLON:
            return -1, nh
        i = _skip_ws(buf, i + 1)
        if i >= n:
            return -1, nh
        if _same(buf, k_lo, k_hi, _IMAGE_ID):
            if seen_image:
                return -1, nh
            seen_image = True
            if buf[i] == _QUOTE:
                end = _string(buf, i)
                ids[r], span[0], span[1] = 0, i + 1, end - 1
            else:
                end, _, exact, is_int, value = _number(buf, i)
                if not exact or not is_int:
                    return -1, nh
                ids[r] = value
        elif _same(buf, k_lo, k_hi, _CATEGORY_ID):
            if seen_category:
                return -1, nh
            seen_category = True
            end, _, exact, is_int, value = _number(buf, i)
            if not exact or not is_int:
                return -1, nh
            category[r] = value
        elif _same(buf, k_lo, k_hi, _BBOX):
            if seen_bbox:
                return -1, nh
            seen_bbox = True
            end, nh = _bbox(buf, i, r, bbox, score, hard, nh)
        elif _same(buf, k_lo, k_hi, _SCORE):
            if seen_score:
                return -1, nh
            seen_score = True
            end, nh = _member_number(buf, i, r, SCORE_COLUMN, bbox, score, hard, nh)
        elif _same(buf, k_lo, k_hi, _FILE_NAME):
            return -1, nh
        else:
            end = _skip_value(buf, i)
        if end < 0:
            return -1, nh
        i = _skip_ws(buf, end)
        if i < n and buf[i] == _COMMA:
            i = _skip_ws(buf, i + 1)
            continue
        if i < n and buf[i] == _RBRACE and seen_image and seen_category and seen_bbox:
            return i + 1, nh
        return -1, nh


@numba.njit(cache=True, nogil=True)
def scan_block(buf: np.ndarray, limit: int, final: bool, state: int, rows: int,
               ids: np.ndarray, category: np.ndarray, bbox: np.ndarray, score: np.ndarray):  # noqa: ANN201
    """Scan one block of the file (``buf``, uint8) into the columns from row ``rows`` on.

    ``state`` says where the previous block stopped (``BEFORE_LIST`` for the first one);
    objects are started only before byte ``limit`` unless ``final`` (the last block), so
    that none is cut by the block's end. Returns ``(outcome, pos, state, rows, strings,
    hard)``: ``outcome`` ``MORE`` (continue with ``buf[pos:]`` followed by the next block),
    ``FINISHED`` or ``GAVE_UP``; ``rows`` the rows filled so far; ``strings`` ``[S, 3]``
    int64 ``(row, start, end)``: the byte span of each string image id (``ids`` holds 0
    there); ``hard`` ``[H, 4]`` int64 ``(row, column, start, end)``: the numbers left to a
    full parser (their cells hold NaN). Spans are offsets into ``buf``.
    """
    n = buf.shape[0]
    cap = ids.shape[0]
    strings = np.empty((16, 3), np.int64)
    hard = np.empty((64, 4), np.int64)
    ns = nh = 0
    obj_hard = np.empty((5, 3), np.int64)
    span = np.empty(2, np.int64)
    i = 0
    while True:
        i = _skip_ws(buf, i)
        if i >= n:
            if not final:
                return MORE, i, state, rows, strings[:ns], hard[:nh]
            outcome = FINISHED if state == DONE else GAVE_UP
            return outcome, i, state, rows, strings[:ns], hard[:nh]
        c = buf[i]
        if state == BEFORE_LIST:
            if c != _LBRACKET:
                return GAVE_UP, i, state, rows, strings[:ns], hard[:nh]
            state, i = FIRST, i + 1
        elif state == AFTER_OBJECT:
            if c == _COMMA:
                state, i = OBJECT, i + 1
            elif c == _RBRACKET:
                state, i = DONE, i + 1
            else:
                return GAVE_UP, i, state, rows, strings[:ns], hard[:nh]
        elif state == DONE:
            return GAVE_UP, i, state, rows, strings[:ns], hard[:nh]
        elif state == FIRST and c == _RBRACKET:
            state, i = DONE, i + 1
        else:  # an object
            if i >= limit and not final:
                return MORE, i, state, rows, strings[:ns], hard[:nh]
            if c != _LBRACE or rows >= cap:
                return GAVE_UP, i, state, rows, strings[:ns], hard[:nh]
            end, count = _object(buf, i, rows, ids, category, bbox, score, obj_hard, span)
            if end < 0:
                return GAVE_UP, i, state, rows, strings[:ns], hard[:nh]
            if span[0] >= 0:
                if ns == strings.shape[0]:
                    strings = _grow(strings)
                strings[ns, 0], strings[ns, 1], strings[ns, 2] = rows, span[0], span[1]
                ns += 1
            for k in range(count):
                if nh == hard.shape[0]:
                    hard = _grow(hard)
                hard[nh, 0] = rows
                hard[nh, 1], hard[nh, 2], hard[nh, 3] = obj_hard[k, 0], obj_hard[k, 1], \
                    obj_hard[k, 2]
                nh += 1
            rows += 1
            state, i = AFTER_OBJECT, end


@numba.njit(cache=True, nogil=True)
def first_appearance(ids: np.ndarray, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of ``ids`` (all in ``[low, high]``) in order of first appearance,
    and each row's index among them: one pass with a table of ``high - low + 1`` slots."""
    slot = np.full(high - low + 1, -1, np.int64)
    index = np.empty(ids.shape[0], np.int64)
    distinct = np.empty(ids.shape[0], np.int64)
    count = 0
    for i in range(ids.shape[0]):
        k = ids[i] - low
        if slot[k] < 0:
            slot[k] = count
            distinct[count] = ids[i]
            count += 1
        index[i] = slot[k]
    return distinct[:count].copy(), index


@numba.njit(cache=True, nogil=True)
def _grow(a: np.ndarray) -> np.ndarray:
    out = np.empty((2 * a.shape[0], a.shape[1]), a.dtype)
    out[:a.shape[0]] = a
    return out


__all__ = ["scan_block", "first_appearance", "SCORE_COLUMN", "BEFORE_LIST", "MORE", "FINISHED",
           "GAVE_UP"]
