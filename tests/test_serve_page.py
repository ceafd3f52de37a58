"""The web page at ``/`` driven by a real browser against a real ``danlu serve``.

Why: the page's JavaScript (upload, drawing, client-side threshold, token prompt, error
display) is only exercised by a browser; the API tests never run it. Each check compares the
page with the API's own answer for the same image, so it holds whatever the tiny model finds.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

sync_api = pytest.importorskip("playwright.sync_api")

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from danlu.serve.launch import ServerProcess

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs a chromium executable")

#: what the page asks the server for; the slider filters these on the client
REQUEST_THRESHOLD = 0.05
TOKEN = "secret"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny trained model for every server in this module (training is the slow part)."""
    from _data_fixtures import train_tiny_checkpoint

    return train_tiny_checkpoint(tmp_path_factory.mktemp("serve_page_ckpt"))


@pytest.fixture(scope="module")
def image_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic shapes image as a PNG file, like a user's upload."""
    from PIL import Image

    from danlu.data.synth import synthesize

    ds = synthesize("shapes", num_images=1, image_size=(160, 120), seed=5,
                    scale_range=(16, 48), encode=False)
    path = tmp_path_factory.mktemp("serve_page_img") / "shapes.png"
    buf = io.BytesIO()
    Image.fromarray(ds[0].load_image()).save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def server(checkpoint: Path) -> Iterator[ServerProcess]:
    """One server (no token) shared by the tests that do not need their own options.

    Its default threshold is the page's request threshold, so the page (whose slider starts
    at the model's ``score_threshold``) first shows every box the barely trained model finds.
    """
    from danlu.serve.launch import ServerProcess

    with ServerProcess(checkpoint, ["--score-threshold", str(REQUEST_THRESHOLD)]) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless; Playwright's own browser builds are not installed."""
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (fresh sessionStorage); fails the test on any uncaught page error."""
    context = browser.new_context(viewport={"width": 1100, "height": 850})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def api_detect(url: str, data: bytes, filename: str, content_type: str,
               headers: dict[str, str] | None = None) -> httpx.Response:
    """The API's own answer for an upload, as the page sends it (multipart ``image``)."""
    return httpx.post(f"{url}/v1/detect", params={"score_threshold": REQUEST_THRESHOLD},
                      files={"image": (filename, data, content_type)},
                      headers=headers or {}, timeout=60)


def table_rows(page: Page) -> list[tuple[str, str, float]]:
    """``(class, score text, data-score)`` for each row of the detections table."""
    return page.eval_on_selector_all(
        "#detections tr",
        "rows => rows.map(r => [r.cells[0].textContent.trim(), r.cells[1].textContent.trim(),"
        " Number(r.dataset.score)])",
    )


def expected_rows(dets: list[dict[str, Any]], threshold: float) -> list[tuple[str, str]]:
    """What the table must show at ``threshold``: the API's boxes above it, best first."""
    kept = sorted((d for d in dets if d["score"] >= threshold), key=lambda d: -d["score"])
    return [(d["class_name"], f"{d['score']:.2f}") for d in kept]


def splitting_threshold(scores: list[float]) -> float:
    """A slider value (0.01 steps) with as many scores below it as at or above it."""
    grid = [round(REQUEST_THRESHOLD + 0.01 * k, 2) for k in range(96)]

    def imbalance(v: float) -> tuple[int, float]:
        above = sum(s >= v for s in scores)
        return abs(2 * above - len(scores)), v

    return min(grid, key=imbalance)


def set_slider(page: Page, value: float) -> float:
    """Move the range input like a user does (fires ``input``); returns the value it took."""
    page.eval_on_selector(
        "#threshold",
        "(el, v) => { el.value = String(v);"
        " el.dispatchEvent(new Event('input', {bubbles: true})); }",
        value,
    )
    return float(page.input_value("#threshold"))


