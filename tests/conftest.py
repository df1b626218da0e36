"""Shared fixtures: offline hub settings, one cache per test session, the micro sandbox world built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path | None:
    """The local benchmark data (HARNESS_DATA_DIR, else ../shared/data beside the checkout), or None."""
    env = os.environ.get("HARNESS_DATA_DIR")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if candidate.is_dir():
            return candidate.resolve()
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    found = data_dir()
    if found is None:
        pytest.skip("no local benchmark data: set HARNESS_DATA_DIR to a folder laid out as shared/data")
    return found


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One content-addressed cache for the whole session (HARNESS_CACHE_DIR if set, so CI can keep it);
    exported so that code under test never writes to the user's own cache."""
    env = os.environ.get("HARNESS_CACHE_DIR")
    path = Path(env) if env else tmp_path_factory.mktemp("harness-cache")
    path.mkdir(parents=True, exist_ok=True)
    os.environ["HARNESS_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def micro_world(session_cache: Path):  # type: ignore[no-untyped-def]
    from harness.sandbox.build import build_world

    return build_world(size="micro", seed=0, cache_dir=session_cache, progress=False)


@pytest.fixture(scope="session")
def micro_sweep(session_cache: Path, tmp_path_factory: pytest.TempPathFactory, micro_world) -> Path:  # type: ignore[no-untyped-def]
    """One finished sweep on the micro world, run once per session through the CLI for the tests that read real
    run folders (flips, the HTML report): ProFuser and FuseLLM, seeds 0 and 1, the knowledge and safety skills at
    20 documents each (micro reasoning is at the floor for every model). Its folder holds sweep.json,
    summary.json, tables/, plots/ and the four cells' runs/."""
    import subprocess
    import sys

    cwd = tmp_path_factory.mktemp("micro-sweep")
    args = ["sweep", "--grid", "method.name=profuser,fusellm", "--seeds", "0,1", "-t", "sandbox_knowledge,sandbox_safety",
            "--limit", "20", "--set", "sandbox.size=micro", "--set", "train.max_steps=12", "--set", "corpus.limit=64",
            "--set", "eval.compare_sources=false", "-q", "--out", "r"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, HARNESS_CACHE_DIR=str(session_cache)), timeout=1500)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = list((cwd / "r").glob("sweep-*/"))
    return folder
