"""Paper figures from run directories: task scores with 95% CIs, category radar, training curves, source
selection and the schedule ablation. Each is written as PDF (vector) and PNG by harness/analysis/plot_style.py.

Training curves of SMOOTH_FROM logged steps or more (the sandbox's main job logs 1,296) are drawn as papers draw
them: a bias-corrected EMA line (span ~1/40 of the run) over the raw per-step losses as faint dots; the legend
states the span. Shorter logs are drawn as plain lines.

Error bars are 95% intervals everywhere: Wilson for binary metrics, ±1.96·stderr for others; for rows that
average k seeds, ±1.96·sqrt(se_doc² + sd_seed²/k) (document sampling plus seed variation; a t-interval over
two or three seeds alone would be uselessly wide), and each seed's value is drawn as a dot on the bar. Averages
over tasks use the normal approximation with the tasks treated as independent. A sweep's grid figure
(`plot_grid`) is the exception: its bars are the summary's 95% t-interval over seeds of the gain over the target
(seed noise on these documents; the seeds are drawn too), the same interval as the sweep's table.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.patches import Patch
from statsmodels.stats.proportion import proportion_confint

from harness.analysis import plot_style as ps
from harness.analysis.report import Cell, Table, build_table, load_selection, load_summary
from harness.errors import HarnessError

# loss components as methods/*.py name them (anything else is shown by its key)
COMPONENT_NAMES = {
    "ce_train": "CE (train mode)",
    "fuse_train": "fusion CE (train mode)",
    "ce_infer": "CE (inference mode)",
    "kl_infer": "KL (inference mode)",
}
WEIGHT_NAMES = {"w_inf": "$w_{inf}$", "w_train": "$w_{train}$"}


def _doc_se(cell: Cell) -> float | None:
    """Standard error from sampling documents: binomial for binary metrics, else the summary's stderr."""
    if cell.value is None:
        return None
    if cell.binary and cell.n:
        return math.sqrt(max(cell.value * (1 - cell.value), 0.0) / cell.n)
    return cell.stderr


def _cell_se(cell: Cell) -> float | None:
    """Standard error of a cell; for a mean over k seeds, sqrt(se_doc² + sd_seed²/k) (both sources of variance)."""
    se = _doc_se(cell)
    if cell.n_seeds > 1 and cell.sd is not None and not math.isnan(cell.sd):
        return math.sqrt((se or 0.0) ** 2 + cell.sd**2 / cell.n_seeds)
    return se


def score_ci(cell: Cell) -> tuple[float, float] | None:
    """95% interval of one table cell (see module docstring), or None when nothing is known about its spread."""
    if cell.value is None:
        return None
    if cell.n_seeds == 1 and cell.binary and cell.n:
        low, high = proportion_confint(round(cell.value * cell.n), cell.n, alpha=0.05, method="wilson")
        return float(low), float(high)
    se = _cell_se(cell)
    return None if se is None else (cell.value - 1.96 * se, cell.value + 1.96 * se)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "run"


def _yerr(values: list[float], cis: list[tuple[float, float] | None], scale: float) -> np.ndarray:
    """Asymmetric error bars (2 × n) from intervals; 0 where unknown."""
    err = np.zeros((2, len(values)))
    for i, (v, ci) in enumerate(zip(values, cis, strict=True)):
        if ci is not None and not math.isnan(v):
            err[:, i] = [max(v - ci[0], 0.0) * scale, max(ci[1] - v, 0.0) * scale]
    return err


