"""In-lung attention of attribution maps: how much of a map lies inside the lungs, against chance.

Huynh et al. (MIDL 2022) report "considerable in-lung attention growth with increased resolution"
but do not publish their metric, so these definitions are ours (also in the README). Per image, over
the valid pixels V (the content box: letterbox padding counts neither as lung nor as non-lung area),
with the lung mask L and the positive part p = max(a, 0) of the map a:

(i)   mass_in_lung_fraction = sum(p over V & L) / sum(p over V)
(ii)  top_in_lung_fraction  = share of the k = ceil(top_fraction * |V|) highest-p valid pixels inside L
(iii) lung_area_fraction    = |V & L| / |V|, the chance level: a map with no preference for the lungs
      scores (iii) on (i) and, in expectation, on (ii); mass_ratio = (i) / (iii), top_ratio = (ii) / (iii)
      (1 = chance, 1 / (iii) = everything in the lungs).

Only the positive part counts: vanilla maps are |gradient| >= 0, Grad-CAM is ReLU'd, and XRAI maps
may hold negative region gains, which mean "lowers the output", not "attended". Ranking for (ii)
uses p as well, so every non-positive pixel ties at 0. Ties at the k-th value share the remaining
slots equally (each tied pixel counts (k - n_above) / n_tied), so exactly k pixels are counted and the
result does not depend on pixel order (a stable argsort would favour the top rows of the image, and
XRAI maps are constant over whole regions, so ties there are the rule, not the exception).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bnp_cxr.evaluation.metrics import MIN_BOOT, cluster_counts
from bnp_cxr.workspace import COMPONENT_BITS, PAPER_SIZES

IN_LUNG_KEYS = ("mass_in_lung_fraction", "top_in_lung_fraction", "lung_area_fraction", "mass_ratio", "top_ratio")
ID_COLUMNS = ("image_id", "patient_id", "method", "size")
METHOD_LABELS = {"vanilla": "Gradient", "gradcam": "Grad-CAM", "xrai": "XRAI"}
METRIC_LABELS = {"mass_in_lung_fraction": "positive attribution mass in the lungs",
                 "top_in_lung_fraction": "top-{top:.0%} pixels in the lungs"}
CHANCE_METRIC = "lung_area_fraction"
# Matplotlib stamps its version and a date into files; figures carry nothing but the plot.
NO_METADATA = {".png": {"Software": None}, ".pdf": {"Creator": None, "Producer": None, "CreationDate": None}}


def _checked(attribution: np.ndarray, *masks: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """float64 map and bool masks of one shape; ValueError on a shape mismatch or non-finite values."""
    values = np.asarray(attribution, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"attribution must be [H, W], got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("attribution holds NaN or infinite values")
    out = [values]
    for mask in masks:
        if mask is None:
            out.append(np.ones(values.shape, dtype=bool))
            continue
        mask = np.asarray(mask)
        if mask.shape != values.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the attribution's {values.shape}")
        out.append(mask if mask.dtype == bool else mask != 0)
    return tuple(out)


def undefined_reason(attribution: np.ndarray, lung_mask: np.ndarray, *, valid: np.ndarray | None = None) -> str | None:
    """Why in_lung_metrics gives NaN for this image (None when every metric is defined)."""
    values, lungs, valid = _checked(attribution, lung_mask, valid)
    if not valid.any():
        return "no valid pixels (empty content box)"
    if not (lungs & valid).any():
        return "empty lung mask inside the content box (no segmentation?)"
    if not (values[valid] > 0).any():
        return "no positive attribution inside the content box (all-zero or all-negative map)"
    return None


def top_count(n_valid: int, top_fraction: float) -> int:
    """k = ceil(top_fraction * n_valid), immune to float noise such as 0.1 * 30 = 3.0000000000000004."""
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    return max(1, math.ceil(round(top_fraction * n_valid, 9)))


def top_weights(values: np.ndarray, k: int) -> np.ndarray:
    """Weight of each value in the top k: 1 above the k-th largest, an equal share of the rest when tied with it."""
    values = np.asarray(values, dtype=np.float64).ravel()
    kth = np.partition(values, values.size - k)[values.size - k]
    above, tied = values > kth, values == kth
    weights = above.astype(np.float64)
    weights[tied] = (k - above.sum()) / tied.sum()
    return weights


def in_lung_metrics(attribution: np.ndarray, lung_mask: np.ndarray, *, valid: np.ndarray | None = None,
                    top_fraction: float = 0.10) -> dict[str, float]:
    """The in-lung metrics of one map (IN_LUNG_KEYS, module docstring); NaN where undefined (see undefined_reason)."""
    values, lungs, valid = _checked(attribution, lung_mask, valid)
    result = dict.fromkeys(IN_LUNG_KEYS, math.nan)
    n_valid = int(valid.sum())
    k = top_count(max(n_valid, 1), top_fraction)
    reason = undefined_reason(values, lungs, valid=valid)
    if reason is not None and not reason.startswith("no positive"):
        return result  # no pixels or no lungs: nothing is defined, not even the chance level
    in_lung = lungs[valid]
    area = float(in_lung.mean())
    result["lung_area_fraction"] = area
    if reason is not None:
        return result
    positive = np.maximum(values[valid], 0.0)
    result["mass_in_lung_fraction"] = float(positive[in_lung].sum() / positive.sum())
    result["top_in_lung_fraction"] = float(top_weights(positive, k)[in_lung].sum() / k)
    result["mass_ratio"] = result["mass_in_lung_fraction"] / area
    result["top_ratio"] = result["top_in_lung_fraction"] / area
    return result


def component_fractions(attribution: np.ndarray, component_mask: np.ndarray, *, valid: np.ndarray | None = None,
                        bits: Mapping[str, int] = COMPONENT_BITS) -> dict[str, float]:
    """Share of positive mass on each phantom truth component, and each component's area share (chance).

    Keys component_fraction_<name> and component_area_fraction_<name>, both over valid pixels. A pixel
    carrying several bits (Kerley lines over lung opacity, say) counts for each, so the fractions may
    sum to more than 1. A component absent from the image gives NaN for both (the mean over images
    is then over the images that have it); a map without positive mass gives NaN fractions.
    """
    values, valid = _checked(attribution, valid)
    components = np.asarray(component_mask)
    if components.shape != values.shape:
        raise ValueError(f"component mask shape {components.shape} differs from the attribution's {values.shape}")
    positive = np.maximum(values[valid], 0.0)
    total = positive.sum()
    codes = components[valid].astype(np.int64)
    result = {}
    for name, bit in bits.items():
        on = (codes & bit) != 0
        present = bool(on.any())
        result[f"component_fraction_{name}"] = float(positive[on].sum() / total) if present and total > 0 else math.nan
        result[f"component_area_fraction_{name}"] = float(on.mean()) if present else math.nan
    return result


def content_mask(content_box: Sequence[int], size: int) -> np.ndarray:
    """bool [size, size], True inside (top, left, bottom, right) exclusive; an all-zero box (unknown) is all True."""
    top, left, bottom, right = (int(value) for value in content_box)
    mask = np.zeros((size, size), dtype=bool)
    if (top, left, bottom, right) == (0, 0, 0, 0):  # the record schema's default when the box is unknown
        mask[:] = True
        return mask
    if not (0 <= top < bottom <= size and 0 <= left < right <= size):
        raise ValueError(f"content box {tuple(content_box)} is not inside a {size} x {size} image")
    mask[top:bottom, left:right] = True
    return mask


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The numeric columns of a per-image frame other than ID_COLUMNS."""
    return [column for column in frame.columns
            if column not in ID_COLUMNS and pd.api.types.is_numeric_dtype(frame[column])
            and not pd.api.types.is_bool_dtype(frame[column])]


