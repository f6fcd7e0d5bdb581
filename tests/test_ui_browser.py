"""The web page at /ui/ in a real browser: Debian's chromium, headless, driven by Playwright.

The main test runs the no-Docker stack (``python -m bench.stack up``: broker, API, flow,
simulator) with reads closed behind the token, signs in on the page, watches an alert arrive
over the live stream without a reload, acknowledges it, and checks the API agrees. The others
use an API served in this process for the error paths and the phone layout.

Skipped, saying why, only where no chromium is installed; ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from apikit import AUTH, TOKEN, alert, body, score, serve_in_thread
from integration import ONE_HZ, wait_for
from playwright.sync_api import Browser, Page, expect, sync_playwright
from stackkit import stack_up

from api import create_app
from flows.schemas import Contributor
from flows.settings import Settings

CHROMIUM = os.environ.get("VIGIL_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which(
    "chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on this machine (apt-get install chromium; .ci/run does it)",
)
DESK = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


class Watched:
    """A page plus every script error and Content-Security-Policy violation it logged."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("console", self._console)

    def _console(self, msg: object) -> None:
        text = msg.text  # type: ignore[attr-defined]
        if "Content Security Policy" in text or "Uncaught" in text:
            self.problems.append(text)


def _open(browser: Browser, url: str, viewport: dict[str, int]) -> Watched:
    page = browser.new_context(viewport=viewport).new_page()
    watched = Watched(page)
    page.goto(f"{url}/")  # the API's root leads to /ui/
    page.evaluate("window.__loadedOnce = true")  # gone if the page ever reloads
    return watched


def _sign_in(page: Page, token: str, by: str = "ui-test", accepted: bool = True) -> None:
    expect(page.locator("#token-dialog")).to_be_visible()
    page.fill("#token-input", token)
    page.fill("#by-input", by)
    page.click("#token-save")
    if accepted:
        expect(page.locator("#token-dialog")).to_be_hidden()


def _no_horizontal_scroll(page: Page) -> None:
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"page is {widths[0]}px wide in a {widths[1]}px viewport"


def _pixel_spread(png: Path) -> float:
    """Standard deviation of the screenshot's grey levels: about 0 for a blank page."""
    from PIL import Image, ImageStat

    return ImageStat.Stat(Image.open(png).convert("L")).stddev[0]


@pytest.mark.integration
def test_on_the_running_stack_an_alert_appears_live_and_is_acknowledged_from_the_page(
    browser, tmp_path
):
    state = tmp_path / "stack"
    token = "ui-test-token-0123456789"
    # 5 sensors at 1 s event-time spacing, 50 ticks a second: alerts within ~10 s. An alert
    # resolves after 60 normal windows (10 min of event time, ~12 s here), so it stays on the
    # page long enough to be acknowledged.
    with stack_up(
        state, "--token", token, "--sensors", "5", "--rate", "250", "--interval", "1s",
        "--anomaly-rate", "96", "--snapshot-interval", "1", "--partitions", "2", timeout=90,
        **ONE_HZ, alert_resolve_after="60", api_score_interval="1s", api_auth_reads="true",
        api_heartbeat_stale="4s",
    ) as stack:
        info = stack.info
        api = info["api_url"]
        assert httpx.get(f"{api}/v1/alerts").status_code == 401  # reads really need the token

        w = _open(browser, api, DESK)
        page = w.page
        _sign_in(page, token)
        expect(page.locator("#st-stream .v")).to_have_text("live", timeout=15_000)
        before = set(page.locator("#alerts > li").evaluate_all(
            "els => els.map(e => e.dataset.alertId)"))

        # a new alert arrives over the stream: no reload, no polling of the list
        cards = page.locator("#alerts > li")
        assert wait_for(lambda: set(cards.evaluate_all(
            "els => els.map(e => e.dataset.alertId)")) - before, 60, interval=0.3), (
            Path(info["logs"]["flow"]).read_text()[-3000:])
        assert page.evaluate("window.__loadedOnce") is True

        # acknowledge the newest open alert; one may resolve under the pointer, so try a few
        def stored(alert_id: str) -> dict:
            return httpx.get(f"{api}/v1/alerts/{alert_id}",
                             headers={"Authorization": f"Bearer {token}"}).json()

        acked = None
        for _ in range(5):
            card = page.locator("#alerts > li[data-status='open']").first
            card.wait_for(timeout=30_000)
            alert_id = card.get_attribute("data-alert-id")
            card.locator("button[data-action='acknowledged']").click()
            if wait_for(lambda aid=alert_id: stored(aid)["acknowledged_by"], 5):
                acked = alert_id
                break
            # the only excuse: the flow resolved it between drawing and clicking (409)
            assert stored(alert_id)["status"] == "resolved", stored(alert_id)
        assert acked, "no alert could be acknowledged"
        view = stored(acked)
        assert view["acknowledged_by"] == "ui-test" and view["acknowledged_at"]
        if view["status"] == "acknowledged":  # still unresolved: the page shows it so
            expect(page.locator(f"#alerts > li[data-alert-id='{acked}']")).to_have_attribute(
                "data-status", "acknowledged")

        # the status strip shows what the flow's heartbeat reported
        expect(page.locator("#st-readings .v")).to_have_text(
            re.compile(r"^[\d,.]+/s$"), timeout=20_000)
        expect(page.locator("#st-heartbeat")).to_have_attribute("data-state", "ok")
        assert page.locator("#st-lag .v").inner_text().endswith("msgs")
        # the sensor view: a uPlot chart and the model version
        expect(page.locator("#chart canvas")).to_be_visible(timeout=20_000)
        expect(page.locator("#sf-model")).to_have_text("zscore-1")

        shot = tmp_path / "desk.png"
        page.screenshot(path=str(shot))
        assert _pixel_spread(shot) > 20, "the screenshot is (nearly) blank"
        assert not w.problems, w.problems

        phone = _open(browser, api, PHONE)
        _sign_in(phone.page, token)
        expect(phone.page.locator("#alerts > li").first).to_be_visible(timeout=20_000)
        _no_horizontal_scroll(phone.page)
        phone.page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
        assert not phone.problems, phone.problems
    out = stack.output
    assert stack.proc.returncode == 0, out
    assert f"web page:     {info['ui_url']}" in out and "reads need it too" in out
    assert token not in Path(info["logs"]["api"]).read_text()  # the page never put it in a URL