def plot_task_scores(table: Table, out_dir: Path, stem: str = "task_scores") -> list[Path]:
    """Grouped bars: one group per task (grouped by category), one bar per row, 95% CI error bars."""
    tasks = [c for c in table.columns if c.kind == "task"]
    if not tasks or not table.rows:
        return []
    scale = 100.0 if all(table.percent(c.key) for c in tasks) else 1.0
    colors = ps.colors(r.label for r in table.rows)
    n_rows = len(table.rows)
    gap = 0.8  # total width of one task's group
    width = gap / n_rows
    cats = [c.category for c in tasks]
    # a small gap between category groups makes the grouping visible without extra ink
    x = np.arange(len(tasks), dtype=float) + np.array(
        [0.3 * len(set(cats[: i + 1])) for i in range(len(tasks))]
    )
    with ps.style():
        fig_w = ps.COLUMN_WIDTH if len(tasks) * n_rows <= 12 else ps.TEXT_WIDTH
        fig, ax = ps.figure(fig_w, height=2.4)
        methods = [r.label for r in table.rows if r.kind == "method"]
        for j, row in enumerate(table.rows):
            hatch = (
                ps.HATCHES[(methods.index(row.label) + 1) % len(ps.HATCHES)] if row.label in methods else ""
            )
            cells = [row.cells.get(c.key, Cell(None)) for c in tasks]
            vals = [c.value if c.value is not None else math.nan for c in cells]
            cis = [score_ci(c) for c in cells]
            centers = x - gap / 2 + width * (j + 0.5)
            ax.bar(
                centers, np.array(vals) * scale, width * 0.92, label=row.label,
                color=colors[row.label], hatch=hatch,
                edgecolor="white", linewidth=0.3, yerr=_yerr(vals, cis, scale), error_kw=ps.ERRORBAR,
            )  # fmt: skip
            _seed_points(ax, centers, cells, scale, width)
        ax.set_xticks(x, [c.label for c in tasks], rotation=20 if max(len(c.label) for c in tasks) > 8 else 0,
                      ha="right" if max(len(c.label) for c in tasks) > 8 else "center")  # fmt: skip
        ax.set_ylabel("score (%)" if scale == 100 else "score")
        if scale == 100:
            ax.set_ylim(0, 100)
        ax.set_xlim(x[0] - 0.6, x[-1] + 0.6)
        if len(set(cats)) > 1 and len(set(cats)) < len(cats):  # else each task is its own category: no labels
            for cat in dict.fromkeys(cats):
                xs = [xi for xi, c in zip(x, cats, strict=True) if c == cat]
                ax.text((xs[0] + xs[-1]) / 2, 1.0, cat, transform=ax.get_xaxis_transform(), ha="center",
                        va="bottom", fontsize=7, color="#444444", style="italic")  # fmt: skip
        fig.legend(loc="outside lower center", ncols=min(n_rows, 4), handlelength=1.2, columnspacing=1.0)
        return ps.save(fig, out_dir, stem)


def _seed_points(ax: Any, centers: np.ndarray, cells: Sequence[Cell], scale: float, width: float) -> None:
    """Each seed's value of a seed-averaged bar as a small hollow dot, spread across the bar so equal values show."""
    for xc, cell in zip(centers, cells, strict=True):
        if len(cell.seeds) < 2:
            continue
        offsets = np.linspace(-0.25, 0.25, len(cell.seeds)) * width
        ax.scatter(xc + offsets, np.array(cell.seeds) * scale, s=5, facecolors="white", edgecolors="#222222",
                   linewidths=0.5, zorder=3)  # fmt: skip


def _swept_axis(axes: dict[str, list[Any]]) -> str | None:
    """The axis on the x of the grid figure: the last one whose values are all numbers, else the last one that is
    not the method (lines are the methods), else the last one."""
    def numeric(values: list[Any]) -> bool:
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    keys = list(axes)
    for pick in ([k for k in keys if numeric(axes[k])], [k for k in keys if k != "method.name"], keys):
        if pick:
            return pick[-1]
    return None


