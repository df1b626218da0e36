"""The shots a plan states are the shots in every prompt lm-eval builds, offline too, for every real task.

Runs `harness eval` (through harness.api.evaluate, which the CLI calls) with the micro sandbox world's target on
the local benchmark data, reads back the prompts lm-eval built (`<task>.prompts.jsonl.gz` beside each per-sample
file) and counts the demonstrations in them. lm-eval never overrides a task config's explicit `num_fewshot`, so
a task definition that pins one would silently run other settings: this is what the test guards against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness import api
from harness.config import SandboxSpec
from harness.evaluation.evaluate import read_prompts
from harness.evaluation.task_catalog import LEADERBOARD_FEWSHOT

REAL_TASKS = ("mmlu", "arc_challenge", "hellaswag", "winogrande", "gsm8k", "truthfulqa", "advbench", "xstest")
FIXED_ZERO = {"truthfulqa", "advbench", "xstest"}  # defined zero-shot: --num-fewshot does not apply


def demonstrations(task: str, prompt: str) -> int:
    """Demonstrations in a prompt, counted from the format lm-eval joins them in (fewshot delimiter "\\n\\n")."""
    if task in ("mmlu", "arc_challenge", "gsm8k"):  # each demonstration and the question end in "Answer:"
        return prompt.count("\nAnswer:") - 1 if task != "arc_challenge" else prompt.count("Question: ") - 1
    if task in ("hellaswag", "winogrande"):  # "<context> <ending>\n\n" per demonstration, then the document
        return prompt.count("\n\n")
    if task == "truthfulqa":  # the fixed 6-QA preamble, then the question: more "Q:" would be demonstrations
        return prompt.count("\n\nQ: ") - 6
    return prompt.count("\n\n")  # advbench, xstest: the request alone


def _run(micro_world: Any, out: Path, tasks: list[str], shots: int | None) -> dict[str, Any]:
    del micro_world  # built once per session by the fixture; api.evaluate finds it in the cache
    run = api.evaluate("sandbox:llama-knowledge", tasks, limit=2, num_fewshot=shots, out=out, progress=False,
                       sandbox=SandboxSpec(size="micro"))  # fmt: skip
    label_dir = run.dir / "eval" / run.summary["label"]
    found: dict[str, Any] = {}
    for task in run.summary["tasks"]:
        rows = [json.loads(x) for x in (label_dir / f"{task}.jsonl").read_text().splitlines()]
        prompts = read_prompts(label_dir, task)
        assert [p["doc_hash"] for p in prompts] == [r["doc_hash"] for r in rows]
        found[task] = {
            "summary": run.summary["tasks"][task]["shots"],
            "rows": {r["shots"] for r in rows},
            "prompts": [demonstrations(task, p["prompt"]) for p in prompts],
        }
    return found


@pytest.mark.parametrize("shots", [0, 2])
def test_every_prompt_has_the_planned_shots(micro_world: Any, shared_data: Path, tmp_path: Path, shots: int) -> None:
    found = _run(micro_world, tmp_path, list(REAL_TASKS), shots)
    assert list(found) == list(REAL_TASKS)
    for task, got in found.items():
        want = 0 if task in FIXED_ZERO else shots
        assert got == {"summary": want, "rows": {want}, "prompts": [want, want]}, task


def test_the_leaderboard_group_runs_the_leaderboards_shots(
    micro_world: Any, shared_data: Path, tmp_path: Path
) -> None:
    found = _run(micro_world, tmp_path, ["leaderboard"], None)
    assert {t: g["prompts"][0] for t, g in found.items()} == LEADERBOARD_FEWSHOT
    assert {t: g["summary"] for t, g in found.items()} == LEADERBOARD_FEWSHOT
