"""The live page in a real headless Chromium (Debian's), against a real daemon on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator.drills.stack import http_get
from tests.conftest import need_binary

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
FLEET_10K = """
defaults: {steps: 100000, loop: true, step_interval: 1s}
fleet:
  count: 10000
  name_prefix: fleet
  seed: 7
  template: {init: 5.5, optimizer: {kind: sgd}}
  learning_rate: {log_uniform: [1e-3, 1.2]}
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = need_binary("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """A page of the browser on a daemon, with every console message and request kept."""

    def __init__(self, browser: Any, url: str) -> None:
        self.url = url
        self.page = browser.new_page(viewport={"width": 1440, "height": 1300})
        self.problems: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.problems.append(f"{m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(url)
        self.page.wait_for_function("window.trainsimPage && window.trainsimPage.state.ready",
                                    timeout=20_000)

    def rows(self) -> dict[str, str]:
        """Run -> state, as the fleet table shows them."""
        states: dict[str, str] = self.page.eval_on_selector_all(
            "#fleet tbody tr", "rows => Object.fromEntries(rows.map("
                               "r => [r.dataset.run, r.dataset.state]))")
        return states


@pytest.fixture
def page_on(browser: Any) -> Iterator[Any]:
    opened: list[Page] = []

    def open_page(url: str) -> Page:
        p = Page(browser, url)
        opened.append(p)
        return p

    yield open_page
    for p in opened:
        p.page.close()


def test_the_page_loads_from_the_daemon_alone_with_no_console_error(
        daemon_factory: Any, page_on: Any) -> None:
    d = daemon_factory(speed=60.0)
    p = page_on(d.url)
    p.page.wait_for_function("document.querySelectorAll('#fleet tbody tr').length === 4")
    time.sleep(1.5)  # a few refreshes
    assert p.problems == []
    assert set(p.rows()) == {"lr-0.05", "lr-0.2", "lr-0.7", "lr-1.1"}
    # Every request went to the daemon: no CDN, nothing beyond loopback.
    assert p.requests and all(u.startswith(d.url) for u in p.requests), p.requests
    assert p.page.locator("#chart-loss canvas").count() == 1
    assert p.page.locator("#chart-picture canvas").count() == 1


def test_the_loss_chart_plots_the_history_endpoints_values(daemon_factory: Any,
                                                           page_on: Any) -> None:
    d = daemon_factory(speed=60.0)
    p = page_on(d.url)
    p.page.wait_for_function(
        "window.trainsimPage.lossPoints('lr-0.2').length >= 15", timeout=20_000)
    drawn = p.page.evaluate("window.trainsimPage.lossPoints('lr-0.2')")
    _, body = http_get(f"{d.url}/api/v1/runs/lr-0.2/history")
    h = json.loads(body)
    c = h["columns"]
    attempt = c["attempt"][-1]
    # The excess loss, exact where J - J* would round to 0: every step of the attempt is drawn.
    expected = {s: excess for s, excess, a, present in zip(
        c["step"], c["excess_loss"], c["attempt"], c["present"], strict=True)
        if a == attempt and present}
    assert all(v > 0 for v in expected.values())
    assert len(drawn) >= 15
    for step, value in drawn:
        assert value == expected[step], step  # the same float, not a near one


def test_a_fault_injected_from_the_page_makes_the_run_diverge_there(
        daemon_factory: Any, page_on: Any) -> None:
    d = daemon_factory(speed=60.0)
    p = page_on(d.url)
    page = p.page
    page.click("tr[data-run='lr-0.2'] .run-name")
    page.wait_for_function("document.getElementById('focus-name').textContent === 'lr-0.2'")
    page.select_option("#fault-kind", "lr_spike")
    page.fill("#fault-params input[name='factor']", "30")
    page.fill("#fault-duration", "10m")  # 20 steps of 30 s
    page.click("#break button[type='submit']")
    page.wait_for_function("document.getElementById('message').textContent"
                           ".startsWith('Injected lr_spike into lr-0.2')")
    page.wait_for_selector("tr[data-run='lr-0.2'][data-state='diverged']", timeout=20_000)
    assert "lr_spike" in page.text_content("tr[data-run='lr-0.2']")
    assert p.problems == []


def test_a_replay_run_is_drawn_from_its_recording_and_offered_the_faults_it_can_take(
        daemon_factory: Any, page_on: Any, write_config: Any) -> None:
    recordings = Path(__file__).resolve().parent.parent / "configs" / "recordings"
    d = daemon_factory(write_config(
        "runs:\n  - name: healthy\n    step_interval: 1s\n"
        f"    replay: {{file: {recordings / 'digits-healthy.csv'}}}\n"), speed=30.0)
    p = page_on(d.url)
    page = p.page
    page.wait_for_function("document.getElementById('focus-name').textContent === 'healthy'")
    page.wait_for_function("document.getElementById('picture-caption').textContent"
                           ".startsWith('replayed from its recording: the training loss "
                           "(solid) and the last validation loss (dashed)')", timeout=20_000)
    assert page.locator("#chart-picture canvas").count() == 1
    disabled = page.eval_on_selector_all("#fault-kind option",
                                         "os => os.filter(o => o.disabled).map(o => o.value)")
    assert disabled == ["lr_spike", "drift"]
    page.select_option("#fault-kind", "loss_spike")
    page.fill("#fault-duration", "10s")
    page.click("#break button[type='submit']")
    page.wait_for_function("document.getElementById('message').textContent"
                           ".startsWith('Injected loss_spike into healthy')")
    assert p.problems == []


def test_the_page_asks_for_the_token_and_keeps_it_for_the_tab(
        daemon_factory: Any, page_on: Any, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("page-test-token\n")
    d = daemon_factory(speed=60.0, extra_args=("--web.control-token-file", str(token)))
    p = page_on(d.url)
    page = p.page
    page.click("tr[data-run='lr-0.7'] .run-name")
    page.click("[data-action='pause']")
    page.wait_for_selector("#token-box:not([hidden])")
    assert "token" in page.text_content("#message")
    page.fill("#token", "page-test-token")
    page.click("#token-use")
    page.click("[data-action='pause']")
    page.wait_for_function("document.getElementById('message').textContent"
                           ".includes('(paused)')")
    page.wait_for_selector("tr[data-run='lr-0.7'] .tag.paused")
    # The token lives in the tab's memory only.
    assert page.evaluate("Object.keys(localStorage).length + "
                         "Object.keys(sessionStorage).length") == 0
    assert [m for m in p.problems if "401" not in m] == []


def test_the_page_stays_usable_with_10k_runs(daemon_factory: Any, page_on: Any,
                                             write_config: Any) -> None:
    d = daemon_factory(config=write_config(FLEET_10K), speed=1.0)
    started = time.monotonic()
    p = page_on(d.url)
    loaded = time.monotonic() - started
    page = p.page
    assert page.locator("#fleet tbody tr").count() == 50
    assert page.text_content("#page-info").strip() == "1\u201350 of 10000"  # an en dash
    page.fill("#filter-text", "fleet-0999")
    page.wait_for_function("document.querySelectorAll('#fleet tbody tr').length === 10")
    page.click("tr[data-run='fleet-09990'] .run-name")
    page.wait_for_function("window.trainsimPage.lossPoints('fleet-09990').length >= 1",
                           timeout=20_000)
    assert p.problems == []
    print(f"10k runs: page ready in {loaded:.2f} s")
