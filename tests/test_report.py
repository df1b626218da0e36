"""Tables and plots built from synthetic run directories laid out as the pipeline writes them."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from harness.analysis.report import (
    build_ablation_table,
    build_table,
    render,
    tex_escape,
    to_rich,
    write_tables,
)
from harness.analysis.stats import compare_runs, holm
from harness.errors import HarnessError
from methods.schedules import ScheduleSpec

# task -> (category, metric, binary); names with '_' exercise LaTeX escaping
TASKS = {
    "facts_qa": ("knowledge", "acc", True),
    "entity_qa": ("knowledge", "acc", True),
    "arith_gsm": ("reasoning", "exact_match", True),
    "refusal": ("safety", "acc", True),
    "harm_score": ("safety", "score", False),
}
TARGET, SOURCES = "llama-knowledge", ("neox-reasoning", "gpt2-safety")
# true per-task success rates: each model is strong in one skill; the fused model gains where the target was weak
RATES = {
    "target-base": {"facts_qa": 0.8, "entity_qa": 0.75, "arith_gsm": 0.2, "refusal": 0.3, "harm_score": 0.4},
    "neox-reasoning": {
        "facts_qa": 0.3,
        "entity_qa": 0.3,
        "arith_gsm": 0.7,
        "refusal": 0.3,
        "harm_score": 0.4,
    },
    "gpt2-safety": {
        "facts_qa": 0.25,
        "entity_qa": 0.3,
        "arith_gsm": 0.15,
        "refusal": 0.85,
        "harm_score": 0.8,
    },
}
GAIN = {"progressive": 0.3, "linear": 0.2, "simultaneous": 0.1, "reversed": 0.05, "cosine": 0.15}
N_DOCS = 160


def _weights(schedule: str, step: int, total: int) -> tuple[float, float]:
    spec = ScheduleSpec(name=schedule)  # type: ignore[arg-type]
    frac = step / total
    (a1, b1), (a2, b2) = spec.stage1, spec.stage2
    if schedule == "progressive":
        return (a1, b1) if frac < spec.switch else (a2, b2)
    if schedule == "reversed":
        return (b1, a1) if frac < spec.switch else (b2, a2)
    if schedule == "simultaneous":
        return 1.0, 1.0
    mix = frac if schedule == "linear" else (1 - math.cos(math.pi * frac)) / 2
    return a1 + (a2 - a1) * mix, b1 + (b2 - b1) * mix


def make_run(
    root: Path,
    name: str,
    *,
    method: str | None = "profuser",
    schedule: str = "progressive",
    seed: int = 0,
    n: int = N_DOCS,
    with_log: bool = True,
    with_selection: bool = True,
) -> Path:
    """A run directory with eval/<label>/<task>.jsonl, train_log.jsonl, signals/selection.json and summary.json.

    The target's per-document outcomes are shared by every run (same documents, same base model); the method's
    outcomes start from them and fix some failures (how many depends on the schedule) and add a few regressions.
    """
    run = root / name
    base_rng = np.random.default_rng(1234)  # same base model outcomes in every run
    run_rng = np.random.default_rng(seed + 100 * list(GAIN).index(schedule))
    outcomes: dict[str, dict[str, np.ndarray]] = {}
    for label, rates in RATES.items():
        outcomes[label] = {}
        for task, (_, _, binary) in TASKS.items():
            p = rates[task]
            outcomes[label][task] = (
                (base_rng.random(n) < p).astype(float) if binary else base_rng.beta(4 * p, 4 * (1 - p), n)
            )
    if method:
        fused = {}
        for task, (cat, _, binary) in TASKS.items():
            base = outcomes["target-base"][task]
            gain = GAIN[schedule] if cat != "knowledge" else 0.0
            if binary:
                fix = (base == 0) & (run_rng.random(n) < gain)
                hurt = (base == 1) & (run_rng.random(n) < 0.03)
                fused[task] = np.where(fix, 1.0, np.where(hurt, 0.0, base))
            else:
                fused[task] = np.clip(base + gain * 0.5 + run_rng.normal(0, 0.05, n), 0, 1)
        outcomes[method] = fused
        labels = list(outcomes)
    else:
        labels = ["target-base"]
    for label in labels:
        for task, (_, metric, _) in TASKS.items():
            path = run / "eval" / label / f"{task}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            order = run_rng.permutation(n)  # file order must not matter: pairing is by doc_id
            path.write_text(
                "".join(
                    json.dumps({"doc_id": int(i), metric: float(outcomes[label][task][i])}) + "\n"
                    for i in order
                )
            )

    def scores(label: str) -> dict[str, dict[str, object]]:
        out = {}
        for task, (cat, metric, binary) in TASKS.items():
            x = outcomes[label][task]
            out[task] = {"metric": metric, "value": float(x.mean()), "stderr": float(x.std(ddof=1) / math.sqrt(n)),
                         "n": n, "category": cat, "binary": binary}  # fmt: skip
        return out

    tasks_info = {t: {"metric": m, "binary": b} for t, (_, m, b) in TASKS.items()}
    if method:
        summary = {
            "run_id": name, "method": method, "schedule": schedule, "preset": "sandbox", "seed": seed,
            "models": {"target": TARGET, "sources": list(SOURCES)}, "tasks": scores(method),
            "baseline": scores("target-base"), "sources": {s: scores(s) for s in SOURCES},
            "comparisons": compare_runs(run, method, "target-base", tasks_info, seed=seed, n_boot=500),
            "timings_s": {"signals": 1.0, "train": 2.0, "evaluate": 3.0},
        }  # fmt: skip
    else:
        summary = {"run_id": name, "method": None, "preset": None, "models": {"target": "plain-model", "sources": []},
                   "tasks": scores("target-base"), "baseline": {}, "sources": {}, "comparisons": [],
                   "timings_s": {}, "label": "plain-model"}  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    if method and with_log:
        total = 40
        rows = []
        for step in range(1, total + 1, 2):
            w_inf, w_train = _weights(schedule, step, total)
            # as methods/profuser.py logs it: a term with weight 0 is not computed, lam/beta ride along
            comps, loss = {}, 0.0
            if w_inf > 0:
                comps |= {
                    "ce_infer": 2.0 * math.exp(-step / 15) + 0.5,
                    "kl_infer": 0.9 * math.exp(-step / 25) + 0.3,
                }
                loss += w_inf * (comps["ce_infer"] + comps["kl_infer"])
            if w_train > 0:
                comps |= {
                    "ce_train": 2.5 * math.exp(-step / 15) + 0.4,
                    "fuse_train": 1.2 * math.exp(-step / 20) + 0.2,
                }
                loss += w_train * (0.9 * comps["ce_train"] + 0.1 * comps["fuse_train"])
            rows.append({"step": step, "total_steps": total, "loss": loss, "lr": 1e-3, "grad_norm": 1.0,
                         "components": comps,
                         "weights": {"w_inf": w_inf, "w_train": w_train, "lam": 0.9, "beta": 1.0}})  # fmt: skip
        (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if method and with_selection:
        sel = {
            "training": {TARGET: 0.5, SOURCES[0]: 0.3, SOURCES[1]: 0.2},
            "inference": {TARGET: 0.34, SOURCES[0]: 0.33, SOURCES[1]: 0.33},
            "by_skill": {
                "knowledge": {"training": {TARGET: 0.8, SOURCES[0]: 0.1, SOURCES[1]: 0.1},
                              "inference": {TARGET: 0.7, SOURCES[0]: 0.2, SOURCES[1]: 0.1}},
                "reasoning": {"training": {TARGET: 0.2, SOURCES[0]: 0.7, SOURCES[1]: 0.1},
                              "inference": {TARGET: 0.1, SOURCES[0]: 0.8, SOURCES[1]: 0.1}},
                "safety": {"training": {TARGET: 0.3, SOURCES[0]: 0.1, SOURCES[1]: 0.6},
                           "inference": {TARGET: 0.2, SOURCES[0]: 0.1, SOURCES[1]: 0.7}},
            },
        }  # fmt: skip
        (run / "signals").mkdir(parents=True, exist_ok=True)
        (run / "signals" / "selection.json").write_text(json.dumps(sel))
    return run


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "progressive": make_run(root, "prog-s0"),
        "progressive-s1": make_run(root, "prog-s1", seed=1),
        "linear": make_run(root, "linear-s0", schedule="linear"),
        "plain": make_run(root, "plain", method=None, with_log=False),
    }


# ---------------------------------------------------------------- table content


def test_rows_come_once_and_runs_are_labelled_by_method_and_schedule(runs: dict[str, Path]) -> None:
    table = build_table([runs["progressive"], runs["linear"], runs["plain"]])
    assert [r.label for r in table.rows] == [
        "target-base", *SOURCES, "plain-model", "profuser (progressive)", "profuser (linear)",
    ]  # fmt: skip
    assert [r.kind for r in table.rows] == ["baseline", "source", "source", "model", "method", "method"]
    single = build_table([runs["progressive"]])
    assert [r.label for r in single.rows] == [
        "target-base",
        *SOURCES,
        "profuser",
    ]  # no schedule when only one


def test_runs_on_different_targets_keep_their_own_baselines(runs: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other-target"
    shutil.copytree(runs["linear"], other)
    summary = _summary(other)
    summary["models"]["target"] = "neox-reasoning"
    summary["schedule"] = "progressive"
    (other / "summary.json").write_text(json.dumps(summary))
    labels = [r.label for r in build_table([runs["progressive"], other]).rows]
    assert labels == [
        f"target-base ({TARGET})", "target-base (neox-reasoning)", *SOURCES,
        f"profuser ({TARGET})", "profuser (neox-reasoning)",
    ]  # fmt: skip


def test_columns_are_tasks_grouped_by_category_then_averages(runs: dict[str, Path]) -> None:
    table = build_table([runs["progressive"]])
    assert [c.key for c in table.columns] == [
        "facts_qa", "entity_qa", "arith_gsm", "refusal", "harm_score",
        "avg_knowledge", "avg_reasoning", "avg_safety", "avg",
    ]  # fmt: skip
    summary = _summary(runs["progressive"])
    row = table.rows[-1]
    values = {t: summary["tasks"][t]["value"] for t in TASKS}
    assert row.cells["facts_qa"].value == values["facts_qa"]
    assert row.cells["avg_knowledge"].value == pytest.approx((values["facts_qa"] + values["entity_qa"]) / 2)
    assert row.cells["avg_safety"].value == pytest.approx((values["refusal"] + values["harm_score"]) / 2)
    assert row.cells["avg"].value == pytest.approx(sum(values.values()) / len(values))
    base = table.rows[0]
    assert base.cells["arith_gsm"].value == summary["baseline"]["arith_gsm"]["value"]


def test_seed_replicates_become_one_row_with_mean_and_t_interval(runs: dict[str, Path]) -> None:
    table = build_table([runs["progressive"], runs["progressive-s1"]])
    method_rows = [r for r in table.rows if r.kind == "method"]
    assert len(method_rows) == 1 and method_rows[0].label == "profuser"
    vals = [_summary(runs[k])["tasks"]["refusal"]["value"] for k in ("progressive", "progressive-s1")]
    cell = method_rows[0].cells["refusal"]
    assert cell.n_seeds == 2 and cell.seeds == tuple(vals)
    assert cell.value == pytest.approx(np.mean(vals)) and cell.sd == pytest.approx(np.std(vals, ddof=1))
    ci = sps.ttest_1samp(vals, 0.0).confidence_interval(0.95)
    assert cell.ci == pytest.approx((ci.high - ci.low) / 2)  # 12.7 sd / sqrt(2) with two seeds
    md = render(table, "md")
    refusal = [c.key for c in table.columns].index("refusal")
    shown = _md_rows(md)["profuser"][refusal]
    assert f"± {(ci.high - ci.low) / 2 * 100:.1f}" in shown
    assert "95% t-interval over the seeds" in md and "k = 2; with 2 seeds that is ± 9.0·sd" in md
    frame = pd.read_csv(io.StringIO(render(table, "csv"))).set_index("model")
    assert frame.loc["profuser", "refusal_ci95"] == pytest.approx(cell.ci, rel=1e-5)


def _md_rows(md: str) -> dict[str, list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| Model")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in ln.strip("|").split("|")] for ln in lines)}


def test_markdown_bolds_exactly_the_best_value_per_column(runs: dict[str, Path]) -> None:
    table = build_table([runs["progressive"], runs["linear"]])
    md = render(table, "md")
    rows = _md_rows(md)
    labels = [r.label for r in table.rows]
    for j, col in enumerate(table.columns):
        shown = {label: float(re.sub(r"[^\d.]", "", rows[label][j].split("±")[0])) for label in labels}
        top = max(shown.values())
        for label in labels:
            assert rows[label][j].startswith("**") == (shown[label] == top), (col.key, label)
    s = _summary(runs["progressive"])
    assert (
        rows["gpt2-safety"][3] == f"**{s['sources']['gpt2-safety']['refusal']['value'] * 100:.1f}**"
    )  # percent, 1 dp


def test_significance_markers_follow_p_adjusted(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r")
    summary = _summary(run)
    wanted = {"facts_qa": 0.003, "entity_qa": 0.03, "arith_gsm": 0.2, "refusal": 0.0099, "harm_score": 0.05}
    for comp in summary["comparisons"]:
        comp["p_adjusted"] = wanted[comp["task"]]
    (run / "summary.json").write_text(json.dumps(summary))
    table = build_table([run])
    cells = _md_rows(render(table, "md"))["profuser"]
    keys = [c.key for c in table.columns]
    marks = {t: re.sub(r"[\d.*± ]", "", cells[keys.index(t)]) for t in wanted}
    assert marks == {"facts_qa": "‡", "entity_qa": "†", "arith_gsm": "", "refusal": "‡", "harm_score": ""}
    assert all(not re.search("[†‡]", c) for c in _md_rows(render(table, "md"))["target-base"])
    assert "† p_adj < 0.05, ‡ p_adj < 0.01" in render(table, "md")


def test_real_comparisons_mark_the_skills_the_fusion_improved(runs: dict[str, Path]) -> None:
    # the synthetic fused model gains 30 points of failures fixed on reasoning/safety and nothing on knowledge
    row = build_table([runs["progressive"]]).rows[-1]
    assert row.cells["arith_gsm"].marker == "‡" and row.cells["refusal"].marker == "‡"
    assert row.cells["facts_qa"].marker == "" and row.cells["entity_qa"].marker == ""


# ---------------------------------------------------------------- formats


def _latex_checks(tex: str, n_cols: int) -> None:
    assert tex.count("{") == tex.count("}")
    depth = 0
    for ch in tex:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\end{tabular}"):
        assert rule in tex
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", tex).group(1)  # type: ignore[union-attr]
    assert len(spec) == n_cols + 1
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule")[0]
    for line in body.splitlines():
        if line.endswith(r"\\"):
            assert line.count(" & ") == n_cols, line
    header = next(ln for ln in tex.splitlines() if ln.startswith("Model &"))
    assert header.count(" & ") == n_cols
    spans = sum(int(w) for w in re.findall(r"\\multicolumn\{(\d+)\}", tex))
    assert spans == n_cols
    plain = re.sub(r"\\[_%&#$]", "", tex)
    assert not re.search(r"(?<!\\)[_%#]", plain.split(r"\caption")[0].replace(r"\cmidrule", "")), (
        "unescaped special"
    )


def test_latex_is_booktabs_with_matching_columns_and_escapes(runs: dict[str, Path]) -> None:
    table = build_table([runs["progressive"], runs["progressive-s1"], runs["linear"]])
    tex = render(table, "latex")
    _latex_checks(tex, len(table.columns))
    assert r"facts\_qa" in tex and "facts_qa" not in tex
    assert r"\textbf{" in tex and r"$^{\ddagger}$" in tex and r"$\pm$" in tex
    assert tex_escape("50% & a_b #1") == r"50\% \& a\_b \#1"


@pytest.mark.slow
def test_latex_compiles_with_pdflatex(runs: dict[str, Path], tmp_path: Path) -> None:
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed")
    tables = [build_table(list(runs.values())), build_ablation_table(list(runs.values()))]
    doc = "\n".join([r"\documentclass{article}", r"\usepackage{booktabs}", r"\begin{document}",
                     *(render(t, "latex") for t in tables), r"\end{document}"])  # fmt: skip
    (tmp_path / "t.tex").write_text(doc)
    out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:]
    assert (tmp_path / "t.pdf").stat().st_size > 1000


def test_csv_parses_back_with_raw_numbers(runs: dict[str, Path]) -> None:
    table = build_table([runs["progressive"], runs["progressive-s1"], runs["linear"]])
    df = pd.read_csv(io.StringIO(render(table, "csv")))
    assert df["model"].tolist() == [r.label for r in table.rows]
    s = _summary(runs["linear"])
    lin = df.set_index("model").loc["profuser (linear)"]
    for task in TASKS:
        assert lin[task] == pytest.approx(s["tasks"][task]["value"], rel=1e-5)  # fractions, not percent
        comp = next(c for c in s["comparisons"] if c["task"] == task)
        assert lin[f"{task}_p_adj"] == pytest.approx(comp["p_adjusted"], rel=1e-5)
    prog = df.set_index("model").loc["profuser (progressive)"]
    assert prog["n_seeds"] == 2 and prog["refusal_sd"] > 0
    assert math.isnan(df.set_index("model").loc["target-base", "refusal_p_adj"])


def test_ablation_table_rows_are_schedules(runs: dict[str, Path]) -> None:
    table = build_ablation_table(list(runs.values()))
    assert [r.label for r in table.rows] == ["progressive", "linear"]
    assert table.rows[0].cells["avg"].n_seeds == 2
    assert "avg" in [c.key for c in table.columns]
    with pytest.raises(HarnessError, match="nothing to ablate"):
        build_ablation_table([runs["plain"]])


def test_write_tables_and_user_errors(runs: dict[str, Path], tmp_path: Path) -> None:
    paths = write_tables([runs["progressive"], runs["linear"]], tmp_path / "tables")
    assert sorted(p.name for p in paths) == sorted(
        f"{stem}.{ext}" for stem in ("results", "ablation") for ext in ("md", "tex", "csv")
    )
    assert all(p.stat().st_size > 100 for p in paths)
    only_one = write_tables([runs["progressive"]], tmp_path / "one")
    assert sorted(p.name for p in only_one) == ["results.csv", "results.md", "results.tex"]
    with pytest.raises(HarnessError, match="format"):
        render(build_table([runs["progressive"]]), "html")
    with pytest.raises(HarnessError, match="no summary.json"):
        build_table([tmp_path])


def test_rich_table_has_every_row(runs: dict[str, Path]) -> None:
    from rich.console import Console

    table = build_table([runs["progressive"], runs["linear"]])
    rich_table = to_rich(table)
    assert rich_table.row_count == len(table.rows)
    console = Console(width=200, record=True)
    console.print(rich_table)
    text = console.export_text()
    assert "profuser (linear)" in text and "‡" in text


# ---------------------------------------------------------------- plots


def test_make_plots_writes_pdf_and_png_for_every_figure(runs: dict[str, Path], tmp_path: Path) -> None:
    from harness.analysis.plots import make_plots

    paths = make_plots([runs["progressive"], runs["linear"], runs["plain"]], tmp_path / "plots")
    stems = {p.stem for p in paths}
    assert stems == {"task_scores", "categories_radar", "training-prog-s0", "training-linear-s0",
                     "selection-prog-s0", "ablation"}  # selection is shared by both runs: drawn once  # fmt: skip
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 5000
        assert data[:4] == (b"%PDF" if p.suffix == ".pdf" else b"\x89PNG")
    from PIL import Image

    with Image.open(tmp_path / "plots" / "training-prog-s0.png") as im:
        width_in = im.size[0] / 200
    assert 2.8 < width_in < 3.6  # a column-width figure at 200 dpi


def test_plots_skip_what_a_run_lacks(runs: dict[str, Path], tmp_path: Path) -> None:
    from harness.analysis.plots import make_plots, plot_selection

    assert plot_selection(runs["plain"], tmp_path) == []
    paths = make_plots([runs["plain"]], tmp_path / "plain")
    assert {p.stem for p in paths} == {
        "task_scores",
        "categories_radar",
    }  # no training log, selection or ablation


def test_wilson_interval_for_binary_cells() -> None:
    from statsmodels.stats.proportion import proportion_confint

    from harness.analysis.plots import score_ci
    from harness.analysis.report import Cell

    low, high = score_ci(Cell(0.05, n=100, binary=True))  # type: ignore[misc]
    assert (low, high) == pytest.approx(proportion_confint(5, 100, method="wilson"))
    assert low > 0 and high - 0.05 > 0.05 - low  # asymmetric near the boundary, never below 0
    low, high = score_ci(Cell(0.4, stderr=0.05, binary=False))  # type: ignore[misc]
    assert (low, high) == pytest.approx((0.4 - 0.098, 0.4 + 0.098))


def test_head_to_head_pairs_two_methods_of_two_runs(tmp_path: Path) -> None:
    from harness.analysis.report import head_to_head, render_head_to_head
    from harness.analysis.stats import load_samples

    a = make_run(tmp_path, "pro", method="profuser", schedule="progressive")
    b = make_run(tmp_path, "fuse", method="fusellm", schedule="reversed")  # fixes far fewer failures
    frame = head_to_head([a, b], "profuser", "fusellm")
    assert list(frame["task"]) == list(TASKS)
    for row in frame.to_dict("records"):
        metric = TASKS[row["task"]][1]
        xa = load_samples(a, "profuser", row["task"], metric)
        xb = load_samples(b, "fusellm", row["task"], metric)
        assert row["delta"] == pytest.approx(np.mean([xa[i] - xb[i] for i in xa]))
        assert row["p_adjusted"] >= row["p_value"] and row["n"] == N_DOCS
    gains = frame.set_index("task")
    assert gains.loc["arith_gsm", "delta"] > 0.1 and gains.loc["arith_gsm", "p_adjusted"] < 0.01
    assert abs(gains.loc["facts_qa", "delta"]) < 0.05  # knowledge: neither method gains
    md = render_head_to_head(frame, "md")
    assert "**profuser vs fusellm**" in md and md.count("\n| ") == len(TASKS) + 1
    with pytest.raises(HarnessError, match="no run of 'averaging'"):
        head_to_head([a, b], "profuser", "averaging")
    # a second seed of profuser without a fusellm partner: the one common seed is compared, and the table says so
    more = head_to_head([a, make_run(tmp_path, "pro2", seed=1), b], "profuser", "fusellm")
    pd.testing.assert_frame_equal(more, frame)
    assert more.attrs["notes"] == ["profuser: seed(s) 1 left out (no run of the other side with that seed)"]
    assert more.attrs["notes"][0] in render_head_to_head(more, "md")
    linear = make_run(tmp_path, "pro-lin", schedule="linear")
    with pytest.raises(HarnessError, match=r"runs of method 'profuser' in 2 configurations: name one as the table "
                                           r"labels it \('profuser \(progressive\)', 'profuser \(linear\)'\)"):
        head_to_head([a, linear, b], "profuser", "fusellm")
    # two configurations of one method, named as the table labels them: the same rows as two methods would give
    mine = head_to_head([a, linear, b], "profuser (linear)", "profuser (progressive)")
    assert list(mine[["a", "b"]].iloc[0]) == ["profuser (linear)", "profuser (progressive)"]
    renamed = make_run(tmp_path, "lin-as-fusellm", method="fusellm", schedule="linear")
    for task in TASKS:
        (renamed / "eval" / "fusellm" / f"{task}.jsonl").write_text((linear / "eval" / "profuser" / f"{task}.jsonl").read_text())
    as_methods = head_to_head([a, renamed], "fusellm", "profuser")
    for key in ("delta", "ci_low", "ci_high", "p_value", "p_adjusted", "mde"):
        assert list(mine[key]) == pytest.approx(list(as_methods[key]), nan_ok=True), key
    assert "profuser (linear)" in render_head_to_head(mine, "md").splitlines()[2]
    with pytest.raises(HarnessError, match=r"'fusellm' \(seeds 0\) share no seed"):
        head_to_head([make_run(tmp_path, "p1", seed=1), make_run(tmp_path, "p2", seed=2), b], "profuser", "fusellm")


def test_head_to_head_over_seeds_pairs_each_seed_and_tests_over_documents_and_seeds(tmp_path: Path) -> None:
    """Several seeds per method: the rows a sweep gives its cells, recomputed here from the per-document files:
    Δ the mean of the per-seed differences, the exact sign test of each document's difference summed over the
    seeds, scipy's paired t-test of the per-seed means, Holm across the tasks of the larger p."""
    from harness.analysis.report import head_to_head, render_head_to_head
    from harness.analysis.stats import load_samples, signed_sum_test

    seeds = (0, 1, 2)
    pro = {s: make_run(tmp_path, f"pro{s}", method="profuser", seed=s) for s in seeds}
    fuse = {s: make_run(tmp_path, f"fuse{s}", method="fusellm", schedule="reversed", seed=s) for s in seeds}
    frame = head_to_head([*pro.values(), *fuse.values(), make_run(tmp_path, "fuse9", method="fusellm", schedule="reversed", seed=9)],
                         "profuser", "fusellm")  # fmt: skip
    assert frame.attrs["seeds"] == [0, 1, 2]
    assert frame.attrs["notes"] == ["fusellm: seed(s) 9 left out (no run of the other side with that seed)"]
    larger = []
    for row in frame.to_dict("records"):
        metric = TASKS[row["task"]][1]
        diffs = []
        for s in seeds:
            xa, xb = load_samples(pro[s], "profuser", row["task"], metric), load_samples(fuse[s], "fusellm", row["task"], metric)
            diffs.append({k: xa[k] - xb[k] for k in xa})
        per_seed = [float(np.mean(list(d.values()))) for d in diffs]
        assert list(row["per_seed"].values()) == pytest.approx(per_seed)
        assert row["delta"] == pytest.approx(np.mean(per_seed)) and row["k"] == 3 and row["n"] == N_DOCS
        assert row["p_seeds"] == pytest.approx(sps.ttest_rel(per_seed, [0.0] * 3).pvalue)
        if TASKS[row["task"]][2]:
            summed = [round(sum(d[k] for d in diffs)) for k in diffs[0]]
            assert row["p_pooled"] == pytest.approx(signed_sum_test(summed))
        assert row["ci_low"] < row["delta"] < row["ci_high"]
        larger.append(max(row["p_pooled"], row["p_seeds"]))
        assert row["mde"] > 0 and row["mde_seeds"] is None or row["mde_seeds"] > 0
    assert list(frame["p_adjusted"]) == pytest.approx(holm(larger))
    md = render_head_to_head(frame, "md")
    assert md.startswith("**profuser vs fusellm** (paired by seed over seeds 0, 1, 2, Holm across tasks)")
    assert md.count("| profuser | fusellm |") == len(TASKS) and frame.attrs["notes"][0] in md
    # a model evaluated once (no method, no seed) stands beside every seed, as the unfused target does in a sweep
    evaluated = make_run(tmp_path, "plain", method=None)
    (evaluated / "eval" / "target-base").rename(evaluated / "eval" / "plain-model")  # where `harness eval` writes it
    plain = head_to_head([*pro.values(), evaluated], "profuser", "plain-model")
    assert plain.attrs["seeds"] == [0, 1, 2] and not plain.attrs["notes"]
    for row in plain.to_dict("records"):
        metric = TASKS[row["task"]][1]
        base = np.mean(list(load_samples(evaluated, "plain-model", row["task"], metric).values()))
        means = [np.mean(list(load_samples(pro[s], "profuser", row["task"], metric).values())) for s in seeds]
        assert row["delta"] == pytest.approx(np.mean(means) - base)
    back = pd.read_csv(io.StringIO(render_head_to_head(frame, "csv")))
    assert list(back["delta"]) == pytest.approx(list(frame["delta"]), rel=1e-5)
    for text, per_seed in zip(back["per_seed"], frame["per_seed"], strict=True):
        assert json.loads(text) == per_seed


