"""The attribution scorecard: localisation and faithfulness metrics against hand computations, runs end to end."""

import math

import keras
import numpy as np
import pandas as pd
import pytest
from archives import SMALL_CNN_SIZE as SIZE
from archives import write_run

from bnp_cxr.attribution.faithfulness import (deletion_insertion, max_sensitivity, noisy_linear_imputation,
                                              relevance_order, road)
from bnp_cxr.attribution.localisation import otsu_iou, otsu_segmentation, pointing_game, truth_scores
from bnp_cxr.attribution.methods import MethodConfig
from bnp_cxr.attribution.scorecard import (SCORE_METRICS, ScorecardConfig, ScoredImage, aggregate_scorecard,
                                           rank_agreement, score_run)
from bnp_cxr.workspace import COMPONENT_BITS, RunDir


def square(size, top, left, side):
    mask = np.zeros((size, size), bool)
    mask[top:top + side, left:left + side] = True
    return mask


@pytest.mark.parametrize("peak, mask_at, valid, expected", [
    ((1, 1), (0, 0), None, 1.0),  # the maximum inside the mask
    ((5, 5), (0, 0), None, 0.0),  # outside
    ("tie", (0, 0), None, 1.0),  # tied maxima, one of them inside: a hit (Quantus' rule)
    ((5, 5), (0, 0), "left", 1.0),  # the global peak lies outside the valid area: the valid maximum counts
    ("flat", (0, 0), None, math.nan),
    ((1, 1), None, None, math.nan),  # empty mask
])
def test_pointing_game(peak, mask_at, valid, expected):
    values = np.zeros((8, 8))
    values[2, 2] = 0.5
    if peak == "tie":
        values[1, 1] = values[6, 6] = 1.0
    elif peak == "flat":
        values[:] = 0.3
    else:
        values[peak] = 1.0
    mask = square(8, *mask_at, 3) if mask_at else np.zeros((8, 8), bool)
    valid_mask = np.zeros((8, 8), bool) if valid else None
    if valid:
        valid_mask[:, :4] = True
    result = pointing_game(values, mask, valid=valid_mask)
    assert (math.isnan(result) and math.isnan(expected)) or result == expected


def test_otsu_iou_by_hand():
    # Two levels: Otsu splits between them, so the segmentation is the bright 3 x 3 block.
    values = np.full((8, 8), 0.2)
    values[2:5, 2:5] = 1.0
    np.testing.assert_array_equal(otsu_segmentation(values), square(8, 2, 2, 3))
    mask = square(8, 2, 2, 3)
    mask[5, 2:5] = True  # 12 px of truth, 9 of them segmented: IoU 9 / 12
    assert otsu_iou(values, mask) == pytest.approx(9 / 12)


def test_otsu_fills_the_external_contour_and_ignores_negative_values():
    values = np.full((9, 9), -5.0)  # negative: counts as 0 (positive part)
    values[2:7, 2:7] = 1.0
    values[3:6, 3:6] = 0.0  # a hole inside a ring: CheXlocalize fills external contours
    segmentation = otsu_segmentation(values)
    np.testing.assert_array_equal(segmentation, square(9, 2, 2, 5))
    assert otsu_iou(values, square(9, 2, 2, 5)) == 1.0
    assert otsu_segmentation(np.zeros((4, 4))) is None and math.isnan(otsu_iou(np.zeros((4, 4)), square(4, 0, 0, 2)))


