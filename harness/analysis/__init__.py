"""Stage 6, report: statistics, tables and figures, computed from run directories only.

    stats.py       paired tests (exact McNemar, sign-flip permutation), intervals, Holm, seed summaries
    report.py      comparison, ablation and head-to-head tables (Markdown, LaTeX, CSV, terminal)
    plots.py       paper figures (PDF + PNG)
    flips.py       the documents behind a paired comparison: where two models differ, and what each answered
    html.py        one self-contained HTML report (templates/report.html.j2): tables, figures, metadata, flips
    plot_style.py  the one style every figure uses
"""