def test_report_versus_on_a_sweep_folder_gives_the_sweeps_own_head_to_head(micro_sweep: Path) -> None:
    """`harness report SWEEP --versus A:B` pairs the cells' seeds and reproduces the sweep's versus rows."""
    code, out = _cli(["report", str(micro_sweep), "--versus", "profuser:fusellm", "--format", "csv"])
    assert code == 0, out
    got = pd.read_csv(io.StringIO(out[out.index("a,b,"):])).set_index("task")
    rows = json.loads((micro_sweep / "summary.json").read_text())["versus"]
    assert {r["task"] for r in rows} == set(got.index) and len(rows) == len(got)
    for r in rows:
        for key in ("delta", "p_pooled", "p_seeds", "p_adjusted", "mde"):
            want = math.nan if r[key] is None else r[key]  # an MDE beyond reach: an empty csv cell
            assert got.loc[r["task"], key] == pytest.approx(want, rel=1e-5, nan_ok=True), key
    # the two grid points named as SWEEP:POINT, as from two different sweeps: the same rows
    code, named = _cli(["report", f"{micro_sweep}:profuser", f"{micro_sweep}:fusellm", "--versus", "profuser:fusellm",
                        "--format", "csv"])  # fmt: skip
    assert code == 0 and named == out
    code, wrong = _cli(["report", f"{micro_sweep}:averaging", "--versus", "profuser:fusellm"])
    assert code == 2 and f"sweep '{micro_sweep.name}' has no grid point 'averaging' (have: " in wrong
    code, neither = _cli(["report", f"{micro_sweep}-missing:profuser"])
    assert code == 2 and "does not exist (give a run or sweep folder, or SWEEP:POINT" in neither