def _app(tmp_path: Path, **kw: object):
    return create_app(Settings(api_db=str(tmp_path / "api.sqlite3"), api_token=TOKEN, **kw))


def _ingest(url: str, records: list, path: str = "/v1/alerts") -> None:
    r = httpx.post(f"{url}{path}", content=body(records),
                   headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_the_page_says_when_the_api_is_unreachable_and_recovers_when_it_is_back(
    browser, tmp_path
):
    from apikit import free_port

    port = free_port()
    with serve_in_thread(_app(tmp_path), port=port) as url:
        _ingest(url, [alert(1)])
        w = _open(browser, url, DESK)
        page = w.page
        expect(page.locator("#st-stream .v")).to_have_text("live", timeout=10_000)
        expect(page.locator("#alerts > li")).to_have_count(1)
    # the API is gone (the page stays open)
    banner = page.locator("[data-banner='unreachable']")
    expect(banner).to_contain_text("Cannot reach the Vigil API", timeout=15_000)
    expect(page.locator("#st-stream")).to_have_attribute("data-state", "bad")
    with serve_in_thread(_app(tmp_path), port=port) as url:
        _ingest(url, [alert(2)])
        expect(page.locator("#st-stream .v")).to_have_text("live", timeout=20_000)
        expect(banner).to_have_count(0)
        expect(page.locator("#alerts > li")).to_have_count(2, timeout=10_000)
        assert page.evaluate("window.__loadedOnce") is True
    assert not w.problems, w.problems


def test_with_reads_closed_a_wrong_token_is_named_and_the_right_one_opens_the_page(
    browser, tmp_path
):
    with serve_in_thread(_app(tmp_path, api_auth_reads=True)) as url:
        _ingest(url, [alert(1, sensor="pump-9")])
        w = _open(browser, url, DESK)
        page = w.page
        expect(page.locator("#token-why")).to_contain_text("needs a token")
        _sign_in(page, "not-the-token", accepted=False)
        expect(page.locator("[data-banner='auth']")).to_contain_text(
            "refused the token", timeout=10_000)
        expect(page.locator("#token-why")).to_contain_text("refused the token")  # asked again
        expect(page.locator("#alerts > li")).to_have_count(0)
        _sign_in(page, TOKEN)
        expect(page.locator("[data-banner='auth']")).to_have_count(0, timeout=10_000)
        expect(page.locator("#alerts > li[data-alert-id='a00001']")).to_contain_text("pump-9")
        # a new alert comes over the stream, which carries the token in a header
        _ingest(url, [alert(2, sensor="pump-9")])
        expect(page.locator("#alerts > li")).to_have_count(2, timeout=10_000)
        token_in_storage = page.evaluate("sessionStorage.getItem('vigil.token')")
        assert token_in_storage == TOKEN and TOKEN not in page.url
    assert not w.problems, w.problems


def test_on_a_phone_long_alerts_fit_the_screen_and_resolving_removes_one(browser, tmp_path):
    long_sensor = "compressor-station-north-7.line-3." + "x" * 60
    big = msgspec.structs.replace(
        alert(1, sensor=long_sensor, severity="critical", score=12.5),
        contributors=[Contributor(f"very_long_metric_name_number_{i}_" + "y" * 30, 3.0 + i)
                      for i in range(6)],
    )
    with serve_in_thread(_app(tmp_path)) as url:
        _ingest(url, [big, alert(2), alert(3)])
        _ingest(url, [score(long_sensor, m, 0.4 + (m == 5) * 3) for m in range(1, 12)],
                path="/v1/scores")
        w = _open(browser, url, PHONE)
        page = w.page
        cards = page.locator("#alerts > li")
        expect(cards).to_have_count(3, timeout=10_000)
        expect(cards.first).to_have_attribute("data-alert-id", "a00003")  # newest first
        expect(cards.last).to_have_attribute("data-severity", "critical")
        _no_horizontal_scroll(page)
        page.locator("#alerts > li[data-alert-id='a00001'] .sensor").click()
        expect(page.locator("#chart canvas")).to_be_visible(timeout=10_000)
        _no_horizontal_scroll(page)
        page.locator("#alerts > li[data-alert-id='a00002'] button[data-action='resolved']") \
            .click()
        expect(page.locator("#token-dialog")).to_be_visible()  # the token is asked for once
        _sign_in(page, TOKEN, by="phone")
        page.locator("#alerts > li[data-alert-id='a00002'] button[data-action='resolved']") \
            .click()
        expect(cards).to_have_count(2, timeout=10_000)
        view = httpx.get(f"{url}/v1/alerts/a00002").json()
        assert (view["status"], view["resolved_by"]) == ("resolved", "phone")
        shot = tmp_path / "phone.png"
        page.screenshot(path=str(shot), full_page=True)
        assert _pixel_spread(shot) > 20
    assert not w.problems, w.problems
