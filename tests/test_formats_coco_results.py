"""COCO results files read into columns: the numba scanner, the piecewise orjson reader and the
item-by-item checks must all give what a plain ``orjson.loads`` + Python conversion gives."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from danlu.data.formats import coco_results
from danlu.data.formats._common import ReadContext
from danlu.data.formats.coco_results import read_results
from danlu.errors import DatasetError


def reference(data: bytes, skip: bool = False) -> dict | None:
    """The oracle: orjson, then the documented checks in plain Python (None: an error)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, list):
        return None
    keys: dict[str, int] = {}
    rows = []
    for i, r in enumerate(doc):
        ok = isinstance(r, dict)
        if ok:
            iid, cid, b, sc = r.get("image_id"), r.get("category_id"), r.get("bbox"), \
                r.get("score", 1.0)
            num = (int, float)
            ok = (isinstance(iid, (int, str, float)) and not isinstance(iid, bool)
                  and type(cid) is int and isinstance(b, list) and len(b) == 4
                  and all(isinstance(v, num) and not isinstance(v, bool) for v in b)
                  and b[2] >= 0 and b[3] >= 0
                  and isinstance(sc, num) and not isinstance(sc, bool))
        if not ok:
            if not skip:
                return None
            continue
        rows.append((i, keys.setdefault(str(iid), len(keys)), cid,
                     [float(v) for v in b], float(sc)))
    return {"keys": list(keys), "key_index": [r[1] for r in rows],
            "category": [r[2] for r in rows], "bbox": [r[3] for r in rows],
            "score": [r[4] for r in rows], "position": [r[0] for r in rows]}


def columns(path: Path, skip: bool = False) -> dict | None:
    try:
        c = read_results(path, ReadContext(skip_invalid=skip))
    except DatasetError:
        return None
    pos = list(range(len(c))) if c.position is None else c.position.tolist()
    return {"keys": c.keys, "key_index": c.key_index.tolist(), "category": c.category.tolist(),
            "bbox": c.bbox.reshape(-1, 4).tolist(), "score": c.score.tolist(), "position": pos}


def same(a: dict | None, b: dict | None) -> bool:
    """Equal, floats compared bit for bit (so -0.0 differs from 0.0)."""
    if a is None or b is None:
        return a is b
    return orjson.dumps(_bits(a)) == orjson.dumps(_bits(b))