def test_the_significance_legend_appears_only_where_something_was_tested(runs: dict[str, Path]) -> None:
    assert not any("p_adj" in n for n in build_table([runs["plain"]]).notes)  # a plain `harness eval`
    assert any("p_adj" in n for n in build_table([runs["progressive"], runs["plain"]]).notes)


def _set_settings(run: Path, **settings: object) -> None:
    """Give every task of a run's summary the settings the pipeline records (data, version, shots, limit)."""
    summary = _summary(run)
    for block in (summary["tasks"], summary["baseline"], *summary["sources"].values()):
        for task, info in block.items():
            info.update({"filter": "none", "data": {"source": "data dir", "hash": "d1"}, "version": "1.0",
                         "shots": 0, "limit": None})  # fmt: skip
            info.update(settings.get(task, {}))  # type: ignore[call-overload]
    (run / "summary.json").write_text(json.dumps(summary))


def _cli(args: list[str]) -> tuple[int, str]:
    from click.testing import CliRunner

    from harness.cli import main

    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def test_runs_evaluated_differently_are_refused_unless_allowed(tmp_path: Path) -> None:
    a = make_run(tmp_path, "pro", method="profuser", schedule="progressive")
    b = make_run(tmp_path, "fuse", method="fusellm", schedule="reversed")
    _set_settings(a)
    _set_settings(b, arith_gsm={"shots": 5})
    for extra in ([], ["--versus", "profuser:fusellm"]):
        code, out = _cli(["report", str(a), str(b), *extra])
        assert code == 2 and out.count("\n") == 1, out  # one line, no traceback
        assert "arith_gsm shots: 0 (pro); 5 (fuse)" in out and "--allow-mismatch" in out
        code, out = _cli(["report", str(a), str(b), *extra, "--allow-mismatch"])
        assert code == 0, out
        assert "Compared although settings differ (--allow-mismatch): arith_gsm shots: 0 (pro); 5 (fuse)." in out
    _set_settings(b, facts_qa={"data": {"source": "hub", "hash": "builtin:mmlu"}})  # the same settings otherwise
    code, out = _cli(["report", str(a), str(b)])
    assert code == 2 and "facts_qa data: data dir d1 (pro); hub builtin:mmlu (fuse)" in out
    _set_settings(b)
    assert _cli(["report", str(a), str(b)])[0] == 0  # same settings: compared as before


