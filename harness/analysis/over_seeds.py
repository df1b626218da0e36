"""Two models compared over seeds, as table rows: each seed of a paired with the same seed of b on the same
documents, tested over documents and over seeds (harness.analysis.stats.compare_over_seeds), Holm-adjusted
across the rows with each row's minimum detectable difference, and the rows as Markdown. A sweep's head-to-head
rows (harness/analysis/replicates.py) and `harness report --versus` over seeds (harness/analysis/report.py)
are built here, so both read the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.analysis.power import mde_text, seeds_test_mde, size_text
from harness.analysis.power_from_runs import estimate_pair, from_estimate
from harness.analysis.stats import compare_over_seeds, holm, load_samples


def seeds_test_row(
    a: str, b: str, task: str, info: dict[str, Any], runs: dict[Any, tuple[Path, Path]], seed: int = 0
) -> dict[str, Any]:
    """compare_over_seeds of label `a` against label `b` on `task`; `runs`: seed -> (a's run, b's run)."""
    seeds = list(runs)
    pairs = [(load_samples(ra, a, task, info["metric"]), load_samples(rb, b, task, info["metric"])) for ra, rb in runs.values()]
    binary = bool(info.get("binary", all(v in (0.0, 1.0) for x, y in pairs for v in (*x.values(), *y.values()))))
    comp = asdict(compare_over_seeds(pairs, binary, seed=seed))
    comp["per_seed"] = {str(s): v for s, v in zip(seeds, comp["per_seed"], strict=True)}
    return {**comp, "interval": "t-over-seeds" if comp["ci_low"] is not None else None,
            "_estimate": estimate_pair(task, a, b, pairs, binary)}  # fmt: skip


def holm_with_mde(rows: list[dict[str, Any]]) -> None:
    """Holm across `rows`, and each row's minimum detectable difference at Holm's first step over them (the
    documents test over its seeds, harness/analysis/power.py), so a row that is not significant says what it rules
    out."""
    for row, p_adj in zip(rows, holm([r["p_value"] for r in rows]), strict=True):
        row["p_adjusted"] = p_adj
        found = row.pop("_estimate")
        row["binary"] = found.binary
        row["mde"] = from_estimate(found, comparisons=len(rows)).mde
        row["mde_seeds"] = seeds_test_mde(list(row["per_seed"].values()), len(rows), found.binary)


def render_versus(rows: Sequence[dict[str, Any]], *, metric: str | None = None) -> str:
    """A sweep's head-to-head rows as Markdown: difference in points (in the metric's units for a secondary
    `metric` such as the margin), its t-interval over seeds, both tests."""
    def pct(v: float | None) -> str:
        return "–" if v is None else (f"{v:+.3f}" if metric else f"{100 * v:+.1f}")

    unit = f"Δ ({metric})" if metric else "Δ (points)"
    lines = [f"| a | b | task | seeds | {unit} | 95% t-interval | p documents | p seeds | p_adj |",
             "|:--|:--|:--|--:|--:|:--|--:|--:|--:|"]  # fmt: skip
    for r in rows:
        ci = "–" if r["ci_low"] is None else f"[{pct(r['ci_low'])}, {pct(r['ci_high'])}]"
        p_seeds = "–" if r["p_seeds"] is None else f"{r['p_seeds']:.2g}"
        p_adj = f"{r['p_adjusted']:.2g}"
        if r["p_adjusted"] >= 0.05 and "mde" in r:
            binary = bool(r.get("binary", True))
            over_seeds = f"; over seeds {size_text(r.get('mde_seeds'), binary)}" if r["k"] > 1 else ""
            p_adj += f" (n.s., {mde_text(r['mde'], binary)}{over_seeds})"
        lines.append(f"| {r['a']} | {r['b']} | {r['task']} | {r['k']} | {pct(r['delta'])} | {ci} | "
                     f"{r['p_pooled']:.2g} | {p_seeds} | {p_adj} |")  # fmt: skip
    lines += ["", "a − b over their common seeds, paired by seed on the same documents. p documents: the per-document "
              "differences summed over seeds (exact sign test for binary metrics, sign-flip permutation otherwise); "
              "p seeds: paired t-test of the per-seed differences; p_adj: Holm over this table of the larger of the "
              "two (docs/statistics.md). The t-interval is over seeds, for these documents. MDE: the difference the "
              "test over documents detects with 80% power at Holm's first step over this table, from the row's "
              "documents, seeds and observed discordance (harness power); over seeds: the difference the t-test over the "
              "per-seed differences detects at the same level, from their observed SD. A row needs both tests, so "
              "the larger MDE is what it rules out; with 3 seeds the t-test has 2 degrees of freedom and binds."]  # fmt: skip
    return "\n".join(lines) + "\n"
