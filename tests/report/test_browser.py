"""The HTML report in a real browser: headless Chromium renders the tables and the images.

Needs Chromium (`make test` installs Debian's `chromium` when apt-get can); skipped, saying
why, only when no Chromium binary can be found.
"""

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prunellm.cli import main

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
WIDTH, HEIGHT = 1280, 2600
TAB_BLUE = np.array([31, 119, 180])  # matplotlib's first line colour: only the embedded figures use it


def find_chromium() -> str | None:
    explicit = os.environ.get("PRUNELLM_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return next((path for path in map(shutil.which, CANDIDATES) if path), None)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium found (tried $PRUNELLM_CHROMIUM, " + ", ".join(CANDIDATES)
                    + "): `apt-get install chromium`, or `make test` as root does it")
    return path


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


class RenderedDom(HTMLParser):
    """Tables (each a list of rows, each a list of cell texts), image sources and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.text = ""
        self._cell = False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")
            self._cell = True
        elif tag == "img":
            self.images.append(dict(attrs).get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._cell = False

    def handle_data(self, data):
        self.text += data
        if self._cell:
            self.tables[-1][-1][-1] += data


@pytest.fixture(scope="module")
def report(sweep_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser")
    assert main(["report", str(sweep_dir), "--out", str(out), "--quiet"]) == 0
    return out / "report.html"


def test_chromium_renders_tables_and_images(chromium, report, tmp_path):
    url = report.resolve().as_uri()
    dom = run_chromium(chromium, tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = RenderedDom()
    rendered.feed(dom.stdout)
    # Settings; perplexity, accuracy and mean layer error per sparsity (rows) and method (columns); every setting.
    settings, perplexity, accuracy, layer_error, everything = rendered.tables
    assert [row[0] for row in settings][:2] == ["model", "methods"]
    assert perplexity[0] == ["sparsity", "magnitude", "wanda", "sparsegpt"]
    assert [row[0] for row in perplexity[1:]] == ["dense", "40%", "70%", "2:4"]
    assert [row[0] for row in accuracy[1:]] == ["dense", "40%", "70%", "2:4"]
    assert all(" ± " in cell for row in accuracy[1:] for cell in row[1:])
    assert [row[0] for row in layer_error[1:]] == ["40%", "70%", "2:4"]
    labels = ["dense"] + [f"{m} {p}" for m in ("magnitude", "wanda", "sparsegpt") for p in ("40%", "70%", "2:4")]
    assert [row[0] for row in everything[1:]] == labels
    assert all(len(row) == len(everything[0]) for row in everything)
    assert len(rendered.images) == 3 and all(src.startswith("data:image/png;base64,") for src in rendered.images)
    assert "Sparsity sweep" in rendered.text and "Perplexity vs sparsity" in rendered.text

    shot = tmp_path / "report.png"
    result = run_chromium(chromium, tmp_path / "profile-shot", f"--screenshot={shot}", url)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)  # (H, W, 3)
    assert pixels.shape == (HEIGHT, WIDTH, 3)
    assert pixels.std() > 20  # not a blank page
    assert (pixels.min(axis=2) < 100).mean() > 0.005  # dark text and lines drawn
    # The figures were decoded and painted: matplotlib's blue lines are on screen.
    blue = (np.abs(pixels - TAB_BLUE).max(axis=2) < 24).sum()
    assert blue > 200, f"only {blue} pixels of the plot's blue on screen"