def plot_grid(summary: dict[str, Any], out_dir: Path, stem: str = "grid_gain") -> list[Path]:
    """A sweep's gain over the unfused target (method − target-base, percentage points) against the swept value,
    one line per combination of the other grid values (e.g. per method): the mean over seeds with its 95%
    t-interval, and each seed as a dot. One panel for the overall average, one per category when there are
    several. Needs a grid axis; `harness sweep` writes the summary (harness/analysis/replicates.py)."""
    axes: dict[str, list[Any]] = summary.get("axes") or {}
    x_key = _swept_axis(axes)
    points = summary.get("points") or []
    if x_key is None or not points:
        return []
    x_values = axes[x_key]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x_values)
    xpos = {str(v): (float(v) if numeric else float(i)) for i, v in enumerate(x_values)}
    panels = ["avg"] + sorted({k for pt in points for k in pt["gain"] if k.startswith("avg_")})
    lines: dict[str, list[dict[str, Any]]] = {}
    for pt in points:
        rest = " ".join(str(v) if k in ("method.name", "method.schedule.name") else f"{k.rsplit('.', 1)[-1]}={v}"
                        for k, v in pt["values"].items() if k != x_key)  # fmt: skip
        lines.setdefault(rest or pt["method"], []).append(pt)
    colors = ps.colors(lines)
    span = (max(xpos.values()) - min(xpos.values())) or 1.0
    with ps.style():
        fig, axs = ps.figure(ps.COLUMN_WIDTH if len(panels) == 1 else ps.TEXT_WIDTH, height=2.4, ncols=len(panels),
                             sharey=True)  # fmt: skip
        axs = np.atleast_1d(axs)
        for ax, key in zip(axs, panels, strict=True):
            ax.axhline(0.0, color=ps.BASELINE_COLOR, linewidth=0.7, linestyle=(0, (3, 2)))
            for j, (name, pts) in enumerate(lines.items()):
                shift = (j - (len(lines) - 1) / 2) * 0.012 * span  # lines side by side, not on top of each other
                got = [(xpos[str(p["values"][x_key])] + shift, p["gain"][key]) for p in pts if key in p["gain"]]
                if not got:
                    continue
                xs = np.array([g[0] for g in got])
                means = np.array([g[1]["mean"] for g in got]) * 100
                cis = [g[1]["ci95"] for g in got]
                err = _yerr(list(means / 100), [None if c is None else (c[0], c[1]) for c in cis], 100)
                ax.errorbar(xs, means, yerr=err, color=colors[name], marker=ps.MARKERS[j % len(ps.MARKERS)],
                            markersize=3.5, linewidth=1.1, label=name, linestyle=ps.LINESTYLES[j % len(ps.LINESTYLES)],
                            elinewidth=0.7, capsize=1.8)  # fmt: skip
                for xi, g in zip(xs, got, strict=True):
                    seeds = np.array(list(g[1]["per_seed"].values())) * 100
                    ax.scatter(np.full(seeds.size, xi), seeds, s=5, facecolors="white", edgecolors=colors[name],
                               linewidths=0.5, zorder=3)  # fmt: skip
            ax.set_title("average over tasks" if key == "avg" else key.removeprefix("avg_"))
            ax.set_xlabel(x_key)
            if not numeric:
                ax.set_xticks([xpos[str(v)] for v in x_values], [str(v) for v in x_values])
        axs[0].set_ylabel("gain over target-base (points)")
        handles, labels = axs[0].get_legend_handles_labels()  # one entry per line, not one per panel
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(lines), 4), handlelength=2.0,
                   title="mean over seeds with 95% t-interval; dots: single seeds", title_fontsize=6)  # fmt: skip
        return ps.save(fig, out_dir, stem)


