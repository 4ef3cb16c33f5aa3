"""Regenerates the live page's screenshots that README.md and docs/page.md show.

    python docs/screenshots.py [--out docs/img]

Starts a daemon on the embedded default config at --speed 10, opens its page in Debian's
headless chromium (driven by Playwright, a test dependency), and writes:

- live-seed.png: the seed's four runs a few seconds in, lr-0.7 on its landscape;
- live-broken.png: lr-0.2 after an lr_spike injected from the page's "break it" panel.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from simulator.drills.stack import start_daemon

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(Path(__file__).parent / "img"))
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not on PATH: apt-get install chromium")
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        daemon = start_daemon(Path(tmp), speed=10.0)
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1080})
            page.goto(daemon.url)
            page.wait_for_function("window.trainsimPage && window.trainsimPage.state.ready")
            page.click("tr[data-run='lr-0.7'] .run-name")
            # lr-1.1 has diverged, lr-0.7 rings into its minimum, lr-0.05 still crawls.
            page.wait_for_selector("tr[data-run='lr-1.1'][data-state='diverged']")
            time.sleep(2.5)
            page.mouse.move(0, 0)
            page.screenshot(path=str(out / "live-seed.png"))
            page.click("tr[data-run='lr-0.2'] .run-name")
            page.select_option("#fault-kind", "lr_spike")
            page.fill("#fault-params input[name='factor']", "30")
            page.fill("#fault-duration", "1m")
            page.click("#break button[type='submit']")
            page.wait_for_selector("tr[data-run='lr-0.2'][data-state='diverged']")
            time.sleep(2.5)
            page.mouse.move(0, 0)
            page.screenshot(path=str(out / "live-broken.png"))
        finally:
            browser.close()
            daemon.close()
    print(f"wrote {out / 'live-seed.png'} and {out / 'live-broken.png'}")


if __name__ == "__main__":
    main()
