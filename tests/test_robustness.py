"""Reliability with real fault injection: a run killed with SIGKILL at several points resumes from its cache and
ends with the same summary as an uninterrupted run; concurrent runs share a cache safely; a full disk, bad input
and unsafe YAML fail with one line; the same seed gives the same numbers."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.store import atomic_write_text, new_run_dir

ARGS = [
    "run", "--method", "profuser", "--tasks", "sandbox", "--limit", "8", "-q",
    "--set", "sandbox.size=micro", "--set", "corpus.limit=64", "--set", "signals.shard_size=16",
    "--set", "train.max_steps=16", "--set", "train.checkpoint_every=4", "--set", "train.batch_size=4",
]  # fmt: skip
VOLATILE = ("run_id", "timings_s")


def _start(cwd: Path, cache: Path, extra: list[str] | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, HARNESS_CACHE_DIR=str(cache))
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *ARGS, *(extra or []), "--out", "results"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> None:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]


def _summary(cwd: Path) -> dict:
    runs = sorted((cwd / "results").iterdir(), key=lambda p: p.stat().st_mtime)
    done = [r for r in runs if (r / "summary.json").is_file()]
    data = json.loads((done[-1] / "summary.json").read_text())
    return {k: v for k, v in data.items() if k not in VOLATILE}


def _kill_when(proc: subprocess.Popen[str], ready, timeout: float = 600) -> bool:  # type: ignore[no-untyped-def]
    """SIGKILL the process as soon as `ready()` holds; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("fault point never reached")


def _count(root: Path, pattern: str) -> int:
    return len(list(root.glob(pattern))) if root.exists() else 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, micro_world) -> tuple[Path, dict]:  # type: ignore[no-untyped-def]
    """An uninterrupted run with its own cache (the micro world is copied in, so only the run stages differ)."""
    import shutil

    root = tmp_path_factory.mktemp("reference")
    cache = root / "cache"
    shutil.copytree(micro_world.root.parent.parent, cache)  # <cache>/sandbox/<key> -> the whole cache
    for stage in ("signals", "train", "eval"):
        shutil.rmtree(cache / stage, ignore_errors=True)
    _finish(_start(root, cache))
    return cache, _summary(root)


POINTS = {
    # a signals shard of some source has been written
    "signals": lambda cache: _count(cache / "signals", "**/shard-*.parquet") >= 2,
    # a training checkpoint exists
    "train": lambda cache: _count(cache / "train", "*/checkpoints/step-*") >= 1,
    # some evaluation results were cached
    "evaluate": lambda cache: _count(cache / "eval", "*/score.json") >= 2,
}


@pytest.mark.parametrize("point", ["signals", "train", "evaluate"])
def test_kill_and_resume(point: str, reference: tuple[Path, dict], tmp_path: Path) -> None:
    _kill_and_resume(point, reference, tmp_path)


def _kill_and_resume(point: str, reference: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    ref_cache, ref_summary = reference
    cache = tmp_path / "cache"
    shutil.copytree(ref_cache / "sandbox", cache / "sandbox")  # the world only: signals, training, eval redone
    proc = _start(tmp_path, cache)
    assert _kill_when(proc, lambda: POINTS[point](cache)), f"the run finished before the {point} fault point"
    assert not any((d / "summary.json").exists() for d in (tmp_path / "results").iterdir())
    _finish(_start(tmp_path, cache))  # the same command again
    assert _summary(tmp_path) == ref_summary  # results lost: none; numbers identical
    run = next(d for d in (tmp_path / "results").iterdir() if (d / "summary.json").exists())
    checksums = json.loads((run / "manifest.json").read_text())["checksums"]
    assert "summary.json" in checksums and any(k.startswith("eval/") for k in checksums)


def test_two_runs_share_one_cache_concurrently(reference: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    ref_cache, ref_summary = reference
    cache = tmp_path / "cache"
    shutil.copytree(ref_cache / "sandbox", cache / "sandbox")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    procs = [_start(a, cache), _start(b, cache)]
    for p in procs:
        _finish(p)
    assert _summary(a) == ref_summary and _summary(b) == ref_summary


def test_different_seed_changes_training(reference: tuple[Path, dict], tmp_path: Path) -> None:
    ref_cache, _ = reference
    (ref_log,) = (ref_cache / "train").glob("*/train_log.jsonl")  # the reference run's (seed 0) training
    baseline = [json.loads(x)["loss"] for x in ref_log.read_text().splitlines()]
    _finish(_start(tmp_path, ref_cache, ["--seed", "7"]))
    run = next((tmp_path / "results").iterdir())
    seeded = [json.loads(x)["loss"] for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert len(seeded) == len(baseline) and seeded != baseline


def test_full_disk_is_one_line_and_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "summary.json"
    target.write_text("old")
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fh):  # type: ignore[no-untyped-def]
            self.fh = fh

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc):  # type: ignore[no-untyped-def]
            self.fh.close()

        def write(self, data):  # type: ignore[no-untyped-def]
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r": Full(real_fdopen(fd, mode)))
    with pytest.raises(HarnessError) as info:
        atomic_write_text(target, "new")
    assert "no space left" in info.value.one_line() and "\n" not in info.value.one_line()
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left behind


def test_run_directories_are_never_reused(tmp_path: Path) -> None:
    dirs = {new_run_dir(tmp_path, "profuser") for _ in range(5)}
    assert len(dirs) == 5 and all(d.is_dir() for d in dirs)


def test_remote_code_is_off_unless_asked() -> None:
    from harness.config import load_experiment

    exp = load_experiment("paper")
    assert not exp.target.trust_remote_code and not any(s.trust_remote_code for s in exp.sources)