def test_a_metrics_further_filters_reach_the_csv_and_the_legend(tmp_path: Path) -> None:
    run = make_run(tmp_path, "pro")
    _set_settings(run, arith_gsm={"filter": "strict-match", "filters": {"flexible-extract": 0.42}})
    table = build_table([run])
    frame = pd.read_csv(io.StringIO(render(table, "csv")))
    assert frame.loc[frame["model"] == "profuser", "arith_gsm,flexible-extract"].item() == pytest.approx(0.42)
    assert any(n.startswith("arith_gsm: exact_match under lm-eval's strict-match filter; flexible-extract is in")
               for n in table.notes)  # fmt: skip


def test_holm_across_the_table_adjusts_every_comparison_it_shows(tmp_path: Path) -> None:
    from statsmodels.stats.multitest import multipletests

    runs = [make_run(tmp_path, "s0"), make_run(tmp_path, "s1", seed=1), make_run(tmp_path, "lin", schedule="linear")]
    summaries = [_summary(r) for r in runs]
    family = [(s["run_id"], c["task"], c["p_value"]) for s in summaries for c in s["comparisons"]]
    adjusted = dict(zip([f[:2] for f in family], multipletests([f[2] for f in family], method="holm")[1], strict=True))
    table = build_table(runs, holm_scope="table")
    rows = {r.label: r for r in table.rows}
    for task in TASKS:
        seeds = rows["profuser (progressive)"].cells[task].p_adjusted
        assert seeds == pytest.approx(max(adjusted[("s0", task)], adjusted[("s1", task)]))  # every seed must pass
        assert rows["profuser (linear)"].cells[task].p_adjusted == pytest.approx(adjusted[("lin", task)])
    assert any(f"Holm-corrected across all {len(family)} comparisons" in n for n in table.notes)
    per_run = build_table(runs)
    assert any("within each run, over its tasks × (method + sources)" in n for n in per_run.notes)
    assert any("not adjusted for multiplicity" in n for n in per_run.notes)
    code, out = _cli(["report", *map(str, runs), "--holm", "table"])
    assert code == 0 and f"across all {len(family)} comparisons" in out
    code, out = _cli(["report", *map(str, runs), "--holm", "table", "--versus", "profuser:fusellm"])
    assert code == 2 and "--holm" in out


