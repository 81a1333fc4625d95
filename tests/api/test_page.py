"""The status page in a real headless Chromium (Debian's `chromium`, driven by Playwright's Python
package; never a downloaded browser): it shows the chargers, their connectivity, connector status,
live power and energy, and refreshes itself as they change."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from tests.api.helpers import charger, inproc

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium "
                                                           "chromium-driver; scripts/test installs it as root)"),
    pytest.mark.timeout(90),
]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    playwright = pytest.importorskip("playwright.async_api", reason="needs the playwright package (test extras)")
    async with playwright.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def test_page_shows_chargers_power_and_refreshes(tmp_path: Path, browser: Any) -> None:
    async with inproc(tmp_path, api={"token": "page-token"}) as gw:
        async with charger(gw.url("PAGE-16"), "PAGE-16") as cp, charger(gw.url("PAGE-201"), "PAGE-201", "2.0.1") as cp2:
            await cp.boot()
            await cp.status(1, "Charging")
            tx = await cp.start_tx(1, meter_start=10_000)
            await cp.meter(1, tx.transaction_id, power_w=7400, energy_wh=12_500)
            await cp2.boot()
            await cp2.status(1, 1, "Available")

            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # without the token the page asks for one
            await page.goto(gw.api_url + "/?refresh=0.5")
            await page.wait_for_selector("#login", state="visible", timeout=10_000)
            assert "token" in (await page.text_content("#error") or "")
            await page.fill("#token", "page-token")
            await page.click("#login button")
            row = page.locator('tr[data-charger="PAGE-16"]')
            await row.wait_for(timeout=10_000)
            # and the login stays hidden, even when a refresh that left without the token answers late
            done = await page.evaluate("() => Number(document.body.dataset.refreshed || 0)")
            await page.wait_for_function(f"() => Number(document.body.dataset.refreshed || 0) >= {done + 2}",
                                         timeout=10_000)
            assert await page.is_hidden("#login")
            text = await row.inner_text()
            assert "websocket" in text and "ocpp1.6" in text and "standalone" in text
            assert await row.locator('[data-evse="1"] .status').inner_text() == "Charging"
            assert await row.locator(".power").inner_text() == "7.4 kW"
            assert await row.locator(".energy").inner_text() == "2.50 kWh"
            assert "ACME Wallbox 7" in text
            row2 = page.locator('tr[data-charger="PAGE-201"]')
            assert await row2.locator('[data-evse="1/1"] .status').inner_text() == "Available"
            assert (await page.text_content("#summary")) == "2 of 2 chargers connected"
            assert (await page.text_content("#links")) == " · upstream: 2 standalone"

            # live: new readings and a new status appear without reloading
            await cp.meter(1, tx.transaction_id, power_w=11_000, energy_wh=13_000)
            await page.wait_for_function(
                """() => document.querySelector('tr[data-charger="PAGE-16"] .power')?.textContent === '11.0 kW'""",
                timeout=10_000)
            assert await row.locator(".energy").inner_text() == "3.00 kWh"
            await page.screenshot(path=str(tmp_path / "status-page-live.png"), full_page=True)
        # the chargers leave: the page shows them disconnected
        await page.wait_for_function(
            "() => document.querySelector('#summary').textContent === '0 of 2 chargers connected'", timeout=10_000)
        gone = await page.locator('tr[data-charger="PAGE-16"]').inner_text()
        assert "disconnected" in gone and "seen" in gone
        assert await page.locator('tr[data-charger="PAGE-16"] .power').inner_text() == "–"  # unknown now
        await page.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)
        assert not errors, errors

        # the token in the URL fragment is taken (and removed from the address bar)
        page2 = await browser.new_page()
        await page2.goto(gw.api_url + "/#token=page-token")
        await page2.locator('tr[data-charger="PAGE-201"]').wait_for(timeout=10_000)
        assert "#token" not in page2.url
