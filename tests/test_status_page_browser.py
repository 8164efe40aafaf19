"""The status page in a real browser (headless Chromium): sign in, open a device, open a drive,
see its charts with the expected number of points and its analysis, start a re-analysis, look
at the backups, sign out. One browser session for the module; screenshots in screenshots/."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from chi_companion.page.downsample import min_max
from chi_companion.page.views import CHART_BUCKETS
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser import SCREENSHOTS, chromium, full_page_screenshot, go
from tests.companion_process import Companion
from tests.drive_rows import drive_rows
from tests.ollama_emulator import OllamaEmulator
from tests.sync_payloads import sync_body

DRIVE = 4
SECONDS = 1200
SHOTS = SCREENSHOTS / "browser-test"


@pytest.fixture(scope="module")
def emu() -> Iterator[OllamaEmulator]:
    emulator = OllamaEmulator(models=("gemma2:2b",)).start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def comp(tmp_path_factory: pytest.TempPathFactory, emu: OllamaEmulator) -> Iterator[Companion]:
    companion = Companion(
        tmp_path_factory.mktemp("browser"), {"ollama": {"url": emu.url, "poll_seconds": 0.3}}
    ).start()
    rows = drive_rows(DRIVE, SECONDS)
    for i in range(0, len(rows), 2000):
        status, _, body = companion.request(
            "POST", "/api/v1/sync", sync_body("realtime_data", rows[i : i + 2000])
        )
        assert status == 200, body
    status, _, body = companion.request(
        "PUT",
        f"/api/v1/backups/{companion.device}/database/obd.db",
        raw=b"backup " * 300,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert status == 201, body
    yield companion
    companion.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def analysed(comp: Companion) -> dict[str, Any]:
    """A finished analysis of the drive, through the API (the emulator answers)."""
    status, _, job = comp.request(
        "POST", "/api/v1/analyze", {"deviceId": comp.device, "driveId": DRIVE}
    )
    assert status in (200, 202), job
    deadline = time.monotonic() + 60
    while True:
        _, _, full = comp.request("GET", f"/api/v1/analyses/{job['id']}?wait=5")
        if full["status"] == "done":
            return full
        assert full["status"] != "failed" and time.monotonic() < deadline, full


def expected_points(name: str) -> int:
    series = [
        (float(s), r["value"])
        for s, r in enumerate(r for r in drive_rows(DRIVE, SECONDS) if r["parameter_name"] == name)
    ]
    return len(min_max(series, CHART_BUCKETS))


def test_sign_in_device_drive_chart_analysis_reanalyse_sign_out(
    comp: Companion, browser: WebDriver
) -> None:
    job = analysed(comp)
    b = browser
    b.get(comp.url + "/")
    assert b.current_url == comp.url + "/login"  # nothing but sign-in without a session
    full_page_screenshot(b, SHOTS / "1-sign-in.png")
    b.find_element(By.NAME, "key").send_keys("wrong key")
    go(b, By.CSS_SELECTOR, "#sign-in button")
    assert "not valid" in b.find_element(By.ID, "message").text
    b.find_element(By.NAME, "key").send_keys(comp.operator_key)
    go(b, By.CSS_SELECTOR, "#sign-in button")

    assert b.find_element(By.TAG_NAME, "h1").text == "Overview"
    devices = b.find_element(By.ID, "devices").text
    assert comp.device in devices and comp.other_device in devices
    assert "Ollama" in b.page_source and "gemma2:2b (present)" in b.page_source
    full_page_screenshot(b, SHOTS / "2-overview.png")

    go(b, By.LINK_TEXT, comp.device)
    assert b.find_element(By.TAG_NAME, "h1").text == f"Drives of {comp.device}"
    row = b.find_element(By.CSS_SELECTOR, "#drives tr:nth-child(2)").text
    assert str(DRIVE) in row and "6000" in row and "19 min 59 s" in row and "done" in row
    full_page_screenshot(b, SHOTS / "3-drives.png")

    go(b, By.LINK_TEXT, str(DRIVE))
    assert b.find_element(By.TAG_NAME, "h1").text == f"Drive {DRIVE}"
    charts = b.find_elements(By.CSS_SELECTOR, "figure.chart")
    names = [c.get_attribute("data-parameter") for c in charts]
    assert names == ["RPM", "SPEED", "COOLANT_TEMP"]
    for chart, name in zip(charts, names, strict=True):
        points = chart.find_element(By.CSS_SELECTOR, "polyline.series").get_attribute("points")
        assert len(points.split()) == expected_points(name) < SECONDS, name
        assert f"from {SECONDS} rows" in chart.text
    summary = job["result"]["summary"]
    assert b.find_element(By.ID, "summary").text == " ".join(summary.split())
    recs = b.find_elements(By.CSS_SELECTOR, "#recommendations tr")
    assert len(recs) - 1 == max(1, len(job["result"]["recommendations"]))
    full_page_screenshot(b, SHOTS / "4-drive.png")

    # A person picks other parameters: the form reloads the page with them.
    for box in b.find_elements(By.CSS_SELECTOR, "#picker input[type=checkbox]"):
        if box.is_selected() != (box.get_attribute("value") == "ENGINE_LOAD"):
            box.click()
    go(b, By.CSS_SELECTOR, "#picker button")
    picked = [
        c.get_attribute("data-parameter") for c in b.find_elements(By.CSS_SELECTOR, "figure.chart")
    ]
    assert picked == ["ENGINE_LOAD"]

    go(b, By.CSS_SELECTOR, "#analyse button")
    flash = b.find_element(By.CLASS_NAME, "flash").text
    _, _, listed = comp.request("GET", f"/api/v1/analyses?driveId={DRIVE}")
    newest = listed["analyses"][0]
    assert newest["id"] > job["id"] and f"Analysis {newest['id']} queued" in flash
    full_page_screenshot(b, SHOTS / "5-reanalysis-queued.png")

    go(b, By.LINK_TEXT, "Backups & analyses")
    backups = b.find_element(By.ID, "backups").text
    assert "database" in backups and "not yet" in backups
    assert str(newest["id"]) in b.find_element(By.ID, "analyses").text
    full_page_screenshot(b, SHOTS / "6-backups.png")

    go(b, By.ID, "sign-out")
    assert b.current_url == comp.url + "/login"
    b.get(comp.url + f"/devices/{comp.device}/drives/{DRIVE}")
    assert b.current_url == comp.url + "/login"
    assert b.find_elements(By.CSS_SELECTOR, "figure.chart") == []
