"""The HTML reports as a reader sees them, in a real browser (Chromium, see tests/browser.py):
no console errors, every image and plot loads, the key result is visible without scrolling in a
1280x800 window, and a screenshot is saved beside the page.  The study's report.html has the same
check in tests/test_study_report_browser.py."""

from __future__ import annotations

import base64

from browser import browser_or_skip, view_page

# a 1x1 PNG, so the checker's own test has one image that loads and one that does not
_PIXEL = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
        "0000000d49444154789c6360f8cfc0f01f0005000201e2219bc80000000049454e44ae426082"
    )
).decode("ascii")


def test_the_checker_sees_console_errors_broken_images_and_a_low_element(tmp_path):
    browser_or_skip()
    page = tmp_path / "bad.html"
    page.write_text(
        "<html><body><img alt='fine' src='data:image/png;base64," + _PIXEL + "'>"
        "<img alt='missing' src='no-such-file.png'>"
        "<div style='height: 2000px'></div><p id='key'>below the fold</p>"
        "<script>console.error('boom')</script></body></html>"
    )
    view = view_page(page, "#key", tmp_path / "bad.png")
    assert view.image_count == 2 and view.broken_images == ["missing"]
    assert any("boom" in e for e in view.console_errors)
    assert not view.key_visible_without_scrolling
    assert view.screenshot.stat().st_size > 0


def test_train_run_report_reads_cleanly_in_a_browser(trained_run):
    browser_or_skip()
    page = trained_run.folder / "report.html"
    view = view_page(page, "table", trained_run.folder / "report.png")
    assert view.console_errors == []
    assert view.image_count >= 3 and view.broken_images == []
    assert view.key_visible_without_scrolling, (view.key_top, view.key_bottom, view.viewport_height)
    assert "test" in view.key_text  # the accuracy table: last val and test top-1 of the run
    assert view.screenshot.stat().st_size > 10_000
