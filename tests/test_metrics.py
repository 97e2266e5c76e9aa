"""Metrics: vectorised weighted metrics vs sklearn / scipy, and the patient-level bootstrap on known truths."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import roc_auc_score

from bnp_cxr.evaluation import metrics
from bnp_cxr.data.labs import LEFT_CENSORED, RIGHT_CENSORED, UNCENSORED, PositivityThresholds

LOG400, LOG100 = math.log10(400), math.log10(100)


def make_table(n_patients, noise=0.3, seed=0, bnp_fraction=0.5):
    """Synthetic test split, one image per patient: prediction = truth + noise (noise=None: random)."""
    rng = np.random.default_rng(seed)
    true_bnpp, true_bnp = rng.normal(2.9, 0.7, n_patients), rng.normal(2.2, 0.6, n_patients)
    if noise is None:
        pred_bnpp, pred_bnp = rng.normal(2.9, 0.7, n_patients), rng.normal(2.2, 0.6, n_patients)
    else:
        pred_bnpp, pred_bnp = true_bnpp + rng.normal(0, noise, n_patients), true_bnp + rng.normal(0, noise, n_patients)
    true_bnp[rng.random(n_patients) > bnp_fraction] = np.nan
    positive = ((true_bnpp > LOG400) | (np.nan_to_num(true_bnp) > LOG100)).astype(int)
    return {"patient_id": np.array([f"P{i:05d}" for i in range(n_patients)]),
            "true_log10_bnp": true_bnp, "pred_log10_bnp": pred_bnp, "true_log10_bnpp": true_bnpp,
            "pred_log10_bnpp": pred_bnpp, "positive": positive}


def ci_width(result, name):
    entry = result["metrics"][name]
    return entry["ci_high"] - entry["ci_low"]


@pytest.fixture
def scored():
    """Labels and tied, discrete scores (ties exercise the AUC 1/2 rule and the Youden tie-break)."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    scores = np.round(labels * 0.8 + rng.normal(0, 1, 300), 1)
    return labels, scores, rng.normal(0, 1, 300) + scores


def test_bootstrap_weights_resample_whole_patients():
    clusters = np.array(["a", "a", "b", "c", "c", "c"])
    weights = metrics.bootstrap_weights(clusters, 500, seed=1)
    assert weights.shape == (500, 6)
    np.testing.assert_array_equal(weights[:, 0], weights[:, 1])
    np.testing.assert_array_equal(weights[:, 3], weights[:, 5])
    # Three patients drawn per resample: first-image weights sum to 3.
    np.testing.assert_array_equal(weights[:, [0, 2, 3]].sum(axis=1), 3)
    np.testing.assert_array_equal(weights, metrics.bootstrap_weights(clusters, 500, seed=1))
    assert not np.array_equal(weights, metrics.bootstrap_weights(clusters, 500, seed=2))


@pytest.mark.parametrize("kind", ["pearson", "mae", "auc", "youden"])
def test_weighted_metrics_equal_sklearn_scipy_on_expanded_rows(scored, kind):
    labels, scores, other = scored
    counts = metrics.bootstrap_weights(np.arange(labels.size), 20, seed=5)
    for weights in [np.ones(labels.size), *counts]:
        keep = np.repeat(np.arange(labels.size), weights.astype(int))
        if kind == "pearson":
            got, want = metrics.weighted_pearson(scores, other, weights)[0], pearsonr(scores[keep], other[keep])[0]
        elif kind == "mae":
            got, want = metrics.weighted_mae(scores, other, weights)[0], np.mean(np.abs(scores - other)[keep])
        elif kind == "auc":
            got, want = metrics.weighted_auc(labels, scores, weights)[0], roc_auc_score(labels[keep], scores[keep])
        else:
            got = [value[0] for value in metrics.weighted_youden(labels, scores, weights)]
            want = metrics.youden_point(labels[keep], scores[keep])
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("labels, scores", [
    ([1, 1, 1], [0.1, 0.2, 0.3]),   # one class only
    ([0, 0, 1], [0.5, 0.5, 0.5]),   # defined: every score tied
])
def test_weighted_auc_one_class_is_nan_and_ties_are_half(labels, scores):
    labels, scores = np.array(labels), np.array(scores)
    got = metrics.weighted_auc(labels, scores, np.ones(3))[0]
    if len(set(labels)) == 1:
        assert math.isnan(got) and all(math.isnan(v[0]) for v in metrics.weighted_youden(labels, scores, np.ones(3)))
    else:
        assert got == pytest.approx(roc_auc_score(labels, scores)) == 0.5


