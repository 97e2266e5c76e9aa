"""In-lung attention: the per-image metrics, component fractions, patient-bootstrap aggregation, study columns, plot."""

import math

import numpy as np
import pandas as pd
import pytest

from bnp_cxr.evaluation import study
from bnp_cxr.attribution.inlung import (IN_LUNG_KEYS, aggregate_in_lung, ci_entry, component_fractions, content_mask,
                            in_lung_metrics, plot_in_lung_trend, study_columns, top_count, top_weights,
                            undefined_reason)
from bnp_cxr.workspace import COMPONENT_BITS

SIZE = 20


@pytest.fixture
def lungs():
    """Two 'lungs': rows 4..15, columns 3..8 and 11..16 of a 20 x 20 image (144 of 400 pixels)."""
    mask = np.zeros((SIZE, SIZE), bool)
    mask[4:16, 3:9] = mask[4:16, 11:17] = True
    return mask


def test_map_only_in_the_lungs(lungs):
    result = in_lung_metrics(lungs * 2.0, lungs)
    area = lungs.mean()
    assert result["mass_in_lung_fraction"] == 1.0
    assert result["top_in_lung_fraction"] == pytest.approx(1.0)  # 144 lung pixels tie for 40 slots
    assert result["lung_area_fraction"] == pytest.approx(area)
    assert result["mass_ratio"] == pytest.approx(1 / area) and result["top_ratio"] == pytest.approx(1 / area)


def test_map_only_outside_scores_zero(lungs):
    result = in_lung_metrics((~lungs) * 1.0, lungs)
    assert result["mass_in_lung_fraction"] == result["top_in_lung_fraction"] == result["mass_ratio"] == 0.0


@pytest.mark.parametrize("top_fraction", [0.05, 0.10, 0.37, 1.0])
def test_uniform_map_scores_chance_whatever_the_pixel_order(lungs, top_fraction):
    """Every pixel ties: the tied share keeps the count at k, so (ii) is the area fraction, flipped or not."""
    uniform = np.full((SIZE, SIZE), 0.3)
    for mask in (lungs, lungs[::-1], lungs[:, ::-1].T):
        result = in_lung_metrics(uniform, mask, top_fraction=top_fraction)
        assert result["mass_in_lung_fraction"] == pytest.approx(mask.mean())
        assert result["top_in_lung_fraction"] == pytest.approx(mask.mean())
        assert result["top_ratio"] == pytest.approx(1.0)


def test_top_pixels_against_a_hand_count(lungs):
    """A ramp with distinct values: the k highest pixels counted by hand."""
    ramp = np.arange(SIZE * SIZE, dtype=float).reshape(SIZE, SIZE)[::-1]  # highest values in the top rows
    k = math.ceil(0.1 * SIZE * SIZE)
    top = np.zeros(SIZE * SIZE, bool)
    top[np.argsort(ramp.ravel())[-k:]] = True
    expected = (top & lungs.ravel()).sum() / k
    assert in_lung_metrics(ramp, lungs)["top_in_lung_fraction"] == pytest.approx(expected)


@pytest.mark.parametrize("values, k, expected", [
    ([5, 4, 3, 2, 1], 2, [1, 1, 0, 0, 0]),
    ([1, 3, 3, 3, 0], 2, [0, 2 / 3, 2 / 3, 2 / 3, 0]),  # three tie for two slots
    ([2, 2, 2, 2], 1, [0.25] * 4),
    ([9, 1, 1, 0], 3, [1, 1, 1, 0]),
])
def test_top_weights_sum_to_k(values, k, expected):
    weights = top_weights(np.array(values, float), k)
    np.testing.assert_allclose(weights, expected)
    assert weights.sum() == pytest.approx(k)


@pytest.mark.parametrize("n_valid, fraction, k", [(30, 0.1, 3), (400, 0.1, 40), (401, 0.1, 41), (7, 0.5, 4),
                                                  (3, 0.01, 1), (10, 1.0, 10)])
def test_top_count_is_a_float_safe_ceiling(n_valid, fraction, k):
    assert top_count(n_valid, fraction) == k


def test_padding_is_neither_lung_nor_outside(lungs):
    """Mass in the letterbox padding counts nowhere; the padding leaves the chance level's denominator too."""
    valid = content_mask((0, 2, SIZE, SIZE - 2), SIZE)
    attribution = lungs * 1.0
    attribution[:, :2] = 50.0  # hot padding (outside the content box)
    result = in_lung_metrics(attribution, lungs, valid=valid)
    assert result["mass_in_lung_fraction"] == 1.0
    assert result["lung_area_fraction"] == pytest.approx(lungs.sum() / valid.sum())
    assert in_lung_metrics(attribution, lungs)["mass_in_lung_fraction"] < 0.5  # without valid, it would count


