"""The in-memory multipart reader against two independent sides: httpx writes the bodies,
and Starlette's parser (python-multipart) reads them too; all three must agree."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")

from danlu.serve.multipart import MultipartError, parse_form  # noqa: E402

_names = st.text(st.characters(min_codepoint=48, max_codepoint=122,
                               exclude_characters='\\"'), min_size=1, max_size=12)
_tricky = st.sampled_from([b"", b"\r\n", b"--", b"\r\n--", b"\r\n\r\n", b"\xff\xd8\xff"])
_payload = st.lists(st.one_of(st.binary(max_size=300), _tricky), max_size=6).map(b"".join)


def _encode(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    req = httpx.Request("POST", "http://x/", data=fields,
                        files=[(n, (fn, data, "application/octet-stream"))
                               for n, fn, data in files])
    return req.read(), req.headers["content-type"]


def _starlette(body: bytes, ctype: str):
    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartParser

    async def stream():
        yield body

    async def go():
        form = await MultiPartParser(Headers({"content-type": ctype}), stream(),
                                     max_files=1000, max_fields=1000).parse()
        out_fields, out_files = {}, []
        for k, v in form.multi_items():
            if isinstance(v, str):
                out_fields.setdefault(k, v)
            else:
                out_files.append((k, v.filename, await v.read()))
        return out_fields, out_files

    return asyncio.run(go())


@settings(max_examples=60, deadline=None)
@given(fields=st.dictionaries(_names, st.text(max_size=40), max_size=4),
       files=st.lists(st.tuples(_names, _names, _payload), min_size=1, max_size=4))
def test_agrees_with_httpx_and_starlette(fields, files):
    body, ctype = _encode(fields, files)
    form = parse_form(body, ctype)
    got_files = [(f.name, f.filename, f.data) for f in form.files]
    assert form.fields == fields
    assert got_files == files
    ref_fields, ref_files = _starlette(body, ctype)
    assert ref_fields == form.fields and ref_files == got_files


@pytest.mark.parametrize("body, ctype", [
    (b"no boundary here", "multipart/form-data; boundary=abc"),
    (b"--abc\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno end",
     "multipart/form-data; boundary=abc"),
    (b"--abc\r\nno-colon-header\r\n\r\nx\r\n--abc--", "multipart/form-data; boundary=abc"),
    (b"--abc\r\nContent-Disposition: attachment\r\n\r\nx\r\n--abc--",
     "multipart/form-data; boundary=abc"),
    (b"--abc--", "multipart/form-data"),
    (b"--abc--", "text/plain; boundary=abc"),
])
def test_refuses_what_it_cannot_read(body, ctype):
    with pytest.raises(MultipartError):
        parse_form(body, ctype)


def test_quoted_boundary_preamble_and_epilogue():
    body = (b"preamble\r\n--a b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x;y.jpg\""
            b"\r\n\r\nDATA\r\n--a b--\r\nepilogue")
    form = parse_form(body, 'multipart/form-data; boundary="a b"')
    assert [(f.name, f.filename, f.data) for f in form.files] == [("f", "x;y.jpg", b"DATA")]


def test_part_limit():
    body, ctype = _encode({}, [("f", "a", b"1")] * 5)
    with pytest.raises(MultipartError, match="more than 3"):
        parse_form(body, ctype, max_parts=3)