def test_a_grid_summary_table_and_figure_from_seed_runs(runs: dict[str, Path], tmp_path: Path) -> None:
    from harness.analysis.over_seeds import render_versus
    from harness.analysis.plots import plot_grid
    from harness.analysis.replicates import summarise_points
    from harness.analysis.report import build_grid_table
    from harness.analysis.stats import compare_across_runs

    points = [("profuser progressive", {"method.schedule.name": "progressive"}, [runs["progressive"], runs["progressive-s1"]]),
              ("profuser linear", {"method.schedule.name": "linear"}, [runs["linear"]])]  # fmt: skip
    summary = summarise_points(points)
    prog, lin = summary["points"]
    s0, s1 = _summary(runs["progressive"]), _summary(runs["progressive-s1"])
    gain = prog["gain"]["refusal"]["per_seed"]
    assert gain == pytest.approx({"0": s0["tasks"]["refusal"]["value"] - s0["baseline"]["refusal"]["value"],
                                  "1": s1["tasks"]["refusal"]["value"] - s1["baseline"]["refusal"]["value"]})  # fmt: skip
    assert lin["gain"]["refusal"]["ci95"] is None and lin["scores"]["profuser"]["refusal"]["n_seeds"] == 1
    comps = summary["comparisons"]
    assert len(comps) == 2 * len(TASKS) and {c["k"] for c in comps if c["point"] == "profuser linear"} == {1}
    for c in comps:
        assert c["p_value"] == (c["p_pooled"] if c["k"] == 1 else max(c["p_pooled"], c["p_seeds"]))
    assert [c["p_adjusted"] for c in comps] == pytest.approx(holm([c["p_value"] for c in comps]))
    # the swept schedules head to head over their common seed: with one seed, the single-run paired test
    versus = summary["versus"]
    assert {(v["a"], v["b"], v["k"]) for v in versus} == {("profuser progressive", "profuser linear", 1)}
    tasks = {t: {"metric": m, "binary": b} for t, (_, m, b) in TASKS.items()}
    single = compare_across_runs((runs["progressive"], "profuser"), (runs["linear"], "profuser"), tasks)
    assert [v["p_pooled"] for v in versus] == pytest.approx([c["p_value"] for c in single])
    assert [v["delta"] for v in versus] == pytest.approx([c["delta"] for c in single])
    assert "| profuser progressive | profuser linear | refusal | 1 |" in render_versus(versus)

    marks = {("profuser progressive", "refusal"): 0.001, ("profuser linear", "refusal"): 0.2}
    table = build_grid_table([(label, dirs) for label, _, dirs in points], "Grid", marks, "the grid's note")
    assert [r.label for r in table.rows] == ["target-base", *SOURCES, "profuser progressive", "profuser linear"]
    assert table.rows[-2].cells["refusal"].marker == "‡" and table.rows[-1].cells["refusal"].marker == ""
    assert table.rows[-2].cells["refusal"].n_seeds == 2 and "the grid's note" in table.notes
    paths = plot_grid({"axes": {"method.schedule.name": ["progressive", "linear"]}, **summary}, tmp_path)
    assert sorted(p.name for p in paths) == ["grid_gain.pdf", "grid_gain.png"] and all(p.stat().st_size > 1000 for p in paths)
    assert plot_grid({"axes": {}, **summary}, tmp_path / "none") == []  # nothing swept: no grid figure


