"""`harness flips` on real micro-world runs: the documents where two models differ, with their prompts and answers,
and the same p-value `harness report --versus` prints; across runs, across a sweep's points and seeds, and between
a fused model and its target inside one run."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import harness
from harness.analysis.report import head_to_head
from harness.cli import main
from tests.test_report import make_run

TASK = "sandbox_knowledge"  # where the micro world's short fusion changes answers


def _cli(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def _cells(sweep: Path) -> dict[tuple[str, int], Path]:
    """(method, seed) -> the cell's run directory."""
    out = {}
    for cell in json.loads((sweep / "sweep.json").read_text())["cells"]:
        run = sweep / cell["run"]
        summary = json.loads((run / "summary.json").read_text())
        out[(summary["method"], summary["seed"])] = run
    return out


def _scores(run: Path, label: str, task: str) -> dict[str, float]:
    rows = [json.loads(x) for x in (run / "eval" / label / f"{task}.jsonl").read_text().splitlines()]
    return {r["doc_hash"]: r["acc"] for r in rows}


def _texts(run: Path, label: str, task: str) -> dict[str, dict]:
    with gzip.open(run / "eval" / label / f"{task}.prompts.jsonl.gz", "rt") as fh:
        return {p["doc_hash"]: p for p in map(json.loads, fh)}


def test_flips_between_two_runs_list_each_document_and_print_the_versus_p_value(micro_sweep: Path) -> None:
    runs = _cells(micro_sweep)
    a, b = runs[("profuser", 0)], runs[("fusellm", 0)]
    found = harness.flips(a, b, TASK)
    sa, sb = _scores(a, "profuser", TASK), _scores(b, "fusellm", TASK)
    only_a = [h for h in sa if sa[h] == 1 and sb[h] == 0]
    only_b = [h for h in sa if sa[h] == 0 and sb[h] == 1]
    assert found.binary and found.n == len(sa) == 20
    assert found.counts == {"a_only": len(only_a), "b_only": len(only_b), "both": sum(sa[h] == sb[h] == 1 for h in sa),
                            "neither": sum(sa[h] == sb[h] == 0 for h in sa)}  # fmt: skip
    assert [f.doc_hash for f in found.group("a")] == only_a and [f.doc_hash for f in found.group("b")] == only_b
    assert only_a or only_b, "the two methods answered every document alike: nothing to list"
    # each listed document carries the prompt lm-eval built, the gold answer and each model's generated answer
    ta, tb = _texts(a, "profuser", TASK), _texts(b, "fusellm", TASK)
    for f in found.flips:
        assert (f.prompt, f.gold, f.answer_a, f.answer_b) == (ta[f.doc_hash]["prompt"], ta[f.doc_hash]["gold"],
                                                              ta[f.doc_hash]["answer"], tb[f.doc_hash]["answer"])  # fmt: skip
        assert f.prompt.startswith("Question: ") and f.gold and f.answer_a != f.answer_b
        assert (f.value_a, f.value_b) == ((1.0, 0.0) if f.group == "a" else (0.0, 1.0))

    # the p-value is the one `harness report --versus` computes and prints, through both entry points
    frame = head_to_head([a, b], "profuser", "fusellm")
    row = frame[frame["task"] == TASK].iloc[0]
    assert (found.p_value, found.p_adjusted, found.test) == (row["p_value"], row["p_adjusted"], "mcnemar-exact")
    code, versus = _cli(["report", str(a), str(b), "--versus", "profuser:fusellm"])
    assert code == 0, versus
    printed = next(line for line in versus.splitlines() if line.startswith(f"| {TASK} |")).split(" | ")[5]
    printed = printed.split(" (")[0]  # the value, without the note on what a non-significant row rules out
    code, text = _cli(["flips", str(a), str(b), "--task", TASK])
    assert code == 0, text
    summary = text.splitlines()[2]
    assert f"profuser right, fusellm wrong: {len(only_a)}" in summary and f"fusellm right, profuser wrong: {len(only_b)}" in summary
    assert f"p_adj {printed} (Holm across the 2 tasks both evaluated" in summary
    assert f"exact McNemar p {found.p_value:.4g}" in summary
    assert text.count("\ndoc ") == len(only_a) + len(only_b) and "  gold: " in text