def _method_order(methods) -> list[str]:
    known = [method for method in METHOD_LABELS if method in set(methods)]
    return known + sorted(set(methods) - set(known))


def aggregate_in_lung(frame: pd.DataFrame, *, metrics: Sequence[str] | None = None, n_boot: int = 2000,
                      seed: int = 0, ci_level: float = 0.95) -> pd.DataFrame:
    """One row per method x size: n_images, n_patients, and per metric the mean over images with a
    patient-level percentile bootstrap CI (<metric>, <metric>_lo, <metric>_hi) and <metric>_n.

    Patients are resampled with replacement, each bringing all its images (bnp_cxr.evaluation.metrics.cluster_counts,
    the evaluation's bootstrap), and the mean is taken over the drawn images with a finite value (NaN:
    undefined for that image, e.g. an absent component). Every group uses the same seed, so methods
    at one size see the same patient draws when they cover the same patients.
    """
    if n_boot < MIN_BOOT:
        raise ValueError(f"n_boot must be >= {MIN_BOOT} for percentile CIs, got {n_boot}")
    missing = [column for column in ("patient_id", "method", "size") if column not in frame.columns]
    if missing:
        raise KeyError(f"frame lacks columns {missing}")
    names = list(metrics) if metrics is not None else metric_columns(frame)
    tail = 100 * (1 - ci_level) / 2
    rows = []
    for method in _method_order(frame["method"].unique()):
        for size in sorted(frame.loc[frame["method"] == method, "size"].unique()):
            group = frame[(frame["method"] == method) & (frame["size"] == size)]
            patients = group["patient_id"].astype(str).to_numpy()
            codes, counts = cluster_counts(patients, n_boot, seed)
            weights = counts[:, codes].astype(np.float64)
            row = {"method": method, "size": int(size), "n_images": len(group),
                   "n_patients": int(np.unique(patients).size)}
            for name in names:
                values = group[name].to_numpy(dtype=np.float64)
                finite = np.isfinite(values)
                drawn = weights[:, finite].sum(axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    means = weights[:, finite] @ values[finite] / drawn
                means = means[drawn > 0]  # resamples that drew none of the images with a value
                low, high = np.percentile(means, [tail, 100 - tail]) if means.size else (math.nan, math.nan)
                row.update({name: float(values[finite].mean()) if finite.any() else math.nan,
                            f"{name}_lo": float(low), f"{name}_hi": float(high), f"{name}_n": int(finite.sum())})
            rows.append(row)
    return pd.DataFrame(rows)


def study_columns(aggregate: pd.DataFrame, *,
                  metrics: Sequence[str] = ("mass_in_lung_fraction",)) -> dict[int, dict[str, dict]]:
    """Extra columns for bnp_cxr.evaluation.study's report (`extra=`): {size: {column: {estimate, ci_low, ci_high}}}.

    One column per method and metric, then the chance level (lung area fraction), read from the first
    method's row at that size: every method is scored on the same images, so they share it.
    """
    short = {"mass_in_lung_fraction": "in-lung mass", "top_in_lung_fraction": "in-lung top pixels"}
    columns: dict[int, dict[str, dict]] = {}
    for method in _method_order(aggregate["method"].unique()):
        for _, row in aggregate[aggregate["method"] == method].iterrows():
            cells = columns.setdefault(int(row["size"]), {})
            for name in metrics:
                cells[f"{short.get(name, name)}, {METHOD_LABELS.get(method, method)}"] = ci_entry(row, name)
    for size, cells in columns.items():
        first = aggregate[aggregate["size"] == size].iloc[0]
        cells["lung area fraction (chance)"] = ci_entry(first, CHANCE_METRIC)
    return columns


def ci_entry(row: Mapping, name: str) -> dict:
    """A study metric entry {estimate, ci_low, ci_high} from a row of aggregate_in_lung (None: undefined)."""
    def number(key: str) -> float | None:
        value = row.get(key)
        return float(value) if value is not None and np.isfinite(value) else None

    return {"estimate": number(name), "ci_low": number(f"{name}_lo"), "ci_high": number(f"{name}_hi")}


def plot_in_lung_trend(aggregate: pd.DataFrame, path: str | Path, *, metric: str = "mass_in_lung_fraction",
                       second: str | None = "top_in_lung_fraction", top_fraction: float = 0.10,
                       pdf: bool = False) -> list[Path]:
    """In-lung attention vs image size (log2 axis), one line per method with its CI band, chance dashed.

    Panels: `metric`, then `second` (None: one panel). Writes a PNG, and a PDF beside it when the
    suffix is .pdf or pdf=True; returns the paths written.
    """
    from matplotlib.figure import Figure

    panels = [metric] + ([second] if second and second != metric else [])
    figure = Figure(figsize=(3.6 * len(panels), 3.4), dpi=200, layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(panels), sharey=True))
    sizes = sorted(set(PAPER_SIZES) | {int(size) for size in aggregate["size"]})
    chance = aggregate.groupby("size")[CHANCE_METRIC].first().sort_index()
    colors = {"vanilla": "#1f5fa8", "gradcam": "#d2691e", "xrai": "#2e8b57"}
    for ax, name in zip(axes, panels):
        for method in _method_order(aggregate["method"].unique()):
            rows = aggregate[aggregate["method"] == method].sort_values("size")
            color = colors.get(method)
            ax.plot(rows["size"], rows[name], marker="o", ms=4, lw=1.5, color=color,
                    label=METHOD_LABELS.get(method, method))
            ax.fill_between(rows["size"], rows[f"{name}_lo"], rows[f"{name}_hi"], color=ax.lines[-1].get_color(),
                            alpha=0.18, lw=0)
        ax.plot(chance.index, chance.to_numpy(), color="0.35", ls="--", lw=1.2, label="chance (lung area fraction)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, labels=[str(size) for size in sizes])
        ax.minorticks_off()
        ax.set_xlim(min(sizes) / 1.3, max(sizes) * 1.3)
        ax.set_ylim(0, 1)
        ax.set_xlabel("image size (px, log2 axis)", fontsize=8)
        ax.set_title(METRIC_LABELS.get(name, name).format(top=top_fraction), fontsize=9)
        ax.tick_params(labelsize=7.5)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction (mean, 95% CI)", fontsize=8)
    # Below the panels: inside, it would cover lines wherever they happen to run.
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=4, fontsize=7,
                  frameon=False)
    figure.suptitle("In-lung attention by input size; bands: patient-level bootstrap 95% CI", fontsize=9)
    path = Path(path)
    written = [path.with_suffix(".png")]
    if pdf or path.suffix == ".pdf":
        written.append(path.with_suffix(".pdf"))
    for target in written:
        figure.savefig(target, metadata=NO_METADATA[target.suffix])
    return written