@pytest.mark.parametrize("name, expected", [
    ("mass", (4.0 + 2.0 - 1.0) / (4.0 + 2.0 - 1.0 + 3.0 + 2.5)),  # raw values, negatives included
    ("rank", 1 / 3),  # |G| = 3: the top 3 are 4 (in), 3 (out), 2.5 (out)
    ("top2", 1 / 2),  # 4 (in), 3 (out)
    ("tie", 1 / 2),  # top 1 of two tied maxima, one in G: each counts half
])
def test_quantus_equivalents_by_hand(name, expected):
    from bnp_cxr.attribution.localisation import relevance_mass_accuracy, relevance_rank_accuracy, top_k_intersection

    values = np.zeros((3, 3))
    values[0, 0], values[0, 1], values[2, 2], values[2, 1], values[1, 1] = 4.0, 2.0, 3.0, 2.5, -1.0
    mask = np.zeros((3, 3), bool)
    mask[0, :2] = mask[1, 1] = True
    if name == "mass":
        result = relevance_mass_accuracy(values, mask)
    elif name == "rank":
        result = relevance_rank_accuracy(values, mask)
    elif name == "top2":
        result = top_k_intersection(values, mask, 2)
    else:
        values[2, 2] = 4.0
        result = top_k_intersection(values, mask, 1)
    assert result == pytest.approx(expected)


def test_truth_scores_by_hand():
    components = np.zeros((4, 4), np.uint8)
    components[0, :] = COMPONENT_BITS["lung_opacity"]
    components[1, :2] = COMPONENT_BITS["lung_opacity"] | COMPONENT_BITS["kerley_lines"]
    components[3, :] = COMPONENT_BITS["heart"]
    values = np.zeros((4, 4))
    values[0, 0], values[1, 0], values[3, 3], values[2, 2] = 3.0, 1.0, 4.0, -2.0
    scores = truth_scores(values, components)
    assert scores["truth_mass_fraction"] == pytest.approx(4 / 8)  # 3 + 1 of 8 positive mass on lung signal
    assert scores["truth_area_fraction"] == pytest.approx(6 / 16)
    assert scores["truth_ratio"] == pytest.approx((4 / 8) / (6 / 16))
    assert scores["component_fraction_heart"] == pytest.approx(4 / 8)
    assert math.isnan(scores["component_fraction_effusion"])


def test_relevance_order_breaks_ties_randomly_but_reproducibly():
    values = np.array([[0.0, 1.0], [1.0, 1.0]])
    order = relevance_order(values, seed=3)
    assert set(order[:3]) == {1, 2, 3} and order[3] == 0
    np.testing.assert_array_equal(order, relevance_order(values, seed=3))
    assert any(not np.array_equal(relevance_order(values, seed=s)[:3], order[:3]) for s in range(1, 10))