def test_upload_draws_boxes_and_slider_filters(server: ServerProcess, page: Page,
                                               image_png: Path, tmp_path: Path) -> None:
    """Upload through the file input; the table equals the API's answer at every threshold."""
    page.goto(server.url + "/")
    model = httpx.get(server.url + "/v1/model", timeout=30).json()
    page.wait_for_function("n => document.querySelector('#model-name').textContent === n",
                           arg=model["name"])

    page.set_input_files("#file-input", str(image_png))
    page.wait_for_selector("#status[data-state=done]")
    assert page.inner_text("#status").strip() == "ready"
    assert page.inner_text("#error") == "" and page.is_hidden("#error")
    assert page.is_visible("#canvas")

    shot = tmp_path / "serve_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    resp = api_detect(server.url, image_png.read_bytes(), "shapes.png", "image/png")
    assert resp.status_code == 200, resp.text
    dets = resp.json()["detections"]

    t0 = float(page.input_value("#threshold"))
    assert t0 == pytest.approx(max(REQUEST_THRESHOLD, model["score_threshold"]))
    assert page.inner_text("#threshold-value").strip() == f"{t0:.2f}"
    rows = table_rows(page)
    assert [(c, s) for c, s, _ in rows] == expected_rows(dets, t0)
    assert sorted((r[2] for r in rows), reverse=True) == [r[2] for r in rows]
    shown = len(expected_rows(dets, t0))
    assert page.inner_text("#shown-count").strip() == f"{shown} / {len(dets)}"

    timings = page.inner_text("#timings")
    for key in ("queue", "decode", "infer", "post", "total", "batch"):
        assert key in timings
    assert page.inner_text("#timings dd[data-key=batch_size]").strip().isdigit()

    # Move the slider: the page refilters locally, with no new request.
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    for target in (splitting_threshold([d["score"] for d in dets]), REQUEST_THRESHOLD, 1.0):
        value = set_slider(page, target)
        assert page.inner_text("#threshold-value").strip() == f"{value:.2f}"
        rows = table_rows(page)
        assert [(c, s) for c, s, _ in rows] == expected_rows(dets, value)
        assert len(rows) == sum(d["score"] >= value for d in dets)
    assert not [u for u in requests if "/v1/" in u]


def test_bad_upload_shows_the_api_error(server: ServerProcess, page: Page,
                                        tmp_path: Path) -> None:
    """A text file named like a JPEG: the page shows the API's status, code and message."""
    bad = tmp_path / "bad.jpg"
    bad.write_text("this is not a picture\n")
    resp = api_detect(server.url, bad.read_bytes(), "bad.jpg", "image/jpeg")
    assert resp.status_code in (400, 415), resp.text
    err = resp.json()["error"]

    page.goto(server.url + "/")
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#status[data-state=error]")
    text = page.inner_text("#error").strip()
    assert page.is_visible("#error")
    assert text.startswith(f"{resp.status_code} {err['code']}: "), text
    assert err["message"] in text
    assert page.locator("#detections tr").count() == 0


def test_token_prompt_then_upload(checkpoint: Path, browser: Browser, image_png: Path) -> None:
    """With ``--token``: the page asks for it after the 401, keeps it, and uploads succeed."""
    from danlu.serve.launch import ServerProcess

    with ServerProcess(checkpoint, ["--token", TOKEN]) as srv:
        assert httpx.get(srv.url + "/v1/model", timeout=30).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        model = httpx.get(srv.url + "/v1/model", headers=auth, timeout=30).json()

        context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
        try:
            page = context.new_page()
            page.goto(srv.url + "/")
            page.wait_for_selector("#token-input", state="visible")

            page.fill("#token-input", "wrong")
            page.press("#token-input", "Enter")
            page.wait_for_selector("#error:has-text('401')")
            assert page.is_visible("#token-input")

            page.fill("#token-input", TOKEN)
            page.press("#token-input", "Enter")
            page.wait_for_function("n => document.querySelector('#model-name').textContent === n",
                                   arg=model["name"])
            assert page.is_hidden("#token-input")
            assert page.evaluate("Object.values({...sessionStorage})") == [TOKEN]

            page.set_input_files("#file-input", str(image_png))
            page.wait_for_selector("#status[data-state=done]")
            resp = api_detect(srv.url, image_png.read_bytes(), "shapes.png", "image/png",
                              headers=auth)
            value = float(page.input_value("#threshold"))
            rows = table_rows(page)
            assert [(c, s) for c, s, _ in rows] == expected_rows(resp.json()["detections"], value)
        finally:
            context.close()