def plot_radar(table: Table, out_dir: Path, stem: str = "categories_radar") -> list[Path]:
    """Category averages per row on a radar (needs at least three categories)."""
    cats = table.categories()
    value = {(r.label, c): (table.category_cell(r, c) or Cell(None)).value for r in table.rows for c in cats}
    rows = [r for r in table.rows if all(value[r.label, c] is not None for c in cats)]
    if len(cats) < 3 or not rows:
        return []
    scale = 100.0 if table.percent("avg") else 1.0
    colors = ps.colors(r.label for r in table.rows)
    angles = np.linspace(0, 2 * np.pi, len(cats), endpoint=False)
    closed = np.append(angles, angles[0])
    with ps.style():
        fig, ax = ps.figure(ps.COLUMN_WIDTH, height=3.0, subplot_kw={"projection": "polar"})
        ax.set_theta_offset(np.pi / 2)
        ax.set_theta_direction(-1)
        for j, row in enumerate(rows):
            vals = np.array([value[row.label, c] for c in cats], dtype=float) * scale
            ring = np.append(vals, vals[0])
            ls = "--" if row.kind == "baseline" else "-"
            ax.plot(
                closed,
                ring,
                ls,
                color=colors[row.label],
                marker=ps.MARKERS[j % len(ps.MARKERS)],
                label=row.label,
            )
            ax.fill(closed, ring, color=colors[row.label], alpha=0.08)
        ax.set_xticks(angles, [c.capitalize() for c in cats])
        ax.tick_params(axis="x", pad=2)
        if scale == 100:
            ax.set_ylim(0, 100)
            ax.set_yticks([25, 50, 75, 100])
        else:
            ax.set_ylim(0, None)
        ax.set_rlabel_position(180 / len(cats))  # halfway between the first two spokes, clear of the lines
        ax.tick_params(axis="y", labelsize=6, labelcolor="#555555")
        for tick in ax.get_yticklabels():  # keep the ring values legible where polygons cross them
            tick.set_bbox({"facecolor": "white", "edgecolor": "none", "alpha": 0.75, "pad": 0.4})
        ax.spines["polar"].set_linewidth(0.5)
        ax.spines["polar"].set_color("#888888")
        ax.grid(True, linewidth=0.4, alpha=0.6)
        ncols = 2 if max(len(r.label) for r in rows) > 14 else 3  # stay within the column width
        fig.legend(loc="outside lower center", ncols=min(len(rows), ncols), handlelength=1.5)
        return ps.save(fig, out_dir, stem)


def _drawstyle(values: Sequence[float]) -> str:
    """Steps for piecewise-constant weight schedules (progressive, reversed), straight lines for smooth ones."""
    finite = [v for v in values if not math.isnan(v)]
    return "steps-post" if len(set(finite)) <= 4 else "default"


def _schedule_keys(log: list[dict[str, Any]]) -> list[str]:
    """The schedule weights (w_inf, w_train) of a train log; constant hyper-parameters (lam, beta) are left out."""
    return list(dict.fromkeys(k for r in log for k in (r.get("weights") or {}) if k.startswith("w_")))


