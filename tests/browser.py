"""Headless Chromium from Debian's packages, driven by selenium through /usr/bin/chromedriver.

Nothing leaves the machine: background networking, component updates, sync and QUIC are off,
and every session starts from an empty profile directory of its own."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parent.parent
CHROMEDRIVER = os.environ.get("CHI_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM = os.environ.get("CHI_CHROMIUM", "/usr/bin/chromium")
# One folder (gitignored) for every screenshot the browser tests take.
SCREENSHOTS = Path(os.environ.get("CHI_SCREENSHOTS", ROOT / "screenshots"))
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[webdriver.Chrome]:
    profile = tempfile.mkdtemp(prefix="chi-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def full_page_screenshot(driver: webdriver.Chrome, path: Path) -> Path:
    """The whole page, not just the window: grow the window to the document's height."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width = driver.get_window_size()["width"]
    # The window's size includes Chromium's own frame, so the viewport comes out shorter than
    # asked: grow the window by what is still hidden until the page fits (twice is enough).
    for _ in range(3):
        hidden = driver.execute_script(
            "return document.documentElement.scrollHeight - window.innerHeight"
        )
        if int(hidden) <= 0:
            break
        driver.set_window_size(width, driver.get_window_size()["height"] + int(hidden) + 16)
    driver.save_screenshot(str(path))
    return path


def left(old: WebElement) -> Any:
    """A wait condition: `old` no longer belongs to the page. Selenium's staleness_of only
    knows the stale-element error; mid-navigation Chromium sometimes answers "Node with given
    id does not belong to the document" instead (seen under load), which means the same."""

    def gone(_: WebDriver) -> bool:
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    return gone


def go(b: WebDriver, by: str, what: str) -> None:
    """Click something that loads a new page, and wait until the old page is gone: the
    next lookups must not find elements of the page being left."""
    old = b.find_element(By.TAG_NAME, "html")
    b.find_element(by, what).click()
    WebDriverWait(b, 20).until(left(old))