def test_negative_attribution_is_ignored(lungs):
    """XRAI-style negative gains outside the lungs neither add mass nor rank among the top pixels."""
    attribution = np.where(lungs, 1.0, -5.0)
    result = in_lung_metrics(attribution, lungs)
    assert result["mass_in_lung_fraction"] == 1.0 and result["top_in_lung_fraction"] == pytest.approx(1.0)


@pytest.mark.parametrize("attribution, mask, valid, reason, area_defined", [
    (np.zeros((SIZE, SIZE)), None, None, "no positive attribution", True),
    (-np.ones((SIZE, SIZE)), None, None, "no positive attribution", True),
    (np.ones((SIZE, SIZE)), np.zeros((SIZE, SIZE), bool), None, "empty lung mask", False),
    (np.ones((SIZE, SIZE)), None, np.zeros((SIZE, SIZE), bool), "no valid pixels", False),
    (np.ones((SIZE, SIZE)), None, content_mask((0, 0, SIZE, 2), SIZE), "empty lung mask", False),  # lungs in padding
])
def test_undefined_cases_give_nan_with_a_reason(lungs, attribution, mask, valid, reason, area_defined):
    mask = lungs if mask is None else mask
    result = in_lung_metrics(attribution, mask, valid=valid)
    assert set(result) == set(IN_LUNG_KEYS)
    assert math.isnan(result["mass_in_lung_fraction"]) and math.isnan(result["top_ratio"])
    assert math.isfinite(result["lung_area_fraction"]) == area_defined
    assert reason in undefined_reason(attribution, mask, valid=valid)


def test_defined_case_has_no_reason(lungs):
    assert undefined_reason(lungs * 1.0, lungs) is None


@pytest.mark.parametrize("call, message", [
    (lambda m: in_lung_metrics(np.ones((3, 3)), m), "differs"),
    (lambda m: in_lung_metrics(np.ones((SIZE, SIZE, 1)), m), r"\[H, W\]"),
    (lambda m: in_lung_metrics(np.full((SIZE, SIZE), np.nan), m), "NaN"),
    (lambda m: in_lung_metrics(np.ones((SIZE, SIZE)), m, top_fraction=0), "top_fraction"),
    (lambda m: content_mask((0, 0, 30, 10), SIZE), "not inside"),
    (lambda m: component_fractions(np.ones((SIZE, SIZE)), np.zeros((4, 4), np.uint8)), "differs"),
])
def test_errors(lungs, call, message):
    with pytest.raises(ValueError, match=message):
        call(lungs)


def test_content_mask():
    mask = content_mask((1, 2, 4, 5), 6)
    assert mask.sum() == 9 and mask[1, 2] and mask[3, 4] and not mask[4, 4] and not mask[1, 5]
    assert content_mask((0, 0, 0, 0), 6).all()  # the schema's "unknown" default


def test_component_fractions_count_overlaps_for_each_bit():
    components = np.zeros((4, 4), np.uint8)
    components[0, :] = COMPONENT_BITS["lung_opacity"]
    components[0, :2] |= COMPONENT_BITS["kerley_lines"]  # lines over opacity carry both bits
    components[3, 3] = COMPONENT_BITS["heart"]
    attribution = np.zeros((4, 4))
    attribution[0, 0], attribution[0, 3], attribution[2, 2], attribution[3, 3] = 4, 2, 2, -3
    result = component_fractions(attribution, components)
    assert result["component_fraction_lung_opacity"] == pytest.approx(6 / 8)
    assert result["component_fraction_kerley_lines"] == pytest.approx(4 / 8)
    assert result["component_fraction_heart"] == 0.0  # present, but its attribution is negative
    assert result["component_area_fraction_lung_opacity"] == pytest.approx(4 / 16)
    assert result["component_area_fraction_heart"] == pytest.approx(1 / 16)
    for name in ("effusion", "confounder"):  # absent: undefined rather than a misleading 0
        assert math.isnan(result[f"component_fraction_{name}"])
        assert math.isnan(result[f"component_area_fraction_{name}"])
    valid = np.ones((4, 4), bool)
    valid[0, 0] = False
    assert component_fractions(attribution, components, valid=valid)["component_fraction_lung_opacity"] == 0.5


def _frame(rng, patients, images_per_patient, methods=("vanilla", "gradcam"), sizes=(64, 256)):
    rows = []
    for method in methods:
        for size in sizes:
            for patient in range(patients):
                for image in range(images_per_patient):
                    rows.append({"image_id": f"i{patient}-{image}", "patient_id": f"p{patient}", "method": method,
                                 "size": size, "mass_in_lung_fraction": rng.uniform(0.1, 0.9),
                                 "lung_area_fraction": rng.uniform(0.2, 0.3)})
    return pd.DataFrame(rows)