def _read_train_log(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "train_log.jsonl"
    if not path.is_file():
        return []
    rows = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise HarnessError(f"'{path}' line {n} is not a UTF-8 JSON line", "plot") from None
            if not isinstance(row, dict) or isinstance(row.get("step"), bool) or not isinstance(row.get("step"), int):
                raise HarnessError(f"'{path}' line {n} has no whole-number 'step'", "plot")
            rows.append(row)
    return rows


SMOOTH_FROM = 40  # logged steps from which loss curves are smoothed (fewer: every point is drawn as a line)


def ema_span(n: int) -> int:
    """The EMA span of a loss curve of n logged steps: ~1/40 of the run (32 at 1,296 steps), at least 5."""
    return max(5, n // 40)


def ema(values: Sequence[float], span: int) -> np.ndarray:
    """Bias-corrected exponential moving average (alpha = 2 / (span + 1)) over the finite values; NaN where a
    value is missing (a loss term the schedule switched off), so a term's curve picks up where it resumes."""
    alpha = 2.0 / (span + 1.0)
    out = np.full(len(values), np.nan)
    mean, weight = 0.0, 0.0
    for i, v in enumerate(values):
        if v is None or not math.isfinite(v):
            continue
        mean = (1 - alpha) * mean + alpha * v
        weight = (1 - alpha) * weight + alpha
        out[i] = mean / weight  # the correction: early steps are not pulled towards 0
    return out


def training_figure(log: list[dict[str, Any]], title: str | None = None) -> Any:
    """The figure of `plot_training`: each loss as a smoothed line over its faint raw points once the run has
    SMOOTH_FROM steps or more (the legend names the smoothing), as plain lines below that."""
    steps = np.array([r["step"] for r in log])
    comps = list(dict.fromkeys(k for r in log for k in (r.get("components") or {})))
    weights = _schedule_keys(log)
    span = ema_span(len(log)) if len(log) >= SMOOTH_FROM else None
    series = [("total", "black", [float(r["loss"]) for r in log])] + [
        (COMPONENT_NAMES.get(k, k), ps.CYCLE[i % len(ps.CYCLE)],
         [(r.get("components") or {}).get(k, math.nan) for r in log])
        for i, k in enumerate(comps)
    ]  # fmt: skip
    with ps.style():
        fig, ax = ps.figure(ps.COLUMN_WIDTH, height=2.3)
        for label, color, ys in series:
            width = 1.2 if label == "total" else 1.0
            if span is None:
                ax.plot(steps, ys, color=color, label=label, linewidth=width)
                continue
            ax.plot(steps, ys, linestyle="none", marker="o", markersize=1.2, markeredgewidth=0, color=color,
                    alpha=0.18, rasterized=True, gid="raw")  # fmt: skip
            ax.plot(steps, ema(ys, span), color=color, label=label, linewidth=width, gid="smoothed")
        ax.set_xlabel("training step")
        ax.set_ylabel("loss")
        handles, labels = ax.get_legend_handles_labels()
        if weights:
            tw = ax.twinx()
            tw.grid(False)
            tw.spines["right"].set_visible(True)
            for i, k in enumerate(weights):
                ys = [(r.get("weights") or {}).get(k, math.nan) for r in log]
                tw.plot(steps, ys, drawstyle=_drawstyle(ys), color=ps.CYCLE[(len(comps) + i) % len(ps.CYCLE)],
                        linestyle=(0, (3, 1.5)), linewidth=1.0, label=WEIGHT_NAMES.get(k, k))  # fmt: skip
            tw.set_ylabel("schedule weight")
            top = max(1.0, np.nanmax([(r.get("weights") or {}).get(k, 0.0) for r in log for k in weights]))
            tw.set_ylim(-0.03 * top, top * 1.05)
            h2, l2 = tw.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        if title:
            ax.set_title(title)
        how = f"losses: EMA over {span} steps (lines), each step (dots)" if span else None
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), handlelength=1.6,
                   columnspacing=0.9, title=how, title_fontsize=6)  # fmt: skip
        return fig


def plot_training(
    run_dir: Path, out_dir: Path, stem: str = "training", title: str | None = None
) -> list[Path]:
    """Loss components over steps (smoothed over the raw points), with the schedule weights (w_inf, w_train) on
    a twin axis."""
    log = _read_train_log(run_dir)
    if not log:
        return []
    with ps.style():
        return ps.save(training_figure(log, title), out_dir, stem)


def _selection_panel(ax: Any, data: dict[str, dict[str, float]], sources: list[str], title: str) -> None:
    x = np.arange(len(sources))
    for j, (mode, label, color, hatch) in enumerate(
        (("training", "training mode (MinCE)", ps.OKABE_ITO["blue"], ""),
         ("inference", "inference mode (judge vote)", ps.OKABE_ITO["orange"], "//"))
    ):  # fmt: skip
        vals = [100 * (data.get(mode) or {}).get(s, 0.0) for s in sources]
        ax.bar(
            x + (j - 0.5) * 0.38,
            vals,
            0.36,
            label=label,
            color=color,
            hatch=hatch,
            edgecolor="white",
            linewidth=0.3,
        )
    ax.set_xticks(x, sources, rotation=25 if max(map(len, sources)) > 8 else 0,
                  ha="right" if max(map(len, sources)) > 8 else "center")  # fmt: skip
    ax.set_ylim(0, 100)
    ax.set_title(title)


