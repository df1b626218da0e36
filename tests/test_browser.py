"""The HTML report in a real browser (`nox -s browser`): headless Chromium from the system's packages renders the
page offline, the filters hide and show the flips, and a screenshot goes into docs/figures/ for the README."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main
from tests.test_html_report import md_tables, parse

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "figures" / "html_report.png"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    pytest.fail("no chromium on PATH: `nox -s browser` installs Debian's package (apt-get install chromium)")


def _run(url: str, *flags: str) -> str:
    """One headless Chromium call, without network, on a throwaway profile; returns stdout."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        proc = subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--virtual-time-budget=3000", *flags, url],
            capture_output=True, text=True, timeout=180, env=dict(os.environ, HOME=profile),
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def report(micro_sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html") / "report.html"
    result = CliRunner().invoke(main, ["report", str(micro_sweep), "--format", "html", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_chromium_renders_the_tables_and_runs_the_filter(report: Path, micro_sweep: Path) -> None:
    dom = parse(_run(report.as_uri(), "--dump-dom"))
    # rendered with every table as the Markdown has it
    from harness import compare

    assert md_tables(compare([micro_sweep]))[0] == dom.tables[0]
    assert md_tables((micro_sweep / "tables" / "grid.md").read_text())[0] in dom.tables
    flips = [a for t, a in dom.elements if t == "tr" and a.get("class") == "flip"]
    assert flips and {a["data-task"] for a in flips} >= {"sandbox_knowledge"}
    shown = [a for a in flips if "hidden" not in a]
    assert len(shown) == len(flips)  # no filter: everything shown, and the script counted it
    text = " ".join(dom.text)
    assert f"documents shown: {len(flips)}" in " ".join(text.split())

    # a filtered view (the link form of the selects): only the chosen task and group stay visible
    pair = next(a["data-pair"] for a in flips if a["data-group"] == "a" and a["data-task"] == "sandbox_knowledge")
    from urllib.parse import quote

    url = f"{report.as_uri()}#task=sandbox_knowledge&group=a&pair={quote(pair)}"
    dom = parse(_run(url, "--dump-dom"))
    rows = [a for t, a in dom.elements if t == "tr" and a.get("class") == "flip"]
    visible = [a for a in rows if "hidden" not in a]
    assert visible and all((a["data-task"], a["data-group"], a["data-pair"]) == ("sandbox_knowledge", "a", pair) for a in visible)
    expected = [a for a in rows if (a["data-task"], a["data-group"], a["data-pair"]) == ("sandbox_knowledge", "a", pair)]
    assert len(visible) == len(expected) < len(rows)
    assert f"documents shown: {len(visible)}" in " ".join(" ".join(dom.text).split())


def test_screenshot_for_the_readme(report: Path) -> None:
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    # the page as the link of a filtered view shows it: one task's counts and documents under the table
    url = f"{report.as_uri()}#task=sandbox_knowledge"
    _run(url, f"--screenshot={SCREENSHOT}", "--window-size=1280,1400", "--force-device-scale-factor=1",
         "--run-all-compositor-stages-before-draw")
    from PIL import Image

    with Image.open(SCREENSHOT) as shot:
        assert shot.size == (1280, 1400)
        gray = shot.convert("L")
        # painted to the bottom edge (the filtered list is longer than the window), not a half-drawn frame
        assert gray.crop((0, 1200, 1280, 1400)).getextrema()[0] < 128
