"""Open an HTML report in a real browser (Debian's Chromium, driven by Selenium through
chromedriver) and say what a reader would see: console errors, images that did not load, where a
key element sits in a 1280x800 window, and a screenshot.

CI installs Chromium (`apt-get install chromium chromium-driver`) and Selenium (the test extra);
:func:`browser_or_skip` skips a test with the reason where either is missing.  As root, Chromium
needs ``--no-sandbox``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

WIDTH, HEIGHT = 1280, 800
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


@dataclass(frozen=True)
class PageView:
    """What the browser reported about one page."""

    console_errors: list[str]
    broken_images: list[str]  # alt text (or src) of every <img> that did not decode
    image_count: int
    key_top: float  # the key element's box, in CSS pixels from the top of the window
    key_bottom: float
    key_text: str
    viewport_height: float
    screenshot: Path

    @property
    def key_visible_without_scrolling(self) -> bool:
        return 0 <= self.key_top and self.key_bottom <= self.viewport_height and bool(self.key_text.strip())


def browser_or_skip() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or skip the calling test saying what is missing."""
    pytest.importorskip("selenium", reason="Selenium is not installed (pip install selenium)")
    chromium = next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip(
            "Chromium and chromedriver are not installed (apt-get install -y chromium chromium-driver)"
        )
    return chromium, driver


def view_page(page: Path, key_selector: str, screenshot: Path) -> PageView:
    """Load ``page`` in headless Chromium at 1280x800 and report what it shows."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_or_skip()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={WIDTH},{HEIGHT}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        metrics = {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        driver.get(Path(page).resolve().as_uri())
        driver.execute_script("return document.readyState")
        return _report(driver, key_selector, screenshot)
    finally:
        driver.quit()


def _report(driver, key_selector: str, screenshot: Path) -> PageView:
    images = driver.execute_script(
        "return Array.from(document.images)"
        ".map(i => [i.alt || i.src.slice(0, 60), i.complete && i.naturalWidth > 0])"
    )
    box = driver.execute_script(
        "const e = document.querySelector(arguments[0]);"
        "if (!e) return null;"
        "const r = e.getBoundingClientRect();"
        "return [r.top, r.bottom, e.innerText, window.innerHeight];",
        key_selector,
    )
    if box is None:
        raise AssertionError(f"no element matches {key_selector!r} in the page")
    errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(screenshot))
    return PageView(
        console_errors=errors,
        broken_images=[alt for alt, ok in images if not ok],
        image_count=len(images),
        key_top=box[0],
        key_bottom=box[1],
        key_text=box[2],
        viewport_height=box[3],
        screenshot=screenshot,
    )