def test_flips_across_a_sweep_by_point_and_seed(micro_sweep: Path) -> None:
    runs = _cells(micro_sweep)
    by_run = harness.flips(runs[("profuser", 1)], runs[("fusellm", 1)], TASK)
    by_sweep = harness.flips(f"{micro_sweep}:profuser@1", f"{micro_sweep}:fusellm@1", TASK)
    assert (by_sweep.a.run, by_sweep.b.run) == (runs[("profuser", 1)], runs[("fusellm", 1)])
    assert (by_sweep.a.name, by_sweep.b.name) == ("profuser@1", "fusellm@1")
    assert by_sweep.counts == by_run.counts and by_sweep.flips == by_run.flips and by_sweep.p_value == by_run.p_value
    # one grid point across two seeds
    across = harness.flips(f"{micro_sweep}:profuser@0", f"{micro_sweep}:profuser@1", TASK)
    s0, s1 = _scores(runs[("profuser", 0)], "profuser", TASK), _scores(runs[("profuser", 1)], "profuser", TASK)
    assert across.counts["a_only"] == sum(s0[h] > s1[h] for h in s0)
    code, out = _cli(["flips", f"{micro_sweep}:profuser", f"{micro_sweep}:fusellm@0", "-t", TASK])
    assert code == 2 and out.count("\n") == 1 and "seeds 0, 1; choose one" in out, out
    code, out = _cli(["flips", f"{micro_sweep}:averaging@0", f"{micro_sweep}:fusellm@0", "-t", TASK])
    assert code == 2 and "no grid point 'averaging' (have: profuser, fusellm)" in out, out


def test_flips_between_a_fused_model_and_its_target_match_the_runs_own_comparison(micro_sweep: Path) -> None:
    run = _cells(micro_sweep)[("profuser", 0)]
    found = harness.flips(run, f"{run}:target-base", TASK, limit=1)
    own = next(c for c in json.loads((run / "summary.json").read_text())["comparisons"] if c["task"] == TASK)
    assert (found.p_value, found.delta) == (own["p_value"], own["delta"])
    assert found.p_adjusted == own["p_adjusted"]  # the run's Holm family is its 2 tasks, as here
    assert len(found.group("a")) <= 1 and len(found.group("b")) <= 1  # --limit caps the lists, never the counts
    assert found.counts["a_only"] + found.counts["b_only"] >= len(found.flips)
    code, out = _cli(["flips", str(run), f"{run}:target-base", "-t", TASK, "--json", "--full"])
    assert code == 0, out
    data = json.loads(out)
    assert data["a"]["label"] == "profuser" and data["b"]["label"] == "target-base" and data["p_value"] == own["p_value"]
    assert [f["doc_hash"] for f in data["flips"]] == [f.doc_hash for f in harness.flips(run, f"{run}:target-base", TASK).flips]
    code, out = _cli(["flips", str(run), f"{run}:gpt2-safety", "-t", TASK])
    assert code == 2 and "has no results of 'gpt2-safety' (have: profuser, target-base)" in out, out
    code, out = _cli(["flips", str(run), f"{run}:target-base", "-t", "mmlu"])
    assert code == 2 and "did not evaluate task 'mmlu'" in out, out


def test_the_p_value_is_the_one_report_versus_prints_for_a_clear_difference(tmp_path: Path) -> None:
    # run folders shaped as the pipeline writes them, with a difference large enough that p is not 1
    a, b = make_run(tmp_path, "pro"), make_run(tmp_path, "fuse", method="fusellm", schedule="reversed")
    code, versus = _cli(["report", str(a), str(b), "--versus", "profuser:fusellm"])
    assert code == 0, versus
    for task in ("arith_gsm", "refusal", "harm_score"):
        printed = next(line for line in versus.splitlines() if line.startswith(f"| {task} |")).split(" | ")[5]
        printed = printed.split(" (")[0]
        code, text = _cli(["flips", str(a), str(b), "-t", task])
        assert code == 0 and f"p_adj {printed} (Holm across the 5 tasks both evaluated" in text.splitlines()[2], text
    assert float(printed) < 0.01


def test_continuous_metrics_list_the_largest_differences_and_old_files_say_answers_are_missing(tmp_path: Path) -> None:
    # run folders laid out as the pipeline wrote them before answers were kept (no prompts file beside the rows)
    a, b = make_run(tmp_path, "pro"), make_run(tmp_path, "fuse", method="fusellm", schedule="reversed")
    found = harness.flips(a, b, "harm_score", limit=3)
    assert not found.binary and found.test.startswith("permutation")
    diffs = [abs(f.difference) for f in found.group("a")]
    assert len(diffs) == 3 and diffs == sorted(diffs, reverse=True)
    rows = {json.loads(x)["doc_id"]: json.loads(x)["score"] for x in (a / "eval/profuser/harm_score.jsonl").read_text().splitlines()}
    other = {json.loads(x)["doc_id"]: json.loads(x)["score"] for x in (b / "eval/fusellm/harm_score.jsonl").read_text().splitlines()}
    largest = max((rows[d] - other[d] for d in rows), default=0)
    assert diffs[0] == pytest.approx(largest)
    assert found.counts["a_higher"] == sum(rows[d] > other[d] for d in rows)
    text = found.render()
    assert "## profuser higher (" in text and "the 3 largest differences" in text
    assert "(not recorded: evaluated before prompts and answers were kept)" in text
    assert re.search(r"permutation-(exact|mc) test p", found.summary_line())