@pytest.mark.parametrize("x, y", [([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [5.0, 5.0, 5.0])])
def test_weighted_pearson_constant_input_is_nan(x, y):
    assert math.isnan(metrics.weighted_pearson(np.array(x), np.array(y), np.ones(3))[0])


def test_perfect_predictor():
    table = make_table(300, noise=0.0, bnp_fraction=1.0)  # every BNP known, so the combined margin is exact too
    result = metrics.compute_metrics(table, n_boot=1000)["metrics"]
    for test in ("bnpp", "bnp"):
        assert result[f"pearson_r_log10_{test}"]["estimate"] == pytest.approx(1.0)
        assert result[f"pearson_r_log10_{test}"]["ci_low"] == pytest.approx(1.0)
        assert result[f"mae_log10_{test}"]["ci_high"] == pytest.approx(0.0, abs=1e-12)
    for task in ("bnpp_gt_400", "bnp_gt_100", "combined"):
        for name in ("auc", "sensitivity", "specificity"):
            entry = result[f"{name}_{task}"]
            assert entry["estimate"] == entry["ci_low"] == entry["ci_high"] == 1.0


def test_random_predictor_auc_near_half_with_ci_covering_it():
    result = metrics.compute_metrics(make_table(1500, noise=None, seed=11), n_boot=1000)["metrics"]
    for task in ("bnpp_gt_400", "bnp_gt_100", "combined"):
        entry = result[f"auc_{task}"]
        assert abs(entry["estimate"] - 0.5) < 0.06
        assert entry["ci_low"] < 0.5 < entry["ci_high"]
    r = result["pearson_r_log10_bnpp"]
    assert r["ci_low"] < 0.0 < r["ci_high"]


def test_ci_matches_analytic_standard_errors():
    """Independent patients: bootstrap CIs agree with Fisher-z (r) and sd/sqrt(n) (MAE) to ~15%."""
    table = make_table(2000, noise=0.5, seed=4)
    result = metrics.compute_metrics(table, n_boot=2000)
    r = result["metrics"]["pearson_r_log10_bnpp"]
    z_half = 1.959964 / math.sqrt(r["n"] - 3)
    fisher = np.tanh(np.arctanh(r["estimate"]) + np.array([-z_half, z_half]))
    assert ci_width(result, "pearson_r_log10_bnpp") == pytest.approx(fisher[1] - fisher[0], rel=0.15)
    errors = np.abs(table["pred_log10_bnpp"] - table["true_log10_bnpp"])
    analytic = 2 * 1.959964 * errors.std(ddof=1) / math.sqrt(errors.size)
    assert ci_width(result, "mae_log10_bnpp") == pytest.approx(analytic, rel=0.15)


def test_ci_width_shrinks_with_n():
    small = metrics.compute_metrics(make_table(200, seed=1), n_boot=1000)
    large = metrics.compute_metrics(make_table(3200, seed=1), n_boot=1000)
    for name in ("pearson_r_log10_bnpp", "mae_log10_bnpp", "auc_bnpp_gt_400", "auc_combined"):
        # sqrt(3200 / 200) = 4: the width should fall by about 4x, certainly by more than 2x.
        assert ci_width(large, name) < 0.5 * ci_width(small, name)


def test_patient_clustering_widens_ci_over_row_bootstrap():
    """Five identical images per patient carry one patient's information, not five."""
    table = {key: np.repeat(values, 5) for key, values in make_table(400, seed=2).items()}
    by_patient = metrics.compute_metrics(table, n_boot=1000)
    by_row = metrics.compute_metrics(table, n_boot=1000, cluster="row")
    assert by_patient["bootstrap"]["resampling_unit"] == "patient"
    assert "patient-level" in by_patient["bootstrap"]["method"]
    assert by_row["bootstrap"]["resampling_unit"] == "row"
    for name in ("pearson_r_log10_bnpp", "mae_log10_bnpp", "auc_bnpp_gt_400", "auc_combined"):
        assert ci_width(by_patient, name) > 1.7 * ci_width(by_row, name)  # sqrt(5) = 2.24 expected
    # The point estimates do not depend on the resampling.
    assert by_patient["metrics"]["auc_combined"]["estimate"] == by_row["metrics"]["auc_combined"]["estimate"]


def test_chunked_resampling_gives_the_same_result(monkeypatch):
    table = make_table(300, seed=6)
    whole = metrics.compute_metrics(table, n_boot=1000, seed=2)
    monkeypatch.setattr(metrics, "CHUNK_VALUES", 300 * 64)  # 64 resamples per chunk, the last one partial
    chunked = metrics.compute_metrics(table, n_boot=1000, seed=2)
    for name, entry in whole["metrics"].items():
        assert chunked["metrics"][name] == pytest.approx(entry, rel=1e-12), name  # BLAS may sum in another order


def test_undefined_resamples_are_skipped_and_counted():
    table = make_table(10, seed=0)
    table["positive"] = np.array([1] + [0] * 9)
    result = metrics.compute_metrics(table, n_boot=1000, seed=7)["metrics"]["auc_combined"]
    weights = metrics.bootstrap_weights(table["patient_id"], 1000, seed=7)
    expected_skipped = int((weights[:, 0] == 0).sum())  # the only positive patient not drawn
    assert result["n_boot_skipped"] == expected_skipped > 0
    assert result["n_boot_valid"] == 1000 - expected_skipped


@pytest.mark.parametrize("pg_ml, censored, expected", [
    (400.0, UNCENSORED, 0),          # strictly greater; float32 log10 must not flip it
    (401.0, UNCENSORED, 1),
    (50.0, LEFT_CENSORED, 0),        # "<50": certainly below 400
    (500.0, LEFT_CENSORED, -1),      # "<500": could be either side
    (35000.0, RIGHT_CENSORED, 1),    # ">35000"
    (300.0, RIGHT_CENSORED, -1),     # ">300": could be either side
    (math.nan, UNCENSORED, -1),
])
def test_threshold_labels_follow_labs_rules(pg_ml, censored, expected):
    stored = np.float32(math.log10(pg_ml)) if not math.isnan(pg_ml) else np.float32("nan")
    assert metrics.threshold_labels(np.array([stored]), np.array([censored]), 400.0)[0] == expected


def test_combined_task_uses_max_margin_and_record_labels():
    table = make_table(50, seed=9)
    table["positive"][:7] = -1
    table["bnpp_censored"] = np.zeros(50, int)
    tasks = {task.name: task for task in metrics.binary_tasks(table, PositivityThresholds(400.0, 100.0))}
    combined = tasks["combined"]
    assert combined.rows.sum() == 43 and not combined.rows[:7].any()
    expected = np.maximum(table["pred_log10_bnpp"] - LOG400, table["pred_log10_bnp"] - LOG100)[7:]
    np.testing.assert_allclose(combined.scores, expected)
    np.testing.assert_array_equal(combined.labels, table["positive"][7:])
    assert tasks["bnp_gt_100"].rows.sum() == np.isfinite(table["true_log10_bnp"]).sum()


def test_custom_thresholds_rename_tasks():
    result = metrics.compute_metrics(make_table(100), n_boot=1000, thresholds=PositivityThresholds(900.0, 50.0))
    assert {"auc_bnpp_gt_900", "auc_bnp_gt_50", "sensitivity_combined"} <= set(result["metrics"])
    cutoff = result["youden"]["bnpp_gt_900"]
    assert cutoff["predicted_cutoff_pg_ml"] == pytest.approx(900.0 * 10 ** cutoff["score_margin_log10"])


@pytest.mark.parametrize("kwargs, error", [
    ({"n_boot": 999}, ValueError),
    ({"cluster": "image"}, ValueError),
])
def test_bad_arguments_raise(kwargs, error):
    with pytest.raises(error):
        metrics.compute_metrics(make_table(20), **kwargs)


def test_missing_column_raises():
    table = make_table(20)
    del table["positive"]
    with pytest.raises(KeyError, match="positive"):
        metrics.compute_metrics(table)


@pytest.mark.parametrize("missing", ["bnp", "bnpp"])
def test_a_site_measuring_only_one_test_gets_undefined_metrics_for_the_other(missing, tmp_path):
    """Many sites measure only NT-proBNP (or only BNP): the other test's metrics are null, nothing crashes."""
    import warnings

    from bnp_cxr.evaluation import plots as figures

    rng = np.random.default_rng(3)
    n = 60
    true = rng.normal(2.6, 0.6, n)
    kept = "bnp" if missing == "bnpp" else "bnpp"
    threshold = 400 if kept == "bnpp" else 100
    table = {"patient_id": [f"p{i // 2}" for i in range(n)],
             f"true_log10_{kept}": true, f"pred_log10_{kept}": true + rng.normal(0, 0.3, n),
             f"true_log10_{missing}": np.full(n, np.nan), f"pred_log10_{missing}": rng.normal(2.0, 0.5, n),
             "positive": (true > np.log10(threshold)).astype(int)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = metrics.compute_metrics(table, n_boot=1000)
    suffix = {"bnpp": "bnpp_gt_400", "bnp": "bnp_gt_100"}
    for name in (f"pearson_r_log10_{missing}", f"mae_log10_{missing}", f"auc_{suffix[missing]}",
                 f"sensitivity_{suffix[missing]}"):
        entry = result["metrics"][name]
        assert entry["estimate"] is None and entry["ci_low"] is None and entry["n"] == 0
    assert result["metrics"][f"auc_{suffix[kept]}"]["estimate"] > 0.8
    assert result["metrics"]["auc_combined"]["estimate"] > 0.8
    frame = pd.DataFrame(table)
    figures.roc_figure(frame, result, tmp_path / "roc.png")
    figures.scatter_figure(frame, result, tmp_path / "scatter.png")
    assert (tmp_path / "roc.png").stat().st_size > 0 and (tmp_path / "scatter.png").stat().st_size > 0


def finding_table(seed: int = 0, n: int = 300):
    rng = np.random.default_rng(seed)
    edema = rng.integers(0, 2, n)
    pred = 2.5 + 0.8 * edema + rng.normal(0, 0.6, n)
    return {"patient_id": [f"p{i // 2}" for i in range(n)], "pred_log10_bnpp": pred,
            "edema": np.where(rng.random(n) < 0.2, -1, edema), "tb": np.zeros(n, int)}


def test_finding_aucs_match_sklearn_on_the_known_rows_with_a_patient_bootstrap():
    table = finding_table()
    result = metrics.finding_aucs(table, ["edema", "tb"], n_boot=1000, seed=3)
    known = table["edema"] >= 0
    expected = roc_auc_score(table["edema"][known], table["pred_log10_bnpp"][known])
    edema = result["edema"]
    assert edema["estimate"] == pytest.approx(expected, abs=1e-12)
    assert edema["n"] == known.sum() and edema["n_positive"] == table["edema"][known].sum()
    assert edema["ci_low"] < edema["estimate"] < edema["ci_high"] and edema["n_boot_valid"] == 1000
    assert edema["n_patients"] == len({p for p, k in zip(table["patient_id"], known) if k})
    # One class only: no AUC, reported as such rather than dropped.
    assert result["tb"]["estimate"] is None and result["tb"]["n_positive"] == 0
    assert metrics.finding_aucs(table, ["edema"], n_boot=1000, seed=3) == {"edema": edema}  # seeded


def test_negative_kind_aucs_split_the_negatives_into_clear_films_and_other_disease():
    # positives score highest, negatives with pneumonia in between, clear films lowest; no_finding is no finding
    table = {"patient_id": [f"p{i}" for i in range(10)], "positive": [1, 1, 1, 0, 0, 0, 0, 0, 0, -1],
             "pred_log10_bnpp": [3.0, 2.2, 2.9, 2.5, 2.1, 2.4, 1.0, 1.2, 2.8, 3.3],
             "pneumonia": [0, 1, 0, 1, 1, 1, 0, 0, -1, 1],
             "no_finding": [0, 0, 1, 0, 0, 0, 1, 1, -1, 0]}
    result = metrics.negative_kind_aucs(table, ["pneumonia", "no_finding"], n_boot=1000, seed=0)
    scores, positive = np.array(table["pred_log10_bnpp"]), np.array(table["positive"])
    for kind, negatives in (("clear", [6, 7]), ("other_findings", [3, 4, 5])):  # row 8: nothing given; 9: unknown
        rows = [0, 1, 2, *negatives]
        assert result[kind]["estimate"] == pytest.approx(roc_auc_score(positive[rows], scores[rows]))
        assert result[kind]["n"] == len(rows) and result[kind]["n_positive"] == 3
    assert result["clear"]["estimate"] == 1.0 and result["other_findings"]["estimate"] < 1.0
    assert metrics.negative_kind_aucs(table, ["no_finding"], n_boot=1000) == {}  # no finding column to split by
