"""The GPU check's own logic on CPU: `python -m harness.bench.gpu --tiny` (what `nox -s gpu` runs, tiny model).

It runs the fusion step and the chunked-vs-full extraction, checks itself and writes its JSON; the GPU-only
sections (generation, pipeline, FSDP) are left out in this mode, and without --tiny it refuses a machine
without CUDA in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from harness.bench import gpu
from harness.signals import teacher


def test_tiny_gpu_check_runs_checks_itself_and_writes_its_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "gpu.json"
    monkeypatch.setattr(sys, "argv", ["gpu", "--tiny", "--out", str(out)])
    chunk = teacher.CHUNK_LOGITS
    gpu.main()
    assert teacher.CHUNK_LOGITS == chunk  # the tiny mode's smaller chunks do not leak into the process
    figures = json.loads(out.read_text())["figures"]
    assert figures["tiny"] and set(figures["section_seconds"]) == {"fusion_step", "extraction"}
    assert figures["checks"] and all(figures["checks"].values()), figures["checks"]
    assert figures["fusion_step"]["params"] > 0 and figures["fusion_step"]["tokens_per_s"] > 0
    ext = figures["extraction"]
    assert ext["chunked"]["peak_extra_mb"] < ext["full_logits"]["peak_extra_mb"] / 4  # 1M-logit chunks vs 16M logits


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: the full check would run")
def test_the_full_check_refuses_a_machine_without_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["gpu", "--out", str(tmp_path / "gpu.json")])
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        gpu.main()
    assert not (tmp_path / "gpu.json").exists()