def test_training_figure_smooths_long_runs_and_says_how(tmp_path: Path) -> None:
    """At 1,296 steps the raw losses are a band: each loss is drawn as an EMA line over faint raw points, and
    the legend names the smoothing; the lines follow the trend, not the step-to-step noise."""
    from harness.analysis.plots import plot_training, training_figure

    rng = np.random.default_rng(0)
    total = 1296
    rows = []
    for step in range(1, total + 1):
        trend = 2.0 * math.exp(-step / 300) + 0.5
        comps = {"ce_train": trend + rng.normal(0, 0.4), "fuse_train": 1.5 * trend + rng.normal(0, 0.4)}
        if step > total // 2:
            comps["ce_infer"] = trend + rng.normal(0, 0.4)  # a term that starts halfway, as the schedules log it
        rows.append({"step": step, "total_steps": total, "loss": sum(comps.values()) / len(comps), "components": comps,
                     "weights": {"w_inf": float(step > total // 2), "w_train": 1.0, "lam": 0.9}})  # fmt: skip
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [p.suffix for p in plot_training(run, tmp_path / "plots")] == [".pdf", ".png"]

    fig = training_figure(rows)
    ax = fig.axes[0]
    smoothed = {line.get_label(): line for line in ax.lines if line.get_gid() == "smoothed"}
    raw = [line for line in ax.lines if line.get_gid() == "raw"]
    assert set(smoothed) == {"total", "CE (train mode)", "fusion CE (train mode)", "CE (inference mode)"}
    assert len(raw) == 4 and all(line.get_alpha() < 0.3 and line.get_linestyle() == "None" for line in raw)
    for line, points in zip(smoothed.values(), raw, strict=True):
        y, y_raw = np.asarray(line.get_ydata(), float), np.asarray(points.get_ydata(), float)
        ok = np.isfinite(y_raw)
        assert np.array_equal(np.isfinite(y), ok)  # no curve where the term was off
        jitter, raw_jitter = np.nanmean(np.abs(np.diff(y[ok]))), np.nanmean(np.abs(np.diff(y_raw[ok])))
        assert jitter < raw_jitter / 5
    (legend,) = fig.legends
    assert legend.get_title().get_text() == "losses: EMA over 32 steps (lines), each step (dots)"
    assert {"total", "$w_{inf}$", "$w_{train}$"} <= {t.get_text() for t in legend.get_texts()}

    short = training_figure(rows[:20])  # a short run: plain lines, nothing to smooth, nothing to explain
    assert not any(line.get_gid() for line in short.axes[0].lines) and short.legends[0].get_title().get_text() == ""


def test_an_ablation_table_for_any_method_whose_parameters_were_varied(tmp_path: Path) -> None:
    # a sweep over averaging's own `weighting` (its summaries carry no schedule: averaging has none)
    runs = []
    for weighting in ("uniform", "avgce"):
        run = make_run(tmp_path, f"avg-{weighting}", method="averaging", with_log=False, with_selection=False)
        summary = json.loads((run / "summary.json").read_text())
        del summary["schedule"]
        summary["variant"] = {"method.weighting": weighting}
        (run / "summary.json").write_text(json.dumps(summary))
        runs.append(run)
    paths = write_tables(runs, tmp_path / "tables")
    assert {p.name for p in paths} >= {"ablation.md", "ablation.csv"}
    table = build_ablation_table(runs, "averaging")
    assert table.title == "Parameter ablation (averaging)"
    assert [r.label for r in table.rows] == ["weighting=uniform", "weighting=avgce"]
    assert not any("schedules" in note for note in table.notes)
