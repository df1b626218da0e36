"""Caches that see code: editing a method's loss (in a copy of the tree) trains again, an unchanged tree reuses
the trained model, and the manifest records each plugin's code hash."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FUSELLM_LOSS = "total = spec.lam * ce + (1.0 - spec.lam) * fuse"


def _copy_tree(dest: Path) -> Path:
    """The project's packages in `dest` (no caches, no git), importable first on PYTHONPATH."""
    for package in ("harness", "methods", "tasks"):
        shutil.copytree(REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _python(tree: Path, code: str, cache: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(tree), HARNESS_CACHE_DIR=str(cache))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path.name} no longer holds {old!r}"
    path.write_text(text.replace(old, new))


def test_code_hash_follows_a_module_and_what_it_imports(tmp_path: Path, session_cache: Path) -> None:
    tree = _copy_tree(tmp_path / "tree")
    show = ("from harness.code_identity import code_hash; from harness.signals.extract import signals_code_hash; "
            "print(code_hash('methods.fusellm'), code_hash('methods.profuser'), code_hash('methods.uld'), "
            "signals_code_hash('span'), signals_code_hash('dtw-exact'))")  # fmt: skip
    before = _python(tree, show, session_cache).split()
    _edit(tree / "methods" / "fusellm.py", FUSELLM_LOSS, FUSELLM_LOSS.replace("total = ", "total = 0.5 * "))
    after = _python(tree, show, session_cache).split()
    # fusellm and profuser (which imports fusellm's training loss) change; uld and the signals do not
    assert [a != b for a, b in zip(before, after, strict=True)] == [True, True, False, False, False]
    alignment = tree / "harness" / "signals" / "alignment.py"
    alignment.write_text(alignment.read_text() + "# edited\n")  # the built-in alignments' module
    edited = _python(tree, show, session_cache).split()
    assert edited[:3] == after[:3] and edited[3] != after[3] and edited[4] != after[4]


def test_editing_a_loss_trains_again_and_an_unchanged_tree_reuses(tmp_path: Path, session_cache: Path, micro_world) -> None:  # type: ignore[no-untyped-def]
    tree = _copy_tree(tmp_path / "tree")
    args = ["run", "-m", "fusellm", "-t", "sandbox_knowledge", "--limit", "2", "--out", str(tmp_path / "results"), "-q",
            "--set", "sandbox.size=micro", "--set", "train.max_steps=2", "--set", "corpus.limit=8",
            "--set", "eval.compare_sources=false"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(tree), HARNESS_CACHE_DIR=str(session_cache))

    def run() -> tuple[str, dict]:  # type: ignore[type-arg]
        proc = subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=tree, env=env, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        newest = max((tmp_path / "results").iterdir(), key=lambda d: d.stat().st_mtime_ns)
        return proc.stderr, json.loads((newest / "manifest.json").read_text())

    _, manifest = run()  # trains, or reuses what an earlier session trained from this very tree
    summary = json.loads((max((tmp_path / "results").iterdir(), key=lambda d: d.stat().st_mtime_ns) / "summary.json").read_text())
    assert "schedule" not in summary and summary["parameters"] == {}  # FuseLLM has no schedule and no own parameter
    # an edit no earlier session made: a kept cache (HARNESS_CACHE_DIR) cannot hold its model yet
    edit = FUSELLM_LOSS.replace("total = ", "total = 0.5 * ") + f"  # {uuid.uuid4().hex}"
    _edit(tree / "methods" / "fusellm.py", FUSELLM_LOSS, edit)
    edited_run, edited = run()
    assert "train: reusing the trained model" not in edited_run  # trained: its key names no model in the cache
    assert edited["cache_keys"]["train"] != manifest["cache_keys"]["train"]
    assert edited["code"]["method:fusellm"] != manifest["code"]["method:fusellm"]
    assert edited["code"]["training"] == manifest["code"]["training"]  # the loop did not change
    assert edited["cache_keys"]["signals.training"] == manifest["cache_keys"]["signals.training"]  # nor the signals
    unchanged_run, again = run()
    assert "train: reusing the trained model" in unchanged_run and again["cache_keys"]["train"] == edited["cache_keys"]["train"]