def test_aggregate_means_counts_and_ci():
    frame = _frame(np.random.default_rng(0), patients=8, images_per_patient=2)
    frame.loc[0, "mass_in_lung_fraction"] = np.nan  # one undefined image: skipped, counted
    result = aggregate_in_lung(frame, n_boot=1000)
    assert list(zip(result["method"], result["size"])) == [("vanilla", 64), ("vanilla", 256), ("gradcam", 64),
                                                            ("gradcam", 256)]
    expected = frame.groupby(["method", "size"])["mass_in_lung_fraction"].mean()
    for _, row in result.iterrows():
        assert row["mass_in_lung_fraction"] == pytest.approx(expected[(row["method"], row["size"])])
        assert row["mass_in_lung_fraction_lo"] < row["mass_in_lung_fraction"] < row["mass_in_lung_fraction_hi"]
        assert (row["n_images"], row["n_patients"]) == (16, 8)
    assert result.loc[0, "mass_in_lung_fraction_n"] == 15 and result.loc[1, "mass_in_lung_fraction_n"] == 16
    assert {"image_id_lo", "size_lo"}.isdisjoint(result.columns)


def test_aggregate_resamples_patients_not_images():
    """Copies of each image under the same patient leave the patient bootstrap's CI as it was; an image-level
    bootstrap would narrow it."""
    single = _frame(np.random.default_rng(1), patients=10, images_per_patient=1, methods=("vanilla",), sizes=(64,))
    copies = pd.concat([single] * 4, ignore_index=True)
    once, repeated = (aggregate_in_lung(frame, n_boot=1000, seed=3).iloc[0] for frame in (single, copies))
    for key in ("mass_in_lung_fraction", "mass_in_lung_fraction_lo", "mass_in_lung_fraction_hi"):
        assert repeated[key] == pytest.approx(once[key])
    relabelled = copies.assign(patient_id=[f"q{i}" for i in range(len(copies))])  # every copy its own patient
    narrow = aggregate_in_lung(relabelled, n_boot=1000, seed=3).iloc[0]
    width = lambda row: row["mass_in_lung_fraction_hi"] - row["mass_in_lung_fraction_lo"]  # noqa: E731
    assert width(narrow) < 0.7 * width(once)


@pytest.mark.parametrize("frame_change, error", [
    (lambda f: f.drop(columns="patient_id"), KeyError),
    (lambda f: f, ValueError),  # n_boot below the evaluation's minimum
])
def test_aggregate_errors(frame_change, error):
    frame = _frame(np.random.default_rng(2), patients=3, images_per_patient=1)
    with pytest.raises(error):
        aggregate_in_lung(frame_change(frame), n_boot=100 if error is ValueError else 1000)


def test_study_columns_fit_the_resolution_report():
    aggregate = aggregate_in_lung(_frame(np.random.default_rng(4), patients=6, images_per_patient=1), n_boot=1000)
    columns = study_columns(aggregate)
    assert sorted(columns) == [64, 256]
    assert list(columns[64]) == ["in-lung mass, Gradient", "in-lung mass, Grad-CAM", "lung area fraction (chance)"]
    row = aggregate[(aggregate["method"] == "gradcam") & (aggregate["size"] == 256)].iloc[0]
    entry = columns[256]["in-lung mass, Grad-CAM"]
    assert (entry["estimate"], entry["ci_low"], entry["ci_high"]) == pytest.approx(
        (row["mass_in_lung_fraction"], row["mass_in_lung_fraction_lo"], row["mass_in_lung_fraction_hi"]))
    assert entry["ci_low"] <= entry["estimate"] <= entry["ci_high"]
    results = [{"size": size, "n_images": 6, "n_patients": 6,
                "metrics": {key: {"estimate": 0.9, "ci_low": 0.8, "ci_high": 1.0, "n": 6}
                            for key, _, _ in study.TABLE_METRICS}} for size in (64, 256)]
    table = study.markdown_table(results, columns)
    assert "in-lung mass, Grad-CAM" in table.splitlines()[0] and study.format_entry(entry) in table
    flat = study.csv_rows(results, columns)[1]
    assert flat["in-lung mass, Grad-CAM_ci_high"] == entry["ci_high"]


def test_ci_entry_undefined_is_none():
    assert ci_entry({"m": float("nan"), "m_lo": float("nan"), "m_hi": float("nan")}, "m") == {
        "estimate": None, "ci_low": None, "ci_high": None}
    assert ci_entry({"m": 0.5, "m_lo": 0.4, "m_hi": 0.61}, "m") == {"estimate": 0.5, "ci_low": 0.4, "ci_high": 0.61}


def test_trend_plot_writes_png_and_pdf(tmp_path):
    frame = _frame(np.random.default_rng(5), patients=5, images_per_patient=1, sizes=(64, 128, 256))
    frame["top_in_lung_fraction"] = frame["mass_in_lung_fraction"]
    paths = plot_in_lung_trend(aggregate_in_lung(frame, n_boot=1000), tmp_path / "in_lung.pdf")
    assert [path.suffix for path in paths] == [".png", ".pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_bytes()[:5] == b"%PDF-"
    assert b"matplotlib" not in paths[0].read_bytes()  # no software metadata
