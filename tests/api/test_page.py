"""The status page in a real headless Chromium (Debian's `chromium`, driven by Playwright's Python
package; never a downloaded browser): it shows the chargers, their connectivity, connector status,
live power and energy, and refreshes itself as they change."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from ocpp.v16 import call as call16

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


async def test_page_shows_control_and_disconnected_chargers_and_pauses(tmp_path: Path, browser: Any) -> None:
    """Limits, pauses and derating per EVSE; a charger that is gone shows no status as current;
    friendly labels and local times; the Pause and Resume buttons send JSON with the token."""
    from tests.control.peers import Connected

    derate = {"reduce_above": 50.0, "pause_above": 60.0, "hysteresis": 5.0, "reduced_current_a": 10.0}
    async with inproc(tmp_path, api={"token": "page-token"}, chargers={"HOT-16": {"derating": derate}}) as gw:
        async with charger(gw.url("GONE-16"), "GONE-16") as gone:
            await gone.boot()
            await gone.status(1, "Charging")
            await gone.start_tx(1)
        async with Connected(gw.url("PAUSE-16"), "ocpp1.6", "PAUSE-16") as cp, \
                Connected(gw.url("HOT-16"), "ocpp1.6", "HOT-16") as hot:
            await cp.call(call16.StatusNotification(connector_id=1, status="Charging", error_code="NoError"))
            await cp.start_tx(1)
            await hot.call(call16.StatusNotification(connector_id=1, status="Charging", error_code="NoError"))
            await hot.start_tx(1)
            await hot.temperature(55.0)

            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(gw.api_url + "/?refresh=0.5#token=page-token")
            row = page.locator('tr[data-charger="PAUSE-16"]')
            await row.wait_for(timeout=10_000)
            evse = row.locator('[data-evse="1"]')
            assert await evse.locator(".status").inner_text() == "Charging"
            # derating: the hot charger is limited, and says why
            hot_row = page.locator('tr[data-charger="HOT-16"]')
            await page.wait_for_function(
                """() => document.querySelector('tr[data-charger="HOT-16"] .heat')?.textContent
                         === 'derated (hot), 55.0 °C'""", timeout=10_000)
            # (a derating limit is the charger's default profile: it applies to the whole charger)
            assert await hot_row.locator(".whole .ctl").inner_text() == "limited to 10 A · temperature derating"

            # pause from the page: the EVSE is paused through the charger's profile, the button turns to Resume
            await evse.locator("button.pause").click()
            await page.wait_for_function(
                """() => document.querySelector('tr[data-charger="PAUSE-16"] [data-evse="1"] button.resume')""",
                timeout=10_000)
            assert await evse.locator(".ctl").inner_text() == "paused"
            assert gw.control.view("PAUSE-16")["paused_evses"] == [1]
            profile = [kw for name, kw in cp.commands if name == "SetChargingProfile"][-1]
            assert profile["cs_charging_profiles"]["charging_schedule"]["charging_schedule_period"][0]["limit"] == 0
            await evse.locator("button.resume").click()
            await page.wait_for_function(
                """() => document.querySelector('tr[data-charger="PAUSE-16"] [data-evse="1"] button.pause')""",
                timeout=10_000)
            assert gw.control.view("PAUSE-16")["paused_evses"] == []

            # the charger that left: disconnected, nothing current about it, its last status only as a tooltip
            gone_row = page.locator('tr[data-charger="GONE-16"]')
            text = await gone_row.inner_text()
            assert "disconnected" in text and "last seen" in text and "Charging" not in text
            assert await gone_row.locator('[data-evse="1"] .status').inner_text() == "not connected"
            assert "last reported: Charging" in (await gone_row.locator('[data-evse="1"]').get_attribute("title") or "")
            assert await gone_row.locator("button").count() == 0
            assert await gone_row.locator(".power").inner_text() == "–"
            # friendly labels and local times in the transactions
            headers = await page.locator("#transactions th").all_inner_texts()
            assert headers == ["Charger", "Transaction", "Charging point", "Started", "Ended", "Energy"]
            started = await page.locator("#transactions tr:nth-child(2) td:nth-child(4)").inner_text()
            assert started and "T" not in started and "Z" not in started  # not ISO 8601, the browser's form
            await page.screenshot(path=str(tmp_path / "status-page-control.png"), full_page=True)
            assert not errors, errors
