"""Test-split metrics with patient-level (cluster) bootstrap 95% confidence intervals.

Pure numpy / scipy / scikit-learn (no TensorFlow). Point estimates come from scipy.stats.pearsonr,
sklearn.metrics.roc_auc_score and roc_curve. The bootstrap re-computes each metric on every resample
in one vectorised pass: a resample of patients is a vector of integer row weights (how often each
image's patient was drawn), and weighted Pearson r, MAE, AUC and Youden point equal the unweighted
ones on the expanded (duplicated) rows, so 2000 resamples x 3000 images take about a second.

Why patients, not images: images of one patient are correlated, so an image-level bootstrap
understates the uncertainty (Field & Welsh, "Bootstrapping clustered data", JRSS-B 69:369, 2007).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import pearsonr
from sklearn.metrics import roc_auc_score, roc_curve

from bnp_cxr import labs

MIN_BOOT = 1000  # percentile CIs need >= 1000 resamples for stable 2.5 / 97.5 % tails (Efron & Tibshirani 1993, ch. 13)
CI_METHOD = ("patient-level (cluster) percentile bootstrap: patients are drawn with replacement (as many as there "
             "are), each drawn patient brings all of its images, every metric is recomputed on each resample "
             "(sensitivity / specificity with the Youden point re-chosen), and the CI is the 2.5th..97.5th "
             "percentile; resamples where a metric is undefined (one class only, constant values) are skipped "
             "and counted")
ROW_CI_METHOD = ("image-level percentile bootstrap (images drawn with replacement, ignoring patients; for "
                 "comparison only, it understates the uncertainty of correlated images)")
SCORE_DEFINITIONS = {
    "bnpp": "predicted log10 BNPP - log10(BNPP threshold)",
    "bnp": "predicted log10 BNP - log10(BNP threshold)",
    "combined": "max of the BNPP and BNP margins above: positive when either predicted value crosses its "
                "threshold, mirroring the label rule 'BNPP > 400 or BNP > 100 pg/mL' (Huynh et al., MIDL 2022)",
}
LABEL_DEFINITIONS = {
    "bnpp": "true BNPP > threshold (censored labs on the wrong side of the threshold excluded)",
    "bnp": "true BNP > threshold (censored labs on the wrong side of the threshold excluded)",
    "combined": "the records' 'positive' label (1 / 0); unknown (-1) excluded",
}
COLUMNS = ("patient_id", "true_log10_bnp", "pred_log10_bnp", "true_log10_bnpp", "pred_log10_bnpp", "positive")


@dataclass(frozen=True)
class Estimate:
    """A metric's point estimate, its bootstrap CI and the counts behind it."""

    estimate: float
    ci_low: float
    ci_high: float
    n: int
    n_patients: int
    n_boot_valid: int
    n_boot_skipped: int

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN becomes None)."""
        return {key: (None if isinstance(value, float) and math.isnan(value) else value)
                for key, value in asdict(self).items()}


@dataclass(frozen=True)
class BinaryTask:
    """One ROC task: labels (0/1) and scores of the rows where the label is known."""

    name: str
    title: str
    rows: np.ndarray  # bool mask into the table's rows
    labels: np.ndarray  # int 0/1, len == rows.sum()
    scores: np.ndarray
    offset_log10: float | None  # log10 threshold the score is a margin above (None: combined)


def bootstrap_weights(cluster_ids: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Row weights [n_boot, n_rows]: how often each row's cluster is drawn when clusters are resampled."""
    _, codes = np.unique(np.asarray(cluster_ids), return_inverse=True)
    n_clusters = int(codes.max()) + 1 if codes.size else 0
    draws = np.random.default_rng(seed).integers(0, n_clusters, size=(n_boot, n_clusters))
    # One bincount over offset draws counts every resample at once.
    offsets = draws + np.arange(n_boot)[:, None] * n_clusters
    counts = np.bincount(offsets.ravel(), minlength=n_boot * n_clusters).reshape(n_boot, n_clusters)
    return counts[:, codes].astype(np.float64)


def weighted_pearson(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pearson r per weight row [B, n] -> [B]; NaN where x or y is constant or no weight."""
    weights = np.atleast_2d(weights)
    # Centring first keeps E[x^2] - E[x]^2 away from catastrophic cancellation.
    x, y = x - x.mean(), y - y.mean()
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_x, mean_y = weights @ x / total, weights @ y / total
        var_x = weights @ (x * x) / total - mean_x ** 2
        var_y = weights @ (y * y) / total - mean_y ** 2
        r = (weights @ (x * y) / total - mean_x * mean_y) / np.sqrt(var_x * var_y)
    tiny_x, tiny_y = 1e-12 * (x @ x / max(x.size, 1) + 1e-300), 1e-12 * (y @ y / max(y.size, 1) + 1e-300)
    defined = (total > 0) & (var_x > tiny_x) & (var_y > tiny_y)
    return np.where(defined, np.clip(r, -1.0, 1.0), np.nan)


def weighted_mae(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean absolute error per weight row [B, n] -> [B]; NaN where no weight."""
    weights = np.atleast_2d(weights)
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, weights @ np.abs(x - y) / total, np.nan)