def plot_selection(run_dir: Path, out_dir: Path, stem: str = "selection") -> list[Path]:
    """How often each source is chosen: training mode (MinCE) vs inference mode (judge vote), overall and by skill."""
    sel = load_selection(run_dir)
    if sel is None:
        return []
    by_skill: dict[str, dict[str, dict[str, float]]] = sel.get("by_skill") or {}
    panels = [("all", sel)] + list(by_skill.items())
    sources = list(
        dict.fromkeys(s for _, d in panels for m in ("training", "inference") for s in (d.get(m) or {}))
    )
    if not sources:
        return []
    with ps.style():
        width = ps.COLUMN_WIDTH if len(panels) == 1 else ps.TEXT_WIDTH
        fig, axes = ps.figure(width, height=2.2, ncols=len(panels), sharey=True)
        axes = np.atleast_1d(axes)
        for ax, (name, data) in zip(axes, panels, strict=True):
            _selection_panel(ax, data, sources, "all examples" if name == "all" else f"{name} examples")
        axes[0].set_ylabel("selected (%)")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=2)
        return ps.save(fig, out_dir, stem)


def plot_ablation(
    run_dirs: Sequence[Path], out_dir: Path, method: str = "profuser", stem: str = "ablation"
) -> list[Path]:
    """Scores per schedule (category averages and overall, 95% CI on the overall) and the weight schedules."""
    from harness.analysis.report import build_ablation_table

    runs = [(Path(d), load_summary(Path(d))) for d in run_dirs]
    runs = [(d, s) for d, s in runs if s.get("method") == method]
    if len({s.get("schedule") for _, s in runs}) < 2:
        return []
    table = build_ablation_table([d for d, _ in runs], method)
    # the schedules in the order they were run (`harness ablate` runs them in methods/schedules.py's order)
    names = list(dict.fromkeys(s.get("schedule") or "" for _, s in runs))
    order = {name: i for i, name in enumerate(names)}
    rows = sorted(table.rows, key=lambda r: (order.get(r.schedule or "", len(order)), r.label))
    tasks = [c for c in table.columns if c.kind == "task"]
    cats = table.categories() if len(table.categories()) > 1 else []
    scale = 100.0 if all(table.percent(c.key) for c in tasks) else 1.0
    sched_colors = {name: ps.CYCLE[i % len(ps.CYCLE)] for i, name in enumerate(names)}
    sched_styles = {name: ps.LINESTYLES[i % len(ps.LINESTYLES)] for i, name in enumerate(names)}
    logs: dict[str | None, list[dict[str, Any]]] = {}
    for d, s in sorted(runs, key=lambda ds: order.get(ds[1].get("schedule") or "", len(order))):
        # the first run of each schedule carries its weight curve; legend in run order
        log = _read_train_log(d)
        if log and s.get("schedule") not in logs and _schedule_keys(log):
            logs[s.get("schedule")] = log
    weight_keys = list(dict.fromkeys(k for log in logs.values() for k in _schedule_keys(log)))  # w_inf, w_train
    with ps.style():
        ncols = 1 + len(weight_keys)
        ratios = {"width_ratios": [1.25] + [1] * (ncols - 1)}
        fig, axes = ps.figure(
            ps.COLUMN_WIDTH if ncols == 1 else ps.TEXT_WIDTH, height=2.4, ncols=ncols, gridspec_kw=ratios
        )
        axes = np.atleast_1d(axes)
        ax = axes[0]
        x = np.arange(len(rows))
        # overall average as bars in each schedule's colour (the same colours as the weight panels) with 95% CIs
        avg = [(r.cells.get("avg") or Cell(None)).value for r in rows]
        errs = []
        for r in rows:
            ses = [_cell_se(r.cells.get(t.key) or Cell(None)) for t in tasks]
            known = [se for se in ses if se is not None]
            all_known = len(known) == len(ses)
            errs.append(1.96 * math.sqrt(sum(se * se for se in known)) / len(ses) if all_known else 0.0)
        ax.bar(x, [np.nan if v is None else v * scale for v in avg], 0.6,
               color=[sched_colors.get(r.schedule or "", ps.BASELINE_COLOR) for r in rows],
               yerr=np.array(errs) * scale, error_kw=ps.ERRORBAR)  # fmt: skip
        # category averages as hollow markers joined by thin lines: how each schedule trades the skills off
        for i, c in enumerate(cats):
            ys = [(table.category_cell(r, c) or Cell(None)).value for r in rows]
            ax.plot(x, [np.nan if y is None else y * scale for y in ys], color="#333333", linestyle=(0, (1, 1.5)),
                    linewidth=0.7, marker=ps.MARKERS[(i + 1) % len(ps.MARKERS)], markerfacecolor="white",
                    markeredgewidth=0.8, markersize=4, label=c.capitalize())  # fmt: skip
        ax.set_xticks(x, [r.label for r in rows], rotation=25 if len(rows) > 2 else 0,
                      ha="right" if len(rows) > 2 else "center")  # fmt: skip
        ax.set_ylabel("score (%)" if scale == 100 else "score")
        if scale == 100:
            ax.set_ylim(0, 100)
        ax.set_title("score by schedule")
        handles, labels = ax.get_legend_handles_labels()
        handles.append(Patch(facecolor="#BBBBBB", edgecolor="none"))  # bars take the schedule's colour
        labels.append("average (95% CI)")
        ax.legend(handles, labels, loc="upper center", ncols=2, handlelength=1.3, columnspacing=0.8,
                  handletextpad=0.4, fontsize=6, borderaxespad=0.2)  # fmt: skip
        for ax_w, key in zip(axes[1:], weight_keys, strict=True):
            for sched, log in logs.items():
                t = np.array([r["step"] / max(r.get("total_steps") or 1, 1) for r in log])
                ws: list[float] = [(r.get("weights") or {}).get(key, np.nan) for r in log]
                ax_w.plot(t, ws, drawstyle=_drawstyle(ws), color=sched_colors.get(sched or "", "black"),
                          label=sched, linestyle=sched_styles.get(sched or "", "-"), linewidth=1.1)  # fmt: skip
            ax_w.set_xlabel("step / total steps")
            ax_w.set_title(f"schedule weight {WEIGHT_NAMES.get(key, key)}")
            ax_w.set_xlim(0, 1)
        if len(axes) > 1:
            axes[1].set_ylabel("weight")
            handles, labels = axes[1].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), handlelength=2.2)
        return ps.save(fig, out_dir, stem)


