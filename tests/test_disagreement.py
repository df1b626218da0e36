"""The disagreement dial (harness/sandbox/disagreement.py): off, it is today's world bit for bit; on, the mimic
source wins MinCE on formulaic references while the judges prefer whoever answers right, as measured by
`harness signals inspect` on the micro world."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import load_experiment
from harness.errors import HarnessError
from harness.sandbox import disagreement as dial
from harness.sandbox.build import RECIPES, build_world, world_key
from harness.sandbox.scoring import judge
from harness.sandbox.skills import generate_splits


def test_the_dial_at_zero_is_todays_world_and_any_other_value_another_world() -> None:
    for size in RECIPES:
        assert world_key(size, 0) == world_key(size, 0, 0.0)
        assert len({world_key(size, 0), world_key(size, 0, 0.25), world_key(size, 0, 0.5)}) == 3
    assert dial.key_part(0.0) == {}
    assert load_experiment("study").sandbox.disagreement == 0.0  # type: ignore[union-attr]
    with pytest.raises(HarnessError, match="disagreement"):
        load_experiment("study", {"sandbox.disagreement": 1.5})


def test_the_formulaic_share_follows_the_dial_and_never_changes_what_is_judged() -> None:
    corpus = generate_splits(0, RECIPES["default"].sizes).corpus
    chosen: list[set[str]] = []
    for d in (0.0, 0.25, 0.5, 1.0):
        rows = dial.formulaic_corpus(corpus, 0, d)
        picked = {r.id for r in rows if r.reference.endswith(dial.FORMULA)}
        assert len(picked) / len(corpus) == pytest.approx(d, abs=0.02)
        chosen.append(picked)
        for row, old in zip(rows, corpus, strict=True):
            assert row.prompt == old.prompt and row.reference.startswith(old.reference)
            # the judge reads the same key answer from either reference
            assert judge(old.reference, row.reference, row.skill) == 1.0
    assert chosen[0] <= chosen[1] <= chosen[2] <= chosen[3]  # a larger dial keeps every item a smaller one chose


def _harness(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HARNESS_CACHE_DIR=str(cache))
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1200)  # fmt: skip


def test_the_dial_moves_min_ce_away_from_the_judge_on_the_micro_world(tmp_path: Path, session_cache: Path, micro_world) -> None:  # type: ignore[no-untyped-def]
    on = build_world("micro", 0, session_cache, progress=False, disagreement=1.0)
    # only the mimic is retrained; the other sources are the world at 0's bytes
    for name, folder in on.models.items():
        same = (folder / "model.safetensors").read_bytes() == (micro_world.models[name] / "model.safetensors").read_bytes()
        assert same == (name != dial.MIMIC), name
    rows = [json.loads(line) for line in on.corpus_path.read_text().splitlines()]
    assert all(r["reference"].endswith(dial.FORMULA) for r in rows)

    measured = {}
    for d in ("0", "1"):  # 40 examples, short generations: the key answers come first
        proc = _harness(["run", "-m", "profuser", "--set", "sandbox.size=micro", "--set", f"sandbox.disagreement={d}",
                         "--set", "corpus.limit=40", "--set", "signals.max_new_tokens=32", "--set", "train.max_steps=1",
                         "--limit", "1", "-t", "sandbox_knowledge", "--set", "eval.compare_sources=false",
                         "--out", "r" + d, "-q"], tmp_path, session_cache)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        (run,) = (tmp_path / ("r" + d)).iterdir()
        shown = _harness(["signals", "inspect", str(run), "--json"], tmp_path, session_cache)
        assert shown.returncode == 0, shown.stderr[-2000:]
        measured[d] = json.loads(shown.stdout)["disagreement"]
    table = _harness(["signals", "inspect", str(run)], tmp_path, session_cache).stdout
    assert "MinCE vs judge" in table and "knowledge" in table
    off, full = measured["0"], measured["1"]
    assert off["overall"]["n"] == full["overall"]["n"] == 40
    assert off["knowledge"]["disagreement"] == 0.0 and off["overall"]["disagreement"] < 0.15
    assert full["knowledge"]["disagreement"] > 0.8  # the target answers right, the fluent mimic wins MinCE
    assert full["overall"]["disagreement_decisive"] > 0.4