def _bits(v: object) -> object:
    if isinstance(v, float):
        return np.float64(v).view(np.int64).item()
    if isinstance(v, dict):
        return {k: _bits(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_bits(x) for x in v]
    return v


numbers = st.one_of(
    st.integers(-10**6, 10**6), st.integers(-10**25, 10**25),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(0, 1000).map(lambda x: round(x, 3)),
    st.floats(0, 1).map(lambda x: float(np.float32(x))),
    st.sampled_from([0.0, -0.0, 1e-7, 1e22, 1e23, 123456789012345678.0, 5e-324]))
ids = st.one_of(st.integers(-10**18, 10**18), st.text("ab1 _", max_size=4),
                st.integers(10**19, 10**20))
sizes = st.floats(0, 500)


@st.composite
def result(draw: st.DrawFn) -> dict:
    r = {"image_id": draw(ids), "category_id": draw(st.integers(-3, 100)),
         "bbox": [draw(numbers), draw(numbers), draw(sizes), draw(sizes)]}
    if draw(st.booleans()):
        r["score"] = draw(numbers)
    if draw(st.integers(0, 4)) == 0:  # an extra member the reader skips
        r[draw(st.sampled_from(["id", "area", "segmentation", "x"]))] = draw(st.one_of(
            numbers, st.text("xy", max_size=3), st.lists(numbers, max_size=3)))
    if draw(st.integers(0, 20)) == 0:  # something the checks reject
        r[draw(st.sampled_from(["bbox", "category_id", "score", "image_id"]))] = draw(
            st.sampled_from([None, True, "3", [1, 2], 1.5, {"a": 1}]))
    return r


def dump(doc: list, style: int) -> bytes:
    if style == 0:
        try:
            return orjson.dumps(doc)
        except TypeError:  # an integer beyond 64 bits
            return json.dumps(doc, separators=(",", ":")).encode()
    if style == 1:
        return json.dumps(doc).encode()
    return json.dumps(doc, indent=1 + style % 3).encode() + b"\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(doc=st.lists(result(), max_size=30), style=st.integers(0, 4), skip=st.booleans())
def test_columns_match_the_oracle(tmp_path: Path, doc: list, style: int, skip: bool) -> None:
    f = tmp_path / "r.json"
    data = dump(doc, style)
    f.write_bytes(data)
    assert same(columns(f, skip), reference(data, skip))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(doc=st.lists(result(), min_size=1, max_size=40), style=st.integers(0, 4))
def test_small_blocks_and_pieces(tmp_path: Path, doc: list, style: int,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Blocks of 64 bytes and pieces of 100: objects cross block ends, files need many pieces.
    monkeypatch.setattr(coco_results, "_BLOCK", 64)
    monkeypatch.setattr(coco_results, "_LONGEST_OBJECT", 32)
    monkeypatch.setattr(coco_results, "_PIECE", 100)
    f = tmp_path / "r.json"
    data = dump(doc, style)
    f.write_bytes(data)
    assert same(columns(f, True), reference(data, True))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(doc=st.lists(result(), min_size=1, max_size=8),
       cuts=st.lists(st.tuples(st.integers(0, 10**6), st.binary(max_size=3)), max_size=3))
def test_mutated_files(tmp_path: Path, doc: list, cuts: list) -> None:
    data = bytearray(dump(doc, 0))
    for pos, chunk in cuts:
        p = pos % (len(data) + 1)
        data[p:p + len(chunk)] = chunk
    f = tmp_path / "r.json"
    f.write_bytes(bytes(data))
    assert same(columns(f, True), reference(bytes(data), True))


def test_numbers_round_like_python() -> None:
    from danlu.data.formats._results_scan import _number

    rng = np.random.default_rng(0)
    texts = [repr(float(v)) for v in rng.normal(0, 1e3, 3000)]
    texts += [f"{v:.{k}f}" for v, k in zip(rng.uniform(0, 700, 3000), rng.integers(0, 9, 3000),
                                             strict=True)]
    texts += [f"{v:.{k}e}" for v, k in zip(rng.normal(0, 1, 500) * 10.0 ** rng.integers(
        -30, 30, 500), rng.integers(0, 17, 500), strict=True)]
    texts += [repr(float(np.float32(v))) for v in rng.random(3000)]
    texts += ["0", "-0", "-0.0", "0.5", "1E5", "1e+5", "12345678901234567890", "9007199254740993",
              "4.9e-324", "1e-400", "1.7976931348623157e308"]
    for t in texts:
        buf = np.frombuffer(t.encode() + b",", np.uint8)
        end, value, exact, is_int, _ = _number(buf, 0)
        assert end == len(t), t
        if exact:
            want = float(int(t)) if is_int else float(t)
            assert math.copysign(1, value) == math.copysign(1, want) and value == want, t


@pytest.mark.parametrize("bad", ["01", "1.", ".5", "+1", "-", "1e", "--1", "1.e3"])
def test_numbers_follow_json_grammar(bad: str) -> None:
    from danlu.data.formats._results_scan import _number

    end = _number(np.frombuffer(bad.encode() + b",", np.uint8), 0)[0]
    assert end != len(bad)


def test_a_bad_cut_reports_each_skipped_item_once(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # The scanner gives up (a null); a string holding "}," cuts a piece in the wrong place.
    monkeypatch.setattr(coco_results, "_PIECE", 10)
    doc = [{"image_id": 1, "category_id": 1, "bbox": [1, 2], "score": None},
           {"image_id": "a},b", "category_id": 1, "bbox": [0, 0, 1, 1]},
           {"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]
    f = tmp_path / "r.json"
    f.write_bytes(orjson.dumps(doc))
    ctx = ReadContext(skip_invalid=True)
    c = read_results(f, ctx)
    assert c.keys == ["a},b", "2"] and len(ctx.warnings) == 1
    assert "[0].bbox" in ctx.warnings[0]
