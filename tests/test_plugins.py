"""A method from an outside package: docs/plugins.md's worked example, pip-installed from a temporary folder,
is listed, validated with its own parameter and trained, as a user would run it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _block(language: str, holding: str) -> str:
    """The one code block of docs/plugins.md in `language` that holds `holding`."""
    blocks = re.findall(rf"```{language}\n(.*?)```", (REPO / "docs" / "plugins.md").read_text(), flags=re.S)
    found = [b for b in blocks if holding in b]
    assert len(found) == 1, f"docs/plugins.md has {len(found)} {language} blocks holding {holding!r}"
    return found[0]


def test_the_guides_example_installs_lists_validates_and_trains(tmp_path: Path, session_cache: Path, micro_world) -> None:  # type: ignore[no-untyped-def]
    package = tmp_path / "my-fusion"
    package.mkdir()
    (package / "my_fusion.py").write_text(_block("python", "register_method("))
    (package / "pyproject.toml").write_text(_block("toml", '"harness.methods"'))
    site = tmp_path / "site"  # installed beside the shared environment, never into it
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(package)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert any(site.glob("my_fusion-*.dist-info/entry_points.txt"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(site)]), HARNESS_CACHE_DIR=str(session_cache))

    def harness(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=900)  # fmt: skip

    listed = harness("methods", "--verbose")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "top-fuse" in listed.stdout and "keep" in listed.stdout and "Teacher entries kept" in listed.stdout
    micro = ["--set", "sandbox.size=micro"]
    planned = harness("run", "-m", "top-fuse", "-t", "sandbox", *micro, "--set", "method.keep=5", "--dry-run")
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert "train: top-fuse (keep 5)" in planned.stderr
    typo = harness("run", "-m", "top-fuse", "-t", "sandbox", *micro, "--set", "method.kepp=5", "--dry-run")
    assert typo.returncode == 2 and typo.stderr.count("\n") == 1
    assert "method 'top-fuse' has no parameter 'kepp'; its own: keep" in typo.stderr
    bad = harness("run", "-m", "top-fuse", "-t", "sandbox", *micro, "--set", "method.keep=0", "--dry-run")
    assert bad.returncode == 2 and "method.keep" in bad.stderr

    trained = harness("run", "-m", "top-fuse", "-t", "sandbox_knowledge", "--limit", "2", "--out", "results", "-q",
                      *micro, "--set", "train.max_steps=2", "--set", "corpus.limit=8", "--set", "method.keep=2",
                      "--set", "eval.compare_sources=false")  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run,) = (tmp_path / "results").iterdir()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "done" and "method:top-fuse" in manifest["code"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "top-fuse" and summary["parameters"] == {"keep": 2}
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and log[-1]["weights"]["keep"] == 2 and "fuse_train" in log[-1]["components"]