def _grouped_counts(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray):
    """Unique scores (descending) and the positive / negative weight at each, per weight row."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    w = np.atleast_2d(weights)[:, order]
    positive = labels[order].astype(bool)
    pos = np.add.reduceat(np.where(positive, w, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(positive, 0.0, w), starts, axis=1)
    return sorted_scores[starts], pos, neg


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC per weight row [B, n] -> [B] (ties count 1/2, as roc_auc_score); NaN with one class only."""
    _, pos, neg = _grouped_counts(labels, scores, weights)
    pos_total, neg_total = pos.sum(axis=1), neg.sum(axis=1)
    neg_below = neg_total[:, None] - np.cumsum(neg, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (pos_total * neg_total)
    return np.where((pos_total > 0) & (neg_total > 0), auc, np.nan)


def weighted_youden(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray):
    """(sensitivity, specificity, threshold) per weight row at the Youden point (max TPR - FPR).

    Same operating points and tie-break (the highest threshold) as argmax over sklearn's
    roc_curve(drop_intermediate=False), whose first point has threshold +inf.
    """
    thresholds, pos, neg = _grouped_counts(labels, scores, weights)
    pos_total, neg_total = pos.sum(axis=1, keepdims=True), neg.sum(axis=1, keepdims=True)
    zero = np.zeros((pos.shape[0], 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.hstack([zero, np.cumsum(pos, axis=1)]) / pos_total
        fpr = np.hstack([zero, np.cumsum(neg, axis=1)]) / neg_total
    best = np.argmax(np.nan_to_num(tpr - fpr, nan=-np.inf), axis=1)
    rows = np.arange(pos.shape[0])
    defined = (pos_total[:, 0] > 0) & (neg_total[:, 0] > 0)
    sensitivity = np.where(defined, tpr[rows, best], np.nan)
    specificity = np.where(defined, 1.0 - fpr[rows, best], np.nan)
    threshold = np.where(defined, np.r_[np.inf, thresholds][best], np.nan)
    return sensitivity, specificity, threshold


def youden_point(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float, float]:
    """(sensitivity, specificity, threshold) at the Youden point of sklearn's roc_curve."""
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    return float(tpr[best]), float(1.0 - fpr[best]), float(thresholds[best])


def _pg_ml(log10_values: np.ndarray) -> np.ndarray:
    """pg/mL from stored log10 values, rounded to 6 significant digits.

    Records hold float32 log10 values, so 10 ** log10(400) can come back as 400.00003 and flip a lab
    exactly at the threshold to positive; lab values never carry more than 6 significant digits.
    """
    values = np.power(10.0, np.asarray(log10_values, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.power(10.0, np.floor(np.log10(values)) - 5)
    return np.where(np.isfinite(values), np.round(values / scale) * scale, np.nan)


def threshold_labels(true_log10: np.ndarray, censored: np.ndarray, threshold_pg_ml: float) -> np.ndarray:
    """1 / 0 / -1 (unknown) per row: the lab above the threshold, by bnp_cxr.labs.test_positivity."""
    return np.array([labs.test_positivity(float(value), int(flag), threshold_pg_ml)
                     for value, flag in zip(_pg_ml(true_log10), censored)], dtype=np.int64)


def binary_tasks(table: Mapping, thresholds: labs.PositivityThresholds = labs.PositivityThresholds()
                 ) -> list[BinaryTask]:
    """The three ROC tasks (BNPP > t, BNP > t, combined) with labels and margin scores (SCORE_DEFINITIONS)."""
    n_rows = len(table["patient_id"])
    bnpp, bnp = thresholds.bnpp_pg_ml, thresholds.bnp_pg_ml
    offsets = {"bnpp": math.log10(bnpp), "bnp": math.log10(bnp), "combined": None}
    margins, labels = {}, {"combined": np.asarray(table["positive"], dtype=np.int64)}
    for test, threshold in (("bnpp", bnpp), ("bnp", bnp)):
        margins[test] = np.asarray(table[f"pred_log10_{test}"], dtype=np.float64) - offsets[test]
        censored = np.asarray(table[f"{test}_censored"]) if f"{test}_censored" in table else np.zeros(n_rows, int)
        labels[test] = threshold_labels(np.asarray(table[f"true_log10_{test}"]), censored, threshold)
    margins["combined"] = np.maximum(margins["bnpp"], margins["bnp"])
    specs = {"bnpp": (f"bnpp_gt_{bnpp:g}", f"BNPP > {bnpp:g} pg/mL"),
             "bnp": (f"bnp_gt_{bnp:g}", f"BNP > {bnp:g} pg/mL"),
             "combined": ("combined", f"combined (BNPP > {bnpp:g} or BNP > {bnp:g})")}
    tasks = []
    for key, (name, title) in specs.items():
        rows = (labels[key] >= 0) & np.isfinite(margins[key])
        tasks.append(BinaryTask(name, title, rows, labels[key][rows], margins[key][rows], offsets[key]))
    return tasks


def _estimate(point: float, resampled: np.ndarray, rows: np.ndarray, patients: np.ndarray,
              ci_level: float) -> Estimate:
    valid = resampled[np.isfinite(resampled)]
    tail = 100 * (1 - ci_level) / 2
    low, high = np.percentile(valid, [tail, 100 - tail]) if valid.size else (math.nan, math.nan)
    return Estimate(float(point), float(low), float(high), int(rows.sum()), int(np.unique(patients[rows]).size),
                    int(valid.size), int(resampled.size - valid.size))


def _continuous(true: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray, float, np.ndarray]:
    """(Pearson r, resampled r, MAE, resampled MAE) of paired log10 values."""
    r = float(pearsonr(pred, true).statistic) if true.size >= 2 and np.ptp(true) > 0 and np.ptp(pred) > 0 else math.nan
    mae = float(np.mean(np.abs(pred - true))) if true.size else math.nan
    return r, weighted_pearson(pred, true, weights), mae, weighted_mae(pred, true, weights)


def compute_metrics(table: Mapping, *, n_boot: int = 2000, seed: int = 0, ci_level: float = 0.95,
                    thresholds: labs.PositivityThresholds = labs.PositivityThresholds(),
                    cluster: str = "patient") -> dict:
    """Every metric with point estimate and bootstrap CI, as a JSON-ready dict.

    `table` maps COLUMNS (plus optional bnp_censored / bnpp_censored) to equal-length arrays, e.g. the
    DataFrame of bnp_cxr.evaluation.predict_split. cluster="row" resamples images instead of patients
    (only to show how much clustering matters; report the patient bootstrap).
    """
    if n_boot < MIN_BOOT:
        raise ValueError(f"n_boot must be >= {MIN_BOOT} for percentile CIs, got {n_boot}")
    if cluster not in ("patient", "row"):
        raise ValueError(f"cluster must be 'patient' or 'row', got {cluster!r}")
    missing = [column for column in COLUMNS if column not in table]
    if missing:
        raise KeyError(f"table lacks columns {missing}")
    patients = np.asarray(table["patient_id"]).astype(str)
    units = patients if cluster == "patient" else np.arange(patients.size)
    weights = bootstrap_weights(units, n_boot, seed)
    results: dict[str, Estimate] = {}
    for test in ("bnpp", "bnp"):
        true = np.asarray(table[f"true_log10_{test}"], dtype=np.float64)
        pred = np.asarray(table[f"pred_log10_{test}"], dtype=np.float64)
        rows = np.isfinite(true) & np.isfinite(pred)
        r, r_boot, mae, mae_boot = _continuous(true[rows], pred[rows], weights[:, rows])
        results[f"pearson_r_log10_{test}"] = _estimate(r, r_boot, rows, patients, ci_level)
        results[f"mae_log10_{test}"] = _estimate(mae, mae_boot, rows, patients, ci_level)
    youden_thresholds = {}
    for task in binary_tasks(table, thresholds):
        w = weights[:, task.rows]
        two_classes = 0 < task.labels.sum() < task.labels.size
        auc = float(roc_auc_score(task.labels, task.scores)) if two_classes else math.nan
        sens, spec, cut = youden_point(task.labels, task.scores) if two_classes else (math.nan,) * 3
        sens_boot, spec_boot, _ = weighted_youden(task.labels, task.scores, w)
        results[f"auc_{task.name}"] = _estimate(auc, weighted_auc(task.labels, task.scores, w), task.rows,
                                                patients, ci_level)
        results[f"sensitivity_{task.name}"] = _estimate(sens, sens_boot, task.rows, patients, ci_level)
        results[f"specificity_{task.name}"] = _estimate(spec, spec_boot, task.rows, patients, ci_level)
        youden_thresholds[task.name] = {
            "title": task.title, "score_margin_log10": None if not math.isfinite(cut) else cut,
            "predicted_cutoff_pg_ml": (10 ** (cut + task.offset_log10)
                                       if task.offset_log10 is not None and math.isfinite(cut) else None),
            "n_positive": int(task.labels.sum()), "n_negative": int(task.labels.size - task.labels.sum())}
    return {
        "n_images": int(patients.size),
        "n_patients": int(np.unique(patients).size),
        "bootstrap": {"method": CI_METHOD if cluster == "patient" else ROW_CI_METHOD,
                      "resampling_unit": cluster, "n_boot": n_boot, "seed": seed, "ci_level": ci_level},
        "thresholds_pg_ml": {"bnpp": thresholds.bnpp_pg_ml, "bnp": thresholds.bnp_pg_ml},
        "scores": SCORE_DEFINITIONS,
        "labels": LABEL_DEFINITIONS,
        "youden": youden_thresholds,
        "metrics": {name: estimate.to_dict() for name, estimate in results.items()},
    }
