"""The paper's dry run on a machine without the hub: the whole plan first, then what is unavailable, exit 2.

Offline (HF_HUB_OFFLINE=1, an empty Hugging Face cache) and unreachable (no HF_HUB_OFFLINE, the hub endpoint a
closed local port): the same plan and list, after one short connection attempt instead of minutes of retries."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PAPER_MODELS = ("lmsys/vicuna-7b-v1.5", "meta-llama/Llama-2-7b-chat-hf", "mosaicml/mpt-7b-8k-chat",
                "OpenAssistant/reward-model-deberta-v3-large-v2")  # fmt: skip


def _dry_run(tmp_path: Path, shared_data: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    base = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    base.update(HF_HOME=str(tmp_path / "hf"), HARNESS_CACHE_DIR=str(tmp_path / "cache"), HARNESS_DATA_DIR=str(shared_data),
                COLUMNS="250", **env)  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--preset", "paper", "--dry-run"],
                          env=base, capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    return proc, time.perf_counter() - start


def _check_plan_then_unavailable(proc: subprocess.CompletedProcess[str], why: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    out = proc.stderr
    for stage in ("signals (training mode)", "signals (inference mode)", "3. train: profuser", "evaluate: arc_challenge",
                  "storage estimate", "train: ", "GPU-", "parameters: vicuna-7b-v1.5 7.0 B (name)"):  # fmt: skip
        assert stage in out, stage
    listing = out[out.index("unavailable here (6 model(s)"):]
    assert out.index("4. evaluate") < out.index("unavailable here (6 model(s)")  # the plan comes first
    for model in PAPER_MODELS:
        assert f"hub id '{model}' is not in the local Hugging Face cache and {why}" in listing
    last = out.strip().splitlines()[-1]  # the one error line, as without the plan: every model and why
    assert last.startswith("harness: config: cannot load 6 model(s): target.path (hub id 'lmsys/vicuna-7b-v1.5'")
    assert [line for line in out.splitlines() if line.startswith("harness: ")] == [last]
    assert "Traceback" not in out and "Retrying" not in out


def test_offline_dry_run_prints_the_plan_then_lists_the_unavailable_models(tmp_path: Path, shared_data: Path) -> None:
    proc, _ = _dry_run(tmp_path, shared_data, HF_HUB_OFFLINE="1")
    _check_plan_then_unavailable(proc, "HF_HUB_OFFLINE is set")


@pytest.mark.skipif(sys.platform == "win32", reason="a closed local port refuses differently there")
def test_an_unreachable_hub_fails_fast_with_one_attempt(tmp_path: Path, shared_data: Path) -> None:
    proc, seconds = _dry_run(tmp_path, shared_data, HF_ENDPOINT="http://127.0.0.1:9")  # discard port: nothing listens
    _check_plan_then_unavailable(proc, "the hub did not answer (one attempt, 3 s)")
    assert seconds < 90  # imports under load; the retries it replaces took minutes