def test_linear_imputation_recovers_a_linear_ramp():
    rows, cols = np.mgrid[:12, :10]
    ramp = 0.02 * rows + 0.03 * cols
    removed = np.zeros(ramp.shape, bool)
    removed[2:9, 3:8] = True
    removed[0, 0] = True  # a corner pixel: the weighted mean of its 3 neighbours, by hand
    imputed = noisy_linear_imputation(ramp, removed, noise=0.0)
    expected = ramp.copy()
    expected[0, 0] = (ramp[0, 1] / 6 + ramp[1, 0] / 6 + ramp[1, 1] / 12) / (1 / 6 + 1 / 6 + 1 / 12)
    np.testing.assert_allclose(imputed, expected, atol=1e-9)  # interior: exact on a linear image
    noisy = noisy_linear_imputation(ramp, removed, noise=0.01, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(noisy[~removed], ramp[~removed])
    assert 0.003 < np.std(noisy[removed] - ramp[removed]) < 0.02


class Recorder:
    """A forward function: the mean of the left half of each image, counting its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        return batch[:, :, : batch.shape[2] // 2, 0].mean(axis=(1, 2))


@pytest.fixture
def half_bright():
    image = np.zeros((16, 16, 1), np.float32)
    image[:, :8] = 1.0
    good = np.zeros((16, 16))
    good[:, :8] = 1.0
    return image, good


def test_deletion_and_insertion_reward_the_true_map_in_batched_calls(half_bright):
    image, good = half_bright
    forward = Recorder()
    faithful = deletion_insertion(forward, image, good, steps=10, batch_size=8)
    assert forward.calls == math.ceil(2 * 11 / 8)
    reverse = deletion_insertion(Recorder(), image, -good, steps=10, batch_size=8)
    assert faithful["deletion_auc"] < reverse["deletion_auc"]
    assert faithful["insertion_auc"] > reverse["insertion_auc"]


def test_road_gap_is_positive_for_the_true_map_and_negative_for_its_reverse(half_bright):
    image, good = half_bright
    forward = Recorder()
    faithful = road(forward, image, good, noise=0.0, batch_size=4)
    assert forward.calls == math.ceil(10 / 4)
    reverse = road(Recorder(), image, -good, noise=0.0)
    assert faithful["road_gap"] > 0.3 and reverse["road_gap"] < -0.3
    assert faithful["road_gap"] == pytest.approx(faithful["road_lerf"] - faithful["road_morf"])


def test_max_sensitivity_by_hand():
    image = np.full((6, 6, 1), 0.5, np.float32)
    result = max_sensitivity(lambda batch: batch[..., 0], image, radius=0.05, samples=3, seed=7)
    noise = np.random.default_rng(7).uniform(-0.05, 0.05, size=(3, 6, 6, 1))
    expected = max(np.linalg.norm(n) for n in noise) / np.linalg.norm(image)
    assert result == pytest.approx(expected, rel=1e-5)
    assert max_sensitivity(lambda batch: np.ones(batch.shape[:3]), image) == 0.0
    assert math.isnan(max_sensitivity(lambda batch: np.zeros(batch.shape[:3]), image))


def scored(n, with_lungs=(True, False)):
    rng = np.random.default_rng(5)
    lungs = np.zeros((SIZE, SIZE), bool)
    lungs[8:26, 4:14] = lungs[8:26, 18:28] = True
    components = np.zeros((SIZE, SIZE), np.uint8)
    components[14:22, 6:12] = COMPONENT_BITS["lung_opacity"]
    return [ScoredImage(f"image{i}", f"patient{i % 2}", rng.uniform(size=(SIZE, SIZE, 1)).astype(np.float32),
                        lungs if with_lungs[i % len(with_lungs)] else None, components, np.ones((SIZE, SIZE), bool))
            for i in range(n)]


FAST = ScorecardConfig(methods=("vanilla", "gradcam", "occlusion"), subset=1, randomisation_steps=1,
                       stability_samples=1, curve_steps=4, road_fractions=(0.2, 0.8),
                       method=MethodConfig(batch_size=16))


def test_score_run_rows_costs_and_empty_lung_cells(model):
    rows, reasons, costs = score_run(model, scored(2), SIZE, FAST)
    frame = pd.DataFrame(rows)
    assert reasons == [] and len(frame) == 2 * 3
    with_lungs = frame[frame["image_id"] == "image0"]
    without = frame[frame["image_id"] == "image1"]
    assert with_lungs["pointing_game"].notna().all() and with_lungs["otsu_iou"].between(0, 1).all()
    assert without["pointing_game"].isna().all() and without["mass_in_lung_fraction"].isna().all()
    # Grad-CAM of an untrained model may be all zero (ReLU) on an image: its truth share is then undefined.
    assert frame.loc[frame["method"] != "gradcam", "truth_ratio"].notna().all() and frame["deletion_auc"].notna().all()
    # Randomisation and stability: the subset (first image) only.
    assert with_lungs["max_sensitivity"].notna().all() and without["max_sensitivity"].isna().all()
    assert "randomisation_spearman" in frame and without["randomisation_spearman"].isna().all()
    by_group = {row["metric"]: row for row in costs}
    assert by_group["deletion_insertion"]["model_calls"] == 6 * math.ceil(2 * 5 / 16)
    assert by_group["road"]["model_calls"] == 6 and by_group["localisation"]["model_calls"] == 0
    assert by_group["maps"]["model_calls"] > 0 and by_group["stability"]["images"] == 1


def test_a_method_that_cannot_run_is_reported_not_applicable():
    keras.utils.set_random_seed(0)
    image = keras.Input((SIZE, SIZE, 1))
    dense = keras.Model(image, keras.layers.Dense(2)(keras.layers.Flatten()(image)))
    rows, reasons, _ = score_run(dense, scored(2), SIZE, FAST)
    assert [r["method"] for r in reasons] == ["gradcam"] and "no spatial feature map" in reasons[0]["reason"]
    assert {row["method"] for row in rows} == {"vanilla", "occlusion"}


def test_rank_agreement_follows_each_metrics_direction():
    methods = ["a", "b", "c", "d"]
    aggregate = pd.DataFrame({"method": methods, "size": 64, "truth_ratio": [4.0, 3.0, 2.0, 1.0],
                              "insertion_auc": [0.9, 0.8, 0.7, 0.1],  # higher is better: agrees
                              "deletion_auc": [0.9, 0.8, 0.7, 0.1],  # lower is better: disagrees
                              "otsu_iou": [0.1, 0.3, 0.2, 0.4]})
    table = rank_agreement(aggregate).set_index("metric")["spearman"]
    assert table["insertion_auc"] == pytest.approx(1.0) and table["deletion_auc"] == pytest.approx(-1.0)
    assert table["otsu_iou"] == pytest.approx(-0.8)
    assert set(table.index) <= set(SCORE_METRICS) - {"truth_ratio"}


def test_aggregate_has_bootstrap_cis_around_the_mean():
    frame = pd.DataFrame({"method": "vanilla", "size": 64, "image_id": [f"i{k}" for k in range(6)],
                          "patient_id": ["p0", "p0", "p1", "p2", "p3", "p3"],
                          "otsu_iou": [0.1, 0.2, 0.3, np.nan, 0.5, 0.6], "truth_ratio": 1.0})
    row = aggregate_scorecard(frame).iloc[0]
    assert row["otsu_iou"] == pytest.approx(np.mean([0.1, 0.2, 0.3, 0.5, 0.6]))
    assert row["otsu_iou_lo"] <= row["otsu_iou"] <= row["otsu_iou_hi"] and row["otsu_iou_n"] == 5


@pytest.fixture(scope="module")
def runs(small_cohort, tmp_path_factory):
    """Records of the small phantom cohort at 64 px and an untrained small-CNN run."""
    from bnp_cxr.data.manifest import load_manifest
    from bnp_cxr.models import build_model
    from bnp_cxr.records.writer import IngestConfig, write_records

    root = tmp_path_factory.mktemp("scorecard")
    manifest = load_manifest(small_cohort / "manifest.csv", small_cohort / "labs.csv")
    write_records(manifest, root / "records", IngestConfig(sizes=(64,), shard_size=8, progress=False))
    keras.utils.set_random_seed(64)
    write_run(RunDir.for_size(64, root / "runs").path, build_model("small_cnn", 64), 64, root / "records")
    return root


def test_tool_writes_the_scorecard(runs, tmp_path, capsys):
    from bnp_cxr.cli import attribute

    out = tmp_path / "scorecard"
    code = attribute.main(["--runs", str(runs / "runs"), "--out", str(out), "--n", "3", "--split", "train",
                           "--scorecard", "--methods", "vanilla", "gradcam", "ig", "--subset", "1",
                           "--n-boot", "1000", "--batch-size", "64"])
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(out / "scorecard.csv")
    assert list(table["method"]) == ["vanilla", "gradcam", "ig"] and set(table["size"]) == {64}
    for name in ("pointing_game", "otsu_iou", "truth_ratio", "deletion_auc", "road_gap", "max_sensitivity"):
        assert f"{name}_lo" in table and (table[f"{name}_lo"] <= table[name] + 1e-9).all()
    assert len(pd.read_csv(out / "scorecard_per_image.csv")) == 9
    assert set(pd.read_csv(out / "scorecard_costs.csv")["metric"]) >= {"maps", "road", "randomisation"}
    assert (out / "scorecard_rank_agreement.csv").is_file() and (out / "scorecard.png").stat().st_size > 20_000


def test_completeness_gap_by_hand_on_a_linear_model():
    """For a linear model IG is exact at any step count: the gap is float noise only."""
    from bnp_cxr.attribution.callbacks import ModelGradients
    from bnp_cxr.attribution.library_methods import auto_ig_steps, completeness_gap

    keras.utils.set_random_seed(1)
    image = keras.Input((8, 8, 1))
    linear = keras.Model(image, keras.layers.Dense(2)(keras.layers.Flatten()(image)))
    gradients = ModelGradients(linear, "bnpp")
    x = np.random.default_rng(0).uniform(size=(8, 8, 1)).astype(np.float32)
    assert completeness_gap(gradients, x, 2) < 1e-4
    assert auto_ig_steps(gradients, x[None], candidates=(4, 16))[0] == 4


def test_auto_ig_steps_picks_the_fewest_steps_below_the_tolerance(model):
    from bnp_cxr.attribution.callbacks import ModelGradients
    from bnp_cxr.attribution.library_methods import auto_ig_steps, completeness_gap

    gradients = ModelGradients(model, "bnpp")
    images = np.random.default_rng(2).uniform(size=(1, SIZE, SIZE, 1)).astype(np.float32)
    candidates = (2, 8, 32, 128)
    gaps = {steps: completeness_gap(gradients, images[0], steps) for steps in candidates}
    for tolerance in (0.5, 0.05, 0.01):
        steps, gap = auto_ig_steps(gradients, images, candidates=candidates, tolerance=tolerance)
        below = [s for s in candidates if gaps[s] < tolerance]
        assert steps == (below[0] if below else max(candidates))
        assert gap == pytest.approx(gaps[steps], rel=1e-4)


def test_score_run_with_auto_ig_steps_reports_its_choice(model):
    from dataclasses import replace

    config = replace(FAST, methods=("ig",), ig_steps_auto=True, subset=0)
    _, _, costs = score_run(model, scored(1), SIZE, config)
    auto = [row for row in costs if row["metric"] == "ig_steps_auto"]
    assert len(auto) == 1 and auto[0]["ig_steps"] in (8, 16, 32, 64, 100, 200, 400) and auto[0]["model_calls"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--ig-steps", "auto"], "use it with --scorecard"),
    (["--scorecard", "--runs", "/nonexistent/runs"], "is not a folder"),
])
def test_tool_errors(argv, message, capsys):
    from bnp_cxr.cli import attribute

    assert attribute.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("12", 12), ("0", None), ("many", None)])
def test_parse_ig_steps(text, expected):
    import argparse

    from bnp_cxr.cli.attribute import parse_ig_steps

    if expected is None:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_ig_steps(text)
    else:
        assert parse_ig_steps(text) == expected


def test_plot_draws_a_panel_per_size_with_not_applicable_rows(tmp_path):
    from bnp_cxr.attribution.scorecard_plot import cell_text, plot_scorecard, rank_colours

    frame = pd.DataFrame({"method": ["vanilla", "ig"] * 2, "size": [64, 64, 128, 128], "n_images": 3,
                          "otsu_iou": [0.2, 0.4, np.nan, 0.1], "otsu_iou_lo": [0.1, 0.3, np.nan, 0.0],
                          "otsu_iou_hi": [0.3, 0.5, np.nan, 0.2], "deletion_auc": [0.5, 0.4, 0.3, 0.2],
                          "deletion_auc_lo": 0.0, "deletion_auc_hi": 1.0})
    reasons = pd.DataFrame([{"size": 128, "method": "gradcam", "reason": "no spatial feature map"}])
    path = plot_scorecard(frame, reasons, tmp_path / "scorecard.png")
    assert path.stat().st_size > 20_000
    assert cell_text(frame.iloc[0], "otsu_iou") == "0.2\n[0.1, 0.3]" and cell_text(frame.iloc[2], "otsu_iou") == ""
    worst, best = rank_colours(np.array([0.4, 0.2]), higher_is_better=False)  # lower is better: 0.4 is worst
    assert worst[0] > best[0] and best[1] > worst[1]  # red (more R, less G) for the worst, green for the best
    assert rank_colours(np.array([np.nan]), True) == [(1.0, 1.0, 1.0, 1.0)]
