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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import pearsonr
from sklearn.metrics import roc_auc_score, roc_curve

from bnp_cxr.data import labs

CHUNK_VALUES = 8_000_000  # bootstrap weights held at once (64 MB of float64): 2000 resamples x 4000 images
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
                "threshold, mirroring the label rule 'BNPP > 400 or BNP > 100 pg/mL' (Huynh et al., MIDL 2022); "
                "a test with no labelled row in the evaluated table is left out of the max",
}
LABEL_DEFINITIONS = {
    "bnpp": "true BNPP > threshold (censored labs on the wrong side of the threshold excluded)",
    "bnp": "true BNP > threshold (censored labs on the wrong side of the threshold excluded)",
    "combined": "the records' 'positive' label (1 / 0); unknown (-1) excluded",
}
NO_FINDING = "no_finding"  # a finding column that says there is none (NIH, CheXpert): not a finding itself
NEGATIVE_KINDS = {"clear": "negatives with no finding", "other_findings": "negatives with another finding"}
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


def cluster_counts(cluster_ids: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(cluster code per row, draws per cluster [n_boot, n_clusters]) of a cluster resampling with replacement."""
    _, codes = np.unique(np.asarray(cluster_ids), return_inverse=True)
    n_clusters = int(codes.max()) + 1 if codes.size else 0
    draws = np.random.default_rng(seed).integers(0, n_clusters, size=(n_boot, n_clusters))
    # One bincount over offset draws counts every resample at once.
    offsets = draws + np.arange(n_boot)[:, None] * n_clusters
    counts = np.bincount(offsets.ravel(), minlength=n_boot * n_clusters).reshape(n_boot, n_clusters)
    return codes.ravel(), counts


def bootstrap_weights(cluster_ids: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Row weights [n_boot, n_rows]: how often each row's cluster is drawn when clusters are resampled."""
    codes, counts = cluster_counts(cluster_ids, n_boot, seed)
    return counts[:, codes].astype(np.float64)


def weighted_pearson(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pearson r per weight row [B, n] -> [B]; NaN where x or y is constant or no weight."""
    weights = np.atleast_2d(weights)
    if x.size == 0:
        return np.full(weights.shape[0], np.nan)
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
    w = np.atleast_2d(weights)[:, order]
    positive = labels[order].astype(bool)
    pos, neg = np.where(positive, w, 0.0), np.where(positive, 0.0, w)
    ties = np.diff(sorted_scores) == 0
    if ties.any():  # reduceat is the slow part; continuous predictions rarely tie
        starts = np.r_[0, np.flatnonzero(~ties) + 1]
        return sorted_scores[starts], np.add.reduceat(pos, starts, axis=1), np.add.reduceat(neg, starts, axis=1)
    return sorted_scores, pos, neg


def _auc_from_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    pos_total, neg_total = pos.sum(axis=1), neg.sum(axis=1)
    neg_below = neg_total[:, None] - np.cumsum(neg, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (pos_total * neg_total)
    return np.where((pos_total > 0) & (neg_total > 0), auc, np.nan)


def _youden_from_counts(thresholds: np.ndarray, pos: np.ndarray, neg: np.ndarray):
    pos_total, neg_total = pos.sum(axis=1, keepdims=True), neg.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr, fpr = np.cumsum(pos, axis=1) / pos_total, np.cumsum(neg, axis=1) / neg_total
    rows = np.arange(pos.shape[0])
    if pos.shape[1] == 0:  # no labelled rows at all (e.g. a site without BNP): undefined, not an error
        undefined = np.full(pos.shape[0], np.nan)
        return undefined, undefined.copy(), undefined.copy()
    best = np.argmax(np.nan_to_num(tpr - fpr, nan=-np.inf), axis=1)
    # sklearn's first ROC point (threshold +inf, J = 0) wins ties, so J <= 0 means "call nobody positive".
    at_inf = (tpr - fpr)[rows, best] <= 0
    defined = (pos_total[:, 0] > 0) & (neg_total[:, 0] > 0)
    sensitivity = np.where(defined, np.where(at_inf, 0.0, tpr[rows, best]), np.nan)
    specificity = np.where(defined, np.where(at_inf, 1.0, 1.0 - fpr[rows, best]), np.nan)
    threshold = np.where(defined, np.where(at_inf, np.inf, thresholds[best]), np.nan)
    return sensitivity, specificity, threshold


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC per weight row [B, n] -> [B] (ties count 1/2, as roc_auc_score); NaN with one class only."""
    return _auc_from_counts(*_grouped_counts(labels, scores, weights)[1:])


def weighted_youden(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray):
    """(sensitivity, specificity, threshold) per weight row at the Youden point (max TPR - FPR).

    Same operating points and tie-break (the highest threshold) as argmax over sklearn's
    roc_curve(drop_intermediate=False), whose first point has threshold +inf.
    """
    return _youden_from_counts(*_grouped_counts(labels, scores, weights))


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
    """1 / 0 / -1 (unknown) per row: the lab above the threshold, by bnp_cxr.data.labs.test_positivity."""
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
    # A test nobody in the table had measured (a BNPP-only site, say) trained no output worth trusting.
    measured = [test for test in ("bnpp", "bnp") if (labels[test] >= 0).any()] or ["bnpp", "bnp"]
    margins["combined"] = np.max([margins[test] for test in measured], axis=0)
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


def _point_estimates(continuous: dict, tasks: list[BinaryTask]) -> tuple[dict[str, float], dict]:
    """Point estimates by scipy / sklearn, and the Youden cut-offs."""
    point, youden = {}, {}
    for test, (true, pred, _) in continuous.items():
        varied = true.size >= 2 and np.ptp(true) > 0 and np.ptp(pred) > 0
        point[f"pearson_r_log10_{test}"] = float(pearsonr(pred, true).statistic) if varied else math.nan
        point[f"mae_log10_{test}"] = float(np.mean(np.abs(pred - true))) if true.size else math.nan
    for task in tasks:
        two_classes = 0 < task.labels.sum() < task.labels.size
        point[f"auc_{task.name}"] = float(roc_auc_score(task.labels, task.scores)) if two_classes else math.nan
        sens, spec, cut = youden_point(task.labels, task.scores) if two_classes else (math.nan,) * 3
        point[f"sensitivity_{task.name}"], point[f"specificity_{task.name}"] = sens, spec
        finite = math.isfinite(cut)
        youden[task.name] = {
            "title": task.title, "score_margin_log10": cut if finite else None,
            "predicted_cutoff_pg_ml": 10 ** (cut + task.offset_log10) if finite and task.offset_log10 is not None
            else None,
            "n_positive": int(task.labels.sum()), "n_negative": int(task.labels.size - task.labels.sum())}
    return point, youden


def _resampled(continuous: dict, tasks: list[BinaryTask], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric on each row of weights [B, n_rows]."""
    out = {}
    for test, (true, pred, rows) in continuous.items():
        out[f"pearson_r_log10_{test}"] = weighted_pearson(pred, true, weights[:, rows])
        out[f"mae_log10_{test}"] = weighted_mae(pred, true, weights[:, rows])
    for task in tasks:
        counts = _grouped_counts(task.labels, task.scores, weights[:, task.rows])  # shared by AUC and Youden
        out[f"auc_{task.name}"] = _auc_from_counts(*counts[1:])
        sensitivity, specificity, _ = _youden_from_counts(*counts)
        out[f"sensitivity_{task.name}"], out[f"specificity_{task.name}"] = sensitivity, specificity
    return out


def _weight_chunks(cluster_ids: np.ndarray, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap row weights in chunks of at most CHUNK_VALUES values, so memory stays flat for large test sets."""
    codes, counts = cluster_counts(cluster_ids, n_boot, seed)
    chunk = max(1, CHUNK_VALUES // max(codes.size, 1))
    for start in range(0, n_boot, chunk):
        yield counts[start:start + chunk][:, codes].astype(np.float64)


def _subset_aucs(table: Mapping, subsets: dict[str, tuple[np.ndarray, np.ndarray]], n_boot: int, seed: int,
                 ci_level: float) -> dict[str, dict]:
    """AUC [patient-bootstrap CI] of predicted log10 BNPP per named (rows, 0/1 labels of those rows)."""
    patients = np.asarray(table["patient_id"]).astype(str)
    scores = np.asarray(table["pred_log10_bnpp"], dtype=np.float64)
    boot: dict[str, list[np.ndarray]] = {name: [] for name in subsets}
    for weights in _weight_chunks(patients, n_boot, seed):  # one resampling shared by every subset
        for name, (rows, labels) in subsets.items():
            boot[name].append(weighted_auc(labels, scores[rows], weights[:, rows]))
    results = {}
    for name, (rows, labels) in subsets.items():
        two_classes = 0 < labels.sum() < labels.size
        point = float(roc_auc_score(labels, scores[rows])) if two_classes else math.nan
        results[name] = {**_estimate(point, np.concatenate(boot[name]), rows, patients, ci_level).to_dict(),
                         "n_positive": int(labels.sum())}
    return results


def finding_aucs(table: Mapping, findings: Sequence[str], *, n_boot: int = 2000, seed: int = 0,
                 ci_level: float = 0.95) -> dict[str, dict]:
    """AUC [patient-bootstrap CI] of predicted log10 BNPP against each binary finding column of `table`.

    Rows whose finding is not 0 / 1 (-1 = not given, NaN) are left out of that finding's AUC only
    (Huynh et al., IEEE Access 2022: predicted BNPP against radiologist edema labels, AUC 0.801).
    """
    scores = np.asarray(table["pred_log10_bnpp"], dtype=np.float64)
    subsets = {}
    for name in findings:
        values = np.asarray(table[name], dtype=np.float64)
        rows = np.isin(values, (0.0, 1.0)) & np.isfinite(scores)
        subsets[name] = rows, values[rows].astype(np.int64)
    return _subset_aucs(table, subsets, n_boot, seed, ci_level)


def negative_kind_aucs(table: Mapping, findings: Sequence[str], *, n_boot: int = 2000, seed: int = 0,
                       ci_level: float = 0.95) -> dict[str, dict]:
    """AUC [patient-bootstrap CI] of predicted log10 BNPP for the positive label against each kind of negative:
    `clear` (every finding given is 0) and `other_findings` (some finding column is 1), which says whether a
    model confuses heart-failure signs with normal films or with other disease.

    `no_finding` is not a finding here; a negative with no finding given is in neither; {} without findings.
    """
    names = [name for name in findings if name != NO_FINDING]
    if not names:
        return {}
    values = np.column_stack([np.asarray(table[name], dtype=np.float64) for name in names])
    scores = np.asarray(table["pred_log10_bnpp"], dtype=np.float64)
    label = np.asarray(table["positive"], dtype=np.float64)
    other = (values == 1).any(axis=1)
    clear = ~other & np.isin(values, (0.0, 1.0)).any(axis=1)
    usable = np.isfinite(scores)
    subsets = {}
    for kind, negatives in zip(NEGATIVE_KINDS, (clear, other)):
        rows = usable & ((label == 1) | ((label == 0) & negatives))
        subsets[kind] = rows, (label[rows] == 1).astype(np.int64)
    return _subset_aucs(table, subsets, n_boot, seed, ci_level)


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
    continuous = {}
    for test in ("bnpp", "bnp"):
        true = np.asarray(table[f"true_log10_{test}"], dtype=np.float64)
        pred = np.asarray(table[f"pred_log10_{test}"], dtype=np.float64)
        rows = np.isfinite(true) & np.isfinite(pred)
        continuous[test] = (true[rows], pred[rows], rows)
    tasks = binary_tasks(table, thresholds)
    point, youden = _point_estimates(continuous, tasks)
    boot: dict[str, list[np.ndarray]] = {}
    for weights in _weight_chunks(patients if cluster == "patient" else np.arange(patients.size), n_boot, seed):
        for name, values in _resampled(continuous, tasks, weights).items():
            boot.setdefault(name, []).append(values)
    rows_of = {**{f"{kind}_log10_{test}": rows for test, (_, _, rows) in continuous.items()
                  for kind in ("pearson_r", "mae")},
               **{f"{kind}_{task.name}": task.rows for task in tasks
                  for kind in ("auc", "sensitivity", "specificity")}}
    estimates = {name: _estimate(point[name], np.concatenate(boot[name]), rows_of[name], patients,
                                 ci_level).to_dict() for name in point}
    return {
        "n_images": int(patients.size),
        "n_patients": int(np.unique(patients).size),
        "bootstrap": {"method": CI_METHOD if cluster == "patient" else ROW_CI_METHOD,
                      "resampling_unit": cluster, "n_boot": n_boot, "seed": seed, "ci_level": ci_level},
        "thresholds_pg_ml": {"bnpp": thresholds.bnpp_pg_ml, "bnp": thresholds.bnp_pg_ml},
        "scores": SCORE_DEFINITIONS,
        "labels": LABEL_DEFINITIONS,
        "youden": youden,
        "metrics": estimates,
    }
