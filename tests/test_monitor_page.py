"""The live run page in a real browser (headless Chromium driven by Playwright, issue 16).

A tiny run trains in a thread of this process; the page, loaded from its monitor, draws a
loss curve that grows while the run trains, shows the step and the latest validation with its
sample pictures, and its stop button (two taps) stops the run. The token prompt is checked on a
monitor with a token. A screenshot is saved for people to look at.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

sync_api = pytest.importorskip("playwright.sync_api")

import danlu  # noqa: E402 - after the skip
from danlu.data.synth import synthesize  # noqa: E402
from danlu.monitor import Monitor  # noqa: E402

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs a chromium executable")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM,
                               args=["--headless", "--no-sandbox", "--disable-gpu",
                                     "--disable-background-networking"])
        yield b
        b.close()


def _points(page: Any, selector: str = "#loss-chart") -> int:
    return int(page.get_attribute(selector, "data-points") or 0)


def test_the_curve_grows_live_and_the_stop_button_stops_the_run(browser, tmp_path):
    ds = synthesize("shapes", num_images=12, seed=2, image_size=(64, 64), scale_range=(12, 28),
                    encode=False)
    mon = Monitor(port=0).start()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = danlu.train(
                ds, epochs=500, out=tmp_path / "run", batch=4, img_size=64, device="cpu",
                val_split=0.25, plots=False, verbose=False, progress=False, augment="none",
                final_eval=False, callbacks=[mon])
        except BaseException as e:  # noqa: BLE001
            outcome["error"] = e

    trainer = threading.Thread(target=run, daemon=True)
    trainer.start()
    context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
    errors: list[str] = []
    external: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("request", lambda r: external.append(r.url)
                if not r.url.startswith(mon.url) and not r.url.startswith("data:") else None)
        page.goto(mon.url)
        page.wait_for_selector("#status[data-state=running]", timeout=120_000)
        page.wait_for_function("() => Number(document.querySelector('#loss-chart')"
                               ".dataset.points) >= 2", timeout=120_000)
        first = _points(page)
        page.wait_for_function("n => Number(document.querySelector('#loss-chart')"
                               ".dataset.points) > n + 2", arg=first, timeout=120_000)
        assert _points(page) > first  # the curve grew without a reload
        page.wait_for_selector("#samples:not([hidden])", timeout=120_000)  # after a validation
        page.wait_for_function("() => document.querySelector('#samples').naturalWidth > 0",
                               timeout=60_000)
        assert page.locator("#val-table tr").count() >= 1
        assert "/" in page.inner_text("#step") and page.inner_text("#lr") != "–"

        shot = tmp_path / "monitor_page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        page.click("#btn-stop")
        assert page.inner_text("#btn-stop") == "Tap again to stop"
        page.click("#btn-stop")
        page.wait_for_selector("#status[data-state=stopped]", timeout=120_000)
        trainer.join(120)
        assert not trainer.is_alive()
    finally:
        context.close()
        mon.close()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].stop_reason == "stopped"
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not external, f"the page loaded from elsewhere: {external}"
    history = (tmp_path / "run" / "history.jsonl").read_text()
    assert '"action":"stop","source":"page"' in history


def test_the_page_asks_for_the_token(browser):
    mon = Monitor(port=0, token="open-sesame").start()
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    try:
        page = context.new_page()
        page.goto(mon.url)
        page.wait_for_selector("#token-input", state="visible")
        page.fill("#token-input", "wrong")
        page.press("#token-input", "Enter")
        page.wait_for_selector("#token-error:has-text('401')")
        page.fill("#token-input", "open-sesame")
        page.press("#token-input", "Enter")
        page.wait_for_selector("#token-form", state="hidden")
        page.wait_for_selector("#status[data-state=starting]")
        assert page.is_disabled("#btn-stop")  # no run to steer yet
    finally:
        context.close()
        mon.close()
