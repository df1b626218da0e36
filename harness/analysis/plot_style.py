"""The one figure style: Okabe–Ito colours, fonts readable at column width, PDF + PNG, the same error bars.

Everything goes through `style()` (an rc_context, so importing this never changes global matplotlib state) and
`figure()` (matplotlib.figure.Figure objects, no pyplot: no GUI backend, nothing left open). PNGs are rendered
by Agg; PDFs embed TrueType fonts (fonttype 42) so text stays editable and searchable.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.rcsetup import cycler  # what `matplotlib.cycler` re-exports (absent from the stubs)

from harness.store import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType  # matplotlib >= 3.8 only; annotations are not evaluated

COLUMN_WIDTH = 3.3  # inches: one column of a two-column paper
TEXT_WIDTH = 6.9  # inches: full text width
PNG_DPI = 200

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies.
OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "bluish_green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish_purple": "#CC79A7",
}  # fmt: skip
BASELINE_COLOR = "#8C8C8C"  # neutral grey: the unfused target is the reference, not a contender
# yellow last: it is the one Okabe–Ito colour with poor contrast on white
CYCLE = [
    OKABE_ITO[k]
    for k in ("blue", "orange", "bluish_green", "vermillion", "reddish_purple", "sky_blue", "yellow")
]
LINESTYLES: list[Any] = [
    "-",
    (0, (4, 1.5)),
    (0, (1, 1.2)),
    (0, (6, 1.5, 1, 1.5)),
    (0, (2.5, 1)),
]  # greyscale-safe
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
HATCHES = ["", "//", "..", "xx", "\\\\", "++", "oo"]  # a second cue for bars in greyscale print

ERRORBAR: dict[str, Any] = {"ecolor": "#222222", "elinewidth": 0.7, "capsize": 1.8, "capthick": 0.7}

RC: dict[RcKeyType, Any] = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.7,
    "axes.grid": True,
    "axes.grid.axis": "y",
    "grid.linewidth": 0.4,
    "grid.alpha": 0.5,
    "axes.axisbelow": True,
    "axes.prop_cycle": cycler(color=CYCLE),
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Apply the style for the figures made (and saved) inside the block."""
    with matplotlib.rc_context(RC):
        yield


def figure(
    width: float = COLUMN_WIDTH, height: float | None = None, nrows: int = 1, ncols: int = 1, **kw: Any
) -> tuple[Figure, Any]:
    """A Figure and its axes (as plt.subplots); height defaults to a 0.62 aspect ratio. Call inside `style()`."""
    fig = Figure(figsize=(width, height if height is not None else width * 0.62), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=True, **kw)
    return fig, axes


def colors(labels: Iterable[str], baseline: str = "target-base") -> dict[str, str]:
    """Stable colour per row label: the baseline grey, the others through the Okabe–Ito cycle in order."""
    out: dict[str, str] = {}
    i = 0
    for label in labels:
        if label in out:
            continue
        if label.startswith(baseline):
            out[label] = BASELINE_COLOR
        else:
            out[label] = CYCLE[i % len(CYCLE)]
            i += 1
    return out


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write `<stem>.pdf` (vector) and `<stem>.png` (PNG_DPI) into out_dir; returns both paths."""
    out_dir = Path(out_dir)
    paths = []
    for fmt, dpi in (("pdf", None), ("png", PNG_DPI)):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi)
        path = out_dir / f"{stem}.{fmt}"
        atomic_write_bytes(path, buf.getvalue())  # a reader never sees half a figure
        paths.append(path)
    return paths
