"""Evaluation figures: ROC curves with AUC [95% CI] and Youden points; predicted vs true log10 scatter.

Drawn on matplotlib.figure.Figure directly (no pyplot), so no global backend state and no display.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from bnp_cxr.data.labs import PositivityThresholds
from bnp_cxr.evaluation.metrics import binary_tasks

COLORS = {"bnpp": "#1f5fa8", "bnp": "#d2691e", "combined": "#2e8b57"}
# Combined is dashed and drawn last: when it coincides with a single-test curve, both stay visible.
LINESTYLES = {"bnpp": "-", "bnp": "-", "combined": (0, (4, 2))}
PG_ML_DECADES = (1, 10, 100, 1000, 10000, 100000, 1000000)
DPI = 150


def _ci_text(entry: dict, digits: int = 2) -> str:
    if entry["estimate"] is None:
        return "n/a"
    return f"{entry['estimate']:.{digits}f} [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"


def _bootstrap_note(result: dict) -> str:
    boot = result["bootstrap"]
    return (f"{boot['ci_level']:.0%} CI: {boot['resampling_unit']}-level bootstrap, {boot['n_boot']} resamples; "
            f"{result.get('split', '')} split, {result['n_images']} images, {result['n_patients']} patients")


def _add_note(figure: Figure, result: dict) -> None:
    """The CI method under the axes; it hangs below the figure edge and bbox_inches="tight" keeps it."""
    figure.text(0.5, -0.01, _bootstrap_note(result), ha="center", va="top", fontsize=7.5, color="0.25")


def roc_figure(table: Mapping, result: dict, path: str | os.PathLike,
               thresholds: PositivityThresholds = PositivityThresholds()) -> None:
    """ROC curves of the three labels, AUC [CI] and n in the legend, Youden points marked; saved as PNG."""
    figure = Figure(figsize=(6.4, 6.8), dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="chance (AUC 0.50)")
    for key, task in zip(("bnpp", "bnp", "combined"), binary_tasks(table, thresholds)):
        auc = result["metrics"][f"auc_{task.name}"]
        n_pos = int(task.labels.sum())
        label = f"{task.title}\nAUC {_ci_text(auc)}, n={task.labels.size} ({n_pos} pos)"
        if auc["estimate"] is None:
            ax.plot([], [], color=COLORS[key], label=f"{label}: one class only, no curve")
            continue
        fpr, tpr, _ = roc_curve(task.labels, task.scores)
        ax.plot(fpr, tpr, color=COLORS[key], ls=LINESTYLES[key], lw=2, label=label)
        sens, spec = (result["metrics"][f"{kind}_{task.name}"] for kind in ("sensitivity", "specificity"))
        ax.plot(1 - spec["estimate"], sens["estimate"], "o", ms=8, mfc="white", mec=COLORS[key], mew=2,
                label=f"  Youden point: sensitivity {_ci_text(sens)}\n  specificity {_ci_text(spec)}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
           xlabel="1 − specificity (false-positive rate)", ylabel="sensitivity (true-positive rate)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7.5, framealpha=0.9)
    ax.set_title("ROC: radiograph-predicted BNP / BNPP vs lab positivity", fontsize=10)
    _add_note(figure, result)
    figure.savefig(path, bbox_inches="tight", pad_inches=0.15)


def _compact(value: int) -> str:
    """1, 30, 1k, 30k, 1M: short enough that neighbouring ticks never collide."""
    for divisor, suffix in ((1_000_000, "M"), (1000, "k")):
        if value >= divisor:
            return f"{value // divisor}{suffix}"
    return str(value)


def _pg_ml_axis(ax, which: str, low: float, high: float) -> None:
    """Secondary ticks in pg/mL at round values inside [low, high] (log10 pg/mL)."""
    candidates = PG_ML_DECADES if high - low > 3 else sorted({*PG_ML_DECADES, *(3 * v for v in PG_ML_DECADES)})
    ticks = [value for value in candidates if low <= math.log10(value) <= high]
    secondary = ax.secondary_xaxis("top") if which == "x" else ax.secondary_yaxis("right")
    setter = secondary.set_xticks if which == "x" else secondary.set_yticks
    setter([math.log10(value) for value in ticks], labels=[_compact(value) for value in ticks])
    (secondary.set_xlabel if which == "x" else secondary.set_ylabel)("pg/mL", fontsize=8)
    secondary.tick_params(labelsize=7)


def scatter_figure(table: Mapping, result: dict, path: str | os.PathLike,
                   thresholds: PositivityThresholds = PositivityThresholds()) -> None:
    """Predicted vs true log10 BNPP and BNP with identity and threshold lines, r [CI] and MAE in titles."""
    figure = Figure(figsize=(11, 5.6), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, 2)
    for ax, (test, name, threshold) in zip(axes, (("bnpp", "BNPP", thresholds.bnpp_pg_ml),
                                                  ("bnp", "BNP", thresholds.bnp_pg_ml))):
        true = np.asarray(table[f"true_log10_{test}"], dtype=float)
        pred = np.asarray(table[f"pred_log10_{test}"], dtype=float)
        keep = np.isfinite(true) & np.isfinite(pred)
        true, pred = true[keep], pred[keep]
        values = np.r_[true, pred, math.log10(threshold)]
        pad = 0.05 * max(np.ptp(values), 0.5)
        low, high = float(values.min() - pad), float(values.max() + pad)
        alpha = float(np.clip(300 / max(true.size, 1), 0.15, 0.8))
        ax.scatter(true, pred, s=8, alpha=alpha, color=COLORS[test], edgecolors="none", rasterized=True)
        ax.plot([low, high], [low, high], color="0.4", lw=1, label="identity (prediction = truth)")
        cut = math.log10(threshold)
        ax.axvline(cut, color="firebrick", ls="--", lw=1, label=f"{name} = {threshold:g} pg/mL (positivity threshold)")
        ax.axhline(cut, color="firebrick", ls="--", lw=1)
        ax.set(xlim=(low, high), ylim=(low, high), aspect="equal",
               xlabel=f"true log10 {name} (log10 pg/mL)", ylabel=f"predicted log10 {name} (log10 pg/mL)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7.5, framealpha=0.9)
        r, mae = (result["metrics"][f"{kind}_log10_{test}"] for kind in ("pearson_r", "mae"))
        n_patients = r["n_patients"]
        ax.set_title(f"{name}: r = {_ci_text(r)}, MAE = {_ci_text(mae)} log10\n"
                     f"n = {true.size} images, {n_patients} patients", fontsize=10)
        _pg_ml_axis(ax, "x", low, high)
        _pg_ml_axis(ax, "y", low, high)
    _add_note(figure, result)
    figure.savefig(path, bbox_inches="tight", pad_inches=0.15)
