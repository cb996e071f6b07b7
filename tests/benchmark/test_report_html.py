"""The HTML report in a real headless browser (Debian's ``chromium``, installed by ``.ci/run``): the page
is not blank, every image loads, and no table runs past the viewport of a small laptop screen.

Skips only where no chromium binary is found.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.report import write_report
from benchmark.store import ResultsStore
from tests.benchmark.test_report import classifier_run, toy_run

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
WIDTH, HEIGHT = 1000, 700
PROBE = """<script>window.addEventListener("load", () => {
  const viewport = document.documentElement.clientWidth;
  const tables = [...document.querySelectorAll("table")];
  const result = {
    images: document.images.length,
    broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length,
    tables: tables.length,
    overflowing: tables.filter(t => t.parentElement.getBoundingClientRect().right > viewport + 1).length,
    scrolling: tables.filter(t => t.parentElement.scrollWidth > t.parentElement.clientWidth).length,
    page_width: document.documentElement.scrollWidth,
    viewport: viewport,
    text: document.body.innerText.length,
  };
  const out = document.createElement("pre");
  out.id = "layout-check";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});</script>"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BROWSER is None, reason="no chromium: .ci/run installs Debian's chromium"),
]


def chromium(*args: str) -> str:
    command = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--window-size={WIDTH},{HEIGHT}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report with a table too wide for the window: a method label of 160 characters without a break."""
    folder = tmp_path_factory.mktemp("html")
    store = ResultsStore(folder / "results.db")
    for i, label in enumerate(("ew", "pcgrad", "graddrop", "x" * 160)):
        for seed in (0, 1):
            store.save(classifier_run(label, seed, 0.5 + 0.01 * i, 1.0 + seed))
    store.save(toy_run("MGDA", (-1.5, 1.5), (0.0, 0.0), True))
    return write_report(store, "suite", folder / "report")


def test_report_loads_every_image_and_no_table_overflows(page: Path) -> None:
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="layout-check">([^<]*)</pre>', dom)
    assert found, "the probe script did not run"
    result = json.loads(found.group(1))
    assert result["text"] > 500 and result["images"] >= 5 and result["tables"] >= 3
    assert result["broken"] == 0
    assert result["overflowing"] == 0 and result["page_width"] <= result["viewport"]
    assert result["scrolling"] >= 1, json.dumps(result)  # the wide table scrolls inside its wrapper


def test_screenshot_is_not_blank(page: Path) -> None:
    shot = page.with_name("shot.png")
    chromium("--hide-scrollbars", f"--screenshot={shot}", page.as_uri())
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"))
    assert pixels.shape == (HEIGHT, WIDTH)
    assert (pixels < 128).mean() > 0.005  # dark text and lines on the white page