def make_plots(run_dirs: Sequence[Path], out_dir: Path) -> list[Path]:
    """Every figure the runs have data for, written into out_dir (PDF + PNG each); returns the paths."""
    if not run_dirs:
        raise HarnessError("give at least one run directory", "plot")
    dirs = [Path(d) for d in run_dirs]
    table = build_table(dirs)
    paths = plot_task_scores(table, out_dir) + plot_radar(table, out_dir)
    summaries = [load_summary(d) for d in dirs]
    names = [_slug(s.get("run_id") or d.name) for d, s in zip(dirs, summaries, strict=True)]
    seen_selection: set[str] = set()
    for d, s, name in zip(dirs, summaries, names, strict=True):
        suffix = "" if len(dirs) == 1 else f"-{name}"
        title = (
            None if len(dirs) == 1 else f"{s.get('method') or ''} {s.get('schedule') or ''}".strip() or name
        )
        paths += plot_training(d, out_dir, f"training{suffix}", title)
        sel = d / "signals" / "selection.json"
        if sel.is_file() and (content := sel.read_text()) not in seen_selection:
            seen_selection.add(content)  # runs sharing cached signals would repeat the same figure
            paths += plot_selection(d, out_dir, f"selection{suffix}")
    paths += plot_ablation(dirs, out_dir)
    return paths
