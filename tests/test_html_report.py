"""`harness report --format html` on a real micro-world sweep: one self-contained page whose every table cell is the
Markdown table's, with embedded figures, the runs' metadata and a flips browser, and no external reference."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

from click.testing import CliRunner

import harness
from harness.cli import main


class Page(HTMLParser):
    """Tables (as lists of rows of cell texts), attributes of every element, and the visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._open: list[list[list[str]]] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag == "table":
            self._open.append([])
        elif tag == "tr" and self._open:
            self._open[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._open:
            self._open[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table" and self._open:
            self.tables.append(self._open.pop())
        elif tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if not self._skip:
            self.text.append(data)


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


def md_tables(md: str) -> list[list[list[str]]]:
    """The Markdown tables of a text as rows of cell values (bold marks dropped, `\\|` unescaped)."""
    tables, current = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if all(re.fullmatch(r":?-+:?", c) for c in cells):
                continue
            current = current if current is not None else []
            current.append([c.replace("**", "") for c in cells])
        elif current is not None:
            tables.append(current)
            current = None
    return tables + ([current] if current else [])


def assert_self_contained(page: Page, html: str) -> None:
    """No URL that would reach a network: every src is a data URI, every link an anchor of the page."""
    for tag, attrs in page.elements:
        assert tag not in ("link", "iframe", "object", "embed"), tag
        if tag == "script":
            assert "src" not in attrs
        if "src" in attrs:
            assert str(attrs["src"]).startswith("data:image/png;base64,"), (tag, str(attrs["src"])[:40])
        if "href" in attrs:
            assert str(attrs["href"]).startswith("#"), attrs["href"]
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", html.replace("data:image", "")), "an external URL"
    assert "@import" not in html and "url(" not in html


def test_html_report_of_a_sweep_holds_every_table_figure_run_and_flip(micro_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", str(micro_sweep), "--format", "html", "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text(encoding="utf-8")
    page = parse(html)
    assert_self_contained(page, html)

    # every table cell is the Markdown tables' value: the comparison table, the sweep's grid and head-to-head
    expected = md_tables(harness.compare([micro_sweep]))
    expected += md_tables((micro_sweep / "tables" / "grid.md").read_text())
    expected += md_tables((micro_sweep / "tables" / "versus.md").read_text())
    assert len(expected) == 3
    for table in expected:
        assert table in page.tables, table[0]
    comparison = page.tables[0]
    assert comparison == expected[0] and any("±" in c for row in comparison for c in row)

    # the figures are embedded PNGs: the comparison's and the sweep's gain figure
    images = [a for t, a in page.elements if t == "img"]
    alts = {a["alt"] for a in images}
    assert {"grid gain", "task scores"} <= alts, alts
    for img in images:
        assert base64.b64decode(str(img["src"]).split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"

    # the runs' metadata: config, versions, git sha, world fingerprint, cache keys
    text = " ".join(page.text)
    runs = [micro_sweep / c["run"] for c in json.loads((micro_sweep / "sweep.json").read_text())["cells"]]
    for run in runs:
        manifest = json.loads((run / "manifest.json").read_text())
        assert run.name in text and manifest["sandbox_world"]["fingerprint"] in text
        assert all(key in text for key in manifest["cache_keys"].values())
        assert f"torch {manifest['packages']['torch']}" in text
    assert "method:" in text and "max_steps: 12" in text  # config.yaml

    # the flips browser: one count row per pair and task, one document row per listed flip, each with filter keys
    counts = next(t for t in page.tables if t[0][:2] == ["pair", "task"] and "p_adj" in t[0])
    pairs = {row[0] for row in counts[1:]}
    assert "profuser seed 0 vs target-base" in pairs and "profuser seed 1 vs fusellm seed 1" in pairs
    assert len(counts) - 1 == (4 + 2) * 2  # 4 runs against their target, 2 seeds of profuser vs fusellm; 2 tasks
    found = harness.flips(f"{micro_sweep}:profuser@0", f"{micro_sweep}:fusellm@0", "sandbox_knowledge", limit=25)
    row = next(r for r in counts if r[:2] == ["profuser seed 0 vs fusellm seed 0", "sandbox_knowledge"])
    assert row[3:5] == [str(found.counts["a_only"]), str(found.counts["b_only"])] and row[7] == f"{found.p_adjusted:.2g}"
    docs = [a for t, a in page.elements if t == "tr" and a.get("class") == "flip"]
    listed = [a for a in docs if a["data-pair"] == "profuser seed 0 vs fusellm seed 0" and a["data-task"] == "sandbox_knowledge"]
    assert [a["data-group"] for a in listed] == [f.group for f in found.flips]
    for tag, attrs in page.elements:
        if tag == "select":
            assert attrs["id"] in ("f-task", "f-pair", "f-group")


def test_html_report_of_two_runs_holds_their_head_to_head(micro_sweep: Path, tmp_path: Path) -> None:
    cells = json.loads((micro_sweep / "sweep.json").read_text())["cells"]
    a, b = (micro_sweep / c["run"] for c in cells if c["seed"] == 0)
    html = harness.compare([a, b], "html")
    page = parse(html)
    assert_self_contained(page, html)
    versus = md_tables(harness.versus([a, b], "profuser", "fusellm"))
    assert len(versus) == 1 and versus[0] in page.tables
    assert md_tables(harness.compare([a, b]))[0] == page.tables[0]
    code = CliRunner().invoke(main, ["report", str(a), str(b), "--format", "html", "--versus", "profuser:fusellm"])
    assert code.exit_code == 2 and "--format html is the whole report" in code.output


def test_html_report_pairs_seed_replicates_once(micro_sweep: Path) -> None:
    """The sweep's cells named one by one: their head-to-head over both seeds is on the page; the sweep folder
    named: its own head-to-head table is, and no second copy of it."""
    runs = sorted((micro_sweep / "runs").iterdir())
    page = parse(harness.compare(runs, "html"))
    (over_seeds,) = md_tables(harness.versus(runs, "profuser", "fusellm"))
    assert over_seeds[0][3] == "seeds" and over_seeds in page.tables
    whole = parse(harness.compare([micro_sweep], "html"))
    (own,) = md_tables((micro_sweep / "tables" / "versus.md").read_text())
    assert sum(t[1:] == own[1:] for t in whole.tables) == 1  # its rows are the loose runs' over_seeds rows
    assert own[1:] == over_seeds[1:]


def test_runs_written_before_prompts_were_kept_and_schedules_apart(tmp_path: Path) -> None:
    # run folders laid out as older pipelines wrote them (no prompts file), two schedules of one method
    from tests.test_report import make_run

    runs = [make_run(tmp_path, "pro"), make_run(tmp_path, "rev", schedule="reversed"),
            make_run(tmp_path, "fuse", method="fusellm"), make_run(tmp_path, "plain", method=None, with_log=False)]  # fmt: skip
    html = harness.compare(runs, "html")
    page = parse(html)
    assert_self_contained(page, html)
    assert page.tables[0] == md_tables(harness.compare(runs))[0]
    counts = next(t for t in page.tables if t[0][:2] == ["pair", "task"] and "p_adj" in t[0])
    assert {row[0] for row in counts[1:]} == {
        "profuser (progressive) seed 0 vs target-base", "profuser (reversed) seed 0 vs target-base",
        "fusellm seed 0 vs target-base", "profuser (progressive) seed 0 vs profuser (reversed) seed 0",
        "profuser (progressive) seed 0 vs fusellm seed 0", "profuser (reversed) seed 0 vs fusellm seed 0"}  # fmt: skip
    docs = next(t for t in page.tables if t[0][:3] == ["pair", "task", "better"])
    assert len(docs) > 1 and all(row[4:8] == ["–"] * 4 for row in docs[1:])  # prompt, gold and answers unknown
