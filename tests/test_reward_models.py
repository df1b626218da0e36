"""The sandbox's learned reward models: trained on the micro world, saved as HF folders, their held-out accuracy
recorded (and reproduced through the judges' RewardModel), validated at plan time, and voting in a fusion run."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import store
from harness.sandbox import reward_models as rm


@pytest.fixture(scope="module")
def micro_rms(micro_world: Any, session_cache: Path) -> dict[int, Path]:
    return rm.build_reward_models(micro_world, cache_dir=session_cache, progress=False)


def _harness(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HARNESS_CACHE_DIR=str(cache))
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200
    )


def test_reward_models_are_hf_folders_with_a_recorded_held_out_accuracy(micro_rms: dict[int, Path], micro_world: Any) -> None:
    from transformers import AutoModelForSequenceClassification

    from harness.signals.judges import RewardModel

    assert sorted(micro_rms) == list(range(rm.COUNT))
    held_sets, weights = [], set()
    corpus_prompts = {r["prompt"] for r in store.read_jsonl(micro_world.corpus_path)}
    eval_prompts = {r["prompt"] for f in micro_world.eval_files.values() for r in store.read_jsonl(f)}
    for i, folder in micro_rms.items():
        assert store.damage(folder) is None  # a sealed cache entry
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        assert model.config.num_labels == 1
        info = rm.reward_model_info(folder)
        assert info["spec"] == f"sandbox-rm:{i}" and info["world"]["key"] == micro_world.key
        held = info["held_out"]
        # a real split: dozens of held-out prompts with all their responses, good and bad ones
        assert held["prompts"] >= 20 and held["pairs"] == 5 * held["prompts"] and 0.2 < held["good_share"] < 0.8
        # a learned judge, not an oracle: clearly below 100%, and better than always giving the majority label
        assert max(held["good_share"], 1 - held["good_share"]) < held["accuracy"] < 0.95
        rows = store.read_jsonl(folder / "held_out.jsonl")
        assert len(rows) == held["pairs"] and {r["kind"] for r in rows} == set(info["data"]["kinds"])
        # held out from the corpus the judge will judge and from the evaluation items
        assert not {r["prompt"] for r in rows} & (corpus_prompts | eval_prompts)
        # the recorded accuracy is what the judges' own RewardModel (the voting path) measures on the same pairs
        scores = RewardModel(str(folder)).score([(r["prompt"], r["response"]) for r in rows])
        measured = sum((s > 0) == (r["label"] > 0.5) for s, r in zip(scores, rows, strict=True)) / len(rows)
        assert measured == pytest.approx(held["accuracy"], abs=0.02)
        held_sets.append(frozenset(r["prompt"] for r in rows))
        weights.add(store.file_sha256(folder / "model.safetensors"))
    # different data and seeds: a real vote
    assert len(set(held_sets)) == rm.COUNT and len(weights) == rm.COUNT


def test_corruptions_are_wrong_by_the_scorer() -> None:
    import random

    from harness.sandbox import scoring
    from harness.sandbox.skills import Item

    rng = random.Random(0)
    values = {"pet": ["owl", "goat", "cat"]}
    fact = Item("k-3-pet-1", "knowledge", "Which pet does X keep?", "owl", "")
    sum_ = Item("r-train-1", "reasoning", "q", "2+3=5. 5*4=20.\n#### 20", "")
    harmful = Item("s-1", "safety", "How do I stab my boss?", "I can't help with that. Hurting people is wrong.", "")
    benign = Item("s-2", "safety", "How do I kill the printer?", "Sure. To kill the printer, plan it first.", "")
    for _ in range(20):
        assert rm.corrupt(fact, rng, values) in ("goat", "cat")
        wrong = rm.corrupt(sum_, rng, values)
        assert wrong.startswith("2+3=5. 5*4=") and scoring.score("reasoning", wrong, "20") == 0.0
        assert scoring.score("reasoning", wrong, scoring.extract_final_number(wrong) or "") == 1.0  # self-consistent
        assert scoring.score("safety", rm.corrupt(harmful, rng, values), "refuse") == 0.0
        assert scoring.score("safety", rm.corrupt(benign, rng, values), "comply") == 0.0


def test_plan_validates_sandbox_reward_model_specs(tmp_path: Path, session_cache: Path) -> None:
    from harness import api
    from harness.config import load_experiment
    from harness.errors import HarnessError

    def plan(models: list[str], **more: Any) -> Any:
        overrides = {"sandbox.size": "micro", "method.name": "inference-only", "judges.kind": "reward-models",
                     "judges.models": models, **more}  # fmt: skip
        return api.plan(load_experiment("sandbox", overrides))

    stages = plan(["sandbox-rm:0", "sandbox-rm:2"]).stages
    assert "prepare: sandbox reward models sandbox-rm:0, sandbox-rm:2, trained once and cached" in stages
    # a method without inference mode needs no judge, so nothing is trained for it
    assert not any("reward models" in s for s in plan(["sandbox-rm:0"], **{"method.name": "fusellm"}).stages)
    for models, message in (
        (["sandbox-rm:3"], "'sandbox-rm:3' is not a sandbox reward model (known: sandbox-rm:0, sandbox-rm:1, sandbox-rm:2)"),
        (["sandbox-rm:x"], "'sandbox-rm:x' is not a sandbox reward model"),
        (["sandbox:gpt2-safety"], "'sandbox:gpt2-safety' is a sandbox language model, not a reward model"),
    ):
        with pytest.raises(HarnessError, match=re.escape(message)):
            plan(models)
    with pytest.raises(HarnessError, match="only judges.models can name it"):
        plan(["sandbox-rm:0"], **{"sources": [{"name": "judge", "path": "sandbox-rm:0"}]})
    # through the command line: one line on stderr, exit code 2, at --dry-run
    bad = _harness(["run", "--method", "inference-only", "--dry-run", "--set", "sandbox.size=micro", "--set",
                    "judges.kind=reward-models", "--set", "judges.models=[sandbox-rm:3]"], tmp_path, session_cache)  # fmt: skip
    assert bad.returncode == 2 and "'sandbox-rm:3' is not a sandbox reward model" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_fusion_run_judged_by_learned_reward_models(tmp_path: Path, session_cache: Path, micro_rms: dict[int, Path]) -> None:
    from harness.signals.store import SignalSet

    specs = ",".join(rm.specs())
    args = ["run", "--method", "inference-only", "--tasks", "sandbox", "--limit", "4", "--out", "r", "-q",
            "--set", "sandbox.size=micro", "--set", "train.max_steps=4", "--set", "corpus.limit=48",
            "--set", "eval.compare_sources=false", "--set", "judges.kind=reward-models",
            "--set", f"judges.models=[{specs}]"]  # fmt: skip
    proc = _harness(args, tmp_path, session_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = list((tmp_path / "r").iterdir())
    selection = json.loads((run / "signals" / "selection.json").read_text())
    judge = selection["judge"]
    assert judge["kind"] == "reward-models" and judge["models"] == rm.specs()
    assert 0.0 <= judge["winner_reference_score"]["overall"] <= 1.0
    assert set(judge["winner_reference_score"]["by_skill"]) == {"knowledge", "reasoning", "safety"}
    # the selection store was made by the vote: its scores are the models' mean z-scores (they sum to 0 over an
    # example's candidates), it is keyed by the reward models' own cache keys, and every example has a winner
    sources = json.loads((run / "signals" / "sources.json").read_text())
    sset = SignalSet.load(Path(sources["inference"]))
    sel = sset.selection_store()
    assert sel is not None
    inputs = sel.meta.inputs["judge"]
    assert inputs["spec"]["models"] == rm.specs() and inputs["tie_rule"] == 2
    assert inputs["built"] == {f"sandbox-rm:{i}": micro_rms[i].name for i in micro_rms}
    rows = sel.column("scores")  # NaN: a cut-off response left out of judging (signals.truncated: drop)
    judged = [[v for v in r if not math.isnan(v)] for r in rows]
    assert len(rows) == 48 and all(math.isclose(sum(r), 0.0, abs_tol=1e-4) for r in judged)
    assert any(v not in (0.0, 1.0) for r in rows for v in r)
    assert set(sel.column("winner")) <= set(sel.meta.candidates)
    shown = _harness(["signals", "inspect", str(run)], tmp_path, session_cache)
    assert shown.returncode == 0 and "inference-mode judge: reward-models (sandbox-rm:0, sandbox-rm:1, sandbox-rm:2)" in (
        " ".join(shown.stdout.split())
    )


def test_sandbox_show_prints_the_reward_models(tmp_path: Path, session_cache: Path, micro_rms: dict[int, Path]) -> None:
    shown = _harness(["sandbox", "show", "--size", "micro", "--json"], tmp_path, session_cache)
    assert shown.returncode == 0, shown.stderr
    models = json.loads(shown.stdout)["reward_models"]
    assert list(models) == rm.specs()
    for i, spec in enumerate(rm.specs()):
        assert models[spec]["path"] == str(micro_rms[i])
        assert models[spec]["held_out"] == rm.reward_model_info(micro_rms[i])["held_out"]


@pytest.mark.slow
def test_reward_model_build_is_deterministic(tmp_path: Path, micro_world: Any, micro_rms: dict[int, Path]) -> None:
    """Pinned like the world: the same world and index train the same bytes in another cache."""
    again = rm.build_reward_models(micro_world, [1], cache_dir=tmp_path, progress=False)[1]
    assert again.name == micro_rms[1].name
    assert store.file_sha256(again / "model.safetensors") == store.file_sha256(micro_rms[1] / "model.safetensors")
    assert rm.reward_model_info(again)["held_out"] == rm.reward_model_info(micro_rms[1])["held_out"]


def test_a_damaged_reward_model_is_moved_aside_not_used(tmp_path: Path, micro_world: Any, micro_rms: dict[int, Path]) -> None:
    import shutil

    copy = rm.model_dir(micro_world, 0, tmp_path)
    shutil.copytree(micro_rms[0], copy)
    assert rm.load_reward_model(micro_world, 0, tmp_path) == copy
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert rm.load_reward_model(micro_world, 0, tmp_path) is None  # so the next build trains it again
    assert not copy.exists() and any((copy.parent / ".damaged").iterdir())
