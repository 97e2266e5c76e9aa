"""scorecard.png: methods x metrics as a coloured table with 95 % CIs, one panel per image size.

A cell's colour is the method's rank within its column at that size (green = best, red = worst, by the
metric's direction in SCORE_METRICS); its text is the mean and the patient-bootstrap CI. A method that
did not run is a grey row naming the reason; an undefined metric is an empty cell.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from bnp_cxr.attribution.inlung import NO_METADATA
from bnp_cxr.attribution.scorecard import SCORE_METRICS


def cell_text(row: pd.Series, name: str) -> str:
    """'mean\\n[lo, hi]' of one metric, '' when undefined."""
    value = row.get(name, math.nan)
    if value is None or not np.isfinite(value):
        return ""
    return f"{value:.3g}\n[{row[f'{name}_lo']:.3g}, {row[f'{name}_hi']:.3g}]"


def rank_colours(values: np.ndarray, higher_is_better: bool) -> list:
    """RdYlGn colours by rank of the finite values (best green); white where undefined."""
    cmap = colormaps["RdYlGn"]
    finite = np.isfinite(values)
    colours: list = [(1.0, 1.0, 1.0, 1.0)] * len(values)
    if finite.sum() == 0:
        return colours
    ordered = values[finite] if higher_is_better else -values[finite]
    ranks = pd.Series(ordered).rank(method="average").to_numpy()
    scale = (ranks - 1) / max(len(ranks) - 1, 1)
    for index, level in zip(np.flatnonzero(finite), scale):
        colours[index] = cmap(0.15 + 0.7 * level)
    return colours


def _panel(ax, table: pd.DataFrame, reasons: dict[str, str], metrics: Sequence[str], size: int) -> None:
    methods = list(table["method"]) + [method for method in reasons if method not in set(table["method"])]
    text, colours = [], []
    columns = {name: rank_colours(table[name].to_numpy(dtype=float) if name in table else np.full(len(table), np.nan),
                                  SCORE_METRICS[name][1]) for name in metrics}
    for method in methods:
        if method in reasons:
            text.append([f"not applicable: {reasons[method]}"[:40]] + [""] * (len(metrics) - 1))
            colours.append([(0.85, 0.85, 0.85, 1.0)] * len(metrics))
            continue
        index = list(table["method"]).index(method)
        row = table.iloc[index]
        text.append([cell_text(row, name) for name in metrics])
        colours.append([columns[name][index] for name in metrics])
    cells = ax.table(cellText=text, cellColours=colours, rowLabels=methods,
                     colLabels=[SCORE_METRICS[name][0] + (" (low)" if not SCORE_METRICS[name][1] else "")
                                for name in metrics], loc="center", cellLoc="center")
    cells.auto_set_font_size(False)
    cells.set_fontsize(6)
    cells.scale(1.0, 2.2)
    ax.set_axis_off()
    images = int(table["n_images"].max()) if len(table) else 0
    subset = max((int(table[f"{name}_n"].max()) for name in ("randomisation_spearman", "max_sensitivity")
                  if f"{name}_n" in table and len(table)), default=0)
    ax.set_title(f"{size} px: {images} images, randomisation and stability on {subset}; colour = rank within "
                 "column, green best", fontsize=8)


def plot_scorecard(aggregate: pd.DataFrame, not_applicable: pd.DataFrame, path: str | Path) -> Path:
    """Write the scorecard figure (one panel per size) to `path` (PNG) and return it."""
    sizes = sorted({int(s) for s in aggregate["size"]} | {int(s) for s in not_applicable.get("size", [])})
    if not sizes:
        raise ValueError("an empty scorecard has nothing to draw")
    metrics = [name for name in SCORE_METRICS if name in aggregate]
    figure = Figure(figsize=(2.0 + 1.15 * len(metrics), 2.6 * len(sizes) + 0.4), dpi=150, layout="constrained")
    axes = np.atleast_1d(figure.subplots(len(sizes), 1))
    for ax, size in zip(axes, sizes):
        table = aggregate[aggregate["size"] == size].reset_index(drop=True)
        reasons = {row["method"]: row["reason"] for _, row in not_applicable.iterrows() if int(row["size"]) == size}
        _panel(ax, table, reasons, metrics, size)
    figure.suptitle("Attribution scorecard: mean [patient-bootstrap 95% CI]", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, metadata=NO_METADATA[".png"])
    return path
