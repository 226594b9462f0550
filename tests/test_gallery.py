"""The built gallery page, opened in headless Chromium, shows every picture it links.

``mkdocs build --strict`` already checks that each link of ``docs/gallery.md`` names a
file of the site; this checks what a reader sees: every ``<img>`` loaded and decoded
(``complete`` and a natural width above 0). A full-page screenshot is kept in
``build/screenshots/gallery.png`` for CI to publish.
"""

import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO_ROOT

GALLERY_PAGE = REPO_ROOT / "docs" / "gallery.md"
SCREENSHOT = REPO_ROOT / "build" / "screenshots" / "gallery.png"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Each image's source and whether it decoded, as the browser sees it.
IMAGES_JS = """() => Array.from(document.images, img => ({
    src: img.getAttribute("src"),
    decoded: img.complete && img.naturalWidth > 0,
}))"""


def _chromium():
    """The path of a Chromium executable, or skip the test."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.skip("Chromium is not installed (apt-get install chromium; scripts/test.sh does)")
    return path


def _linked_pictures():
    """The file names of the pictures that docs/gallery.md shows."""
    return sorted(
        set(re.findall(r"!\[[^\]]*\]\(gallery/([^)\s]+\.png)\)", GALLERY_PAGE.read_text()))
    )


def test_gallery_page_links_its_pictures():
    assert len(_linked_pictures()) >= 6


def test_every_gallery_picture_decodes_in_chromium(built_site):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    executable = _chromium()
    page_path = built_site / "gallery" / "index.html"
    assert page_path.is_file(), f"the built site has no gallery page at {page_path}"

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(page_path.as_uri(), wait_until="load")
            images = page.evaluate(IMAGES_JS)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()

    expected = _linked_pictures()
    shown = {Path(image["src"]).name for image in images}
    missing = [name for name in expected if name not in shown]
    assert not missing, f"the gallery page shows no <img> for {missing}; it shows {sorted(shown)}"
    assert len(images) >= len(expected)
    broken = [image["src"] for image in images if not image["decoded"]]
    assert not broken, f"{len(broken)} of {len(images)} images did not decode: {broken}"
