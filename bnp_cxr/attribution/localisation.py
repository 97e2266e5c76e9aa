"""Localisation of attribution maps against a mask: pointing game, Otsu IoU, and the phantom's truth components.

Over the valid pixels V (content box) of a map a with a ground-truth mask G:

- pointing game (hit rate): 1 when a maximum of a over V lies in G, else 0. Ties at the maximum count as a
  hit when any tied pixel is in G, as Quantus' PointingGame; CheXlocalize (Saporta et al., Nat Mach Intell
  2022) scores the same hit rate;
- Otsu IoU (CheXlocalize's `cam_to_segmentation`): the positive part p = max(a, 0) over V, min-max scaled to
  [0, 1] and to uint8 (x 255), thresholded with Otsu's method (OpenCV), the external contours filled, then
  |S & G| / |S | G| over V;
- truth shares (phantom only): the share of positive mass on each true signal component
  (bnp_cxr.attribution.inlung.component_fractions), and the truth score: positive mass on the union of the
  lung-signal components (LUNG_SIGNAL_COMPONENTS) over that union's area share. 1 = chance; the phantom's
  truth ranking of methods orders them by this score.

Quantus' other localisation metrics on plain arrays: relevance mass accuracy (raw map), relevance rank
accuracy and top-k intersection (ties at the cut share the remaining places, as the in-lung top-k);
bench/quantus_check.py compares every one of them with Quantus on the same arrays.

A metric that is undefined for an image (no mask, empty mask, flat or non-positive map) is NaN, never 0.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from bnp_cxr.attribution.inlung import component_fractions, in_lung_metrics, top_weights
from bnp_cxr.workspace import COMPONENT_BITS

LUNG_SIGNAL_COMPONENTS = ("lung_opacity", "kerley_lines", "effusion")
TRUTH_KEYS = ("truth_mass_fraction", "truth_area_fraction", "truth_ratio")
MASK_KEYS = ("pointing_game", "otsu_iou")


def _valid(values: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    if valid is None:
        return np.ones(values.shape, dtype=bool)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != values.shape:
        raise ValueError(f"valid mask shape {valid.shape} differs from the attribution's {values.shape}")
    return valid


def pointing_game(attribution: np.ndarray, mask: np.ndarray, *, valid: np.ndarray | None = None) -> float:
    """1.0 when a maximum of the map over the valid pixels lies in `mask`, 0.0 if not; NaN for a flat map or no mask."""
    values = np.asarray(attribution, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    valid = _valid(values, valid)
    inside = values[valid]
    if not (mask & valid).any() or inside.size == 0 or np.ptp(inside) == 0:
        return math.nan
    return float(np.any(mask[valid][inside == inside.max()]))


def otsu_segmentation(attribution: np.ndarray, *, valid: np.ndarray | None = None) -> np.ndarray | None:
    """CheXlocalize's Otsu segmentation of the map's positive part (module docstring); None for a flat map."""
    values = np.maximum(np.asarray(attribution, dtype=np.float64), 0.0)
    valid = _valid(values, valid)
    values = np.where(valid, values, 0.0)
    low, high = values[valid].min(initial=0.0), values[valid].max(initial=0.0)
    if high <= low:
        return None
    scaled = np.uint8(255 * (values - low) / (high - low))
    _, thresholded = cv2.threshold(scaled, 0, int(scaled.max()), cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    contours, _ = cv2.findContours(thresholded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(thresholded)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return (filled > 0) & valid


def otsu_iou(attribution: np.ndarray, mask: np.ndarray, *, valid: np.ndarray | None = None) -> float:
    """IoU of the Otsu segmentation with `mask` over the valid pixels; NaN for a flat map or an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    valid = _valid(np.asarray(attribution), valid)
    segmentation = otsu_segmentation(attribution, valid=valid)
    truth = mask & valid
    if segmentation is None or not truth.any():
        return math.nan
    return float((segmentation & truth).sum() / (segmentation | truth).sum())


def relevance_mass_accuracy(attribution: np.ndarray, mask: np.ndarray, *, valid: np.ndarray | None = None) -> float:
    """sum(a over G) / sum(a) of the raw map over the valid pixels (Arras et al. 2022; Quantus' abs=False)."""
    values = np.asarray(attribution, dtype=np.float64)
    valid = _valid(values, valid)
    inside = np.asarray(mask, dtype=bool)[valid]
    total = values[valid].sum()
    return float(values[valid][inside].sum() / total) if inside.any() and total != 0 else math.nan


def top_k_intersection(attribution: np.ndarray, mask: np.ndarray, k: int, *, valid: np.ndarray | None = None) -> float:
    """Share of the k highest-valued valid pixels inside G; ties at the k-th value share the rest (top_weights)."""
    values = np.asarray(attribution, dtype=np.float64)
    valid = _valid(values, valid)
    inside = np.asarray(mask, dtype=bool)[valid]
    if not inside.any() or not 1 <= k <= inside.size:
        return math.nan
    return float(top_weights(values[valid], k)[inside].sum() / k)


def relevance_rank_accuracy(attribution: np.ndarray, mask: np.ndarray, *, valid: np.ndarray | None = None) -> float:
    """Share of the |G| highest-valued valid pixels inside G (Arras et al. 2022): top_k_intersection with k = |G|."""
    k = int((np.asarray(mask, dtype=bool) & _valid(np.asarray(attribution), valid)).sum())
    return top_k_intersection(attribution, mask, k, valid=valid) if k else math.nan


def truth_scores(attribution: np.ndarray, component_mask: np.ndarray, *, valid: np.ndarray | None = None) -> dict:
    """Per-component shares (component_fraction_*, component_area_fraction_*) and the truth score (TRUTH_KEYS)."""
    result = component_fractions(attribution, component_mask, valid=valid)
    values = np.asarray(attribution, dtype=np.float64)
    valid = _valid(values, valid)
    bits = sum(COMPONENT_BITS[name] for name in LUNG_SIGNAL_COMPONENTS)
    on = (np.asarray(component_mask).astype(np.int64)[valid] & bits) != 0
    positive = np.maximum(values[valid], 0.0)
    area = float(on.mean()) if on.any() else math.nan
    mass = float(positive[on].sum() / positive.sum()) if on.any() and positive.sum() > 0 else math.nan
    result.update(truth_mass_fraction=mass, truth_area_fraction=area, truth_ratio=mass / area)
    return result


def localisation_metrics(attribution: np.ndarray, lung_mask: np.ndarray | None, component_mask: np.ndarray | None,
                         *, valid: np.ndarray | None = None, top_fraction: float = 0.10) -> dict[str, float]:
    """Every localisation metric of one map: in-lung, pointing game and Otsu IoU on the lungs, truth shares."""
    row: dict[str, float] = {}
    if lung_mask is not None:
        row.update(in_lung_metrics(attribution, lung_mask, valid=valid, top_fraction=top_fraction))
        row["pointing_game"] = pointing_game(attribution, lung_mask, valid=valid)
        row["otsu_iou"] = otsu_iou(attribution, lung_mask, valid=valid)
    if component_mask is not None:
        row.update(truth_scores(attribution, component_mask, valid=valid))
    return row
