"""The report as a browser shows it: headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it).

A screenshot that is not blank, every ``<img>`` decoded (a copy of the page with a probe script marks the
images after load; the report itself has no script), every section in the rendered DOM.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from curation.report import SECTION_IDS, write_report
from tests.report_helpers import full_dataset

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not found (Debian: apt-get install chromium; .ci/run installs it when it can)",
)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000"]
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter((image) => !(image.complete && image.naturalWidth > 0));
  document.body.setAttribute("data-images", images.length);
  document.body.setAttribute("data-broken", broken.length);
  document.body.setAttribute("data-sections", [...document.querySelectorAll("section")].map((s) => s.id).join(","));
});
</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, *args], capture_output=True, text=True, timeout=120, check=True)


def probed_body(page: Path, tmp_path: Path) -> dict[str, str]:
    """The body's probe attributes after Chromium loaded a copy of ``page`` with the probe script."""
    probe = tmp_path / f"probe-{page.parent.name}.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium("--dump-dom", probe.as_uri()).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:2000]
    return dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1)))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(write_report(str(full_dataset(tmp_path_factory.mktemp("browser") / "ds"))))


def test_screenshot_is_not_blank(report: Path, tmp_path: Path):
    shot = tmp_path / "shot.png"
    chromium("--window-size=1280,3000", f"--screenshot={shot}", report.as_uri())
    with Image.open(shot) as image:
        gray = image.convert("L")
        assert gray.size == (1280, 3000)
        assert ImageStat.Stat(gray).stddev[0] > 20  # text, charts and thumbnails on white


def test_every_image_loads_and_every_section_renders(report: Path, tmp_path: Path):
    body = probed_body(report, tmp_path)
    expected_images = len(re.findall(r"<img ", report.read_text()))
    assert int(body["images"]) == expected_images >= 10
    assert body["broken"] == "0"
    assert body["sections"].split(",") == list(SECTION_IDS)


def test_the_probe_sees_a_broken_image(tmp_path: Path):
    """The check above can fail: an image that does not decode is counted."""
    page = tmp_path / "bad" / "index.html"
    page.parent.mkdir()
    page.write_text('<!DOCTYPE html><html><body><img src="data:image/jpeg;base64,AAAA" alt="x"></body></html>')
    assert probed_body(page, tmp_path)["broken"] == "1"
